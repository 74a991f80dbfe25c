"""Benchmark loaders: the common public shapes by sniffing their keys, anything else by mapping.

Known shapes (one JSON object per line):

=========  =====================  ======================================
shape      question               gold answer
=========  =====================  ======================================
GSM8K      ``question``           ``answer`` after ``####``
MATH-500   ``problem``            ``answer``
MATH       ``problem``            last ``\\boxed{}`` of ``solution``
MAWPS      ``input``              ``target`` (a number)
ASDiv      ``body`` + ``question``  ``answer`` without its unit, "15 (balls)"
=========  =====================  ======================================

Other files: ``question_key`` / ``answer_key`` name the fields; ``+`` joins several with a space
(``body+question``). A ``.json`` file holding a list of such objects works too.
"""

from __future__ import annotations

import gzip
import json
import keyword
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

from edgetts.grading import last_boxed

# The fields a problem's id is read from, the first one a row has; else its line number.
ID_KEYS = ("unique_id", "idx", "id")
STDIN = "-"  # as a data path: read the rows from stdin


class DataError(ValueError):
    """The data file cannot be read as asked; the message names the file and line."""


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str | None  # None when the file has no gold answer (answers are then ungraded)


def _text(value: object, key: str, path: Path, line_no: int) -> str | None:
    """A field's value as text: strings and numbers as written, null as None; a list or an
    object is refused (its Python repr would become the question or the gold answer)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        return _checked(value, key, path, line_no).strip()
    if isinstance(value, (int, float)):
        return str(value).strip()
    raise DataError(f"{path}:{line_no}: field {key!r} is a {type(value).__name__}, not text or a number")


def _checked(text: str, key: str, path: Path, line_no: int) -> str:
    """``text``, refused here if it is text no model can read nor results file keep: a NUL (the
    prompt refuses it) or a lone surrogate ("\\ud800" in JSON: no UTF-8 can write it), which
    would end a run at this row after the rows before it were solved."""
    if "\0" in text:
        raise DataError(f"{path}:{line_no}: field {key!r} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{path}:{line_no}: field {key!r} contains a lone surrogate (not text)") from None
    return text


def _join(record: dict, keys: str, path: Path, line_no: int) -> str | None:
    parts = []
    for key in keys.split("+"):
        if key not in record:
            raise DataError(f"{path}:{line_no}: no field {key!r} (fields: {', '.join(record)})")
        parts.append(_text(record[key], key, path, line_no) or "")
    return " ".join(p for p in parts if p) or None


def _gold(record: dict, answer_key: str | None, path: Path, line_no: int) -> str | None:
    if answer_key:
        raw = _join(record, answer_key, path, line_no)
    elif "answer" in record and isinstance(record["answer"], str) and "####" in record["answer"]:
        raw = _checked(record["answer"], "answer", path, line_no).split("####")[-1]  # GSM8K
    elif "answer" in record:
        raw = _text(record["answer"], "answer", path, line_no)  # MATH-500, ASDiv
    elif "target" in record:
        raw = _text(record["target"], "target", path, line_no)  # MAWPS
    elif "solution" in record:
        raw = last_boxed(_text(record["solution"], "solution", path, line_no) or "")  # MATH
    else:
        return None
    if raw is None:
        return None
    raw = raw.strip()
    # ASDiv units, "15 (balls)": only a number's trailing words in brackets, never an interval,
    # a point or a product such as MATH's "(-2,1)" or "(a+5)(b+2)"
    raw = re.sub(r"^(-?[\d.,]+)\s*\([A-Za-z][^()]*\)$", r"\1", raw)
    if re.fullmatch(r"-?\d+\.0+", raw):
        raw = raw.split(".")[0]  # MAWPS floats: "43.0"
    # thousands separators ("1,234.5"), not lists ("-2,1")
    return raw.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", raw) else raw


def _question_key(record: dict) -> str:
    for keys in ("body+question", "question", "problem", "input", "prompt"):
        if all(k in record for k in keys.split("+")):
            return keys
    raise KeyError


def _read_text(path: Path) -> str:
    """The data file's text (stdin's for ``-``); a UTF-8 byte order mark is not its text."""
    if str(path) == STDIN:
        if sys.stdin is None:
            raise DataError("--data -: there is no stdin to read the rows from")
        stream = getattr(sys.stdin, "buffer", None)
        raw = stream.read() if stream is not None else sys.stdin.read().encode("utf-8", "surrogateescape")
        return raw.decode("utf-8-sig")
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8-sig") as f:
            return f.read()
    return path.read_text(encoding="utf-8-sig")


def _loads(text: str, path: Path, line_no: int) -> object:
    """One JSON text, or a DataError naming its line (not Python's words without them)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{line_no + exc.lineno - 1}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{path}:{line_no}: not valid JSON (nested too deeply to read)") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise DataError(f"{path}:{line_no}: not valid JSON ({exc})") from None


def _records(path: Path):
    try:
        text = _read_text(path)
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        raise DataError(f"cannot read data file {path}: {exc}") from exc
    if path.suffix == ".json" or path.suffixes[-2:] == [".json", ".gz"]:
        items = _loads(text, path, 1)
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a JSON list of objects")
        yield from ((i + 1, item) for i, item in enumerate(items))
        return
    # "\n" only: splitlines() would also break at U+2028 and the like, which JSON strings hold raw
    for line_no, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield line_no, _loads(line, path, line_no)


def _source(path: str | Path) -> Path:
    """The data path, checked: ``-`` (stdin) or a file that exists."""
    path = Path(path)
    if str(path) != STDIN and not path.exists():
        raise DataError(f"data file {path} does not exist")
    return path


def load_problems(
    path: str | Path,
    question_key: str | None = None,
    answer_key: str | None = None,
    id_key: str | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Read a benchmark file (``-``: stdin) into Problems (first ``limit`` only, when given)."""
    path = _source(path)
    problems: list[Problem] = []
    for line_no, record in _records(path):
        if limit is not None and len(problems) >= limit:
            break
        if not isinstance(record, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
        try:
            q_key = question_key or _question_key(record)
        except KeyError:
            raise DataError(
                f"{path}:{line_no}: cannot tell which field is the question "
                f"(fields: {', '.join(record)}); pass --question-key"
            ) from None
        question = _join(record, q_key, path, line_no)
        if not question:
            raise DataError(f"{path}:{line_no}: the question ({q_key}) is empty")
        key = id_key or next((k for k in ID_KEYS if k in record), None)
        pid = line_no if key is None else _join(record, key, path, line_no)
        if pid is None:
            raise DataError(f"{path}:{line_no}: the problem id ({key}) is empty")
        problems.append(Problem(str(pid), question, _gold(record, answer_key, path, line_no)))
    if not problems:
        raise DataError(f"{path}: no problems found")
    _check_unique([p.id for p in problems], path)
    return problems


def _check_unique(ids: list[str], path: Path) -> None:
    """Refuse a file whose rows share an id: results are keyed (and resumed) by id."""
    seen: set[str] = set()
    for pid in ids:
        if pid in seen:
            raise DataError(f"{path}: problem id {pid!r} appears more than once; pass --id-key")
        seen.add(pid)


@dataclass(frozen=True)
class CodeProblem:
    """A HumanEval-style row: the prompt (signature + docstring), the function the tests call,
    and the hidden test (``def check(candidate): ...``; None when the file has none)."""

    id: str
    prompt: str
    entry_point: str | None
    test: str | None


def load_code_problems(path: str | Path, limit: int | None = None) -> list[CodeProblem]:
    """Read HumanEval-style rows (``prompt``, ``test``, ``entry_point``; JSONL, .json or .jsonl.gz;
    ``-``: stdin)."""
    path = _source(path)
    problems: list[CodeProblem] = []
    for line_no, record in _records(path):
        if limit is not None and len(problems) >= limit:
            break
        if not isinstance(record, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{path}:{line_no}: no 'prompt' (fields: {', '.join(record)})")
        _checked(prompt, "prompt", path, line_no)
        test, entry = record.get("test"), _entry_point(record, path, line_no)
        if test is not None and not isinstance(test, str):
            raise DataError(f"{path}:{line_no}: 'test' must be a string")
        if test and not entry:
            raise DataError(f"{path}:{line_no}: a 'test' needs the 'entry_point' it checks")
        pid = _checked(str(record.get("task_id", record.get("id", line_no))), "task_id", path, line_no)
        problems.append(
            CodeProblem(pid, prompt, entry, _checked(test, "test", path, line_no) if test else None)
        )
    if not problems:
        raise DataError(f"{path}: no problems found")
    _check_unique([p.id for p in problems], path)
    return problems


def _entry_point(record: dict, path: Path, line_no: int) -> str | None:
    """The row's ``entry_point``: the name of the function its test calls (``check(NAME)`` is
    run as code), so a Python name; None where the row has none (or an empty one)."""
    entry = record.get("entry_point")
    if entry is None or entry == "":
        return None
    if not isinstance(entry, str) or not entry.isidentifier() or keyword.iskeyword(entry):
        raise DataError(f"{path}:{line_no}: 'entry_point' must be a function's name, not {entry!r}")
    return entry
