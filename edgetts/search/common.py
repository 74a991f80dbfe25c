"""Helpers every strategy shares: sampling to the end, scoring in time, and the final pick.

Beam search and DVTS end the way best-of-N does: their finished beams or leaves are judged like
best-of-N samples (:func:`pick`), and a search cut short by its deadline still answers from what
it has (:func:`conclude`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

from edgetts.search.adaptive import Tally
from edgetts.search.base import (
    Candidate,
    Deadline,
    SearchConfig,
    SearchResult,
    SolutionPath,
    StepGenerator,
    StepScorer,
)
from edgetts.search.select import pick_best, pick_by_vote, score_or_zero, score_paths, to_candidate


def sample_to_end(
    question: str, generator: StepGenerator, config: SearchConfig
) -> tuple[list[SolutionPath], Deadline]:
    """``config.n`` full solutions from one prefill, sampled as ``config.sampling`` says, their KV
    already released (the sample-based strategies need only the text from here on)."""
    deadline = Deadline(config.deadline_s, config.cancel)
    root = generator.root(question, config.sampling)
    paths = generator.extend([root], config.n, to_end=True, deadline=deadline)
    generator.release(paths)
    return paths, deadline


# The vote over paths drawn so far, as the strategy's own final pick would count it.
Tallier = Callable[[list[SolutionPath]], Tally]
# Called on each wave as it finishes (e.g. to score it with the PRM before the next check).
WaveHook = Callable[[list[SolutionPath], Deadline], None]


@dataclass(frozen=True)
class Pruning:
    """What pruning a sample needs: the PRM, the question it reads, and the score under which a
    sample stops (``AdaptiveStop.prune_below``). :meth:`wave` makes each wave's ``stop_early``."""

    scorer: StepScorer
    question: str
    below: float

    def wave(self, size: int) -> Pruner:
        """The ``stop_early`` of one wave of ``size`` samples."""
        return Pruner(self, size)


class Pruner:
    """Stops a sample of one wave whose weakest step so far scores under ``pruning.below``,
    unless every other sample of the wave has been stopped: a wave always finishes one sample,
    so the vote never rests on pruned fragments alone when the PRM dislikes them all.

    Each call scores the path's steps (kept on the path, as :func:`score_paths` does). The
    generator calls it on its decode thread, where an exception would fail every search in the
    batch; so the first error is kept, the sample runs on, and :meth:`raise_error` raises it on
    the search's own thread once the wave is back.
    """

    def __init__(self, pruning: Pruning, size: int) -> None:
        self.pruning = pruning
        self.may_prune = size - 1  # samples this wave may still stop
        self.error: Exception | None = None

    def __call__(self, path: SolutionPath) -> bool:
        if self.error is not None or self.may_prune <= 0 or not path.steps:
            return False
        try:
            score_paths(self.pruning.scorer, self.pruning.question, [path])
        except Exception as exc:  # noqa: BLE001 - raised on the search's thread (raise_error)
            self.error = exc
            return False
        if min(path.scores) >= self.pruning.below:
            return False
        self.may_prune -= 1
        return True

    def raise_error(self) -> None:
        """Raise the error a call met, if any."""
        if self.error is not None:
            raise self.error


# Aggregations under which a weakest step below the threshold keeps the path's score below it
# however the path ends (min is that step or lower, prod at most it): only then is a pruned
# sample one whose vote could not have weighed more. Under "last" a path may recover.
PRUNABLE_AGGREGATIONS = ("min", "prod")


def pruning(scorer: StepScorer | None, question: str, config: SearchConfig) -> Pruning | None:
    """The pruning ``config.adaptive`` asks for (None without a scorer or a ``prune_below``, and
    for an aggregation under which a low step does not bound the path's score)."""
    rule = config.adaptive
    if scorer is None or rule is None or rule.prune_below is None:
        return None
    if config.agg not in PRUNABLE_AGGREGATIONS:
        return None
    return Pruning(scorer, question, rule.prune_below)


def as_weighted_vote(config: SearchConfig) -> SearchConfig:
    """``config`` with its stopping rule as a PRM-weighted vote applies it
    (:meth:`edgetts.search.adaptive.AdaptiveStop.for_weighted_vote`)."""
    if config.adaptive is None:
        return config
    return replace(config, adaptive=config.adaptive.for_weighted_vote())


def sample_in_waves(
    question: str,
    generator: StepGenerator,
    config: SearchConfig,
    tally: Tallier,
    on_wave: WaveHook | None = None,
    prior: Sequence[SolutionPath] = (),
    deadline: Deadline | None = None,
    prune: Pruning | None = None,
) -> tuple[list[SolutionPath], Deadline]:
    """Up to ``config.n`` full solutions, drawn in waves until the vote settles
    (``config.adaptive``; all ``config.n`` at once when it is None), their KV released.

    ``prior`` are samples already drawn from this question at this sampling (``auto``'s probes):
    they count towards ``n`` and the vote, and the new samples are numbered after them. Returns
    only the new samples. Each wave forks from a new root (the policy reuses the prefilled
    prompt) numbered on from the samples before it (``first_index``), so sample ``i`` is seeded
    as sample ``i`` of one call for all ``n`` (identical with a generator whose samples do not
    depend on their batch; llama.cpp's logits round differently with the batch's rows, so a long
    sample may part from its twin), and the stop is :func:`edgetts.search.adaptive.replay` over
    the same vote. No wave starts after the deadline (the first always does, as without waves).
    With ``prune``, a sample stops at the step where its PRM score falls under the threshold
    (one sample of each wave always runs to its end: :class:`Pruner`).
    """
    config.validate()  # every caller's: a wave of 0 samples would never end
    deadline = deadline or Deadline(config.deadline_s, config.cancel)
    rule = config.adaptive
    drawn = list(prior)
    sizes = [config.n - len(drawn)] if rule is None else rule.waves(config.n, len(drawn))
    if rule is not None and drawn and rule.settled(tally(drawn), len(drawn), config.n):
        sizes = []
    new: list[SolutionPath] = []
    for size in sizes:
        if size < 1 or (new and deadline.expired()):
            break
        root = generator.root(question, config.sampling)
        stop_early = prune.wave(size) if prune is not None else None
        wave = generator.extend(
            [root], size, to_end=True, deadline=deadline, first_index=len(drawn), stop_early=stop_early
        )
        generator.release(wave)
        if stop_early is not None:
            stop_early.raise_error()
        if on_wave is not None:
            on_wave(wave, deadline)
        new += wave
        drawn += wave
        if rule is not None and rule.settled(tally(drawn), len(drawn), config.n):
            break
    return new, deadline


def require_scorer(strategy: str, scorer: StepScorer | None) -> StepScorer:
    """The PRM, checked to be there before any work starts."""
    if scorer is None:
        raise ValueError(f"strategy {strategy!r} needs a PRM (step scorer)")
    return scorer


def score_in_time(
    scorer: StepScorer,
    question: str,
    paths: list[SolutionPath],
    finished: list[SolutionPath],
    deadline: Deadline,
) -> None:
    """Score ``paths`` (new this round); past the deadline, only those that can still matter.

    Once the deadline has passed, the search ends with a pick among finished paths, and unfinished
    ones are only a fallback when no finished path has an answer; scoring them anyway would be the
    one PRM call that runs the search further past its deadline.
    """
    if deadline.expired():
        done = finished + [p for p in paths if p.finished]
        # an answer in hand is a written one, not a pruned or cut-off fragment's last number
        if any(to_candidate(p, check_arithmetic=False).has_answer for p in done):
            paths = [p for p in paths if p.finished]
    score_paths(scorer, question, paths)


def score_wave(
    scorer: StepScorer,
    question: str,
    wave: list[SolutionPath],
    scored: list[SolutionPath],
    deadline: Deadline,
) -> None:
    """Score a wave of samples in time (:func:`score_in_time`) and add it to ``scored``, the
    earlier waves, whose finished samples count as answers in hand past the deadline. A pruned
    sample is not scored again: its every step was scored when it was stopped."""
    fresh = [p for p in wave if p.stop_reason != "pruned"]
    score_in_time(scorer, question, fresh, [p for p in scored if p.finished], deadline)
    scored.extend(wave)


@contextmanager
def released_on_error(generator: StepGenerator, *groups: list[SolutionPath]) -> Iterator[None]:
    """Release the unfinished paths of ``groups`` if the block raises, then let the error go on:
    a search ended by an error (its PRM failed) must not keep their KV sequences held."""
    try:
        yield
    except BaseException:
        generator.release([p for group in groups for p in group if not p.finished])
        raise


def with_fallback(finished: list[Candidate], unfinished: list[Candidate]) -> list[Candidate]:
    """The finished candidates, and the unfinished ones only when no finished one has an
    answer: a search cut short by its deadline still answers when any path has one."""
    return finished if any(c.has_answer for c in finished) else finished + unfinished


def pick(candidates: list[Candidate], weighted: bool) -> tuple[Candidate | None, dict[str, float]]:
    """Highest-scored candidate, or the answer with the largest summed score when ``weighted``."""
    if weighted:
        return pick_by_vote(candidates, score_or_zero)
    return pick_best(candidates), {}


def conclude(
    strategy: str,
    finished: list[SolutionPath],
    partial: list[SolutionPath],
    config: SearchConfig,
    weighted: bool,
    cut_short: bool,
) -> SearchResult:
    """Pick among scored paths and build the result.

    Finished paths are preferred; unfinished (``partial``) ones only join as a fallback
    (:func:`with_fallback`).
    """
    candidates = with_fallback(
        [to_candidate(p, config.agg, config.check_arithmetic) for p in finished],
        [to_candidate(p, config.agg, config.check_arithmetic) for p in partial],
    )
    chosen, votes = pick(candidates, weighted)
    return SearchResult(
        strategy=strategy,
        answer=chosen.answer if chosen else None,
        chosen=chosen,
        candidates=candidates,
        votes=votes,
        cut_short=cut_short or any(p.stop_reason == "deadline" for p in finished + partial),
    )


def set_aside_finished(
    generator: StepGenerator, paths: list[SolutionPath], finished: list[SolutionPath]
) -> list[SolutionPath]:
    """Move finished paths into ``finished`` (releasing their KV) and return the unfinished ones."""
    done = [p for p in paths if p.finished]
    generator.release(done)
    finished.extend(done)
    return [p for p in paths if not p.finished]


def complete(
    generator: StepGenerator,
    scorer: StepScorer,
    question: str,
    live: list[SolutionPath],
    finished: list[SolutionPath],
    deadline: Deadline,
) -> list[SolutionPath]:
    """Run ``live`` paths to the end, score them, set the finished ones aside; return the rest."""
    done = generator.extend(live, 1, to_end=True, deadline=deadline)
    with released_on_error(generator, done):  # paths the deadline cut are still held
        score_in_time(scorer, question, done, finished, deadline)
    return set_aside_finished(generator, done, finished)
