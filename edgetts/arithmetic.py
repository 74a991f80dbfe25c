"""The calculator check: written arithmetic that does not hold (``4 * 12 = 52``).

The small policy often sets a problem up right and then slips in a sum it writes out. Such a
slip is checked exactly, with no model, and used twice:

* by a step scorer whose manifest asks for it (``calculator_check``): a step stating false
  arithmetic gets its score capped (:func:`calculator_capped`; the shipped probe and text PRM);
* by every vote: a solution with a false sum votes only when no solution without one has an
  answer (:func:`edgetts.search.select.voters`; ``SearchConfig.check_arithmetic``). Of the kept
  N = 16 samples of the 0.5B policy on GSM8K test and MAWPS (``data/labels``), 3 of 1,584 right
  ones and 269 of 1,616 wrong ones have one (each of the 3 a real slip), and majority at
  N = 16 gains 2 problems on GSM8K and 6 on MAWPS, losing none (``tools/bench_strategies.py
  rescore``; docs/bench).

Only equations made of plain numbers and + - * / x (also LaTeX's times / cdot / div) are
checked; an equation glued to a letter or an operator on its left (``2x + 30 = 110``) is algebra
and is skipped. The right side may be rounded to its own number of decimals. The left side is
evaluated only once it is known to hold nothing but digits, points, spaces and the four operators.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

_NUM = r"\$?\d[\d,]*(?:\.\d+)?"
_OP = r"\s*(?:[-+*/×÷]|\\times|\\cdot|\\div|(?<=[\d ])x(?=[ \d$]))\s*"
# The right side is one plain number only when nothing on its line goes on with it: an operator
# before more arithmetic (a chained "= 4 * (10 + 2) = 48", "= 2 * $6"), a bracket right after
# it, a percent sign ("1/4 = 25%"), a number after a space (the mixed number "1 3/4", a space
# as thousands separator) or a repeating decimal's dots ("0.666..."). An operator before words
# ("= 52 / month") or a bracketed remark ("= 54 (not 56)") does not hide a slip.
_RHS_GOES_ON = (
    r"[ \t]*(?:[-+*/×÷^]|\\times|\\cdot|\\div)[ \t]*[-\d$(\\.]"
    r"|\(|[ \t]*(?:%|\\%)|[ \t]*(?:\.\.|…|\\l?dots)|[ \t]+\d"
)
_EQ = re.compile(rf"(?P<lhs>{_NUM}(?:{_OP}{_NUM})+)\s*=\s*(?P<rhs>-?{_NUM})(?!{_RHS_GOES_ON})(?!\.?\d)")
_OP_BEFORE = re.compile(r"(?:[-+*/×÷−–]|\\times|\\cdot|\\div|\bx)\s*$")
_NUMBER_BEFORE = re.compile(r"\d[ \t]+$")  # "1 1/2 * 4": the left side began with a mixed number
# A comma before one or two digits is a decimal comma ("2,5") or a list ("1,2,3"): the
# equation is not read. Other commas are thousands separators, even misplaced ("200,0000").
_DECIMAL_COMMA = re.compile(r"\d,\d{1,2}(?!\d)")


def _to_float(s: str) -> float:
    return float(s.replace("$", "").replace(",", ""))


def has_wrong_arithmetic(text: str) -> bool:
    """True when ``text`` (a step or a whole solution) states a plain-number equation that is
    false ("4 * 12 = 52").

    Only equations made of numbers and + - * / x (also LaTeX times/cdot/div) are checked; the
    right side may be rounded to its own number of decimals. Anything else counts as no error.
    """
    # LaTeX's thousands separators, "1{,}000" and "1\\,000", as plain ones
    text = re.sub(r"(?<=\d)\{,\}(?=\d)", ",", re.sub(r"(?<=\d)\\,(?=\d{3})", "", text))
    for m in _EQ.finditer(text):
        before = text[m.start() - 1] if m.start() else " "
        if before in "+-*/^×÷−–.,:_\\{(" or before.isalnum() or _OP_BEFORE.search(text[: m.start()]):
            continue
        if _NUMBER_BEFORE.search(text[: m.start()]):
            continue
        if _DECIMAL_COMMA.search(m[0]):
            continue
        expr = m["lhs"].replace("$", "").replace(",", "")
        for a, b in (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/"), ("x", "*")):
            expr = expr.replace(a, b)
        if not re.fullmatch(r"[\d.+\-*/ ]+", expr):
            continue
        try:
            val = float(eval(expr, {"__builtins__": {}}))  # noqa: S307 - digits and + - * / only
            rhs = _to_float(m["rhs"])
        except (SyntaxError, ZeroDivisionError, ValueError, OverflowError):
            continue
        decimals = len(m["rhs"].split(".")[1]) if "." in m["rhs"] else 0
        tol = max(0.5 * 10**-decimals, 1e-6 * abs(val)) + 1e-9
        if not math.isfinite(val) or abs(val - rhs) > tol:
            return True
    return False


def calculator_capped(steps: Sequence[str], scores: Sequence[float], cap: float) -> list[float]:
    """The calculator check: ``scores`` with every step that states false arithmetic capped at ``cap``."""
    return [min(v, cap) if has_wrong_arithmetic(st) else v for v, st in zip(scores, steps, strict=True)]
