"""Majority voting (self-consistency): N full samples, the most common answer wins.

With ``n=1`` and a temperature of 0 in the generator this is greedy decoding. The scorer is not
needed; when one is given, each candidate is also scored so the user sees PRM scores beside votes.
With ``config.adaptive`` the samples come in waves until the vote has settled (``n`` at most).
"""

from __future__ import annotations

from edgetts.search.adaptive import Tally
from edgetts.search.base import SearchConfig, SearchResult, SolutionPath, StepGenerator, StepScorer
from edgetts.search.common import sample_in_waves, score_in_time
from edgetts.search.select import pick_by_vote, tally_votes, to_candidate


def majority(
    question: str,
    generator: StepGenerator,
    scorer: StepScorer | None,
    config: SearchConfig,
) -> SearchResult:
    """Sample ``config.n`` solutions (fewer once the vote settles, when adaptive) and vote on their
    final answers."""

    def tally(paths: list[SolutionPath]) -> Tally:
        return tally_votes(
            [to_candidate(p, config.agg, config.check_arithmetic) for p in paths], lambda c: 1.0
        )

    paths, deadline = sample_in_waves(question, generator, config, tally)
    if scorer is not None:  # scores shown, not voted with: past the deadline, finished paths only
        score_in_time(scorer, question, paths, [], deadline)
    candidates = [to_candidate(p, config.agg, config.check_arithmetic) for p in paths]
    chosen, votes = pick_by_vote(candidates, lambda c: 1.0)
    return SearchResult(
        strategy="majority",
        answer=chosen.answer if chosen else None,
        chosen=chosen,
        candidates=candidates,
        votes=votes,
        cut_short=deadline.expired() or any(p.stop_reason == "deadline" for p in paths),
    )
