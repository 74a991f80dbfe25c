"""Code tasks and program-aided math: extraction, checks, selection, and the whole flow over a
scripted generator with the real sandbox (no model)."""

from __future__ import annotations

import pytest
from fakes import FakeSession, GenCounters, n_tokens

from edgetts.code import CodeConfig, CodeTask, solve_code
from edgetts.code.checks import docstring_checks, file_checks, hidden_check
from edgetts.code.extract import (
    call_inputs,
    code_blocks,
    extract_program,
    generated_asserts,
    main_function,
)
from edgetts.code.select import Behaviour, select_program
from edgetts.code.task import CODE_SYSTEM, TESTS_SYSTEM
from edgetts.pot import POT_SYSTEM, PotConfig, printed_answer, program_of, program_of_thought
from edgetts.sandbox import Limits, Sandbox
from edgetts.search.base import Deadline, SolutionPath

PROMPT = '''from typing import List


def helper(x: int) -> int:
    return x


def add_all(xs: List[int]) -> int:
    """Sum the list.
    >>> add_all([1, 2, 3])
    6
    >>> add_all([])
    0
    """
'''

GOOD = "```python\ndef add_all(xs):\n    return sum(helper(x) for x in xs)\n\nprint(add_all([1]))\n```"
WRONG = "```python\ndef add_all(xs):\n    return len(xs)\n```"  # agrees with itself, fails the doc
LOOP = "```python\ndef add_all(xs):\n    while True:\n        pass\n```"
TESTS_REPLY = (
    "```python\nassert add_all([1, 1]) == 2\nassert add_all([5]) == 5\nassert add_all([2, 2, 2]) == 6\n```"
)


class ScriptedGenerator:
    """Replies by instruction: child i of a root gets ``script[system][i % len]``."""

    def __init__(self, script: dict[str | None, list[str]]) -> None:
        self.script = script
        self.counters = GenCounters()
        self.roots: list[tuple[str | None, str]] = []
        self.sessions_closed = 0

    def root(self, question: str, sampling=None, system: str | None = None) -> SolutionPath:
        self.roots.append((system, question))
        self.counters.tokens_prefilled += n_tokens(question)
        return SolutionPath(handle=system)

    def extend(self, paths, n_each, to_end=False, deadline=None):
        out = []
        for path in paths:
            replies = self.script[path.handle]
            for i in range(n_each):
                text = replies[i % len(replies)]
                self.counters.tokens_decoded += n_tokens(text)
                path = SolutionPath(steps=[text], finished=True, stop_reason="eos", n_tokens=n_tokens(text))
                out.append(path)
        return out

    def release(self, paths) -> None:
        pass

    def session(self, counters=None, deadline=None) -> FakeSession:
        return FakeSession(self)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    box = Sandbox(Limits(wall_s=3.0, cpu_s=2, check_s=1.0))
    if box.isolation().weak:
        pytest.skip("no sandbox on this machine")
    return box


# -- extraction ---------------------------------------------------------------------------------


def test_code_blocks_prefers_python_and_reads_unclosed_fences() -> None:
    assert code_blocks("text\n```python\nx = 1\n```\n```bash\nls\n```") == ["x = 1\n"]
    assert code_blocks("```python\ndef f():\n    return 1\n") == ["def f():\n    return 1\n"]
    assert code_blocks("def f(): pass") == ["def f(): pass"]


def test_extract_program_keeps_prompt_helpers_and_drops_example_usage() -> None:
    program = extract_program(GOOD, PROMPT, "add_all")
    assert "from typing import List" in program and "def helper" in program
    assert "print(" not in program
    assert extract_program("no code here, sorry", PROMPT, "add_all") is None
    assert extract_program("```python\ndef other():\n    return 1\n```", PROMPT, "add_all") is None


def test_extract_program_accepts_a_body_continuation() -> None:
    program = extract_program("    return sum(xs)\n", PROMPT, "add_all")
    assert program is not None and "return sum(xs)" in program


def test_extract_program_drops_main_guard() -> None:
    reply = "```python\ndef f(x):\n    return x\n\nif __name__ == '__main__':\n    f(input())\n```"
    program = extract_program(reply, "", None)
    assert "__main__" not in program and "def f" in program


def test_what_a_review_of_extraction_found() -> None:
    """A reply beginning with a __future__ import was put after the prompt's imports (it did not
    compile); decorators were dropped (@lru_cache, @dataclass); an example assignment calling
    the function ran as the program loaded; a fence with more than a language on its line, or
    with CRLF line ends, lost its block."""
    reply = (
        "```python\nfrom __future__ import annotations\nfrom functools import lru_cache\n\n"
        "@lru_cache(maxsize=None)\ndef add_all(xs):\n    return sum(xs)\n\n"
        "result = add_all([1])\nLIMIT = 10**9 + 7\n```"
    )
    program = extract_program(reply, PROMPT, "add_all")
    assert program.startswith("from __future__ import annotations\n")
    compile(program, "<test>", "exec")
    assert "@lru_cache(maxsize=None)\ndef add_all" in program
    assert "result =" not in program and "LIMIT = 10**9 + 7" in program
    # a line separator inside a string before it (diff review: str.splitlines counted it)
    odd = '```python\ns = "a\u2028b\x0cc"\n\n@lru_cache(maxsize=None)\ndef add_all(xs):\n    return 1\n```'
    assert "@lru_cache(maxsize=None)\ndef add_all" in extract_program(odd, PROMPT, "add_all")
    for fence in ('```python title="f.py"\n', "```python\r\n"):
        program = extract_program(fence + "def add_all(xs):\n    return sum(xs)\n```", PROMPT, "add_all")
        assert program is not None and "return sum(xs)" in program


def test_generated_asserts_and_probe_inputs() -> None:
    reply = TESTS_REPLY + "\n```python\nassert other(1) == 1\nassert add_all([1, 1]) == 2\n```"
    asserts = generated_asserts(reply, "add_all")
    assert asserts == [
        "assert add_all([1, 1]) == 2",
        "assert add_all([5]) == 5",
        "assert add_all([2, 2, 2]) == 6",
    ]
    assert call_inputs(asserts, "add_all") == ["add_all([1, 1])", "add_all([5])", "add_all([2, 2, 2])"]
    # A block cut mid-way still yields its complete lines.
    assert generated_asserts("```python\nassert add_all([]) == 0\nassert add_all([1", "add_all") == [
        "assert add_all([]) == 0"
    ]


def test_main_function_is_the_most_common_last_definition() -> None:
    progs = ["def a():\n    pass\ndef rev(s):\n    return s[::-1]\n", "def rev(s):\n    return s\n", None]
    assert main_function(progs) == "rev"


# -- checks -------------------------------------------------------------------------------------


def test_docstring_checks_run_against_right_and_wrong_programs(sandbox: Sandbox) -> None:
    checks = docstring_checks(PROMPT, "add_all")
    assert [c.name for c in checks] == ["doc: add_all([1, 2, 3]) -> 6", "doc: add_all([]) -> 0"]
    right = sandbox.run(extract_program(GOOD, PROMPT, "add_all"), checks, run_name="candidate")
    wrong = sandbox.run(extract_program(WRONG, PROMPT, "add_all"), checks, run_name="candidate")
    assert [c.passed for c in right.checks] == [True, True]
    assert [c.passed for c in wrong.checks] == [False, True]


def test_docstring_arrow_examples() -> None:
    prompt = 'def f(x):\n    """Double.\n    f(2) ➞ 4\n    f(0) == 0\n    """\n'
    assert [c.name for c in docstring_checks(prompt, "f")] == ["doc: f(2) ➞ 4", "doc: f(0) == 0"]


def test_docstring_examples_as_humaneval_writes_them(sandbox: Sandbox) -> None:
    """Seen on HumanEval/0-81: 6 canonical solutions failed their own docstring checks."""
    prompt = (
        'def f(x, y=0):\n    """Examples.\n'
        "    f(n) == f(n-1) + 1\n"  # a recurrence, not an example (fib4, fibfib)
        "    f(abc) => False\n"  # a string without its quotes (is_happy)
        "    f(1, 4) => true\n"  # another language's true (is_simple_power)
        "    f(2) ==> 3\n"  # a long arrow (iscube)
        "    f(5, 19) ->19 - 5 - 6 = 8\n"  # a worked answer (fruit_distribution)
        "    >>> round(f(7), 2)\n    1.5\n"  # functions called on written values (find_zero)
        '    """\n'
    )
    checks = docstring_checks(prompt, "f")
    assert [c.name.split(" ", 2)[1] for c in checks] == ["round(f(7),", "f(1,", "f(2)", "f(5,"]
    program = "def f(x, y=0):\n    return {1: True, 2: 3, 5: 8, 7: 1.499}[x]\n"
    assert [c.passed for c in sandbox.run(program, checks, run_name="candidate").checks] == [True] * 4


def test_file_checks(sandbox: Sandbox) -> None:
    text = (
        "import math\n\ndef near(a, b):\n    return math.isclose(a, b)\n\n"
        "assert near(add_all([1]), 1)\n\ndef test_two():\n    assert add_all([1, 1]) == 2\n"
    )
    checks = file_checks(text, "t.py")
    assert [c.name for c in checks] == ["t.py:6: assert near(add_all([1]), 1)", "t.py:8: test_two"]
    run = sandbox.run(extract_program(GOOD, PROMPT, "add_all"), checks, run_name="candidate")
    assert run.passed_all
    with pytest.raises(ValueError, match="t.py: line 1"):
        file_checks("assert (", "t.py")
    with pytest.raises(ValueError, match="no assert"):
        file_checks("x = 1\n", "t.py")


def test_hidden_check(sandbox: Sandbox) -> None:
    test = "def check(candidate):\n    assert candidate([2, 3]) == 5\n"
    assert sandbox.run(extract_program(GOOD, PROMPT, "add_all"), [hidden_check(test, "add_all")]).passed_all
    assert not sandbox.run(
        extract_program(WRONG, PROMPT, "add_all"), [hidden_check(test, "add_all")]
    ).passed_all


# -- selection ----------------------------------------------------------------------------------


def _b(outputs, visible=(), generated=(), score=None, runnable=True) -> Behaviour:
    return Behaviour(runnable, tuple(visible), tuple(generated), tuple(outputs), score)


def test_visible_tests_filter_before_agreement() -> None:
    behaviours = [_b(["1"], [False]), _b(["1"], [False]), _b(["1"], [False]), _b(["2"], [True])]
    chosen, ranked = select_program(behaviours)
    assert chosen == 3  # the only one passing the visible test beats a bigger cluster
    chosen, _ = select_program(behaviours, use_visible=False, use_generated=False)
    assert chosen == 0  # majority of outputs: the biggest cluster


def test_codet_score_is_size_times_generated_tests_passed() -> None:
    a = _b(["x"], generated=[True, False, False])  # cluster of 3 passing 1 test: 3
    b = _b(["y"], generated=[True, True, True])  # cluster of 2 passing 3 tests: 6
    chosen, ranked = select_program([a, a, a, b, b])
    assert chosen == 3 and [c.support for c in ranked] == [6.0, 3.0]


def test_ties_go_to_the_better_score_then_the_earliest() -> None:
    behaviours = [_b(["1"], score=0.2), _b(["2"], score=0.9)]
    assert select_program(behaviours)[0] == 1
    assert select_program([_b(["1"]), _b(["2"])])[0] == 0


def test_nothing_runnable() -> None:
    assert select_program([_b([], runnable=False)]) == (None, [])


# -- the whole flow -----------------------------------------------------------------------------


def test_solve_code_picks_the_program_that_passes_visible_tests(sandbox: Sandbox) -> None:
    gen = ScriptedGenerator({CODE_SYSTEM: [WRONG, LOOP, GOOD, WRONG, "no code"], TESTS_SYSTEM: [TESTS_REPLY]})
    task = CodeTask.from_prompt(PROMPT)
    result = solve_code(task, gen, sandbox, CodeConfig(n=5))
    assert task.entry_point == "add_all"
    assert result.chosen == 2 and "sum(" in result.program
    assert result.generated_tests[0] == "assert add_all([1, 1]) == 2"
    loop, none = result.candidates[1], result.candidates[4]
    assert not loop.runnable or all(not v["passed"] for v in loop.visible)
    assert none.program is None and none.error
    assert result.counters["sandbox_runs"] == 3  # distinct programs only
    assert result.counters["tokens_generated"] > 0
    # The policy saw the task under the coding instruction, then the test-writing one.
    assert [s for s, _ in gen.roots] == [CODE_SYSTEM, TESTS_SYSTEM]


def test_the_deadline_bounds_the_programs_run_too(sandbox: Sandbox) -> None:
    """Seen in review: only generation looked at the deadline; three programs that each ran to
    the sandbox's wall limit took three times it, past a 1 s deadline."""
    loops = [LOOP.replace("pass", f"x = {i}") for i in range(3)]
    gen = ScriptedGenerator({CODE_SYSTEM: loops, TESTS_SYSTEM: [TESTS_REPLY]})
    result = solve_code(CodeTask.from_prompt(PROMPT), gen, sandbox, CodeConfig(n=3, deadline_s=1.0))
    assert result.counters["sandbox_runs"] == 1 and result.cut_short
    # the one run stops with the deadline too, not at the sandbox's wall limit (3 s)
    assert result.counters["wall_s"] < 2.5 and "timed out after 1s" in result.candidates[0].error


def test_solve_code_majority_ignores_tests(sandbox: Sandbox) -> None:
    gen = ScriptedGenerator({CODE_SYSTEM: [WRONG, GOOD, WRONG], TESTS_SYSTEM: [TESTS_REPLY]})
    result = solve_code(CodeTask.from_prompt(PROMPT), gen, sandbox, CodeConfig(n=3, selection="majority"))
    assert result.chosen == 0 and "len(" in result.program


def test_solve_code_greedy_asks_for_no_tests(sandbox: Sandbox) -> None:
    gen = ScriptedGenerator({CODE_SYSTEM: [GOOD]})
    result = solve_code(CodeTask.from_prompt(PROMPT), gen, sandbox, CodeConfig(n=1, selection="first"))
    assert result.chosen == 0 and result.strategy == "greedy" and not result.generated_tests
    assert len(gen.roots) == 1


def test_plain_request_finds_its_function(sandbox: Sandbox) -> None:
    reply = "```python\ndef reverse(s):\n    return s[::-1]\n```"
    tests_reply = "```python\nassert reverse('ab') == 'ba'\n```"
    gen = ScriptedGenerator({CODE_SYSTEM: [reply], TESTS_SYSTEM: [tests_reply]})
    task = CodeTask.from_prompt("Write a function that reverses a string.")
    result = solve_code(task, gen, sandbox, CodeConfig(n=2))
    assert task.entry_point is None and result.entry_point == "reverse"
    assert result.candidates[0].generated_passed == 1


def test_code_config_validation() -> None:
    with pytest.raises(ValueError, match="selection"):
        CodeConfig(selection="best").validate()
    with pytest.raises(ValueError, match="n must"):
        CodeConfig(n=0).validate()


# -- program-aided math --------------------------------------------------------------------------


def test_program_of_and_printed_answer(sandbox: Sandbox) -> None:
    assert program_of("```python\nprint(2 +\n```\n```python\nprint(1)\n```") == "print(1)\n"
    assert program_of("no program") is None or program_of("no program") == "no program"
    assert printed_answer(sandbox.run("print('The answer is 1,234.0')")) == "1234"
    assert printed_answer(sandbox.run("print('none')")) is None
    # seen in review: a list's commas joined its numbers (123) and a Fraction read as its denominator
    assert printed_answer(sandbox.run("print([1,2,3])")) == "3"
    assert printed_answer(sandbox.run("print('Total: 1,234, done')")) == "1234"  # (diff review)
    assert printed_answer(sandbox.run("print('It is 3/4.')")) == "3/4"
    assert printed_answer(sandbox.run("from fractions import Fraction\nprint(Fraction(1, 2))")) == "1/2"
    assert printed_answer(sandbox.run("print(5)\nraise SystemExit(3)")) is None
    # a float's binary noise goes: answers compare exactly since stop 48
    assert printed_answer(sandbox.run("print(0.1 + 0.2)")) == "0.3"
    assert printed_answer(sandbox.run("print(36 / 3 * 1.1 / 1.1)")) == "12"
    assert printed_answer(sandbox.run("print(10 ** 16 * 1.0)")) == "10000000000000000"


def test_pot_votes_over_programs_that_ran(sandbox: Sandbox) -> None:
    progs = [
        "```python\nprint(6 * 7)\n```",
        "```python\nx = 1 / 0\nprint(x)\n```",  # crashes: dropped
        "```python\nprint(40 + 2)\n```",
        "```python\nprint(7)\n```",
        "```python\nwhile True:\n    pass\n```",  # times out: dropped
    ]
    gen = ScriptedGenerator({POT_SYSTEM: progs})
    result = program_of_thought("q", gen, sandbox, None, PotConfig(mode="pot", n_pot=5))
    assert result.answer == "42" and result.votes == {"42": 2.0, "7": 1.0}
    assert [c.answer for c in result.candidates] == ["42", None, "42", "7", None]
    assert result.counters["programs_answered"] == 3


def test_the_deadline_bounds_program_of_thoughts_runs() -> None:
    """Seen in review: program of thought ran every program to the sandbox's wall limit (here
    10 s each), whatever the deadline."""
    box = Sandbox(Limits(wall_s=10.0, cpu_s=10, check_s=1.0))
    if box.isolation().weak:
        pytest.skip("no sandbox on this machine")
    loops = [f"```python\nx = {i}\nwhile True:\n    pass\n```" for i in range(3)]
    gen = ScriptedGenerator({POT_SYSTEM: loops})
    result = program_of_thought("q", gen, box, None, PotConfig(mode="pot", n_pot=3, deadline_s=1.0))
    assert result.counters["sandbox_runs"] == 1 and result.counters["sandbox_s"] < 5
    assert result.answer is None and result.cut_short


def test_cot_plus_pot_votes_together(sandbox: Sandbox) -> None:
    gen = ScriptedGenerator(
        {
            POT_SYSTEM: ["```python\nprint(7)\n```"],
            None: ["so \\boxed{42}", "thus \\boxed{42}"],
        }
    )
    result = program_of_thought("q", gen, sandbox, None, PotConfig(mode="cot+pot", n_pot=1, n_cot=2))
    assert result.answer == "42" and result.votes == {"7": 1.0, "42": 2.0}
    assert [s for s, _ in gen.roots] == [POT_SYSTEM, None]


def test_prose_answers_by_the_programs_it_writes(sandbox: Sandbox) -> None:
    from fakes import FakeGenerator, tree_policy

    from edgetts.pot import answer_by_programs
    from edgetts.search.base import SearchConfig
    from edgetts.search.majority import majority
    from edgetts.search.registry import REGISTRY

    invented = "```python\nprint(9 - 2 / 3 * 9)\n```\n```output\n12.0\n```\nSo \\boxed{12}."
    tree = {
        invented: {},  # the program prints 3.0: the written 12 was invented
        "9 - 6 = 12, so \\boxed{12}.": {},  # a false sum: votes last
        "So \\boxed{12}.": {},  # prose without a program keeps its answer
        invented + " ": {},  # the same program again: it runs once
        "```python\nx = 1\n```\nSo \\boxed{12}.": {},  # prints nothing: keeps its answer
    }
    config = SearchConfig(n=5)
    result = majority("q", FakeGenerator(tree_policy(tree)), None, config)
    assert result.answer == "12" and result.votes == {"12": 4.0}
    pick = REGISTRY["majority"].final_pick
    ran = answer_by_programs(result, sandbox, lambda cands: pick(cands, config))
    assert [c.answer for c in ran.candidates] == ["3", "12", "12", "3", "12"]
    assert ran.answer == "3" and ran.votes == {"3": 2.0, "12": 2.0}  # a tie: the earliest answer
    assert ran.counters["programs_run"] == 2 and result.answer == "12"  # the input is not changed
    expired = Deadline(0.0)
    assert answer_by_programs(result, sandbox, lambda cands: pick(cands, config), expired) is result
    # The solver re-picks by the rule of the strategy that ran, auto's continuation included.
    from edgetts.solver import Solver

    result.strategy = "auto:majority"
    via_solver = Solver(sandbox=sandbox)._answer_by_programs(result, config, Deadline(None))
    assert via_solver.answer == "3" and via_solver.strategy == "auto:majority"


# -- wiring: no model needed ---------------------------------------------------------------------


def test_solver_without_a_sandbox_refuses_model_written_code() -> None:
    from edgetts.solver import SolveOptions, Solver

    solver = Solver()  # no sandbox: nothing loads before the refusal
    with pytest.raises(ValueError, match="no sandbox"):
        solver.solve_code(CodeTask.from_prompt(PROMPT), SolveOptions(strategy="exec"))
    with pytest.raises(ValueError, match="no sandbox"):
        solver.solve("What is 2 + 2?", SolveOptions(mode="pot", strategy="majority"))
    with pytest.raises(ValueError, match="no sandbox"):
        solver.solve("What is 2 + 2?", SolveOptions(strategy="majority", run_programs=True))
    with pytest.raises(ValueError, match="prose solutions"):
        SolveOptions(mode="pot", strategy="majority", run_programs=True).validate()
    assert solver._policy is None


def test_load_code_problems_reads_gzip_and_checks_fields(tmp_path) -> None:
    import gzip
    import json

    from edgetts.data import DataError, load_code_problems

    path = tmp_path / "he.jsonl.gz"
    rows = [
        {"task_id": "T/0", "prompt": PROMPT, "test": "def check(c):\n    pass\n", "entry_point": "add_all"},
        {"prompt": "Write hello world."},
    ]
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    problems = load_code_problems(path)
    assert [(p.id, p.entry_point, p.test is not None) for p in problems] == [
        ("T/0", "add_all", True),
        ("2", None, False),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "test": "assert 1"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:1: a 'test' needs the 'entry_point'"):
        load_code_problems(bad)


def test_text_nested_too_deeply_to_parse_is_no_program_not_a_crash():
    from edgetts.code.extract import defined_functions
    from edgetts.pot import program_of

    assert defined_functions("-" * 200000 + "1") == []
    assert defined_functions("x" + ".a" * 200000) == []
    assert program_of("```python\n" + "(" * 100000 + "\n```") is None
