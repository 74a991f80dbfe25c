"""The two interfaces every search strategy sees, and the helpers they share.

A strategy is a plain function ``(question, generator, scorer, config) -> SearchResult``. It never
touches llama.cpp or onnxruntime: it asks a :class:`StepGenerator` for more steps and a
:class:`StepScorer` for step scores, so it can be tested with tiny fakes.

Ownership of KV-cache sequences is simple and one-way: :meth:`StepGenerator.extend` *consumes* the
paths it is given (their cached prefix now belongs to the children it returns), and a strategy calls
:meth:`StepGenerator.release` on every child it drops. Finished paths may be released at any time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

from edgetts.search.adaptive import AdaptiveStop

AGGREGATIONS: tuple[str, ...] = ("last", "min", "prod")
DEFAULT_AGG = "last"  # a PRM's manifest usually names its own (``default_aggregation``)
# The small default policy degenerates when sampled hot: on GSM8K train problems, T=0.3 gave right
# single samples twice as often as T=0.8, and a right answer among 8 samples more often too
# (tools/sampling_study.py; figures in README "Sampling").
DEFAULT_TEMPERATURE = 0.3


@dataclass(frozen=True)
class Sampling:
    """How one search samples, the same for every path it grows (an argument, never state)."""

    temperature: float = DEFAULT_TEMPERATURE  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int = 0
    max_tokens: int | None = None  # generated tokens per solution; None: the generator's limit
    # Strings that end a path where they first appear (cut off, stop_reason "stop"): a client's
    # OpenAI ``stop``. Matched in the text as written, across step boundaries too.
    stop: tuple[str, ...] = ()
    # Also record each generated token's confidence (SolutionPath.token_stats, edgetts.confidence)
    # for confidence votes and probes that read it; a generator may record it anyway.
    record_confidence: bool = False
    # Also keep each generated token's bytes beside its confidence (SolutionPath.token_pieces),
    # so a reply can show its tokens' log-probabilities (OpenAI ``logprobs``).
    record_tokens: bool = False


@dataclass
class SolutionPath:
    """One partial or finished solution: its steps so far and what we know about them."""

    steps: list[str] = field(default_factory=list)
    finished: bool = False
    # Why generation stopped: "eos", "stop" (a Sampling.stop string), "max_tokens", "deadline",
    # "pruned" (its PRM score fell under AdaptiveStop.prune_below), or None while unfinished.
    stop_reason: str | None = None
    # Opaque to strategies: the generator keeps its KV-sequence bookkeeping here.
    handle: Any = None
    n_tokens: int = 0
    scores: list[float] = field(default_factory=list)
    # The policy's last hidden state at the end of each step, when the generator records them
    # (one per step, for scorers that read the policy's own states; see edgetts.probe).
    step_states: list[Any] = field(default_factory=list)
    # Per generated token (logprob, entropy, DeepConf confidence) and, per step, how many of the
    # path's tokens it ends at, when the generator records them (edgetts.confidence).
    token_stats: list[tuple[float, float, float]] = field(default_factory=list)
    token_pieces: list[bytes] = field(default_factory=list)  # each token's bytes (record_tokens)
    step_token_ends: list[int] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.steps)


class Counters(Protocol):
    """What a generator or scorer has spent so far: a dataclass of numbers, its time in
    ``seconds``. A search's cost is the difference of its fields across the search
    (:func:`edgetts.search.measured`); counters of another kind count nothing."""

    seconds: float


@runtime_checkable
class StepGenerator(Protocol):
    """Extends partial solutions, one step (or to the end) at a time."""

    # tokens prefilled, decoded and re-decoded (edgetts.policy.GeneratorCounters), seconds
    counters: Counters

    def root(self, question: str, sampling: Sampling | None = None) -> SolutionPath:
        """Return the empty path for ``question`` (the prompt is prefilled once, here or lazily).

        ``sampling`` holds for every path grown from this root (None: the generator's defaults).
        A new root drops the unfinished paths this search still holds from an earlier one (their
        KV is freed): a strategy must not extend them afterwards.
        """
        ...

    def extend(
        self,
        paths: list[SolutionPath],
        n_each: int,
        to_end: bool = False,
        deadline: Deadline | None = None,
        first_index: int = 0,
        stop_early: Callable[[SolutionPath], bool] | None = None,
    ) -> list[SolutionPath]:
        """Return ``n_each`` continuations of every path, grouped by parent in input order.

        Each child has one more step than its parent (or runs to the end when ``to_end``).
        Children are numbered ``first_index, first_index + 1, ...`` among their parent's
        children, and a child's number (with the seed) fixes what it samples: a later wave of
        samples from a new root passes how many came before, and so draws samples seeded as
        those of one call for all of them (adaptive sampling), not the first ones again.
        Finished parents are returned unchanged (once) instead of being extended.
        The input paths are consumed. When ``deadline`` expires mid-way, generation stops and
        the children come back as they are (unfinished, possibly with a partial last step).
        ``stop_early`` (with ``to_end``) is asked about each child at each new step, once the
        step is complete with its state and token statistics: True ends the child there,
        finished with stop reason ``"pruned"`` (``AdaptiveStop.prune_below``). It may be called
        from the generator's decode thread, so it must not raise (``search.common.Pruner``
        keeps its errors for the search's thread).
        """
        ...

    def submit(
        self,
        paths: list[SolutionPath],
        n_each: int,
        to_end: bool = False,
        deadline: Deadline | None = None,
    ) -> Any:
        """Start :meth:`extend` (``first_index`` 0) without waiting for it; return a ticket.

        Several submitted extensions decode together (one batch on the real policy), and a new
        one may be submitted while others are under way: a tree search whose subtrees are
        independent (DVTS) grows each as soon as its own children are back (:meth:`wait_any`).
        """
        ...

    def wait_any(self, tickets: Sequence[Any]) -> tuple[Any, list[SolutionPath]]:
        """Wait until the children of one of ``tickets`` (from :meth:`submit`, not yet
        collected) have all reached their step boundary; return that ticket and its children,
        as :meth:`extend` would have. Every ticket must be collected once."""
        ...

    def release(self, paths: list[SolutionPath]) -> None:
        """Free whatever the generator holds for paths the strategy has dropped."""
        ...


@runtime_checkable
class StepScorer(Protocol):
    """Scores every step of every path with a process reward model, each score in [0, 1]."""

    counters: Counters  # calls, steps scored (edgetts.prm.PRMCounters), seconds

    def score(self, question: str, paths: list[SolutionPath]) -> list[list[float]]: ...


@runtime_checkable
class Verifier(StepScorer, Protocol):
    """A loaded step scorer as the solver sees it: what it needs the policy to record, its
    defaults, and its cost counters (a text PRM, or a probe on the policy's own states)."""

    needs_states: bool  # reads SolutionPath.step_states: the policy must capture them
    needs_confidence: bool  # reads SolutionPath.token_stats: the policy must record them
    state_layers: tuple[int, ...]  # the policy layers a step state is made of (when needs_states)
    default_aggregation: str  # how its step scores best make one path score
    prune_below: float | None  # the score under which a weighted vote's sample stops early
    adaptive_threshold: float | None  # the chance at which a vote weighted by it stops sampling

    def check_policy(self, name: str, n_embd: int) -> None:
        """Raise unless this scorer can read the states of the policy ``name`` (width ``n_embd``)."""
        ...

    def with_batch_size(self, batch_size: int) -> Verifier:
        """The same scorer (same session and counters) scoring at most ``batch_size`` inputs at
        once: a memory plan's bound on its activations."""
        ...

    def with_own_counters(self) -> Verifier:
        """The same scorer (same session, same settings) counting its work from zero in counters
        of its own: one search's, while concurrent searches share the loaded model."""
        ...


# More paths than this per question is a typo, not a plan: at N = 64 the vote has long settled on
# this machine's benchmarks (docs/bench), and every path holds its tokens and states in memory.
MAX_N = 1024
DEFAULT_N = 4  # samples, beams or leaves when neither the user nor a plan says


@dataclass(frozen=True)
class SearchConfig:
    """Settings shared by all strategies. ``n`` counts samples, beams or leaves."""

    n: int = DEFAULT_N
    beam_width: int = 4
    max_steps: int = 40
    agg: str = DEFAULT_AGG
    # How a tree search ranks partial paths to keep and grow (beam search's survivors, a DVTS
    # subtree's best child); None: as ``agg``. search-and-learn ranks by the last step's score,
    # the PRM's value of the prefix; under "min", most new steps leave a path's score as its
    # parent's, and siblings tie (then the last step decides: rank_key). ``agg`` still judges
    # the finished paths.
    rank_agg: str | None = None
    deadline_s: float | None = None
    # For beam search: group the N finished beams by answer and sum their scores (weighted
    # pick), as DVTS does; False: the single best-scored beam. Rescored from the kept beams of
    # 50 MAWPS problems at N = 16 (docs/bench): 86 % weighted against 80 % best (won 4, lost 1).
    weighted_pick: bool = True
    # For beam search: when fewer than N/M beams survive a round (duplicates, finished beams),
    # the survivors share the N new beams, as search-and-learn refills its active beams to N
    # (the default since stop 41). False: each survivor grows M, and the search narrows for good.
    beam_refill: bool = True
    # For DVTS: grow the subtrees in lock-step rounds (one extend for all, every subtree waits
    # for the slowest), as search-and-learn does. False grows each subtree as soon as its own
    # children are scored, with no barrier; same picks when subtrees keep pace. Rounds stay the
    # default because they measured faster on this 2-core CPU (tools/bench_tree_throughput.py:
    # 69.1 against 64.6 tok/s at N = 16 on 3 GSM8K problems).
    dvts_rounds: bool = True
    # For DVTS: each subtree takes M of the N first steps in order, repeats and all, as
    # search-and-learn's subtrees each sample their own M. True deals them so that distinct ones
    # go to different subtrees, unfinished repeats dropped (dvts.deal). Measured live at N = 16
    # (docs/bench, stops 44-45): dealing won 4 and lost 0 problems on 50 MAWPS, won 0 and lost 4
    # on 50 GSM8K (each p = 0.125); not dealing repeats the stop-36 DVTS exactly on GSM8K, level
    # with majority at 16 there. A wash, so the default is search-and-learn's.
    dvts_deal: bool = False
    sampling: Sampling = field(default_factory=Sampling)
    # Adaptive sampling for the vote-based strategies (majority, weighted best-of-N, confidence
    # vote, auto's sample continuation): draw in waves, stop once the vote has settled; ``n``
    # stays the maximum. None here (exactly ``n``, as benchmarks and tools ask); the Solver, CLI
    # and server turn it on unless told not to (SolveOptions.adaptive).
    adaptive: AdaptiveStop | None = None
    # Check the arithmetic each solution writes out (edgetts.arithmetic): a solution with a wrong
    # sum votes only when none without one has an answer. False: every answer votes.
    check_arithmetic: bool = True
    # Set from another thread to stop the search as if its deadline had passed (server clients
    # that disconnect, shutdown); the search still ends normally and frees its KV sequences.
    cancel: threading.Event | None = field(default=None, repr=False, compare=False)

    @property
    def ranking(self) -> str:
        """The aggregation that ranks partial paths in a tree search (``rank_agg``, else ``agg``)."""
        return self.rank_agg or self.agg

    def validate(self) -> None:
        """Raise ValueError with a user-facing message for impossible settings."""
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.n > MAX_N:
            raise ValueError(f"n must be at most {MAX_N} (paths per question), got {self.n}")
        for name, value in (("aggregation", self.agg), ("ranking aggregation", self.ranking)):
            if value not in AGGREGATIONS:
                raise ValueError(f"unknown {name} {value!r}; choose one of {AGGREGATIONS}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.beam_width < 1:  # a tree's, and auto's should it continue with a tree
            raise ValueError(f"beam_width must be at least 1, got {self.beam_width}")
        if self.deadline_s is not None and not 0 < self.deadline_s < math.inf:  # NaN too
            raise ValueError(f"deadline_s must be a positive number, got {self.deadline_s}")
        if self.adaptive is not None:
            self.adaptive.validate()

    def validate_beams(self, strategy: str) -> None:
        """As :meth:`validate`, plus the beam settings a tree search (``strategy``) needs."""
        self.validate()
        if self.beam_width > self.n:
            raise ValueError(f"beam_width ({self.beam_width}) cannot exceed n ({self.n})")
        if self.n % self.beam_width:
            raise ValueError(
                f"n ({self.n}) must be a multiple of beam_width ({self.beam_width}) for {strategy}"
            )


@dataclass
class Candidate:
    """A finished path as reported to the user."""

    text: str
    answer: str | None
    score: float | None
    step_scores: list[float]
    n_tokens: int
    stop_reason: str | None
    # The answer is only the last number of a path that was cut short (token limit, deadline),
    # not one it wrote out: it votes only when no candidate has a real answer (see select.py).
    provisional: bool = False
    # The text writes a sum that does not hold (``48 * 3 = 124``, edgetts.arithmetic): it votes
    # only when no candidate without one has an answer (see select.py).
    arithmetic_error: bool = False
    # Each generated token's bytes (a token may hold part of a UTF-8 character) and its
    # log-probability under the policy, when the search recorded them (Sampling.record_tokens):
    # what OpenAI's ``logprobs`` shows.
    token_logprobs: list[tuple[bytes, float]] = field(default_factory=list)

    @property
    def has_answer(self) -> bool:
        """An answer the path wrote out (not a provisional guess): one that votes as one."""
        return self.answer is not None and not self.provisional

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        """A candidate from its JSON form (extra keys such as ``correct`` are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class SearchResult:
    """What a strategy returns: the pick, every candidate, and what it cost."""

    strategy: str
    answer: str | None
    chosen: Candidate | None
    candidates: list[Candidate]
    # answer -> vote count (majority) or summed score (weighted pick)
    votes: dict[str, float] = field(default_factory=dict)
    cut_short: bool = False
    counters: dict[str, float] = field(default_factory=dict)

    @property
    def provisional(self) -> bool:
        """No solution wrote an answer out: ``answer`` is the last number of one cut short (token
        limit, deadline), a guess to show as such."""
        return self.chosen is not None and self.chosen.provisional


def aggregate(step_scores: Sequence[float], agg: str = DEFAULT_AGG) -> float:
    """Collapse per-step PRM scores into one path score (last step, weakest step, or product)."""
    if not step_scores:
        return 0.0
    # a score that is not a number counts as the worst (min() of NaNs depends on their order)
    step_scores = [0.0 if math.isnan(s) else s for s in step_scores]
    if agg == "last":
        return float(step_scores[-1])
    if agg == "min":
        return float(min(step_scores))
    if agg == "prod":
        return float(math.prod(step_scores))
    raise ValueError(f"unknown aggregation {agg!r}; choose one of {AGGREGATIONS}")


def rank_key(step_scores: Sequence[float], agg: str) -> tuple[float, float]:
    """How a tree search ranks partial paths: by ``aggregate(step_scores, agg)``, ties broken by
    the last step's score. Under ``min`` most new steps leave a path's score as its parent's, so
    siblings tie; without the second key the earliest-made child won whatever its own step scored."""
    return aggregate(step_scores, agg), float(step_scores[-1]) if step_scores else 0.0


class Deadline:
    """A wall clock that strategies check between rounds; ``None`` never expires.

    A set ``cancel`` event counts as an expired deadline, so cancelling needs no new checks.
    """

    def __init__(self, deadline_s: float | None, cancel: threading.Event | None = None) -> None:
        self.deadline_s = deadline_s
        self.cancel = cancel
        self.started_s = time.perf_counter()  # on the perf_counter clock

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started_s

    def remaining_s(self) -> float:
        if self.deadline_s is None:
            return math.inf
        return self.deadline_s - self.elapsed_s()

    def expired(self) -> bool:
        if self.cancel is not None and self.cancel.is_set():
            return True
        return self.remaining_s() <= 0
