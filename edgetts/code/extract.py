"""From a model's reply to a runnable program: code blocks, the target function, generated asserts.

Nothing here runs code: it only parses text with :mod:`ast`, so it is safe on untrusted replies.
"""

from __future__ import annotations

import ast
import re
from types import SimpleNamespace

# a language, then anything on the fence's line (```python title="f.py"), CRLF line ends too
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n`]*\r?\n(.*?)(?:```|\Z)", re.S)
_FUTURE = re.compile(r"^from __future__ import [^\n]*\n?", re.M)


def code_blocks(text: str) -> list[str]:
    """The fenced code blocks of a reply (an unclosed last fence runs to the end), Python first.

    A reply without fences is taken as code as it is.
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    if not blocks:
        return [text]
    python = [b for lang, b in blocks if lang in ("python", "py", "python3", "")]
    return python or [b for _, b in blocks]


def _parses(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # deep nesting too
        return None


def _compiles(source: str) -> bool:
    """Whether ``source`` compiles (never run): stricter than parsing, e.g. a ``__future__``
    import that is not first parses but does not compile."""
    try:
        compile(source, "<candidate>", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _future_first(source: str) -> str:
    """``source`` with its ``from __future__`` imports moved to the top, where Python needs
    them (a reply that begins with one came after the prompt's own imports)."""
    future = _FUTURE.findall(source)
    return "".join(line if line.endswith("\n") else line + "\n" for line in future) + _FUTURE.sub("", source)


def _segment(source: str, node: ast.stmt) -> str:
    """A top-level statement's source, a function's or class's decorators included (ast's own
    segment begins at ``def``: ``@lru_cache`` or ``@dataclass`` was lost)."""
    decorators = getattr(node, "decorator_list", None)
    if decorators:  # from the first decorator's line (ast counts lines as Python does)
        span = SimpleNamespace(
            lineno=min(d.lineno for d in decorators),
            col_offset=0,
            end_lineno=node.end_lineno,
            end_col_offset=node.end_col_offset,
        )
        segment = ast.get_source_segment(source, span)  # type: ignore[arg-type]
        if segment is not None and segment.lstrip().startswith("@"):
            return segment
    return ast.get_source_segment(source, node, padded=True) or ast.unparse(node)


def _calls(node: ast.AST, name: str) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name for n in ast.walk(node)
    )


def defined_functions(source: str) -> list[str]:
    """Names of the top-level functions ``source`` defines (empty when it does not parse)."""
    tree = _parses(source)
    if tree is None:
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _is_main_guard(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def definitions_only(source: str, entry_point: str | None = None) -> str | None:
    """``source`` keeping imports, functions, classes and constant assignments.

    Example calls, prints and ``if __name__ == "__main__":`` blocks a model adds after its
    function are dropped: they are not the solution, and one that raises would sink it. So is
    an assignment that calls ``entry_point`` (``result = f([])``: an example, kept before, that
    ran as the program loaded). None when ``source`` does not parse.
    """
    tree = _parses(source)
    if tree is None:
        return None
    keep = (
        ast.Import,
        ast.ImportFrom,
        ast.FunctionDef,
        ast.AsyncFunctionDef,
        ast.ClassDef,
        ast.Assign,
        ast.AnnAssign,
    )
    parts = [
        _segment(source, node)
        for node in tree.body
        if isinstance(node, keep)
        and not _is_main_guard(node)
        and not (
            isinstance(node, (ast.Assign, ast.AnnAssign))
            and entry_point
            and node.value is not None
            and _calls(node.value, entry_point)
        )
    ]
    return "\n".join(parts) + "\n"


def prompt_context(prompt: str, entry_point: str | None) -> str:
    """What a function's prompt defines besides the function itself (imports, helpers).

    HumanEval prompts import names (``from typing import List``) and sometimes define helpers
    the solution calls; a reply that repeats only the target function still needs them.
    """
    tree = _parses(prompt)
    if tree is None:
        return ""
    parts = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            continue
        if isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant):
            continue  # a module docstring
        parts.append(_segment(prompt, node))
    return "\n".join(parts) + ("\n" if parts else "")


def extract_program(reply: str, prompt: str = "", entry_point: str | None = None) -> str | None:
    """A runnable program from a model's reply, or None when there is none.

    The first code block that defines ``entry_point`` (any block that parses when no entry
    point is known), cut to its definitions and preceded by the prompt's own imports and
    helpers. A reply that continues the prompt's function body (no ``def`` of its own) is
    appended to the prompt instead.
    """
    context = prompt_context(prompt, entry_point) if prompt else ""
    blocks = code_blocks(reply)
    for block in blocks:
        names = defined_functions(block)
        if names and (entry_point is None or entry_point in names):
            body = definitions_only(block, entry_point)
            program = None if body is None else _future_first(context + body)
            if program is not None and _compiles(program):
                return program
    if entry_point and prompt and entry_point in defined_functions(prompt):
        for block in blocks:
            first = next((line for line in block.splitlines() if line.strip()), "")
            if not first[:1].isspace():
                continue  # only an indented block continues the prompt's function body
            joined = prompt.rstrip("\n") + "\n" + block
            if entry_point in defined_functions(joined):
                body = definitions_only(joined, entry_point)
                program = None if body is None else _future_first(body)
                if program is not None and _compiles(program):
                    return program
    return None


def main_function(programs: list[str | None]) -> str | None:
    """The function name most programs define last (for a plain request without a signature)."""
    counts: dict[str, int] = {}
    for program in programs:
        if program:
            names = defined_functions(program)
            if names:
                counts[names[-1]] = counts.get(names[-1], 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else None


def generated_asserts(reply: str, entry_point: str, limit: int = 20) -> list[str]:
    """``assert`` statements about ``entry_point`` in a reply (the policy's own tests), deduplicated.

    Each is one statement that parses on its own and calls ``entry_point``.
    """
    found: list[str] = []
    for block in code_blocks(reply):
        tree = _parses(block)
        statements: list[str] = []
        if tree is not None:
            statements = [
                ast.get_source_segment(block, n) or ast.unparse(n)
                for n in ast.walk(tree)
                if isinstance(n, ast.Assert)
            ]
        else:  # a block cut mid-way: take the lines that parse alone
            statements = [line.strip() for line in block.splitlines() if line.strip().startswith("assert ")]
        for stmt in statements:
            node = _parses(stmt)
            if node is None or not _calls(node, entry_point):
                continue
            if stmt not in found:
                found.append(stmt)
            if len(found) >= limit:
                return found
    return found


def _calls(tree: ast.AST, name: str) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name for n in ast.walk(tree)
    )


def call_inputs(statements: list[str], entry_point: str, limit: int = 20) -> list[str]:
    """The calls of ``entry_point`` inside test statements, as expressions to probe programs with."""
    calls: list[str] = []
    for stmt in statements:
        tree = _parses(stmt)
        if tree is None:
            continue
        for n in ast.walk(tree):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == entry_point:
                text = ast.unparse(n)
                if text not in calls:
                    calls.append(text)
                if len(calls) >= limit:
                    return calls
    return calls
