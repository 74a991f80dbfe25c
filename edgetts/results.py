"""Results files: one JSON line per problem (:func:`problem_row`), appended and flushed as each
problem finishes.

Re-running with the same ``--out`` skips the problems already in the file, so an interrupted run
(Ctrl-C, a crash, a stopped machine) resumes where it stopped and never loses a finished line.

What a results file is trusted with, and what it refuses:

* Every line is a JSON object that starts with its id (``"id"``, or the ``id_field`` a tool's
  rows are keyed by) and records the ``settings`` of the run that made it. A resume with other
  settings (another strategy, N, seed, model ...) is refused with what differs, since mixing
  two runs in one file would report neither's accuracy.
* A last line without its newline that is not whole JSON is a torn write: the process died while
  writing it (cut inside a character, or inside its id), or the machine lost power (a tail of NUL
  bytes). It is dropped when the run appends its first row (a run refused before that changes
  nothing), but only if it is a torn *results* line (it starts as this module writes lines, or
  is a piece of that start). Anything else (a notes file, another program's output) is refused,
  never cut: the file is the user's. So is a bad line anywhere but last.
* With ``row_fields``, a line must also look like a results row (have one of those fields): a
  data file with ids is not a results file whose problems are all done.
* The output is a regular file (a FIFO or a device would hang or swallow the rows); its lock is
  taken on the file a symlink names, so two names for one file are one run's.
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
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

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


class _Torn:
    """What a torn last line parses to (see the module doc)."""


_TORN = _Torn()

# What every row `edgetts run` writes has had, from its first version (``candidates``) or since
# settings were recorded: a line with neither is not a results row.
RUN_ROW_FIELDS = ("settings", "candidates")


def _missing_folders(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, deepest first."""
    missing, folder = [], path.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


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
        row_fields: Collection[str] = (),
    ) -> None:
        """``unrecorded``: for a setting added after a file was made, the value that does what
        runs did before it existed (a file without it resumes only with that value).
        ``id_field``: the field that keys each row and starts its line (``done`` holds its
        values); benchmark tools key theirs by ``"problem_id"`` or ``"task_id"``. ``lock``: hold
        the file for this run until :meth:`close` (see the module doc). ``row_fields``: fields of
        which every row has one (none given: any object with its id is a row)."""
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            # before a lock is made beside it: a FIFO would hang the read, a device swallow the rows
            what = "a directory" if self.path.is_dir() else "not a regular file (a FIFO, a device ...)"
            raise ResultsError(
                f"output {self.path} is {what}: results go to a JSONL file; choose another --out"
            )
        self._lock_file = self._lock_path()
        # What this run made, removed again if it keeps nothing (a refusal, a run that failed
        # before its first row): an empty results file, its lock and their new folders are no one's.
        self._made = [p for p in (self.path, self._lock_file) if not p.exists()]
        self._made_folders = _missing_folders(self.path)
        self._file_lock = self._lock() if lock else None
        self.settings = settings
        self.unrecorded = dict(unrecorded or {})
        self.id_field = id_field
        self.row_fields = tuple(row_fields)
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
        """``<file>.lock`` beside the file a symlink names: every name of one file takes one lock."""
        try:
            target = self.path.resolve()
        except (OSError, RuntimeError):  # a symlink loop: the file cannot be opened either
            target = self.path
        return target.with_name(target.name + ".lock")

    def _lock(self) -> Any:
        from filelock import FileLock, Timeout

        lock_path = self._lock_file
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
            self._remove_made_folders()
            raise ResultsError(f"cannot write results to {self.path}: {exc.strerror or exc}") from None
        return file_lock

    def close(self) -> None:
        """Let another run have the file (a no-op without ``lock``); remove the file, its lock
        and the folders made for them again where this run made them and wrote nothing."""
        self._release(refused=False)

    def _release(self, refused: bool) -> None:
        if self.path in self._made and self.path.is_file() and self.path.stat().st_size == 0:
            self.path.unlink(missing_ok=True)
        # a refused run's lock too: every run on that file is refused alike
        drop_lock = self._lock_file in self._made and (refused or not self.path.exists())
        if self._file_lock is not None:
            if drop_lock:
                self._lock_file.unlink(missing_ok=True)  # before release: no one waits (timeout 0)
            self._file_lock.release()
            self._file_lock = None
        if not self.path.exists():
            self._remove_made_folders()
        self._made, self._made_folders = [], []

    def _remove_made_folders(self) -> None:
        for folder in self._made_folders:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (another's file, a lock kept): it and its parents stay

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read(self) -> list[dict]:
        self._ends_mid_line = False
        self._torn_at: int | None = None  # where a torn last line starts: cut before the next row
        if not self.path.exists():
            return []
        try:
            data = self.path.read_bytes()  # bytes: a torn line may end inside a character
        except OSError as exc:
            raise ResultsError(f"cannot read output file {self.path}: {exc.strerror or exc}") from None
        self._size_read = len(data)
        # at "\n" only: a model's text may hold U+2028 and the like raw (ensure_ascii=False)
        parts = data.split(b"\n")
        lines = [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
        # A whole last record without its newline (an editor saved it so): the next row must
        # not be glued onto it.
        self._ends_mid_line = bool(parts[-1])
        records = []
        for line_no, line in enumerate(lines, start=1):
            last = line_no == len(lines) and not line.endswith(b"\n")
            record = self._parse(line, line_no, torn_ok=last and self._may_be_torn(line))
            if record is _TORN:
                self._torn_at, self._ends_mid_line = len(data) - len(line), False
            elif record is not None:
                records.append(record)
        return records

    def _may_be_torn(self, line: bytes) -> bool:
        """Whether a last line without its newline may be one this class began to write: its
        start, cut anywhere (inside its id too), or NULs where a power cut lost the write."""
        start = self.record_start.encode()
        return line.startswith(start) or start.startswith(line) or not line.strip(b"\0")

    def _parse(self, line: bytes, line_no: int, torn_ok: bool) -> dict | _Torn | None:
        """One line's row (None for a blank line, ``_TORN`` for a torn last one), or the reason
        the file is not a results file."""
        try:
            text = line.decode("utf-8")
            if not text.strip():
                return None
            record = json.loads(text)
        except UnicodeDecodeError:
            if torn_ok:
                return _TORN
            self._refuse(line_no, "is not UTF-8 text")
        except json.JSONDecodeError:
            if torn_ok:
                return _TORN
            self._refuse(line_no, "is not JSON")
        except RecursionError:
            self._refuse(line_no, "is not JSON edgetts can read (nested too deeply)")
        except ValueError as exc:  # an integer of thousands of digits
            self._refuse(line_no, f"is not JSON edgetts can read ({exc})")
        if not isinstance(record, dict) or self.id_field not in record:
            self._refuse(line_no, f"has no {self.id_field!r}")
        if self.row_fields and not any(field in record for field in self.row_fields):
            # a data file keyed by id is not a results file whose problems are all done
            self._refuse(line_no, "has no " + " or ".join(map(repr, self.row_fields)))
        return record

    def _refuse(self, line_no: int, why: str) -> NoReturn:
        raise ResultsError(
            f"{self.path}:{line_no} {why}: not an edgetts results file (choose another --out; "
            "nothing was changed)"
        )

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

    def _drop_torn_line(self) -> None:
        """Cut the torn last line found at open, now that this run writes its first row (a run
        refused before then leaves the file as it was)."""
        if self._torn_at is None:
            return
        with self.path.open("rb+") as f:
            if f.seek(0, os.SEEK_END) != self._size_read:
                raise ResultsError(f"{self.path} changed while this run read it: run again to resume")
            f.truncate(self._torn_at)
        log.warning("%s: dropped its torn last line (a run died while writing it)", self.path)
        self._torn_at = None

    def append(self, record: dict) -> None:
        """Write one record (with this run's settings) and make sure it reached the disk."""
        key = self.id_field
        if key not in record:
            raise ValueError(f"a results record needs {key!r}")
        record = {key: record[key], **record}  # its id first: a torn line is recognisable
        if self.settings is not None:
            record["settings"] = self.settings
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self._drop_torn_line()
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
