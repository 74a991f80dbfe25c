"""The real ``edgetts serve`` for slow tests: started on a free loopback port, awaited on /health."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

# One llama.cpp thread unless the caller set more: tests share the machine's few cores.
ENV = {**os.environ, "EDGETTS_THREADS": os.environ.get("EDGETTS_THREADS", "1")}


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(*args: str, env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen]:
    """``edgetts serve ARGS`` on a free port, as a user starts it: (base url, process). The
    process's stdout and stderr are one text pipe; the caller ends the process."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetts.cli", "serve", "--port", str(port), *args],
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return f"http://127.0.0.1:{port}", proc


def wait_until_healthy(base: str, proc: subprocess.Popen, timeout_s: float = 300.0) -> None:
    """Poll /health until it answers 200; fail with the server's output if it exits first or
    ``timeout_s`` passes (loading the model takes seconds, a Ray cluster's start longer)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"edgetts serve exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"edgetts serve did not answer /health within {timeout_s:g} s")
