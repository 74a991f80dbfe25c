"""Diverse verifier tree search (DVTS, as in search-and-learn's ``dvts.py``).

N/M independent subtrees of beam width M. The first step samples N first steps from the prompt,
M for each subtree in order (search-and-learn's subtrees each sample their own M). With
``SearchConfig(dvts_deal=True)`` they are dealt instead (:func:`deal`): distinct steps go to
different subtrees, so that two subtrees start alike only when the policy wrote fewer distinct
first steps than there are subtrees (common when sampling cool), and a first step that is
already a whole solution takes no subtree, it votes.
Each time a subtree's children are back, the PRM scores them; finished
children are kept as the subtree's leaves; the subtree keeps only its best child (by
``config.ranking``, compared within the subtree only) and expands it into M children.

A subtree ends when its best child is finished. It stops branching once it holds its share of
the leaves (M, as search-and-learn's subtrees each give M answers) or after ``config.max_steps``
steps, and its live children are then completed to the end (only the best one when the share is
what stopped it). One subtree's leaves never stop another: each grows until its own end, or until
the deadline. The leaves of all subtrees are combined by weighted best-of-N.

The subtrees need no round barrier. By default they still grow in search-and-learn's lock-step
rounds (one ``extend`` for all subtrees per round); with ``SearchConfig(dvts_rounds=False)`` each
is submitted to the generator on its own (:meth:`StepGenerator.submit`) and grows again as soon as
its own children are back and scored (:meth:`StepGenerator.wait_any`), while the others are still
decoding in the same batch, so a subtree of short steps never waits for one of long steps. Both
make the same picks when every subtree's steps take equally long; rounds measured faster on a
2-core CPU (``tools/bench_tree_throughput.py``), so they stay the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgetts.search.base import (
    Deadline,
    SearchConfig,
    SearchResult,
    SolutionPath,
    StepGenerator,
    StepScorer,
    rank_key,
)
from edgetts.search.common import (
    conclude,
    released_on_error,
    require_scorer,
    score_in_time,
    set_aside_finished,
)


@dataclass
class Subtree:
    """One subtree: its children under way or just back, the leaves it has finished, its depth
    (steps its children have)."""

    children: list[SolutionPath]
    leaves: list[SolutionPath] = field(default_factory=list)
    depth: int = 1


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
    subtrees = first_subtrees(question, generator, config, deadline)
    live = grow(question, generator, scorer, config, subtrees, deadline)
    generator.release(live)
    return conclude("dvts", all_leaves(subtrees), live, config, weighted=True, cut_short=bool(live))


def first_subtrees(
    question: str, generator: StepGenerator, config: SearchConfig, deadline: Deadline
) -> list[Subtree]:
    """N first steps from one prefill, M to each of the N/M subtrees in order, or dealt out
    (:func:`deal`) with ``config.dvts_deal``."""
    children = generator.extend([generator.root(question, config.sampling)], config.n, deadline=deadline)
    if not config.dvts_deal:
        width = config.beam_width
        return [Subtree(children[i : i + width]) for i in range(0, len(children), width)]
    return [Subtree(group) for group in deal(generator, children, config.n // config.beam_width)]


def deal(generator: StepGenerator, children: list[SolutionPath], n_subtrees: int) -> list[list[SolutionPath]]:
    """Deal the unfinished ``children`` out to ``n_subtrees`` subtrees in order, as evenly as the
    count allows, each repeat released; the finished ones (whole solutions) make one more group.

    A repeat is kept only where a subtree would otherwise get none: then the first repeats start
    those subtrees. So no two subtrees can grow the same first step while there are at least as
    many distinct ones as subtrees, and a subtree holds at most M children (all M when every step
    differs). The finished ones, repeats too, grow nothing and take no subtree's place: their
    group only votes (its children become leaves once scored). Empty groups are left out.
    """
    distinct: list[SolutionPath] = []
    repeats: list[SolutionPath] = []
    seen: set[tuple[str, ...]] = set()
    for child in children:
        if child.finished:
            continue
        steps = tuple(child.steps)
        (repeats if steps in seen else distinct).append(child)
        seen.add(steps)
    spare = max(0, n_subtrees - len(distinct))
    generator.release(repeats[spare:])
    kept = distinct + repeats[:spare]
    size, extra = divmod(len(kept), n_subtrees)
    ends = [(i + 1) * size + min(i + 1, extra) for i in range(n_subtrees)]
    groups = [kept[end - size - (i < extra) : end] for i, end in enumerate(ends)]
    finished = [child for child in children if child.finished]
    return [group for group in [*groups, finished] if group]


def grow_apart(
    question: str,
    generator: StepGenerator,
    scorer: StepScorer,
    config: SearchConfig,
    subtrees: list[Subtree],
    deadline: Deadline,
) -> list[SolutionPath]:
    """Grow every subtree on its own, without a round barrier; return the live paths left.

    ``pending`` maps each submitted extension to its subtree and whether it runs the children
    to the end (the subtree's last extension).
    """
    live: list[SolutionPath] = []
    pending: dict[Any, tuple[Subtree, bool]] = {}
    arrived = [(subtree, False) for subtree in subtrees]
    try:
        while arrived or pending:
            if not arrived:
                ticket, children = generator.wait_any(list(pending))
                subtree, to_end = pending.pop(ticket)
                subtree.children = children
                arrived.append((subtree, to_end))
            # What is back together is scored together (all subtrees' first steps: one call).
            batch, arrived = arrived, []
            paths = [p for subtree, _ in batch for p in subtree.children]
            with released_on_error(generator, paths, live):
                score_in_time(scorer, question, paths, all_leaves(subtrees), deadline)
            for subtree, to_end in batch:
                if to_end or deadline.expired():
                    # Completed to the end, or out of time (past the deadline the unfinished
                    # children went unscored and cannot be ranked): what is unfinished was cut
                    # short. Subtrees under way still come back.
                    live += set_aside_finished(generator, subtree.children, subtree.leaves)
                    continue
                subtree.children = best_first(generator, subtree.children, subtree.leaves, config.ranking)
                if not subtree.children:
                    continue
                if k := n_to_complete(subtree, config):
                    generator.release(subtree.children[k:])
                    ticket = generator.submit(subtree.children[:k], 1, to_end=True, deadline=deadline)
                    pending[ticket] = (subtree, True)
                else:
                    # Only the best child grows; its siblings are dropped.
                    generator.release(subtree.children[1:])
                    ticket = generator.submit(subtree.children[:1], config.beam_width, deadline=deadline)
                    subtree.depth += 1
                    pending[ticket] = (subtree, False)
    finally:
        collect_under_way(generator, pending)
    return live


def grow_in_rounds(
    question: str,
    generator: StepGenerator,
    scorer: StepScorer,
    config: SearchConfig,
    subtrees: list[Subtree],
    deadline: Deadline,
) -> list[SolutionPath]:
    """Grow all subtrees in lock-step rounds, one ``extend`` for all of them per round, scored
    together (search-and-learn's schedule: every round waits for its slowest subtree); return
    the live paths left. The subtrees that stop branching in a round are run to the end in one
    submitted extension, decoded beside the later rounds, and scored together at the end."""
    growing = list(subtrees)
    finishing: dict[Any, list[Subtree]] = {}  # a submitted completion: each of its paths' subtree
    try:
        while growing:
            paths = [p for subtree in growing for p in subtree.children]
            with released_on_error(generator, paths):
                score_in_time(scorer, question, paths, all_leaves(subtrees), deadline)
            if deadline.expired():  # the unfinished children went unscored: cut short, not ranked
                for subtree in growing:
                    subtree.children = set_aside_finished(generator, subtree.children, subtree.leaves)
                break
            for subtree in growing:
                subtree.children = best_first(generator, subtree.children, subtree.leaves, config.ranking)
            growing = [subtree for subtree in growing if subtree.children]
            stopping: list[tuple[Subtree, SolutionPath]] = []
            for subtree in list(growing):
                if k := n_to_complete(subtree, config):
                    generator.release(subtree.children[k:])
                    stopping += [(subtree, p) for p in subtree.children[:k]]
                    growing.remove(subtree)
            if stopping:
                ticket = generator.submit([p for _, p in stopping], 1, to_end=True, deadline=deadline)
                finishing[ticket] = [subtree for subtree, _ in stopping]
            if growing:
                # Only the best child of each subtree grows; its siblings are dropped.
                generator.release([p for subtree in growing for p in subtree.children[1:]])
                best = [subtree.children[0] for subtree in growing]
                children = generator.extend(best, config.beam_width, deadline=deadline)
                width = config.beam_width
                for i, subtree in enumerate(growing):
                    subtree.children = children[i * width : (i + 1) * width]
                    subtree.depth += 1
        live = [p for subtree in growing for p in subtree.children]
        owners: list[Subtree] = []
        done: list[SolutionPath] = []
        for ticket in list(finishing):  # in submission order, whatever order they end in
            owners += finishing.pop(ticket)
            done += generator.wait_any([ticket])[1]
        if done:
            with released_on_error(generator, done, live):
                score_in_time(scorer, question, done, all_leaves(subtrees), deadline)
            for subtree, path in zip(owners, done, strict=True):
                live += set_aside_finished(generator, [path], subtree.leaves)
        return live
    finally:
        collect_under_way(generator, finishing)


def collect_under_way(generator: StepGenerator, pending: dict[Any, Any]) -> None:
    """Wait for the extensions still in ``pending`` (emptying it) and release their unfinished
    paths. Only after an error does anything remain, and then no sequence may leak."""
    while pending:
        ticket, children = generator.wait_any(list(pending))
        del pending[ticket]
        generator.release([p for p in children if not p.finished])


def n_to_complete(subtree: Subtree, config: SearchConfig) -> int:
    """How many of ``subtree``'s live children (best first) to run to the end now: all of them
    after ``config.max_steps`` steps, the best once the subtree holds its share of leaves (M),
    else none (it keeps branching)."""
    if subtree.depth >= config.max_steps:
        return len(subtree.children)
    if len(subtree.leaves) >= config.beam_width:
        return 1
    return 0


def all_leaves(subtrees: list[Subtree]) -> list[SolutionPath]:
    """Every subtree's leaves, in subtree order."""
    return [leaf for subtree in subtrees for leaf in subtree.leaves]


def best_first(
    generator: StepGenerator, group: list[SolutionPath], leaves: list[SolutionPath], agg: str
) -> list[SolutionPath]:
    """One subtree's step: keep finished children as leaves, return the live ones best first.

    Returns an empty list when the subtree has ended, i.e. its best child is finished (its
    unfinished siblings are then released). Ranked by :func:`rank_key`; full ties go to the
    earliest child.
    """
    if not group:
        return []
    best = max(group, key=lambda p: rank_key(p.scores, agg))
    live = set_aside_finished(generator, group, leaves)
    if best.finished:
        generator.release(live)
        return []
    return sorted(live, key=lambda p: rank_key(p.scores, agg), reverse=True)
