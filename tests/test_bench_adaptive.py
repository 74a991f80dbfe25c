"""tools/bench_adaptive.py: the replay over kept rows and the live comparison, on small made-up rows."""

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_adaptive as bench  # noqa: E402

from edgetts.search.adaptive import AdaptiveStop  # noqa: E402


def kept_row(key: str, answers: list[str], gold: str) -> dict:
    cands = [
        {
            "text": f"so the answer is \\boxed{{{a}}}",
            "answer": a,
            "score": None,
            "step_scores": [],
            "n_tokens": 10 + i,
            "stop_reason": "eos",
            "correct": a == gold,
            "trace_conf": {"lowest": 5.0 + (i % 3)},
        }
        for i, a in enumerate(answers)
    ]
    return {"key": key, "dataset": "toy", "id": key.split("-")[1], "gold": gold, "candidates": cands}


def write(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_replay_stops_an_agreeing_row_after_one_wave_and_counts_its_tokens(tmp_path):
    easy = kept_row("toy-0", ["7"] * 16, "7")
    mixed = kept_row("toy-1", ["1", "2", "3", "4"] * 4, "1")
    problems = bench.load([write(tmp_path / "k.jsonl.gz", [easy, mixed])])
    res = bench.simulate(problems, bench.majority_vote, AdaptiveStop())
    assert res["toy-0"] == {"samples": 4, "tokens": 10 + 11 + 12 + 13, "right": True}
    assert res["toy-1"]["samples"] == 16  # a four-way tie never settles
    full = bench.simulate(problems, bench.majority_vote, None)
    assert full["toy-0"]["samples"] == 16 and full["toy-0"]["tokens"] == sum(range(10, 26))
    lines = bench.table(problems, [0.95], 4, 4)
    assert any("Beta 0.95" in line and "| majority |" in line for line in lines)
    assert any("budget 0.95" in line and "| majority |" in line for line in lines)
    assert not any("budget" in line for line in bench.table(problems, [0.95], 4, 4, rules=["beta"]))


def test_rows_of_one_problem_in_several_files_count_once_the_longest(tmp_path):
    short = kept_row("toy-0", ["7"] * 8, "7")
    long = kept_row("toy-0", ["7"] * 16, "7")
    problems = bench.load([write(tmp_path / "a.jsonl.gz", [short]), write(tmp_path / "b.jsonl.gz", [long])])
    assert [p.n for p in problems] == [16]


# (tools review) a baseline named otherwise than its dataset lost the replay line without a word
@pytest.mark.parametrize("baseline_name", ["toy.jsonl", "full16_toy_live.jsonl"])
def test_live_rows_compare_with_the_baseline_and_the_replay(tmp_path, baseline_name):
    easy = kept_row("toy-0", ["7"] * 16, "7")
    live = tmp_path / "live.jsonl"
    live.write_text(
        json.dumps(
            {
                "id": "0",
                "strategy": "majority",
                "n": 16,
                "answer": "7",
                "correct": True,
                "seconds": 2.0,
                "candidates": easy["candidates"][:4],
            }
        )
        + "\n"
    )
    base = tmp_path / baseline_name
    base.write_text(
        json.dumps(
            {"problem_id": "0", "strategy": "majority", "n": 16, "correct": True, "tokens_generated": 280}
        )
        + "\n"
    )
    problems = bench.load([write(tmp_path / "k.jsonl.gz", [easy])])
    text = "\n".join(bench.live_table(live, base, problems, AdaptiveStop(rule="beta")))
    assert "tokens 46 vs 280" in text
    assert "samples equal on 1/1, answer equal on 1/1" in text


def test_first_wave_bound_takes_majority_at_4_where_the_probes_agree(tmp_path):
    def row(pid, n, correct, tokens, agreement):
        return {
            "problem_id": pid,
            "strategy": "majority",
            "n": n,
            "correct": correct,
            "tokens_generated": tokens,
            "difficulty_features": {"agreement": agreement},
        }

    rows = [
        row("0", 4, True, 100, 1.0),
        row("0", 16, False, 400, 1.0),
        row("1", 4, False, 100, 0.5),
        row("1", 16, True, 400, 0.5),
    ]
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = bench.first_wave_bound(path, AdaptiveStop(rule="beta"))
    assert "1 stop after the first wave: at least 38 % fewer tokens" in line  # 300 of 800
    assert "50.0 % -> 100.0 % (won/lost 1/0)" in line
    assert "not for this rule" in bench.first_wave_bound(path, AdaptiveStop(threshold=0.99, rule="beta"))


def test_weighted_vote_follows_the_scores_and_only_scored_problems_get_rows(tmp_path):
    # Four "1"s and twelve "2"s: majority picks 2; scores that favour 1 make weighted pick 1.
    row = kept_row("toy-0", ["1"] * 4 + ["2"] * 12, "1")
    unscored = kept_row("toy-1", ["3"] * 16, "3")
    problems = bench.load([write(tmp_path / "k.jsonl.gz", [row, unscored])])
    scored = next(p for p in problems if p.key == "toy-0")
    scored.scores = [0.9] * 4 + [0.1] * 12
    assert not bench.majority_vote(scored, 16)[1]
    tally, right = bench.weighted_vote(scored, 16)
    assert right and tally.totals["1"] > tally.totals["2"]
    assert scored.candidates[0].score is None  # the kept candidates are left as they were
    weighted = [line for line in bench.table(problems, [0.95], 4, 4) if "| weighted_best_of_n |" in line]
    assert weighted and all("| 1 |" in line for line in weighted)  # toy-1 has no scores: left out


def test_pruning_replay_cuts_samples_at_the_first_step_under_the_threshold(tmp_path):
    # 4 right two-step samples the probe likes; 12 wrong ones whose first step scores 0.1
    row = kept_row("toy-0", ["1"] * 4 + ["2"] * 12, "1")
    for c in row["candidates"]:
        c["text"] = f"first I add\n\nso the answer is \\boxed{{{c['answer']}}}"
        c["step_token_ends"] = [4, c["n_tokens"]]
    first_end = len("first I add")
    scores = {
        "key": "toy-0",
        "prm": "toy-probe",
        "agg": "min",
        "step_cuts": [[first_end, len(c["text"])] for c in row["candidates"]],
        "step_scores": [[0.9, 0.9]] * 4 + [[0.1, 0.8]] * 12,
    }
    kept = write(tmp_path / "k.jsonl.gz", [row])
    problems = bench.load([kept])
    assert bench.add_step_scores(problems, [write(tmp_path / "s.jsonl.gz", [scores])]) == 1
    [p] = problems
    assert p.paths[0].steps == ["first I add", "\n\nso the answer is \\boxed{1}"]
    cut = bench.pruned(p, 0.2, [16])
    assert [c.stop_reason for c in cut.candidates] == ["eos"] * 4 + ["pruned"] * 12
    assert all(c.n_tokens == 4 and c.answer is None for c in cut.candidates[4:])  # no answer yet
    assert bench.pruned(p, 0.05, [16]).candidates == p.candidates  # nothing under 0.05
    assert bench.weighted_vote(cut, 16)[1]
    # in waves of 4, the waves of wrong samples each run their last sample to its end
    in_waves = bench.pruned(p, 0.2, [4, 4, 4, 4])
    assert [c.stop_reason for c in in_waves.candidates] == ["eos"] * 4 + (["pruned"] * 3 + ["eos"]) * 3
    lines = bench.table(problems, [0.95], 4, 4, rules=["budget"], prune_below=[0.2])
    [all_pruned] = [line for line in lines if "all, pruned under 0.2" in line]
    assert f"| {sum(range(10, 14)) + 12 * 4} |" in all_pruned  # the right ones in full, 4 tokens each else
    # what save_step_scores keeps reads back the same
    again = tmp_path / "again.jsonl.gz"
    bench.save_step_scores(problems, again, "toy-probe", "min")
    reread = bench.load([kept])
    bench.add_step_scores(reread, [again])
    assert [path.steps for path in reread[0].paths] == [path.steps for path in p.paths]
    assert reread[0].scores == p.scores


def test_a_live_full_n_run_serves_as_the_baseline_and_an_adaptive_one_is_refused(tmp_path):
    def run_row(i: int, correct: bool, no_adaptive: bool) -> dict:
        settings = {"no_adaptive": no_adaptive}
        counters = {"tokens_generated": 100 + i}
        return {
            "id": i,
            "strategy": "weighted_best_of_n",
            "n": 16,
            "correct": correct,
            "settings": settings,
            "counters": counters,
        }

    full = tmp_path / "full.jsonl"
    full.write_text("".join(json.dumps(run_row(i, i == 1, True)) + "\n" for i in range(2)))
    base = bench.full_n_rows(full, "weighted_best_of_n", 16)
    assert base == {
        "0": {"correct": False, "tokens_generated": 100},
        "1": {"correct": True, "tokens_generated": 101},
    }
    assert bench.full_n_rows(full, "majority", 16) == {}
    adaptive = tmp_path / "adaptive.jsonl"
    adaptive.write_text(json.dumps(run_row(0, True, False)) + "\n")
    with pytest.raises(SystemExit, match="not a full-N run"):
        bench.full_n_rows(adaptive, "weighted_best_of_n", 16)


def test_the_replay_takes_the_dataset_the_baseline_rows_name(tmp_path):
    """Diff review: kept rows of one dataset were replayed against a baseline of another."""
    mawps = tmp_path / "b.jsonl"
    mawps.write_text(json.dumps({"problem_id": "0", "dataset": "mawps"}) + "\n")
    toy = bench.load([write(tmp_path / "k.jsonl.gz", [kept_row("toy-0", ["7"] * 4, "7")])])
    assert bench.kept_dataset(toy, mawps) == "mawps"
    unnamed = tmp_path / "full16_toy_live.jsonl"
    unnamed.write_text(json.dumps({"id": "0"}) + "\n")
    assert bench.kept_dataset(toy, unnamed) == "toy"
