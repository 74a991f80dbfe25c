"""Results files: one JSON line per problem, appended and flushed as each problem finishes.

Re-running with the same ``--out`` skips the problems already in the file, so an interrupted run
(Ctrl-C, a crash, a stopped machine) resumes where it stopped and never loses a finished line.
A torn last line (the process died mid-write) is dropped and rewritten on resume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class ResultsError(ValueError):
    """The output file exists but is not a results JSONL file."""


class ResultsFile:
    """Append-only JSONL results keyed by problem id."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: list[dict] = self._read()
        self.done: set[str] = {str(r["id"]) for r in self.records}

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        if self.path.is_dir():
            raise ResultsError(f"output {self.path} is a directory, not a JSONL file")
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        except (OSError, UnicodeDecodeError) as exc:
            raise ResultsError(f"cannot read output file {self.path}: {exc}") from exc
        records = []
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if line_no == len(lines) and not line.endswith("\n"):
                    self._truncate_last_line(len(line.encode()))
                    break
                raise ResultsError(
                    f"{self.path}:{line_no} is not JSON: the output must be a results JSONL file "
                    "(choose another --out)"
                ) from None
            if not isinstance(record, dict) or "id" not in record:
                raise ResultsError(
                    f"{self.path}:{line_no} has no 'id': not an edgetts results file "
                    "(choose another --out)"
                )
            records.append(record)
        return records

    def _truncate_last_line(self, n_bytes: int) -> None:
        with self.path.open("rb+") as f:
            f.truncate(self.path.stat().st_size - n_bytes)

    def append(self, record: dict) -> None:
        """Write one record and make sure it reached the disk before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        self.done.add(str(record["id"]))

    def accuracy(self) -> tuple[int, int]:
        """(correct, graded) over the records that have a gold answer."""
        graded = [r for r in self.records if r.get("correct") is not None]
        return sum(bool(r["correct"]) for r in graded), len(graded)
