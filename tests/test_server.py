"""The OpenAI-compatible server, through the official ``openai`` client.

Fast tests run the real app on uvicorn in a thread with a stand-in solver (queue, cancellation,
limits, error shapes). Slow tests start ``edgetts serve`` itself on a free loopback port with the
real default model and end by shutting it down with Ctrl-C while a request is in flight.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sse_starlette")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from fakes import FakeGenerator, FakeScorer, random_policy  # noqa: E402
from serving import start_serve, wait_until_healthy  # noqa: E402

from edgetts.search import run_search  # noqa: E402
from edgetts.search.base import Candidate, Deadline, SearchConfig, SearchResult  # noqa: E402
from edgetts.server import ServerSettings, create_app  # noqa: E402

KEY = "test-key"
MODEL = "fake-model"


# -- helpers -----------------------------------------------------------------------------------


def wait_for_health(base: str, ready, timeout_s: float = 10.0) -> None:
    """Poll /health until ``ready(health)``: a fixed sleep races the server on a busy machine."""
    end = time.perf_counter() + timeout_s
    while time.perf_counter() < end:
        with urllib.request.urlopen(f"{base}/health", timeout=1) as resp:
            if ready(json.loads(resp.read())):
                return
        time.sleep(0.02)
    pytest.fail("the server never reached the expected queue state")


class FakeSolver:
    """Stands in for Solver: answers "42" after ``delay_s`` unless the deadline or cancel ends it."""

    def __init__(self, delay_s: float = 0.0, others: tuple[str, ...] = ()) -> None:
        self.delay_s = delay_s
        self.others = others  # answers of further candidates, votes falling in this order
        self.policy = SimpleNamespace(config=SimpleNamespace(max_tokens=0))
        self.scorer_loaded = False
        self.policy_loads = 1
        self.cancelled: list[bool] = []  # one entry per finished solve: was it cancelled?
        self.options: list = []  # the SolveOptions of every solve, in order
        self.questions: list = []  # what every solve was asked (a Conversation, a RawPrompt)

    def prompt_tokens(self, question) -> int:
        """20, as the fake's counters say; refused (PromptTooLong) for a question over 200 characters."""
        from edgetts.policy import PromptTooLong

        text = question if isinstance(question, str) else question.question
        if len(text) > 200:
            raise PromptTooLong(f"the question is too long: {len(text)} characters")
        return 20

    def memory_estimate(self) -> None:
        return None  # no policy loaded

    def check_budget(self, question, options) -> None:
        """Every budget fits (a subclass refuses)."""

    def solve(self, question, options, cancel=None, counters=None) -> SearchResult:
        self.options.append(options)
        self.questions.append(question)
        deadline = Deadline(options.deadline_s, cancel)
        start = time.perf_counter()
        while time.perf_counter() - start < self.delay_s and not deadline.expired():
            time.sleep(0.01)
        self.cancelled.append(cancel is not None and cancel.is_set())
        chosen = Candidate(
            text="6 * 7 = 42.\n\n\\boxed{42}",
            answer="42",
            score=None,
            step_scores=[],
            n_tokens=9,
            stop_reason="eos",
        )
        others = [
            Candidate(
                text=f"\\boxed{{{a}}}",
                answer=a,
                score=None,
                step_scores=[],
                n_tokens=3,
                stop_reason="max_tokens",
            )
            for a in self.others
        ]
        votes = {"42": 1.0 + len(self.others), **{a: 1.0 + i for i, a in enumerate(reversed(self.others))}}
        return SearchResult(
            strategy=options.strategy,
            answer="42",
            chosen=chosen,
            candidates=[chosen, *others],
            votes=votes if self.others else {"42": 1.0},
            cut_short=deadline.expired(),
            counters={"tokens_prefilled": 20, "tokens_sampled": 9},
        )


class ThreadedServer:
    """uvicorn on a free loopback port in a background thread (no signal handlers there)."""

    def __init__(self, app) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def client(base: str, key: str = KEY, timeout: float = 30) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=timeout)


def post(base: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    """Raw POST (for bodies the openai client would never send): status, headers, JSON."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}", **(headers or {})}
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def ask(c: openai.OpenAI, model: str = MODEL, **extra):
    return c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is 6 * 7?"}], extra_body=extra or None
    )


def assert_openai_error(payload: dict) -> None:
    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["message"]


@pytest.fixture
def fake():
    """A fake-backed server running one search at a time: (base url, the fake solver)."""
    solver = FakeSolver(delay_s=0.2)
    settings = ServerSettings(
        model_id=MODEL,
        api_key=KEY,
        max_n=8,
        concurrent=1,
        max_queue=1,
        max_body_bytes=4096,
        progress_interval_s=0.05,
    )
    with ThreadedServer(create_app(solver, settings)) as base:
        yield base, solver


# -- fast: the app with a stand-in solver ------------------------------------------------------


def test_completion_carries_the_search(fake):
    base, _ = fake
    reply = ask(client(base), strategy="majority", n=2)
    assert reply.choices[0].message.content.endswith("\\boxed{42}")
    assert reply.choices[0].finish_reason == "stop"
    info = reply.model_extra["edgetts"]
    assert info["answer"] == "42" and info["strategy"] == "majority" and info["n"] == 2
    assert info["votes"] == {"42": 1.0} and info["chosen_index"] == 0
    assert reply.usage.prompt_tokens == 20 and reply.usage.completion_tokens == 9


def test_stream_sends_progress_then_the_answer(fake):
    base, _ = fake
    chunks = list(
        client(base).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "What is 6 * 7?"}], stream=True
        )
    )
    progress = [c for c in chunks if "progress" in (c.model_extra.get("edgetts") or {})]
    assert progress, "no progress chunk while searching"
    assert chunks[-1].usage.prompt_tokens == 20
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.endswith("\\boxed{42}")
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["edgetts"]["answer"] == "42"


def test_stream_options_place_usage_as_openai_does(fake):
    """Seen in review: include_usage false still got usage, and true got no usage chunk."""
    base, _ = fake
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "What is 6 * 7?"}], "stream": True}
    chunks = list(client(base).chat.completions.create(**ask, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 20
    assert all(c.usage is None for c in chunks[:-1])
    assert (
        chunks[-2].choices[0].finish_reason == "stop" and chunks[-2].model_extra["edgetts"]["answer"] == "42"
    )
    chunks = list(client(base).chat.completions.create(**ask, stream_options={"include_usage": False}))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as err:
        client(base).chat.completions.create(
            **{**ask, "stream": False}, stream_options={"include_usage": True}
        )
    assert err.value.body["param"] == "stream_options"


def test_a_prompt_too_long_is_a_400_before_a_stream_starts(fake):
    """Seen: a stream answered 200, sent its role chunk, then an error event (the client raised
    a bare APIError with no status) for a prompt longer than the policy's context."""
    base, solver = fake
    long = [{"role": "user", "content": "word " * 100}]
    for stream in (True, False):
        with pytest.raises(openai.BadRequestError) as err:
            reply = client(base).chat.completions.create(model=MODEL, messages=long, stream=stream)
            list(reply) if stream else None
        assert err.value.body["param"] == "messages" and err.value.body["code"] == "context_length_exceeded"
    assert solver.questions == []  # nothing was searched
    with pytest.raises(openai.BadRequestError) as err:
        client(base).completions.create(model=MODEL, prompt="word " * 100)
    assert err.value.body["param"] == "prompt"


def test_what_a_user_reviewing_the_server_found(fake):
    """Seen in a user's review: no GET /v1/models/{id}, HEAD /health 405, a text/plain body
    answered with pydantic's words, penalties and logit_bias ignored silently, an assistant turn
    with tool_calls taken as an empty turn, and the same sample for every request with no seed."""
    base, solver = fake
    c = client(base)
    assert c.models.retrieve(MODEL).id == MODEL
    # any name means the loaded policy, as chat takes it (the next review: a 404 here turned
    # away clients that check their model first); --strict-model refuses (below)
    assert c.models.retrieve("gpt-4o").id == "gpt-4o"
    with urllib.request.urlopen(urllib.request.Request(f"{base}/health", method="HEAD"), timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b""
    for headers in ({"Content-Type": "text/plain"}, {}):
        status, _, payload = post(base, b"", headers)
        assert status == 400 and "JSON object" in payload["error"]["message"], payload
    for extra in ({"frequency_penalty": 0.5}, {"presence_penalty": -1.0}, {"logit_bias": {"42": 5}}):
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], **extra)
        assert (
            err.value.body["param"] == next(iter(extra)) and err.value.body["code"] == "unsupported_parameter"
        )
    assert c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], frequency_penalty=0
    )
    called = {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]}
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}, called, {"role": "user", "content": "and?"}],
        )
    assert "tool" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:  # seen: accepted, and one sample drawn
        ask(c, edgetts={"strategy": "greedy", "samples": 5})
    assert err.value.body["param"] == "edgetts.samples"
    solver.options.clear()
    infos = [
        ask(c).model_extra["edgetts"],
        ask(c).model_extra["edgetts"],
        ask(c, seed=7).model_extra["edgetts"],
    ]
    seeds = [o.seed for o in solver.options]
    assert seeds[0] != seeds[1] and seeds[2] == 7 and [i["seed"] for i in infos] == seeds


def test_beam_settings_are_refused_in_the_requests_words():
    """Seen: "beam_width (4) cannot exceed n (2)" with param null, for a request that sent samples."""
    settings = ServerSettings(model_id=MODEL, api_key=KEY)
    with ThreadedServer(create_app(FakeSolver(), settings, prm_state="loaded")) as base:
        with pytest.raises(openai.BadRequestError) as err:
            ask(client(base), edgetts={"strategy": "beam_search", "samples": 2, "beam_width": 4})
    body = err.value.body
    assert body["param"] == "edgetts.beam_width" and "samples (2)" in body["message"], body


def test_a_budget_that_cannot_be_met_names_its_field():
    """Seen in a user's review: deadline_s and memory_mb refusals came with param null."""
    from edgetts.scheduler import PlanError

    class Unplannable(FakeSolver):
        def solve(self, question, options, cancel=None, counters=None):
            raise PlanError("a deadline of 0.5 s is shorter than one prefill", field="deadline_s")

    with ThreadedServer(create_app(Unplannable(), ServerSettings(model_id=MODEL, api_key=KEY))) as base:
        with pytest.raises(openai.BadRequestError) as err:
            ask(client(base), edgetts={"deadline_s": 0.5})
        assert err.value.body["param"] == "edgetts.deadline_s"
        with pytest.raises(openai.BadRequestError) as err:  # the server's own deadline: no field sent
            ask(client(base), edgetts={"strategy": "majority"})
        assert err.value.body["param"] is None


def test_a_budget_refused_by_the_plan_is_a_400_before_a_stream_starts():
    """Seen: a memory_mb under the loaded model was refused only once the search started, so
    a stream had already answered 200 (the client raised a bare APIError on the error event)."""
    from edgetts.scheduler import PlanError

    class TooSmall(FakeSolver):
        def check_budget(self, question, options):
            if options.memory_mb is not None and options.memory_mb < 100:
                raise PlanError("memory_mb=50 is less than the loaded model may hold", field="memory_mb")

    solver = TooSmall()
    with ThreadedServer(create_app(solver, ServerSettings(model_id=MODEL, api_key=KEY))) as base:
        for stream in (True, False):
            with pytest.raises(openai.BadRequestError) as err:
                reply = client(base).chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "What is 6 * 7?"}],
                    stream=stream,
                    extra_body={"edgetts": {"memory_mb": 50}},
                )
                list(reply) if stream else None
            assert err.value.body["param"] == "edgetts.memory_mb"
        assert solver.options == []  # refused before it queued
        ask(client(base), edgetts={"memory_mb": 500})
        assert solver.options[-1].memory_mb == 500


def test_an_answer_no_solution_wrote_is_marked_provisional():
    from edgetts.server.engine import Job
    from edgetts.server.responses import edgetts_info
    from edgetts.solver import SolveOptions

    guess = Candidate("1. 2. 3.", "3", None, [], 48, "max_tokens", provisional=True)
    result = SearchResult("majority", "3", guess, [guess], votes={"3": 1.0})
    info = edgetts_info(Job(question="q", options=SolveOptions(strategy="majority")), result)
    assert info.provisional and info.candidates[0].provisional


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(fake):
    base, _ = fake
    c = client(base)
    for extra, param in [
        ({"strategy": "magic"}, "strategy"),
        ({"n": 9}, "n"),
        ({"deadline_s": 0}, "deadline_s"),
        ({"max_tokens": 10**6}, "max_tokens"),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            ask(c, **extra)
        assert err.value.body["param"] == param, extra
    assert ask(c, model="gpt-4o-mini").model == MODEL  # any name means the loaded policy
    with pytest.raises(openai.AuthenticationError):
        ask(client(base, key="wrong"))
    for body in (b"{not json", b'{"model": "fake-model"}', b"[1, 2]"):
        status, _, payload = post(base, body)
        assert status == 400, body
        assert_openai_error(payload)
    status, _, payload = post(base, b'{"model": "x", "messages": ["' + b"a" * 5000 + b'"]}')
    assert status == 413
    assert_openai_error(payload)
    assert ask(c).model_extra["edgetts"]["answer"] == "42"


def test_what_a_search_cannot_honour_is_refused_and_nulls_mean_the_default(fake):
    base, _ = fake
    c = client(base)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for extra, param in [
        ({"tools": [tool]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"edgetts": {"strategy": "majority"}, "n": 9}, "n"),  # the choices, not a budget not sent
        ({"max_completion_tokens": 10**6}, "max_completion_tokens"),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            ask(c, **extra)
        assert err.value.body["param"] == param, extra
    assert ask(c, tools=[], tool_choice="none", response_format={"type": "text"}).choices
    question = [{"role": "user", "content": "6 * 7?"}]
    infinite = {"model": MODEL, "messages": question, "edgetts": {"deadline_s": float("inf")}}
    status, _, payload = post(base, json.dumps(infinite).encode())  # the literal Infinity
    assert status == 400 and "deadline_s" in payload["error"]["param"]
    null_stream = {"model": MODEL, "messages": question, "stream": None}
    status, _, payload = post(base, json.dumps(null_stream).encode())
    assert status == 200 and payload["choices"][0]["message"]["content"]


def test_memory_mb_reaches_the_solver_capped_by_the_server_budget(fake):
    base, solver = fake
    ask(client(base), memory_mb=512)
    assert solver.options[-1].memory_mb == 512
    ask(client(base))
    assert solver.options[-1].memory_mb is None  # this server has no budget of its own
    with pytest.raises(openai.BadRequestError) as err:
        ask(client(base), memory_mb=-1)
    assert err.value.body["param"] == "memory_mb"


def test_sampling_fields_reach_the_solver(fake):
    base, solver = fake
    ask(client(base), temperature=0.5, top_p=0.9, top_k=20, seed=7)
    options = solver.options[-1]
    assert (options.temperature, options.top_p, options.top_k, options.seed) == (0.5, 0.9, 20, 7)
    ask(client(base))
    assert solver.options[-1].top_k == 0  # the solver's defaults when a request says nothing


def test_adaptive_sampling_is_on_unless_the_request_turns_it_off(fake):
    base, solver = fake
    ask(client(base), edgetts={"strategy": "majority", "samples": 8})
    assert solver.options[-1].adaptive is True
    ask(client(base), edgetts={"strategy": "majority", "samples": 8, "adaptive": False})
    assert solver.options[-1].adaptive is False
    assert solver.options[-1].search_config().adaptive is None


def test_pruning_is_on_unless_the_request_turns_it_off(fake):
    base, solver = fake
    ask(client(base), edgetts={"strategy": "majority", "samples": 8})
    assert solver.options[-1].prune is True
    ask(client(base), edgetts={"strategy": "majority", "samples": 8, "prune": False})
    assert solver.options[-1].prune is False


def test_the_arithmetic_check_is_on_unless_the_request_turns_it_off(fake):
    base, solver = fake
    ask(client(base), edgetts={"strategy": "majority", "samples": 4})
    assert solver.options[-1].search_config().check_arithmetic is True
    ask(client(base), edgetts={"strategy": "majority", "samples": 4, "check_arithmetic": False})
    assert solver.options[-1].search_config().check_arithmetic is False


def test_full_queue_answers_503_with_retry_after(fake):
    base, solver = fake
    solver.delay_s = 1.0
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(ask(client(base)))) for _ in range(2)]
    for started, t in enumerate(threads, start=1):  # one running, one waiting: max_queue=1 is full
        t.start()
        wait_for_health(base, lambda h, k=started: h["running"] + h["queued"] == k)
    status, headers, payload = post(
        base, json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    )
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert payload["error"]["code"] == "queue_full"
    for t in threads:
        t.join()
    assert len(results) == 2  # the queued requests were served normally


def test_concurrent_searches_run_at_once_and_the_queue_holds_the_rest():
    """concurrent=2: two searches run together, max_queue more wait, one more gets 503."""
    solver = FakeSolver(delay_s=1.0)
    settings = ServerSettings(
        model_id=MODEL, api_key=KEY, concurrent=2, max_queue=1, progress_interval_s=0.05
    )
    with ThreadedServer(create_app(solver, settings)) as base:
        results: list[object] = []
        threads = [threading.Thread(target=lambda: results.append(ask(client(base)))) for _ in range(3)]
        for t in threads[:2]:
            t.start()
        wait_for_health(base, lambda h: h["running"] == 2 and h["queued"] == 0)  # both at once
        threads[2].start()
        wait_for_health(base, lambda h: h["running"] == 2 and h["queued"] == 1)
        status, _, payload = post(
            base, json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
        )
        assert status == 503 and payload["error"]["code"] == "queue_full"
        start = time.perf_counter()
        for t in threads:
            t.join()
        # two searches in parallel then the queued one: about 2 x delay_s, not 3 x
        assert len(results) == 3 and time.perf_counter() - start < 2.8
        with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
            health = json.loads(resp.read())
        assert health["served"] == 3 and health["running"] == 0 and health["rejected"] == 1


def test_queued_requests_count_their_place_behind_the_running_ones():
    from edgetts.server.engine import Engine, Job
    from edgetts.solver import SolveOptions

    solver = FakeSolver(delay_s=0.5)
    engine = Engine(solver, max_queue=4, concurrent=2)
    jobs = [Job(question="q", options=SolveOptions(strategy="majority")) for _ in range(4)]
    try:
        for job in jobs:
            engine.submit(job)
        assert [engine.position(job) for job in jobs] == [0, 0, 1, 2]
        assert engine._expected_wait() > 0  # all workers busy: a new job would wait
    finally:
        engine.close()


def test_deadline_counts_the_queue_and_an_unreachable_one_is_refused_at_once(fake):
    base, solver = fake
    solver.delay_s = 1.0
    first = threading.Thread(target=lambda: ask(client(base), deadline_s=5))
    first.start()
    wait_for_health(base, lambda h: h["running"] == 1)
    start = time.perf_counter()
    status, headers, payload = post(
        base,
        json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "deadline_s": 0.5}
        ).encode(),
    )
    assert status == 503 and payload["error"]["code"] == "deadline_unreachable"
    assert time.perf_counter() - start < 0.5 and int(headers["retry-after"]) >= 1
    first.join()


def test_client_that_disconnects_cancels_its_search(fake):
    base, solver = fake
    solver.delay_s = 20.0
    with pytest.raises(openai.APITimeoutError):
        ask(client(base, timeout=0.5))
    for _ in range(100):  # the server notices within its poll interval
        if solver.cancelled:
            break
        time.sleep(0.05)
    assert solver.cancelled == [True]
    solver.delay_s = 0.0
    assert ask(client(base)).model_extra["edgetts"]["answer"] == "42"


def test_cancel_event_ends_a_search_like_a_deadline_and_frees_every_path():
    generator = FakeGenerator(random_policy(seed=1, p_finish=0.05, max_depth=50), step_delay_s=0.01)
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    start = time.perf_counter()
    result = run_search(
        "beam_search",
        "q",
        generator,
        FakeScorer(),
        SearchConfig(n=4, beam_width=2, max_steps=50, cancel=cancel),
    )
    assert time.perf_counter() - start < 1.0
    assert result.cut_short
    assert not generator.leaks()


# -- slow: `edgetts serve` with the real model --------------------------------------------------


@pytest.fixture(scope="module")
def served():
    """``edgetts serve`` on a free loopback port: (base url, model id, process)."""
    base, proc = start_serve(
        "--api-key", KEY, "--max-tokens", "40", "--max-n", "4", "--n", "2", "--max-prompt-tokens", "256"
    )  # fmt: skip
    try:
        wait_until_healthy(base, proc)
        models = client(base).models.list()
        yield base, models.data[0].id, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_serve_answers_with_a_strategy(served):
    base, model, _ = served
    reply = ask(client(base, timeout=120), model=model, strategy="majority", n=2, max_tokens=32)
    info = reply.model_extra["edgetts"]
    assert info["strategy"] == "majority" and len(info["candidates"]) == 2
    assert sum(info["votes"].values()) == sum(c["answer"] is not None for c in info["candidates"])
    assert reply.choices[0].message.content
    assert info["counters"]["tokens_prefilled"] > 0
    # The scheduler's estimate for the loaded policy holds the process's peak memory (#21: within
    # 15 %; measured within 2 % by tools/bench_concurrent_server.py).
    with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
        health = json.loads(resp.read())
    assert health["memory_estimate_mb"] > 300
    assert abs(health["peak_rss_mb"] / health["memory_estimate_mb"] - 1) < 0.15, health


@pytest.mark.slow
def test_serve_loads_the_model_once_whatever_the_requests_ask(served):
    """Seen: majority and weighted requests in turn loaded the policy again each time (states
    kept, then not), and a request's memory_mb reloaded it under the other clients."""
    base, model, _ = served
    c = client(base, timeout=120)
    for strategy in ("majority", "weighted_best_of_n", "majority"):
        ask(c, model=model, strategy=strategy, n=2, max_tokens=16)
    with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
        health = json.loads(resp.read())
    held_mb = health["memory_estimate_mb"]  # with parking as held so far, not at its limit
    ask(c, model=model, strategy="majority", n=2, max_tokens=16, memory_mb=held_mb * 4)
    with pytest.raises(openai.BadRequestError, match="less than the loaded model may hold"):
        # room for a plan of its own, not for the model as loaded with its parking
        ask(c, model=model, strategy="majority", n=2, max_tokens=16, memory_mb=held_mb)
    with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
        assert json.loads(resp.read())["policy_loads"] == 1


@pytest.mark.slow
def test_serve_streams_greedy(served):
    base, model, _ = served
    stream = client(base, timeout=120).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is 6 * 7?"}],
        stream=True,
        max_tokens=32,
        extra_body={"strategy": "greedy"},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()
    final = chunks[-1].model_extra["edgetts"]
    assert final["strategy"] == "greedy" and final["n"] == 1


@pytest.mark.slow
def test_serve_returns_the_chosen_paths_token_logprobs(served):
    base, model, _ = served
    reply = client(base, timeout=120).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is 6 * 7?"}],
        max_tokens=32,
        logprobs=True,
        extra_body={"edgetts": {"strategy": "greedy"}},
    )
    content = reply.choices[0].logprobs.content
    assert content and all(t.logprob <= 0 and t.top_logprobs == [] for t in content)
    # the tokens spell the reply (which the server strips of surrounding blank space)
    assert "".join(t.token for t in content).strip() == reply.choices[0].message.content
    assert len(content) <= reply.usage.completion_tokens
    plain = client(base, timeout=120).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is 6 * 7?"}],
        max_tokens=32,
        extra_body={"edgetts": {"strategy": "greedy"}},
    )
    assert plain.choices[0].logprobs is None  # nothing kept unless asked for


@pytest.mark.slow
def test_serve_refuses_bad_requests_and_wrong_keys(served):
    base, model, _ = served
    with pytest.raises(openai.BadRequestError):
        ask(client(base), model=model, strategy="magic")
    with pytest.raises(openai.BadRequestError):
        ask(client(base), model=model, n=99)
    with pytest.raises(openai.AuthenticationError):
        ask(client(base, key="wrong"), model=model)
    # over --max-prompt-tokens 256, streamed or not: a 400 before any search or stream starts
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            reply = client(base).chat.completions.create(
                model=model, messages=[{"role": "user", "content": "seven " * 300}], stream=stream
            )
            list(reply) if stream else None
        assert err.value.body["code"] == "context_length_exceeded" and "256" in err.value.body["message"]
    # a lone surrogate (which the openai client cannot even send) is no text to tokenize
    status, _, payload = post(base, b'{"model": "m", "messages": [{"role": "user", "content": "x \\ud800"}]}')
    assert status == 400 and payload["error"]["param"] == "messages", payload


@pytest.mark.slow
def test_serve_runs_a_prm_strategy(served):
    base, model, _ = served
    reply = ask(client(base, timeout=120), model=model, strategy="best_of_n", n=2, max_tokens=24)
    info = reply.model_extra["edgetts"]
    assert info["strategy"] == "best_of_n"
    assert all(c["score"] is not None for c in info["candidates"])


@pytest.mark.slow
def test_serve_speaks_openai_to_the_openai_client(served):
    """Issue 23's check, on the real model: a system prompt changes the answer's format, n = 2
    gives two ranked distinct answers, stop cuts, and an unknown model name is the loaded policy."""
    base, _, _ = served
    c = client(base, timeout=300)
    question = [{"role": "user", "content": "What is 2+3?"}]
    greedy = {"edgetts": {"strategy": "greedy"}}

    plain = c.chat.completions.create(model="gpt-4o-mini", messages=question, extra_body=greedy)
    assert plain.model != "gpt-4o-mini" and plain.choices[0].message.content  # any name works
    system = {"role": "system", "content": "Reply with the number only. No words, no steps."}
    terse = c.chat.completions.create(model="gpt-4o-mini", extra_body=greedy, messages=[system, *question])
    # the math instructions ask for steps separated by blank lines; this system prompt for a number
    assert "\n\n" in plain.choices[0].message.content
    assert terse.choices[0].message.content.strip() == "5", terse.choices[0].message.content
    assert terse.choices[0].finish_reason == "stop"

    two = c.chat.completions.create(
        model="gpt-4o-mini",
        n=2,
        messages=[{"role": "user", "content": "What is 17 * 23 - 45 / 9?"}],
        temperature=1.2,
        seed=3,
        extra_body={"edgetts": {"strategy": "majority", "samples": 4}},
    )
    info = two.model_extra["edgetts"]
    ranked = sorted(info["votes"], key=info["votes"].get, reverse=True)
    assert len(ranked) >= 2, info  # the search found two distinct answers to return
    assert [ch.index for ch in two.choices] == [0, 1]
    assert info["answer"] == ranked[0] and ranked[0] in two.choices[0].message.content
    assert ranked[1] in two.choices[1].message.content  # the runner-up, second

    stopped = c.chat.completions.create(model="m", messages=question, stop=["\n\n"], extra_body=greedy)
    full = plain.choices[0].message.content
    cut = stopped.choices[0].message.content
    assert stopped.choices[0].finish_reason == "stop"
    assert "\n\n" not in cut and full.startswith(cut) and len(cut) < len(full)
    assert stopped.usage.completion_tokens < plain.usage.completion_tokens

    # a raw prompt is continued as written, no chat template around it
    raw = c.completions.create(model="m", prompt="1, 2, 3, 4,", max_tokens=4, stop=[","], extra_body=greedy)
    assert raw.choices[0].text.strip() == "5" and raw.choices[0].finish_reason == "stop", raw
    assert raw.usage.prompt_tokens < plain.usage.prompt_tokens  # no template, no instructions
    # Seen: 0 for a prompt the policy had prefilled already (plain's, asked again by stopped)
    assert stopped.usage.prompt_tokens == plain.usage.prompt_tokens > 0


@pytest.mark.slow
def test_serve_shuts_down_cleanly_mid_request(served):
    """Last on purpose: Ctrl-C while a search runs; it answers cut short and the process exits 0."""
    base, model, proc = served
    replies: list[object] = []
    worker = threading.Thread(
        target=lambda: replies.append(ask(client(base, timeout=60), model=model, strategy="majority", n=4))
    )
    worker.start()
    wait_for_health(base, lambda h: h["running"] == 1)
    proc.send_signal(signal.SIGINT)
    worker.join(timeout=60)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    assert replies and replies[0].model_extra["edgetts"]["cut_short"]


def test_openai_n_is_the_number_of_ranked_choices():
    """A client's n: 1 (sent by many by default) no longer turns the search off; n: 2 gives the
    two best distinct answers, the pick first; the budget is edgetts.samples."""
    solver = FakeSolver(others=("40", "41", "42.0"))
    with ThreadedServer(create_app(solver, ServerSettings(model_id=MODEL, max_n=8))) as base:
        c = client(base)
        one = ask(c, n=1)
        assert len(one.choices) == 1 and solver.options[-1].n != 1  # auto picks its own budget
        two = c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "6 * 7?"}],
            n=2,
            extra_body={"edgetts": {"strategy": "majority", "samples": 6}},
        )
        assert [ch.message.content for ch in two.choices] == ["6 * 7 = 42.\n\n\\boxed{42}", "\\boxed{40}"]
        assert [ch.index for ch in two.choices] == [0, 1]
        assert [ch.finish_reason for ch in two.choices] == ["stop", "length"]
        assert solver.options[-1].n == 6 and solver.options[-1].strategy == "majority"
        # more choices than distinct answers: further solutions (it gave 3 of 4 before)
        four = c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "6 * 7?"}],
            n=4,
            extra_body={"edgetts": {"strategy": "majority", "samples": 6}},
        )
        assert [ch.message.content for ch in four.choices][1:] == [
            "\\boxed{40}",
            "\\boxed{41}",
            "\\boxed{42.0}",
        ]
        with pytest.raises(openai.BadRequestError) as err:  # greedy has one answer (it gave 1)
            c.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "6 * 7?"}],
                n=2,
                extra_body={"edgetts": {"strategy": "greedy"}},
            )
        assert err.value.body["param"] == "n"
        assert two.model_extra["edgetts"]["deprecation"] is None
        legacy = ask(c, strategy="majority", n=3)  # the old top level: n is the budget, one choice
        assert len(legacy.choices) == 1 and solver.options[-1].n == 3
        assert "deprecated" in legacy.model_extra["edgetts"]["deprecation"]
        with pytest.raises(openai.BadRequestError) as err:
            ask(c, edgetts={"strategy": "majority", "sampels": 4})
        assert "sampels" in err.value.body["message"]


def test_the_whole_conversation_and_stop_reach_the_solver():
    """System prompt (also as "developer") and earlier turns reach the solver as one Conversation;
    OpenAI's stop, a string or up to 4, reaches the search's sampling."""
    from edgetts.prompts import Conversation

    solver = FakeSolver()
    with ThreadedServer(create_app(solver, ServerSettings(model_id=MODEL, max_n=8))) as base:
        c = client(base)
        c.chat.completions.create(
            model=MODEL,
            stop=["\n\n", "Therefore"],
            messages=[
                {"role": "developer", "content": "Answer in one line."},
                {"role": "user", "content": "What is 2+3?"},
                {"role": "assistant", "content": "5"},
                {"role": "user", "content": [{"type": "text", "text": "And 2+4?"}]},
            ],
        )
        turns = (
            ("system", "Answer in one line."),
            ("user", "What is 2+3?"),
            ("assistant", "5"),
            ("user", "And 2+4?"),
        )
        assert solver.questions[-1] == Conversation(turns)
        assert solver.options[-1].stop == ("\n\n", "Therefore")
        assert solver.options[-1].sampling().stop == ("\n\n", "Therefore")
        c.chat.completions.create(model=MODEL, stop="END", messages=[{"role": "user", "content": "2+3?"}])
        assert solver.options[-1].stop == ("END",)
        bad = [
            ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
            ({"stop": [""]}, "stop"),
            ({"logprobs": True, "top_logprobs": 2}, "top_logprobs"),  # no alternatives are kept
            ({"logprobs": 3}, "logprobs"),  # the completions API's integer form
            ({"messages": [{"role": "tool", "content": "x"}, {"role": "user", "content": "q"}]}, "messages"),
            (
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
                "messages",
            ),
        ]
        for fields, param in bad:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "q"}], **fields}
            status, _, payload = post(base, json.dumps(body).encode())
            assert status == 400, payload
            assert_openai_error(payload)
            assert payload["error"]["param"] == param, payload


def test_text_completions_take_a_raw_prompt():
    from edgetts.prompts import RawPrompt

    solver = FakeSolver(others=("40",))
    with ThreadedServer(create_app(solver, ServerSettings(model_id=MODEL, max_n=8))) as base:
        c = client(base)
        reply = c.completions.create(model="any-name", prompt="Q: 6 * 7?\nA:", n=2, stop=["\nQ:"])
        assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
        assert [ch.text for ch in reply.choices] == ["6 * 7 = 42.\n\n\\boxed{42}", "\\boxed{40}"]
        assert [ch.finish_reason for ch in reply.choices] == ["stop", "length"]
        assert reply.usage.prompt_tokens == 20 and reply.usage.completion_tokens == 9
        assert solver.questions[-1] == RawPrompt("Q: 6 * 7?\nA:") and solver.options[-1].stop == ("\nQ:",)
        for extra in ({"prompt": ["a", "b"]}, {"prompt": "   "}, {"prompt": "a", "stream": True}):
            with pytest.raises(openai.BadRequestError):
                c.completions.create(model=MODEL, **{"prompt": "x", **extra})


def test_what_the_second_server_review_found(fake):
    """The older function-calling fields were ignored (tools is refused); a stop string with a
    lone surrogate failed in the search (a stream had already answered 200); top_p 0, which
    OpenAI takes, was refused; an unknown URL's error type was not OpenAI's."""
    base, solver = fake
    c = client(base)
    for extra, param in (
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"function_call": {"name": "f"}}, "function_call"),
    ):
        with pytest.raises(openai.BadRequestError) as err:
            ask(c, **extra)
        assert err.value.body["param"] == param
    body = {
        "model": MODEL,
        "stream": True,
        "stop": ["\ud800"],
        "messages": [{"role": "user", "content": "hi"}],
    }
    status, _, payload = post(base, json.dumps(body).encode())
    assert status == 400 and payload["error"]["param"] == "stop" and not solver.questions, payload
    c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], top_p=0)
    assert solver.options[-1].top_p == 0
    try:
        urllib.request.urlopen(
            urllib.request.Request(f"{base}/v1/nope", headers={"Authorization": f"Bearer {KEY}"})
        )
    except urllib.error.HTTPError as err:
        assert err.code == 404 and json.loads(err.read())["error"]["type"] == "invalid_request_error"
    else:
        raise AssertionError("an unknown URL answered")


def test_strict_model_and_cors():
    settings = ServerSettings(
        model_id=MODEL, strict_model=True, cors_origins=("http://localhost:3000",), api_key=KEY
    )
    with ThreadedServer(create_app(FakeSolver(), settings)) as base:
        with pytest.raises(openai.NotFoundError):
            ask(client(base), model="gpt-4o-mini")
        with pytest.raises(openai.NotFoundError) as err:
            client(base).models.retrieve("gpt-4o")
        assert err.value.body["code"] == "model_not_found"
        preflight = urllib.request.Request(
            f"{base}/v1/chat/completions",
            method="OPTIONS",
            headers={
                "Origin": "http://localhost:3000",
                "Access-Control-Request-Method": "POST",
                # the official JS client's own headers too
                "Access-Control-Request-Headers": "authorization, content-type, x-stainless-lang",
            },
        )
        with urllib.request.urlopen(preflight, timeout=10) as resp:
            assert resp.headers["access-control-allow-origin"] == "http://localhost:3000"


class BrokenSolver(FakeSolver):
    """Fails inside, with text that names the machine's files."""

    def solve(self, question, options, cancel=None, counters=None) -> SearchResult:
        raise RuntimeError("/home/alice/models/secret.gguf: read error")

    def memory_estimate(self) -> None:
        raise RuntimeError("/home/alice/models/secret.gguf: gone")


def test_internal_errors_name_no_internals_and_keep_cors():
    """Seen in review: a 500 sent the exception's text to the client, and the one made for an
    unexpected error had no CORS headers (a browser app could not read it); /docs answered
    without the key."""
    origin = "http://localhost:3000"
    settings = ServerSettings(model_id=MODEL, cors_origins=(origin,), api_key=KEY)
    with ThreadedServer(create_app(BrokenSolver(), settings, prm_state="loaded")) as base:
        with pytest.raises(openai.InternalServerError) as failed:
            ask(client(base))
        assert "secret" not in str(failed.value.body) and "error" in failed.value.message
        # outside any search: /health itself raises
        health = urllib.request.Request(f"{base}/health", headers={"Origin": origin})
        with pytest.raises(urllib.error.HTTPError) as broken:
            urllib.request.urlopen(health, timeout=10)
        assert broken.value.code == 500
        assert broken.value.headers["access-control-allow-origin"] == origin
        body = json.loads(broken.value.read())
        assert body["error"]["type"] == "server_error" and "secret" not in json.dumps(body)
        for path in ("/docs", "/openapi.json"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{base}{path}", timeout=10)
            assert refused.value.code == 401, path
            keyed = urllib.request.Request(f"{base}{path}", headers={"Authorization": f"Bearer {KEY}"})
            with urllib.request.urlopen(keyed, timeout=10) as resp:
                assert resp.status == 200, path


class GarbledSolver(FakeSolver):
    """Answers with a result the server cannot turn into events."""

    def solve(self, question, options, cancel=None, counters=None) -> SearchResult:
        result = super().solve(question, options, cancel, counters)
        result.candidates = [object()]  # what no answer event can be made of
        return result


def test_a_stream_that_fails_after_it_started_ends_with_an_error_event():
    """Seen in review: an exception once the 200 had gone out dropped the connection with no
    error event."""
    with ThreadedServer(create_app(GarbledSolver(), ServerSettings(model_id=MODEL))) as base:
        stream = client(base).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "What is 6 * 7?"}], stream=True
        )
        with pytest.raises(openai.APIError, match="the answer could not be sent"):
            for _ in stream:
                pass


def test_logprobs_keep_the_bytes_of_a_token_that_splits_a_character():
    """Seen: a token holding half of an emoji was decoded to U+FFFD and its bytes rebuilt from
    that, so joining the tokens' bytes gave replacement characters instead of the emoji."""
    from edgetts.server.responses import logprobs_of

    apple = "🍎".encode()
    chosen = Candidate(
        " 🍎", None, None, [], 3, "eos", token_logprobs=[(b" ", -0.1), (apple[:2], -0.2), (apple[2:], -0.3)]
    )
    content = logprobs_of(chosen).content
    assert b"".join(bytes(t.bytes) for t in content).decode() == " 🍎"
    assert content[1].token == "bytes:\\xf0\\x9f" and content[0].token == " "


def test_logprobs_cover_the_text_returned_not_a_cut_stop_or_trimmed_space():
    """Seen in review: with stop=["multiplied"] the content ended "finding 6" while the tokens
    went on with " multiplied", and the space trimmed off the content was still a token."""
    from edgetts.server.responses import logprobs_of

    pieces = [b"\n", b"To", b" find", b" 6", b" multiplied"]
    chosen = Candidate("\nTo find 6 ", None, None, [], 5, "stop", token_logprobs=[(p, -0.1) for p in pieces])
    content = logprobs_of(chosen, chosen.text.strip()).content
    assert [bytes(t.bytes) for t in content] == [b"To", b" find", b" 6"]
    assert len(logprobs_of(chosen).content) == 5  # the whole text: every token kept
    # a blank first step is no step: the text lacks its token (diff review: the last was lost)
    pieces = [b"\n\n", b"The", b" answer", b" is", b" 5", b"."]
    chosen = Candidate(
        "The answer is 5.", None, None, [], 6, "eos", token_logprobs=[(p, -0.1) for p in pieces]
    )
    assert [bytes(t.bytes) for t in logprobs_of(chosen, chosen.text.strip()).content] == pieces[1:]
