"""Symbolic answer comparison (math-verify on sympy) in a child process with a hard time limit.

math-verify hands answers to sympy, and sympy evaluates what it is given: ``(10^{8})!`` or
``2^{2^{30}}`` is computed for minutes in C code that holds the GIL and never looks at signals.
math-verify's own timeout is a SIGALRM (the main thread only, and not inside such a call), so a
model's answer, or a server client's text that a model repeats, froze the whole process: the
server stopped answering even its health check and ignored SIGTERM. Here the comparison runs in
a child process (this module as ``__main__``: lines of JSON in, ``true``/``false`` out),
killed past :data:`TIMEOUT_S`, when the answers count as different (math-verify's own answer to
a timeout). The child starts on the first comparison that needs it and serves every later one;
one comparison runs at a time (a lock), and the numbers that most answers are never get here
(:func:`edgetts.grading.answers_equal` compares them itself).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import selectors
import subprocess
import sys
import threading
from functools import lru_cache
from pathlib import Path

log = logging.getLogger("edgetts")

TIMEOUT_S = 5.0  # per comparison, as math-verify's own default
START_TIMEOUT_S = 120.0  # the child's imports (sympy) on a busy machine
READY = "ready"
MEMORY_LIMIT_BYTES = 4 << 30  # the child's address space
# What the child runs: this module as __main__, with the working directory off its path (a
# sympy.py there would run) and the folder that holds this edgetts at its end (a source checkout
# run without an install finds it there; an installed one finds it in site-packages first).
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
CHILD_MAIN = (
    "import sys, runpy; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    f"sys.path.append({PACKAGE_ROOT!r}); runpy.run_module('edgetts.symbolic', run_name='__main__')"
)


def compare(a: str, b: str) -> bool:
    """In the child: whether math-verify finds the two answers equal (unparsable: not equal)."""
    from math_verify import parse, verify

    pa, pb = parse(f"\\boxed{{{a}}}", parsing_timeout=None), parse(f"\\boxed{{{b}}}", parsing_timeout=None)
    if not pa or not pb:
        return False
    try:
        return bool(verify(pa, pb, timeout_seconds=None))
    except Exception:  # math-verify raises on exotic expressions; unequal is the safe answer
        return False


class _Child:
    """The child process and its pipes."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            # not `-m`, which puts the working directory first on the child's path: a sympy.py
            # there (a server started in /tmp) would run in the child
            [sys.executable, "-c", CHILD_MAIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            # one thread each: thread pools' stacks would count against the memory limit
            env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
            start_new_session=True,  # a Ctrl-C at the terminal is the parent's to handle
        )
        if self._read_line(START_TIMEOUT_S) != READY:
            self.kill()
            raise OSError("the answer-comparison process did not start")

    def ask(self, a: str, b: str) -> bool | None:
        """The child's verdict, or None when it took longer than TIMEOUT_S (or died)."""
        try:
            self.process.stdin.write(json.dumps([a, b]) + "\n")  # type: ignore[union-attr]
            self.process.stdin.flush()  # type: ignore[union-attr]
        except OSError:
            return None
        line = self._read_line(TIMEOUT_S)
        return None if line is None else line == "true"

    def _read_line(self, timeout_s: float) -> str | None:
        stdout = self.process.stdout
        with selectors.DefaultSelector() as selector:  # (select.select fails past fd 1023)
            selector.register(stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
            if not selector.select(timeout_s):
                return None
        line = stdout.readline()  # type: ignore[union-attr]
        return line.strip() if line else None

    def kill(self) -> None:
        """End the child (if it still runs) and close its pipes."""
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


class _Starter:
    """Starts children from one daemon thread that lives as long as the process.

    Linux's parent-death signal follows the *thread* that started the child: started from
    whichever worker thread compared first (the server's, a run's --concurrent pool), the child
    died when that thread ended, and a comparison under way came back unequal, cached so. (A
    ThreadPoolExecutor is no such thread: interpreter shutdown stops it while daemon threads may
    still compare, and a forked copy of the process waits on it for ever.)"""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def start_child(self) -> _Child:
        """A new child, started on the starter's thread; OSError if it does not start."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="edgetts-symbolic", daemon=True)
            self._thread.start()
        answer: queue.Queue = queue.Queue(maxsize=1)
        self._jobs.put(answer)
        try:
            started, child = answer.get(timeout=START_TIMEOUT_S + 30)
        except queue.Empty:
            raise OSError("the answer-comparison process did not start in time") from None
        if not started:
            raise child
        return child

    def _run(self) -> None:
        while True:
            answer = self._jobs.get()
            try:
                answer.put((True, _Child()))
            except Exception as exc:  # noqa: BLE001 - raised on the asking thread
                answer.put((False, exc if isinstance(exc, OSError) else OSError(str(exc))))


_lock = threading.Lock()
_child: _Child | None = None
_starter = _Starter()


def _after_fork_in_child() -> None:
    """A forked copy of the process starts its own child, from a thread of its own (it has no
    copy of the starter's thread, and the parent's child is not its child to ask or kill)."""
    global _lock, _child, _starter
    _lock, _child, _starter = threading.Lock(), None, _Starter()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@lru_cache(maxsize=4096)
def symbolic_equal(a: str, b: str) -> bool:
    """Whether math-verify finds ``a`` and ``b`` equal, within TIMEOUT_S (else: not equal)."""
    global _child
    with _lock:
        if _child is not None and _child.process.poll() is not None:  # it died: its pipes go too
            _child.kill()
            _child = None
        if _child is None:
            try:
                _child = _starter.start_child()
            except OSError as exc:  # unequal, as for a timeout, rather than a failed vote
                log.warning("answers compared as different: %s", exc)
                return False
        verdict = _child.ask(a, b)
        if verdict is None:  # too long (or the child died on it): killed, a new one serves next
            _child.kill()
            _child = None
            return False
        return verdict


@atexit.register
def _stop_child() -> None:
    if _child is not None:
        _child.kill()


def _serve() -> None:
    """The child: one comparison per line of stdin, its verdict on its own copy of stdout.

    Whatever the libraries print goes to stderr (discarded): a stray line on the verdicts'
    pipe would shift every later verdict by one."""
    verdicts = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    compare("1", "1")  # the imports, before saying ready
    print(READY, file=verdicts, flush=True)
    for line in sys.stdin:
        a, b = json.loads(line)
        print("true" if compare(a, b) else "false", file=verdicts, flush=True)


def _die_with_parent() -> None:
    """Linux: the child is killed when its parent dies, even by SIGKILL (a Ray actor killed
    mid-comparison left it computing)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the parent's kill on exit and EOF on stdin end it


if __name__ == "__main__":
    import resource

    _die_with_parent()
    # a huge number's digits fail here (MemoryError: not equal), not in the machine's memory
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    _serve()
