"""Request and response bodies: OpenAI's chat and text completion types plus the ``edgetts``
extension."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgetts.prompts import ROLES, Conversation, Prompt, RawPrompt
from edgetts.search.base import AGGREGATIONS
from edgetts.search.registry import MODES
from edgetts.server.errors import ApiError
from edgetts.solver import SolveOptions


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.model_extra and (self.model_extra.get("tool_calls") or self.model_extra.get("function_call")):
            # a turn that called tools, whose results this server could never send back
            raise ApiError(
                400, "tool calls are not supported (an assistant turn has tool_calls)", param="messages"
            )
        if isinstance(self.content, list):
            if any(part.type != "text" for part in self.content):
                raise ApiError(400, "only text content parts are supported", param="messages")
            return "".join(part.text or "" for part in self.content)
        return self.content or ""


class SearchFields(BaseModel):
    """The ``edgetts`` extension object of a request: which search, and how much of it."""

    # a misspelt search field is a 400, not a no-op; Infinity and NaN are no budgets
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    strategy: str | None = None
    samples: int | None = Field(None, ge=1)  # samples, beams or leaves: the search budget
    beam_width: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    agg: Literal[AGGREGATIONS] | None = None
    deadline_s: float | None = Field(None, gt=0)
    memory_mb: float | None = Field(None, gt=0)
    # Model-written code runs only on a server started with --allow-exec (else a 400).
    task: Literal["math", "code"] = "math"  # code: write a function; the reply is the program
    mode: Literal[MODES] = SolveOptions.mode  # math by prose, programs, or both
    # false: always all the samples (else vote-based searches stop once their vote has settled)
    adaptive: bool = SolveOptions.adaptive
    # false: every sample of a weighted vote runs to its end (else one the verifier scores under
    # its manifest's prune_below stops there)
    prune: bool = SolveOptions.prune
    # false: every answer votes (else a solution whose written sums do not hold votes last)
    check_arithmetic: bool = SolveOptions.check_arithmetic
    # true: run the Python a prose solution writes and let its printed number answer (--allow-exec)
    run_programs: bool = SolveOptions.run_programs


# Search fields once read at the top level of a request (with ``n`` as the budget); still
# accepted when the request has no ``edgetts`` object, with a deprecation note in the response.
LEGACY_FIELDS = ("strategy", "beam_width", "max_steps", "agg", "deadline_s", "memory_mb")
LEGACY_NOTE = (
    "top-level strategy/beam_width/max_steps/agg/deadline_s/memory_mb (and n as the search "
    'budget) are deprecated: send them in an "edgetts" object, with "samples" for the '
    "budget; n is the number of choices"
)


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``: with ``include_usage``, usage comes in one more chunk."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = None


class SearchRequest(BaseModel):
    """What chat and text completion requests share: OpenAI's sampling fields plus the edgetts
    search settings.

    ``n`` is OpenAI's: how many choices (the best distinct answers, ranked). The search goes in
    the ``edgetts`` extension object (:class:`SearchFields`). Unknown OpenAI fields (``user``,
    ...) are ignored so stock clients work.
    """

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str
    stream: bool | None = False  # OpenAI's spec allows null: false
    # Usage in a stream: absent, in the last choice chunk (as llama.cpp's server sends it);
    # include_usage true, in one more chunk with no choices (OpenAI's); false, none.
    stream_options: StreamOptions | None = None
    # OpenAI's stop: up to 4 strings; a solution ends where one first appears (cut off).
    stop: str | list[str] | None = None
    # Chat: true returns the chosen paths' token log-probabilities (top_logprobs is refused:
    # the policy keeps no alternatives). /v1/completions' older integer form is refused.
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)  # 0 as OpenAI takes it: the likeliest token
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)  # an extension, as llama.cpp's server has it
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    edgetts: SearchFields | None = None
    # OpenAI fields a search cannot honour: read so that asking for them is a 400, not a reply
    # that silently ignores them (tool calls, JSON mode, server-side best_of)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None  # the older names of tools and tool_choice
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    best_of: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    suffix: str | None = None  # /v1/completions

    def unsupported(self) -> str | None:
        """The first field set to something this server cannot do, if any."""
        if self.tools:
            return "tools"
        if self.functions:
            return "functions"
        if self.function_call not in (None, "none", "auto"):
            return "function_call"
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name) not in (None, 0):
                return name
        if self.logit_bias:
            return "logit_bias"
        if self.suffix:
            return "suffix"
        if self.tool_choice not in (None, "none", "auto"):
            return "tool_choice"
        if self.response_format not in (None, {"type": "text"}):
            return "response_format"
        if self.best_of not in (None, 1):
            return "best_of"
        return None

    # deprecated top-level search fields (see LEGACY_FIELDS)
    strategy: str | None = None
    beam_width: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    agg: Literal[AGGREGATIONS] | None = None
    deadline_s: float | None = Field(None, gt=0)
    memory_mb: float | None = Field(None, gt=0)

    def stream_usage(self) -> Literal["last", "extra", "none"]:
        """Where a stream sends usage (see ``stream_options``)."""
        include = self.stream_options.include_usage if self.stream_options else None
        return "last" if include is None else "extra" if include else "none"

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
                raise ApiError(
                    400,
                    f"message role {message.role!r} is not supported here; use "
                    "system, developer, user or assistant",
                    param="messages",
                )
            turns.append((role, message.text()))
        try:
            return Conversation(tuple(turns))
        except ValueError as exc:
            raise ApiError(400, str(exc), param="messages") from None


class CompletionRequest(SearchRequest):
    """OpenAI's (legacy) text completion request: a raw prompt, continued with no template."""

    prompt: str | list[str]
    echo: bool | None = False  # null: false, as OpenAI's spec allows

    def prompt_input(self) -> RawPrompt:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if len(prompts) != 1:
            raise ApiError(
                400, "send one prompt per request (a list of prompts is not supported)", param="prompt"
            )
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
    # the answer is only the last number of a solution cut short, not one it wrote out
    provisional: bool = False


class EdgettsInfo(BaseModel):
    """The search behind the answer: what it picked, why, and what it cost."""

    answer: str | None
    # True when no solution wrote an answer out: ``answer`` is then the last number of one
    # cut short (token limit, deadline), a guess to show as such
    provisional: bool = False
    strategy: str
    n: int
    seed: int | None = None  # what the search sampled with (drawn at random when not asked)
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


class TokenLogprob(BaseModel):
    """One generated token and its log-probability under the policy (OpenAI's shape)."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[dict[str, Any]] = []


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
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
    logprobs: ChoiceLogprobs | None = None
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
    # The process's peak resident memory so far (None where the OS does not say), beside the
    # scheduler's estimate for the loaded policy (None until the first search loads it).
    peak_rss_mb: float | None = None
    memory_estimate_mb: float | None = None
    policy_loads: int = 0  # times the policy was loaded since start (a server loads it once)
