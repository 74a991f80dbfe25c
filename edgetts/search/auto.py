"""Compute-optimal strategy choice ("auto"): judge difficulty cheaply, then spend the budget.

1. Draw ``PROBE_N`` (4) full samples and score them with the PRM: the same first samples, and the
   same features, as ``tools/bench_strategies.py`` records for every problem (agreement of the
   answers, PRM mean and max).
2. Bin the question by those features and look up the strategy and N fitted for that bin and
   budget (``config.n``) in ``edgetts/assets/compute_optimal.json`` (fitted offline by
   ``tools/fit_compute_optimal.py``). Without a fitted entry the default rule is weighted best-of-N
   at the full budget (majority without a PRM); the result says which was used.
3. Run the choice and *keep the probes*: for majority / best-of-N / weighted best-of-N they are
   the first samples of the N (only the rest are drawn, numbered on from them under the same
   seed: the samples of a single run of N, as the bench's kept sample sets hold them); for beam
   search and DVTS they join the final pick as extra finished candidates. Either way the final
   pick is the chosen strategy's own, over probes and continuation together, with unfinished
   paths only as a fallback when no finished one has an answer.

Without a PRM, difficulty is agreement alone and only majority can be chosen.

With ``config.adaptive`` a majority or weighted best-of-N choice continues in waves after the
probes (which are its first wave) and stops once its vote has settled, ``choice.n`` at most (what
``tools/bench_adaptive.py`` replays).

The continuation calls ``generator.root`` again; the llama.cpp policy keeps the prefilled prompt
and forks from it again (another generator may prefill once more, which the deadline check
allows for). A tree search's root gets an offset sampler seed, so its paths differ from the
probes (the policy seeds each path from the run seed and its place in the tree).
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from edgetts.paths import find_asset
from edgetts.search.adaptive import Tally
from edgetts.search.base import (
    Candidate,
    Deadline,
    SearchConfig,
    SearchResult,
    SolutionPath,
    StepGenerator,
    StepScorer,
)
from edgetts.search.common import (
    as_weighted_vote,
    pruning,
    sample_in_waves,
    score_in_time,
    score_wave,
    with_fallback,
)
from edgetts.search.select import pick_by_vote, score_or_zero, tally_votes, to_candidate

log = logging.getLogger(__name__)

TABLE_NAME = "compute_optimal.json"  # shipped in edgetts/assets; $EDGETTS_HOME/ overrides
PROBE_N = 4
SEED_OFFSET = 1_000_003
MIN_REMAINING_S = 0.05  # less than this left: answer from the probes instead of starting more
NO_PRM = ("majority",)
VOTES = ("majority", "weighted_best_of_n")  # choices whose continuation may stop early
UNFINISHED = (None, "deadline")  # a path's stop_reason while it has not ended (cut, or between rounds)
# Bins over the probes' features, first match wins. Shared with tools/fit_compute_optimal.py.
DEFAULT_BINS = (
    {"name": "easy", "agreement_min": 1.0},
    {"name": "medium", "agreement_min": 0.5},
    {"name": "hard", "agreement_min": 0.0},
)


def difficulty_features(candidates: list[Candidate]) -> dict[str, float]:
    """Agreement and PRM confidence of the first samples (as tools/bench_strategies.py records)."""
    first = candidates[:PROBE_N]
    _, votes = pick_by_vote(first, lambda c: 1.0)
    scores = [c.score for c in first if c.score is not None]
    return {
        "agreement": max(votes.values(), default=0.0) / max(len(first), 1),
        "n_answers": float(len(votes)),
        "prm_mean": statistics.fmean(scores) if scores else 0.0,
        "prm_max": max(scores, default=0.0),
    }


@dataclass
class Choice:
    strategy: str
    n: int
    bin: str
    reason: str


@dataclass
class ComputeOptimalTable:
    """bin -> budget N -> the strategy and N that scored best there in the bench results."""

    bins: list[dict] = field(default_factory=lambda: [dict(b) for b in DEFAULT_BINS])
    entries: dict[str, dict[str, dict]] = field(default_factory=dict)
    fitted_from: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> ComputeOptimalTable:
        """The table in ``data``; ValueError for an entry auto cannot continue with (a hand-edited
        table naming auto itself, or confidence_vote, whose pick would read PRM scores as token
        confidences), so a bad table is refused when it loads, not mid-search."""
        table = cls(
            bins=list(data.get("bins") or DEFAULT_BINS),
            entries=dict(data.get("table") or {}),
            fitted_from=list(data.get("fitted_from") or []),
        )
        if not all(isinstance(b, dict) and isinstance(b.get("name"), str) for b in table.bins):
            raise ValueError("every bin must be an object with a 'name'")
        bin_names = [b["name"] for b in table.bins]
        for name, row in table.entries.items():
            if name not in bin_names:
                raise ValueError(f"the table has an entry for bin {name!r}, which is not one of {bin_names}")
            if not isinstance(row, dict) or not all(isinstance(e, dict) for e in row.values()):
                raise ValueError(f"bin {name!r}: budgets must map to {{'strategy': ..., 'n': ...}}")
            for budget, entry in row.items():
                if not str(budget).isdigit():
                    raise ValueError(f"bin {name!r}: budget {budget!r} is not a whole number")
                strategy = entry.get("strategy")
                if strategy not in continuable():
                    raise ValueError(
                        f"bin {name!r}, budget {budget}: auto cannot continue with {strategy!r} "
                        f"(one of {sorted(continuable())})"
                    )
                if int(entry.get("n", 0)) < 1:
                    raise ValueError(f"bin {name!r}, budget {budget}: n must be at least 1")
            # "08" and "8" name one budget, looked up as str(int): keep that spelling
            table.entries[name] = {str(int(budget)): entry for budget, entry in row.items()}
        return table

    def bin_of(self, features: dict[str, float]) -> str:
        for b in self.bins:
            if features.get("agreement", 0.0) >= b.get("agreement_min", 0.0) and features.get(
                "prm_mean", 0.0
            ) >= b.get("prm_mean_min", 0.0):
                return b["name"]
        return self.bins[-1]["name"]

    def choose(self, features: dict[str, float], budget_n: int, have_prm: bool) -> Choice:
        """The fitted choice for this difficulty and budget, else the default rule.

        A budget no larger than the probes only picks among them: a tree search would start over.
        """
        choice = self._lookup(features, budget_n, have_prm)
        if budget_n <= PROBE_N and family_of(choice.strategy) != "sample":
            choice.strategy = "weighted_best_of_n"
            choice.reason += "; budget within the probes: weighted best-of-N over them"
        return choice

    def _lookup(self, features: dict[str, float], budget_n: int, have_prm: bool) -> Choice:
        name = self.bin_of(features)
        row = self.entries.get(name, {})
        budgets = sorted(int(b) for b in row)
        fitting = [b for b in budgets if b <= budget_n]
        if fitting:
            key = fitting[-1]
            entry = row[str(key)]
            strategy, n = entry["strategy"], int(entry["n"])
            if n == key:  # the fit spent its whole budget there: spend ours too
                n = budget_n
            if have_prm or strategy in NO_PRM:
                return Choice(strategy, min(n, budget_n), name, f"fitted for bin {name}, budget {key}")
            return Choice("majority", budget_n, name, f"fitted {strategy} needs the PRM: majority")
        strategy = "weighted_best_of_n" if have_prm else "majority"
        return Choice(strategy, budget_n, name, "default rule (no fitted entry for this budget)")


@lru_cache(maxsize=4)
def load_table(path: str | None = None) -> ComputeOptimalTable:
    """The table at ``path`` (default: the user's, else the shipped one); a missing or unreadable
    table means the default rule everywhere."""
    path = path or str(find_asset(TABLE_NAME))
    try:
        return ComputeOptimalTable.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        log.warning("compute-optimal table %s unusable (%s): default rule only", path, exc)
        return ComputeOptimalTable()


def _reseeded(config: SearchConfig) -> SearchConfig:
    """The same search with another sampling seed, so a second root's paths differ from the probes."""
    return replace(config, sampling=replace(config.sampling, seed=config.sampling.seed + SEED_OFFSET))


def auto(
    question: str,
    generator: StepGenerator,
    scorer: StepScorer | None,
    config: SearchConfig,
    table: ComputeOptimalTable | None = None,
) -> SearchResult:
    """Probe, choose by difficulty and budget ``config.n``, continue reusing the probes."""
    config.validate()
    table = table or load_table()
    deadline = Deadline(config.deadline_s, config.cancel)
    root = generator.root(question, config.sampling)
    prefill_s = deadline.elapsed_s()  # a generator that cannot reuse the prompt prefills it again
    probes = generator.extend([root], min(PROBE_N, config.n), to_end=True, deadline=deadline)
    generator.release(probes)
    if scorer is not None:
        score_in_time(scorer, question, probes, [], deadline)
    else:
        log.info("auto: no PRM, difficulty from answer agreement alone")
    # Every probe counts towards the agreement, as when the compute-optimal table was fitted.
    features = difficulty_features([to_candidate(p, config.agg, check_arithmetic=False) for p in probes])
    choice = table.choose(features, config.n, scorer is not None)
    extra = _continue(question, generator, scorer, config, choice, probes, deadline, prefill_s)
    # as conclude(): unfinished paths (the probes' or the continuation's) only as a fallback
    everything = [to_candidate(p, config.agg, config.check_arithmetic) for p in probes]
    everything += extra.candidates if extra is not None else []
    candidates = with_fallback(
        [c for c in everything if c.stop_reason not in UNFINISHED],
        [c for c in everything if c.stop_reason in UNFINISHED],
    )
    chosen, votes = _pick(choice.strategy, candidates, config)
    return SearchResult(
        strategy=f"auto:{choice.strategy}",
        answer=chosen.answer if chosen else None,
        chosen=chosen,
        candidates=candidates,
        votes=votes,
        cut_short=deadline.expired()
        or any(p.stop_reason == "deadline" for p in probes)
        or bool(extra and extra.cut_short)
        or (extra is None and choice.n > len(probes)),  # no time left to add what was chosen
    )


def _continue(
    question: str,
    generator: StepGenerator,
    scorer: StepScorer | None,
    config: SearchConfig,
    choice: Choice,
    probes: list[SolutionPath],
    deadline: Deadline,
    prefill_s: float = 0.0,
) -> SearchResult | None:
    """Run what the choice adds to the probes, within the time left; None when nothing is added.

    Nothing is started when the time left would not cover a second prefill (which no deadline
    can cut short) with room to decode after it.
    """
    remaining_s = deadline.remaining_s()
    if deadline.expired() or remaining_s < max(MIN_REMAINING_S, 2 * prefill_s):
        return None
    deadline_s = None if config.deadline_s is None else remaining_s
    n_probes = len(probes)
    if family_of(choice.strategy) == "sample":
        if choice.n <= n_probes:
            return None
        # best-of-N has no vote to settle: it always draws its N
        adaptive = config.adaptive if choice.strategy in VOTES else None
        sub = replace(config, n=choice.n, deadline_s=deadline_s, adaptive=adaptive)
        return _continue_in_waves(question, generator, scorer, sub, choice.strategy, probes)
    width = min(config.beam_width, choice.n)
    sub = replace(config, n=max(width, choice.n // width * width), beam_width=width, deadline_s=deadline_s)
    return _registry()[choice.strategy].run(question, generator, scorer, _reseeded(sub))


def _continue_in_waves(
    question: str,
    generator: StepGenerator,
    scorer: StepScorer | None,
    config: SearchConfig,
    strategy: str,
    probes: list[SolutionPath],
) -> SearchResult:
    """The samples after the probes, numbered on from them: in waves until the chosen vote
    settles (``config.adaptive``), else all of ``config.n`` at once."""
    weighted = strategy == "weighted_best_of_n" and scorer is not None
    scored_by_prm = strategy != "majority" and scorer is not None  # majority needs no scores

    def tally(paths: list[SolutionPath]) -> Tally:
        candidates = [to_candidate(p, config.agg, config.check_arithmetic) for p in paths]
        if weighted:
            return tally_votes(candidates, score_or_zero)
        return tally_votes(candidates, lambda c: 1.0)

    scored = list(probes)

    def score(wave: list[SolutionPath], deadline: Deadline) -> None:
        # the probes come first in ``scored``: finished, they are answers in hand too
        if scored_by_prm:
            score_wave(scorer, question, wave, scored, deadline)
        else:
            scored.extend(wave)

    prune = pruning(scorer, question, config) if weighted else None
    config = as_weighted_vote(config) if weighted else config
    paths, deadline = sample_in_waves(question, generator, config, tally, score, prior=probes, prune=prune)
    return SearchResult(
        strategy=strategy,
        answer=None,  # the pick is over probes and these together (_pick)
        chosen=None,
        candidates=[to_candidate(p, config.agg, config.check_arithmetic) for p in paths],
        cut_short=deadline.expired() or any(p.stop_reason == "deadline" for p in paths),
    )


def _pick(strategy: str, candidates: list[Candidate], config: SearchConfig):
    """The chosen strategy's own final rule, over probes and continuation together."""
    final_pick = _registry()[strategy].final_pick
    assert final_pick is not None, f"auto's table names {strategy!r}, which has no final pick"
    return final_pick(candidates, config)


def _registry() -> dict:
    # Imported here: the registry imports this module (auto is one of its strategies).
    from edgetts.search.registry import REGISTRY

    return REGISTRY


def continuable() -> set[str]:
    """The strategies auto may choose: those a PRM score or a vote picks for (their probes
    carry no token confidences, so confidence_vote is none of them)."""
    return {
        name
        for name, info in _registry().items()
        if info.family in ("sample", "tree") and info.final_pick is not None and not info.needs_confidence
    }


def family_of(strategy: str) -> str:
    """The registry's family of ``strategy`` ("sample", "tree", "auto")."""
    return _registry()[strategy].family
