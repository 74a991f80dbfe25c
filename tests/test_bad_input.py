"""Bad input as a user meets it: the real CLI in a subprocess and the real server with the
official ``openai`` client. Each case is one the robustness review found; each must end with a
clear message (``Error: ...``, exit 1 or a 400) or the right answer, and lose nothing.

The fast cases fail before any model loads; the slow ones run the real default GGUF.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from serving import ENV, start_serve, wait_until_healthy


def edgetts(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgetts.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=ENV,
        timeout=600,
    )


def refused(proc: subprocess.CompletedProcess, *words: str, code: int = 1) -> bool:
    """Exit ``code`` (1; 2 for click's usage errors) with an ``Error:`` line naming the
    problem, and no traceback."""
    return (
        proc.returncode == code
        and "Error:" in proc.stderr
        and "Traceback" not in proc.stderr
        and all(w in proc.stderr for w in words)
    )


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "#### 5"}) + "\n")
    return path


# -- fast: refused before a model loads ---------------------------------------------------------


def test_a_notes_file_as_out_is_refused_and_kept(tmp_path, data):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")  # no newline: looked like a torn results line and was cut
    proc = edgetts("run", "--data", str(data), "--out", str(notes), "--limit", "1")
    assert refused(proc, "not JSON") and notes.read_text() == "my notes"


def test_out_equal_to_data_is_refused(data):
    proc = edgetts("run", "--data", str(data), "--out", str(data))
    assert proc.returncode != 0 and "--out is the --data file" in proc.stderr
    assert data.read_text().count("\n") == 1


def test_unwritable_out_fails_before_the_model_loads(tmp_path, data):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    start = time.perf_counter()
    proc = edgetts("run", "--data", str(data), "--out", str(blocker / "r.jsonl"))
    assert refused(proc, "cannot write results") and time.perf_counter() - start < 30


def test_resume_with_other_settings_is_refused(tmp_path, data):
    out = tmp_path / "r.jsonl"
    settings = {"strategy": "majority", "n": 8, "seed": 0}
    out.write_text(json.dumps({"id": "1", "correct": True, "settings": settings}) + "\n")
    proc = edgetts("run", "--data", str(data), "--out", str(out), "--strategy", "best_of_n", "-n", "4")
    assert refused(proc, "other settings", "strategy was 'majority', now 'best_of_n'")
    assert json.loads(out.read_text())["settings"] == settings


def test_resume_after_the_verifier_changed_is_refused(tmp_path, data):
    # the same --prm path, other contents: what an edgetts release shipping new probe weights or
    # stopping settings does to the default PRM
    import shutil

    from edgetts.cli import _run_settings, run
    from edgetts.probe import policy_prm_dir

    prm = tmp_path / "prm"
    shutil.copytree(policy_prm_dir(), prm)
    out = tmp_path / "r.jsonl"
    args = ["--data", str(data), "--out", str(out), "--strategy", "weighted_best_of_n", "--prm", str(prm)]
    settings = _run_settings(run.make_context("run", list(args)).params, {"file": data.name})
    assert settings["verifier"].startswith("prm-probe-qwen05@")
    out.write_text(json.dumps({"id": "1", "correct": True, "settings": settings}) + "\n")
    manifest = json.loads((prm / "manifest.json").read_text())
    (prm / "manifest.json").write_text(json.dumps({**manifest, "prune_below": 0.3}))
    proc = edgetts("run", *args)
    assert refused(proc, "other settings", "verifier was 'prm-probe-qwen05@")
    assert json.loads(out.read_text())["settings"] == settings
    majority = _run_settings(run.make_context("run", [*args[:4], "--strategy", "majority"]).params, {})
    assert "verifier" not in majority  # a vote that never reads a PRM resumes whatever ships


def test_resume_with_another_data_file_is_refused(tmp_path, data):
    # ids repeat across benchmarks (0, 1, 2 ...): another file's problems are not "done"
    from edgetts.cli import _run_settings, run

    out = tmp_path / "r.jsonl"
    args = ["--data", str(data), "--out", str(out), "--strategy", "majority"]
    data_keys = {"file": "gsm8k_test.jsonl", "question_key": None, "answer_key": None, "id_key": None}
    settings = _run_settings(run.make_context("run", list(args)).params, data_keys)
    out.write_text(json.dumps({"id": "1", "correct": True, "settings": settings}) + "\n")
    proc = edgetts("run", *args)
    assert refused(proc, "other settings", "data was {'file': 'gsm8k_test.jsonl'")
    assert json.loads(out.read_text())["settings"] == settings


def test_resume_with_another_file_of_the_same_name_is_refused(tmp_path, data):
    """Seen in a user's review: a results file made from ./ok.jsonl resumed for other/ok.jsonl
    (same name, other question under id "a") and reported its accuracy as this run's."""
    from edgetts.cli import _run_settings, run

    out = tmp_path / "r.jsonl"
    args = ["--data", str(data), "--out", str(out), "--strategy", "majority"]
    data_keys = {"file": data.name, "question_key": None, "answer_key": None, "id_key": None}
    settings = _run_settings(run.make_context("run", list(args)).params, data_keys)
    row = {"id": "1", "question": "What is 7 * 6?", "gold": "42", "correct": True, "settings": settings}
    out.write_text(json.dumps(row) + "\n")
    proc = edgetts("run", *args)
    assert refused(proc, "answered problem '1' with another question", "'What is 7 * 6?' there")
    assert json.loads(out.read_text()) == row
    same = {**row, "question": "What is 2 + 3?", "gold": "5"}
    out.write_text(json.dumps(same) + "\n")
    proc = edgetts("run", *args, "--json")  # the same problem: resumes, nothing to solve
    assert proc.returncode == 0 and json.loads(proc.stdout)["correct"] == 1, proc.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--prm", "/nonexistent"], ["/nonexistent: PRM directory not found"]),
        (["-m", "nosuchmodel"], ["unknown model"]),
    ],
)
def test_auto_refuses_a_prm_or_model_that_is_not_there_once(args, words):
    """Seen in a user's review: auto warned and answered without the --prm the user named (run
    and best_of_n refused it), and an unknown model was said twice, as a warning then an error."""
    proc = edgetts("solve", "What is 2+3?", *args)
    assert refused(proc, *words) and "Warning" not in proc.stderr, proc.stderr


def test_serve_on_a_busy_port_says_so_before_the_model_loads():
    """Seen in a user's review: uvicorn's own "[Errno 98]" log line and exit 3, after the
    model had loaded."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        start = time.perf_counter()
        proc = edgetts("serve", "--port", str(port))
    assert refused(proc, f"cannot listen on 127.0.0.1:{port}", "choose --port")
    assert time.perf_counter() - start < 30


def test_a_model_named_by_its_cached_file_resumes_as_by_its_name():
    """Seen in a user's review: the same model named by its path was 'other settings'."""
    from edgetts.cli import _run_settings, run
    from edgetts.models import resolve

    def recorded(model):
        return _run_settings(run.make_context("run", ["--data", "d", "--out", "o", "-m", model]).params, {})

    assert recorded(str(resolve(None)))["model"] == recorded("qwen2.5-coder-0.5b-instruct")["model"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["-n", "100000"], ["100000 is not in the range 1<=x<=1024"]),
        (["--max-tokens", "0"], ["0 is not in the range x>=1"]),
        (["--max-tokens", "-5"], ["-5 is not in the range x>=1"]),
        (["--threads", "0"], ["0 is not in the range x>=1"]),
    ],
)
def test_out_of_range_settings_name_their_limit(args, words):
    proc = edgetts("solve", "What is 2+3?", *args)
    assert proc.returncode == 2 and all(w in proc.stderr for w in words), proc.stderr


def test_more_threads_than_cores_is_refused():
    proc = edgetts("solve", "What is 2+3?", "--strategy", "greedy", "--threads", str(os.cpu_count() + 1))
    assert refused(proc, "threads must be 1..")


def usage_error(proc: subprocess.CompletedProcess, *words: str) -> bool:
    """Exit 2 with click's usage error naming the problem, and no traceback."""
    return refused(proc, *words, code=2)


def test_exec_is_refused_for_math_with_where_it_belongs():
    assert usage_error(edgetts("solve", "What is 2+3?", "--strategy", "exec"), "for code tasks (--task code)")


def test_resume_in_another_mode_is_refused(tmp_path, data):
    """Seen in review: a prose run's file took a program run's rows (the mode was not recorded)."""
    from edgetts.cli import _run_settings, run

    out = tmp_path / "r.jsonl"
    args = ["--data", str(data), "--out", str(out), "--strategy", "majority"]
    settings = _run_settings(run.make_context("run", list(args)).params, {"file": data.name})
    assert settings["mode"] == "cot" and settings["pot_n"] is None
    out.write_text(json.dumps({"id": "1", "correct": True, "settings": settings}) + "\n")
    proc = edgetts("run", *args, "--mode", "pot", "--allow-weak-sandbox")
    assert refused(proc, "other settings", "mode was 'cot', now 'pot'")
    assert json.loads(out.read_text())["settings"] == settings
    older = {k: v for k, v in settings.items() if k not in ("mode", "pot_n", "data", "verifier")}
    out.write_text(json.dumps({"id": "1", "correct": True, "settings": older}) + "\n")
    proc = edgetts("run", *args, "--mode", "pot", "--allow-weak-sandbox", "--limit", "1")
    assert proc.returncode == 0, proc.stderr  # a file from before the mode was recorded resumes


@pytest.mark.parametrize(
    "args, words",
    [
        (["--temperature", "-1"], ["temperature must be >= 0"]),
        (["--pot-n", "3"], ["pot_n is for mode cot+pot"]),
        (["--pot-n", "0"], ["0 is not in the range x>=1"]),
        (["--strategy", "greedy", "-n", "8"], ["greedy answers with one sample", "-n 8"]),
        (["--strategy", "greedy", "--temperature", "1.5", "--top-k", "5"], ["--temperature, --top-k is for"]),
        (["--strategy", "majority", "--beam-width", "7"], ["--beam-width is for beam_search, dvts and auto"]),
        (["--show", "--json"], ["--show prints text and --json prints JSON"]),
    ],
)
def test_settings_no_search_can_run_are_usage_errors(args, words):
    """Seen in review: these exited 1 like a bad data file, or (--pot-n without cot+pot) were
    silently ignored."""
    assert usage_error(edgetts("solve", "What is 2+3?", *args), *words)


def test_empty_question_exits_1():
    assert refused(edgetts("solve", "   "), "the question is empty")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--n", "0"], ["0 is not in the range"]),
        (["--api-key", ""], ["the API key is empty"]),
        (["--max-queue", "-1"], ["-1 is not in the range"]),
        (["--deadline-s", "0"], ["'0' is not a positive number"]),
        (["--memory-mb", "nan"], ["'nan' is not a positive number"]),
        (["--memory-mb", "-5"], ["'-5' is not a positive number"]),
        (["--api-key", "schlüssel"], ["printable ASCII"]),
    ],
)
def test_serve_refuses_bad_settings_at_start(args, words):
    proc = edgetts("serve", "--port", "1", *args)
    assert proc.returncode in (1, 2) and all(w in proc.stderr for w in words), proc.stderr


def test_serve_help_says_where_the_key_should_come_from():
    out = edgetts("serve", "--help").stdout
    assert "EDGETTS_API_KEY" in out and "--api-key-file" in out and "ps" in out


# -- slow: the real model -----------------------------------------------------------------------


@pytest.mark.slow
def test_too_many_tokens_for_the_models_context():
    proc = edgetts("solve", "What is 2+3?", "--strategy", "greedy", "--max-tokens", "100000")
    assert refused(proc, "more than this model's context")


@pytest.mark.slow
def test_a_request_with_a_memory_budget_leaves_the_server_as_it_was():
    """Seen: after one request with memory_mb, a beam search that had worked failed with 400
    "no KV sequence slot can be freed" for good, while /health said ok. The server now keeps
    its model as loaded: a budget below it is refused, and nothing is loaded again."""
    from openai import BadRequestError, OpenAI

    base, proc = start_serve("--max-tokens", "48", "--max-n", "4", env=ENV)
    try:
        wait_until_healthy(base, proc)
        client = OpenAI(base_url=f"{base}/v1", api_key="unused")
        model = client.models.list().data[0].id
        messages = [{"role": "user", "content": "What is 2+3?"}]
        beam = {"strategy": "beam_search", "n": 4, "beam_width": 2, "max_steps": 2}
        client.chat.completions.create(model=model, messages=messages, extra_body=beam)
        budget = {"strategy": "majority", "n": 2, "memory_mb": 700}
        with pytest.raises(BadRequestError, match="less than the loaded model may hold") as err:
            client.chat.completions.create(model=model, messages=messages, extra_body=budget)
        assert err.value.body["param"] == "memory_mb"  # the (legacy) field the request sent
        again = client.chat.completions.create(model=model, messages=messages, extra_body=beam)
        assert again.choices[0].message.content
        with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
            health = json.loads(resp.read())
        assert health["served"] == 2 and health["policy_loads"] == 1, health
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("concurrent", ["1", "2"])
def test_a_question_too_long_is_skipped_by_name_and_the_run_goes_on(tmp_path, concurrent):
    """Seen in a user's review: one long problem ended the run (and every rerun) at the same
    place, with no id named and no flag to raise the limit."""
    data = tmp_path / "d.jsonl"
    rows = [
        {"id": "long", "question": "word " * 3000, "answer": "1"},
        {"id": "short", "question": "What is 2+3?", "answer": "5"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r.jsonl"
    args = ["run", "--data", str(data), "--out", str(out), "--strategy", "greedy", "--max-tokens", "48"]
    proc = edgetts(*args, "--concurrent", concurrent, "--json")
    assert refused(proc, "problem long: skipped", "1 problem(s) skipped", "--max-prompt-tokens"), proc.stderr
    assert json.loads(proc.stdout)["answered"] == 1  # the summary still comes
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["short"]
    proc = edgetts(*args, "--concurrent", concurrent, "--max-prompt-tokens", "4096")
    assert proc.returncode == 0, proc.stderr  # the rerun answers it
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == ["long", "short"]


def test_the_python_api_says_what_is_wrong_with_its_arguments():
    """Seen in a user's review: n='2' failed deep in a comparison, solve(None) with an
    AttributeError."""
    import edgetts
    from edgetts.solver import SolveOptions

    with pytest.raises(ValueError, match="n must be a whole number, got '2'"):
        SolveOptions(n="2").validate()
    import numpy as np

    SolveOptions(n=np.int64(4), temperature=np.float32(0.5)).validate()  # numbers of any kind
    with pytest.raises(TypeError, match="question must be text"):
        edgetts.solve(None)


@pytest.mark.slow
def test_the_one_shot_solve_takes_the_max_tokens_it_is_given():
    """Seen in a user's review: edgetts.solve(q, max_tokens=1024) was refused as more than the
    solver's limit of 512, which the one-shot function gave no way to raise."""
    import edgetts

    result = edgetts.solve("What is 2+3?", strategy="greedy", max_tokens=1024)
    assert result.answer == "5"


@pytest.mark.slow
def test_a_question_piped_on_stdin():
    proc = edgetts("solve", "--strategy", "greedy", stdin="What is 2+3?\n")
    assert proc.returncode == 0 and proc.stdout.strip() == "5", proc.stderr


def test_output_into_a_closed_pipe_ends_quietly():
    """Seen in review: `edgetts gpu | head -1` printed "Error: [Errno 32] Broken pipe"."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetts.cli", "sandbox"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        text=True,
    )
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert "Broken pipe" not in err and "Traceback" not in err, err


def test_a_question_that_is_not_utf8_is_refused_by_name(tmp_path):
    """Seen in review: it failed with the codec's own words about surrogates."""
    proc = subprocess.run(
        [sys.executable, "-m", "edgetts.cli", "solve"],
        input=b"What is \xff 2+3?",
        capture_output=True,
        env=ENV,
    )
    assert proc.returncode == 1 and b"Error: the question" in proc.stderr and b"not UTF-8 text" in proc.stderr
    assert refused(edgetts("solve", "What is 2+3?", "-m", str(tmp_path)), "is a directory, not a .gguf file")


def test_a_data_file_with_ids_is_refused_as_out_and_kept(tmp_path):
    """Seen in review: a data file with an "id" field was taken as --out: a copy of --data
    "resumed" and solved nothing, another data file had the results appended into it."""
    data = tmp_path / "mydata.jsonl"
    data.write_text('{"id": "a1", "question": "What is 9+9?", "answer": "18"}\n')
    copy = tmp_path / "copy.jsonl"
    copy.write_text(data.read_text())
    proc = edgetts("run", "--data", str(data), "--out", str(copy), "--strategy", "greedy")
    assert refused(proc, "copy.jsonl:1 has no 'settings' or 'candidates': not an edgetts results file")
    assert copy.read_text() == data.read_text() and not (tmp_path / "copy.jsonl.lock").exists()


# A run with a stand-in solver (no model): `python -c FAKE_RUN ARGS` is `edgetts ARGS`.
FAKE_RUN = """
import edgetts.cli as cli
from edgetts.search.base import SearchResult
from edgetts.solver import SolveOptions

class Solver:
    def prepare(self, question, options):
        return None

    def solve(self, question, options, cancel=None):
        return SearchResult("greedy", "5", None, [], votes={}, counters={})

cli._make_solver = lambda kw, searches=1: (Solver(), SolveOptions(strategy="greedy"))
cli.main()
"""


def test_a_run_with_stderr_closed_answers_and_refuses_without_it(tmp_path, data):
    """Seen in review: `edgetts run ... 2>&-` exited 1 and solved nothing: the progress bar
    wrote to a stderr that was not there."""
    out = tmp_path / "r.jsonl"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", FAKE_RUN, "run", "--data", str(data), *args],
            stdout=subprocess.PIPE,
            text=True,
            env=ENV,
            timeout=120,
            preexec_fn=lambda: os.close(2),  # as `2>&-`
        )

    proc = run("--out", str(out), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["correct"] == 1, proc.stdout
    assert [json.loads(line)["answer"] for line in out.read_text().splitlines()] == ["5"]
    proc = run("--out", str(out), "-n", "4")  # refused: said to no one, exit 1 all the same
    assert proc.returncode == 1 and proc.stdout == ""
