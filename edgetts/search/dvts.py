"""Diverse verifier tree search (DVTS, as in search-and-learn's ``dvts.py``).

N/M independent subtrees of beam width M. The first step samples N first steps from the prompt
and deals them out M per subtree. Each time a subtree's children are back, the PRM scores them;
finished children are kept as leaves; the subtree keeps only its best child (by
``config.ranking``, compared within the subtree only) and expands it into M children. A subtree
ends when its best child is finished; after ``config.max_steps`` steps its live children are
completed to the end.
The search stops growing when N leaves have finished, when every subtree has ended, or at the
deadline. The leaves of all subtrees are combined by weighted best-of-N.

The subtrees need no round barrier. By default they still grow in search-and-learn's lock-step
rounds (one ``extend`` for all subtrees per round); with ``SearchConfig(dvts_rounds=False)`` each
is submitted to the generator on its own (:meth:`StepGenerator.submit`) and grows again as soon as
its own children are back and scored (:meth:`StepGenerator.wait_any`), while the others are still
decoding in the same batch, so a subtree of short steps never waits for one of long steps. Both
make the same picks when every subtree's steps take equally long; rounds measured faster on a
2-core CPU (``tools/bench_tree_throughput.py``), so they stay the default.
"""

from __future__ import annotations

from typing import Any

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
    grow = grow_in_rounds if config.dvts_rounds else grow_apart
    leaves, live = grow(question, generator, scorer, config, deadline)
    generator.release(live)
    return conclude(
        "dvts",
        leaves,
        live,
        config,
        weighted=True,
        cut_short=bool(live) and len(leaves) < config.n,
    )


def first_subtrees(
    question: str, generator: StepGenerator, config: SearchConfig, deadline: Deadline
) -> list[list[SolutionPath]]:
    """N first steps from one prefill, dealt out M per subtree."""
    width = config.beam_width
    children = generator.extend([generator.root(question, config.sampling)], config.n, deadline=deadline)
    return [children[i : i + width] for i in range(0, len(children), width)]


def grow_apart(
    question: str,
    generator: StepGenerator,
    scorer: StepScorer,
    config: SearchConfig,
    deadline: Deadline,
) -> tuple[list[SolutionPath], list[SolutionPath]]:
    """Grow every subtree on its own, without a round barrier; return (leaves, live paths).

    ``pending`` maps each submitted extension to its subtree's depth (steps its children have
    once back), or to None for a subtree's last extension, which runs its children to the end.
    """
    leaves: list[SolutionPath] = []
    live: list[SolutionPath] = []
    pending: dict[Any, int | None] = {}
    arrived: list[tuple[list[SolutionPath], int | None]] = [
        (group, 1) for group in first_subtrees(question, generator, config, deadline)
    ]
    try:
        while arrived or pending:
            if not arrived:
                ticket, group = generator.wait_any(list(pending))
                arrived.append((group, pending.pop(ticket)))
            # What is back together is scored together (all subtrees' first steps: one call).
            batch, arrived = arrived, []
            score_in_time(scorer, question, [p for g, _ in batch for p in g], leaves, deadline)
            for group, depth in batch:
                if depth is None:  # completed to the end: what is still unfinished was cut short
                    live += set_aside_finished(generator, group, leaves)
                    continue
                group = best_first(generator, group, leaves, config.ranking)
                if not group:
                    continue
                if len(leaves) >= config.n or deadline.expired():
                    live += group  # stop growing; subtrees under way still come back and count
                elif depth == config.max_steps:
                    pending[generator.submit(group, 1, to_end=True, deadline=deadline)] = None
                else:
                    # Only the best child grows; its siblings are dropped.
                    generator.release(group[1:])
                    ticket = generator.submit(group[:1], config.beam_width, deadline=deadline)
                    pending[ticket] = depth + 1
    finally:
        # Only after an error: collect what is still under way, so that no sequence leaks.
        while pending:
            ticket, group = generator.wait_any(list(pending))
            del pending[ticket]
            generator.release([p for p in group if not p.finished])
    return leaves, live


def grow_in_rounds(
    question: str,
    generator: StepGenerator,
    scorer: StepScorer,
    config: SearchConfig,
    deadline: Deadline,
) -> tuple[list[SolutionPath], list[SolutionPath]]:
    """Grow all subtrees in lock-step rounds, one ``extend`` for all of them per round, scored
    together (search-and-learn's schedule: every round waits for its slowest subtree)."""
    leaves: list[SolutionPath] = []
    live: list[SolutionPath] = []
    subtrees = first_subtrees(question, generator, config, deadline)
    for round_ in range(1, config.max_steps + 1):
        score_in_time(scorer, question, [p for g in subtrees for p in g], leaves, deadline)
        subtrees = [best_first(generator, group, leaves, config.ranking) for group in subtrees]
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
        children = generator.extend(best, config.beam_width, deadline=deadline)
        width = config.beam_width
        subtrees = [children[i : i + width] for i in range(0, len(children), width)]
    return leaves, live


def best_first(
    generator: StepGenerator, group: list[SolutionPath], leaves: list[SolutionPath], agg: str
) -> list[SolutionPath]:
    """One subtree's step: keep finished children as leaves, return the live ones best first.

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
