"""Code tasks: sample N programs from one prefill, run them in the sandbox, pick by behaviour.

The flow of :func:`solve_code`:

1. The policy gets the task (a signature with its docstring, or a plain request) under a coding
   instruction; N replies fork from one prefill of that prompt (``extend(..., to_end=True)``).
2. Each reply becomes a program (:func:`~edgetts.code.extract.extract_program`); the function
   to test is the task's entry point, or for a plain request the one most replies define.
3. With N > 1 the policy is asked once more, under a test-writing instruction, for ``assert``
   lines about that function: their pass/fail is the CodeT signal and their calls are the probe
   inputs for behaviour clusters.
4. Every distinct program runs once in the sandbox against the visible tests (the user's tests
   and the docstring examples), the generated asserts and the probe calls.
5. :func:`~edgetts.code.select.select_program` picks.

Only :class:`ProgramGenerator` (a StepGenerator whose prompt instruction can be set) and the
:class:`~edgetts.sandbox.Sandbox` are used, so everything but the model is testable with fakes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from edgetts.code.checks import docstring_checks
from edgetts.code.extract import (
    call_inputs,
    defined_functions,
    extract_program,
    generated_asserts,
    main_function,
)
from edgetts.code.select import Behaviour, select_program
from edgetts.sandbox import Check, RunResult, Sandbox
from edgetts.search import counters_of, spent_since
from edgetts.search.base import Deadline, Sampling, SolutionPath

CODE_SYSTEM = (
    "You are an expert Python programmer. Reply with one ```python code block containing the complete "
    "function, including the imports it needs. Do not add example usage."
)
TESTS_SYSTEM = (
    "You write unit tests for Python functions. Reply with one ```python code block of assert "
    "statements only, each calling the function on a different input. Do not implement the function."
)
Selection = Literal["exec", "majority", "first"]
SELECTIONS: tuple[str, ...] = ("exec", "majority", "first")


@runtime_checkable
class ProgramGenerator(Protocol):
    """A StepGenerator whose prompt instruction can be replaced (the llama.cpp policy is one)."""

    def root(
        self, question: str, sampling: Sampling | None = None, system: str | None = None
    ) -> SolutionPath: ...

    def extend(
        self, paths: list[SolutionPath], n_each: int, to_end: bool = False, deadline: Deadline | None = None
    ) -> list[SolutionPath]: ...

    def release(self, paths: list[SolutionPath]) -> None: ...


@dataclass(frozen=True)
class CodeTask:
    """What to write: ``prompt`` (a signature and docstring, or a plain request), the function
    the tests call (``entry_point``; None = the one the replies define) and the user's tests."""

    prompt: str
    entry_point: str | None = None
    tests: tuple[Check, ...] = ()

    @classmethod
    def from_prompt(cls, prompt: str, tests: tuple[Check, ...] = ()) -> CodeTask:
        """A task whose entry point is the last function the prompt declares (if it parses)."""
        names = defined_functions(prompt)
        return cls(prompt, names[-1] if names else None, tests)

    @property
    def has_signature(self) -> bool:
        return self.entry_point is not None and self.entry_point in defined_functions(self.prompt)

    def message(self) -> str:
        """The user message the policy sees."""
        if self.has_signature:
            return f"Complete the following Python function:\n```python\n{self.prompt.rstrip()}\n```"
        return self.prompt.strip()


@dataclass(frozen=True)
class CodeConfig:
    """How to search: ``n`` programs, how to pick, how many test-writing replies, probe cap."""

    n: int = 4
    selection: str = "exec"  # exec: tests + clusters; majority: biggest output cluster; first
    test_samples: int = 1
    max_generated: int = 20
    max_probes: int = 16
    use_docstring: bool = True
    deadline_s: float | None = None
    cancel: threading.Event | None = field(default=None, repr=False, compare=False)
    sampling: Sampling | None = None  # None: the generator's own (greedy: temperature 0)

    def validate(self) -> None:
        """Raise ValueError with a user-facing message for impossible settings."""
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; choose one of {SELECTIONS}")
        if self.test_samples < 0:
            raise ValueError(f"test_samples must be >= 0, got {self.test_samples}")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError(f"deadline_s must be positive, got {self.deadline_s}")


@dataclass
class CodeCandidate:
    """One sampled reply and what running it showed."""

    text: str
    program: str | None
    n_tokens: int
    stop_reason: str | None
    runnable: bool = False
    error: str | None = None  # why it did not run (no code, syntax error, crash, limit)
    visible: list[dict] = field(default_factory=list)  # {"name", "passed", "error"} per test
    generated: list[bool] = field(default_factory=list)  # each generated assert passed
    generated_passed: int = 0
    outputs: list[str] = field(default_factory=list)
    cluster: int | None = None  # index into CodeResult.clusters (ranked), None when not ranked


@dataclass
class CodeResult:
    """The pick, every candidate with its test results, the tests used and what it cost."""

    strategy: str
    entry_point: str | None
    program: str | None
    chosen: int | None
    candidates: list[CodeCandidate]
    visible_tests: list[str]
    generated_tests: list[str]
    probes: list[str]
    clusters: list[dict]
    cut_short: bool = False
    counters: dict[str, float] = field(default_factory=dict)


def sample_replies(
    generator: ProgramGenerator,
    message: str,
    system: str,
    n: int,
    deadline: Deadline,
    sampling: Sampling | None = None,
) -> list[SolutionPath]:
    """``n`` full replies to ``message`` forked from one prefill; their KV is released."""
    root = generator.root(message, sampling, system=system)
    paths = generator.extend([root], n, to_end=True, deadline=deadline)
    generator.release(paths)
    return paths


def solve_code(
    task: CodeTask, generator: ProgramGenerator, sandbox: Sandbox, config: CodeConfig
) -> CodeResult:
    """Write ``config.n`` programs for ``task``, run them, pick one (see the module docstring)."""
    config.validate()
    deadline = Deadline(config.deadline_s, config.cancel)
    before = counters_of(generator)
    start = time.perf_counter()
    paths = sample_replies(generator, task.message(), CODE_SYSTEM, config.n, deadline, config.sampling)
    context = task.prompt if task.has_signature else ""
    programs = [extract_program(p.text, context, task.entry_point) for p in paths]
    entry = task.entry_point or main_function(programs)

    visible = list(task.tests)
    if config.use_docstring and task.has_signature:
        visible += docstring_checks(task.prompt, entry)
    generated: list[str] = []
    wants_tests = config.selection != "first" and config.n > 1 and entry is not None
    if wants_tests and config.test_samples > 0 and not deadline.expired():
        generated = write_tests(task, entry, generator, config, deadline)
    probes: list[str] = []
    if wants_tests:
        doc_calls = [
            c.code.split("\n", 1)[0].removeprefix("__got = ") for c in visible if c.name.startswith("doc:")
        ]
        probes = call_inputs(doc_calls + generated, entry, config.max_probes)
    checks = tuple(visible) + tuple(Check(a, name=a) for a in generated)
    checks += tuple(Check(p, kind="eval", name=p) for p in probes)

    sandbox_start = time.perf_counter()
    runs: dict[str, RunResult] = {}
    for program in programs:
        if runs and deadline.expired():
            break  # past the deadline (or cancelled): the programs not run yet are not picked
        if program is not None and program not in runs:
            runs[program] = sandbox.within(deadline.remaining_s()).run(program, checks, run_name="candidate")
    sandbox_s = time.perf_counter() - sandbox_start

    candidates, behaviours = [], []
    for path, program in zip(paths, programs, strict=True):
        run = runs.get(program) if program is not None else None
        cand, behaviour = judge(path, program, run, entry, len(visible), len(generated))
        candidates.append(cand)
        behaviours.append(behaviour)

    if config.selection == "first" or config.n == 1:
        chosen = next((i for i, b in enumerate(behaviours) if b.runnable), None)
        ranked = []
    else:
        use_tests = config.selection == "exec"
        chosen, ranked = select_program(behaviours, use_visible=use_tests, use_generated=use_tests)
    for rank, cluster in enumerate(ranked):
        for i in cluster.members:
            candidates[i].cluster = rank
    if chosen is None:  # nothing ran: still show what the model wrote
        chosen = next((i for i, p in enumerate(programs) if p is not None), None)

    gen = spent_since(generator, before)
    wall_s = time.perf_counter() - start
    counters = {
        "tokens_prefilled": gen.get("tokens_prefilled", 0),
        "tokens_generated": gen.get("tokens_decoded", 0) - gen.get("tokens_redecoded", 0),
        "tokens_redecoded": gen.get("tokens_redecoded", 0),
        "policy_s": round(gen.get("seconds", 0.0), 3),
        "sandbox_runs": len(runs),
        "sandbox_s": round(sandbox_s, 3),
        "wall_s": round(wall_s, 3),
    }
    return CodeResult(
        strategy={"first": "greedy" if config.n == 1 else "first"}.get(config.selection, config.selection),
        entry_point=entry,
        program=programs[chosen] if chosen is not None else None,
        chosen=chosen,
        candidates=candidates,
        visible_tests=[c.name for c in visible],
        generated_tests=generated,
        probes=probes,
        clusters=[
            {
                "members": list(c.members),
                "visible_passed": c.visible_passed,
                "generated_passed": c.generated_passed,
                "support": c.support,
            }
            for c in ranked
        ],
        cut_short=deadline.expired() or any(p.stop_reason == "deadline" for p in paths),
        counters=counters,
    )


def write_tests(
    task: CodeTask, entry: str, generator: ProgramGenerator, config: CodeConfig, deadline: Deadline
) -> list[str]:
    """Assert statements the policy writes for ``entry`` (CodeT's generated tests), distinct, at
    most ``config.max_generated``."""
    signature = task.prompt.rstrip() if task.has_signature else f"{task.prompt.strip()}\n(function: {entry})"
    message = f"Write 6 assert statements that test `{entry}`:\n```python\n{signature}\n```"
    generated: list[str] = []
    replies = sample_replies(generator, message, TESTS_SYSTEM, config.test_samples, deadline, config.sampling)
    for reply in replies:
        for stmt in generated_asserts(reply.text, entry, config.max_generated):
            if stmt not in generated and len(generated) < config.max_generated:
                generated.append(stmt)
    return generated


def judge(
    path: SolutionPath,
    program: str | None,
    run: RunResult | None,
    entry: str | None,
    n_visible: int,
    n_generated: int,
) -> tuple[CodeCandidate, Behaviour]:
    """One reply as a candidate (what its program passed, printed, or why it did not run) and
    its behaviour for the vote. ``run``'s checks are the visible tests, then the generated ones,
    then the probe calls."""
    cand = CodeCandidate(path.text, program, path.n_tokens, path.stop_reason)
    if run is None:
        cand.error = "no function found in the reply" if entry else "no code found in the reply"
        return cand, Behaviour(runnable=False)
    visible = run.checks[:n_visible]
    generated = run.checks[n_visible : n_visible + n_generated]
    probes = run.checks[n_visible + n_generated :]
    cand.runnable = run.loaded and not run.timed_out and not run.output_capped
    cand.error = run.error
    cand.visible = [{"name": r.name, "passed": r.passed, "error": r.error} for r in visible]
    cand.generated = [r.passed for r in generated]
    cand.generated_passed = sum(cand.generated)
    cand.outputs = [r.value if r.passed else f"error: {(r.error or '').split(':')[0]}" for r in probes]
    behaviour = Behaviour(
        runnable=cand.runnable,
        visible=tuple(r.passed for r in visible),
        generated=tuple(cand.generated),
        outputs=tuple(cand.outputs),
    )
    return cand, behaviour
