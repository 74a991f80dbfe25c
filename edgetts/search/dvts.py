"""Diverse verifier tree search (DVTS, as in search-and-learn's ``dvts.py``).

N/M independent subtrees of beam width M. Round 1 samples N first steps from the prompt and deals
them out M per subtree. Every round the PRM scores all children; finished children are kept as
leaves; each subtree keeps only its best child (by aggregated score, compared within the subtree
only) and expands it into M children next round. A subtree ends when its best child is finished.
The search stops after ``config.max_steps`` rounds (the subtrees' live children are then completed
to the end), when N leaves have finished, when every subtree has ended, or at the deadline. The
leaves of all subtrees are combined by weighted best-of-N.

All subtrees extend together in one ``extend`` call per round, which the batched generator decodes
as one batch; keeping them apart is only bookkeeping here.
"""

from __future__ import annotations

from edgetts.search.base import (
    Deadline,
    SearchConfig,
    SearchResult,
    SolutionPath,
    StepGenerator,
    StepScorer,
    aggregate,
)
from edgetts.search.common import complete, conclude, require_scorer, score_in_time, set_aside_finished


def dvts(
    question: str,
    generator: StepGenerator,
    scorer: StepScorer | None,
    config: SearchConfig,
) -> SearchResult:
    """Grow N/M subtrees greedily by PRM score, then vote over their leaves weighted by score."""
    config.validate_beams("dvts")
    scorer = require_scorer("dvts", scorer)
    deadline = Deadline(config.deadline_s, config.cancel)
    width = config.beam_width
    leaves: list[SolutionPath] = []
    children = generator.extend([generator.root(question, config.sampling)], config.n, deadline=deadline)
    subtrees = [children[i : i + width] for i in range(0, len(children), width)]
    live: list[SolutionPath] = []
    for round_ in range(1, config.max_steps + 1):
        score_in_time(scorer, question, [p for g in subtrees for p in g], leaves, deadline)
        subtrees = [best_first(generator, group, leaves, config.agg) for group in subtrees]
        subtrees = [group for group in subtrees if group]
        live = [p for group in subtrees for p in group]
        if not live or len(leaves) >= config.n or deadline.expired():
            break
        if round_ == config.max_steps:
            live = complete(generator, scorer, question, live, leaves, deadline)
            break
        # Only the best child of each subtree grows; its siblings are dropped.
        generator.release([p for group in subtrees for p in group[1:]])
        best = [group[0] for group in subtrees]
        children = generator.extend(best, width, deadline=deadline)
        subtrees = [children[i : i + width] for i in range(0, len(children), width)]
    generator.release(live)
    return conclude(
        "dvts",
        leaves,
        live,
        config,
        weighted=True,
        cut_short=bool(live) and len(leaves) < config.n,
    )


def best_first(
    generator: StepGenerator, group: list[SolutionPath], leaves: list[SolutionPath], agg: str
) -> list[SolutionPath]:
    """One subtree's round: keep finished children as leaves, return the live ones best first.

    Returns an empty list when the subtree has ended, i.e. its best child is finished (its
    unfinished siblings are then released). Ties go to the earliest child.
    """
    if not group:
        return []
    best = max(group, key=lambda p: aggregate(p.scores, agg))
    live = set_aside_finished(generator, group, leaves)
    if best.finished:
        generator.release(live)
        return []
    return sorted(live, key=lambda p: -aggregate(p.scores, agg))
