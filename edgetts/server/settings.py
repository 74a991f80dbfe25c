"""What the server allows and assumes (``edgetts serve`` options)."""

from __future__ import annotations

from dataclasses import dataclass

from edgetts.policy.config import PolicyConfig
from edgetts.search.base import DEFAULT_N

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerSettings:
    """What the server allows and assumes; the CLI fills it from ``edgetts serve`` options."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # when set, /v1/* needs ``Authorization: Bearer <key>``
    model_id: str = "edgetts"  # the name /v1/models lists and requests must use
    model_aliases: tuple[str, ...] = ()  # other accepted names (file name, path)
    max_tokens: int = PolicyConfig.max_tokens  # per solution; the policy's context is sized for it
    max_n: int = 16
    # Searches run at once, sharing the policy's one decode loop (PolicyConfig.max_searches);
    # 1: one at a time (the serial engine). 4 because on 2 cores 4 clients got 1.9x the answers
    # per minute of one at a time and a lower p95 (docs/scale-out.md), for ~85 MB more memory.
    concurrent: int = 4
    max_queue: int = 4  # requests waiting behind the running ones
    max_body_bytes: int = 256 * 1024
    default_strategy: str | None = None  # None: "auto"
    default_n: int = DEFAULT_N
    default_deadline_s: float | None = None
    memory_mb: float | None = None  # the server's budget: every request's plan, a cap on its own
    progress_interval_s: float = 1.0  # streaming: one progress chunk this often while searching
    shutdown_grace_s: float = 10.0  # how long shutdown waits for responses before dropping them
    # False: any model name a client sends means the loaded policy (clients come configured
    # with names of their own); True: only model_id and its aliases, 404 otherwise.
    strict_model: bool = False
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API
    # Run model-written code (task "code", mode "pot" / "cot+pot") in the solver's sandbox.
    # Off by default: such requests get a 400 naming --allow-exec.
    allow_exec: bool = False
