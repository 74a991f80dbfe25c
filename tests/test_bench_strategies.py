"""tools/bench_strategies.py: sample-based rows from one sample set, and rescoring kept samples."""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_strategies as bench  # noqa: E402
import paired  # noqa: E402

from edgetts.search.base import Candidate  # noqa: E402


def cand(answer: str | None, score: float, n_tokens: int = 10) -> Candidate:
    return Candidate(
        text=f"so \\boxed{{{answer}}}",
        answer=answer,
        score=score,
        step_scores=[score],
        n_tokens=n_tokens,
        stop_reason="eos",
    )


def test_subset_rows_use_the_first_n_samples():
    # Majority of all four says 5; the single best score says 7; the summed scores say 7.
    cands = [cand("7", 0.9), cand("5", 0.2), cand("5", 0.3), cand("7", 0.1), cand("5", 0.1)]
    rows = {(r["strategy"], r["n"]): r for r in bench.subset_rows(cands, "7", [1, 4])}
    assert rows["majority", 1]["answer"] == "7" and rows["majority", 1]["tokens_generated"] == 10
    assert rows["majority", 4]["answer"] == "7"  # 2-2 tie: the earliest answer, scores unseen
    assert rows["best_of_n", 4]["answer"] == "7" and rows["best_of_n", 4]["correct"]
    assert rows["weighted_best_of_n", 4]["answer"] == "7"  # 1.0 against 0.5
    rows = {(r["strategy"], r["n"]): r for r in bench.subset_rows(cands, "7", [5])}
    assert rows["majority", 5]["answer"] == "5" and not rows["majority", 5]["correct"]
    assert rows["weighted_best_of_n", 5]["answer"] == "7"  # 1.0 against 0.6
    assert rows["majority", 5]["tokens_generated"] == 50
    # A tie the scores would break the other way: majority still takes the earliest answer.
    tied = [cand("5", 0.1), cand("7", 0.9), cand("7", 0.8), cand("5", 0.2)]
    rows = {(r["strategy"], r["n"]): r for r in bench.subset_rows(tied, "7", [4])}
    assert rows["majority", 4]["answer"] == "5" and rows["weighted_best_of_n", 4]["answer"] == "7"


def test_rescore_kept_samples_with_the_shipped_prm(tmp_path):
    question = "Tom has 3 boxes of 4 apples. How many apples does he have?"
    good = "Tom has 3 boxes with 4 apples each.\n\n3 * 4 = 12.\n\nThe answer is \\boxed{12}."
    bad = "Tom has 3 boxes with 4 apples each.\n\n3 * 4 = 7.\n\nThe answer is \\boxed{7}."
    samples = tmp_path / "bench.samples.jsonl"
    rows = []
    for pid in ("a", "b"):
        cands = [
            {"text": t, "answer": a, "score": None, "step_scores": [], "n_tokens": 20, "stop_reason": "eos"}
            for t, a in ((bad, "7"), (good, "12"), (bad, "7"), (good, "12"))
        ]
        rows.append(
            {
                "problem_id": pid,
                "dataset": "toy",
                "model": "m",
                "gold": "12",
                "question": question,
                "seconds": 4.0,
                "candidates": cands,
            }
        )
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rescored.jsonl"
    args = argparse.Namespace(
        samples=str(samples),
        labels=None,
        data=None,
        model=None,
        prm=None,
        out=str(out),
        n=[1, 4],
        agg=None,
        threads=1,
        no_check_arithmetic=False,
        run_programs=False,
    )
    bench.rescore(args)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    majority = {(r["problem_id"], r["n"]): r["answer"] for r in got if r["strategy"] == "majority"}
    assert majority["a", 4] == "12"  # the two samples that write 3 * 4 = 7 vote only last
    plain = argparse.Namespace(
        **{**vars(args), "out": str(tmp_path / "plain.jsonl"), "no_check_arithmetic": True}
    )
    bench.rescore(plain)
    rows = [json.loads(line) for line in Path(plain.out).read_text().splitlines()]
    assert {r["answer"] for r in rows if r["strategy"] == "majority" and r["n"] == 4} == {
        "7"
    }  # 2-2: earliest
    assert len(got) == 2 * 3 * 2  # problems x sample-based strategies x N
    best = {(r["problem_id"], r["n"]): r for r in got if r["strategy"] == "best_of_n"}
    # The calculator check caps "3 * 4 = 7", so the PRM's pick among all four is the right one.
    assert best["a", 4]["answer"] == "12" and best["a", 4]["correct"]
    assert best["a", 1]["answer"] == "7"  # N=1 sees only the first sample
    # the shipped text PRM (no states kept) is named by its place in the repository, alike on
    # every machine
    assert {r["prm"] for r in got} == {"edgetts/assets/prm-minilm"}
    bench.rescore(args)  # resumable: nothing is added twice
    assert len(out.read_text().splitlines()) == len(got)
    # a line torn by a killed process is dropped and its row made again; other settings are
    # refused without touching the file
    text = out.read_text()
    out.write_text(text[: text.rindex("{")] + text[text.rindex("{") :][:40])
    bench.rescore(args)
    assert out.read_text() == text
    with pytest.raises(SystemExit, match="other settings .*check_arithmetic was True, now False"):
        bench.rescore(argparse.Namespace(**{**vars(args), "no_check_arithmetic": True}))
    assert out.read_text() == text


def first_coordinate_probe(directory: Path, width: int) -> None:
    """A probe of policy "m" whose logit is a step state's first coordinate (aggregation last)."""
    pytest.importorskip("onnx")
    import train_probe

    manifest = {
        "kind": "policy_probe",
        "name": "p",
        "hidden_size": width,
        "policy": {"name": "m", "n_embd": width},
        "default_aggregation": "last",
    }
    train_probe.export(directory, np.eye(width)[0], 0.0, manifest)


def test_rescore_with_a_policy_probe_reads_kept_states(tmp_path):
    from edgetts.probe import save_states
    from edgetts.search.base import SolutionPath

    width = 4
    # The head scores the first state coordinate: samples answering 12 get +3, the others -3.
    first_coordinate_probe(tmp_path / "probe", width)
    answers = ["7", "12", "7", "7"]
    cands = [
        {
            "text": f"So.\n\nThe answer is \\boxed{{{a}}}.",
            "answer": a,
            "score": None,
            "step_scores": [],
            "n_tokens": 10,
            "stop_reason": "eos",
        }
        for a in answers
    ]
    rows = [
        {
            "problem_id": pid,
            "dataset": "toy",
            "model": "m",
            "gold": "12",
            "question": "q",
            "seconds": 1.0,
            "candidates": cands,
        }
        for pid in ("a", "b")
    ]
    samples = tmp_path / "bench.samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    states = tmp_path / "bench.states"
    states.mkdir()
    save_states(
        states / "a.npz",
        [
            SolutionPath(
                steps=["So.\n\n", f"The answer is {a}."],
                step_states=[np.zeros(width), np.array([3.0 if a == "12" else -3.0, 0, 0, 0])],
            )
            for a in answers
        ],
    )  # problem "b" has no kept states: skipped, said so
    out = tmp_path / "rescored.jsonl"
    bench.rescore(
        argparse.Namespace(
            samples=str(samples),
            labels=None,
            data=None,
            limit=None,
            model=None,
            prm=str(tmp_path / "probe"),
            out=str(out),
            n=[4],
            agg=None,
            threads=1,
            no_check_arithmetic=False,
            run_programs=False,
        )
    )
    got = {r["strategy"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(got) == {"majority", "best_of_n", "weighted_best_of_n"}
    assert got["majority"]["answer"] == "7" and not got["majority"]["correct"]
    assert got["best_of_n"]["answer"] == "12" and got["best_of_n"]["correct"]
    assert got["weighted_best_of_n"]["answer"] == "12"  # 0.95 against 3 x 0.05


def test_rescore_label_rows_picks_the_probes_layers_from_wider_states(tmp_path):
    """``--labels``: label_steps rows whose states join layers 12 and -1; a probe of layer -1 alone
    must read the second block (the first would pick the wrong answer)."""
    from edgetts.probe import save_states
    from edgetts.search.base import SolutionPath

    width = 4
    first_coordinate_probe(tmp_path / "probe", width)
    answers = ["7", "12", "7", "7"]
    text = "So.\n\nThe answer is \\boxed{{{}}}."
    cands = [
        {"text": text.format(a), "answer": a, "score": None, "step_scores": [], "n_tokens": 10}
        | {"stop_reason": "eos", "correct": a == "12", "step_stats": []}
        for a in answers
    ]
    labels = tmp_path / "labels"
    row = {"key": "toy-0", "source": "sample", "dataset": "toy", "id": "0", "gold": "12"}
    row |= {"layers": [12, -1], "candidates": cands}
    (labels / "states").mkdir(parents=True)
    (labels / "results.jsonl").write_text(json.dumps(row) + "\n")

    def state(first_block: float, last_block: float) -> np.ndarray:
        return np.array([first_block, 0, 0, 0, last_block, 0, 0, 0])

    save_states(
        labels / "states" / "toy-0.npz",
        [
            SolutionPath(
                steps=["So.\n\n", f"The answer is {a}."],
                step_states=[state(0, 0), state(-3.0 if a == "12" else 3.0, 3.0 if a == "12" else -3.0)],
            )
            for a in answers
        ],
    )
    out = tmp_path / "rescored.jsonl"
    args = dict(
        samples=None, labels=str(labels), data=None, limit=None, model="m", prm=str(tmp_path / "probe")
    )
    bench.rescore(
        argparse.Namespace(
            **args, out=str(out), n=[4], agg=None, threads=1, no_check_arithmetic=False, run_programs=False
        )
    )
    got = {r["strategy"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert got["best_of_n"]["answer"] == "12" and got["best_of_n"]["correct"]
    assert got["majority"]["answer"] == "7"
    assert got["best_of_n"]["problem_id"] == "0" and got["best_of_n"]["seconds"] is None


def test_report_only_keeps_one_n_of_a_strategy(tmp_path, capsys):
    """``--only beam_search:4`` keeps beam search's N=4 rows, not the N=16 ones run on fewer problems."""
    rows = [
        {"problem_id": p, "model": "m", "strategy": s, "n": n, "correct": True, "tokens_generated": 10}
        for p in ("a", "b")
        for s, n in (("majority", 16), ("beam_search", 4))
    ]
    rows.append(
        {
            "problem_id": "a",
            "model": "m",
            "strategy": "beam_search",
            "n": 16,
            "correct": True,
            "tokens_generated": 10,
        }
    )
    results = tmp_path / "rows.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench.report(
        argparse.Namespace(results=[str(results)], only=["majority", "beam_search:4"], plot=None, title=None)
    )
    out = capsys.readouterr().out
    assert out.startswith("2 problems common")
    kept = {tuple(line.split()[1:3]) for line in out.splitlines()[2:]}
    assert kept == {("majority", "16"), ("beam_search", "4")}


def test_sign_test_matches_the_binomial_tails():
    assert paired.sign_test_p(8, 0, two_sided=False) == pytest.approx(1 / 256)
    assert paired.sign_test_p(8, 0) == pytest.approx(2 / 256)
    assert paired.sign_test_p(0, 8) == pytest.approx(2 / 256)  # two-sided is symmetric
    assert paired.sign_test_p(3, 3) == 1.0 and paired.sign_test_p(0, 0) == 1.0
    assert paired.sign_test_p(5, 14) == pytest.approx(0.0636, abs=1e-4)


def write_rows(path: Path, strategy: str, n: int, correct: dict[str, bool], model: str = "m") -> None:
    with path.open("a") as f:
        for pid, ok in correct.items():
            f.write(
                json.dumps(
                    {
                        "problem_id": pid,
                        "dataset": "d",
                        "model": model,
                        "strategy": strategy,
                        "n": n,
                        "correct": ok,
                        "tokens_generated": 1,
                    }
                )
                + "\n"
            )


def test_compare_pairs_on_shared_problems_only(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_rows(a, "beam_search", 4, {"1": True, "2": True, "3": False, "9": True})
    write_rows(b, "best_of_n", 16, {"1": True, "2": False, "3": True, "4": False})
    write_rows(b, "best_of_n", 4, {"1": False, "2": False, "3": False})
    bench.compare(argparse.Namespace(a=f"{a}:beam_search:4", b=f"{b}:best_of_n:16"))
    out = capsys.readouterr().out
    assert "2/3 right" in out and "won 1, lost 1" in out and "p = 1" in out


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{a}:beam_search", "FILE:STRATEGY:N"),
        ("{a}:beam_search:four", "FILE:STRATEGY:N"),
        ("{missing}:beam_search:4", "no such results file"),
        ("{a}:dvts:4", "no rows"),
        ("{mixed}:beam_search:4", "several models"),
    ],
)
def test_compare_rejects_bad_specs(tmp_path, spec, message):
    a, mixed = tmp_path / "a.jsonl", tmp_path / "mixed.jsonl"
    write_rows(a, "beam_search", 4, {"1": True})
    write_rows(mixed, "beam_search", 4, {"1": True}, model="m1")
    write_rows(mixed, "beam_search", 4, {"1": False}, model="m2")
    spec = spec.format(a=a, mixed=mixed, missing=tmp_path / "nope.jsonl")
    with pytest.raises(SystemExit, match=message):
        bench.compare(argparse.Namespace(a=spec, b=f"{a}:beam_search:4"))


def test_repick_sums_the_kept_paths_scores_per_answer(tmp_path, capsys):
    """The top path says 8; two paths saying 7 outscore it together. Rows without kept paths
    (written before ``run`` kept them) are left out, and a second repick adds nothing."""
    finished = [bench.pick_record(cand(a, s)) for a, s in (("8", 0.9), ("7", 0.6), ("7", 0.5))]
    row = {"problem_id": "1", "dataset": "d", "model": "m", "gold": "7", "strategy": "dvts", "n": 4}
    rows = [
        {**row, "answer": "8", "correct": False, "tokens_generated": 30, "finished": finished},
        {**row, "problem_id": "2", "answer": "7", "correct": True, "tokens_generated": 30},
        {**row, "strategy": "majority", "answer": "7", "correct": True, "tokens_generated": 30},
    ]
    results, out = tmp_path / "rows.jsonl", tmp_path / "repicked.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for _ in range(2):
        bench.repick(argparse.Namespace(results=[str(results)], out=str(out)))
    (picked,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert picked["strategy"] == "dvts_weighted" and picked["answer"] == "7" and picked["correct"]
    assert "finished" not in picked and picked["tokens_generated"] == 30
    assert "1 of 2 rows kept no finished paths" in capsys.readouterr().err


def test_report_keeps_datasets_apart_and_refuses_a_row_twice(tmp_path, capsys):
    """Tools review: ids repeat across datasets, so two sets' problem 0 were one problem, each
    group averaging both; a duplicate row would have counted twice."""

    def row(dataset: str, pid: str, correct: bool) -> dict:
        return {
            "problem_id": pid,
            "dataset": dataset,
            "model": "m",
            "strategy": "majority",
            "n": 4,
            "correct": correct,
            "tokens_generated": 10,
        }

    results = tmp_path / "rows.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in [row("a", "0", True), row("b", "0", False)]))
    args = argparse.Namespace(results=[str(results)], only=[], plot=None, title=None)
    bench.report(args)
    assert capsys.readouterr().out.startswith("2 problems common")
    results.write_text("".join(json.dumps(r) + "\n" for r in [row("a", "0", True), row("a", "0", True)]))
    with pytest.raises(SystemExit, match="two rows of a/0"):
        bench.report(args)
