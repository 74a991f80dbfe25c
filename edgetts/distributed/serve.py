"""``edgetts serve --ray``: K replicas of the OpenAI-compatible app behind Ray Serve.

Each replica is a Ray Serve deployment replica that builds the very app ``edgetts serve`` runs
(:func:`edgetts.server.create_app`, through Serve's late-bound ingress) around a solver of its
own: the same routes, errors, API-key check, body limit, queue and 503s. Serve's proxy (on every
node with a replica, at ``--host``/``--port``) routes each request to a replica with few requests
in flight, so the pool answers as many searches at once as it has replicas.

What differs from one server:

* ``/health`` and the queue are a replica's own: a 503 ``queue_full`` means the replica the
  request reached had ``--max-queue`` waiting. Serve lets ``ONGOING_HEADROOM`` more requests than
  the queue holds reach a replica, so that its own check (OpenAI-shaped, with ``Retry-After``)
  answers them rather than a queue of Serve's, and ``/health`` is never stuck behind searches.
* Ray restarts a replica whose process dies; ``check_health`` reports a replica shutting down.
* Stopping (Ctrl-C, SIGTERM) cuts the searches under way short, as one server does: each
  replica waits on a small stop-signal actor and, once it is set, answers with the best it has.
  Serve alone would wait for every search to end, or drop it at ``shutdown_grace_s``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgetts.distributed import RayUnavailable, actor_env, require_ray

if TYPE_CHECKING:
    from edgetts.server import ServerSettings
    from edgetts.solver import Solver

log = logging.getLogger("edgetts")

APP_NAME = "edgetts"
# Requests Serve may hand one replica beyond its running search and --max-queue waiting ones:
# those get the replica's own 503, and /health and /v1/models always find room.
ONGOING_HEADROOM = 8


def build_application(
    make_solver: Callable[[], Solver],
    settings: ServerSettings,
    replicas: int,
    threads: int,
    stop_signal: Any = None,
    gpus: float = 0.0,
) -> Any:
    """The Ray Serve application: ``replicas`` replicas, each reserving ``threads`` CPUs and
    ``gpus`` GPUs (a share of one; 0: none; Ray sets its ``CUDA_VISIBLE_DEVICES``) and holding
    the solver ``make_solver`` builds there (it is pickled to every replica).
    ``stop_signal`` (:func:`make_stop_signal`): once set, the replicas cut their searches short."""
    require_ray()
    from ray import serve

    @serve.ingress()  # late-bound: the app is built per replica, around that replica's solver
    class EdgettsReplica:
        """One replica: a loaded solver and the ``edgetts serve`` app around it."""

        def __init__(
            self, make_solver: Callable[[], Solver], settings: ServerSettings, stop_signal: Any
        ) -> None:
            from edgetts.server import load_solver

            solver = make_solver()
            # as `edgetts serve` starts
            self.prm_state = load_solver(solver, settings.memory_mb)
            self.solver, self.settings, self.stop_signal = solver, settings, stop_signal

        def __serve_build_asgi_app__(self) -> Any:
            from edgetts.server import create_app

            app = create_app(self.solver, self.settings, prm_state=self.prm_state)
            self.state = app.state.edgetts
            if self.stop_signal is not None:
                threading.Thread(target=self._close_when_told, daemon=True).start()
            return app

        def _close_when_told(self) -> None:
            import ray

            try:
                ray.get(self.stop_signal.wait.remote())
            except Exception:  # the signal's actor is gone: so is the driver, and the app with it
                pass
            self.state.engine.begin_shutdown()

        def check_health(self) -> None:
            """Ray Serve's periodic check: a replica shutting down takes no new requests."""
            if getattr(self, "state", None) is not None and self.state.engine.closing:
                raise RuntimeError("this replica is shutting down")

        def __del__(self) -> None:
            if getattr(self, "solver", None) is not None:  # None when __init__ failed
                self.solver.close()

    deployment = serve.deployment(
        EdgettsReplica,
        name="EdgettsReplica",
        num_replicas=replicas,
        ray_actor_options={
            "num_cpus": threads,
            "num_gpus": gpus,
            **({"runtime_env": actor_env()} if actor_env() else {}),
        },
        max_ongoing_requests=settings.max_queue + 1 + ONGOING_HEADROOM,
        graceful_shutdown_timeout_s=settings.shutdown_grace_s,
    )
    return deployment.bind(make_solver, settings, stop_signal)


def make_stop_signal() -> Any:
    """A Ray actor the replicas wait on (``wait``); ``set`` releases them all at once. Serve has
    no call that reaches every replica, and its own stop only waits for the requests."""
    import asyncio

    import ray

    @ray.remote(num_cpus=0)
    class StopSignal:
        def __init__(self) -> None:
            self.stopped = asyncio.Event()

        async def wait(self) -> None:
            await self.stopped.wait()

        async def set(self) -> None:
            self.stopped.set()

    return StopSignal.remote()


def serve_on_ray(
    make_solver: Callable[[], Solver],
    settings: ServerSettings,
    replicas: int,
    threads: int,
    ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    gpus: float = 0.0,
) -> None:
    """Run the app on the connected Ray cluster until Ctrl-C / SIGTERM (or ``stop``), then
    delete it; each replica reserves ``threads`` CPUs and ``gpus`` GPUs. ``ready`` gets the base
    URL once every replica has loaded its models."""
    require_ray()
    import ray
    from ray import serve

    serve.start(http_options={"host": settings.host, "port": settings.port})
    stop_signal = make_stop_signal()
    try:
        serve.run(
            build_application(make_solver, settings, replicas, threads, stop_signal, gpus),
            name=APP_NAME,
            route_prefix="/",
        )
    except RuntimeError as exc:  # a replica's constructor failed (after Serve's retries): say why
        why = _replica_error(serve) or _last_error_line(str(exc))
        serve.delete(APP_NAME)
        raise RayUnavailable(f"the replicas did not start: {why}") from None
    base = f"http://{settings.host}:{settings.port}"
    if ready is not None:
        ready(base)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):  # a timed wait, so the signal handlers run promptly
            pass
    finally:
        # Replicas cut their searches short (best answer so far), Serve waits for those answers
        # (graceful_shutdown_timeout_s at most), then the replicas exit.
        try:
            ray.get(stop_signal.set.remote(), timeout=30)
        except Exception as exc:  # stopping must go on: at worst Serve waits for the searches
            log.warning("could not tell the replicas to stop their searches: %s", exc)
        serve.delete(APP_NAME)


def _replica_error(serve: Any) -> str | None:
    """The replicas' own error, from the deployment's status (Serve's exception only says that
    the deployment failed; its status quotes the constructor's traceback)."""
    try:
        app = serve.status().applications[APP_NAME]
        message = "\n".join(d.message for d in app.deployments.values() if d.message)
    except Exception:  # the status is a courtesy: never hide the failure behind another
        return None
    return _last_error_line(message) if message else None


def _last_error_line(text: str) -> str:
    """The last ``SomeError: message`` line of a report that quotes a remote traceback."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line or "Exception:" in line]
    return errors[-1] if errors else (lines[-1] if lines else "unknown error")
