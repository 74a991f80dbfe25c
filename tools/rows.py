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
    """The rows file at ``path``, keyed by ``id_field``; exits with the reason when refused."""
    try:
        return ResultsFile(path, settings=settings, id_field=id_field)
    except ResultsError as exc:
        sys.exit(f"Error: {exc}")
