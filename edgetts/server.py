"""A local OpenAI-compatible server: ``POST /v1/chat/completions`` answers with a test-time search.

Any OpenAI client works against it, with OpenAI's meanings: ``n`` is the number of choices (the
best distinct answers the search found, ranked), and any model name means the loaded policy
(``--strict-model`` to refuse others). The search is chosen in an ``edgetts`` extension object
(``{"strategy": "weighted_best_of_n", "samples": 16, "beam_width", "deadline_s", "memory_mb", ...}``;
the old top-level fields still work, with a deprecation note), and every response carries an
``edgetts`` object with the final answer, the votes or scores and the counters. ``usage`` counts
the prompt as prefilled (``prompt_tokens``) and every token the search sampled over all its paths
(``completion_tokens``), not only the returned choices'.

The whole conversation goes through the chat template (:class:`~edgetts.prompts.Conversation`):
the client's system message replaces the math instructions, and every message is untrusted text.
``stop`` ends each sampled solution where a stop string first appears. ``POST /v1/completions``
continues a raw prompt (:class:`~edgetts.prompts.RawPrompt`) with no template.

How requests flow:

* One :class:`~edgetts.solver.Solver` (the policy and the PRM, loaded once) serves every request.
  llama.cpp has one context, so searches run one at a time on a single worker thread.
* Requests wait in a bounded queue; when it is full the server answers 503 with ``Retry-After``
  instead of piling up work it cannot finish.
* Each request owns a cancel event that the search sees as an expired deadline. A client that
  disconnects sets it: its search stops within a token and frees its KV sequences, or, if still
  queued, never starts. Shutdown (Ctrl-C, SIGTERM) sets every event, so in-flight requests still
  get their best answer so far (``cut_short``) and queued ones a 503.
* Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgetts.grading import answers_equal
from edgetts.policy import PolicyError, Prompt
from edgetts.prompts import ROLES, Conversation, RawPrompt
from edgetts.search import NEEDS_SCORER, STRATEGIES
from edgetts.search.base import Candidate, SearchResult
from edgetts.solver import GREEDY, SolveOptions, Solver, validate_code_options

if TYPE_CHECKING:
    from edgetts.code import CodeResult

log = logging.getLogger("edgetts.server")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# A request is admitted only if it can expect this share of its deadline for the search itself;
# otherwise it would mostly wait and then answer from a search cut to almost nothing.
MIN_SEARCH_SHARE = 0.5
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


@dataclass
class ServerSettings:
    """What the server allows and assumes; the CLI fills it from ``edgetts serve`` options."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # when set, /v1/* needs ``Authorization: Bearer <key>``
    model_id: str = "edgetts"  # the name /v1/models lists and requests must use
    model_aliases: tuple[str, ...] = ()  # other accepted names (file name, path)
    max_tokens: int = 512  # per solution; the policy's context is sized for it
    max_n: int = 16
    max_queue: int = 4  # requests waiting behind the one being searched
    max_body_bytes: int = 256 * 1024
    default_strategy: str | None = None  # None: "auto" once SolveOptions has it, else majority
    default_n: int = 4
    default_deadline_s: float | None = None
    memory_mb: float | None = None  # the server's budget, passed to "auto" when supported
    progress_interval_s: float = 1.0  # streaming: one progress chunk this often while searching
    shutdown_grace_s: float = 10.0  # how long shutdown waits for responses before dropping them
    # False: any model name a client sends means the loaded policy (clients come configured
    # with names of their own); True: only model_id and its aliases, 404 otherwise.
    strict_model: bool = False
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API
    # Run model-written code (task "code", mode "pot" / "cot+pot") in the solver's sandbox.
    # Off by default: such requests get a 400 naming --allow-exec.
    allow_exec: bool = False


# -- errors ------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered in OpenAI's shape; the message says what to change."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


HTTP_ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error"}


def _http_error(exc: HTTPException) -> ApiError:
    """Starlette's own errors (unknown route, wrong method, body too large) in OpenAI's shape."""
    kind = HTTP_ERROR_TYPES.get(exc.status_code, "invalid_request_error")
    code = "request_too_large" if exc.status_code == 413 else None
    return ApiError(exc.status_code, str(exc.detail), type=kind, code=code, headers=exc.headers)


def _validation_error(exc: RequestValidationError) -> ApiError:
    """Pydantic's report, first problem first, with the offending field as ``param``."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first.get('msg')}", code="invalid_json")
    where = ".".join(loc)
    message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return ApiError(400, message, param=where or None)


class Guard:
    """Checks a request before any handler sees it: the API key (/v1 only), then the body size.

    Auth comes first so a client with the wrong key learns only that (401), whatever its body.
    The size limit is checked on the declared length and again while reading (chunked bodies);
    it is written out because older FastAPI versions have no such option.
    """

    def __init__(self, app: ASGIApp, api_key: str | None, max_bytes: int) -> None:
        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        if self.api_key is not None and scope["path"].startswith("/v1/"):
            if not self._authorized(headers.get(b"authorization", b"")):
                await _send_error(send, ApiError(
                    401, "incorrect or missing API key (send Authorization: Bearer <key>)",
                    type="authentication_error", code="invalid_api_key"))
                return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, ApiError(413, self._too_large(), code="request_too_large"))
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # FastAPI turns an HTTPException raised while reading the body into its response.
                raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, limited, send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.decode("latin-1").partition(" ")
        expected = (self.api_key or "").encode()
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), expected)

    def _too_large(self) -> str:
        return f"the request body is larger than this server accepts ({self.max_bytes} bytes)"


async def _send_error(send: Send, error: ApiError) -> None:
    await error.response()({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


# -- request and response schemas ----------------------------------------------------------------


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            if any(part.type != "text" for part in self.content):
                raise ApiError(400, "only text content parts are supported", param="messages")
            return "".join(part.text or "" for part in self.content)
        return self.content or ""


class SearchFields(BaseModel):
    """The ``edgetts`` extension object of a request: which search, and how much of it."""

    model_config = ConfigDict(extra="forbid")  # a misspelt search field is a 400, not a no-op

    strategy: str | None = None
    samples: int | None = Field(None, ge=1)  # samples, beams or leaves: the search budget
    beam_width: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    agg: Literal["last", "min", "prod"] | None = None
    deadline_s: float | None = Field(None, gt=0)
    memory_mb: float | None = Field(None, gt=0)
    # Model-written code runs only on a server started with --allow-exec (else a 400).
    task: Literal["math", "code"] = "math"  # code: write a function; the reply is the program
    mode: Literal["cot", "pot", "cot+pot"] = "cot"  # math by prose, programs, or both


# Search fields once read at the top level of a request (with ``n`` as the budget); still
# accepted when the request has no ``edgetts`` object, with a deprecation note in the response.
LEGACY_FIELDS = ("strategy", "beam_width", "max_steps", "agg", "deadline_s", "memory_mb")
LEGACY_NOTE = ("top-level strategy/beam_width/max_steps/agg/deadline_s/memory_mb (and n as the search "
               "budget) are deprecated: send them in an \"edgetts\" object, with \"samples\" for the "
               "budget; n is the number of choices")


class SearchRequest(BaseModel):
    """What chat and text completion requests share: OpenAI's sampling fields plus the edgetts
    search settings.

    ``n`` is OpenAI's: how many choices (the best distinct answers, ranked). The search goes in
    the ``edgetts`` extension object (:class:`SearchFields`). Unknown OpenAI fields (``user``,
    ...) are ignored so stock clients work.
    """

    model_config = ConfigDict(extra="ignore")

    model: str
    stream: bool = False
    # OpenAI's stop: up to 4 strings; a solution ends where one first appears (cut off).
    stop: str | list[str] | None = None
    # Not supported yet: read only to refuse them (a client asking for them must not get an
    # answer without them as if they were fine).
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # an extension, as llama.cpp's server has it
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    edgetts: SearchFields | None = None
    # deprecated top-level search fields (see LEGACY_FIELDS)
    strategy: str | None = None
    beam_width: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    agg: Literal["last", "min", "prod"] | None = None
    deadline_s: float | None = Field(None, gt=0)
    memory_mb: float | None = Field(None, gt=0)

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def prompt_input(self) -> Prompt:
        """What the search roots in."""
        raise NotImplementedError

    def question(self) -> str:
        """The text a code task is written for."""
        return self.prompt_input().question


# OpenAI's newer name for the system role; tool and function turns have no place in a search.
ROLE_ALIASES = {"developer": "system"}


class ChatRequest(SearchRequest):
    """OpenAI's chat request: the whole conversation goes through the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)

    def prompt_input(self) -> Conversation:
        """The conversation, each message's text untrusted (see :class:`Conversation`)."""
        turns = []
        for message in self.messages:
            role = ROLE_ALIASES.get(message.role, message.role)
            if role not in ROLES:
                raise ApiError(400, f"message role {message.role!r} is not supported here; use "
                                    "system, developer, user or assistant", param="messages")
            turns.append((role, message.text()))
        try:
            return Conversation(tuple(turns))
        except ValueError as exc:
            raise ApiError(400, str(exc), param="messages") from None


class CompletionRequest(SearchRequest):
    """OpenAI's (legacy) text completion request: a raw prompt, continued with no template."""

    prompt: str | list[str]
    echo: bool = False

    def prompt_input(self) -> RawPrompt:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if len(prompts) != 1:
            raise ApiError(400, "send one prompt per request (a list of prompts is not supported)",
                           param="prompt")
        if self.echo:
            raise ApiError(400, "echo is not supported", param="echo")
        try:
            return RawPrompt(prompts[0])
        except ValueError as exc:
            raise ApiError(400, str(exc), param="prompt") from None


class CandidateInfo(BaseModel):
    answer: str | None
    score: float | None
    n_tokens: int
    stop_reason: str | None


class EdgettsInfo(BaseModel):
    """The search behind the answer: what it picked, why, and what it cost."""

    answer: str | None
    strategy: str
    n: int
    cut_short: bool
    votes: dict[str, float]
    chosen_index: int | None
    step_scores: list[float]
    candidates: list[CandidateInfo]
    counters: dict[str, int | float]
    queue_s: float
    search_s: float
    deprecation: str | None = None


class Progress(BaseModel):
    state: Literal["queued", "searching"]
    elapsed_s: float
    queue_position: int | None = None
    tokens_generated: int = 0


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    edgetts: EdgettsInfo


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """One streamed event; ``edgetts`` holds progress while searching and the result at the end."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    edgetts: EdgettsInfo | dict[str, Progress] | None = None


class TextChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage
    edgetts: EdgettsInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "edgetts"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "shutting_down"]
    model: str
    prm: str  # "loaded" or why it is not
    running: int
    queued: int
    max_queue: int
    served: int  # searches that answered
    failed: int  # searches that raised (bad input found late, a model error)
    cancelled: int  # clients that left, and searches stopped by shutdown before they started
    rejected: int  # turned away at the door (503: queue full, deadline unreachable)


# -- the search queue --------------------------------------------------------------------------


@dataclass(eq=False)
class Job:
    """One request's search: what to run, its cancel event, and when it queued and started."""

    question: Prompt  # a conversation or raw prompt (math), or the text of a code task
    options: SolveOptions
    n_choices: int = 1
    deprecation: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future | None = None
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    finished_at: float | None = None
    tokens_at_start: int = 0
    task: str = "math"

    def abandon(self) -> None:
        """The client is gone: never start, or stop the search at its next check."""
        self.cancel.set()
        if self.future is not None:
            self.future.cancel()  # succeeds only while still queued


class Engine:
    """Runs searches one at a time on a worker thread, behind a bounded queue."""

    def __init__(self, solver: Solver, max_queue: int, expected_s: float = 5.0) -> None:
        self.solver = solver
        self.max_queue = max_queue
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgetts-search")
        self.jobs: list[Job] = []  # submitted and not done, in queue order
        self.closing = False
        self.served = 0
        self.failed = 0
        self.cancelled = 0
        self.rejected = 0
        self.avg_s = expected_s  # moving average of search time, for Retry-After
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def submit(self, job: Job) -> None:
        """Queue ``job`` or raise 503: shutting down, queue full, or no chance to start in time.

        A request's ``deadline_s`` counts from its arrival (the client waits for the queue too),
        so one that could not start with ``MIN_SEARCH_SHARE`` of it left is refused at once.
        """
        with self._lock:
            if self.closing:
                raise ApiError(503, "the server is shutting down", type="server_error",
                               code="shutting_down")
            wait = self._expected_wait()
            retry = {"Retry-After": str(max(1, math.ceil(wait)))}
            if len(self.jobs) > self.max_queue:  # one running + max_queue waiting
                self.rejected += 1
                raise ApiError(503, f"the server is busy ({len(self.jobs)} requests ahead); "
                                    f"retry in {retry['Retry-After']} s",
                               type="server_error", code="queue_full", headers=retry)
            deadline = job.options.deadline_s
            if deadline is not None and wait > deadline * (1 - MIN_SEARCH_SHARE):
                self.rejected += 1
                raise ApiError(503, f"the requests ahead need about {wait:.1f} s, too much of "
                                    f"deadline_s={deadline:g}", type="server_error",
                               code="deadline_unreachable", headers=retry)
            self.jobs.append(job)
        job.future = self.executor.submit(self._run, job)
        job.future.add_done_callback(lambda _: self._done(job))

    def _expected_wait(self) -> float:
        """Seconds until a new job would start: each job ahead takes its deadline or the average."""
        now, wait = time.perf_counter(), 0.0
        for job in self.jobs:
            deadline = job.options.deadline_s
            need = self.avg_s if deadline is None else min(deadline, self.avg_s)
            if job.started_at is not None:  # running (its deadline now counts from the start)
                need = (deadline if deadline is not None else need) - (now - job.started_at)
            wait += max(need, 0.0)
        return wait

    def _run(self, job: Job) -> SearchResult | None:
        """On the worker thread. ``None`` means the job was cancelled before it started."""
        if job.cancel.is_set():
            return None
        job.started_at = time.perf_counter()
        if job.options.deadline_s is not None:  # the time spent queued counts against it
            left = job.queued_at + job.options.deadline_s - job.started_at
            if left <= 0:
                raise ApiError(503, f"deadline_s={job.options.deadline_s:g} passed while queued",
                               type="server_error", code="deadline_exceeded")
            job.options = dataclasses.replace(job.options, deadline_s=left)
        job.tokens_at_start = self.solver.policy.counters.tokens_sampled
        try:
            if job.task == "code":
                from edgetts.code import CodeTask

                task = CodeTask.from_prompt(str(job.question))
                return code_as_search_result(self.solver.solve_code(task, job.options, cancel=job.cancel))
            return self.solver.solve(job.question, job.options, cancel=job.cancel)
        finally:
            job.finished_at = time.perf_counter()

    def _done(self, job: Job) -> None:
        with self._lock:
            self.jobs.remove(job)
            future = job.future
            if future is None or future.cancelled() or job.cancel.is_set() and job.started_at is None:
                self.cancelled += 1
            elif future.exception() is not None:
                self.failed += 1
            elif job.cancel.is_set():
                self.cancelled += 1  # stopped mid-search: an answer so far, but not what was asked
            else:
                self.served += 1
            if job.finished_at is not None and job.started_at is not None:
                self.avg_s = 0.8 * self.avg_s + 0.2 * (job.finished_at - job.started_at)

    def position(self, job: Job) -> int:
        """0 while searching, else how many requests are ahead of it."""
        with self._lock:
            return self.jobs.index(job) if job in self.jobs else 0

    def tokens_generated(self, job: Job) -> int:
        policy = self.solver._policy
        if job.started_at is None or policy is None:
            return 0
        return policy.counters.tokens_sampled - job.tokens_at_start

    def begin_shutdown(self) -> None:
        """Refuse new work and cut every search short; safe to call from a signal handler."""
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self._cancel_all)  # signal handlers must not take locks
        else:
            self._cancel_all()

    def _cancel_all(self) -> None:
        with self._lock:
            self.closing = True
            jobs = list(self.jobs)
        for job in jobs:
            job.cancel.set()

    def close(self) -> None:
        self._cancel_all()
        self.executor.shutdown(wait=True)


# -- the app -----------------------------------------------------------------------------------


def known_strategies() -> set[str]:
    """Strategy names requests may use; ``auto`` once SolveOptions accepts it (the scheduler)."""
    names = {GREEDY, *STRATEGIES}
    try:
        SolveOptions(strategy="auto").validate()
    except (ValueError, TypeError):
        return names
    return names | {"auto"}


def code_as_search_result(code: CodeResult) -> SearchResult:
    """A code task's result in the response's shape: the answer is the chosen program, each
    candidate's answer its program, and the votes each behaviour cluster's support."""
    candidates = [
        Candidate(text=c.text, answer=c.program, score=None, step_scores=[], n_tokens=c.n_tokens,
                  stop_reason=c.stop_reason)
        for c in code.candidates
    ]
    chosen = candidates[code.chosen] if code.chosen is not None else None
    if chosen is not None and code.program is not None:
        chosen = dataclasses.replace(chosen, text=f"```python\n{code.program.rstrip()}\n```")
        candidates[code.chosen] = chosen
    votes = {f"cluster {i}": c["support"] for i, c in enumerate(code.clusters)}
    return SearchResult(strategy=f"code {code.strategy}", answer=code.program, chosen=chosen,
                        candidates=candidates, votes=votes, cut_short=code.cut_short,
                        counters=dict(code.counters))


def _finish_reason(candidate: Candidate | None) -> Literal["stop", "length"]:
    """OpenAI's: "stop" at the end of the text or a stop string, "length" when cut short."""
    return "stop" if candidate is not None and candidate.stop_reason in ("eos", "stop") else "length"


def _usage(result: SearchResult) -> Usage:
    prompt = int(result.counters.get("tokens_prefilled", 0))
    completion = int(result.counters.get("tokens_sampled", 0))
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _info(job: Job, result: SearchResult) -> EdgettsInfo:
    chosen = result.chosen
    index = next((i for i, c in enumerate(result.candidates) if c is chosen), None)
    started = job.started_at or job.queued_at
    return EdgettsInfo(
        answer=result.answer,
        strategy=result.strategy,
        n=1 if job.options.strategy == GREEDY else job.options.n or len(result.candidates),
        cut_short=result.cut_short,
        votes=result.votes,
        chosen_index=index,
        step_scores=chosen.step_scores if chosen else [],
        candidates=[
            CandidateInfo(answer=c.answer, score=c.score, n_tokens=c.n_tokens, stop_reason=c.stop_reason)
            for c in result.candidates
        ],
        counters=result.counters,
        queue_s=round(started - job.queued_at, 3),
        search_s=round((job.finished_at or started) - started, 3),
        deprecation=job.deprecation,
    )


def ranked_choices(result: SearchResult, k: int) -> list[Candidate]:
    """Up to ``k`` candidates with distinct answers: the pick first, then the other answers by
    their vote (or score), each by its best-scored path. Fewer when fewer answers were found."""
    chosen = [result.chosen] if result.chosen is not None else []

    def rank(c: Candidate) -> tuple[float, float]:
        return (result.votes.get(c.answer or "", 0.0), c.score if c.score is not None else 0.0)

    for cand in sorted(result.candidates, key=rank, reverse=True):
        if len(chosen) >= k:
            break
        if cand.answer is not None and all(not answers_equal(cand.answer, c.answer) for c in chosen):
            chosen.append(cand)
    return chosen


class App:
    """The request handlers, holding the solver, the settings and the queue."""

    def __init__(self, solver: Solver, settings: ServerSettings) -> None:
        self.solver = solver
        self.settings = settings
        self.engine = Engine(solver, settings.max_queue, expected_s=settings.default_deadline_s or 5.0)
        self.strategies = known_strategies()
        self.default_strategy = settings.default_strategy or (
            "auto" if "auto" in self.strategies else "majority"
        )
        if self.default_strategy not in self.strategies:
            raise ValueError(f"unknown default strategy {self.default_strategy!r}; "
                             f"choose one of {sorted(self.strategies)}")
        self.prm_state = "loaded" if solver._scorer is not None else "not loaded"
        self.created = int(time.time())

    # -- validation ------------------------------------------------------------------------

    def check_model(self, model: str) -> None:
        strict = self.settings.strict_model
        if strict and model not in (self.settings.model_id, *self.settings.model_aliases):
            raise ApiError(404, f"the model {model!r} does not exist here; this server runs "
                                f"{self.settings.model_id!r} (see GET /v1/models)",
                           param="model", code="model_not_found")

    def job_for(self, req: SearchRequest) -> Job:
        """Turn a request into a validated search job (every 400 is raised here, before queueing)."""
        self.check_model(req.model)
        if req.logprobs or req.top_logprobs:
            raise ApiError(400, "logprobs are not supported by this server yet", param="logprobs",
                           code="unsupported_parameter")
        s = self.settings
        search, budget, choices, deprecation, where = self._search_of(req)
        if (search.task == "code" or search.mode != "cot") and not s.allow_exec:
            what = "task=code" if search.task == "code" else f"mode={search.mode}"
            raise ApiError(400, f"{what} runs model-written code, which this server does not allow; "
                                "start it with `edgetts serve --allow-exec`",
                           param=f"{where}task" if search.task == "code" else f"{where}mode",
                           code="exec_not_allowed")
        if search.task == "code":
            return self._code_job(req, search, budget, where)
        strategy = search.strategy or self.default_strategy
        if strategy not in self.strategies:
            raise ApiError(400, f"unknown strategy {strategy!r}; choose one of {sorted(self.strategies)}",
                           param=f"{where}strategy", code="invalid_strategy")
        if strategy in NEEDS_SCORER and self.prm_state != "loaded":
            raise ApiError(400, f"strategy {strategy!r} needs the PRM, which this server has not "
                                f"loaded ({self.prm_state})", param=f"{where}strategy")
        # auto picks its own budget (under the deadline / memory budget) unless the request names one
        n = budget or (None if strategy == "auto" else max(s.default_n, choices))
        budget_param = "n" if where == "" else "edgetts.samples"
        if n is not None and n > s.max_n:
            raise ApiError(400, f"a search of {n} is more than this server allows (max {s.max_n})",
                           param=budget_param)
        if choices > s.max_n:
            raise ApiError(400, f"n={choices} choices is more than this server allows (max {s.max_n})",
                           param="n")
        max_tokens = req.max_completion_tokens or req.max_tokens or s.max_tokens
        if max_tokens > s.max_tokens:
            raise ApiError(400, f"max_tokens={max_tokens} is more than this server allows "
                                f"(max {s.max_tokens})", param="max_tokens")
        fields: dict[str, Any] = {"strategy": strategy, "max_tokens": max_tokens}
        if n is not None:
            fields["n"] = n
        for name in ("beam_width", "max_steps", "agg"):
            if getattr(search, name) is not None:
                fields[name] = getattr(search, name)
        for name in ("temperature", "top_p", "top_k", "seed"):
            if getattr(req, name) is not None:
                fields[name] = getattr(req, name)
        if "beam_width" not in fields and n is not None and strategy in ("beam_search", "dvts"):
            fields["beam_width"] = min(4, n)  # so a plain budget works without also picking a width
        deadline = search.deadline_s or s.default_deadline_s
        if deadline is not None:
            fields["deadline_s"] = deadline
        memory = self._memory_mb(search.memory_mb)
        if memory is not None:
            fields["memory_mb"] = memory
        if search.mode != "cot":
            fields["mode"] = search.mode
        if req.stop is not None:
            fields["stop"] = req.stops()
        options = SolveOptions(**fields)
        try:
            options.validate()
        except ValueError as exc:
            raise ApiError(400, str(exc), param="stop" if "stop" in str(exc) else None) from None
        return Job(question=req.prompt_input(), options=options, n_choices=choices,
                   deprecation=deprecation)

    @staticmethod
    def _search_of(req: SearchRequest) -> tuple[SearchFields, int | None, int, str | None, str]:
        """(search fields, search budget, choices, deprecation note, error param prefix).

        With an ``edgetts`` object, ``n`` is OpenAI's number of choices; a request with the old
        top-level search fields instead keeps their old meaning (``n`` = budget, one choice).
        """
        if req.edgetts is not None:
            return req.edgetts, req.edgetts.samples, req.n or 1, None, "edgetts."
        legacy = {name: getattr(req, name) for name in LEGACY_FIELDS if getattr(req, name) is not None}
        if legacy:
            return SearchFields(**legacy), req.n, 1, LEGACY_NOTE, ""
        return SearchFields(), None, req.n or 1, None, "edgetts."

    def _code_job(self, req: SearchRequest, search: SearchFields, budget: int | None, where: str) -> Job:
        """A code task: strategy greedy, majority or exec (default), no budget planning."""
        s = self.settings
        n = budget or s.default_n
        if n > s.max_n:
            raise ApiError(400, f"a search of {n} is more than this server allows (max {s.max_n})",
                           param=f"{where}samples" if where else "n")
        max_tokens = req.max_completion_tokens or req.max_tokens or s.max_tokens
        if max_tokens > s.max_tokens:
            raise ApiError(400, f"max_tokens={max_tokens} is more than this server allows "
                                f"(max {s.max_tokens})", param="max_tokens")
        fields: dict[str, Any] = {"strategy": search.strategy or "exec", "n": n, "max_tokens": max_tokens}
        for name in ("temperature", "top_p", "top_k", "seed"):
            if getattr(req, name) is not None:
                fields[name] = getattr(req, name)
        if search.deadline_s or s.default_deadline_s:
            fields["deadline_s"] = search.deadline_s or s.default_deadline_s
        options = SolveOptions(**fields)
        try:
            validate_code_options(options)
        except ValueError as exc:
            raise ApiError(400, str(exc), param=f"{where}strategy") from None
        return Job(question=req.question(), options=options, task="code")

    def _memory_mb(self, requested: float | None) -> float | None:
        """The request's memory budget, capped by the server's own."""
        budget = self.settings.memory_mb
        if requested is None:
            return budget
        return requested if budget is None else min(requested, budget)

    # -- running -----------------------------------------------------------------------------

    async def wait(self, job: Job, request: Request | None = None) -> SearchResult:
        """Wait for ``job``; a client that disconnects abandons it. Errors come back as ApiError."""
        assert job.future is not None
        future = asyncio.wrap_future(job.future)
        try:
            while not future.done():
                await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
                if not future.done() and request is not None and await request.is_disconnected():
                    log.info("client disconnected: search cancelled")
                    job.abandon()
                    raise ApiError(499, "client closed the request", code="client_closed")
            return _result(job, future)
        finally:
            if not future.done():  # cancelled by the server (shutdown timeout)
                job.abandon()

    async def complete(self, req: ChatRequest, request: Request) -> ChatCompletion:
        job = self.job_for(req)
        self.engine.submit(job)
        result = await self.wait(job, request)
        picks = ranked_choices(result, job.n_choices) or [None]
        choices = [
            Choice(index=i, message=ResponseMessage(content=c.text.strip() if c else ""),
                   finish_reason=_finish_reason(c))
            for i, c in enumerate(picks)
        ]
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=self.settings.model_id,
            choices=choices,
            usage=_usage(result),
            edgetts=_info(job, result),
        )

    async def complete_text(self, req: CompletionRequest, request: Request) -> TextCompletion:
        """``/v1/completions``: the raw prompt continued; choices as for chat."""
        if req.stream:
            raise ApiError(400, "stream is not supported on /v1/completions; use /v1/chat/completions",
                           param="stream")
        job = self.job_for(req)
        self.engine.submit(job)
        result = await self.wait(job, request)
        picks = ranked_choices(result, job.n_choices) or [None]
        return TextCompletion(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=self.settings.model_id,
            choices=[TextChoice(index=i, text=c.text if c else "", finish_reason=_finish_reason(c))
                     for i, c in enumerate(picks)],
            usage=_usage(result),
            edgetts=_info(job, result),
        )

    async def stream(self, req: ChatRequest) -> AsyncIterator[dict[str, str]]:
        """Validate and queue now (so errors are plain 4xx/503), then stream the events.

        Returns the event iterator: a role chunk, a progress chunk every ``progress_interval_s``,
        the answer, a last chunk with the finish reason and the ``edgetts`` result, ``[DONE]``.
        """
        job = self.job_for(req)
        self.engine.submit(job)
        return self._events(job)

    async def _events(self, job: Job) -> AsyncIterator[dict[str, str]]:
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": self.settings.model_id}

        def event(delta: Delta, index: int = 0, **extra: Any) -> dict[str, str]:
            finish = extra.pop("finish_reason", None)
            chunk = ChatCompletionChunk(
                **base, choices=[ChunkChoice(index=index, delta=delta, finish_reason=finish)], **extra
            ).model_dump(mode="json")
            # Like OpenAI: the delta holds only what changed, finish_reason stays (null).
            chunk["choices"][0]["delta"] = delta.model_dump(exclude_none=True)
            for key in ("usage", "edgetts"):
                if chunk[key] is None:
                    del chunk[key]
            return {"data": json.dumps(chunk, ensure_ascii=False)}

        assert job.future is not None
        future = asyncio.wrap_future(job.future)
        try:
            yield event(Delta(role="assistant", content=""))
            while not future.done():
                await asyncio.wait({future}, timeout=self.settings.progress_interval_s)
                if not future.done():
                    yield event(Delta(), edgetts={"progress": self._progress(job)})
            try:
                result = _result(job, future)
            except ApiError as exc:
                yield {"data": json.dumps(exc.body())}  # OpenAI clients raise on an error event
                return
            picks = ranked_choices(result, job.n_choices) or [None]
            for i, pick in enumerate(picks):
                if i:
                    yield event(Delta(role="assistant", content=""), index=i)
                yield event(Delta(content=pick.text.strip() if pick else ""), index=i)
            for i, pick in enumerate(picks[:-1]):
                yield event(Delta(), index=i, finish_reason=_finish_reason(pick))
            yield event(Delta(), index=len(picks) - 1, finish_reason=_finish_reason(picks[-1]),
                        usage=_usage(result), edgetts=_info(job, result))
            yield {"data": "[DONE]"}
        finally:
            if not future.done():  # the client went away (or the server dropped the stream)
                log.info("stream closed early: search cancelled")
                job.abandon()

    def _progress(self, job: Job) -> Progress:
        elapsed = round(time.perf_counter() - job.queued_at, 3)
        if job.started_at is None:
            return Progress(state="queued", elapsed_s=elapsed, queue_position=self.engine.position(job))
        tokens = self.engine.tokens_generated(job)
        return Progress(state="searching", elapsed_s=elapsed, tokens_generated=tokens)

    def health(self) -> Health:
        engine = self.engine
        running = sum(1 for j in list(engine.jobs) if j.started_at is not None)
        return Health(
            status="shutting_down" if engine.closing else "ok",
            model=self.settings.model_id,
            prm=self.prm_state,
            running=running,
            queued=len(engine.jobs) - running,
            max_queue=engine.max_queue,
            served=engine.served,
            failed=engine.failed,
            cancelled=engine.cancelled,
            rejected=engine.rejected,
        )


def _result(job: Job, future: asyncio.Future) -> SearchResult:
    """The finished job's result, with the errors users cause turned into ApiError."""
    if future.cancelled():
        raise ApiError(503, "the request was cancelled", type="server_error", code="cancelled")
    try:
        result = future.result()
    except ApiError:
        raise
    except (PolicyError, ValueError) as exc:  # e.g. a question longer than the context
        raise ApiError(400, str(exc)) from None
    except Exception as exc:
        log.exception("search failed")
        raise ApiError(500, f"the search failed: {exc}", type="server_error") from None
    if result is None:
        raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
    return result


def create_app(solver: Solver, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``solver`` (models are expected to be loaded already)."""
    from sse_starlette.sse import EventSourceResponse  # imported here: it patches uvicorn on import

    settings = settings or ServerSettings()
    state = App(solver, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state.engine.loop = asyncio.get_running_loop()
        yield
        state.engine.close()  # uvicorn has already waited for (or dropped) open requests

    app = FastAPI(title="edgetts", version="0.1.0", lifespan=lifespan)
    app.state.edgetts = state

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _http_error(exc).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return ApiError(500, f"internal error: {exc}", type="server_error").response()

    @app.get("/health", response_model=Health)
    async def health() -> JSONResponse:
        report = state.health()
        return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model_id, created=state.created)])

    @app.post("/v1/chat/completions", response_model=ChatCompletion)
    async def chat_completions(req: ChatRequest, request: Request):
        if req.stream:
            events = await state.stream(req)
            return EventSourceResponse(events, ping=15, shutdown_grace_period=settings.shutdown_grace_s)
        return await state.complete(req, request)

    @app.post("/v1/completions", response_model=TextCompletion)
    async def completions(req: CompletionRequest, request: Request) -> TextCompletion:
        return await state.complete_text(req, request)

    app.add_middleware(Guard, api_key=settings.api_key, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        # Added last, so it is outermost: a browser's preflight (no API key) is answered here.
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    return app


# -- running it ----------------------------------------------------------------------------------


def model_names(model: str | None) -> tuple[str, tuple[str, ...]]:
    """The id /v1/models shows for ``model`` (registry name or .gguf path) and accepted aliases."""
    from edgetts import models as registry

    if model is None:
        model = registry.default_model_name()
    reg = registry.load_registry()
    if model in reg:
        return model, (reg[model].file,)
    path = FsPath(model)
    return path.stem, (path.name, model)


def load_solver(solver: Solver) -> str:
    """Load the policy now and the PRM if it loads; return the PRM state for /health."""
    solver.policy  # noqa: B018 -- loading is the point
    try:
        solver.scorer  # noqa: B018
    except Exception as exc:  # the server still serves greedy and majority without it
        log.warning("PRM not loaded (%s); PRM strategies will be refused", exc)
        return f"unavailable: {exc}"
    return "loaded"


def serve(solver: Solver, settings: ServerSettings) -> None:
    """Load the models, serve until Ctrl-C / SIGTERM, then shut down cleanly and free the models."""
    import uvicorn

    if settings.host not in LOOPBACK_HOSTS:
        log.warning("binding to %s: the server is reachable from other machines%s", settings.host,
                    "" if settings.api_key else " and has no --api-key")
    if settings.default_strategy not in (None, *known_strategies()):
        raise ValueError(f"unknown strategy {settings.default_strategy!r}; "
                         f"choose one of {sorted(known_strategies())}")
    # The context is sized once, for the server's max_tokens; a request asks for at most that.
    solver.policy_config = dataclasses.replace(solver.policy_config,
                                               n_ctx=solver.policy_config.resolved_n_ctx())
    prm_state = load_solver(solver)
    app = create_app(solver, settings)
    state: App = app.state.edgetts
    state.prm_state = prm_state

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            state.engine.begin_shutdown()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="info",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 1,
    )
    try:
        Server(config).run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises Ctrl-C once its graceful shutdown is done: that is a clean exit
    finally:
        solver.close()
