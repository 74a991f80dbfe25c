"""Pull the final answer out of a solution and decide whether two answers agree.

Extraction order, most explicit first: the last ``\\boxed{...}``, then "The answer is ...", then a
GSM8K-style "#### ..." line, then the last number in the text. Unfinished text never answers: a
``\\boxed{`` that was opened but not closed means no answer (not the text around it), and the
last-number fallback applies only to a solution that ended by itself, since a solution cut by the
token limit or a deadline stops mid-sentence, on whatever number it was writing.

Numbers are compared numerically after stripping currency, thousands separators, units and
trailing periods; everything else goes to ``math-verify``, which understands LaTeX (fractions,
roots, tuples, intervals), run in a child process with a hard time limit (:mod:`edgetts.symbolic`:
sympy evaluates what it is given, and a model's ``(10^{8})!`` froze the process).
"""

from __future__ import annotations

import itertools
import re
from fractions import Fraction
from typing import NamedTuple

from edgetts.symbolic import symbolic_equal

# Thousands separators only in groups of three: "3," and "3,5" are not numbers with a comma.
_NUMBER = r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_ANSWER_IS_RE = re.compile(r"answer is[:\s]*\$?\s*(.+?)(?:\$|\.\s|\.$|\n|$)", re.IGNORECASE)
_HASHES_RE = re.compile(r"####\s*(.+)")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
# A trailing unit: words of letters ("18 dollars", "12 eggs per day", "5 cm^2", "15 (balls)"),
# one letter after a space ("5 m"), or glued to the number a capital ("0.625N") or an SI letter
# ("5m", "3s"). Never a variable's letter ("3x", "2x^2"), an exponent ("1e5") or a number after
# the words ("5 and 7", "4 hours and 30 minutes"): those are not plain numbers.
_UNIT_WORD = r"[A-Za-z]{2,}(?:\^\d)?"
_UNIT_RE = re.compile(
    rf"(?:\s*\(?{_UNIT_WORD}(?:\s+{_UNIT_WORD})*\)?"  # words, maybe in brackets
    r"|\s+[A-Za-z](?:\^\d)?"  # one letter after a space
    r"|[A-Z]|[mgslh](?:\^\d)?)$"  # glued: a capital, or an SI letter
)
# Words after a number that are a number themselves: "4 pi" is not 4. (Scale words stay units:
# "3 million" answers "how many million ..." as 3, and "5 times", "5 more" answer as 5.)
_NOT_UNITS = frozenset({"pi"})
# A plain decimal may end in an exponent as Python prints large floats ("1e+16"); at most three
# exponent digits, so that reading it exactly stays cheap.
_EXPONENT = r"(?:[eE][-+]?\d{1,3})?"
# Relative tolerance for a decimal that stands for a fraction: one side written as a fraction
# (0.333333 for \frac{1}{3}), or a decimal rounded to its last place (MAWPS's gold 0.3333333333
# for a printed 0.3333333333333334). A whole number, and two decimals that differ by more than
# the rounding of the shorter, are compared exactly (123456.7 is not 123456.8, nor 1000000.5
# 1000001).
REL_TOL = Fraction(1, 10**6)


class _Number(NamedTuple):
    """A plain number as written: its exact value, whether it was a fraction, and its decimal
    places (0 for a whole number; an exponent counts: 5e-05 has 5)."""

    value: Fraction
    is_fraction: bool
    places: int


def last_boxed(text: str) -> str | None:
    """Return the contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start + (6 if text.startswith("\\boxed", start) else 5) :]
    if not rest.lstrip().startswith("{"):  # "\boxed 5": the token after it, not a later brace
        token = re.match(r"\s+([^\s$]+)", rest)
        return token.group(1).rstrip(".") if token else None
    brace = len(text) - len(rest.lstrip())
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i].strip()
    return None  # unbalanced: the model stopped mid-answer


def extract_answer(text: str, complete: bool = True) -> str | None:
    """Return the final answer written in ``text``, or None when there is none.

    ``complete`` says the solution ended by itself; for one that was cut (token limit, deadline)
    only an explicit answer counts, never the last number it happened to be writing.
    """
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed:
        return boxed
    if "\\boxed" in text or "\\fbox" in text:
        return None  # the answer was being written and stopped: no answer, not a fragment
    matches = _ANSWER_IS_RE.findall(text.replace("\\$", ""))  # an escaped dollar is no delimiter
    if matches and _clean(matches[-1]):
        return _clean(matches[-1])
    hashes = _HASHES_RE.findall(text)
    if hashes and hashes[-1].strip():
        return hashes[-1].strip()
    numbers = _NUMBER_RE.findall(text) if complete else []
    return numbers[-1] if numbers else None


def _clean(answer: str) -> str:
    """An answer's text without math delimiters or Markdown emphasis around it (``\\( 5 \\)``,
    ``$5$``, ``**12**``); empty when nothing but such marks is left."""
    answer = answer.strip().strip("*`").strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]"), ("$", "$")):
        if answer.startswith(left):
            answer = answer[len(left) :].removesuffix(right).strip()
    # "∞" is an answer; "**" or a "\\" cut off before its command is none
    return answer if answer.strip("*`$\\ ") else ""


def as_number(answer: str) -> float | None:
    """Return ``answer`` as a float when it is a plain number (units and currency allowed);
    None also for one too large for a float."""
    number = _plain_number(answer)
    try:
        return None if number is None else float(number.value)
    except OverflowError:
        return None


def _plain_number(answer: str) -> _Number | None:
    """``answer`` as a plain number, exactly (as floats, 12345678901234567890 and ...891 are
    equal), with how it was written (a fraction, ``\\frac{1}{3}``, or a decimal's places)."""
    cleaned = _TEXT_RE.sub(r"\1", answer)
    cleaned = cleaned.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    cleaned = cleaned.replace("\\!", "").replace("{,}", "").replace("\\,", "").replace("\\ ", "")
    cleaned = cleaned.strip().rstrip(".")
    unit = _UNIT_RE.search(cleaned)
    if unit and _NOT_UNITS & set(re.findall(r"[a-z]+", unit.group().lower())):
        return None
    cleaned = cleaned[: unit.start()].strip() if unit else cleaned
    if not re.fullmatch(rf"(?:{_NUMBER}){_EXPONENT}", cleaned):
        frac = re.fullmatch(r"\\[dt]?frac\{(-?\d{1,4000})\}\{(\d{1,4000})\}", cleaned)
        if frac and int(frac.group(2)) != 0:
            return _Number(Fraction(int(frac.group(1)), int(frac.group(2))), True, 0)
        return None
    if "," in cleaned and not re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", cleaned):
        return None  # "3,5" is a list, not three thousand five
    digits = cleaned.replace(",", "")
    if len(digits) > 4000:  # (Python reads no int of more than 4300 digits)
        return None
    mantissa, _, exponent = digits.lower().partition("e")
    places = max(0, len(mantissa.partition(".")[2]) - int(exponent or 0))
    return _Number(Fraction(digits), False, places)


def normalize_answer(answer: str | None) -> str | None:
    """Canonical text for grouping equal answers: numbers as ``18`` / ``0.5``, else trimmed."""
    if answer is None:
        return None
    number = _plain_number(answer)
    if number is not None:
        return _exact_text(number.value, number.is_fraction)
    text = _TEXT_RE.sub(r"\1", answer).strip().strip("$").strip().rstrip(".")
    return re.sub(r"\s+", " ", text) or None


def _exact_text(value: Fraction, is_fraction: bool) -> str:
    """A plain number's canonical text, exact (comparison is): ``18``, ``0.5``, ``-2.125``, and a
    fraction as ``\\frac{1}{3}`` (a decimal was written with a power of ten below it)."""
    if value.denominator == 1:
        return str(value.numerator)
    if is_fraction:
        return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"
    places = next(k for k in itertools.count(1) if 10**k % value.denominator == 0)
    digits = str(abs(value.numerator) * (10**places // value.denominator)).rjust(places + 1, "0")
    return ("-" if value < 0 else "") + f"{digits[:-places]}.{digits[-places:]}"


def _numbers_equal(a: _Number, b: _Number) -> bool:
    """See :data:`REL_TOL`."""
    if a.value == b.value:
        return True
    tolerance = REL_TOL * max(1, abs(a.value), abs(b.value))
    if a.is_fraction != b.is_fraction:
        return abs(a.value - b.value) <= tolerance
    places = min(a.places, b.places)
    if a.is_fraction or places == 0:
        return False  # two fractions, or a whole number: exact
    return abs(a.value - b.value) <= min(tolerance, Fraction(1, 2 * 10**places))


def answers_equal(a: str | None, b: str | None) -> bool:
    """True when two extracted answers denote the same value. Graders pass the gold answer as
    ``b``, which math-verify reads as the reference (it is not symmetric)."""
    if a is None or b is None:
        return False
    na, nb = _plain_number(a), _plain_number(b)
    if na is not None and nb is not None:
        return _numbers_equal(na, nb)
    if normalize_answer(a) == normalize_answer(b):
        return True
    return symbolic_equal(b, a)  # math-verify's verify(gold, answer) is not symmetric


def is_correct(solution_text: str, gold_answer: str) -> bool:
    """Grade a whole solution against a gold final answer."""
    return answers_equal(extract_answer(solution_text), gold_answer)
