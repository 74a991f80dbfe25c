"""Tests as sandbox checks: docstring examples, a user's test file, a dataset's hidden test.

Only text is built here; every check runs inside :mod:`edgetts.sandbox`.
"""

from __future__ import annotations

import ast
import builtins
import doctest
import re

from edgetts.sandbox import Check

# Docstring examples written without ">>>", e.g. "add(1, 2) == 3", "f([1]) ➞ True", "f(2) => 4".
_ARROW = re.compile(r"^\s*(?P<call>[A-Za-z_]\w*\(.*\))\s*(?:==>|==|➞|=>|->)\s*(?P<want>.+?)\s*$")
# Values as other languages write them ("=> true")
_OTHER_LITERALS = {"true": "True", "false": "False", "null": "None", "none": "None"}


def _literal_call(call: str) -> bool:
    """Whether ``call`` names no value it does not write out: ``fib4(n)`` (a recurrence) or
    ``is_happy(abcd)`` (a string without its quotes) is prose, not an example to run, while
    ``round(find_zero([1, 2]), 2)`` only calls functions on values it writes."""
    try:
        tree = ast.parse(call, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # deep nesting too
        return False
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    names = [node for node in ast.walk(tree) if isinstance(node, ast.Name)]
    return all(id(node) in called or hasattr(builtins, node.id) for node in names)


def _wanted(want: str) -> str:
    """The value an example says it gives: ``true`` as ``True``, and of a worked answer
    (``19 - 5 - 6 = 8``) the value after its last ``=``."""
    want = _OTHER_LITERALS.get(want.strip().rstrip(".").lower(), want)
    if "=" in want and not want.lstrip().startswith(("[", "{", "(", "'", '"')):
        last = want.rsplit("=", 1)[1].strip().rstrip(".")
        try:
            ast.literal_eval(last)
            return last
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            pass
    return want


def _docstring(prompt: str, entry_point: str | None) -> str:
    try:
        tree = ast.parse(prompt)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # deep nesting too
        return prompt
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
            entry_point is None or node.name == entry_point
        ):
            return ast.get_docstring(node) or ""
    return prompt


def _example_check(call: str, want: str, name: str) -> Check | None:
    """``call`` must give ``want`` (compared as values, or as the repr doctest prints)."""
    if not _literal_call(call):
        return None
    want = _wanted(want)
    try:
        ast.parse(call, mode="eval")
        ast.parse(want, mode="eval")
        code = (
            f"__got = {call}\n__want = {want}\n"
            f"assert __got == __want or repr(__got) == {want!r}, repr(__got)\n"
        )
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # deep nesting too
        try:
            ast.parse(call, mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):  # deep nesting too
            return None
        code = f"__got = {call}\nassert repr(__got) == {want!r} or str(__got) == {want!r}, repr(__got)\n"
    return Check(code, name=name)


def docstring_checks(prompt: str, entry_point: str | None) -> list[Check]:
    """The examples in the target function's docstring as checks (``>>>`` lines, ``f(x) == y``)."""
    doc = _docstring(prompt, entry_point)
    checks: list[Check] = []
    seen: set[str] = set()
    try:
        examples = doctest.DocTestParser().get_examples(doc)
    except ValueError:
        examples = []
    for ex in examples:
        call, want = ex.source.strip(), ex.want.strip()
        if not want or call in seen:
            continue
        check = _example_check(call, want, f"doc: {call} -> {want}"[:120])
        if check:
            seen.add(call)
            checks.append(check)
    if entry_point:
        for line in doc.splitlines():
            m = _ARROW.match(line)
            if m and m.group("call").startswith(entry_point + "(") and m.group("call") not in seen:
                check = _example_check(m.group("call"), m.group("want"), f"doc: {line.strip()}"[:120])
                if check:
                    seen.add(m.group("call"))
                    checks.append(check)
    return checks


def file_checks(text: str, source: str = "tests") -> list[Check]:
    """A user's test file as checks: each top-level ``assert`` is one check, each ``test_*``
    function is one check (called with no arguments), and imports/helpers run before each.

    Raises ValueError with the line when the file does not parse.
    """
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise ValueError(f"{source}: line {exc.lineno}: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ValueError(f"{source}: nested too deeply to parse") from None
    setup, checks = [], []
    for node in tree.body:
        segment = ast.get_source_segment(text, node, padded=True) or ast.unparse(node)
        if isinstance(node, ast.Assert):
            checks.append((segment.strip(), f"{source}:{node.lineno}: {segment.strip()}"[:120]))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            setup.append(segment)
            checks.append((f"{node.name}()", f"{source}:{node.lineno}: {node.name}"))
        else:
            setup.append(segment)
    if not checks:
        raise ValueError(f"{source}: no assert statements or test_* functions found")
    prelude = "\n".join(setup) + "\n" if setup else ""
    # The prelude is repeated per check: each check runs in the candidate's namespace, and a
    # helper the user defines must exist for the first check that needs it; redefining is cheap.
    return [Check(prelude + code if prelude else code, name=name) for code, name in checks]


def hidden_check(test: str, entry_point: str) -> Check:
    """A HumanEval-style test (``def check(candidate): ...``) run against ``entry_point``."""
    return Check(f"{test}\ncheck({entry_point})\n", name="hidden tests")
