"""edgetts solve --show: what a user sees of a result (no model needed)."""

import json

import pytest
from click.testing import CliRunner

from edgetts.cli import _show, main
from edgetts.search.base import Candidate, SearchResult


def test_show_lists_every_candidate_and_the_cost(capsys):
    right = Candidate("3 * 7 = 21\n\n\\boxed{21}", "21", 0.9, [0.8, 0.9], 12, "eos")
    wrong = Candidate("3 + 7 = 10\n\n\\boxed{10}", "10", 0.2, [0.2, 0.4], 11, "eos")
    result = SearchResult(
        "best_of_n",
        "21",
        right,
        [wrong, right],
        votes={},
        counters={
            "tokens_prefilled": 40,
            "tokens_decoded": 23,
            "tokens_redecoded": 0,
            "tokens_generated": 23,
            "prm_calls": 1,
            "prm_steps_scored": 4,
            "policy_s": 1.5,
            "prm_s": 0.01,
            "other_s": 0.02,
            "wall_s": 1.53,
        },
    )
    _show(result)
    out = capsys.readouterr().out
    assert "strategy: best_of_n" in out and "step scores: 0.80 0.90" in out
    assert "1. answer 10  score 0.20  11 tokens\n" in out
    assert "2. answer 21  score 0.90  12 tokens  <- chosen" in out
    assert "40 prefilled, 23 generated; PRM: 1 calls, 4 steps" in out
    assert "time: 1.5 s = policy 1.5 + PRM 0.01 + other 0.02" in out


def test_show_tells_tokens_decoded_again_in_waves(capsys):
    chosen = Candidate("\\boxed{21}", "21", 0.9, [0.9], 5, "eos")
    result = SearchResult(
        "beam_search",
        "21",
        chosen,
        [chosen],
        votes={},
        counters={
            "tokens_prefilled": 40,
            "tokens_decoded": 90,
            "tokens_redecoded": 30,
            "tokens_generated": 60,
        },
    )
    _show(result)
    assert "40 prefilled, 60 generated (+30 decoded again: paths ran in waves);" in capsys.readouterr().out


def test_strategy_is_a_closed_choice():
    from click.testing import CliRunner

    from edgetts.cli import main

    result = CliRunner().invoke(main, ["solve", "What is 2+3?", "--strategy", "magic"])
    assert result.exit_code == 2 and "'magic' is not one of 'auto', 'greedy'" in result.output


def test_question_from_stdin_or_a_clear_usage_error():
    from edgetts.cli import _question_or_stdin

    class Tty:
        def isatty(self):
            return True

    import sys

    real = sys.stdin
    try:
        sys.stdin = Tty()
        try:
            _question_or_stdin(None)
        except Exception as exc:  # click.UsageError
            assert "pipe one in" in str(exc)
        else:
            raise AssertionError("no question and a terminal must be a usage error")
    finally:
        sys.stdin = real
    assert _question_or_stdin("What is 2+3?") == "What is 2+3?"


def test_models_json_lists_every_registry_model():
    import json

    from click.testing import CliRunner

    from edgetts.cli import main

    result = CliRunner().invoke(main, ["models", "--json"])
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert result.exit_code == 0 and sum(r["default"] for r in rows) == 1
    assert {"name", "size_bytes", "ready", "path"} <= set(rows[0])


def test_defaults_from_the_config_file_then_the_environment(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from edgetts.cli import main

    config = tmp_path / "config.toml"
    config.write_text('max-tokens = 300\n[solve]\nstrategy = "majority"\n')
    monkeypatch.setenv("EDGETTS_CONFIG", str(config))
    help_text = CliRunner().invoke(main, ["solve", "--help"], terminal_width=250).output
    assert "[default: majority]" in help_text and "[default: 300; x>=1]" in help_text
    monkeypatch.setenv("EDGETTS_SOLVE_N", "0")  # the environment is read too (and checked)
    result = CliRunner().invoke(main, ["solve", "What is 2+3?"])
    assert result.exit_code == 2 and "0 is not in the range" in result.output
    config.write_text("[solve\n")
    result = CliRunner().invoke(main, ["solve", "--help"])
    assert result.exit_code == 1 and "config file" in result.output


@pytest.mark.parametrize(
    "text, words",
    [
        ("[solve]\nmax_token = 3\n", "[solve] has no setting 'max_token'"),
        ("temprature = 0.5\n", "no command has a setting 'temprature'"),
        ("[solv]\nn = 3\n", "[solv] is not a command"),
    ],
)
def test_a_misspelt_config_setting_is_named_not_ignored(tmp_path, monkeypatch, text, words):
    from click.testing import CliRunner

    from edgetts.cli import main

    config = tmp_path / "config.toml"
    config.write_text(text)
    monkeypatch.setenv("EDGETTS_CONFIG", str(config))
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 1 and words in result.output, result.output
    config.write_text('max-tokens = 300\n[solve]\nstrategy = "majority"\nprm = "x"\n[serve]\nport = 9000\n')
    assert CliRunner().invoke(main, ["models"]).exit_code == 0  # flags, shared or a command's own
    monkeypatch.setenv("EDGETTS_CONFIG", str(tmp_path / "missing.toml"))
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 1 and "missing.toml, which is not a file" in result.output


def test_config_keys_and_variables_are_named_as_the_flags(tmp_path, monkeypatch):
    # --prm's parameter is prm_path, --json's as_json: users write the flag's name
    from click.testing import CliRunner

    import edgetts.cli as cli
    from edgetts.cli import main

    seen: list[dict] = []

    class Stop(Exception):
        pass

    def record(*args, **kw):
        seen.append(kw)
        raise Stop

    monkeypatch.setattr(cli, "_make_solver", lambda kw, **_: record(**kw))
    config = tmp_path / "config.toml"
    config.write_text('[solve]\nprm = "from-config"\n')
    monkeypatch.setenv("EDGETTS_CONFIG", str(config))
    CliRunner().invoke(main, ["solve", "What is 2+3?"])
    assert seen[-1]["prm_path"] == "from-config"
    monkeypatch.setenv("EDGETTS_SOLVE_PRM", "from-env")
    CliRunner().invoke(main, ["solve", "What is 2+3?"])
    assert seen[-1]["prm_path"] == "from-env"
    CliRunner().invoke(main, ["solve", "What is 2+3?", "--prm", "from-flag"])
    assert seen[-1]["prm_path"] == "from-flag"
    monkeypatch.delenv("EDGETTS_SOLVE_PRM")
    monkeypatch.setenv("EDGETTS_SOLVE_PRM_PATH", "by-parameter")  # still read
    CliRunner().invoke(main, ["solve", "What is 2+3?"])
    assert seen[-1]["prm_path"] == "by-parameter"


def test_adaptive_arithmetic_and_program_flags_reach_the_solve_options(monkeypatch):
    from click.testing import CliRunner

    import edgetts.cli as cli
    from edgetts.cli import main

    seen: list[dict] = []

    class Stop(Exception):
        pass

    def record(**kw):
        seen.append(kw)
        raise Stop

    monkeypatch.setattr(cli, "SolveOptions", record)
    for args, adaptive in (([], True), (["--no-adaptive"], False)):
        result = CliRunner().invoke(main, ["solve", "What is 2+3?", "--strategy", "majority", *args])
        assert isinstance(result.exception, Stop), result.output
        assert seen[-1]["adaptive"] is adaptive
    for args, prune in (([], True), (["--no-prune"], False)):
        result = CliRunner().invoke(main, ["solve", "What is 2+3?", "--strategy", "majority", *args])
        assert isinstance(result.exception, Stop), result.output
        assert seen[-1]["prune"] is prune
    for args, check in (([], True), (["--no-check-arithmetic"], False)):
        result = CliRunner().invoke(main, ["solve", "What is 2+3?", "--strategy", "majority", *args])
        assert isinstance(result.exception, Stop), result.output
        assert seen[-1]["check_arithmetic"] is check
    for args, run in (([], False), (["--run-programs"], True)):
        result = CliRunner().invoke(main, ["solve", "What is 2+3?", "--strategy", "majority", *args])
        assert isinstance(result.exception, Stop), result.output
        assert seen[-1]["run_programs"] is run


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--concurrent", "2", "--task", "code"], "--concurrent runs math problems"),
        (["--concurrent", "2", "--ray"], "--concurrent runs math problems"),
        (["--concurrent", "0"], "--concurrent"),
        (["--concurrent", "17"], "--concurrent"),
    ],
)
def test_concurrent_out_of_place_or_range_is_a_usage_error(extra, words):
    result = CliRunner().invoke(main, ["run", "--data", "d.jsonl", "--out", "r.jsonl", *extra])
    assert result.exit_code == 2 and words in result.output, result.output


def test_serve_keeps_the_kv_type_and_offload_the_user_set_when_a_budget_plans(monkeypatch):
    from click.testing import CliRunner

    import edgetts.server
    from edgetts.cli import main

    solvers = []
    monkeypatch.setattr(edgetts.server, "serve", lambda solver, settings: solvers.append(solver))
    CliRunner().invoke(main, ["serve", "--memory-mb", "900", "--kv-type", "q8_0"], catch_exceptions=False)
    CliRunner().invoke(main, ["serve", "--memory-mb", "900"], catch_exceptions=False)
    pinned, planned = solvers
    assert pinned.pinned == {"kv_type"} and pinned.policy_config.kv_type == "q8_0"
    assert planned.pinned == frozenset() and planned.policy_config.kv_type == "f16"


def test_run_summary_counts_only_the_problems_of_this_run(tmp_path):
    """Seen in review: `run --limit 1` on a file that already held three rows reported the
    accuracy of all three."""
    import json

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": "1"}) + "\n" for i in range(3)))
    out = tmp_path / "r.jsonl"  # made by an older edgetts (no settings): resumes with any
    rows = [{"id": str(i), "correct": i == 1, "candidates": []} for i in (1, 2, 3)]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for limit, accuracy in (("1", 1.0), ("3", 1 / 3)):
        result = CliRunner().invoke(
            main, ["run", "--data", str(data), "--out", str(out), "--limit", limit, "--json"]
        )
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["accuracy"] == accuracy and summary["answered"] == int(limit), summary


@pytest.mark.parametrize(
    "options, n",
    [
        ({"strategy": "majority"}, 4),
        ({"strategy": "majority", "n": 8}, 8),
        ({"strategy": "greedy", "n": 8}, 1),
    ],
)
def test_results_row_records_the_n_the_search_used(options, n):
    """Seen: a row of a run without -n recorded "n": null while the search drew 4 samples."""
    from edgetts.data import Problem
    from edgetts.results import problem_row
    from edgetts.search.base import DEFAULT_N
    from edgetts.solver import SolveOptions

    result = SearchResult("majority", "21", None, [], votes={"21": 1.0}, counters={})
    row = problem_row(Problem("p1", "What is 3 * 7?", "21"), result, SolveOptions(**options), "m", 0.1)
    assert row["n"] == n and DEFAULT_N == 4


def test_solve_says_when_its_answer_is_a_guess(monkeypatch):
    """Seen in a user's review: "2" printed for a question whose every solution was cut off,
    taken from a list marker, with nothing to say it was a guess."""
    from edgetts import cli
    from edgetts.solver import SolveOptions

    guess = Candidate("1. Tom has 3\n2. He buys", "2", None, [], 48, "max_tokens", provisional=True)

    class Guessing:
        def solve(self, question, options):
            return SearchResult("majority", "2", guess, [guess], votes={"2": 1.0})

    monkeypatch.setattr(cli, "_make_solver", lambda kw: (Guessing(), SolveOptions(strategy="majority")))
    result = CliRunner().invoke(main, ["solve", "Tom has 3 apples and buys 4 more. How many?"])
    assert result.exit_code == 0 and result.stdout == "2\n"
    assert "a guess" in result.stderr
    # and in JSON (seen in review: the key was missing, a property asdict drops)
    result = CliRunner().invoke(main, ["solve", "Tom has 3 apples and buys 4 more. How many?", "--json"])
    assert json.loads(result.stdout)["provisional"] is True


def test_run_summary_says_how_many_answers_are_guesses(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": "1"}) + "\n" for i in range(3)))
    out = tmp_path / "r.jsonl"
    rows = [{"id": str(i), "correct": i == 1, "provisional": i != 1, "candidates": []} for i in (1, 2, 3)]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(main, ["run", "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0 and result.stdout == "accuracy: 1/3 = 33.3%\n"
    assert "2 of the answers are guesses" in result.stderr
    result = CliRunner().invoke(main, ["run", "--data", str(data), "--out", str(out), "--json"])
    assert json.loads(result.stdout)["provisional"] == 2


def test_plan_prints_json_that_pipes(monkeypatch):
    """Seen in a user's review: plan had no --json, as solve and run have."""
    from test_scheduler import META
    from test_scheduler import plan as make_test_plan

    from edgetts import solver as solver_mod

    # the scheduler's own test model: no GGUF file needed
    monkeypatch.setattr(solver_mod, "plan_for", lambda model, budget, prm_dir: (make_test_plan(budget), META))
    result = CliRunner().invoke(main, ["plan", "--memory-mb", "2000", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["predicted_memory_mb"] <= 2000 and plan["memory"]["weights_mb"] > 0


@pytest.mark.parametrize(
    "text, code, words",
    [
        ("[solve]\nn = [1, 2]\n", 1, "c.toml: [solve] n is a list, but edgetts solve --n takes one value"),
        ("[solve]\nn = 2024-01-01\n", 1, "c.toml: [solve] n is a TOML date, which no setting takes"),
        ("seed = 07:32:00\n", 1, "c.toml: seed is a TOML time"),
        ("[solve]\nmax-tokens = 100.9\n", 2, "'100.9' is not a valid integer"),  # as --max-tokens 100.9
        ("[solve]\nn = true\n", 2, "'true' is not a valid integer"),
        ("[models.list]\njson = true\n", 1, "c.toml: [models.list] is a table inside [models]"),
    ],
)
def test_a_config_value_of_the_wrong_kind_is_refused_by_name(tmp_path, monkeypatch, text, code, words):
    """Seen in review: a list or a date was a TypeError traceback, 100.9 became 100, true became
    1, and a table inside a command's table was silently ignored."""
    import edgetts.cli as cli

    config = tmp_path / "c.toml"
    config.write_text(text)
    monkeypatch.setenv("EDGETTS_CONFIG", str(config))
    monkeypatch.setattr(cli, "_make_solver", lambda kw, **_: pytest.fail(f"ran with {kw}"))
    result = CliRunner().invoke(main, ["solve", "What is 2+3?"])
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert result.exit_code == code and words in result.output, result.output


def test_config_values_are_read_as_the_flags_read_them(tmp_path, monkeypatch):
    import edgetts.cli as cli

    seen: list[dict] = []

    class Stop(Exception):
        pass

    def record(kw, **_):
        seen.append(kw)
        raise Stop

    monkeypatch.setattr(cli, "_make_solver", record)
    config = tmp_path / "c.toml"
    config.write_text(
        "max-tokens = 300\n[solve]\nno-adaptive = true\ntemperature = 0.5\nn = 3\n"
        '[serve]\ncors-origin = ["http://a", "http://b"]\n'
    )
    monkeypatch.setenv("EDGETTS_CONFIG", str(config))
    result = CliRunner().invoke(main, ["solve", "What is 2+3?"])
    assert isinstance(result.exception, Stop), result.output
    assert {k: seen[-1][k] for k in ("max_tokens", "no_adaptive", "temperature", "n")} == {
        "max_tokens": 300,
        "no_adaptive": True,
        "temperature": 0.5,
        "n": 3,
    }
    ctx = main.make_context("edgetts", ["serve"])  # a list for an option that takes several
    serve = main.get_command(ctx, "serve").make_context("serve", [], parent=ctx)
    assert serve.params["cors_origins"] == ("http://a", "http://b")


def test_plan_reads_a_piped_question_given_as_a_dash(monkeypatch):
    """`echo QUESTION | edgetts plan - --deadline-s 5` plans for it; with no QUESTION, plan
    leaves stdin alone (diff review: in a `while read` loop it swallowed the loop's input)."""
    from edgetts.solver import Solver

    asked = []

    class Plan:
        def explain(self):
            return "the plan"

    monkeypatch.setattr(Solver, "plan", lambda self, options, question: asked.append(question) or Plan())
    result = CliRunner().invoke(main, ["plan", "-", "--deadline-s", "5"], input="What is 2+3?\n")
    assert result.exit_code == 0 and result.stdout == "the plan\n", result.output
    assert asked == ["What is 2+3?\n"]
    assert CliRunner().invoke(main, ["plan", "--deadline-s", "5"], input="left alone\n").exit_code == 0
    assert asked[-1] is None  # no QUESTION: a plan for no question, stdin unread


def test_run_reads_its_data_from_stdin(tmp_path):
    """Seen in review: `run --data -` said "data file - does not exist" (solve reads stdin)."""
    rows = "".join(json.dumps({"question": f"q{i}", "answer": "1"}) + "\n" for i in range(2))
    out = tmp_path / "r.jsonl"  # all done already: nothing to solve
    done = [{"id": str(i), "question": f"q{i - 1}", "correct": i == 1, "candidates": []} for i in (1, 2)]
    out.write_text("".join(json.dumps(r) + "\n" for r in done))
    result = CliRunner().invoke(main, ["run", "--data", "-", "--out", str(out), "--json"], input=rows)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["answered"] == 2


def test_a_refused_run_changes_nothing_at_its_out(tmp_path):
    """Seen in review: a run refused for its flags still cut the torn last line of --out, and
    made the --out folders it named."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "What is 2+3?", "answer": "5"}) + "\n")
    out = tmp_path / "r.jsonl"
    text = json.dumps({"id": "0", "candidates": []}) + '\n{"id": "1", "ans'
    out.write_text(text)
    for where in (out, tmp_path / "new" / "dir" / "r.jsonl"):
        args = ["run", "--data", str(data), "--out", str(where), "--strategy", "greedy", "-n", "8"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and "greedy answers with one sample" in result.output, result.output
    assert out.read_text() == text and sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "r.jsonl"]


def test_an_interrupted_run_that_kept_nothing_says_its_file_was_removed(tmp_path, monkeypatch):
    """Seen in review: "0 results kept in X" after X, made by the run, had been removed."""
    from edgetts import cli
    from edgetts.solver import SolveOptions

    class Interrupted:
        def prepare(self, question, options):
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_make_solver", lambda kw, **_: (Interrupted(), SolveOptions(strategy="greedy")))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "What is 2+3?", "answer": "5"}) + "\n")
    out = tmp_path / "r.jsonl"
    result = CliRunner().invoke(main, ["run", "--data", str(data), "--out", str(out)])
    assert result.exit_code == 130 and not out.exists()
    assert "results kept" not in result.stderr and f"{out} (made by this run) was removed" in result.stderr
