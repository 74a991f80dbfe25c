"""Confidence-weighted vote (DeepConf, offline): majority voting for a policy without a PRM.

N full samples, as majority voting draws them, with the policy recording each token's top-k
confidence (``Sampling.record_confidence``; no second model, one pass over logits the
policy computed anyway). Each trace gets DeepConf's *lowest group confidence*: the lowest mean
confidence over any window of consecutive tokens (:func:`edgetts.confidence.trace_confidence`),
which drops where the model hesitated, often where it went wrong. The least confident traces are
filtered out (``KEEP``: the most confident share that votes) and the rest vote with their
confidence as weight. With one sample it is that sample, as majority is. With
``config.adaptive`` the samples come in waves until this weighted, filtered vote has settled.
"""

from __future__ import annotations

from edgetts.confidence import trace_confidence
from edgetts.search.adaptive import Tally
from edgetts.search.base import SearchConfig, SearchResult, SolutionPath, StepGenerator, StepScorer
from edgetts.search.common import sample_in_waves
from edgetts.search.select import pick_by_confidence, tally_confidence, to_candidate

KEEP = 0.9  # DeepConf-high: the 90 % most confident traces vote (10 % is its aggressive setting)
MODE = "lowest"


def confidence_vote(
    question: str,
    generator: StepGenerator,
    scorer: StepScorer | None,
    config: SearchConfig,
) -> SearchResult:
    """Sample ``config.n`` solutions, drop the least confident, vote weighted by confidence."""

    def tally(paths: list[SolutionPath]) -> Tally:
        return tally_confidence(
            [to_candidate(p, config.agg, config.check_arithmetic) for p in paths], _confidences(paths), KEEP
        )

    paths, deadline = sample_in_waves(question, generator, config, tally)
    confidences = _confidences(paths)
    candidates = [to_candidate(p, config.agg, config.check_arithmetic) for p in paths]
    for cand, conf in zip(candidates, confidences, strict=True):
        cand.score = conf  # what the vote weighed, shown where a PRM score would be
    chosen, votes = pick_by_confidence(candidates, confidences, KEEP)
    return SearchResult(
        strategy="confidence_vote",
        answer=chosen.answer if chosen else None,
        chosen=chosen,
        candidates=candidates,
        votes=votes,
        cut_short=deadline.expired() or any(p.stop_reason == "deadline" for p in paths),
    )


def _confidences(paths: list[SolutionPath]) -> list[float]:
    """Each path's trace confidence (DeepConf's lowest group confidence)."""
    if any(p.n_tokens and not p.token_stats for p in paths):
        raise ValueError(
            "confidence_vote needs the policy's token confidence: sample with "
            "Sampling(record_confidence=True) (the Solver does this for you)"
        )
    return [trace_confidence([s[2] for s in p.token_stats], MODE) for p in paths]
