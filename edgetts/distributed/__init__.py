"""Scale out on Ray: dataset runs sharded over actors (:mod:`.run`), the server behind Ray Serve
(:mod:`.serve`).

Ray is an optional extra (``pip install "edgetts[ray]"``). Nothing here imports it at module
import time, so ``import edgetts`` and every command without ``--ray`` never load it; the first
``--ray`` call does, through :func:`require_ray`, which turns its absence into one clear line.
"""

from __future__ import annotations

import logging
import os
import socket
from types import ModuleType

INSTALL_HINT = 'pip install "edgetts[ray]"; from a checkout: pip install -e ".[ray]"'
LOCAL = "local"  # --ray local: always a new Ray instance on this machine
# What a bare --ray means: join the cluster `ray start` made on this machine, else start one
# (Ray's own rule for ray.init() without an address).
DETECT = ""
CONNECT_TIMEOUT_S = 5.0

log = logging.getLogger("edgetts")


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; the message says what to do."""


def require_ray() -> ModuleType:
    """The ``ray`` module, or RayUnavailable naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(f"--ray needs Ray, which is not installed: {INSTALL_HINT} ({exc})") from None
    return ray


def connect(address: str) -> ModuleType:
    """Join the Ray cluster at ``address`` (see :data:`LOCAL`, :data:`DETECT`), or keep the
    connection this process already has (a test, a notebook); return the ``ray`` module."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    _check_reachable(address)
    kwargs: dict = {"include_dashboard": False} if address in (LOCAL, DETECT) else {}
    try:
        ray.init(address=address or None, log_to_driver=True, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "a local Ray instance" if address in (LOCAL, DETECT) else f"the Ray cluster at {address}"
        raise RayUnavailable(f"cannot start or reach {where}: {exc}") from None
    resources = ray.cluster_resources()
    log.info("Ray: %d nodes, %g CPUs", len(ray.nodes()), resources.get("CPU", 0))
    return ray


def _check_reachable(address: str) -> None:
    """A HOST:PORT that takes no connection fails now: ray.init would retry it for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # local, auto, ray://...: Ray's own rules
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayUnavailable(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} (is `ray start --head` "
            "running there, and this port open?)"
        ) from None


def node_resources() -> list[tuple[int, float]]:
    """(CPUs, GPUs) of each live node of the connected cluster."""
    import ray

    return [
        (int(node["Resources"].get("CPU", 0)), float(node["Resources"].get("GPU", 0)))
        for node in ray.nodes()
        if node.get("Alive")
    ]


def workers_that_fit(threads: int, per_node: list[tuple[int, float]], gpus: float = 0.0) -> int:
    """How many actors (or replicas) of ``threads`` CPUs and ``gpus`` GPUs (a share: 0.5 puts two
    on one GPU; 0: none) the nodes hold. Each runs on one node, so 2 nodes of 3 CPUs hold two of
    2 CPUs, not three (Ray would never place the third, and a run waiting on it waited for ever)."""
    fit = 0
    for cpus, node_gpus in per_node:
        on_node = cpus // threads
        if 0 < gpus < 1:  # Ray keeps a share within one GPU: 2 GPUs hold four of 0.4, not five
            on_node = min(on_node, int(node_gpus) * int(1 / gpus + 1e-9))  # (1 / 0.1 is 9.999...)
        elif gpus >= 1:
            on_node = min(on_node, int(node_gpus // gpus))
        fit += on_node
    return fit


def describe_nodes(per_node: list[tuple[int, float]]) -> str:
    """The nodes' resources for a message: ``4 CPUs + 1 GPU, 2 CPUs``."""
    return ", ".join(
        f"{cpus} CPUs" + (f" + {gpus:g} GPU" + "s" * (gpus != 1) if gpus else "") for cpus, gpus in per_node
    )


def plan_workers(wanted: int | None, threads: int, gpus: float, unit: str) -> int:
    """How many Ray workers (``unit``: "actor" for ``run``, "replica" for ``serve``) of
    ``threads`` CPUs and ``gpus`` GPUs to start on the connected cluster: ``wanted`` if it fits
    them, by default as many as it fits; ValueError when not even one does."""
    per_node = node_resources()
    fit = workers_that_fit(threads, per_node, gpus)
    each = f"--threads {threads}" + (f" and --gpus-per-{unit} {gpus:g}" if gpus else "")
    nodes = describe_nodes(per_node)
    if fit < 1:
        raise ValueError(f"no node of the Ray cluster has room for one {unit} of {each} ({nodes})")
    if wanted is None:
        return fit
    if wanted > fit:
        raise ValueError(
            f"--{unit}s {wanted} with {each}: the Ray cluster's nodes ({nodes}) hold at most {fit} "
            f"such {unit}s, each on one node"
        )
    return wanted


# Variables of this process that actors and replicas on other nodes must see too: offline mode
# (`edgetts --offline` sets it here only). EDGETTS_HOME is not one: a path is a node's own.
FORWARDED_ENV = ("EDGETTS_OFFLINE",)


def actor_env() -> dict[str, str]:
    """A Ray ``runtime_env`` carrying :data:`FORWARDED_ENV` to every actor (empty: none set)."""
    env = {key: os.environ[key] for key in FORWARDED_ENV if os.environ.get(key)}
    return {"env_vars": env} if env else {}
