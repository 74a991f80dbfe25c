"""Best-of-N and weighted best-of-N: N full samples, each scored step by step by the PRM.

* ``best_of_n`` keeps the single sample with the highest aggregated score (``config.agg``).
* ``weighted_best_of_n`` sums aggregated scores per distinct answer and returns the answer with the
  largest total, so several decent samples agreeing can beat one lucky high score.

The final pick (:func:`pick`) and the anytime wrap-up (:func:`conclude`) live here because beam
search and DVTS end the same way: their finished beams or leaves are judged like best-of-N samples.
"""

from __future__ import annotations

from edgetts.grading import extract_answer, normalize_answer
from edgetts.search.base import (
    Candidate,
    Deadline,
    Path,
    SearchConfig,
    SearchResult,
    StepGenerator,
    StepScorer,
    sample_to_end,
)
from edgetts.search.select import pick_best, pick_by_vote, score_paths, to_candidate


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
    scorer = require_scorer(strategy, scorer, config)
    paths, deadline = sample_to_end(question, generator, config)  # KV freed before the slow PRM
    score_in_time(scorer, question, paths, [], deadline)
    finished = [p for p in paths if p.finished]
    partial = [p for p in paths if not p.finished]
    return conclude(strategy, finished, partial, config, weighted, cut_short=bool(partial))


def require_scorer(strategy: str, scorer: StepScorer | None, config: SearchConfig) -> StepScorer:
    """Check the settings and that a PRM was given, before any work starts."""
    config.validate(strategy)
    if scorer is None:
        raise ValueError(f"strategy {strategy!r} needs a PRM (step scorer)")
    return scorer


def score_in_time(
    scorer: StepScorer,
    question: str,
    paths: list[Path],
    finished: list[Path],
    deadline: Deadline,
) -> None:
    """Score ``paths`` (new this round); past the deadline, only those that can still matter.

    Once the deadline has passed, the search ends with a pick among finished paths, and unfinished
    ones are only a fallback when no finished path has an answer; scoring them anyway would be the
    one PRM call that runs the search further past its deadline.
    """
    if deadline.expired():
        done = finished + [p for p in paths if p.finished]
        if any(normalize_answer(extract_answer(p.text)) is not None for p in done):
            paths = [p for p in paths if p.finished]
    score_paths(scorer, question, paths)


def pick(candidates: list[Candidate], weighted: bool) -> tuple[Candidate | None, dict[str, float]]:
    """Highest-scored candidate, or the answer with the largest summed score when ``weighted``."""
    if weighted:
        return pick_by_vote(candidates, lambda c: c.score if c.score is not None else 0.0)
    return pick_best(candidates), {}


def conclude(
    strategy: str,
    finished: list[Path],
    partial: list[Path],
    config: SearchConfig,
    weighted: bool,
    cut_short: bool,
) -> SearchResult:
    """Pick among scored paths and build the result.

    Finished paths are preferred; unfinished (``partial``) ones only join when no finished path
    has an answer, so a search cut short by its deadline still answers when any path has one.
    """
    candidates = [to_candidate(p, config.agg) for p in finished]
    if not any(c.answer is not None and not c.provisional for c in candidates):
        candidates += [to_candidate(p, config.agg) for p in partial]
    chosen, votes = pick(candidates, weighted)
    return SearchResult(
        strategy=strategy,
        answer=chosen.answer if chosen else None,
        chosen=chosen,
        candidates=candidates,
        votes=votes,
        cut_short=cut_short or any(p.stop_reason == "deadline" for p in finished + partial),
    )
