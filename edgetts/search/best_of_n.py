"""Best-of-N and weighted best-of-N: N full samples, each scored step by step by the PRM.

* ``best_of_n`` keeps the single sample with the highest aggregated score (``config.agg``).
* ``weighted_best_of_n`` sums aggregated scores per distinct answer and returns the answer with the
  largest total, so several decent samples agreeing can beat one lucky high score.
"""

from __future__ import annotations

from edgetts.search.base import (
    SearchConfig,
    SearchResult,
    StepGenerator,
    StepScorer,
)
from edgetts.search.common import conclude, require_scorer, sample_to_end, score_in_time


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
    return _sample_and_pick(
        "weighted_best_of_n", question, generator, scorer, config, weighted=True
    )


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
    paths, deadline = sample_to_end(question, generator, config)  # KV freed before the slow PRM
    score_in_time(scorer, question, paths, [], deadline)
    finished = [p for p in paths if p.finished]
    partial = [p for p in paths if not p.finished]
    return conclude(strategy, finished, partial, config, weighted, cut_short=bool(partial))
