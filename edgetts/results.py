"""Results files: one JSON line per problem (:func:`problem_row`), appended and flushed as each
problem finishes.

Re-running with the same ``--out`` skips the problems already in the file, so an interrupted run
(Ctrl-C, a crash, a stopped machine) resumes where it stopped and never loses a finished line.

What a results file is trusted with, and what it refuses:

* Every line is a JSON object that starts with its id (``"id"``, or the ``id_field`` a tool's
  rows are keyed by) and records the ``settings`` of the run that made it. A resume with other
  settings (another strategy, N, seed, model ...) is refused with what differs, since mixing
  two runs in one file would report neither's accuracy.
* A last line that is not JSON and has no newline is a torn write: the process died while
  writing it. It is dropped on resume, but only if it is a torn *results* line (it starts as
  this module writes lines). Anything else (a notes file, another program's output) is refused,
  never cut: the file is the user's.
* The file must be writable before the run starts, so no model loads for a run that cannot keep
  its answers.
* With ``lock``, one run at a time holds the file (``<file>.lock``, released by :meth:`close`):
  a second run on it is refused, where it would read the same finished problems, solve the same
  remaining ones and append them twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetts.grading import answers_equal

if TYPE_CHECKING:
    from edgetts.data import Problem
    from edgetts.search.base import SearchResult
    from edgetts.solver import SolveOptions, Solver


log = logging.getLogger("edgetts")


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


# An ``unrecorded`` value for a setting whose value in older files cannot be known (which data
# file, which verifier): such a file resumes whatever it is now; files made since are checked.
UNKNOWN: Any = _Unknown()


def _shown(settings: Mapping[str, Any], key: str) -> str:
    # a file made before a setting was recorded (and with no `unrecorded` value for it) cannot
    # say what it was: say so rather than print None
    return repr(settings[key]) if key in settings else "not recorded"


class ResultsError(ValueError):
    """The output file cannot hold this run's results; the message says why and what to do."""


class ResultsFile:
    """Append-only JSONL results keyed by problem id, all made with one run's settings."""

    def __init__(
        self,
        path: str | Path,
        settings: dict[str, Any] | None = None,
        unrecorded: Mapping[str, Any] | None = None,
        id_field: str = "id",
        lock: bool = False,
    ) -> None:
        """``unrecorded``: for a setting added after a file was made, the value that does what
        runs did before it existed (a file without it resumes only with that value).
        ``id_field``: the field that keys each row and starts its line (``done`` holds its
        values); benchmark tools key theirs by ``"problem_id"`` or ``"task_id"``. ``lock``: hold
        the file for this run until :meth:`close` (see the module doc)."""
        self.path = Path(path)
        # What this run made, removed again if it keeps nothing (a refusal, a run that failed
        # before its first row): an empty results file and its lock are no one's.
        self._made = [p for p in (self.path, self._lock_path()) if not p.exists()]
        self._file_lock = self._lock() if lock else None
        self.settings = settings
        self.unrecorded = dict(unrecorded or {})
        self.id_field = id_field
        # how every line this class writes begins (see append): a torn line is recognised by it
        self.record_start = "{" + json.dumps(id_field) + ": "
        try:
            self.records: list[dict] = self._read()
            self.done: set[str] = {str(r[id_field]) for r in self.records}
            if settings is not None:
                self._check_settings(settings)
            self._check_writable()
        except BaseException:
            self._release(refused=True)  # the file is free again for a run that may use it
            raise

    def _lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _lock(self) -> Any:
        from filelock import FileLock, Timeout

        lock_path = self._lock_path()
        file_lock = FileLock(str(lock_path), timeout=0)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # made first, so that a folder we may not write is said as such: filelock reports
            # any failure to take the lock as held by another
            os.close(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644))
            file_lock.acquire()
        except Timeout:
            raise ResultsError(
                f"{self.path} is being written by another run (it holds {lock_path}): wait for it to "
                "end, or choose another --out"
            ) from None
        except OSError as exc:
            raise ResultsError(f"cannot write results to {self.path}: {exc.strerror or exc}") from None
        return file_lock

    def close(self) -> None:
        """Let another run have the file (a no-op without ``lock``); remove the file and its
        lock again where this run made them and wrote nothing."""
        self._release(refused=False)

    def _release(self, refused: bool) -> None:
        if self.path in self._made and self.path.is_file() and self.path.stat().st_size == 0:
            self.path.unlink(missing_ok=True)
        # a refused run's lock too: every run on that file is refused alike
        drop_lock = self._lock_path() in self._made and (refused or not self.path.exists())
        if self._file_lock is not None:
            if drop_lock:
                self._lock_path().unlink(missing_ok=True)  # before release: no one waits (timeout 0)
            self._file_lock.release()
            self._file_lock = None
        self._made = []

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read(self) -> list[dict]:
        self._ends_mid_line = False
        if not self.path.exists():
            return []
        if self.path.is_dir():
            raise ResultsError(f"output {self.path} is a directory, not a JSONL file")
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ResultsError(f"cannot read output file {self.path}: {exc}") from exc
        # at "\n" only: a model's text may hold U+2028 and the like raw (ensure_ascii=False)
        parts = text.split("\n")
        lines = [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
        # A whole last record without its newline (an editor saved it so): the next row must
        # not be glued onto it.
        self._ends_mid_line = bool(parts[-1])
        records = []
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                last = line_no == len(lines) and not line.endswith("\n")
                if last and line.startswith(self.record_start):  # torn
                    log.warning("%s: dropped its torn last line (a run died while writing it)", self.path)
                    self._truncate_last_line(len(line.encode()))
                    self._ends_mid_line = False
                    break
                raise ResultsError(
                    f"{self.path}:{line_no} is not JSON: the output must be a results JSONL file "
                    "(choose another --out; nothing was changed)"
                ) from None
            if not isinstance(record, dict) or self.id_field not in record:
                raise ResultsError(
                    f"{self.path}:{line_no} has no {self.id_field!r}: not an edgetts results file "
                    "(choose another --out; nothing was changed)"
                )
            records.append(record)
        return records

    def _check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse to add this run to a file made with other settings, naming what differs."""
        recorded = next((r["settings"] for r in self.records if isinstance(r.get("settings"), dict)), None)
        if recorded is None:
            return  # a new file, or one from before settings were recorded
        recorded = {**{k: v for k, v in self.unrecorded.items() if k in settings}, **recorded}
        differ = [
            f"{key} was {_shown(recorded, key)}, now {_shown(settings, key)}"
            for key in sorted(set(recorded) | set(settings))
            if recorded.get(key) != settings.get(key) and recorded.get(key) is not UNKNOWN
        ]
        if differ:
            raise ResultsError(
                f"{self.path} holds {len(self.records)} results of a run with other settings ("
                + "; ".join(differ)
                + "): choose another --out to keep both, or rerun with the same settings to resume"
            )

    def _check_writable(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise ResultsError(f"cannot write results to {self.path}: {exc.strerror or exc}") from None

    def _truncate_last_line(self, n_bytes: int) -> None:
        with self.path.open("rb+") as f:
            f.truncate(self.path.stat().st_size - n_bytes)

    def append(self, record: dict) -> None:
        """Write one record (with this run's settings) and make sure it reached the disk."""
        key = self.id_field
        if key not in record:
            raise ValueError(f"a results record needs {key!r}")
        record = {key: record[key], **record}  # its id first: a torn line is recognisable
        if self.settings is not None:
            record["settings"] = self.settings
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write("\n" + line if self._ends_mid_line else line)
            f.flush()
            os.fsync(f.fileno())
        self._ends_mid_line = False
        self.records.append(record)
        self.done.add(str(record[key]))

    def of(self, ids: Iterable[str]) -> list[dict]:
        """The records of these ids (as strings, like ``done``), in file order."""
        wanted = set(ids)
        return [r for r in self.records if str(r[self.id_field]) in wanted]

    def accuracy(self, ids: Iterable[str] | None = None) -> tuple[int, int]:
        """(correct, graded) over the records that have a gold answer (only ``ids``' if given)."""
        records = self.records if ids is None else self.of(ids)
        graded = [r for r in records if r.get("correct") is not None]
        return sum(bool(r["correct"]) for r in graded), len(graded)


def check_same_problems(results: ResultsFile, expected: Mapping[str, Mapping[str, Any]], data: Path) -> None:
    """Refuse to resume a file whose rows answered other problems under the same ids: a data
    file of the same name from elsewhere, or one edited since. ``expected`` maps each problem id
    to the fields its row records of it (question and gold answer, a code prompt's
    fingerprint); a row without such a field (made before it was recorded) is not checked."""
    for record in results.records:
        for field, now in expected.get(str(record[results.id_field]), {}).items():
            if field in record and record[field] != now:
                raise ResultsError(
                    f"{results.path} answered problem {record[results.id_field]!r} with another "
                    f"{field} than {data} holds ({_cut(record[field])} there, {_cut(now)} here): it "
                    "was made from other data; choose another --out"
                )


def fingerprint(text: str) -> str:
    """A short hash of a problem's text, for rows that do not keep the text itself."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cut(text: object, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def problem_row(
    problem: Problem, result: SearchResult, options: SolveOptions, model: str | None, seconds: float
) -> dict:
    """One problem's results row: its answer graded against the gold one, every candidate (each
    graded too), the N and seed the search used, and what it cost."""
    correct = None if problem.answer is None else answers_equal(result.answer, problem.answer)
    candidates = []
    for cand in result.candidates:
        item = asdict(cand)
        if problem.answer is not None:
            item["correct"] = answers_equal(cand.answer, problem.answer)
        candidates.append(item)
    return {
        "id": problem.id,
        "question": problem.question,
        "gold": problem.answer,
        "answer": result.answer,
        "correct": correct,
        "strategy": result.strategy,
        "n": options.n_paths,
        "seed": options.seed,
        "model": model,
        "votes": result.votes,
        "cut_short": result.cut_short,
        "provisional": result.provisional,
        "chosen": asdict(result.chosen) if result.chosen else None,
        "candidates": candidates,
        "counters": result.counters,
        "seconds": round(seconds, 3),
    }


def solve_row(
    solver: Solver,
    options: SolveOptions,
    problem: Problem,
    model: str | None,
    cancel: threading.Event | None = None,
) -> dict:
    """Solve one problem into its results row: the same code in one process, on its worker
    threads (``--concurrent``) and on a Ray actor. ``cancel`` ends the search early (its row
    is then cut short: the caller drops it)."""
    # This problem's plan (under a budget it, not the options, sets N), made and loaded before
    # the clock starts.
    planned = solver.prepare(problem.question, options)
    start = time.perf_counter()
    result = solver.solve(problem.question, options, cancel=cancel)
    seconds = time.perf_counter() - start
    used = replace(options, n=planned.n) if planned else options
    return problem_row(problem, result, used, model, seconds)
