"""The search queue: requests wait in a bounded queue and run on worker threads.

``concurrent`` searches run at once, one per worker thread; they share the solver's policy and
its one decode loop (every live path of every running search advances in the same llama.cpp
batch, see :mod:`edgetts.policy.loop`), each with its own deadline, cancel and counters. With
``concurrent=1`` searches run one at a time, as the serial engine did. Beyond the running ones,
``max_queue`` requests wait; more get 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from edgetts.policy.config import GeneratorCounters
from edgetts.prompts import Prompt
from edgetts.search.base import SearchResult
from edgetts.server.errors import ApiError
from edgetts.server.responses import code_as_search_result
from edgetts.solver import SolveOptions, Solver

# A request is admitted only if it can expect this share of its deadline for the search itself;
# otherwise it would mostly wait and then answer from a search cut to almost nothing.
MIN_SEARCH_SHARE = 0.5
# What a search is expected to take before any has finished (Retry-After), without a default
# deadline to go by.
EXPECTED_SEARCH_S = 5.0


@dataclass(eq=False)
class Job:
    """One request's search: what to run, its cancel event, and when it queued and started."""

    question: Prompt  # a conversation or raw prompt (math), or the text of a code task
    options: SolveOptions
    n_choices: int = 1
    deprecation: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future | None = None
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    finished_at: float | None = None
    task: str = "math"
    counters: GeneratorCounters = field(default_factory=GeneratorCounters)  # its search's share
    prompt_tokens: int | None = None  # the request's prompt as the policy writes it, when counted
    where: str = "edgetts."  # where the request's search fields are, for an error's param
    sent: frozenset[str] | set[str] = frozenset()  # the search fields the request set

    def abandon(self) -> None:
        """The client is gone: never start, or stop the search at its next check."""
        self.cancel.set()
        if self.future is not None:
            self.future.cancel()  # succeeds only while still queued


class Engine:
    """Runs up to ``concurrent`` searches at once on worker threads, behind a bounded queue."""

    def __init__(
        self, solver: Solver, max_queue: int, expected_s: float = EXPECTED_SEARCH_S, concurrent: int = 1
    ) -> None:
        if concurrent < 1:
            raise ValueError(f"concurrent must be at least 1, got {concurrent}")
        self.solver = solver
        self.max_queue = max_queue
        self.concurrent = concurrent
        self.executor = ThreadPoolExecutor(max_workers=concurrent, thread_name_prefix="edgetts-search")
        self.jobs: list[Job] = []  # submitted and not done, in queue order
        self.closing = False
        self.served = 0
        self.failed = 0
        self.cancelled = 0
        self.rejected = 0
        self.avg_s = expected_s  # moving average of search time, for Retry-After
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def submit(self, job: Job) -> None:
        """Queue ``job`` or raise 503: shutting down, queue full, or no chance to start in time.

        A request's ``deadline_s`` counts from its arrival (the client waits for the queue too),
        so one that could not start with ``MIN_SEARCH_SHARE`` of it left is refused at once.
        """
        with self._lock:
            if self.closing:
                raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
            wait = self._expected_wait()
            retry = {"Retry-After": str(max(1, math.ceil(wait)))}
            if len(self.jobs) >= self.concurrent + self.max_queue:  # running + waiting
                self.rejected += 1
                raise ApiError(
                    503,
                    f"the server is busy ({len(self.jobs)} requests ahead); "
                    f"retry in {retry['Retry-After']} s",
                    type="server_error",
                    code="queue_full",
                    headers=retry,
                )
            deadline = job.options.deadline_s
            if deadline is not None and wait > deadline * (1 - MIN_SEARCH_SHARE):
                self.rejected += 1
                raise ApiError(
                    503,
                    f"the requests ahead need about {wait:.1f} s, too much of deadline_s={deadline:g}",
                    type="server_error",
                    code="deadline_unreachable",
                    headers=retry,
                )
            self.jobs.append(job)
        job.future = self.executor.submit(self._run, job)
        job.future.add_done_callback(lambda _: self._done(job))

    def _expected_wait(self) -> float:
        """Seconds until a new job would start: each job ahead takes its deadline or the average,
        shared among the ``concurrent`` workers; none while a worker is free."""
        if len(self.jobs) < self.concurrent:
            return 0.0
        now, wait = time.perf_counter(), 0.0
        for job in self.jobs:
            deadline = job.options.deadline_s
            need = self.avg_s if deadline is None else min(deadline, self.avg_s)
            if job.started_at is not None:  # running (its deadline now counts from the start)
                need = (deadline if deadline is not None else need) - (now - job.started_at)
            wait += max(need, 0.0)
        return wait / self.concurrent

    def _run(self, job: Job) -> SearchResult | None:
        """On the worker thread. ``None`` means the job was cancelled before it started."""
        if job.cancel.is_set():
            return None
        job.started_at = time.perf_counter()
        if job.options.deadline_s is not None:  # the time spent queued counts against it
            left = job.queued_at + job.options.deadline_s - job.started_at
            if left <= 0:
                raise ApiError(
                    503,
                    f"deadline_s={job.options.deadline_s:g} passed while queued",
                    type="server_error",
                    code="deadline_exceeded",
                )
            job.options = dataclasses.replace(job.options, deadline_s=left)
        try:
            if job.task == "code":
                from edgetts.code import CodeTask

                task = CodeTask.from_prompt(str(job.question))
                code = self.solver.solve_code(task, job.options, cancel=job.cancel, counters=job.counters)
                return code_as_search_result(code)
            return self.solver.solve(job.question, job.options, cancel=job.cancel, counters=job.counters)
        finally:
            job.finished_at = time.perf_counter()

    def _done(self, job: Job) -> None:
        with self._lock:
            self.jobs.remove(job)
            future = job.future
            if future is None or future.cancelled() or job.cancel.is_set() and job.started_at is None:
                self.cancelled += 1
            elif future.exception() is not None:
                self.failed += 1
            elif job.cancel.is_set():
                self.cancelled += 1  # stopped mid-search: an answer so far, but not what was asked
            else:
                self.served += 1
            if job.finished_at is not None and job.started_at is not None:
                self.avg_s = 0.8 * self.avg_s + 0.2 * (job.finished_at - job.started_at)

    def position(self, job: Job) -> int:
        """0 while searching (or about to), else how many requests are ahead of it, counting
        one running search (as with one worker: the place in line)."""
        with self._lock:
            return max(0, self.jobs.index(job) - self.concurrent + 1) if job in self.jobs else 0

    def tokens_generated(self, job: Job) -> int:
        """Tokens sampled for ``job`` so far (0 while it waits)."""
        return job.counters.tokens_sampled

    def begin_shutdown(self) -> None:
        """Refuse new work and cut every search short; safe to call from a signal handler."""
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self._cancel_all)  # signal handlers must not take locks
        else:
            self._cancel_all()

    def _cancel_all(self) -> None:
        with self._lock:
            self.closing = True
            jobs = list(self.jobs)
        for job in jobs:
            job.cancel.set()

    def close(self) -> None:
        self._cancel_all()
        self.executor.shutdown(wait=True)
