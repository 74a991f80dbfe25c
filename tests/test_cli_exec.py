"""edgetts solve/run --task code, --mode pot: bad input ends with ``Error: ...`` before a model loads."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgetts.cli import _show_code, main
from edgetts.code.task import CodeCandidate, CodeResult


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["solve", "--task", "code", "def f(x):\n    pass", "--strategy", "beam_search"],
            "for code tasks choose",
        ),
        (["solve", "--task", "code", "def f(x):\n    pass", "--mode", "pot"], "mode is for math"),
        (["solve", "--task", "code", "def f(x):\n    pass", "--run-programs"], "run_programs is for math"),
        (["solve", "What is 2+2?", "--mode", "pot", "--run-programs"], "for prose solutions"),
        (
            ["solve", "--task", "code", "def f(x):\n    pass", "--tests", "/no/such/tests.py"],
            "cannot read tests",
        ),
        (["solve", "What is 2+2?", "--mode", "pot", "--strategy", "best_of_n"], "votes over programs"),
        (["solve", "What is 2+2?", "--tests", "t.py"], "--tests is for --task code"),
        # seen in review: recorded in the results and did nothing
        (["solve", "--task", "code", "def f(x):\n    pass", "--memory-mb", "900"], "no plan"),
    ],
)
def test_bad_code_options_fail_clearly(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert message in result.output, result.output


def test_bad_tests_file_names_its_line(tmp_path) -> None:
    tests = tmp_path / "t.py"
    tests.write_text("assert f(1) ==\n")
    result = CliRunner().invoke(
        main, ["solve", "--task", "code", "def f(x):\n    pass", "--tests", str(tests)]
    )
    assert result.exit_code == 1 and "Error:" in result.output and "line 1" in result.output


def test_run_code_rejects_rows_without_a_prompt(tmp_path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"prompt": "def f():\n", "test": "", "entry_point": "f"}) + "\n" + '{"q": 1}\n'
    )
    result = CliRunner().invoke(
        main, ["run", "--task", "code", "--data", str(data), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1 and "d.jsonl:2: no 'prompt'" in result.output


def test_sandbox_command_reports_isolation() -> None:
    result = CliRunner().invoke(main, ["sandbox"])
    assert result.exit_code == 0 and "network cut off" in result.output


def test_show_code_lists_tests_per_candidate(capsys) -> None:
    good = CodeCandidate(
        "t",
        "def f(): ...",
        10,
        "eos",
        True,
        None,
        [{"name": "doc: f() -> 1", "passed": True, "error": None}],
        [True, False],
        1,
        ["'1'"],
        0,
    )
    bad = CodeCandidate("t", None, 7, "eos", False, "no function found in the reply")
    result = CodeResult(
        "exec",
        "f",
        "def f(): ...",
        0,
        [good, bad],
        ["doc: f() -> 1"],
        ["assert f() == 1", "assert f() == 2"],
        ["f()"],
        [],
        counters={
            "tokens_prefilled": 5,
            "tokens_generated": 17,
            "sandbox_runs": 1,
            "sandbox_s": 0.08,
            "wall_s": 2.0,
        },
    )
    _show_code(result)
    out = capsys.readouterr().out  # asked-for output, as solve --show's for math (seen on stderr)
    assert "1. visible 1/1, generated 1/2, cluster 0, 10 tokens  <- chosen" in out
    assert "2. fails: no function found in the reply" in out
    assert "sandbox: 1 runs, 0.08 s of 2.0 s" in out


def test_solve_code_and_pot_end_to_end_with_a_scripted_policy(monkeypatch, tmp_path) -> None:
    """The CLI's whole path (solver, sandbox, output) with a scripted policy in place of llama.cpp."""

    import edgetts.solver
    from edgetts.code.task import CODE_SYSTEM, TESTS_SYSTEM
    from edgetts.pot import POT_SYSTEM
    from edgetts.sandbox import Sandbox

    if Sandbox().isolation().weak:
        pytest.skip("no sandbox on this machine")
    test_code = pytest.importorskip("test_code")
    script = {
        CODE_SYSTEM: [test_code.WRONG, test_code.GOOD, test_code.WRONG],
        TESTS_SYSTEM: [test_code.TESTS_REPLY],
        POT_SYSTEM: [
            "```python\nprint(6 * 7)\n```",
            "```python\nprint(41)\n```",
            "```python\nprint(42)\n```",
        ],
    }

    def fake_policy(config):
        gen = test_code.ScriptedGenerator(script)
        gen.config = config  # stands for a policy loaded with these settings
        gen.close = lambda: None
        return gen

    monkeypatch.setattr(edgetts.solver, "LlamaPolicy", fake_policy)
    result = CliRunner().invoke(main, ["solve", "--task", "code", test_code.PROMPT, "-n", "3", "--show"])
    assert result.exit_code == 0, result.output
    assert "return sum(helper(x) for x in xs)" in result.stdout and "len(xs)" not in result.stdout
    assert "2. visible 2/2, generated 3/3, cluster 0" in result.stdout and "<- chosen" in result.stdout
    assert "failed: doc: add_all([1, 2, 3]) -> 6" in result.stdout
    data, out = tmp_path / "he.jsonl", tmp_path / "out.jsonl"
    row = {
        "task_id": "T/0",
        "prompt": test_code.PROMPT,
        "entry_point": "add_all",
        "test": "def check(candidate):\n    assert candidate([4, 5]) == 9\n",
    }
    data.write_text(json.dumps(row) + "\n")
    result = CliRunner().invoke(
        main, ["run", "--task", "code", "--data", str(data), "--out", str(out), "-n", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "pass@1: 1/1" in result.stdout
    record = json.loads(out.read_text())
    assert record["id"] == "T/0" and record["correct"] is True
    assert [c["correct"] for c in record["candidates"]] == [False, True, False]
    assert record["settings"]["task"] == "code" and record["settings"]["n"] == 3
    result = CliRunner().invoke(  # a resume with another N is refused, the row kept
        main, ["run", "--task", "code", "--data", str(data), "--out", str(out), "-n", "4"]
    )
    assert result.exit_code == 1 and "n was 3, now 4" in result.output
    assert json.loads(out.read_text()) == record
    result = CliRunner().invoke(  # resumed: nothing to do, and --json prints one object
        main, ["run", "--task", "code", "--data", str(data), "--out", str(out), "-n", "3", "--json"]
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["accuracy"] == 1.0
    result = CliRunner().invoke(
        main, ["solve", "What is 6 * 7?", "--mode", "pot", "--strategy", "majority", "-n", "3"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "42"


def test_run_code_skips_a_prompt_too_long_and_goes_on(monkeypatch, tmp_path) -> None:
    """Seen in review: run --task code ended at the first prompt over --max-prompt-tokens (a
    resume stopped there again); it is skipped by name now, as run does for math, exit 1."""
    import edgetts.solver
    from edgetts.code.task import CODE_SYSTEM, TESTS_SYSTEM
    from edgetts.policy.config import PromptTooLong
    from edgetts.sandbox import Sandbox

    if Sandbox().isolation().weak:
        pytest.skip("no sandbox on this machine")
    test_code = pytest.importorskip("test_code")

    class Scripted(test_code.ScriptedGenerator):
        def root(self, question, sampling=None, system=None):
            if "HUGE" in question:
                raise PromptTooLong("the question is too long: its prompt has 9999 tokens")
            return super().root(question, sampling, system)

    def fake_policy(config):
        gen = Scripted({CODE_SYSTEM: [test_code.GOOD], TESTS_SYSTEM: [test_code.TESTS_REPLY]})
        gen.config, gen.close = config, lambda: None
        return gen

    monkeypatch.setattr(edgetts.solver, "LlamaPolicy", fake_policy)
    data, out = tmp_path / "he.jsonl", tmp_path / "out.jsonl"
    rows = [
        {"task_id": "T/0", "prompt": test_code.PROMPT + "# HUGE\n", "entry_point": "add_all"},
        {"task_id": "T/1", "prompt": test_code.PROMPT, "entry_point": "add_all"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(
        main, ["run", "--task", "code", "--data", str(data), "--out", str(out), "-n", "1"]
    )
    assert result.exit_code == 1 and "1 problem(s) skipped" in result.output and "T/0" in result.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["T/1"]


def test_a_resume_after_the_tests_file_changed_is_refused(tmp_path) -> None:
    """Seen in review: run --task code recorded --tests by its path only, so a resume after the
    file was edited went on silently with other visible tests."""
    from edgetts.cli import _run_settings, run

    tests = tmp_path / "t.py"
    tests.write_text("assert add(1, 2) == 3\n")
    data, out = tmp_path / "he.jsonl", tmp_path / "out.jsonl"
    data.write_text(json.dumps({"task_id": "T/0", "prompt": "def add(a, b):\n", "entry_point": "add"}) + "\n")
    args = ["--task", "code", "--data", str(data), "--out", str(out), "--tests", str(tests)]
    settings = _run_settings(run.make_context("run", list(args)).params, {"file": data.name})
    row = {"id": "T/0", "correct": None, "candidates": [], "settings": settings}
    out.write_text(json.dumps(row) + "\n")
    tests.write_text("assert add(1, 2) == 4\n")
    result = CliRunner().invoke(main, ["run", *args])
    assert result.exit_code == 1 and "other settings (tests_sha256 was" in result.output, result.output
    assert json.loads(out.read_text()) == row
