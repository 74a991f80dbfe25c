"""The embeddable entry point: a Solver keeps the policy (and PRM) loaded between questions."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from edgetts.policy import LlamaPolicy, PolicyConfig
from edgetts.search import NEEDS_SCORER, STRATEGIES, run_search
from edgetts.search.base import SearchConfig, SearchResult, StepScorer

GREEDY = "greedy"


@dataclass
class SolveOptions:
    """Per-question choices: the strategy and its budget, and how to sample."""

    strategy: str = "majority"
    n: int = 4
    beam_width: int = 4
    max_steps: int = 40
    agg: str = "last"
    deadline_s: float | None = None
    temperature: float = 0.8
    top_p: float = 1.0
    seed: int = 0
    weighted_pick: bool = False

    def search_config(self) -> SearchConfig:
        return SearchConfig(
            n=self.n,
            beam_width=self.beam_width,
            max_steps=self.max_steps,
            agg=self.agg,
            deadline_s=self.deadline_s,
            weighted_pick=self.weighted_pick,
        )

    def validate(self) -> None:
        """Raise ValueError on settings no strategy can run with, before any model loads."""
        if self.strategy != GREEDY and self.strategy not in STRATEGIES:
            choices = sorted([GREEDY, *STRATEGIES])
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {choices}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.strategy != GREEDY:
            self.search_config().validate(self.strategy)


@dataclass
class Solver:
    """Answers questions with one loaded policy and, when a strategy needs it, one PRM.

    >>> solver = Solver()                                     # default models
    >>> result = solver.solve("What is 6 * 7?", SolveOptions(strategy="majority", n=4))
    >>> result.answer
    '42'
    """

    policy_config: PolicyConfig = field(default_factory=PolicyConfig)
    prm_path: str | None = None  # None = the shipped PRM
    prm_threads: int | None = None
    _policy: LlamaPolicy | None = field(default=None, init=False, repr=False)
    _scorer: StepScorer | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def policy(self) -> LlamaPolicy:
        if self._policy is None:
            self._policy = LlamaPolicy(self.policy_config)
        return self._policy

    @property
    def scorer(self) -> StepScorer:
        if self._scorer is None:
            from edgetts.prm import PRMScorer  # onnxruntime loads only when a PRM is needed

            self._scorer = PRMScorer.load(self.prm_path, threads=self.prm_threads)
        return self._scorer

    def solve(self, question: str, options: SolveOptions | None = None) -> SearchResult:
        """Answer one question; safe to call from several threads (questions run one at a time)."""
        options = options or SolveOptions()
        options.validate()
        strategy, config = options.strategy, options.search_config()
        sampling = {"temperature": options.temperature, "top_p": options.top_p, "seed": options.seed}
        if strategy == GREEDY:
            strategy, config = "majority", replace(config, n=1)
            sampling["temperature"] = 0.0
        with self._lock:
            policy = self.policy
            for key, value in sampling.items():
                setattr(policy.config, key, value)
            scorer = self.scorer if strategy in NEEDS_SCORER else None
            result = run_search(strategy, question, policy, scorer, config)
        if options.strategy == GREEDY:
            result.strategy = GREEDY
        return result

    def close(self) -> None:
        if self._policy is not None:
            self._policy.close()
            self._policy = None


def solve(question: str, model: str | None = None, **options) -> SearchResult:
    """One-shot convenience: load the models, answer ``question``, return the SearchResult.

    ``options`` are :class:`SolveOptions` fields (strategy, n, beam_width, seed, ...). For more
    than one question keep a :class:`Solver` instead, so the model loads once.
    """
    solver = Solver(PolicyConfig(model=model))
    try:
        return solver.solve(question, SolveOptions(**options))
    finally:
        solver.close()
