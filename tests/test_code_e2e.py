"""The real default policy writes code and programs; the real sandbox runs them (slow: llama.cpp)."""

from __future__ import annotations

import pytest

from edgetts.code import CodeConfig, CodeTask, solve_code
from edgetts.pot import PotConfig, program_of_thought
from edgetts.sandbox import Sandbox

pytestmark = pytest.mark.slow

ADD = (
    'def add(a: int, b: int) -> int:\n    """Return the sum of a and b.\n    >>> add(2, 3)\n    5\n    """\n'
)


def test_policy_writes_a_function_that_passes_its_docstring(policy) -> None:
    result = solve_code(CodeTask.from_prompt(ADD), policy, Sandbox(), CodeConfig(n=2))
    assert result.program is not None and "def add" in result.program
    chosen = result.candidates[result.chosen]
    assert chosen.runnable and all(v["passed"] for v in chosen.visible), chosen
    assert result.generated_tests, "the policy wrote no asserts about add"
    assert result.counters["tokens_generated"] > 0 and result.counters["sandbox_runs"] >= 1


def test_policy_program_computes_the_answer(policy) -> None:
    result = program_of_thought("What is 15% of 240?", policy, Sandbox(), None, PotConfig(n_pot=2))
    assert result.answer == "36", [c.text for c in result.candidates]


def test_solver_runs_the_programs_prose_solutions_write() -> None:
    from edgetts.policy import PolicyConfig
    from edgetts.solver import SolveOptions, Solver

    question = "Use a short Python program to compute 15% of 240, then give the final answer."
    options = SolveOptions(strategy="majority", n=2, max_tokens=256, run_programs=True, adaptive=False)
    with Solver(PolicyConfig(n_seq_max=2, max_tokens=256), sandbox=Sandbox()) as solver:
        result = solver.solve(question, options)
    texts = [c.text for c in result.candidates]
    assert result.answer == "36", texts
    if any("```python" in t for t in texts):  # the policy wrote code: the sandbox ran it
        assert result.counters["programs_run"] >= 1, texts
