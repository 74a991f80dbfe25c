"""The FastAPI app: request handlers over one solver, and ``serve`` to run it with uvicorn."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from edgetts import scheduler
from edgetts.policy import PolicyError, Prompt, PromptTooLong, SearchNotStarted
from edgetts.scheduler import PlanError
from edgetts.search import NEEDS_SCORER
from edgetts.search.base import Candidate, SearchConfig, SearchResult
from edgetts.search.registry import DEFAULT_STRATEGY, GREEDY, choices, names
from edgetts.server.engine import EXPECTED_SEARCH_S, Engine, Job
from edgetts.server.errors import ApiError, http_error, internal_error, validation_error
from edgetts.server.guard import Guard
from edgetts.server.responses import edgetts_info, finish_reason_of, logprobs_of, ranked_choices, usage_of
from edgetts.server.schemas import (
    LEGACY_FIELDS,
    LEGACY_NOTE,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    CompletionRequest,
    Delta,
    Health,
    ModelCard,
    ModelList,
    Progress,
    ResponseMessage,
    SearchFields,
    SearchRequest,
    TextChoice,
    TextCompletion,
)
from edgetts.server.settings import LOOPBACK_HOSTS, ServerSettings
from edgetts.solver import SolveOptions, Solver, validate_code_options

log = logging.getLogger("edgetts.server")

DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


# edgetts fields a code task has no use for: no PRM, no steps, no budget plan, no math mode
CODE_UNUSED = (
    "memory_mb",
    "beam_width",
    "max_steps",
    "agg",
    "mode",
    "adaptive",
    "prune",
    "check_arithmetic",
    "run_programs",
)


def known_strategies() -> set[str]:
    """Strategy names requests may use."""
    return set(choices())


class App:
    """The request handlers, holding the solver, the settings and the queue."""

    def __init__(self, solver: Solver, settings: ServerSettings, prm_state: str | None = None) -> None:
        self.solver = solver
        self.settings = settings
        self.engine = Engine(
            solver,
            settings.max_queue,
            expected_s=settings.default_deadline_s or EXPECTED_SEARCH_S,
            concurrent=settings.concurrent,
        )
        self.strategies = known_strategies()
        self.default_strategy = settings.default_strategy or DEFAULT_STRATEGY
        if self.default_strategy not in self.strategies:
            raise ValueError(
                f"unknown default strategy {self.default_strategy!r}; choose one of {sorted(self.strategies)}"
            )
        self.prm_state = prm_state or ("loaded" if solver.scorer_loaded else "not loaded")
        self.created = int(time.time())

    # -- validation ------------------------------------------------------------------------

    def check_model(self, model: str) -> None:
        strict = self.settings.strict_model
        if strict and model not in (self.settings.model_id, *self.settings.model_aliases):
            raise ApiError(
                404,
                f"the model {model!r} does not exist here; this server runs "
                f"{self.settings.model_id!r} (see GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    async def queued(self, req: SearchRequest) -> Job:
        """The request's job, validated (:meth:`job_for`) and its budget planned as the search
        would plan it, then queued: every 400 comes before the queue (and before a stream starts).
        The plan runs on a worker thread: a first plan may take half a second."""
        job = self.job_for(req)
        try:
            await asyncio.to_thread(self.solver.check_budget, job.question, job.options)
        except PlanError as exc:
            raise plan_refused(exc, job.where, job.sent) from None
        self.engine.submit(job)
        return job

    def job_for(self, req: SearchRequest) -> Job:
        """Turn a request into a validated search job (every 400 is raised here, before queueing)."""
        self.check_model(req.model)
        self._refuse_unsupported(req)
        s = self.settings
        search, budget, choices, deprecation, where = self._search_of(req)
        self._check_exec(search, where)
        if search.task == "code":
            return self._code_job(req, search, budget, choices, where)
        strategy = search.strategy or self.default_strategy
        if strategy not in self.strategies:
            raise ApiError(
                400,
                f"unknown strategy {strategy!r}; choose one of {sorted(self.strategies)}",
                param=f"{where}strategy",
                code="invalid_strategy",
            )
        if strategy in NEEDS_SCORER and self.prm_state != "loaded":
            raise ApiError(
                400,
                f"strategy {strategy!r} needs the PRM, which this server has not loaded ({self.prm_state})",
                param=f"{where}strategy",
            )
        # auto picks its own budget (under the deadline / memory budget) unless the request names one
        if choices > s.max_n:  # first: a search sized from n would blame a field not sent
            raise ApiError(
                400, f"n={choices} choices is more than this server allows (max {s.max_n})", param="n"
            )
        n = budget or (None if strategy == "auto" else max(s.default_n, choices))
        budget_param = "n" if where == "" else "edgetts.samples"
        self._check_greedy_budget(strategy, budget, budget_param)
        if strategy == GREEDY and choices > 1:
            message = f"strategy greedy gives one answer: n={choices} is for the searches"
            raise ApiError(400, message, param="n")
        if n is not None and n > s.max_n:
            raise ApiError(
                400, f"a search of {n} is more than this server allows (max {s.max_n})", param=budget_param
            )
        fields: dict[str, Any] = {"strategy": strategy, "max_tokens": self._max_tokens(req)}
        if n is not None:
            fields["n"] = n
        for name in ("beam_width", "max_steps", "agg"):
            if getattr(search, name) is not None:
                fields[name] = getattr(search, name)
        fields.update(self._sampling_fields(req))
        if "beam_width" not in fields and n is not None and strategy in names("tree"):
            # so a plain budget works without also picking a width
            fields["beam_width"] = min(SearchConfig.beam_width, n)
        deadline = search.deadline_s or s.default_deadline_s
        if deadline is not None:
            fields["deadline_s"] = deadline
        memory = self._memory_mb(search.memory_mb)
        if memory is not None:
            fields["memory_mb"] = memory
        if search.mode != "cot":
            fields["mode"] = search.mode
        fields["adaptive"] = search.adaptive
        fields["prune"] = search.prune
        fields["check_arithmetic"] = search.check_arithmetic
        fields["run_programs"] = search.run_programs
        if req.stop is not None:
            fields["stop"] = req.stops()
        if req.logprobs:
            fields["logprobs"] = True
        options = SolveOptions(**fields)
        width = options.beam_width
        if strategy in names("tree") and n is not None and n % width:
            # said in the request's words (SearchConfig.validate_beams says n): a multiple of
            # the width is also at least the width
            message = f"{strategy} needs {budget_param} ({n}) to be a multiple of beam_width ({width})"
            raise ApiError(400, message, param=f"{where}beam_width")
        try:
            options.validate()
        except ValueError as exc:
            raise ApiError(400, str(exc), param="stop" if "stop" in str(exc) else None) from None
        question = req.prompt_input()
        # Checked now, so that a stream starts only for a prompt that fits (programs-only math
        # reads the last message alone: its own check runs with the search).
        prompt_tokens = self._prompt_tokens(req, question) if options.mode != "pot" else None
        return Job(
            question=question,
            options=options,
            n_choices=choices,
            deprecation=deprecation,
            prompt_tokens=prompt_tokens,
            where=where,
            sent=search.model_fields_set,
        )

    def _prompt_tokens(self, req: SearchRequest, question: Prompt) -> int:
        """The prompt's tokens (OpenAI's usage.prompt_tokens), or a 400 when the policy's context
        cannot take it."""
        param = "messages" if isinstance(req, ChatRequest) else "prompt"
        try:
            return self.solver.prompt_tokens(question)
        except PromptTooLong as exc:
            raise ApiError(400, str(exc), param=param, code="context_length_exceeded") from None
        except UnicodeError:
            raise ApiError(
                400, f"the {param} are not valid Unicode text (a lone surrogate?)", param=param
            ) from None
        except PolicyError as exc:
            raise ApiError(400, str(exc), param=param) from None

    @staticmethod
    def _refuse_unsupported(req: SearchRequest) -> None:
        """A 400 for an OpenAI field a search cannot honour (rather than a reply that ignores it)."""
        if (field := req.unsupported()) is not None:
            raise ApiError(
                400,
                f"{field} is not supported: edgetts answers in plain text (no tools, JSON mode, "
                "best_of, penalties, logit bias or suffix)",
                param=field,
                code="unsupported_parameter",
            )
        if req.top_logprobs:
            raise ApiError(
                400,
                "top_logprobs is not supported: the policy keeps each token's own log-probability only",
                param="top_logprobs",
                code="unsupported_parameter",
            )
        if req.stream_options is not None and not req.stream:
            raise ApiError(400, "stream_options is only allowed when stream is true", param="stream_options")
        if req.logprobs is not None and not isinstance(req.logprobs, bool):
            raise ApiError(
                400,
                "logprobs must be true or false (the older integer form is not supported)",
                param="logprobs",
                code="unsupported_parameter",
            )

    def _check_exec(self, search: SearchFields, where: str) -> None:
        """A 400 for a search that would run model-written code on a server that does not allow it."""
        runs_code = None  # (the field that asks for model-written code to run, how to name it)
        if search.task == "code":
            runs_code = ("task", "task=code")
        elif search.mode != "cot":
            runs_code = ("mode", f"mode={search.mode}")
        elif search.run_programs:
            runs_code = ("run_programs", "run_programs")
        if runs_code is not None and not self.settings.allow_exec:
            field, what = runs_code
            raise ApiError(
                400,
                f"{what} runs model-written code, which this server does not allow; "
                "start it with `edgetts serve --allow-exec`",
                param=f"{where}{field}",
                code="exec_not_allowed",
            )

    def _max_tokens(self, req: SearchRequest) -> int:
        """Tokens per solution the request asks for (the server's limit if none), within it."""
        limit = self.settings.max_tokens
        field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        max_tokens = req.max_completion_tokens or req.max_tokens or limit
        if max_tokens > limit:
            raise ApiError(
                400,
                f"{field}={max_tokens} is more than this server allows (max {limit})",
                param=field,  # the field the client sent
            )
        return max_tokens

    @staticmethod
    def _sampling_fields(req: SearchRequest) -> dict[str, Any]:
        """The OpenAI sampling fields the request sets; a seed drawn at random when it sets
        none, as OpenAI samples afresh each time (``edgetts.seed`` tells which, to repeat it)."""
        fields = {
            name: getattr(req, name)
            for name in ("temperature", "top_p", "top_k", "seed")
            if getattr(req, name) is not None
        }
        fields.setdefault("seed", secrets.randbelow(2**31))
        return fields

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

    @staticmethod
    def _check_greedy_budget(strategy: str, budget: int | None, budget_param: str) -> None:
        """Greedy is one sample: a 400 for a request that asks it for more (not ignored)."""
        if strategy == GREEDY and budget not in (None, 1):
            raise ApiError(
                400,
                f"strategy greedy answers with one sample at temperature 0: {budget_param}={budget} "
                "is for the searches",
                param=budget_param,
            )

    def _code_job(
        self, req: SearchRequest, search: SearchFields, budget: int | None, choices: int, where: str
    ) -> Job:
        """A code task: strategy greedy, majority or exec (default), no budget planning."""
        s = self.settings
        # what a code task cannot honour is a 400, as for math, not quietly dropped
        unused = [  # sent with another value than the default (one object for math and code)
            f"{where}{name}"
            for name in CODE_UNUSED
            if getattr(search, name) not in (None, SearchFields.model_fields[name].default)
        ]
        unused += [name for name in ("stop", "logprobs") if getattr(req, name)]
        unused += ["n"] if choices > 1 else []
        if unused:
            raise ApiError(
                400,
                f"{unused[0]} is not for code tasks (one program, picked by running them)",
                param=unused[0],
            )
        self._check_greedy_budget(search.strategy or "exec", budget, f"{where}samples" if where else "n")
        n = budget or s.default_n
        if n > s.max_n:
            raise ApiError(
                400,
                f"a search of {n} is more than this server allows (max {s.max_n})",
                param=f"{where}samples" if where else "n",
            )
        fields = {"strategy": search.strategy or "exec", "n": n, "max_tokens": self._max_tokens(req)}
        fields.update(self._sampling_fields(req))
        if search.deadline_s or s.default_deadline_s:
            fields["deadline_s"] = search.deadline_s or s.default_deadline_s
        options = SolveOptions(**fields)
        try:
            validate_code_options(options)
        except ValueError as exc:
            raise ApiError(400, str(exc), param=f"{where}strategy") from None
        return Job(
            question=req.question(), options=options, task="code", where=where, sent=search.model_fields_set
        )

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
        job = await self.queued(req)
        result = await self.wait(job, request)
        picks = await choices_of(job, result)
        choices = [
            Choice(
                index=i,
                message=ResponseMessage(content=c.text.strip() if c else ""),
                logprobs=logprobs_of(c, c.text.strip() if c else None),
                finish_reason=finish_reason_of(c),
            )
            for i, c in enumerate(picks)
        ]
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=self.settings.model_id,
            choices=choices,
            usage=usage_of(job, result),
            edgetts=edgetts_info(job, result),
        )

    async def complete_text(self, req: CompletionRequest, request: Request) -> TextCompletion:
        """``/v1/completions``: the raw prompt continued; choices as for chat."""
        if req.stream:
            raise ApiError(
                400,
                "stream is not supported on /v1/completions; use /v1/chat/completions",
                param="stream",
            )
        if req.logprobs:
            raise ApiError(
                400,
                "logprobs is not supported on /v1/completions; use /v1/chat/completions",
                param="logprobs",
                code="unsupported_parameter",
            )
        job = await self.queued(req)
        result = await self.wait(job, request)
        picks = await choices_of(job, result)
        return TextCompletion(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=self.settings.model_id,
            choices=[
                TextChoice(index=i, text=c.text if c else "", finish_reason=finish_reason_of(c))
                for i, c in enumerate(picks)
            ],
            usage=usage_of(job, result),
            edgetts=edgetts_info(job, result),
        )

    async def stream(self, req: ChatRequest) -> AsyncIterator[dict[str, str]]:
        """Validate and queue now (so errors are plain 4xx/503), then stream the events.

        Returns the event iterator: a role chunk, a progress chunk every ``progress_interval_s``,
        the answer, a last chunk with the finish reason and the ``edgetts`` result, ``[DONE]``.
        """
        job = await self.queued(req)
        return self._events(job, req.stream_usage())

    async def _events(self, job: Job, usage: str) -> AsyncIterator[dict[str, str]]:
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": self.settings.model_id,
        }

        def event(delta: Delta | None, index: int = 0, **extra: Any) -> dict[str, str]:
            """One chunk of choice ``index`` (none without a ``delta``: OpenAI's usage chunk)."""
            finish = extra.pop("finish_reason", None)
            logprobs = extra.pop("logprobs", None)
            choices = (
                []
                if delta is None
                else [ChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish)]
            )
            chunk = ChatCompletionChunk(**base, choices=choices, **extra).model_dump(mode="json")
            # Like OpenAI: the delta holds only what changed, finish_reason stays (null).
            if delta is not None:
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
            try:
                chunks = self._answer_events(job, result, await choices_of(job, result), event, usage)
            except Exception:  # after the 200 went out: an error event is all a client can get
                yield {"data": json.dumps(internal_error("the answer could not be sent").body())}
                return
            for chunk in chunks:
                yield chunk
            yield {"data": "[DONE]"}
        finally:
            if not future.done():  # the client went away (or the server dropped the stream)
                log.info("stream closed early: search cancelled")
                job.abandon()

    @staticmethod
    def _answer_events(
        job: Job,
        result: SearchResult,
        picks: list[Candidate | None],
        event: Callable[..., dict[str, str]],
        usage: str,
    ) -> list[dict[str, str]]:
        """The events that carry the answer: each choice's text, then the finish reasons and the
        ``edgetts`` result, with usage where ``usage`` says (``SearchRequest.stream_usage``); all
        made before the first is sent."""
        chunks = []
        for i, pick in enumerate(picks):
            if i:
                chunks.append(event(Delta(role="assistant", content=""), index=i))
            chunks.append(
                event(
                    Delta(content=pick.text.strip() if pick else ""),
                    index=i,
                    logprobs=logprobs_of(pick, pick.text.strip() if pick else None),
                )
            )
        for i, pick in enumerate(picks[:-1]):
            chunks.append(event(Delta(), index=i, finish_reason=finish_reason_of(pick)))
        chunks.append(
            event(
                Delta(),
                index=len(picks) - 1,
                finish_reason=finish_reason_of(picks[-1]),
                usage=usage_of(job, result) if usage == "last" else None,
                edgetts=edgetts_info(job, result),
            )
        )
        if usage == "extra":
            chunks.append(event(None, usage=usage_of(job, result)))
        return chunks

    def _progress(self, job: Job) -> Progress:
        elapsed = round(time.perf_counter() - job.queued_at, 3)
        if job.started_at is None:
            return Progress(state="queued", elapsed_s=elapsed, queue_position=self.engine.position(job))
        tokens = self.engine.tokens_generated(job)
        return Progress(state="searching", elapsed_s=elapsed, tokens_generated=tokens)

    def health(self) -> Health:
        engine = self.engine
        running = sum(1 for j in list(engine.jobs) if j.started_at is not None)
        estimate = engine.solver.memory_estimate()
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
            peak_rss_mb=scheduler.peak_rss_mb(),
            memory_estimate_mb=round(estimate.total_mb, 1) if estimate is not None else None,
            policy_loads=engine.solver.policy_loads,
        )


def plan_refused(exc: PlanError, where: str, sent: Collection[str]) -> ApiError:
    """The 400 for a budget that cannot be met, naming the request's field (``where`` its prefix)
    only where the request sent it (not where the server's default set it)."""
    return ApiError(400, str(exc), param=f"{where}{exc.field}" if exc.field in sent else None)


async def choices_of(job: Job, result: SearchResult) -> list[Candidate | None]:
    """The response's choices (see :func:`ranked_choices`), worked out on a thread: telling
    answers apart may take math-verify seconds, which the event loop's other clients must not
    wait for."""
    return await asyncio.to_thread(ranked_choices, result, job.n_choices) or [None]


def _result(job: Job, future: asyncio.Future) -> SearchResult:
    """The finished job's result, with the errors users cause turned into ApiError."""
    if future.cancelled():
        raise ApiError(503, "the request was cancelled", type="server_error", code="cancelled")
    try:
        result = future.result()
    except ApiError:
        raise
    except PlanError as exc:  # the budget the request set (or the server's) cannot be met
        raise plan_refused(exc, job.where, job.sent) from None
    except SearchNotStarted as exc:  # its deadline passed waiting for other searches: not its fault
        raise ApiError(503, str(exc), type="server_error", code="deadline_exceeded") from None
    except (PolicyError, ValueError) as exc:  # e.g. a question longer than the context
        raise ApiError(400, str(exc)) from None
    except Exception:
        raise internal_error("the search failed") from None
    if result is None:
        raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
    return result


def create_app(
    solver: Solver, settings: ServerSettings | None = None, prm_state: str | None = None
) -> FastAPI:
    """The FastAPI app serving ``solver`` (loaded by :func:`load_solver`, whose PRM state is
    ``prm_state``; None: the PRM counts as loaded if the solver holds one)."""
    from sse_starlette.sse import EventSourceResponse  # imported here: it patches uvicorn on import

    settings = settings or ServerSettings()
    state = App(solver, settings, prm_state)

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
        return validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return http_error(exc).response()

    @app.get("/health", response_model=Health)
    async def health() -> JSONResponse:
        report = state.health()
        return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)

    @app.head("/health", include_in_schema=False)  # what some health checkers send
    async def health_head() -> Response:
        return Response(status_code=200 if not state.engine.closing else 503)

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model_id, created=state.created)])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def retrieve_model(model_id: str) -> ModelCard:
        if settings.strict_model and model_id not in (settings.model_id, *settings.model_aliases):
            raise ApiError(
                404,
                f"the model {model_id!r} does not exist here; this server runs {settings.model_id!r}",
                param="model",
                code="model_not_found",
            )
        # any name means the loaded policy (as a completion request takes it), said as asked
        return ModelCard(id=model_id, created=state.created)

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
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            # any header: the official JS client sends its own (X-Stainless-*), and a preflight
            # naming one not listed would fail; the origin list is what limits who may call
            allow_headers=["*"],
            expose_headers=["Retry-After"],
        )
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
    path = Path(model)
    return path.stem, (path.name, model)


def load_solver(solver: Solver, memory_mb: float | None = None) -> str:
    """Load the policy and the PRM once, for every request to come, and return the PRM state for
    /health. Every server (and Ray Serve replica) starts this way.

    The context is sized for the server's max_tokens and its KV slots (``n_seq_max``). With the
    server's ``memory_mb`` the model is planned under it for its concurrent requests'
    PRM-weighted searches, their slots together at most that many, the PRM counted in (without
    the PRM when it does not fit, or does not load). The policy keeps the hidden states a probe
    PRM reads, so that no request loads it again: the solver must be ``fixed_policy``
    (:func:`edgetts.cli.server_solver` makes it so), whatever a request's own budget.
    """
    if not solver.fixed_policy:
        raise ValueError("a server's Solver is made with fixed_policy=True: requests never reload it")
    # The server's slots are one pool for its concurrent requests: planned as each request's
    # share (the plan gives every search at once its own slots).
    paths = max(1, solver.policy_config.n_seq_max // solver.policy_config.max_searches)
    try:
        # loads the PRM, then the policy keeping the states it reads (checked against the policy)
        solver.prepare("", SolveOptions(strategy="weighted_best_of_n", n=paths, memory_mb=memory_mb))
        return "loaded"
    except Exception as exc:  # the server still serves greedy and majority without it
        # The reason goes to the log only: /health answers anyone, and it can name paths.
        log.warning("PRM not loaded (%s); PRM strategies will be refused", exc)
    solver.close()
    solver.drop_scorer()
    solver.prepare("", SolveOptions(strategy="majority", n=paths, memory_mb=memory_mb))
    return "unavailable (the server log says why)"


def serve(solver: Solver, settings: ServerSettings) -> None:
    """Load the models, serve until Ctrl-C / SIGTERM, then shut down cleanly and free the models."""
    import uvicorn

    if settings.host not in LOOPBACK_HOSTS:
        log.warning(
            "binding to %s: the server is reachable from other machines%s",
            settings.host,
            "" if settings.api_key else " and has no --api-key",
        )
    if settings.default_strategy not in (None, *known_strategies()):
        raise ValueError(
            f"unknown strategy {settings.default_strategy!r}; choose one of {sorted(known_strategies())}"
        )
    sock = listening_socket(settings.host, settings.port)  # before the models load: a busy port fails fast
    try:
        prm_state = load_solver(solver, settings.memory_mb)
        app = create_app(solver, settings, prm_state=prm_state)
        state: App = app.state.edgetts

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                state.engine.begin_shutdown()
                super().handle_exit(sig, frame)

        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="info",
            timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 1,
        )
        Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn re-raises Ctrl-C once its graceful shutdown is done: that is a clean exit
    finally:
        sock.close()
        solver.close()


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (uvicorn listens on it), or an OSError that says
    which address and why (uvicorn's own bind logs the error and exits 3 instead)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart reuses the port
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server on it? choose --port)"
        ) from None
    return sock
