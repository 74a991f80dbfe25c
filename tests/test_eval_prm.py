"""tools/eval_prm.py: selection figures use the runtime's own picks."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from eval_prm import selection_accuracy  # noqa: E402

# A ProcessBench item whose every step is right (label -1); tests derive wrong ones from it.
RIGHT_ITEM = {
    "id": "x",
    "generator": "hand",
    "problem": "Tom has 3 boxes of 4 apples. How many apples?",
    "steps": ["3 boxes of 4 apples is 3 * 4 = 12 apples.", "Therefore, the answer is 12."],
    "final_answer_correct": True,
    "label": -1,
}


def row(gold: str, answers: list[str | None]) -> dict:
    cands = [
        {
            "text": f"\\boxed{{{a}}}",
            "answer": a,
            "score": None,
            "step_scores": [],
            "n_tokens": 5,
            "stop_reason": "eos",
            "correct": a == gold,
        }
        for a in answers
    ]
    return {"gold": gold, "candidates": cands}


def test_picks_and_pair_auc():
    # Problem 1: majority says 5 (wrong); the PRM's best and the summed scores say 7 (right).
    # Problem 2: 2-2 tie between 3 and 4: majority takes the earliest answer (4), whatever the
    # scores; the PRM's picks follow the scores (3 has the best member, 0.8 + 0.1 > 0.2 + 0.3).
    rows = [row("7", ["5", "5", "5", "7"]), row("3", ["4", "3", "4", "3"])]
    scores = [[[0.1], [0.2], [0.1], [0.9]], [[0.2], [0.8], [0.3], [0.1]]]
    got = selection_accuracy(rows, scores, "last")
    assert got["n_problems"] == 2
    assert got["majority"] == 0.0  # wrong on 1; on 2 the tie goes to the earliest answer, 4
    assert got["prm_best"] == 100.0
    assert got["prm_weighted"] == 100.0  # 0.9 > 0.4; 0.9 > 0.5
    assert got["oracle"] == 100.0
    # Pairs: problem 1: 7 (0.9) above each of three 5s -> 3/3; problem 2: 3s (0.8, 0.1) vs 4s
    # (0.2, 0.3) -> 0.8 wins both, 0.1 loses both -> 2/4. Total 5/7.
    assert got["pairs"] == 7
    assert abs(got["pair_auc"] - 100.0 * 5 / 7) < 1e-9


def test_unparseable_answers_never_count_as_right():
    rows = [row("7", [None, None])]
    rows[0]["candidates"][0]["correct"] = True  # a stored grade cannot rescue a missing answer
    got = selection_accuracy(rows, [[[0.9], [0.1]]], "min")
    assert got["majority"] == 0.0 and got["prm_best"] == 0.0 and got["prm_weighted"] == 0.0


@pytest.mark.slow
def test_processbench_scores_of_the_shipped_probe():
    """A probe reads the policy's states: each item is prefilled through the real policy."""
    from eval_prm import first_below, prm_scores

    from edgetts.paths import shipped_dir

    item = RIGHT_ITEM
    wrong = {**item, "steps": ["3 boxes of 4 apples is 3 * 4 = 15 apples.", "The answer is 15."], "label": 0}
    scores, manifest = prm_scores(str(shipped_dir() / "prm-probe-qwen05"), 1, {"f": [item, wrong]}, 1)
    assert manifest.calculator_check  # the shipped setting is reported, though scoring ran without
    assert [len(s) for s in scores["f"]] == [2, 2]
    assert all(0.0 <= x <= 1.0 for s in scores["f"] for x in s)
    assert first_below(scores["f"][0], 0.0) == -1


@pytest.mark.slow
def test_eval_prm_with_only_data_judges_the_shipped_default_at_its_manifest_threshold(tmp_path):
    """``eval_prm.py --data FILE`` alone: the step verifier a search would use for the default
    policy (its probe, items prefilled through the policy) at the threshold in its manifest."""
    import json
    import subprocess

    from edgetts.probe import ProbeScorer, policy_prm_dir

    verifier = str(policy_prm_dir())
    manifest = ProbeScorer.load(verifier).manifest  # a probe ships for the default policy
    item = RIGHT_ITEM
    data = tmp_path / "pb.json"
    data.write_text(
        json.dumps([item, {**item, "steps": ["3 * 4 = 15 apples.", "The answer is 15."], "label": 0}])
    )
    out = tmp_path / "out.json"
    tool = Path(__file__).resolve().parent.parent / "tools" / "eval_prm.py"
    subprocess.run([sys.executable, str(tool), "--data", str(data), "--json", str(out)], check=True)
    (run,) = json.loads(out.read_text())
    assert run["name"] == f"{verifier} calculator=on"
    assert run["threshold"] == manifest.threshold
    assert run["files"][str(data)]["n_error"] == 1 and run["files"][str(data)]["n_correct"] == 1
