"""A dataset run sharded over Ray actors: each actor holds one solver, the driver writes the file.

How a run flows (``edgetts run --ray``):

* The driver has already skipped the problems in the results file and validated the settings.
  It starts ``actors`` Ray actors, each reserving ``threads`` CPUs (and a GPU, or a share of one,
  with ``--gpus-per-actor``). An actor builds its worker
  (a :class:`~edgetts.solver.Solver`: the model loads once per actor, at its first problem) from
  a picklable factory, so the actor runs exactly the code a single-process run does.
* Each actor has one problem in flight; ``ray.wait`` hands back whichever finishes first, the
  driver appends its row to the results file (it alone writes it) and gives that actor the next
  problem. Rows land in completion order; each problem id is written once.
* An answer depends on the problem and the settings only: every search re-seeds each path from
  the run seed and its place in the search tree, and every question starts from a cleared KV
  cache (``LlamaPolicy.root``), so neither the actor nor the order matters.
* An actor that dies (killed, out of memory, its node lost) fails its problem with a
  ``RayActorError``: the problem goes back to the front of the queue for the next free actor, and
  Ray restarts the dead actor (``max_restarts``); it takes work again once it answers a ping
  (calls to an actor being restarted fail at once, and would otherwise use up the attempts of
  whatever problem they carried). No row was written for the
  lost attempt, so nothing is lost or duplicated. A problem that kills ``max_attempts`` actors in
  a row is given up (reported, not written: a rerun retries it). An error the solve itself raises
  (a missing model on a node) stops the run as it would in one process, after killing the
  actors; the rows written stay. (``run``'s worker turns a question too long for the context
  into a row that says so, skipped by name as in one process.)
"""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgetts.distributed import RayUnavailable, actor_env, require_ray

log = logging.getLogger("edgetts")

# An actor that died is restarted this many times; then the run goes on without it.
MAX_RESTARTS = 3
# A problem whose attempt died with its actor this many times is given up (a rerun retries it).
MAX_ATTEMPTS = 3
# How often to ask an actor that Ray is restarting whether it is up again.
PROBE_INTERVAL_S = 0.5
ACTOR_PREFIX = "edgetts-run"  # actor names: edgetts-run-<run id>-<index> (see list_named_actors)


@dataclass
class ShardedRun:
    """What happened: rows written, problems given up, actor deaths survived, seconds."""

    written: int = 0
    given_up: list[str] = field(default_factory=list)
    actor_failures: int = 0
    actors: int = 0
    wall_s: float = 0.0
    # Per row: seconds from sending a problem to having its row, beyond the actor's own time in
    # the call (scheduling, pickling, transfer, the driver's loop): what Ray costs a problem.
    overhead_s: list[float] = field(default_factory=list)

    def overhead_median_ms(self) -> float:
        """The median of :attr:`overhead_s`, in milliseconds (nan when no row came back)."""
        return statistics.median(self.overhead_s) * 1000 if self.overhead_s else float("nan")


_ACTOR_CLASS: Any = None


def _actor_class() -> Any:
    """The Ray actor class, made on first use so that importing this module never imports Ray."""
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        ray = require_ray()

        class ProblemActor:
            """Holds one worker (a loaded solver) and answers one problem at a time."""

            def __init__(self, make_worker: Callable[[], Callable[[Any], dict]]) -> None:
                self._make_worker = make_worker
                self._work: Callable[[Any], dict] | None = None

            def ready(self) -> bool:
                """Answers once the actor is up again after a restart (costs nothing)."""
                return True

            def solve(self, problem: Any) -> tuple[dict, float]:
                """The problem's row, and the seconds this call took inside the actor."""
                start = time.perf_counter()
                if self._work is None:  # the model loads on the first problem, once per actor
                    self._work = self._make_worker()
                return self._work(problem), time.perf_counter() - start

        # max_task_retries=0: a call lost with its actor comes back to the driver, which puts the
        # problem back in the queue for whichever actor is free first (see module docstring).
        _ACTOR_CLASS = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=0)(ProblemActor)
    return _ACTOR_CLASS


def run_sharded(
    problems: Sequence[Any],
    make_worker: Callable[[], Callable[[Any], dict]],
    on_row: Callable[[dict], None],
    *,
    actors: int,
    threads: int,
    gpus: float = 0.0,
    done: set[str] | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> ShardedRun:
    """Solve ``problems`` (objects with an ``id``) on ``actors`` Ray actors; call ``on_row`` in
    this process with each row, once per problem id, in completion order.

    Each actor reserves ``threads`` CPUs and ``gpus`` GPUs (a share of one; 0: none): Ray then
    sets its ``CUDA_VISIBLE_DEVICES``, so a CUDA build of llama.cpp offloads to that GPU alone.

    ``make_worker`` is pickled to every actor and called there once: it returns the function
    from a problem to its row. ``done`` holds ids already written (skipped, and guarded against
    writing twice). Needs a connected Ray (:func:`edgetts.distributed.connect`).
    """
    ray = require_ray()
    from ray.exceptions import (
        ActorUnavailableError,
        NodeDiedError,
        ObjectLostError,
        OutOfMemoryError,
        RayActorError,
        RayTaskError,
        WorkerCrashedError,
    )

    # What losing a worker looks like; anything else a solve raises is the problem's own error.
    lost = (RayActorError, WorkerCrashedError, NodeDiedError, OutOfMemoryError, ObjectLostError)
    start = time.perf_counter()
    written = set(done or ())
    queue = deque(p for p in problems if str(p.id) not in written)
    report = ShardedRun(actors=actors)
    if not queue:
        return report
    actor_cls = _actor_class()
    run_id = uuid.uuid4().hex[:8]
    handles = [
        actor_cls.options(
            name=f"{ACTOR_PREFIX}-{run_id}-{i}",
            num_cpus=threads,
            num_gpus=gpus,
            runtime_env=actor_env() or None,
        ).remote(make_worker)
        for i in range(actors)
    ]
    failures = [0] * actors  # deaths per actor; past MAX_RESTARTS Ray gives it up, and so do we
    attempts: dict[str, int] = {}
    pending: dict[Any, tuple[int, Any, float]] = {}  # ObjectRef -> (actor index, problem, sent at)
    # An actor that died gets no problem until it answers ``ready`` again: while Ray restarts it,
    # calls fail at once (ActorUnavailableError), and those must not count as the problem's
    # attempts. ``probes``: ping ref -> actor index; ``probe_at``: actor index -> when to ping.
    probes: dict[Any, int] = {}
    probe_at: dict[int, float] = {}
    try:
        while queue or pending:
            busy = {index for index, _, _ in pending.values()} | set(probes.values()) | set(probe_at)
            for index in range(actors):
                if queue and index not in busy and failures[index] <= MAX_RESTARTS:
                    problem = queue.popleft()
                    pending[handles[index].solve.remote(problem)] = (index, problem, time.perf_counter())
            now = time.perf_counter()
            for index, at in list(probe_at.items()):
                if at <= now:
                    del probe_at[index]
                    probes[handles[index].ready.remote()] = index
            if not pending and not probes and not probe_at:
                raise RayUnavailable(
                    f"every Ray actor died {MAX_RESTARTS + 1} times; "
                    f"{len(queue)} problems were not answered (rerun to retry them)"
                )
            wait_s = max(0.0, min(probe_at.values()) - now) if probe_at else None
            if not pending and not probes:  # only actors waiting for their next ping
                time.sleep(wait_s or 0.0)
                continue
            ready, _ = ray.wait([*pending, *probes], num_returns=1, timeout=wait_s)
            for ref in ready:
                if ref in probes:
                    index = probes.pop(ref)
                    try:
                        ray.get(ref)
                    except ActorUnavailableError:  # still restarting: ask again shortly
                        probe_at[index] = time.perf_counter() + PROBE_INTERVAL_S
                    except lost:  # out of restarts: the run goes on without it
                        failures[index] = MAX_RESTARTS + 1
                    continue
                index, problem, sent = pending.pop(ref)
                pid = str(problem.id)
                try:
                    row, inside_s = ray.get(ref)
                except RayTaskError as exc:
                    # The solve's own error (as in one process): the cause, not Ray's wrapper.
                    raise _cause(exc) from None
                except lost as exc:
                    failures[index] += 1
                    report.actor_failures += 1
                    if failures[index] <= MAX_RESTARTS:
                        probe_at[index] = time.perf_counter()
                    attempts[pid] = attempts.get(pid, 0) + 1
                    log.warning(
                        "Ray actor %d failed on problem %s (%s); %s",
                        index,
                        pid,
                        type(exc).__name__,
                        "retrying it"
                        if attempts[pid] < max_attempts
                        else f"giving it up after {max_attempts} attempts",
                    )
                    if attempts[pid] < max_attempts:
                        queue.appendleft(problem)
                    else:
                        report.given_up.append(pid)
                    continue
                if pid in written:  # a retried attempt whose first one also came back
                    continue
                report.overhead_s.append(time.perf_counter() - sent - inside_s)
                written.add(pid)
                on_row(row)
                report.written += 1
    finally:
        for handle in handles:  # also on Ctrl-C and errors: free the models on every node
            ray.kill(handle, no_restart=True)
        report.wall_s = time.perf_counter() - start
    log.info(
        "Ray: %d rows in %.1f s on %d actors; overhead per problem beyond the actors' own time: "
        "median %.1f ms",
        report.written,
        report.wall_s,
        actors,
        report.overhead_median_ms(),
    )
    return report


def _cause(exc: Exception) -> BaseException:
    """The exception a remote solve raised, as its own type when Ray can rebuild it."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
