"""The embeddable entry point: a Solver keeps the policy (and PRM) loaded between questions."""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from edgetts.gpu import default_gpu_layers, requested_gpu_layers
from edgetts.policy import LlamaPolicy, PolicyConfig, Prompt
from edgetts.policy.config import GeneratorCounters, SearchNotStarted
from edgetts.policy.loop import IDLE_WAIT_S
from edgetts.policy.session import PolicySession
from edgetts.prompts import Conversation, RawPrompt, prompt_text, question_text
from edgetts.scheduler import (
    MB,
    Budget,
    MemoryEstimate,
    Plan,
    PlanError,
    estimate_for_policy,
    plan_for,
    prm_cost,
    prompt_tokens_for,
)
from edgetts.search import NEEDS_CONFIDENCE, NEEDS_SCORER, STRATEGIES, measured, run_search
from edgetts.search.adaptive import AdaptiveStop
from edgetts.search.base import (
    DEFAULT_AGG,
    DEFAULT_N,
    Deadline,
    Sampling,
    SearchConfig,
    SearchResult,
    SolutionPath,
    Verifier,
)
from edgetts.search.registry import DEFAULT_STRATEGY, GREEDY, MODES, REGISTRY

log = logging.getLogger("edgetts")

if TYPE_CHECKING:
    from edgetts.code import CodeResult, CodeTask
    from edgetts.sandbox import Sandbox

# Strategies a program vote can use: one vote each, or weighted by the verifier.
POT_STRATEGIES = (GREEDY, "majority", "weighted_best_of_n", "auto")
CODE_STRATEGIES = (GREEDY, "majority", "exec", "auto")  # auto = exec for code tasks
MAX_STOP = 4  # stop strings per request, as OpenAI allows
MAX_STOP_CHARS = 256  # each is searched for after every token: keep that cheap
# PolicyConfig fields a budget plan sets (unless the user pinned them, see Solver.pinned).
PLANNED_FIELDS = ("n_seq_max", "n_ctx", "kv_type", "n_threads", "n_gpu_layers", "park_mb")


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class SolveOptions:
    """Per-question choices: the strategy and its budget, and how to sample."""

    strategy: str = DEFAULT_STRATEGY
    n: int | None = None  # None: the plan picks it under a budget, else DEFAULT_N
    beam_width: int = SearchConfig.beam_width
    max_steps: int = SearchConfig.max_steps
    agg: str | None = None  # None: the PRM manifest's default_aggregation
    deadline_s: float | None = None
    memory_mb: float | None = None  # peak resident memory budget; the Solver plans to fit it
    temperature: float = Sampling.temperature
    top_p: float = Sampling.top_p
    top_k: int = Sampling.top_k  # 0 = off
    seed: int = Sampling.seed
    weighted_pick: bool = SearchConfig.weighted_pick
    rank_agg: str | None = SearchConfig.rank_agg  # None: as agg (see SearchConfig.rank_agg)
    max_tokens: int | None = None  # generated tokens per solution; None: the policy's limit
    # Math only: "cot" (prose), "pot" (programs run in the sandbox), "cot+pot" (both vote).
    mode: str = "cot"
    pot_n: int | None = None  # programs for cot+pot (None: as many as prose samples, n)
    # Vote-based strategies sample in waves and stop once the vote has settled (n at most):
    # on the kept GSM8K / MAWPS samples it saves most tokens at the same accuracy
    # (tools/bench_adaptive.py). False: always n samples (--no-adaptive, "adaptive": false).
    adaptive: bool = True
    # With adaptive sampling and a verifier whose manifest sets prune_below: weighted best-of-N
    # (and auto's weighted continuation) stops a sample once its weakest step so far scores
    # under it (AdaptiveStop.prune_below). False: every sample runs to its end (--no-prune).
    prune: bool = True
    # A solution whose written sums do not hold votes only when none without such a slip has an
    # answer (edgetts.arithmetic). False: every answer votes (--no-check-arithmetic).
    check_arithmetic: bool = SearchConfig.check_arithmetic
    # Math prose only: run the Python a solution writes (in the sandbox) and let the number it
    # prints replace the answer written after it, then pick again (edgetts.pot.answer_by_programs).
    run_programs: bool = False
    stop: tuple[str, ...] = ()  # strings that end a solution where they appear (OpenAI's stop)
    logprobs: bool = False  # keep each token's text and log-probability (Candidate.token_logprobs)

    @property
    def has_budget(self) -> bool:
        """A memory or deadline budget: the Solver plans the search (and N when unset) to fit it."""
        return self.memory_mb is not None or self.deadline_s is not None

    @property
    def n_paths(self) -> int:
        """Paths per question (samples, beams or leaves): 1 for greedy, else ``n``, or DEFAULT_N
        when unset (under a budget the plan sets it instead: :meth:`Solver.prepare`)."""
        if self.strategy == GREEDY:
            return 1
        return self.n if self.n is not None else DEFAULT_N

    def search_config(self) -> SearchConfig:
        return SearchConfig(
            n=self.n if self.n is not None else DEFAULT_N,
            beam_width=self.beam_width,
            max_steps=self.max_steps,
            agg=self.agg or DEFAULT_AGG,
            rank_agg=self.rank_agg,
            deadline_s=self.deadline_s,
            weighted_pick=self.weighted_pick,
            sampling=self.sampling(),
            adaptive=AdaptiveStop() if self.adaptive else None,
            check_arithmetic=self.check_arithmetic,
        )

    def sampling(self) -> Sampling:
        """How the search samples (greedy: temperature 0)."""
        temperature = 0.0 if self.strategy == GREEDY else self.temperature
        return Sampling(
            temperature=temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            max_tokens=self.max_tokens,
            stop=tuple(self.stop),
            record_tokens=self.logprobs,
        )

    def validate(self) -> None:
        """Raise ValueError on settings no strategy can run with, before any model loads."""
        for name in ("n", "beam_width", "max_steps", "top_k", "seed", "max_tokens", "pot_n"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
        for name in ("temperature", "top_p", "deadline_s", "memory_mb"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if value is not None and not math.isfinite(value):  # a NaN deadline never expired
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {MODES}")
        if self.mode != "cot" and self.strategy not in POT_STRATEGIES:
            raise ValueError(
                f"--mode {self.mode} votes over programs: use strategy greedy, majority, "
                f"weighted_best_of_n or auto (the verifier weighs votes when it loads), not {self.strategy!r}"
            )
        if self.pot_n is not None and self.pot_n < 1:
            raise ValueError(f"pot_n must be at least 1, got {self.pot_n}")
        if self.pot_n is not None and self.mode != "cot+pot":
            raise ValueError(f"pot_n is for mode cot+pot (programs beside prose), not {self.mode}")
        if self.run_programs and self.mode != "cot":
            raise ValueError(
                f"run_programs is for prose solutions (mode cot); --mode {self.mode} runs its programs"
            )
        if self.strategy == "exec":
            raise ValueError("strategy exec runs programs to pick one: it is for code tasks (--task code)")
        if self.strategy != GREEDY and self.strategy not in STRATEGIES:
            choices = sorted([GREEDY, *STRATEGIES])
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {choices}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 <= self.top_p <= 1:  # 0: the likeliest token alone (llama.cpp keeps one)
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.memory_mb is not None and self.memory_mb <= 0:
            raise ValueError(f"memory_mb must be positive, got {self.memory_mb}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not isinstance(self.stop, (tuple, list)):  # a lone string would stop at each character
            raise ValueError(f"stop takes a list of strings, got {type(self.stop).__name__} {self.stop!r}")
        if len(self.stop) > MAX_STOP or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop takes up to {MAX_STOP} non-empty strings, got {list(self.stop)!r}")
        if any(len(s) > MAX_STOP_CHARS for s in self.stop):
            raise ValueError(f"a stop string may have at most {MAX_STOP_CHARS} characters")
        if not all(_is_utf8(s) for s in self.stop):  # a lone surrogate ("\ud800") from JSON
            raise ValueError("a stop string is not valid Unicode text (a lone surrogate)")
        config = self.search_config()
        if self.strategy == GREEDY:  # one majority sample: its aggregation, deadline, ... still count
            REGISTRY["majority"].validate(replace(config, n=1))
            return
        if self.n is None and (self.memory_mb is not None or self.deadline_s is not None):
            # the plan picks N (a multiple of the beam width for a tree): check the rest
            config = replace(config, n=self.beam_width)
        REGISTRY[self.strategy].validate(config)


def validate_code_options(options: SolveOptions) -> None:
    """Raise ValueError on settings a code task cannot run with, before any model loads."""
    if options.strategy not in CODE_STRATEGIES:
        choices = ", ".join(CODE_STRATEGIES)
        raise ValueError(f"for code tasks choose strategy {choices}, not {options.strategy!r}")
    if options.mode != "cot" or options.run_programs:
        what = "run_programs" if options.run_programs else "mode"
        raise ValueError(f"{what} is for math; code tasks always run their programs")
    if options.memory_mb is not None:  # it was recorded and did nothing
        raise ValueError("memory_mb plans math searches; a code task has no plan (give -n)")
    # The sampling and budget checks are the math ones; only the strategy names differ.
    replace(options, strategy=GREEDY if options.strategy == GREEDY else "majority").validate()


@dataclass
class Solver:
    """Answers questions with one loaded policy and, when a strategy needs it, one PRM.

    >>> solver = Solver()                                     # default models
    >>> result = solver.solve("What is 6 * 7?", SolveOptions(strategy="majority", n=4))
    >>> result.answer
    '42'
    """

    # The user's settings. Never changed: a plan or a PRM's needs make a copy for one solve, so
    # one question's budget never shapes the next question's context (see _policy_for).
    policy_config: PolicyConfig = field(default_factory=PolicyConfig)
    prm_path: str | None = None  # None = the shipped PRM
    prm_threads: int | None = None
    # PolicyConfig fields the user fixed ("kv_type", "n_gpu_layers"); a plan leaves them alone.
    # n_threads counts as fixed whenever it is set.
    pinned: frozenset[str] = frozenset()
    # Where model-written code runs (--mode pot, code tasks); None: such requests are refused.
    sandbox: Sandbox | None = None
    # Once loaded, the policy and its PRM stay as loaded (a server: one request's budget must
    # not reload the model under the others, nor unload the PRM they share): a solve's plan
    # sets its search (N, beam width) only, and a memory budget the loaded model and PRM do not
    # fit is refused, as is a PRM strategy when the policy keeps none of the states it reads.
    fixed_policy: bool = False
    _policy: LlamaPolicy | None = field(default=None, init=False, repr=False)
    # the loaded policy's own memory as its plan predicted it, None until estimated (the PRM
    # apart: it stays loaded across policies, and is counted as it is needed)
    _loaded_memory_mb: float | None = field(default=None, init=False, repr=False)
    _scorer: Verifier | None = field(default=None, init=False, repr=False)
    policy_loads: int = field(default=0, init=False)  # times a policy was loaded
    # Held while planning and loading, not while searching: searches on several threads share
    # the loaded policy (PolicyConfig.max_searches of them at once, in one decode loop); a
    # reload waits until none is running (``_searching`` counts them).
    _lock: threading.Condition = field(default_factory=threading.Condition, init=False, repr=False)
    _searching: int = field(default=0, init=False, repr=False)

    @property
    def policy(self) -> LlamaPolicy:
        """The loaded policy (loaded now with the user's settings if none is)."""
        if self._policy is None:
            self._load(self.policy_config)
        return self._policy

    def prompt_tokens(self, question: Prompt) -> int:
        """Tokens of ``question``'s prompt as the policy writes it for a prose (cot) search;
        raises :class:`~edgetts.policy.PromptTooLong` when the policy's context cannot take it.
        Loads the policy if none is."""
        return len(self.policy.checked_prompt_tokens(question))

    def _load(self, config: PolicyConfig, planned_mb: float | None = None) -> LlamaPolicy:
        """Load the policy as ``config``; ``planned_mb``: its memory as its plan predicted."""
        self._policy, self._loaded_memory_mb = LlamaPolicy(config), planned_mb
        self.policy_loads += 1
        return self._policy

    def _loaded_policy_mb(self) -> float:
        """The loaded policy's memory: as its plan predicted, else by the scheduler's estimate
        with parking at its limit, so that a solve under a budget it fits keeps it instead of
        loading another."""
        if self._loaded_memory_mb is None:
            policy = self._policy
            assert policy is not None
            estimate = estimate_for_policy(policy.config, policy.metadata, None, policy.config.park_mb)
            self._loaded_memory_mb = estimate.total_mb
        return self._loaded_memory_mb

    @property
    def prm_dir(self) -> str:
        """The PRM in use: the one asked for, else the one shipped for this policy (its own
        hidden-state probe when one ships, else the text PRM)."""
        if self.prm_path is not None:
            return self.prm_path
        from edgetts.probe import policy_prm_dir

        return str(policy_prm_dir(self.policy_config.model))

    @property
    def scorer(self) -> Verifier:
        if self._scorer is None:
            from edgetts.probe import load_scorer  # onnxruntime loads only when a PRM is needed

            self._scorer = load_scorer(self.prm_dir, threads=self.prm_threads)
        return self._scorer

    @property
    def scorer_loaded(self) -> bool:
        """Whether the PRM is loaded (``scorer`` loads it on first use)."""
        return self._scorer is not None

    def solve(
        self,
        question: Prompt,
        options: SolveOptions | None = None,
        cancel: threading.Event | None = None,
        counters: GeneratorCounters | None = None,
    ) -> SearchResult:
        """Answer one question; safe to call from several threads at once.

        Concurrent solves share the loaded policy: up to ``PolicyConfig.max_searches`` of them
        decode in one batch (more wait for a prompt slot), each with its own deadline, cancel
        and counters. A solve that waits for the others (for a prompt slot, or until none runs
        so that the policy can load again with the settings it needs) raises
        :class:`SearchNotStarted` at its deadline or cancel; the wait for a prompt slot counts
        against ``deadline_s``, the wait before a reload does not (as loading does not).
        Setting ``cancel`` (from any thread) ends the search as if its deadline had passed.
        ``counters``: the policy's work for this search is counted there too (to
        watch its progress from another thread).
        ``question`` may be a whole :class:`~edgetts.prompts.Conversation` (the server's chat) or
        a :class:`~edgetts.prompts.RawPrompt`: every search then roots in it, while the PRM and
        program-aided math read its last user message.
        """
        if not isinstance(question, (str, Conversation, RawPrompt)):
            raise TypeError(
                f"question must be text (or a Conversation or RawPrompt), got {type(question).__name__}"
            )
        options = options or SolveOptions()
        options.validate()  # a bad mode is named as such, not as a missing sandbox
        if options.mode != "cot":
            self._need_sandbox(f"--mode {options.mode}")
        if options.run_programs:
            self._need_sandbox("--run-programs")
        prompt, question = question, question_text(question)
        waited = Deadline(options.deadline_s, cancel)  # for the others: a prompt slot, a reload
        with self._searching_on(prompt_text(prompt), options, counters, waited) as (plan, scorer, session):
            generator = session if isinstance(prompt, str) else RootedIn(session, prompt)
            strategy, config = options.strategy, replace(options.search_config(), cancel=cancel)
            if plan is not None:
                config = replace(config, n=plan.n, beam_width=plan.beam_width)
            if strategy == GREEDY:
                strategy, config = "majority", replace(config, n=1)
            if options.agg is None and scorer is not None:
                config = replace(config, agg=scorer.default_aggregation)
            if config.adaptive is not None and scorer is not None:
                # the verifier's own stopping settings, on its scale (its manifest), which were
                # picked for path scores of its own aggregation: another keeps the defaults
                adaptive = config.adaptive
                if config.agg == scorer.default_aggregation:
                    adaptive = replace(adaptive, weighted_threshold=scorer.adaptive_threshold)
                if options.prune:
                    adaptive = replace(adaptive, prune_below=scorer.prune_below)
                config = replace(config, adaptive=adaptive)
            if strategy in NEEDS_CONFIDENCE or (scorer is not None and scorer.needs_confidence):
                # token confidence is recorded per search, as it samples: no other context needed
                config = replace(config, sampling=replace(config.sampling, record_confidence=True))
            if options.mode == "cot":
                deadline = Deadline(config.deadline_s, cancel)  # the search's own, started alike
                result = run_search(strategy, question, generator, scorer, config)
                if options.run_programs:
                    result = self._answer_by_programs(result, config, deadline)
            else:
                from edgetts.pot import PotConfig, program_of_thought

                pot = PotConfig(
                    mode=options.mode,
                    n_pot=config.n if options.mode == "pot" or options.pot_n is None else options.pot_n,
                    n_cot=config.n if options.mode == "cot+pot" else 0,
                    agg=config.agg,
                    deadline_s=config.deadline_s,
                    cancel=cancel,
                    sampling=config.sampling,
                    check_arithmetic=config.check_arithmetic,
                )
                pot.validate()
                weigh = scorer if strategy != "majority" else None
                result = measured(
                    session, scorer, lambda: program_of_thought(question, session, self.sandbox, weigh, pot)
                )
        if options.strategy == GREEDY:
            result.strategy = GREEDY if options.mode == "cot" else f"{GREEDY} {options.mode}"
        return result

    def solve_code(
        self,
        task: CodeTask,
        options: SolveOptions | None = None,
        cancel: threading.Event | None = None,
        counters: GeneratorCounters | None = None,
    ) -> CodeResult:
        """Write, run and pick a program for ``task`` (see :mod:`edgetts.code`).

        ``options.strategy``: greedy (one program at temperature 0), majority (the biggest
        cluster of programs agreeing on outputs, no tests), exec or auto (visible tests, then
        CodeT agreement with the policy's own tests). Needs ``sandbox``.
        """
        from edgetts.code import CodeConfig, solve_code

        options = options or SolveOptions(strategy="exec")
        validate_code_options(options)
        self._need_sandbox("code tasks")
        greedy = options.strategy == GREEDY
        n = options.n_paths
        selection = "first" if greedy else ("majority" if options.strategy == "majority" else "exec")
        config = CodeConfig(
            n=n,
            selection=selection,
            deadline_s=options.deadline_s,
            cancel=cancel,
            sampling=options.sampling(),
        )
        config.validate()
        waited = Deadline(options.deadline_s, cancel)
        with self._searching_on(None, options, counters, waited) as (_, _, session):
            return solve_code(task, session, self.sandbox, config)

    @contextmanager
    def _searching_on(
        self,
        question: str | None,
        options: SolveOptions,
        counters: GeneratorCounters | None,
        waited: Deadline,
    ) -> Iterator[tuple[Plan | None, Verifier | None, PolicySession]]:
        """Plan and load for a search (a code task: ``question`` None, the policy as loaded),
        then give it a session on the policy, closed (its slots freed) when the search ends.
        Waiting for other searches (to reload the policy, for a prompt slot) gives up at
        ``waited`` (the solve's deadline and cancel): :class:`SearchNotStarted`."""
        with self._lock:
            if question is None:
                plan, scorer, policy = None, None, self.policy  # as loaded (the user's settings if none is)
            else:
                plan, scorer, policy = self._prepare(question, options, waited)
                if scorer is not None:  # this search's PRM work, apart from its neighbours'
                    scorer = scorer.with_own_counters()
            self._searching += 1
        session = policy.session(counters, waited)
        try:
            yield plan, scorer, session
        finally:
            session.close()
            with self._lock:
                self._searching -= 1
                self._lock.notify_all()

    def _answer_by_programs(
        self, result: SearchResult, config: SearchConfig, deadline: Deadline
    ) -> SearchResult:
        """``result`` with its prose solutions' programs run and the strategy's pick made again."""
        from edgetts.pot import answer_by_programs

        info = REGISTRY[result.strategy.removeprefix("auto:")]  # auto reports what it continued with
        assert info.final_pick is not None and self.sandbox is not None
        return answer_by_programs(
            result, self.sandbox, lambda candidates: info.final_pick(candidates, config), deadline
        )

    def _need_sandbox(self, what: str) -> None:
        if self.sandbox is None:
            raise ValueError(f"{what} run model-written code: this solver has no sandbox (exec not allowed)")

    def prepare(self, question: str, options: SolveOptions | None = None) -> Plan | None:
        """Plan and load all that a solve of ``question`` under ``options`` would use, and return
        the plan (None without a budget). A deadline counts from the start of the search, so a
        caller that times solves (a benchmark, a server warming up) loads the models here first.
        """
        options = options or SolveOptions()
        options.validate()
        with self._lock:
            return self._prepare(question, options)[0]

    def _prepare(
        self, question: str, options: SolveOptions, waited: Deadline | None = None
    ) -> tuple[Plan | None, Verifier | None, LlamaPolicy]:
        """Plan and load for ``options``, which the caller has validated (solve, prepare)."""
        if options.max_tokens is not None and options.max_tokens > self.policy_config.max_tokens:
            raise ValueError(
                f"max_tokens={options.max_tokens} is more than this solver's limit "
                f"of {self.policy_config.max_tokens} (PolicyConfig.max_tokens)"
            )
        fixed = self.fixed_policy and self._policy is not None
        if fixed:
            self._check_fits_as_loaded(options.memory_mb)  # before a plan for its shape says less
        plan = self.plan(options, question)
        strategy = "majority" if options.strategy == GREEDY else options.strategy
        if fixed:
            return plan, *self._as_loaded(strategy, plan)
        scorer = self._scorer_for(strategy, plan)
        if scorer is None and plan is not None and options.memory_mb is not None:
            self._unload_scorer_over(options.memory_mb - plan.predicted_memory_mb)
        return plan, scorer, self._policy_for(scorer, plan, options.memory_mb, waited)

    def check_budget(self, question: Prompt, options: SolveOptions) -> None:
        """Raise :class:`PlanError` now where a solve of ``question`` under ``options`` would
        raise it as it starts: a budget the model as loaded, or any plan, cannot meet. So a
        server refuses such a request before it queues (and before a stream starts)."""
        if not options.has_budget:
            return
        text = prompt_text(question)
        with self._lock:
            if self.fixed_policy and self._policy is not None:
                self._check_fits_as_loaded(options.memory_mb)
            self.plan(options, text)

    def _check_fits_as_loaded(self, memory_mb: float | None) -> None:
        """For ``fixed_policy``: the model and its PRM count as one fixed whole against a budget."""
        held_mb = self._loaded_policy_mb() + self._loaded_prm_mb()
        if memory_mb is not None and held_mb > memory_mb:
            # More than /health's estimate, which counts parked paths as held so far.
            parking = (
                " and parked tree paths at their limit"
                if self._policy and self._policy.config.park_mb
                else ""
            )
            raise PlanError(
                f"memory_mb={memory_mb:g} is less than the loaded model may hold (~{held_mb:.0f} MB "
                f"with its PRM{parking}); it is not loaded again for one request's budget",
                field="memory_mb",
            )

    def _as_loaded(self, strategy: str, plan: Plan | None) -> tuple[Verifier | None, LlamaPolicy]:
        """The scorer and the policy as loaded, for a solver with ``fixed_policy`` (the plan
        sets the search only)."""
        policy = self._policy
        assert policy is not None
        scorer = self._scorer_for(strategy, plan)
        if (
            scorer is not None
            and scorer.needs_states
            and not _keeps_states(policy.config, scorer.state_layers)
        ):
            if strategy != "auto":
                raise ValueError(
                    f"strategy {strategy!r}: the loaded model keeps none of the states its PRM reads"
                )
            log.warning("auto runs without a PRM: the loaded model keeps none of the states it reads")
            scorer = None
        self._check_probe(scorer)
        return scorer, policy

    def _loaded_prm_mb(self) -> float:
        """What the loaded PRM holds, by the scheduler's estimate (0 when none is loaded)."""
        cost = prm_cost(self.prm_dir) if self.scorer_loaded else None
        return cost.memory_mb if cost is not None else 0.0

    def _resident_prm_mb(self, scorer: Verifier | None, plan: Plan | None) -> float:
        """The PRM's memory beside the policy: as planned when this solve uses it, else what a
        PRM loaded for an earlier solve still holds."""
        if scorer is not None:
            return plan.memory.prm_mb if plan is not None else 0.0
        return self._loaded_prm_mb()

    def _unload_scorer_over(self, room_mb: float) -> None:
        """Let go of a PRM an earlier solve loaded when this solve, which needs none, has less
        room than it holds (searches still running keep their own reference)."""
        if self._loaded_prm_mb() > room_mb:
            log.info("PRM unloaded: this solve's memory budget has no room for it")
            self._scorer = None

    def memory_estimate(self) -> MemoryEstimate | None:
        """The scheduler's estimate of this solver's resident memory with the loaded policy (see
        :func:`~edgetts.scheduler.estimate_for_policy`; parked paths as held at their peak so
        far), to hold against the process's peak RSS. None while no policy is loaded."""
        policy = self._policy
        if policy is None:
            return None
        return estimate_for_policy(
            policy.config,
            policy.metadata,
            self._loaded_prm_mb(),
            policy.parking.peak / MB,
        )

    def plan(self, options: SolveOptions, question: str | None = None) -> Plan | None:
        """The scheduler's plan for a budget (memory and/or deadline); None without one.

        The deadline counts from the start of the search: model loading is excluded.
        """
        if not options.has_budget:
            return None
        cfg = self.policy_config
        fixed = self.fixed_policy and self._policy is not None
        if fixed:  # the search runs on the model as loaded: plan for its slots, cache and offload
            cfg = self._policy.config
        budget = Budget(
            memory_mb=options.memory_mb,
            deadline_s=options.deadline_s,
            strategy=options.strategy,
            n=options.n,
            beam_width=options.beam_width,
            max_tokens=cfg.max_tokens,
            # the request's own limit (a plan for 512 tokens picked a far smaller N than a
            # 64-token answer has time for)
            answer_max_tokens=options.max_tokens,
            max_prompt_tokens=cfg.max_prompt_tokens,
            max_steps=options.max_steps,
            prompt_tokens=prompt_tokens_for(question),
            n_threads=cfg.n_threads,
            searches=cfg.max_searches,
            park_limit_mb=cfg.park_mb,  # the user's limit: a plan parks less, never more
            kv_type=cfg.kv_type if fixed or "kv_type" in self.pinned else None,
            # Offload the user set, on the command line or in $EDGETTS_N_GPU_LAYERS, is kept;
            # otherwise the plan offloads every layer when llama.cpp is a GPU build.
            n_gpu_layers=self._offload_planned(cfg, fixed),
            slots=cfg.n_seq_max if fixed else None,
        )
        return plan_for(cfg.model, budget, self.prm_dir)[0]

    def _offload_planned(self, cfg: PolicyConfig, fixed: bool) -> int | None:
        """The GPU layers a plan keeps: the loaded policy's own (a server's model, loaded with
        ``$EDGETTS_N_GPU_LAYERS`` or none when its config names none: a plan that offloaded
        every layer read the GPU's speeds for a model on the CPU), the user's, else None (the
        plan offloads every layer on a GPU build)."""
        if fixed:
            return cfg.n_gpu_layers if cfg.n_gpu_layers is not None else default_gpu_layers()
        return cfg.n_gpu_layers if "n_gpu_layers" in self.pinned else requested_gpu_layers()

    def _policy_for(
        self,
        scorer: Verifier | None,
        plan: Plan | None,
        memory_mb: float | None,
        waited: Deadline | None = None,
    ) -> LlamaPolicy:
        """A policy for this solve: the user's settings, as planned for its budget, recording
        step states when the PRM reads them (a policy probe).

        The loaded policy is kept when it serves the solve as well: at least the KV slots and
        cells wanted, the same cache type, threads and offload, the states the PRM reads (a
        policy that keeps states serves a solve that needs none: alternating strategies would
        otherwise reload every time), and (under a memory budget) memory that fits. Reloading
        costs seconds, so questions of different lengths or deadlines share one context; a
        question with no budget gets a context as the user configured it, whatever budget the
        question before had. A reload waits until no search runs, or until ``waited`` runs out.
        """
        wanted = self.policy_config
        if plan is not None:
            wanted = replace(wanted, **{name: getattr(plan, name) for name in PLANNED_FIELDS})
        if scorer is not None and scorer.needs_states:
            wanted = replace(wanted, capture_states=True, state_layers=scorer.state_layers)
        prm_mb = self._resident_prm_mb(scorer, plan)
        while True:
            loaded = self._policy.config if self._policy is not None else None
            if (
                loaded is not None
                and _serves(loaded, wanted)
                and (memory_mb is None or self._loaded_policy_mb() + prm_mb <= memory_mb)
            ):
                break
            if self._searching:  # never pull the context from under a running search
                if waited is not None and waited.expired():
                    raise SearchNotStarted(
                        f"the deadline passed (or the search was cancelled) while {self._searching} "
                        "running searches kept the policy that this one must load again"
                    )
                self._lock.wait(IDLE_WAIT_S)  # (a search's end notifies at once)
                continue
            self._free_policy()
            self._load(wanted, plan.predicted_memory_mb - plan.memory.prm_mb if plan is not None else None)
            break
        self._check_probe(scorer)
        return self._policy

    def _check_probe(self, scorer: Verifier | None) -> None:
        """A PRM that reads the policy's states must be the one made for the loaded policy."""
        if scorer is not None and scorer.needs_states:
            meta = self._policy.metadata
            scorer.check_policy(meta.name, meta.n_embd)

    def _scorer_for(self, strategy: str, plan: Plan | None) -> Verifier | None:
        """The PRM when the strategy needs it; for auto, when it fits and loads (else agreement)."""
        if strategy in NEEDS_SCORER:
            return self._planned(self.scorer, plan)
        if strategy != "auto" or (plan is not None and not plan.use_prm):
            return None
        try:
            return self._planned(self.scorer, plan)
        except Exception as exc:  # auto still works on agreement alone; say why
            from edgetts.models import ModelError

            if self.prm_path is not None or isinstance(exc, ModelError):
                raise  # a PRM the user named must load; an unknown model is the error, said once
            log.warning("auto runs without a PRM (%s): difficulty from agreement only", exc)
            return None

    @staticmethod
    def _planned(scorer: Verifier, plan: Plan | None) -> Verifier:
        """Bound the PRM's batch as planned: its activations, not its weights, dominate memory."""
        return scorer.with_batch_size(plan.prm_batch_size) if plan is not None else scorer

    def drop_scorer(self) -> None:
        """Let go of the PRM (a later solve that needs it loads it again)."""
        with self._lock:
            self._scorer = None

    def close(self) -> None:
        """Free the llama.cpp context and model (a later solve loads them again), once the
        solves under way on other threads have ended: freed under a running decode, llama.cpp
        would crash the process."""
        with self._lock:
            while self._searching:
                self._lock.wait()
            self._free_policy()

    def _free_policy(self) -> None:
        if self._policy is not None:
            self._policy.close()
            self._policy = None

    def __enter__(self) -> Solver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# Settings a loaded policy must have exactly as wanted to serve a solve (the rest only as much).
SAME_FIELDS = (
    "model",
    "kv_type",
    "n_threads",
    "n_gpu_layers",
    "max_prompt_tokens",
    "max_step_tokens",
    "n_batch",
)


def _keeps_states(loaded: PolicyConfig, state_layers: tuple[int, ...]) -> bool:
    """Whether a policy loaded with ``loaded`` keeps the hidden states of ``state_layers``."""
    return loaded.capture_states and loaded.state_layers == state_layers


def _serves(loaded: PolicyConfig, wanted: PolicyConfig) -> bool:
    """Whether a policy loaded with ``loaded`` can run a solve that wants ``wanted``."""
    return (
        all(getattr(loaded, name) == getattr(wanted, name) for name in SAME_FIELDS)
        and (not wanted.capture_states or _keeps_states(loaded, wanted.state_layers))  # any, or those
        and loaded.n_seq_max >= wanted.n_seq_max
        and loaded.park_mb >= wanted.park_mb  # else parked paths are decoded again
        and loaded.max_searches >= wanted.max_searches
        and loaded.resolved_n_ctx() >= wanted.resolved_n_ctx()
        and loaded.max_tokens >= wanted.max_tokens
    )


def solve(question: str, model: str | None = None, **options) -> SearchResult:
    """One-shot convenience: load the models, answer ``question``, return the SearchResult.

    ``options`` are :class:`SolveOptions` fields (strategy, n, beam_width, seed, ...). For more
    than one question keep a :class:`Solver` instead, so the model loads once.
    """
    opts = SolveOptions(**options)
    opts.validate()  # before the model loads
    # a solver for this one question: its token limit is the one asked for
    limit = max(PolicyConfig.max_tokens, opts.max_tokens or 0)
    solver = Solver(PolicyConfig(model=model, max_tokens=limit))
    try:
        return solver.solve(question, opts)
    finally:
        solver.close()


class RootedIn:
    """A search's session with every search rooted in one prompt (a conversation or a raw
    prompt): a :class:`~edgetts.search.base.StepGenerator`.

    Searches call ``root(question)`` with the question text, which is also what the PRM reads;
    this passes the whole prompt instead, so the strategies need not know about conversations.
    Everything else is the session's own.
    """

    def __init__(self, session: PolicySession, prompt: Prompt) -> None:
        self.session, self.prompt = session, prompt
        self.counters = session.counters

    def root(self, question: str, sampling: Sampling | None = None) -> SolutionPath:
        """The session's root for the whole prompt (``question`` is only what the PRM reads)."""
        return self.session.root(self.prompt, sampling)

    def extend(
        self,
        paths: list[SolutionPath],
        n_each: int,
        to_end: bool = False,
        deadline: Deadline | None = None,
        first_index: int = 0,
        stop_early: Callable[[SolutionPath], bool] | None = None,
    ) -> list[SolutionPath]:
        """As :meth:`PolicySession.extend`."""
        return self.session.extend(paths, n_each, to_end, deadline, first_index, stop_early)

    def submit(
        self, paths: list[SolutionPath], n_each: int, to_end: bool = False, deadline: Deadline | None = None
    ) -> Any:
        """As :meth:`PolicySession.submit`."""
        return self.session.submit(paths, n_each, to_end, deadline)

    def wait_any(self, tickets: list[Any]) -> tuple[Any, list[SolutionPath]]:
        """As :meth:`PolicySession.wait_any`."""
        return self.session.wait_any(tickets)

    def release(self, paths: list[SolutionPath]) -> None:
        """As :meth:`PolicySession.release`."""
        self.session.release(paths)
