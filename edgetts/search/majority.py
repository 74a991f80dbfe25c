"""Majority voting (self-consistency): N full samples, the most common answer wins.

With ``n=1`` and a temperature of 0 in the generator this is greedy decoding. The scorer is not
needed; when one is given, each candidate is also scored so the user sees PRM scores beside votes.
"""

from __future__ import annotations

from edgetts.search.base import SearchConfig, SearchResult, StepGenerator, StepScorer
from edgetts.search.common import sample_to_end
from edgetts.search.select import pick_by_vote, score_paths, to_candidate


def majority(
    question: str,
    generator: StepGenerator,
    scorer: StepScorer | None,
    config: SearchConfig,
) -> SearchResult:
    """Sample ``config.n`` solutions to the end and vote on their final answers."""
    paths, deadline = sample_to_end(question, generator, config)
    if scorer is not None:
        score_paths(scorer, question, paths)
    candidates = [to_candidate(p, config.agg) for p in paths]
    chosen, votes = pick_by_vote(candidates, lambda c: 1.0)
    return SearchResult(
        strategy="majority",
        answer=chosen.answer if chosen else None,
        chosen=chosen,
        candidates=candidates,
        votes=votes,
        cut_short=deadline.expired() or any(p.stop_reason == "deadline" for p in paths),
    )
