"""The "auto" strategy on fakes: difficulty features, table lookup, probe reuse, deadlines."""

from __future__ import annotations

import json
import time

import pytest
from fakes import FakeGenerator, FakeScorer, random_policy, tree_policy

from edgetts.search import STRATEGIES, run_search
from edgetts.search.auto import ComputeOptimalTable, auto, difficulty_features, load_table
from edgetts.search.base import Candidate, SearchConfig


def cand(answer: str | None, score: float | None = None) -> Candidate:
    return Candidate(text="", answer=answer, score=score, step_scores=[], n_tokens=1, stop_reason="eos")


def table(entries: dict) -> ComputeOptimalTable:
    return ComputeOptimalTable(entries=entries, fitted_from=["test"])


AGREE = tree_policy({"so the answer is \\boxed{7}": {}})  # every sample answers 7
SPLIT = random_policy(seed=3, answers=("1", "2", "3", "4"))


def test_auto_is_registered():
    assert "auto" in STRATEGIES


def test_features_match_the_bench_definition():
    f = difficulty_features([cand("1", 0.9), cand("1", 0.5), cand("2", 0.1), cand(None, 0.3), cand("1")])
    assert f == {"agreement": 0.5, "n_answers": 2.0, "prm_mean": pytest.approx(0.45), "prm_max": 0.9}
    assert difficulty_features([])["agreement"] == 0.0


def test_bins_and_lookup():
    t = table(
        {
            "easy": {"4": {"strategy": "majority", "n": 4}},
            "hard": {"4": {"strategy": "best_of_n", "n": 2}, "16": {"strategy": "beam_search", "n": 16}},
        }
    )
    assert t.bin_of({"agreement": 1.0}) == "easy"
    assert t.bin_of({"agreement": 0.75}) == "medium"
    assert t.bin_of({"agreement": 0.25}) == "hard"
    easy = t.choose({"agreement": 1.0}, 8, have_prm=True)
    assert (easy.strategy, easy.n) == ("majority", 8)  # fitted n spent its budget: so do we
    assert "fitted" in easy.reason
    hard = t.choose({"agreement": 0.25}, 32, have_prm=True)
    assert (hard.strategy, hard.n) == ("beam_search", 32)
    assert t.choose({"agreement": 0.25}, 8, have_prm=True).strategy == "best_of_n"
    assert t.choose({"agreement": 0.25}, 32, have_prm=False).strategy == "majority"
    medium = t.choose({"agreement": 0.75}, 8, have_prm=True)
    assert medium.strategy == "weighted_best_of_n" and "default rule" in medium.reason


def test_small_budget_stays_within_the_probes():
    t = table({"hard": {"2": {"strategy": "dvts", "n": 2}}})
    assert t.choose({"agreement": 0.0}, 4, have_prm=True).strategy == "weighted_best_of_n"


def test_shipped_table_loads():
    t = load_table()
    assert t.bins and isinstance(t.entries, dict)


@pytest.mark.parametrize("strategy", ["confidence_vote", "auto", "magic"])
def test_a_table_naming_a_strategy_auto_cannot_continue_with_is_refused_when_it_loads(tmp_path, strategy):
    """Seen in review: a hand-edited table naming confidence_vote would have weighed PRM scores
    as token confidences; an unknown name failed mid-search."""
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"table": {"hard": {"8": {"strategy": strategy, "n": 8}}}}))
    with pytest.raises(ValueError, match="auto cannot continue with"):
        ComputeOptimalTable.from_dict(json.loads(path.read_text()))
    assert load_table(str(path)).entries == {}  # the default rule, with a warning


def test_probes_are_reused_for_sampling_strategies():
    gen, scorer = FakeGenerator(SPLIT), FakeScorer(default=0.5)
    t = table(
        {
            "hard": {"8": {"strategy": "weighted_best_of_n", "n": 8}},
            "medium": {"8": {"strategy": "weighted_best_of_n", "n": 8}},
        }
    )
    result = auto("q", gen, scorer, SearchConfig(n=8), table=t)
    assert result.strategy == "auto:weighted_best_of_n"
    assert gen.roots == 2  # probes, then the 4 more samples
    assert [c.n_each for c in gen.calls] == [4, 4]
    assert len(result.candidates) == 8
    assert not gen.leaks()


def test_easy_question_stops_after_the_probes():
    gen = FakeGenerator(AGREE)
    t = table({"easy": {"8": {"strategy": "majority", "n": 1}}})
    result = auto("q", gen, FakeScorer(), SearchConfig(n=8), table=t)
    assert result.answer == "7" and gen.roots == 1 and len(result.candidates) == 4


def test_tree_choice_adds_probes_to_the_pick():
    gen, scorer = FakeGenerator(SPLIT), FakeScorer(rule=lambda s: 0.9 if "{2}" in s else 0.2)
    t = table({b: {"8": {"strategy": "beam_search", "n": 8}} for b in ("easy", "medium", "hard")})
    result = auto("q", gen, scorer, SearchConfig(n=8, beam_width=4), table=t)
    assert result.strategy == "auto:beam_search"
    assert len(result.candidates) > 4
    assert not gen.leaks()


def test_without_prm_agreement_only_majority():
    gen = FakeGenerator(SPLIT)
    result = run_search("auto", "q", gen, None, SearchConfig(n=8))
    assert result.strategy == "auto:majority"
    assert result.counters["tokens_decoded"] > 0


def test_auto_respects_deadline():
    gen = FakeGenerator(random_policy(seed=1, p_finish=0.05, max_depth=50), step_delay_s=0.02)
    start = time.perf_counter()
    result = auto("q", gen, FakeScorer(), SearchConfig(n=16, deadline_s=0.3), table=table({}))
    assert time.perf_counter() - start < 0.3 + 0.1
    assert result.cut_short
    assert not gen.leaks()


def quick_probes_slow_rest(steps: tuple[str, ...], i: int) -> tuple[str, bool]:
    """Samples 0-3 (the probes) answer 7 at once; the later ones take 50 steps."""
    if i < 4:
        return "so the answer is \\boxed{7}", True
    return f"step {len(steps)} of a long way round", len(steps) >= 50


@pytest.mark.parametrize("strategy", ["weighted_best_of_n", "best_of_n", "majority"])
def test_past_the_deadline_the_probes_answers_stand_and_cut_samples_are_not_scored(strategy):
    gen = FakeGenerator(quick_probes_slow_rest, step_delay_s=0.01)
    scorer = FakeScorer()
    entries = {"easy": {"16": {"strategy": strategy, "n": 16}}}
    result = auto("q", gen, scorer, SearchConfig(n=16, deadline_s=0.3), table=table(entries))
    assert result.strategy == f"auto:{strategy}" and result.answer == "7" and result.cut_short
    # the continuation's cut samples neither join the pick nor cost a PRM call past the deadline
    assert [c.answer for c in result.candidates] == ["7"] * 4
    assert all(len(steps) == 1 for call in scorer.seen for steps in call)
    assert gen.calls[1].first_index == 4  # numbered on from the probes: one run of 16
    assert not gen.leaks()


def test_a_continuation_skipped_for_lack_of_time_is_cut_short():
    class SlowRoot(FakeGenerator):
        def root(self, *args, **kwargs):
            time.sleep(0.15)  # a prefill: a second one would not fit in the time left
            return super().root(*args, **kwargs)

    gen = SlowRoot(AGREE)
    entries = {"easy": {"16": {"strategy": "weighted_best_of_n", "n": 16}}}
    result = auto("q", gen, FakeScorer(), SearchConfig(n=16, deadline_s=0.35), table=table(entries))
    assert len(result.candidates) == 4 and gen.roots == 1
    assert result.cut_short  # 16 were chosen, 4 drawn


@pytest.mark.parametrize(
    "data, message",
    [
        ({"bins": [{"agreement_min": 0.0}]}, "'name'"),
        ({"table": {"nowhere": {"8": {"strategy": "majority", "n": 8}}}}, "not one of"),
    ],
)
def test_a_table_auto_could_not_look_up_is_refused_when_it_loads(data, message):
    with pytest.raises(ValueError, match=message):
        ComputeOptimalTable.from_dict(data)


def test_a_budget_spelled_with_a_leading_zero_is_the_same_budget():
    """Search review: "08" loaded, then the lookup of str(8) failed mid-search."""
    row = {"08": {"strategy": "majority", "n": 8}}
    table = ComputeOptimalTable.from_dict({"table": {"easy": row, "medium": row, "hard": row}})
    result = auto("q", FakeGenerator(random_policy(0)), FakeScorer(), SearchConfig(n=8), table=table)
    assert result.strategy == "auto:majority"


def test_auto_does_not_score_a_pruned_sample_again():
    from edgetts.search.adaptive import AdaptiveStop

    config = SearchConfig(n=8, agg="min", adaptive=AdaptiveStop(threshold=1.0, prune_below=0.3))
    scorer = FakeScorer(rule=lambda s: 0.1 if "step 1" in s and int(s.split()[-1]) % 2 else 0.9)
    result = auto(
        "q", FakeGenerator(random_policy(3, p_finish=0.2)), scorer, config, table=ComputeOptimalTable()
    )
    assert result.strategy == "auto:weighted_best_of_n"
    assert any(c.stop_reason == "pruned" for c in result.candidates)
    seen = [steps for call in scorer.seen for steps in call]
    assert len(seen) == len(set(seen)), "a path was scored twice with the same steps"
