"""Turning finished paths into a final pick: candidates, answer groups, votes.

Every strategy ends here, so ties and unparseable answers are handled once:

* a path whose written arithmetic is wrong (``48 * 3 = 124``; :mod:`edgetts.arithmetic`) votes
  only when no path without such a slip has an answer (``SearchConfig.check_arithmetic``);
* paths whose answer cannot be extracted never vote (they are still listed as candidates); a path
  pruned by its PRM score (``AdaptiveStop.prune_below``) votes only as a provisional answer; a path
  cut short (token limit, deadline) answers only with an explicit, complete answer (a closed
  ``\\boxed{}``, "the answer is N"); the last number it was writing is only a *provisional*
  answer, which votes when no candidate has a real one (so a search cut short by its deadline
  still gives its best guess; a trailing comma is never part of a number);
* equal answers are grouped by :func:`edgetts.grading.answers_equal`, so ``18``, ``18.0`` and
  ``\\$18`` are one group; the group is named by its first member's normalised answer;
* ties between groups go to the group whose best member scored higher, then to the group seen
  first (the earliest sample), so the pick is deterministic for a given seed;
* when nothing is parseable, the answer is None and the chosen candidate is the best-scored one
  (or the first, without scores), so the user still sees what the model wrote.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edgetts.arithmetic import has_wrong_arithmetic
from edgetts.grading import answers_equal, extract_answer, normalize_answer
from edgetts.search.adaptive import Tally
from edgetts.search.base import DEFAULT_AGG, Candidate, SolutionPath, StepScorer, aggregate


def to_candidate(path: SolutionPath, agg: str = DEFAULT_AGG, check_arithmetic: bool = True) -> Candidate:
    """Summarise a (finished) path for the result; ``check_arithmetic``: mark a path whose
    written sums do not hold (:func:`edgetts.arithmetic.has_wrong_arithmetic`)."""
    complete = path.finished and path.stop_reason in (None, "eos", "stop")
    answer = extract_answer(path.text, complete=complete) if path.finished or path.steps else None
    provisional = False
    if answer is None and not complete and path.steps:
        answer = extract_answer(path.text, complete=True)  # its last number: a guess at best
        provisional = answer is not None
    if path.stop_reason == "pruned":  # stopped as outvoted (AdaptiveStop.prune_below): a fallback
        provisional = answer is not None
    return Candidate(
        text=path.text,
        answer=normalize_answer(answer),
        score=aggregate(path.scores, agg) if path.scores else None,
        step_scores=list(path.scores),
        n_tokens=path.n_tokens,
        stop_reason=path.stop_reason,
        provisional=provisional,
        arithmetic_error=check_arithmetic and has_wrong_arithmetic(path.text),
        token_logprobs=[
            (piece, stats[0]) for piece, stats in zip(path.token_pieces, path.token_stats, strict=False)
        ],
    )


def voters(candidates: Sequence[Candidate]) -> list[int]:
    """Indices of the candidates whose answers vote: real answers whose written sums hold, else
    all real answers, else provisional ones."""
    real = [i for i, c in enumerate(candidates) if c.has_answer]
    checked = [i for i in real if not candidates[i].arithmetic_error]
    return checked or real or [i for i, c in enumerate(candidates) if c.answer is not None]


def score_paths(scorer: StepScorer, question: str, paths: list[SolutionPath]) -> None:
    """Score every step of ``paths`` in one scorer call and store the scores on each path.

    Raises ValueError when the scorer answers for the wrong number of paths or steps, since a
    silent zip would attach scores to the wrong path and quietly spoil every pick, and when a
    score is not in [0, 1] (the protocol's scale): a NaN would sort, prune and vote by chance.
    """
    if not paths:
        return
    scores = scorer.score(question, paths)
    if len(scores) != len(paths):
        raise ValueError(f"scorer returned scores for {len(scores)} paths, expected {len(paths)}")
    for i, (path, step_scores) in enumerate(zip(paths, scores, strict=True)):
        if len(step_scores) != len(path.steps):
            raise ValueError(
                f"scorer returned {len(step_scores)} scores for path {i}, which has {len(path.steps)} steps"
            )
        path_scores = [float(s) for s in step_scores]
        if not all(0.0 <= s <= 1.0 for s in path_scores):  # False for NaN too
            raise ValueError(f"scorer returned a step score outside [0, 1] for path {i}: {path_scores}")
        path.scores = path_scores


def group_by_answer(candidates: Sequence[Candidate]) -> list[list[int]]:
    """Indices of candidates grouped by equal answer, groups in order of first appearance."""
    groups: list[list[int]] = []
    for i in voters(candidates):
        cand = candidates[i]
        for group in groups:
            if answers_equal(candidates[group[0]].answer, cand.answer):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def pick_by_vote(
    candidates: Sequence[Candidate], weight: Callable[[Candidate], float]
) -> tuple[Candidate | None, dict[str, float]]:
    """Sum ``weight`` per answer group and return the best member of the winning group.

    ``weight = lambda c: 1`` is majority voting; ``weight = lambda c: c.score`` is weighted
    best-of-N. Returns the chosen candidate and the per-answer totals.
    """
    if not candidates:
        return None, {}
    groups = group_by_answer(candidates)
    if not groups:
        return _best_scored(candidates), {}
    totals = {candidates[g[0]].answer: sum(weight(candidates[i]) for i in g) for g in groups}

    def group_key(rank: int) -> tuple[float, float, int]:
        group = groups[rank]
        best = max(score_or_zero(candidates[i]) for i in group)
        return (totals[candidates[group[0]].answer], best, -rank)

    winner = groups[max(range(len(groups)), key=group_key)]
    chosen = max((candidates[i] for i in winner), key=score_or_zero)
    return chosen, {str(k): v for k, v in totals.items()}


def tally_votes(candidates: Sequence[Candidate], weight: Callable[[Candidate], float]) -> Tally:
    """The vote :func:`pick_by_vote` would count, as adaptive sampling's stopping rule reads it:
    provisional answers (a fallback: paths cut short or pruned) are not votes that can stop it."""
    _, totals = pick_by_vote(candidates, weight)
    return Tally(totals, _real_votes(candidates))


def _real_votes(candidates: Sequence[Candidate]) -> int:
    return sum(not candidates[i].provisional for i in voters(candidates))


def tally_confidence(candidates: Sequence[Candidate], confidences: Sequence[float], keep: float) -> Tally:
    """The vote :func:`pick_by_confidence` would count: its kept candidates that voted."""
    _, totals = pick_by_confidence(candidates, confidences, keep)
    return Tally(totals, _real_votes([candidates[i] for i in kept_by_confidence(confidences, keep)]))


def kept_by_confidence(confidences: Sequence[float], keep: float) -> list[int]:
    """Indices of the ``keep`` share of most confident candidates (at least one), in sample
    order; ties in confidence keep the earlier sample, so the filter is deterministic."""
    if not confidences:
        return []
    n_keep = max(1, round(keep * len(confidences)))
    order = sorted(range(len(confidences)), key=lambda i: (-confidences[i], i))
    return sorted(order[:n_keep])


def pick_best(candidates: Sequence[Candidate]) -> Candidate | None:
    """The single highest-scored candidate (first one on ties), parseable answers first."""
    if not candidates:
        return None
    parseable = [candidates[i] for i in voters(candidates)]
    return _best_scored(parseable or list(candidates))


def score_or_zero(cand: Candidate) -> float:
    """The candidate's score, 0 for one the PRM did not score (its weight in a weighted vote)."""
    return cand.score if cand.score is not None else 0.0


def _best_scored(candidates: Sequence[Candidate]) -> Candidate:
    # max() keeps the first of equal keys, which makes ties go to the earliest sample.
    return max(candidates, key=score_or_zero)


def pick_by_confidence(
    candidates: Sequence[Candidate], confidences: Sequence[float], keep: float
) -> tuple[Candidate | None, dict[str, float]]:
    """DeepConf's vote: the ``keep`` share of most confident candidates (at least one) vote,
    each with its confidence as weight; the pick is the best member of the winning answer.

    Confidences are positive (minus mean top-k log-probabilities); ties in confidence keep the
    earlier sample, so the filter is deterministic.
    """
    if not candidates:
        return None, {}
    if len(confidences) != len(candidates):
        raise ValueError(f"{len(confidences)} confidences for {len(candidates)} candidates")
    kept = kept_by_confidence(confidences, keep)
    weight = {id(candidates[i]): float(confidences[i]) for i in kept}
    chosen, votes = pick_by_vote([candidates[i] for i in kept], lambda c: weight[id(c)])
    if chosen is not None and chosen.answer is None:  # no kept sample parsed: any that did
        chosen = pick_by_vote(candidates, lambda c: 1.0)[0] or chosen
    return chosen, votes
