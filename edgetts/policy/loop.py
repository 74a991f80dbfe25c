"""One decode loop for every thread that uses the policy: whichever caller waits drives it.

Searches on several threads share one llama.cpp context, and a context is used by one thread at
a time. So callers do not touch it themselves: they hand the loop *work* and wait.

* A :class:`Task` is a function to run with the context to itself (a prompt's prefill, freeing
  sequences). It may answer :data:`RETRY` to be tried again before each later pass (a prompt
  waiting for a template slot).
* A :class:`Run` is a set of sequences to advance until they reach their step boundary (one
  ``extend``). Every pass advances *all* registered runs together, one ``llama_batch`` for the
  union of their live sequences, via the ``advance`` function the policy gives the loop.
  A caller may have several runs under way at once (:meth:`DecodeLoop.submit`, then
  :meth:`DecodeLoop.wait_any`): DVTS's subtrees each advance as soon as their own run is done.

Nobody owns the loop thread: the first caller that finds no driver becomes the driver, runs
passes until its own work is done, then hands over to a caller whose work is not done yet
(leader/follower). A caller alone is its own driver, so one search pays no thread hand-off per
token, and its work is done in the same order as before there was a loop.

When a pass makes no progress (every run waits for KV slots that other searches hold between
rounds) the driver sleeps until new work arrives (a release frees slots) or ``IDLE_WAIT_S``
passes (deadlines are checked each pass).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

IDLE_WAIT_S = 0.05  # a driver with nothing to decode checks deadlines this often
RETRY = object()  # a Task's answer: "not now, try me again before the next pass"


class Work:
    """Something a caller waits for; the driver sets ``done`` (and ``error`` if it failed)."""

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None
        self.result: Any = None


class Task(Work):
    """A function run by the driver between passes, with the context to itself."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__()
        self.fn = fn


class Run(Work):
    """Sequences advanced by every pass until the policy marks the run ``done``."""


class DecodeLoop:
    """Runs tasks and passes over all registered runs for the threads waiting on them.

    ``advance(runs)`` makes one pass over the live runs (the policy: deadlines, slots, one
    batch) and says whether anything happened; it marks runs done, or sets their ``error``.
    """

    def __init__(self, advance: Callable[[list[Run]], bool]) -> None:
        self._advance = advance
        self._cond = threading.Condition()
        self._inbox: list[Work] = []  # submitted, not yet seen by the driver
        self._driving = False
        # Only the driver reads or writes these:
        self._runs: list[Run] = []  # registered, not done, in arrival order (first come first served)
        self._deferred: list[Task] = []  # tasks that answered RETRY
        self.passes = 0  # passes made (a test's window into the loop)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the driver with the context to itself and return what it returns."""
        return self._wait(Task(fn)).result

    def post(self, fn: Callable[[], Any]) -> None:
        """Have ``fn`` run before the loop's next pass, without waiting for it (freeing
        sequences): now when nobody drives, else by the driver before its next pass."""
        self._submit(Task(fn))
        with self._cond:
            if self._driving:
                return
            self._driving = True
        self._drive_then_hand_over(None)

    def run(self, run: Run) -> None:
        """Register ``run`` and return when a pass has marked it done (raise its error)."""
        self._wait(run)

    def submit(self, run: Run) -> None:
        """Register ``run`` without waiting for it: from the next pass on it advances with the
        others (whoever drives); :meth:`wait_any` collects it."""
        self._submit(run)

    def wait_any(self, runs: Sequence[Run]) -> Run:
        """Return the first of ``runs`` (all submitted) that is done, driving the loop until one
        is when nobody else does; raise its error if it failed."""
        done = next((run for run in runs if run.done), None)
        if done is None:
            done = self._wait_any(runs)
        if done.error is not None:
            raise done.error
        return done

    def _submit(self, work: Work) -> None:
        with self._cond:
            self._inbox.append(work)
            self._cond.notify_all()  # an idle driver picks it up

    def _wait(self, work: Work) -> Work:
        """Submit ``work`` and wait for it, driving the loop whenever nobody is."""
        self._submit(work)
        self._wait_any([work])
        if work.error is not None:
            raise work.error
        return work

    def _wait_any(self, works: Sequence[Work]) -> Work:
        """Wait until one of ``works`` (submitted) is done, driving whenever nobody is."""
        with self._cond:
            while not any(work.done for work in works):
                if not self._driving:
                    self._driving = True
                    break
                self._cond.wait()
        if not any(work.done for work in works):
            self._drive_then_hand_over(works)
        return next(work for work in works if work.done)

    def _drive_then_hand_over(self, works: Sequence[Work] | None) -> None:
        while True:
            try:
                self._drive(works)
            finally:
                with self._cond:
                    self._driving = False
                    self._cond.notify_all()  # a caller whose work is not done takes over
            with self._cond:
                # A post() made while this thread drove found the loop driven and left its task
                # (freeing a finished search's slots) to the driver: take it now, unless another
                # caller drives, rather than leave it for whichever call comes next.
                if not self._inbox or self._driving:
                    return
                self._driving = True
            works = None

    def _drive(self, works: Sequence[Work] | None) -> None:
        """Passes until one of ``works`` is done (None: take the inbox once, for a post)."""
        while True:
            with self._cond:
                new, self._inbox = self._inbox, []
            self._take(new)
            if works is None or any(work.done for work in works):
                # Runs still registered have callers waiting (or collecting them later with
                # wait_any): one of them drives next.
                return
            progressed = self._pass()
            if not progressed and not any(work.done for work in works):
                with self._cond:
                    if not self._inbox:
                        self._cond.wait(IDLE_WAIT_S)

    def _take(self, new: list[Work]) -> None:
        """Register new runs, then run the tasks: deferred ones first, in arrival order."""
        tasks = self._deferred
        self._deferred = []
        for item in new:
            if isinstance(item, Task):
                tasks.append(item)
            else:
                self._runs.append(item)  # type: ignore[arg-type]
        finished = False
        for task in tasks:
            try:
                outcome = task.fn()
            except BaseException as exc:  # the caller raises it
                task.error, outcome = exc, None
            if outcome is RETRY:
                self._deferred.append(task)
                continue
            task.result, task.done, finished = outcome, True, True
        if finished:
            self._notify()

    def _pass(self) -> bool:
        """One pass over the live runs; wake their callers when some are done."""
        if not self._runs:
            return False
        self.passes += 1
        try:
            progressed = self._advance(self._runs)
        except BaseException as exc:  # not one run's fault that advance could tell: all fail
            for run in self._runs:
                run.error, run.done = exc, True
            progressed = True
        if any(run.done for run in self._runs):
            self._runs = [run for run in self._runs if not run.done]
            self._notify()
        return progressed

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()
