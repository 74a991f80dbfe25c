"""The calculator check: written arithmetic that does not hold (``4 * 12 = 52``).

The small policy often sets a problem up right and then slips in a sum it writes out. Such a
slip is checked exactly, with no model, and used twice:

* by a step scorer whose manifest asks for it (``calculator_check``): a step stating false
  arithmetic gets its score capped (:func:`calculator_capped`; the shipped probe and text PRM);
* by every vote: a solution with a false sum votes only when no solution without one has an
  answer (:func:`edgetts.search.select.voters`; ``SearchConfig.check_arithmetic``). Of the kept
  N = 16 samples of the 0.5B policy on GSM8K test and MAWPS (``data/labels``), 3 of 1,584 right
  ones and 273 of 1,616 wrong ones have one (each of the 3 a real slip), and majority at
  N = 16 gains 2 problems on GSM8K and 6 on MAWPS, losing none (``tools/bench_strategies.py
  rescore``; docs/bench).

Only equations made of plain numbers and + - * / x (also LaTeX's times / cdot / div) are
checked; an equation glued to a letter or an operator on its left (``2x + 30 = 110``) is algebra
and is skipped. The right side may be rounded to its own number of decimals. The left side is
evaluated only once it is known to hold nothing but digits, points, spaces and the four operators.
In a chain (``75 * 2 * 4 = 75 * 2 = 150``) each middle link is checked too (:func:`_chain_slips`),
unless it is a running total (``3 * 4 = 12 + 5 = 17``: the next side holds the value), meant from
left to right (``3 + 4 * 2 = 7 * 2``) or rounded (``15 / 40 * 100 = 0.38 * 100``).
"""

from __future__ import annotations

import math
import operator
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
# (?<![\d,.]): an equation starts at a number's start, not at each digit of a long run, which
# would cost time quadratic in a looping sample's digits
_EQ = re.compile(
    rf"(?<![\d,.])(?P<lhs>{_NUM}(?:{_OP}{_NUM})+)\s*=\s*(?P<rhs>-?{_NUM})(?!{_RHS_GOES_ON})(?!\.?\d)"
)
_CLOCK_RANGE = re.compile(r"(?:[01]?\d|2[0-4])\s*-\s*(?:[01]?\d|2[0-4])")
_FROM_BEFORE = re.compile(r"\bfrom\s*$")
_OP_BEFORE = re.compile(r"(?:[-+*/×÷−–]|\\times|\\cdot|\\div|\bx)\s*$")
_NUMBER_BEFORE = re.compile(r"\d[ \t]+$")  # "1 1/2 * 4": the left side began with a mixed number
# A comma before one or two digits is a decimal comma ("2,5") or a list ("1,2,3"): the
# equation is not read. Other commas are thousands separators, even misplaced ("200,0000").
_DECIMAL_COMMA = re.compile(r"\d,\d{1,2}(?!\d)")
_EXPR = rf"{_NUM}(?:{_OP}{_NUM})*"
_CHAIN = re.compile(rf"(?<![\d,.]){_EXPR}(?:\s*=\s*{_EXPR}){{2,}}")
_OPS = re.compile(_OP)
# A middle link of a chain is false when its sides differ by more than this share (of the left
# side's value) and by more than the rounding of the right side's numbers: a slip changes a value
# by much more, while "10 / 3 * 3 = 3.33 * 3" only rounds.
_CHAIN_SHARE = 0.01


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
        if not _stands_alone(text, m):
            continue
        val = _value(m["lhs"])
        if val is None:
            continue
        rhs = _to_float(m["rhs"])
        decimals = len(m["rhs"].split(".")[1]) if "." in m["rhs"] else 0
        # A value that the right side's decimals cannot hold may be cut (2 / 3 = 0.666) or
        # rounded up ($10 / 3 = $3.34 each): one unit of the last place. Not so for a whole
        # number: on the committed samples, "14 / 3 = 4" marked wrong ones only.
        divides = re.search(r"[/÷]|\\div", m["lhs"]) is not None
        scaled = val * 10.0**decimals if divides and 0 < decimals <= 12 and math.isfinite(val) else 0.0
        unit = 0.5 if abs(scaled - round(scaled)) <= 1e-6 * max(1.0, abs(scaled)) else 1.0
        tol = max(unit * 10**-decimals, 1e-6 * abs(val)) + 1e-9
        if not math.isfinite(val) or abs(val - rhs) > tol:
            return True
    return any(_chain_slips(m[0]) for m in _CHAIN.finditer(text) if _stands_alone(text, m))


def _stands_alone(text: str, m: re.Match[str]) -> bool:
    """Whether the equation ``m`` is plain arithmetic: not the end of algebra or of a longer
    expression on its left (``2x + 30 = 110``, ``(4 + 2) * 3 = 18``), nor a decimal comma."""
    before = text[m.start() - 1] if m.start() else " "
    if _CLOCK_RANGE.fullmatch(m[0].split("=")[0].strip()) and _FROM_BEFORE.search(text[: m.start()]):
        return False  # "from 9 - 5 = 8 hours": a span of clock times
    if before in "+-*/^×÷−–.,:_\\{(" or before.isalnum() or _OP_BEFORE.search(text[: m.start()]):
        return False
    return not _NUMBER_BEFORE.search(text[: m.start()]) and not _DECIMAL_COMMA.search(m[0])


def _value(expr: str) -> float | None:
    """The value of a plain-number expression (numbers and + - * / x), None if it is not one."""
    expr = expr.replace("$", "").replace(",", "")
    for a, b in (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/"), ("x", "*")):
        expr = expr.replace(a, b)
    if not re.fullmatch(r"[\d.+\-*/ ]+", expr):
        return None
    try:
        return float(eval(expr, {"__builtins__": {}}))  # noqa: S307 - digits and + - * / only
    except (SyntaxError, ZeroDivisionError, ValueError, OverflowError):
        return None


def _chain_slips(chain: str) -> bool:
    """Whether a middle link of ``a = b = ... = z`` is false: two expressions side by side
    (``75 * 2 * 4 = 75 * 2``) of different values. Not a slip: a running total, whose right side
    holds the left one's value as a term (``3 * 4 = 12 + 5``, ``3 * 4 = 5 + 12``); a left side
    meant from left to right (``3 + 4 * 2 = 7 * 2``); a right side of rounded numbers
    (``15 / 40 * 100 = 0.38 * 100``). The last link is :data:`_EQ`'s."""
    sides = [side.strip() for side in chain.split("=")]
    for left, right in zip(sides[:-2], sides[1:-1], strict=True):
        if not (_OPS.search(left) and _OPS.search(right)):
            continue
        lval, rval = _value(left), _value(right)
        if lval is None or rval is None or not math.isfinite(lval):
            continue
        tol = max(_CHAIN_SHARE * abs(lval), _rounding(right) * abs(rval)) + 1e-9
        meant = [lval, _left_to_right(left)]
        terms = [_value(term) for term in _OPS.split(right)]
        if all(abs(v - rval) > tol for v in meant if v is not None) and not any(
            t is not None and abs(t - lval) <= tol for t in terms
        ):
            return True
    return False


def _rounding(expr: str) -> float:
    """How far off, as a share, ``expr`` may be from the rounding of its numbers: one written with
    d decimals may be off by half a unit of its last place."""
    share = 0.0
    for m in re.finditer(r"\d*\.(\d+)", expr):
        if float(m[0]):
            share += 0.5 * 10 ** -len(m[1]) / float(m[0])
    return share


# Each operator _OP reads, as the function it applies
_APPLY = {
    "+": operator.add,
    "-": operator.sub,
    "/": operator.truediv,
    "÷": operator.truediv,
    "\\div": operator.truediv,
}
_APPLY.update(dict.fromkeys(("*", "x", "×", "\\times", "\\cdot"), operator.mul))


def _left_to_right(expr: str) -> float | None:
    """``expr`` worked from left to right, as a running calculation is written (``3 + 4 * 2``
    as 14); None if it is not plain numbers and operators."""
    parts = re.split(f"({_OP})", expr.replace("$", "").replace(",", ""))
    try:
        total = float(parts[0])
        for op, number in zip(parts[1::2], parts[2::2], strict=True):
            total = _APPLY[op.strip()](total, float(number))
    except (KeyError, ValueError, ZeroDivisionError):
        return None
    return total


def calculator_capped(steps: Sequence[str], scores: Sequence[float], cap: float) -> list[float]:
    """The calculator check: ``scores`` with every step that states false arithmetic capped at ``cap``."""
    return [min(v, cap) if has_wrong_arithmetic(st) else v for v, st in zip(scores, steps, strict=True)]
