"""Best-of-N and weighted best-of-N: N full samples, each scored step by step by the PRM.

* ``best_of_n`` keeps the single sample with the highest aggregated score (``config.agg``).
* ``weighted_best_of_n`` sums aggregated scores per distinct answer and returns the answer with the
  largest total, so several decent samples agreeing can beat one lucky high score. With
  ``config.adaptive`` it samples in waves, scores each wave as it finishes, and stops once the
  PRM-weighted vote has settled (``n`` at most); with ``config.adaptive.prune_below`` a sample
  whose weakest step so far scores under it stops there (its vote would weigh less, whatever
  its end). Plain best-of-N has no vote to settle: always N.
"""

from __future__ import annotations

from edgetts.search.adaptive import Tally
from edgetts.search.base import (
    Deadline,
    SearchConfig,
    SearchResult,
    SolutionPath,
    StepGenerator,
    StepScorer,
)
from edgetts.search.common import (
    as_weighted_vote,
    conclude,
    pruning,
    require_scorer,
    sample_in_waves,
    sample_to_end,
    score_in_time,
    score_wave,
)
from edgetts.search.select import score_or_zero, tally_votes, to_candidate


def best_of_n(
    question: str,
    generator: StepGenerator,
    scorer: StepScorer | None,
    config: SearchConfig,
) -> SearchResult:
    """Sample ``config.n`` solutions and return the one the PRM scores highest."""
    return _sample_and_pick("best_of_n", question, generator, scorer, config, weighted=False)


def weighted_best_of_n(
    question: str,
    generator: StepGenerator,
    scorer: StepScorer | None,
    config: SearchConfig,
) -> SearchResult:
    """Sample ``config.n`` solutions and return the answer with the largest summed PRM score."""
    return _sample_and_pick("weighted_best_of_n", question, generator, scorer, config, weighted=True)


def _sample_and_pick(
    strategy: str,
    question: str,
    generator: StepGenerator,
    scorer: StepScorer | None,
    config: SearchConfig,
    weighted: bool,
) -> SearchResult:
    config.validate()
    scorer = require_scorer(strategy, scorer)
    if weighted:
        paths, deadline = _sample_weighted(question, generator, scorer, config)
    else:
        paths, deadline = sample_to_end(question, generator, config)  # KV freed before the slow PRM
        score_in_time(scorer, question, paths, [], deadline)
    finished = [p for p in paths if p.finished]
    partial = [p for p in paths if not p.finished]
    # cut short: a sample the deadline stopped, or (weighted) waves stopped before the vote settled
    cut_short = bool(partial) or deadline.expired()
    return conclude(strategy, finished, partial, config, weighted, cut_short=cut_short)


def _sample_weighted(
    question: str, generator: StepGenerator, scorer: StepScorer, config: SearchConfig
) -> tuple[list[SolutionPath], Deadline]:
    """Samples scored wave by wave (KV freed before each PRM call), until the weighted vote
    settles (all at once without ``config.adaptive``)."""

    scored: list[SolutionPath] = []

    def score(wave: list[SolutionPath], deadline: Deadline) -> None:
        score_wave(scorer, question, wave, scored, deadline)

    def tally(paths: list[SolutionPath]) -> Tally:
        candidates = [to_candidate(p, config.agg, config.check_arithmetic) for p in paths]
        return tally_votes(candidates, score_or_zero)

    prune = pruning(scorer, question, config)
    config = as_weighted_vote(config)
    return sample_in_waves(question, generator, config, tally, on_wave=score, prune=prune)
