"""The benchmark and labelling tools' rows files, kept by :class:`edgetts.results.ResultsFile`.

Rows are appended and fsynced as each is made, a line torn by a killed run is dropped on
resume, and a file made with other settings is refused: a refusal ends the tool with its message.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from edgetts.results import ResultsError, ResultsFile


def open_rows(
    path: str | Path, settings: dict[str, Any] | None = None, id_field: str = "problem_id"
) -> ResultsFile:
    """The rows file at ``path``, keyed by ``id_field``, held by this process until it ends (a
    second tool on the same file, e.g. a shard given the wrong --out, is refused rather than
    appending the same problems again); exits with the reason when refused."""
    try:
        return ResultsFile(path, settings=settings, id_field=id_field, lock=True)
    except ResultsError as exc:
        sys.exit(f"Error: {exc}")
