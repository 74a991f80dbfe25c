"""Step-level beam search guided by a PRM (as in search-and-learn's ``beam_search.py``).

N beams, beam width M. Round 1 samples N first steps from the prompt. Every round the PRM scores
the live beams; beams that finished are set aside for the final pick, the top N/M unfinished ones
with distinct steps survive and each is expanded into M beams with one more step; the rest are
released at once. When fewer survive (duplicates, beams that finished), the survivors share the N
new beams between them, as search-and-learn refills its active beams to N every iteration: the
search keeps spending N beams a round instead of narrowing for good (``config.beam_refill``;
False: each survivor grows M).
The search stops after ``config.max_steps`` rounds (live beams are then completed to the end), when
N beams have finished, when no live beam is left, or at the deadline. Survivors are ranked by
``config.ranking`` (search-and-learn: the last step's score). The N best-scored finished beams (a
last round may finish more) are judged like weighted best-of-N samples: their scores
(``config.agg``) summed per answer, or with ``weighted_pick=False`` the single best-scored one.
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
    rank_key,
)
from edgetts.search.common import (
    complete,
    conclude,
    released_on_error,
    require_scorer,
    score_in_time,
    set_aside_finished,
)
from edgetts.search.select import to_candidate


def beam_search(
    question: str,
    generator: StepGenerator,
    scorer: StepScorer | None,
    config: SearchConfig,
) -> SearchResult:
    """Keep the N/M best partial solutions each step, expand each M ways, pick among finished."""
    config.validate_beams("beam_search")
    scorer = require_scorer("beam_search", scorer)
    deadline = Deadline(config.deadline_s, config.cancel)
    keep = config.n // config.beam_width
    finished: list[SolutionPath] = []
    live = generator.extend([generator.root(question, config.sampling)], config.n, deadline=deadline)
    for round_ in range(1, config.max_steps + 1):
        with released_on_error(generator, live):
            score_in_time(scorer, question, live, finished, deadline)
        live = set_aside_finished(generator, live, finished)
        if not live or len(finished) >= config.n or deadline.expired():
            break
        if round_ == config.max_steps:
            live = complete(generator, scorer, question, live, finished, deadline)
            break
        survivors = keep_best_distinct(generator, live, keep, config.ranking)
        width = config.n if config.beam_refill else len(survivors) * config.beam_width
        live = expand_to(generator, survivors, width, deadline)
    # Whatever is still live was cut short (deadline) or is surplus (N beams already finished).
    generator.release(live)
    return conclude(
        "beam_search",
        best_scored(finished, config.n, config.agg, config.check_arithmetic),
        live,
        config,
        weighted=config.weighted_pick,
        cut_short=bool(live) and len(finished) < config.n,
    )


def expand_to(
    generator: StepGenerator, parents: list[SolutionPath], n: int, deadline: Deadline
) -> list[SolutionPath]:
    """``n`` children over ``parents``, one more step each, shared as evenly as the count allows
    (the first parents get one more): one extension when every parent gets the same number,
    else two, decoded together in one batch (``submit``)."""
    fewer, extra = divmod(n, len(parents))
    groups = [(group, k) for group, k in ((parents[:extra], fewer + 1), (parents[extra:], fewer)) if group]
    if len(groups) == 1:
        return generator.extend(groups[0][0], groups[0][1], deadline=deadline)
    tickets = [generator.submit(group, k, deadline=deadline) for group, k in groups]
    children: dict[Any, list[SolutionPath]] = {}
    try:
        while len(children) < len(tickets):
            ticket, group = generator.wait_any([t for t in tickets if t not in children])
            children[ticket] = group
    except BaseException:
        # as dvts does: collect what is still under way, so that no sequence leaks
        for ticket in tickets:
            group = children.pop(ticket, None)
            if group is None:
                group = generator.wait_any([ticket])[1]
            generator.release([p for p in group if not p.finished])
        raise
    return [child for ticket in tickets for child in children[ticket]]


def best_scored(
    paths: list[SolutionPath], n: int, agg: str, check_arithmetic: bool = True
) -> list[SolutionPath]:
    """The ``n`` best-scored of ``paths``, in their order (earliest first on ties); a beam that
    wrote an answer ranks above any that did not (one that ran out of tokens), and with
    ``check_arithmetic`` one whose sums hold above one whose do not, as the pick then weighs them
    (:func:`~edgetts.search.select.voters`): cut first, such a beam could never answer."""

    def rank(i: int) -> tuple[bool, bool, float]:
        candidate = to_candidate(paths[i], agg, check_arithmetic=check_arithmetic)
        return not candidate.has_answer, candidate.arithmetic_error, -aggregate(paths[i].scores, agg)

    return [paths[i] for i in sorted(sorted(range(len(paths)), key=rank)[:n])]


def keep_best_distinct(
    generator: StepGenerator, paths: list[SolutionPath], k: int, agg: str
) -> list[SolutionPath]:
    """Keep the ``k`` best-ranked paths (:func:`rank_key`) with distinct steps (earliest first on
    ties), release the rest.

    Two beams with the same steps are one partial solution twice (common when sampling cool), so a
    duplicate gives its place to the next distinct path, as search-and-learn's
    ``filter_duplicates`` does. Fewer than ``k`` distinct paths means fewer survivors (each then
    grows more children: :func:`expand_to`).
    """
    ranked = sorted(range(len(paths)), key=lambda i: rank_key(paths[i].scores, agg), reverse=True)
    kept: set[int] = set()
    seen: set[tuple[str, ...]] = set()
    for i in ranked:
        steps = tuple(paths[i].steps)
        if steps not in seen and len(kept) < k:
            seen.add(steps)
            kept.add(i)
    generator.release([p for i, p in enumerate(paths) if i not in kept])
    # Input order is kept so that expansion order (and so sampling) does not depend on scores.
    return [p for i, p in enumerate(paths) if i in kept]
