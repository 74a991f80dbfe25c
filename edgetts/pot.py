"""Program-aided math (program of thought): the policy writes a program, the sandbox runs it.

``pot``: N programs forked from one prefill; each runs in the sandbox; the last number it prints
is its answer. Programs that fail, time out or print no number are dropped (kept as candidates
without an answer), and the answers vote. ``cot+pot``: prose samples (the usual math prompt)
vote together with the programs. With a verifier (a StepScorer) every vote weighs its path's
score (weighted best-of-N), else one each.

Programs are scripts, run as ``__main__`` with the standard library only; they never run outside
:class:`~edgetts.sandbox.Sandbox`.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from edgetts.code.extract import code_blocks
from edgetts.code.task import ProgramGenerator, sample_replies
from edgetts.grading import normalize_answer
from edgetts.sandbox import RunResult, Sandbox
from edgetts.search.base import (
    DEFAULT_AGG,
    Candidate,
    Deadline,
    Sampling,
    SearchConfig,
    SearchResult,
    StepScorer,
    aggregate,
)
from edgetts.search.select import pick_by_vote, score_or_zero, score_paths, to_candidate

POT_SYSTEM = (
    "Solve the math problem by writing a short Python program. Reply with one ```python code block "
    "that computes the answer step by step and ends with print(answer), printing only the final number."
)
# A fraction first (a printed Fraction, "1/2"), then a number whose commas group thousands
# ("1,234"; the commas of "[1,2,3]" separate numbers: it was read as 123).
_NUMBER = re.compile(
    r"-?\d+/\d+(?!\d|\.\d)|-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d|,\d)"
    r"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+"
)


@dataclass(frozen=True)
class PotConfig:
    """``n_pot`` programs and, for cot+pot, ``n_cot`` prose samples; ``agg`` as in SearchConfig."""

    mode: str = "pot"
    n_pot: int = 4
    n_cot: int = 0
    agg: str = DEFAULT_AGG
    deadline_s: float | None = None
    cancel: threading.Event | None = field(default=None, repr=False, compare=False)
    sampling: Sampling | None = None  # None: the generator's own
    check_arithmetic: bool = SearchConfig.check_arithmetic  # prose samples with a wrong sum vote last

    def validate(self) -> None:
        """Raise ValueError with a user-facing message for impossible settings."""
        if self.mode not in ("pot", "cot+pot"):
            raise ValueError(f"unknown mode {self.mode!r} for programs; choose pot or cot+pot")
        if self.n_pot < 1:
            raise ValueError(f"n must be at least 1, got {self.n_pot}")
        if self.mode == "cot+pot" and self.n_cot < 1:
            raise ValueError("cot+pot needs at least one prose sample")


def program_of(reply: str) -> str | None:
    """The program in a reply: its first code block that parses, else None."""
    import ast

    for block in code_blocks(reply):
        try:
            ast.parse(block)
        except (SyntaxError, ValueError, RecursionError, MemoryError):  # deep nesting too
            continue
        if block.strip():
            return block
    return None


def printed_answer(run: RunResult) -> str | None:
    """The last number a program printed (None when it failed or printed none)."""
    if not run.ok:
        return None
    numbers = _NUMBER.findall(run.stdout)
    if not numbers:
        return None
    printed = numbers[-1].replace(",", "")
    if re.fullmatch(r"-?\d*\.\d+(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+", printed):
        # a float's binary noise (0.1 + 0.2 prints 0.30000000000000004): answers compare exactly
        printed = f"{float(printed):.12g}"
    return normalize_answer(printed)


def program_of_thought(
    question: str,
    generator: ProgramGenerator,
    sandbox: Sandbox,
    scorer: StepScorer | None,
    config: PotConfig,
) -> SearchResult:
    """Answer ``question`` by programs (and prose, for cot+pot); see the module docstring."""
    config.validate()
    deadline = Deadline(config.deadline_s, config.cancel)
    paths = sample_replies(generator, question, POT_SYSTEM, config.n_pot, deadline, config.sampling)
    prose = []
    if config.mode == "cot+pot" and not deadline.expired():
        root = generator.root(question, config.sampling)
        prose = generator.extend([root], config.n_cot, to_end=True, deadline=deadline)
        generator.release(prose)
    if scorer is not None:
        score_paths(scorer, question, paths + prose)
    start = time.perf_counter()
    runs: dict[str, RunResult] = {}
    candidates: list[Candidate] = []
    for path in paths:
        program = program_of(path.text)
        # past the deadline (or cancelled) no more programs start once one has run
        if program is not None and program not in runs and not (runs and deadline.expired()):
            runs[program] = sandbox.within(deadline.remaining_s()).run(program)
        answer = printed_answer(runs[program]) if program in runs else None
        candidates.append(
            Candidate(
                text=path.text,
                answer=answer,
                score=aggregate(path.scores, config.agg) if path.scores else None,
                step_scores=list(path.scores),
                n_tokens=path.n_tokens,
                stop_reason=path.stop_reason,
            )
        )
    sandbox_s = time.perf_counter() - start
    candidates += [to_candidate(p, config.agg, config.check_arithmetic) for p in prose]
    weighted = scorer is not None
    chosen, votes = pick_by_vote(candidates, score_or_zero if weighted else (lambda c: 1.0))
    return SearchResult(
        strategy=config.mode,
        answer=chosen.answer if chosen else None,
        chosen=chosen,
        candidates=candidates,
        votes=votes,
        cut_short=deadline.expired() or any(p.stop_reason == "deadline" for p in paths + prose),
        counters={
            "programs": len(paths),
            "programs_answered": sum(c.answer is not None for c in candidates[: len(paths)]),
            "sandbox_runs": len(runs),
            "sandbox_s": round(sandbox_s, 3),
        },
    )


# Prose that writes a program: only fenced Python counts (a fence-less reply is prose, not code).
_PYTHON_FENCE = re.compile(r"```(?:python|py|python3)\s*\n", re.IGNORECASE)


def run_written_programs(
    candidates: list[Candidate], sandbox: Sandbox, deadline: Deadline | None = None
) -> tuple[list[Candidate], int]:
    """``candidates`` with each prose solution's own program run; and how many programs ran.

    A prose solution that writes a Python block often states the block's output without running
    it, and a small model invents that output (``12.0`` where the code prints ``3.0``). Each
    distinct program (the first fenced Python block that parses) runs once in the sandbox. When it
    prints a number, that number is the candidate's answer: a real one (not provisional), and its
    written sums no longer count against it (the program did them). A program that fails or
    prints no number leaves its candidate as it was. Programs stop starting once ``deadline``
    expires.
    """
    runs: dict[str, RunResult] = {}
    out = []
    for cand in candidates:
        program = program_of(cand.text) if _PYTHON_FENCE.search(cand.text) else None
        if program is not None and program not in runs and not (deadline and deadline.expired()):
            runs[program] = sandbox.within(deadline.remaining_s() if deadline else math.inf).run(program)
        printed = printed_answer(runs[program]) if program in runs else None
        if printed is not None:
            cand = replace(cand, answer=printed, provisional=False, arithmetic_error=False)
        out.append(cand)
    return out, len(runs)


def answer_by_programs(
    result: SearchResult,
    sandbox: Sandbox,
    final_pick: Callable[[list[Candidate]], tuple[Candidate | None, dict[str, float]]],
    deadline: Deadline | None = None,
) -> SearchResult:
    """``result`` with its prose solutions' programs run (:func:`run_written_programs`) and
    ``final_pick`` (the strategy's own) made again; unchanged when no program ran. The counters
    gain ``programs_run`` and ``sandbox_s``."""
    start = time.perf_counter()
    candidates, ran = run_written_programs(result.candidates, sandbox, deadline)
    if not ran:
        return result
    chosen, votes = final_pick(candidates)
    sandbox_s = round(time.perf_counter() - start, 3)
    return replace(
        result,
        answer=chosen.answer if chosen else None,
        chosen=chosen,
        candidates=candidates,
        votes=votes,
        counters={**result.counters, "programs_run": ran, "sandbox_s": sandbox_s},
    )
