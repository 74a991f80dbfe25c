"""Deterministic stand-ins for the policy model and the PRM, for fast strategy tests.

:class:`FakeGenerator` builds steps from a *policy*: either a scripted tree (:func:`tree_policy`)
or a seeded random one (:func:`random_policy`). It also polices the KV-sharing contract the real
generator relies on: a path given to ``extend`` is consumed, a consumed or released path must never
be extended or released again, and at the end :meth:`FakeGenerator.leaks` lists what a strategy
forgot to release. It counts tokens like a real decoder would (the prompt once, then only the new
tokens of every generated step), so regenerating a prefix shows up as extra tokens.
Submitted extensions (``submit``/``wait_any``) come back in the order a batched decoder would
finish them: each is done after its longest child's new tokens, counted on a clock of decoded
tokens from when it was submitted (ties in submission order).

:class:`FakeScorer` maps each step's text to a score through a table and/or a rule.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from edgetts.search.base import Deadline, Sampling, SolutionPath

# policy(prefix_steps, child_index) -> (step_text, finishes_the_path)
Policy = Callable[[tuple[str, ...], int], tuple[str, bool]]
# A scripted tree: step text -> subtree of next steps; an empty subtree ends the path there.
Tree = Mapping[str, "Tree"]


def tree_policy(tree: Tree) -> Policy:
    """Child ``i`` of a node takes that node's ``i % k``-th branch (of ``k``), at every depth.

    So with ``to_end`` sample ``i`` follows branch ``i`` all the way down, and a node with one
    branch gives identical children.
    """

    def policy(prefix: tuple[str, ...], i: int) -> tuple[str, bool]:
        node = tree
        for step in prefix:
            node = node[step]
        if not node:
            raise AssertionError(f"the script has no step after {prefix!r}")
        step = list(node)[i % len(node)]
        return step, not node[step]

    return policy


def random_policy(
    seed: int = 0,
    p_finish: float = 0.3,
    max_depth: int = 6,
    answers: tuple[str, ...] = ("1", "2", "3"),
) -> Policy:
    """Random steps, the same for the same (seed, prefix, child index) whatever the call order."""

    def policy(prefix: tuple[str, ...], i: int) -> tuple[str, bool]:
        rng = random.Random(f"{seed}|{'|'.join(prefix)}|{i}")
        depth = len(prefix) + 1
        if depth >= max_depth or rng.random() < p_finish:
            return f"so the answer is \\boxed{{{rng.choice(answers)}}}", True
        return f"step {depth} try {rng.randrange(1000)}\n", False

    return policy


def n_tokens(text: str) -> int:
    """Fake tokenizer: one token per word, at least one per step."""
    return max(1, len(text.split()))


@dataclass
class GenCounters:
    """What ``run_search`` reads from a generator (named like the real one's counters)."""

    tokens_prefilled: int = 0  # prompt tokens
    tokens_decoded: int = 0  # generated tokens, each token of the search tree once
    seconds: float = 0.0


@dataclass
class ExtendCall:
    """One ``extend`` call as the fake saw it."""

    parents: list[tuple[str, ...]]
    n_each: int
    to_end: bool
    first_index: int = 0


@dataclass(eq=False)  # tickets are told apart by identity
class FakePending:
    """A submitted extension: its children (grown at once) and when a batch would have them."""

    children: list[SolutionPath]
    ends_at: int  # the fake's token clock when its longest child is done
    order: int  # submission number, for ties


@dataclass
class FakeGenerator:
    """A StepGenerator over a policy that checks the consume/release contract.

    ``step_delay_s`` sleeps while "decoding" every step (to test deadlines). At the deadline a
    child comes back unfinished with ``stop_reason="deadline"``: a step under way is cut in half,
    and a child whose step had not started yet has no new step at all.
    """

    policy: Policy
    step_delay_s: float = 0.0
    counters: GenCounters = field(default_factory=GenCounters)
    calls: list[ExtendCall] = field(default_factory=list)
    roots: int = 0
    samplings: list[Sampling | None] = field(default_factory=list)  # each root's, in order
    # Sequence ids by state. Finished sequences may be released or not; unfinished ones must be.
    alive: set[int] = field(default_factory=set)
    consumed: set[int] = field(default_factory=set)
    released: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)
    dropped: set[int] = field(default_factory=set)  # unfinished when a later root() began
    peak_alive: int = 0
    cut_steps: int = 0  # steps cut short by a deadline
    sessions_closed: int = 0
    clock: int = 0  # tokens a batched decoder would have decoded per row so far (submit/wait_any)
    in_flight: list[FakePending] = field(default_factory=list)  # submitted, not collected
    submitted: int = 0
    _next_id: int = 0

    def session(self, counters: object = None, deadline: object = None) -> FakeSession:
        """The generator for one search, as the real policy's (the fake's searches all count in
        its own counters; ``counters`` is not used; a root never waits, so ``deadline`` neither)."""
        return FakeSession(self)

    @property
    def tokens_total(self) -> int:
        """Prompt tokens (once per root) plus the new tokens of every generated step."""
        return self.counters.tokens_prefilled + self.counters.tokens_decoded

    def root(self, question: str, sampling: Sampling | None = None) -> SolutionPath:
        """The empty path; the prompt counts as prefilled once. As the real policy's, a new root
        drops the search's unfinished paths (their KV): extending one later is a strategy bug."""
        unfinished = self.alive - self.finished
        self.dropped |= unfinished
        self.alive -= unfinished
        self.roots += 1
        self.samplings.append(sampling)
        self.counters.tokens_prefilled += n_tokens(question)
        return self._new(SolutionPath())

    def extend(
        self,
        paths: list[SolutionPath],
        n_each: int,
        to_end: bool = False,
        deadline: Deadline | None = None,
        first_index: int = 0,
        stop_early: Callable[[SolutionPath], bool] | None = None,
    ) -> list[SolutionPath]:
        """``n_each`` children per unfinished parent (consumed); finished parents pass through.

        Child ``i`` follows the policy's child index ``first_index + i``, as the real
        generator's samplers are seeded by it. ``stop_early`` (with ``to_end``) is asked after
        each new step, as the real generator does, and ends a child "pruned"."""
        start = time.perf_counter()
        self.calls.append(ExtendCall([tuple(p.steps) for p in paths], n_each, to_end, first_index))
        stop_early = stop_early if to_end else None
        out = [c for p in paths for c in self._children(p, n_each, to_end, deadline, first_index, stop_early)]
        self.counters.seconds += time.perf_counter() - start
        return out

    def submit(
        self,
        paths: list[SolutionPath],
        n_each: int,
        to_end: bool = False,
        deadline: Deadline | None = None,
    ) -> FakePending:
        """As ``extend``, collected later by ``wait_any`` in the order a batch would finish."""
        self.calls.append(ExtendCall([tuple(p.steps) for p in paths], n_each, to_end))
        children: list[SolutionPath] = []
        longest = 0
        for parent in paths:
            kids = self._children(parent, n_each, to_end, deadline, 0)
            longest = max([longest] + [k.n_tokens - parent.n_tokens for k in kids])
            children += kids
        pending = FakePending(children, self.clock + longest, self.submitted)
        self.submitted += 1
        self.in_flight.append(pending)
        return pending

    def wait_any(self, tickets: list[FakePending]) -> tuple[FakePending, list[SolutionPath]]:
        """The ticket a batched decoder would finish first; the clock moves on to its end."""
        if not tickets or any(t not in self.in_flight for t in tickets):
            raise AssertionError("wait_any on a ticket not in flight (collected twice?)")
        first = min(tickets, key=lambda t: (t.ends_at, t.order))
        self.in_flight.remove(first)
        self.clock = max(self.clock, first.ends_at)
        return first, first.children

    def release(self, paths: list[SolutionPath]) -> None:
        """Drop sequences; releasing a consumed or already released one is a strategy bug."""
        for path in paths:
            if path.handle in self.dropped:  # freed by a later root(), as the real policy does
                continue
            self._check_alive(path, "release")
            self.alive.remove(path.handle)
            self.released.add(path.handle)

    def leaks(self) -> set[int]:
        """Unfinished sequences nobody released: KV the strategy would leak."""
        return self.alive - self.finished

    def _children(
        self,
        parent: SolutionPath,
        n_each: int,
        to_end: bool,
        deadline: Deadline | None,
        first_index: int,
        stop_early: Callable[[SolutionPath], bool] | None = None,
    ) -> list[SolutionPath]:
        self._check_alive(parent, "extend")
        if parent.finished:
            return [parent]
        self.alive.remove(parent.handle)
        self.consumed.add(parent.handle)
        indices = range(first_index, first_index + n_each)
        return [self._new(self._grow(parent, i, to_end, deadline, stop_early)) for i in indices]

    def _grow(
        self,
        parent: SolutionPath,
        i: int,
        to_end: bool,
        deadline: Deadline | None,
        stop_early: Callable[[SolutionPath], bool] | None = None,
    ) -> SolutionPath:
        child = SolutionPath(steps=list(parent.steps), n_tokens=parent.n_tokens)
        while True:
            if deadline is not None and deadline.expired():
                # Like the real generator: a step not yet started is not started; a child that
                # never started stands for its parent as it was.
                child.stop_reason = "deadline"
                return child
            if self.step_delay_s:
                time.sleep(self.step_delay_s)
            step, done = self.policy(tuple(child.steps), i)
            if deadline is not None and deadline.expired():
                words = step.split()
                step, done = " ".join(words[: len(words) // 2]), False
                child.stop_reason = "deadline"
                self.cut_steps += 1
            child.steps.append(step)
            child.n_tokens += n_tokens(step)
            self.counters.tokens_decoded += n_tokens(step)
            if done:
                child.finished, child.stop_reason = True, "eos"
            if done or not to_end or child.stop_reason == "deadline":
                return child
            if stop_early is not None and stop_early(child):
                child.finished, child.stop_reason = True, "pruned"
                return child

    def _new(self, path: SolutionPath) -> SolutionPath:
        path.handle = self._next_id
        self._next_id += 1
        self.alive.add(path.handle)
        if path.finished:
            self.finished.add(path.handle)
        self.peak_alive = max(self.peak_alive, len(self.alive))
        return path

    def _check_alive(self, path: SolutionPath, what: str) -> None:
        if path.handle in self.consumed:
            raise AssertionError(f"{what} of a consumed path {path.steps!r}")
        if path.handle in self.released:
            raise AssertionError(f"{what} of a released path {path.steps!r}")
        if path.handle in self.dropped:
            raise AssertionError(f"{what} of a path a later root() dropped {path.steps!r}")
        if path.handle not in self.alive:
            raise AssertionError(f"{what} of a path this generator never made: {path.steps!r}")


class FakeSession:
    """One search's view of a FakeGenerator: the generator itself, with a close to count."""

    def __init__(self, generator: FakeGenerator) -> None:
        self.generator = generator

    def close(self) -> None:
        self.generator.sessions_closed += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)


@dataclass
class PRMCounters:
    """What ``run_search`` reads from a scorer (named like the real one's counters)."""

    calls: int = 0
    steps_scored: int = 0
    seconds: float = 0.0


@dataclass
class FakeScorer:
    """Scores each step by ``table[step.strip()]``, else ``rule(step)``, else ``default``.

    ``seen`` logs the steps of every scored path, call by call, so tests can see what was scored.
    """

    table: Mapping[str, float] = field(default_factory=dict)
    rule: Callable[[str], float] | None = None
    default: float = 0.5
    counters: PRMCounters = field(default_factory=PRMCounters)
    seen: list[list[tuple[str, ...]]] = field(default_factory=list)
    # The rest of the Verifier protocol (what a Solver asks of its scorer): a text scorer.
    default_aggregation: str = "last"
    prune_below: float | None = None
    adaptive_threshold: float | None = None
    needs_states: bool = False
    needs_confidence: bool = False
    state_layers: tuple[int, ...] = ()

    def check_policy(self, name: str, n_embd: int) -> None:
        """Any policy: it reads text."""

    def with_batch_size(self, batch_size: int) -> FakeScorer:
        return self

    def with_own_counters(self) -> FakeScorer:
        return replace(self, counters=PRMCounters())  # ``seen`` stays the one list

    def score(self, question: str, paths: list[SolutionPath]) -> list[list[float]]:
        """One score per step of every path."""
        self.counters.calls += 1
        self.counters.steps_scored += sum(len(p.steps) for p in paths)
        self.seen.append([tuple(p.steps) for p in paths])
        return [[self.step_score(s) for s in p.steps] for p in paths]

    def step_score(self, step: str) -> float:
        """The score of one step."""
        key = step.strip()
        if key in self.table:
            return self.table[key]
        return self.rule(step) if self.rule else self.default


def run_at_once(target: Callable[..., object], *args: object) -> list[BaseException]:
    """Call ``target(*args)`` on three threads at once; what they raised."""
    failures: list[BaseException] = []

    def run():
        try:
            target(*args)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures
