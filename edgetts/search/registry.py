"""Every strategy in one table: its name, what runs it, what it needs and how it picks.

The CLI's choices, the solver's checks, the scheduler's memory model, ``auto``'s continuation,
the server and the benchmarks all read this table: a new strategy is one module and one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edgetts.search.auto import auto
from edgetts.search.base import Candidate, SearchConfig, SearchResult, StepGenerator, StepScorer
from edgetts.search.beam_search import beam_search
from edgetts.search.best_of_n import best_of_n, weighted_best_of_n
from edgetts.search.common import pick
from edgetts.search.confidence_vote import KEEP, confidence_vote
from edgetts.search.dvts import dvts
from edgetts.search.majority import majority
from edgetts.search.select import pick_by_confidence, pick_by_vote, score_or_zero

Strategy = Callable[[str, StepGenerator, "StepScorer | None", SearchConfig], SearchResult]
FinalPick = Callable[[list[Candidate], SearchConfig], tuple["Candidate | None", dict[str, float]]]
# "sample": N full samples from one prefill, then a pick over them; "tree": a step-level search
# the PRM guides (beams in slots); "auto": picks one of the others per question.
Family = Literal["sample", "tree", "auto"]

GREEDY = "greedy"  # one sample at temperature 0: not a search, but a choice users make
# What a solve runs when no strategy is named (CLI, Python API, server, scheduler budgets).
DEFAULT_STRATEGY = "auto"
# How math is answered: prose (cot), programs run in the sandbox (pot), or both voting together.
MODES = ("cot", "pot", "cot+pot")


@dataclass(frozen=True)
class StrategyInfo:
    """What callers need to know of a strategy without running it."""

    name: str
    run: Strategy
    family: Family
    needs_scorer: bool  # cannot run without a PRM
    reads_scorer: bool  # uses the PRM when one is loaded (auto: to judge difficulty)
    final_pick: FinalPick | None  # its pick among finished candidates (auto reuses it)
    needs_confidence: bool = False  # reads the policy's token confidence (edgetts.confidence)

    def validate(self, config: SearchConfig) -> None:
        """Raise ValueError for settings this strategy cannot run with."""
        if self.family == "tree":
            config.validate_beams(self.name)
        else:
            config.validate()


def _vote(candidates: list[Candidate], _: SearchConfig):
    return pick_by_vote(candidates, lambda c: 1.0)


def _confidence(candidates: list[Candidate], _: SearchConfig):
    # confidence_vote shows each candidate's trace confidence as its score
    return pick_by_confidence(candidates, [score_or_zero(c) for c in candidates], KEEP)


def _guided(name: str, run: Strategy, family: Family, final_pick: FinalPick) -> StrategyInfo:
    """A strategy the PRM drives: it cannot run without one."""
    return StrategyInfo(name, run, family, needs_scorer=True, reads_scorer=True, final_pick=final_pick)


_ENTRIES = (
    StrategyInfo("majority", majority, "sample", needs_scorer=False, reads_scorer=False, final_pick=_vote),
    _guided("best_of_n", best_of_n, "sample", lambda c, _: pick(c, weighted=False)),
    _guided("weighted_best_of_n", weighted_best_of_n, "sample", lambda c, _: pick(c, weighted=True)),
    _guided("beam_search", beam_search, "tree", lambda c, cfg: pick(c, weighted=cfg.weighted_pick)),
    _guided("dvts", dvts, "tree", lambda c, _: pick(c, weighted=True)),
    StrategyInfo("auto", auto, "auto", needs_scorer=False, reads_scorer=True, final_pick=None),
    StrategyInfo(
        "confidence_vote",
        confidence_vote,
        "sample",
        needs_scorer=False,
        reads_scorer=False,
        final_pick=_confidence,
        needs_confidence=True,
    ),
)
REGISTRY: dict[str, StrategyInfo] = {info.name: info for info in _ENTRIES}


def names(family: Family | None = None) -> tuple[str, ...]:
    """Strategy names, all or of one family, in table order."""
    return tuple(name for name, info in REGISTRY.items() if family is None or info.family == family)


def choices() -> list[str]:
    """What a user may ask for: ``auto``, ``greedy`` and every strategy (CLI, server)."""
    return ["auto", GREEDY, *(name for name in REGISTRY if name != "auto")]
