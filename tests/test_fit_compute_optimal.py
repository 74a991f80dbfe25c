"""The offline fit behind strategy "auto" (tools/fit_compute_optimal.py), on hand-made rows."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import fit_compute_optimal as fco  # noqa: E402

from edgetts.search.auto import ComputeOptimalTable  # noqa: E402


def rows_for(problem_id: str, agreement: float, correct: dict[tuple[str, int], bool]) -> list[dict]:
    return [
        {
            "problem_id": problem_id,
            "dataset": "toy",
            "strategy": s,
            "n": n,
            "correct": ok,
            "tokens_generated": 100 * n,
            "difficulty_features": {"agreement": agreement},
        }
        for (s, n), ok in correct.items()
    ]


def toy_problems() -> list[dict]:
    """Easy problems (all probes agree): majority is right. Hard ones: only beam search at 16."""
    rows = []
    for i in range(12):  # enough for a sign test to tell the bins apart
        rows += rows_for(
            f"e{i}", 1.0, {("majority", 4): True, ("majority", 16): True, ("beam_search", 16): i % 2 == 0}
        )
        rows += rows_for(
            f"h{i}", 0.25, {("majority", 4): False, ("majority", 16): False, ("beam_search", 16): True}
        )
    return list(fco.by_problem(rows).values())


def test_fit_picks_per_bin_and_ties_go_to_the_cheaper_choice():
    fitted, binned = fco.fit(toy_problems(), min_problems=3)
    assert len(binned["easy"]) == 12 and len(binned["hard"]) == 12
    assert fitted["entries"]["easy"]["16"]["strategy"] == "majority"
    assert fitted["entries"]["easy"]["16"]["n"] == 4  # as accurate as majority@16, cheaper
    assert fitted["entries"]["hard"]["16"]["strategy"] == "beam_search"


def test_auto_outcome_counts_the_probes():
    problem = toy_problems()[0]  # an easy one
    table = ComputeOptimalTable(entries={"easy": {"16": {"strategy": "beam_search", "n": 16}}})
    correct, tokens = fco.auto_outcome(table, problem, 16)
    assert tokens == 1600 + 400  # the tree search plus the 4 probes it could not reuse
    table = ComputeOptimalTable(entries={"easy": {"4": {"strategy": "majority", "n": 1}}})
    assert fco.auto_outcome(table, problem, 16) == (True, 400)  # majority over the 4 probes


def test_leave_one_out_beats_every_fixed_strategy_on_separable_bins(capsys):
    fco.evaluate(toy_problems(), [16], min_problems=3)
    line = capsys.readouterr().out.splitlines()[-1].split()
    auto, fixed = line[1], line[3::2]
    assert auto == "100.0%±0.0%" and all(not f.startswith("100.0%") for f in fixed), line
    assert "75.0%±8.8%" in fixed  # beam search, 18 of 24 right: sqrt(0.75 x 0.25 / 24) = 8.8 %


def test_require_keeps_the_problems_benched_with_a_configuration(tmp_path, monkeypatch, capsys):
    rows = rows_for("a", 1.0, {("majority", 4): True, ("beam_search", 4): True})
    rows += rows_for("b", 1.0, {("majority", 4): True})
    results = tmp_path / "rows.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(
        sys,
        "argv",
        ["fit", str(results), "--require", "beam_search:4", "--out", str(tmp_path / "table.json")],
    )
    fco.main()
    assert "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "table.json").read_text())["n_problems"] == 1
    assert fco.parse_required(["dvts:16"]) == [("dvts", 16)]
    with pytest.raises(SystemExit, match="STRATEGY:N"):
        fco.parse_required(["dvts"])


def test_evaluate_returns_the_curves_it_prints(tmp_path, capsys):
    curves = fco.evaluate(toy_problems(), [4, 16], min_problems=3)
    assert curves["beam_search"] == [(16, 1600, 0.75)]  # no N=4 rows: no point there
    assert curves["majority"] == [(4, 400, 0.5), (16, 1600, 0.5)]
    assert curves["auto"][-1][2] == 1.0
    pytest.importorskip("matplotlib")
    fco.plot(curves, str(tmp_path / "auto.png"), 12)
    assert (tmp_path / "auto.png").stat().st_size > 1000


def test_a_bin_leaves_the_overall_choice_only_for_a_real_gain():
    # Overall majority@16 is right on 3 of 4 problems; in bin "easy" (2 problems) beam@16 wins one
    # more problem than majority: not enough with min_gain 2, enough with 1.
    rows = []
    for i, (maj, beam) in enumerate([(False, True), (True, True), (True, False), (True, False)]):
        rows += rows_for(f"p{i}", 1.0 if i < 2 else 0.25, {("majority", 16): maj, ("beam_search", 16): beam})
    problems = list(fco.by_problem(rows).values())
    easy = [p for p in problems if p["features"]["agreement"] == 1.0]
    assert fco.bin_entry(easy, problems, 16, min_gain=2, alpha=1.0)["strategy"] == "majority"
    assert fco.bin_entry(easy, problems, 16, min_gain=2, alpha=1.0)["overall"]
    assert fco.bin_entry(easy, problems, 16, min_gain=1, alpha=1.0)["strategy"] == "beam_search"
    # one win and no loss is no evidence at the 5 % level
    assert fco.bin_entry(easy, problems, 16, min_gain=1, alpha=0.05)["strategy"] == "majority"


def test_auto_is_never_fitted_to_fewer_samples_than_its_probes():
    rows = rows_for(
        "a", 0.25, {("majority", 1): True, ("majority", 4): False, ("weighted_best_of_n", 4): True}
    )
    entry = fco.best_entry(list(fco.by_problem(rows).values()), 16)
    assert (entry["strategy"], entry["n"]) == ("weighted_best_of_n", 4)


def test_a_cheaper_choice_that_only_ties_in_a_bin_does_not_replace_the_overall_one():
    rows = rows_for("e0", 1.0, {("majority", 4): True, ("majority", 16): True})
    rows += rows_for("e1", 1.0, {("majority", 4): False, ("majority", 16): False})
    rows += rows_for("h0", 0.25, {("majority", 4): False, ("majority", 16): True})
    problems = list(fco.by_problem(rows).values())
    easy = [p for p in problems if p["features"]["agreement"] == 1.0]
    assert fco.bin_entry(easy, problems, 16, min_gain=2, alpha=1.0)["n"] == 16


def test_the_default_rule_holds_overall_unless_beaten_by_min_gain():
    rows = []
    for i, (wbon, maj) in enumerate([(True, True), (False, True), (True, True), (False, False)]):
        rows += rows_for(f"p{i}", 0.5, {("weighted_best_of_n", 16): wbon, ("majority", 16): maj})
    problems = list(fco.by_problem(rows).values())
    assert fco.overall_entry(problems, 16, min_gain=2, alpha=1.0)["strategy"] == "weighted_best_of_n"
    assert fco.overall_entry(problems, 16, min_gain=1, alpha=1.0)["strategy"] == "majority"


def test_beats_needs_the_gain_and_a_sign_test():
    def problems(wins: int, losses: int, ties: int) -> list[dict]:
        outcomes = [(True, False)] * wins + [(False, True)] * losses + [(True, True)] * ties
        return [{"correct": {("a", 4): a, ("b", 4): b}} for a, b in outcomes]

    assert fco.beats(problems(5, 0, 9), ("a", 4), ("b", 4), min_gain=2, alpha=0.05)  # p = 1/32
    assert not fco.beats(problems(4, 0, 9), ("a", 4), ("b", 4), min_gain=2, alpha=0.05)  # p = 1/16
    assert not fco.beats(problems(9, 8, 0), ("a", 4), ("b", 4), min_gain=2, alpha=1.0)  # gain 1


def test_load_rows_reads_gzipped_rows_as_plain_ones(tmp_path):
    import gzip

    rows = rows_for("a", 1.0, {("majority", 4): True}) + rows_for("b", 0.5, {("greedy", 1): True})
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "rows.jsonl").write_text(text)
    with gzip.open(tmp_path / "rows.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    plain = fco.load_rows([str(tmp_path / "rows.jsonl")], None)
    assert fco.load_rows([str(tmp_path / "rows.jsonl.gz")], None) == plain
    assert [r["problem_id"] for r in plain] == ["a"]  # greedy rows are not auto's to pick
