"""The policy on llama.cpp's low-level API: one prefill, forked KV sequences, one batch per token.

How a question is answered, in KV-cache terms:

* ``root(question)`` clears the cache and decodes the prompt once into the *template* sequence
  (slot 0), keeping the logits of its last token. Asked again for the same prompt, it drops every
  other sequence but keeps the template, so a second round of samples (``auto`` continuing after
  its probes, a server retry) forks from the same prefill instead of decoding the prompt again.
* ``extend(paths, n_each)`` forks every parent into children. A child copies its parent's sequence
  (``llama_memory_seq_cp``; with the unified KV cache this only tags the same cells with one more
  sequence id, so a shared prefix is stored once), samples its first token from the parent's saved
  logits with its own sampler, and from then on every live child decodes together, one row each,
  in a single ``llama_batch`` per token. The last child of a parent inherits the parent's slot.
* A child stops at the step separator (a blank line), at end of generation, at the token limit or
  at the deadline. The token that closed a step is decoded once more so its logits can seed the
  next round, which makes the decoded-token count exactly: the prompt once plus every token of
  the search tree.
* ``release(paths)`` drops sequences (``llama_memory_seq_rm``); finished paths free theirs at once.

Slots are finite (``n_seq_max``). When more children are asked for than there are slots, they run
in waves: a child waits until a slot frees up, and when every slot is held by a path that is only
waiting for the next round, that path is *parked* (its KV dropped). A parked path that is extended
later is rebuilt from the template by decoding its own tokens again; ``tokens_redecoded`` counts
that cost, which is zero whenever the slots suffice.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
import zlib
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path as FsPath

import llama_cpp
import numpy as np

from edgetts.confidence import token_stats
from edgetts.gpu import default_gpu_layers
from edgetts.llama.cpu_buffers import apply_cpu_buffer_policy
from edgetts.llama.ggml import ggml_base_lib
from edgetts.metadata import ModelMetadata, read_metadata
from edgetts.models import resolve
from edgetts.prompts import STEP_SEPARATOR, Conversation, RawPrompt, prompt_parts
from edgetts.search.base import DEFAULT_TEMPERATURE, Deadline, Path, Sampling

log = logging.getLogger("edgetts.llama")


@llama_cpp.llama_log_callback
def _llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # llama.cpp prints every load detail to stderr by default. Keep its errors (ggml level 4);
    # warnings (3) go to INFO and the rest to DEBUG, for whoever turns logging up.
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:
        log.log({4: logging.ERROR, 3: logging.INFO}.get(level, logging.DEBUG), message)


def route_llama_logs() -> None:
    """Send llama.cpp's log through Python logging (``edgetts.llama``) instead of stderr.

    Process-wide, so it happens when edgetts loads a model, not when it is imported: an app that
    imports edgetts beside its own llama.cpp use keeps its log setup until then.
    """
    llama_cpp.llama_log_set(_llama_log, ctypes.c_void_p(0))

# What a search roots in: a question (the math prompt around it), a whole conversation, a raw prompt.
Prompt = str | Conversation | RawPrompt

KV_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}
TEMPLATE_SLOT = 0


def default_threads() -> int:
    """Threads for llama.cpp: ``$EDGETTS_THREADS`` if set, else the cores we may run on.

    More threads than free cores is much slower than fewer (llama.cpp's threads wait on each
    other at every layer), so on a busy machine set EDGETTS_THREADS below the core count.
    """
    env = os.environ.get("EDGETTS_THREADS")
    if env:
        if not env.strip().isdigit():
            raise PolicyError(f"EDGETTS_THREADS must be a whole number, got {env!r}")
        return check_threads(int(env))
    return available_cores()


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_threads(n_threads: int | None) -> int | None:
    """``n_threads`` if it is 1..the cores here; more threads than cores only slow llama.cpp."""
    if n_threads is not None and not 1 <= n_threads <= available_cores():
        raise PolicyError(f"threads must be 1..{available_cores()} (the cores this process may use), "
                          f"got {n_threads}")
    return n_threads


class PolicyError(Exception):
    """The policy cannot run this request; the message says why and what to change."""


@dataclass
class PolicyConfig:
    """Settings of the llama.cpp policy. Token counts are per solution unless named otherwise."""

    model: str | None = None  # registry name or .gguf path; None = the default model
    n_seq_max: int = 16  # sequences decoded together (beams, samples) besides the template
    max_tokens: int = 512  # generated tokens per solution, at most (the context is sized for it)
    max_step_tokens: int = 256  # a step longer than this is cut into two
    max_prompt_tokens: int = 1024
    n_ctx: int = 0  # KV cells in all; 0 = enough for the prompt plus n_seq_max full solutions
    n_batch: int = 512
    n_threads: int | None = None  # None = $EDGETTS_THREADS, else every core this process may use
    # Layers offloaded to the GPU (needs a GPU build of llama.cpp); -1 = all; None =
    # $EDGETTS_N_GPU_LAYERS, else 0 (edgetts.gpu.default_gpu_layers).
    n_gpu_layers: int | None = None
    kv_type: str = "f16"  # "f16" or "q8_0"
    # Sampling for a root() given none (tools, tests); searches pass their own Sampling.
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int = 0
    # Record the final hidden state at each step's last token on the path (Path.step_states), for
    # scorers that read the policy's own states (edgetts.probe). Costs one vector copy per step.
    # A path cut by max_tokens (or a stop string) keeps the state before its last token.
    capture_states: bool = False
    # What a step state is made of: -1 is the final hidden state (after the output norm), i >= 0
    # the output of transformer block i (read through llama.cpp's eval callback); several are
    # concatenated in this order. A probe's manifest names the layers it was trained on.
    state_layers: tuple[int, ...] = (-1,)
    # Record each generated token's log-probability, entropy and top-k confidence
    # (Path.token_stats, edgetts.confidence): one pass over the logits llama.cpp already
    # computed, for confidence-weighted votes and probes that read confidence features.
    capture_confidence: bool = False

    def resolved_n_ctx(self) -> int:
        return self.n_ctx or self.max_prompt_tokens + self.n_seq_max * self.max_tokens


@dataclass
class GeneratorCounters:
    tokens_prefilled: int = 0  # prompt tokens decoded
    # tokens decoded after the prompt: each token of the search tree once, plus tokens_redecoded
    tokens_decoded: int = 0
    tokens_redecoded: int = 0  # decoded again to rebuild parked paths (waves), part of the above
    tokens_sampled: int = 0
    sequences_forked: int = 0
    decode_calls: int = 0
    seconds: float = 0.0


@dataclass
class _Prompt:
    question: str
    tokens: list[int]


@dataclass
class _Seq:
    """The generator's side of a Path (kept in ``Path.handle``)."""

    prompt: _Prompt
    tokens: list[int] = field(default_factory=list)  # generated after the prompt
    slot: int | None = None  # KV sequence id; None when parked or freed
    n_cached: int = 0  # how many of ``tokens`` the slot's KV holds
    logits: np.ndarray | None = None  # next-token logits, valid when n_cached == len(tokens)
    lineage: tuple[int, ...] = ()  # child indices from the root: seeds the sampler
    carry: bytes = b""  # text sampled past a step separator, belongs to the next step
    is_template: bool = False
    hidden: np.ndarray | None = None  # final hidden state of the last decoded token (capture_states)
    tail: bytes = b""  # the end of the steps so far, for stop strings that span a step boundary


@dataclass
class _Child:
    """A path being generated in the current ``extend`` call."""

    path: Path
    seq: _Seq
    parent: _Seq
    last_of_parent: bool
    to_end: bool
    take_parent_slot: bool = False  # set when slots run out: siblings rebuild from the template
    # Step whose last token is still to be decoded: its hidden state comes with that decode.
    state_pending: int | None = None
    sampler: llama_cpp.llama_sampler_p | None = None
    to_decode: list[int] = field(default_factory=list)
    step_bytes: bytes = b""
    step_tokens: int = 0
    closing: bool = False  # the step is complete once ``to_decode`` is decoded
    done: bool = False


class _LayerTap:
    """Copies transformer blocks' outputs (graph nodes ``l_out-<i>``) as llama.cpp computes a batch.

    llama.cpp shows its eval callback every node of the graph twice: first asking whether we want
    it, then, for those we do, once it is computed. Only the asked-for blocks are copied (through
    ``ggml_backend_tensor_get``, so GPU-resident tensors work too), and only while ``on``. Rows
    are the batch's tokens in order (blocks before the last hold every token, not only outputs).
    """

    def __init__(self, layers: tuple[int, ...], n_embd: int) -> None:
        ggml = ggml_base_lib()
        self.names = {f"l_out-{i}".encode(): i for i in layers if i >= 0}
        self.rows: dict[int, np.ndarray] = {}
        self.on = True

        @llama_cpp.ggml_backend_sched_eval_callback
        def callback(tensor: ctypes.c_void_p, ask: bool, _user: ctypes.c_void_p) -> bool:
            layer = self.names.get(ggml.ggml_get_name(tensor))
            if ask:
                return layer is not None
            if self.on and layer is not None:
                out = np.empty(ggml.ggml_nelements(tensor), dtype=np.float32)
                ggml.ggml_backend_tensor_get(tensor, out.ctypes.data, 0, out.nbytes)
                self.rows[layer] = out.reshape(-1, n_embd)
            return True

        self.callback = callback  # llama.cpp keeps only the pointer: hold the function here


class LlamaPolicy:
    """A GGUF model on llama.cpp implementing the StepGenerator interface."""

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = replace(config) if config is not None else PolicyConfig()  # its own copy
        cfg = self.config
        if cfg.max_tokens < 1:
            raise PolicyError(f"max_tokens must be at least 1, got {cfg.max_tokens}")
        check_threads(cfg.n_threads)
        if cfg.kv_type not in KV_TYPES:
            raise PolicyError(f"unknown KV cache type {cfg.kv_type!r}; choose one of {list(KV_TYPES)}")
        if cfg.n_seq_max < 1:
            raise PolicyError(f"n_seq_max must be at least 1, got {cfg.n_seq_max}")
        self.model_path: FsPath = resolve(cfg.model)
        self.metadata: ModelMetadata = read_metadata(self.model_path)
        n_ctx_train = self.metadata.n_ctx_train
        if n_ctx_train and cfg.max_tokens + cfg.max_prompt_tokens > n_ctx_train:
            raise PolicyError(
                f"max_tokens={cfg.max_tokens} plus a prompt of up to {cfg.max_prompt_tokens} tokens is "
                f"more than this model's context of {n_ctx_train} tokens"
            )
        self.counters = GeneratorCounters()
        route_llama_logs()
        llama_cpp.llama_backend_init()
        n_layers = self.metadata.n_layers
        # The last block keeps only its output rows (llama.cpp drops the rest before it), so it
        # is read as -1, after the output norm.
        if not cfg.state_layers or any(not -1 <= i < n_layers - 1 for i in cfg.state_layers):
            raise PolicyError(f"state_layers must be -1 (the final state) or blocks 0..{n_layers - 2}, "
                              f"got {cfg.state_layers}")
        wants_blocks = cfg.capture_states and any(i >= 0 for i in cfg.state_layers)
        self._tap = _LayerTap(cfg.state_layers, self.metadata.n_embd) if wants_blocks else None
        self._model = self._load_model()
        self._ctx = self._new_context()
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._n_embd = llama_cpp.llama_model_n_embd(self._model)
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(cfg.n_batch, 0, 1)
        self._piece_buf = ctypes.create_string_buffer(256)
        self._free_slots: list[int] = []
        self._template: _Seq | None = None  # the prefilled prompt in slot 0, reused by root()
        self._sampling = self._configured_sampling()  # the current search's, set by root()
        self._stop_strings = [] if self.metadata.chat_template else [b"\nQuestion:"]

    # -- setup ---------------------------------------------------------------------------------

    def _load_model(self) -> llama_cpp.llama_model_p:
        params = llama_cpp.llama_model_default_params()
        layers = self.config.n_gpu_layers
        params.n_gpu_layers = default_gpu_layers() if layers is None else layers
        params.use_extra_bufts = apply_cpu_buffer_policy().use_extra_bufts  # no AMX (segfaults)
        model = llama_cpp.llama_model_load_from_file(str(self.model_path).encode(), params)
        if not model:
            raise PolicyError(f"llama.cpp could not load {self.model_path} (corrupt or unsupported)")
        return model

    def _new_context(self) -> llama_cpp.llama_context_p:
        cfg = self.config
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = cfg.resolved_n_ctx()
        params.n_batch = cfg.n_batch
        params.n_ubatch = cfg.n_batch
        params.n_seq_max = cfg.n_seq_max + 1  # + the template sequence
        threads = cfg.n_threads or default_threads()
        params.n_threads = threads
        params.n_threads_batch = threads
        params.type_k = KV_TYPES[cfg.kv_type]
        params.type_v = KV_TYPES[cfg.kv_type]
        # A quantized V cache needs flash attention; f16 lets llama.cpp decide.
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if cfg.kv_type != "f16"
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        )
        params.kv_unified = True  # shared prefixes stored once, whatever the number of forks
        if cfg.capture_states:
            # Per-token final hidden states beside the logits, for the rows we ask logits of.
            params.embeddings = True
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
        if self._tap is not None:
            params.cb_eval = self._tap.callback
            params.cb_eval_user_data = None
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not ctx:
            raise PolicyError(
                f"llama.cpp could not create a context of {params.n_ctx} tokens "
                f"for {cfg.n_seq_max} sequences (out of memory?)"
            )
        return ctx

    def close(self) -> None:
        """Free the llama.cpp context and model (also done when the object is collected)."""
        if getattr(self, "_batch", None) is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        self.close()

    # -- tokens --------------------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = True, add_bos: bool | None = None) -> list[int]:
        """Tokens of ``text``; ``special``: read special-token markers in it (trusted text only)
        and add the BOS token if the model wants one (``add_bos`` decides on its own if given)."""
        data = text.encode()
        capacity = len(data) + 16
        buf = (llama_cpp.llama_token * capacity)()
        add = special if add_bos is None else add_bos
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, add, special)
        if n < 0:
            raise PolicyError("prompt too long to tokenize")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, 256, 0, False)
        return self._piece_buf.raw[: max(n, 0)]

    def prompt_text(self, question: Prompt, system: str | None = None) -> str:
        """The prompt for ``question`` as text (to show; :meth:`prompt_tokens` is what runs).

        ``system`` replaces the math instructions (code tasks and programs use their own)."""
        return "".join(text for text, _ in self._prompt_parts(question, system))

    def prompt_tokens(self, question: Prompt, system: str | None = None) -> list[int]:
        """The prompt's tokens, special-token markers read in the template's text only: a
        question (or any message of a conversation) never gains control of the chat (see
        :func:`edgetts.prompts.prompt_parts`)."""
        tokens: list[int] = []
        for text, trusted in self._prompt_parts(question, system):
            # BOS (when the model wants one) before the first piece, trusted or not (a raw prompt)
            tokens += self.tokenize(text, special=trusted, add_bos=not tokens)
        return tokens

    def _prompt_parts(self, question: Prompt, system: str | None) -> list[tuple[str, bool]]:
        template, bos = self.metadata.chat_template, self._bos_text()
        try:
            if isinstance(question, str):
                return prompt_parts(question, template, bos=bos, system=system)
            if system is not None:
                raise ValueError("a conversation or raw prompt brings its own system prompt")
            return question.parts(template, bos=bos)
        except ValueError as exc:
            raise PolicyError(str(exc)) from None

    def _bos_text(self) -> str:
        return self.piece(llama_cpp.llama_vocab_bos(self._vocab)).decode(errors="ignore")

    # -- StepGenerator -------------------------------------------------------------------------

    def root(self, question: Prompt, sampling: Sampling | None = None, system: str | None = None) -> Path:
        """Clear the cache and prefill the prompt for ``question`` once (kept for a next root).

        The root begins a search: ``sampling`` (None: this policy's configured sampling) holds
        for every path grown from it, until the next root. ``system`` replaces the math
        instructions (code tasks and programs use their own). ``question`` may also be a whole
        :class:`~edgetts.prompts.Conversation` or a :class:`~edgetts.prompts.RawPrompt`.
        """
        text = question if isinstance(question, str) else question.question
        if not text or not text.strip():
            raise PolicyError("the question is empty")
        sampling = sampling or self._configured_sampling()
        if sampling.max_tokens is not None and not 1 <= sampling.max_tokens <= self.config.max_tokens:
            raise PolicyError(f"max_tokens must be 1..{self.config.max_tokens} (the limit this policy's "
                              f"context was made for), got {sampling.max_tokens}")
        self._sampling = sampling
        start = time.perf_counter()
        tokens = self.prompt_tokens(question, system)
        limit = min(self.config.max_prompt_tokens, self.config.resolved_n_ctx() - self.config.max_tokens)
        if len(tokens) > limit:
            raise PolicyError(
                f"the question is too long: its prompt has {len(tokens)} tokens, the limit is "
                f"{limit} (raise max_prompt_tokens / n_ctx)"
            )
        self._free_slots = list(range(self.config.n_seq_max, 0, -1))  # slot 0 is the template
        template = self._template
        if template is not None and template.prompt.tokens == tokens and template.logits is not None:
            for slot in self._free_slots:
                llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
            self.counters.seconds += time.perf_counter() - start
            return Path(handle=template)
        llama_cpp.llama_memory_clear(self._memory, True)
        seq = _Seq(prompt=_Prompt(text, tokens), slot=TEMPLATE_SLOT, is_template=True)
        self._template = None  # until the new prompt is fully decoded
        # Only the last prompt token's outputs are read (see _decode_quietly for why the rest
        # go separately when states are captured).
        head = tokens[:-1] if self.config.capture_states else []
        self._decode_quietly(head, 0, TEMPLATE_SLOT)
        self._decode_tokens(tokens[len(head):], len(head), TEMPLATE_SLOT, output_last=True)
        self.counters.tokens_prefilled += len(tokens)
        seq.logits = self._logits(self._batch.n_tokens - 1)
        if self.config.capture_states:
            seq.hidden = self._state(self._batch.n_tokens - 1)
        self._template = seq
        self.counters.seconds += time.perf_counter() - start
        return Path(handle=seq)

    def extend(
        self,
        paths: list[Path],
        n_each: int,
        to_end: bool = False,
        deadline: Deadline | None = None,
    ) -> list[Path]:
        """Fork each path into ``n_each`` children and decode them together (see module doc)."""
        if n_each < 1:
            raise PolicyError(f"n_each must be at least 1, got {n_each}")
        start = time.perf_counter()
        out: list[Path] = []
        queue: deque[_Child] = deque()
        for path in paths:
            if path.finished:
                out.append(path)
                continue
            parent: _Seq = path.handle
            for j in range(n_each):
                child = self._child(path, parent, j, last=(j == n_each - 1), to_end=to_end)
                out.append(child.path)
                queue.append(child)
        self._run(queue, to_end, deadline)
        self.counters.seconds += time.perf_counter() - start
        return out

    def states_of(self, question: str, steps: list[str]) -> list[np.ndarray]:
        """The hidden state at each step's last token of a written solution (``capture_states``).

        The same states generation records, from a prefill of the prompt and the solution; for
        solutions the policy did not just generate (training data, kept samples). See
        :meth:`read_solution`, which also gives the tokens' confidence.
        """
        return self.read_solution(question, steps).step_states

    def read_solution(self, question: str, steps: list[str], confidence: bool = False) -> Path:
        """Prefill a written solution: a Path with the states a generation would have recorded.

        ``step_states`` holds the hidden state at each step's last token (``capture_states``);
        with ``confidence``, ``token_stats`` and ``step_token_ends`` too, each token judged by
        the logits before it, as :attr:`PolicyConfig.capture_confidence` records them. Each
        step is tokenized on its own with its step separator (added when missing, as
        ``split_steps`` drops it), as generation cuts tokens at step ends. Like :meth:`root` it
        starts from a clear cache (the prompt's prefill is reused): not for use in the middle
        of a search. It decodes with embeddings on, so llama.cpp keeps logits for up to n_batch
        tokens at once (0.6 MB each): fine for the tools it serves, not for a tight budget.
        """
        if not self.config.capture_states:
            raise PolicyError("read_solution needs a policy created with capture_states=True")
        root = self.root(question)
        tokens, ends = self._solution_tokens(steps, close_last=False)
        slot = self._free_slots[-1]
        llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
        llama_cpp.llama_memory_seq_cp(self._memory, TEMPLATE_SLOT, slot, -1, -1)
        first = len(root.handle.prompt.tokens)
        limit = self.config.resolved_n_ctx() - first
        if len(tokens) > limit:
            raise PolicyError(f"the solution has {len(tokens)} tokens; the context holds {limit}")
        try:
            states, stats, _ = self._decode_solution(root, tokens, ends, slot, confidence)
        finally:
            llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
        return Path(steps=list(steps), step_states=[states[e] for e in ends], finished=True,
                    n_tokens=len(tokens), token_stats=stats,
                    step_token_ends=[e + 1 for e in ends] if confidence else [])

    def path_from(self, question: str, steps: list[str]) -> Path:
        """An unfinished path holding a written solution's ``steps``, ready to :meth:`extend`.

        The steps (each closed by the step separator) are decoded once into a slot of their own
        after the prompt's prefill; extending the path then forks that slot (``seq_cp``) like any
        other, so K continuations from a prefix cost the prefix once (Monte-Carlo step labels).
        Like :meth:`root` it starts from a clear cache when the prompt changes.
        """
        root = self.root(question)
        tokens, ends = self._solution_tokens(steps, close_last=True)
        if not tokens or not self._free_slots:
            raise PolicyError("path_from needs at least one step and a free slot")
        prompt = root.handle.prompt
        if len(prompt.tokens) + len(tokens) + self.config.max_tokens > self.config.resolved_n_ctx():
            raise PolicyError(f"the solution has {len(tokens)} tokens; the context is too small")
        slot = self._free_slots.pop()
        llama_cpp.llama_memory_seq_cp(self._memory, TEMPLATE_SLOT, slot, -1, -1)
        cfg = self.config
        # The prefix's steps get what generation would have recorded for them (states,
        # confidence), so its children's steps line up with their scores.
        states, stats, logits = self._decode_solution(root, tokens, ends if cfg.capture_states else [],
                                                      slot, cfg.capture_confidence)
        self.counters.tokens_decoded += len(tokens)
        seq = _Seq(prompt=prompt, tokens=tokens, slot=slot, n_cached=len(tokens), logits=logits,
                   hidden=states.get(len(tokens) - 1))
        return Path(steps=list(steps), handle=seq, n_tokens=len(tokens),
                    step_states=[states[e] for e in ends] if cfg.capture_states else [],
                    token_stats=stats,
                    step_token_ends=[e + 1 for e in ends] if cfg.capture_confidence else [])

    def _decode_solution(self, root: Path, tokens: list[int], ends: list[int], slot: int,
                         confidence: bool) -> tuple[dict[int, np.ndarray], list, np.ndarray]:
        """Decode a solution's tokens after the prompt into ``slot``: the states at ``ends``, the
        tokens' confidence (each judged by the logits before it, the prompt's for the first) and
        the last token's logits."""
        first, last = len(root.handle.prompt.tokens), len(tokens) - 1
        wanted: set[int] = set(ends)
        states: dict[int, np.ndarray] = {}
        stats = [token_stats(root.handle.logits, tokens[0])] if confidence and tokens else []
        logits = root.handle.logits
        for start in range(0, len(tokens), self.config.n_batch):
            self._batch.n_tokens = 0
            chunk = range(start, min(start + self.config.n_batch, len(tokens)))
            for i in chunk:
                self._add(tokens[i], first + i, slot, confidence or i in wanted or i == last)
            self._decode()
            rows = {i: row for row, i in enumerate(chunk)}
            states.update({i: self._state(rows[i]) for i in wanted if i in rows})
            if confidence:
                stats += [token_stats(self._logits_view(rows[i]), tokens[i + 1])
                          for i in chunk if i < last]
            if last in rows:
                logits = self._logits(rows[last])
        return states, stats, logits

    def _solution_tokens(self, steps: list[str], close_last: bool) -> tuple[list[int], list[int]]:
        """Tokens of written steps, each tokenized on its own with its separator (as generation
        cuts them), and the index of each step's last token."""
        tokens: list[int] = []
        ends: list[int] = []
        for i, step in enumerate(steps):
            if (close_last or i < len(steps) - 1) and not step.endswith(STEP_SEPARATOR):
                step += STEP_SEPARATOR
            tokens += self.tokenize(step, special=False)
            ends.append(max(len(tokens) - 1, 0))
        return tokens, ends

    def release(self, paths: list[Path]) -> None:
        """Drop the KV sequences of paths the strategy no longer needs."""
        for path in paths:
            seq = path.handle
            if isinstance(seq, _Seq) and not seq.is_template:
                self._free(seq)
                seq.logits = None

    def _configured_sampling(self) -> Sampling:
        cfg = self.config
        return Sampling(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, seed=cfg.seed)

    # -- generation ----------------------------------------------------------------------------

    def _child(self, path: Path, parent: _Seq, index: int, last: bool, to_end: bool) -> _Child:
        seq = _Seq(
            prompt=parent.prompt,
            tokens=list(parent.tokens),
            lineage=(*parent.lineage, index),
            carry=parent.carry,
            hidden=parent.hidden,
            tail=parent.tail,
        )
        child_path = Path(steps=list(path.steps), handle=seq, n_tokens=path.n_tokens,
                          step_states=list(path.step_states), token_stats=list(path.token_stats),
                          step_token_ends=list(path.step_token_ends))
        return _Child(path=child_path, seq=seq, parent=parent, last_of_parent=last, to_end=to_end)

    def _run(self, queue: deque[_Child], to_end: bool, deadline: Deadline | None) -> None:
        active: list[_Child] = []
        waiting: list[_Child] = []  # finished their step, still holding a slot
        while queue or active:
            if deadline is not None and deadline.expired():
                for child in [*active, *queue]:
                    self._stop_at_deadline(child)
                return
            while queue and self._can_start(queue[0], active, waiting):
                child = queue.popleft()
                self._start(child)
                if child.done:  # ended on its very first token
                    self._finish_child(child)
                else:
                    active.append(child)
            if not active:
                continue
            self._step(active)
            for child in [c for c in active if c.done]:
                active.remove(child)
                self._finish_child(child)
                if child.seq.slot is not None:
                    waiting.append(child)

    def _can_start(self, child: _Child, active: list[_Child], waiting: list[_Child]) -> bool:
        if self._inherits(child) or self._free_slots:
            return True
        if waiting:
            self._free(waiting.pop(0).seq)  # park: rebuilt later by re-decoding its tokens
            return True
        if active:
            return False  # wait for an active child to finish or close its step
        parent = child.parent
        if parent.slot is None or parent.is_template:
            raise PolicyError("no KV sequence slot can be freed; raise n_seq_max")
        child.take_parent_slot = True  # every slot holds a parent: siblings rebuild later
        return True

    @staticmethod
    def _inherits(child: _Child) -> bool:
        parent = child.parent
        wants = child.last_of_parent or child.take_parent_slot
        return wants and not parent.is_template and parent.slot is not None

    def _start(self, child: _Child) -> None:
        parent, seq = child.parent, child.seq
        if self._inherits(child):
            seq.slot, parent.slot = parent.slot, None
            seq.n_cached = parent.n_cached
        elif parent.slot is not None:
            seq.slot = self._free_slots.pop()
            llama_cpp.llama_memory_seq_cp(self._memory, parent.slot, seq.slot, -1, -1)
            seq.n_cached = parent.n_cached
        else:  # parent was parked: rebuild from the template prompt
            seq.slot = self._free_slots.pop()
            llama_cpp.llama_memory_seq_cp(self._memory, TEMPLATE_SLOT, seq.slot, -1, -1)
            seq.n_cached = 0
        self.counters.sequences_forked += 1
        child.sampler = self._new_sampler(seq.lineage)
        if seq.n_cached == len(seq.tokens) and parent.logits is not None:
            token = self._sample_from(child.sampler, parent.logits)
            self._accept(child, token, self._stats(parent.logits, token))
        else:
            child.to_decode = seq.tokens[seq.n_cached :]
            self.counters.tokens_redecoded += len(child.to_decode)
            seq.tokens = seq.tokens[: seq.n_cached]
        if child.last_of_parent and not parent.is_template:
            parent.logits = None  # no sibling needs it any more (the template's serve a next root)

    def _step(self, active: list[_Child]) -> None:
        """Decode one batch: every active child's pending tokens, then sample each child.

        A child rebuilding a parked path may have more tokens pending than the batch holds; it
        then decodes a slice now and samples in a later batch. With captured states, all but its
        last rebuilt token go first, quietly (see _decode_quietly).
        """
        if self.config.capture_states:
            for child in [c for c in active if len(c.to_decode) > 1]:
                seq, rebuilt = child.seq, child.to_decode[:-1]
                self._decode_quietly(rebuilt, len(seq.prompt.tokens) + seq.n_cached, seq.slot)
                self.counters.tokens_decoded += len(rebuilt)
                child.to_decode = child.to_decode[-1:]
                seq.n_cached += len(rebuilt)
                if len(seq.tokens) < seq.n_cached:  # rebuilt tokens are back in the path
                    seq.tokens.extend(rebuilt)
        self._batch.n_tokens = 0
        rows: list[tuple[_Child, int]] = []
        for child in active:
            room = self.config.n_batch - self._batch.n_tokens
            if room <= 0:
                break
            seq = child.seq
            part, child.to_decode = child.to_decode[:room], child.to_decode[room:]
            complete = not child.to_decode
            for k, tok in enumerate(part):
                pos = len(seq.prompt.tokens) + seq.n_cached + k
                self._add(tok, pos, seq.slot, complete and k == len(part) - 1)
            seq.n_cached += len(part)
            if len(seq.tokens) < seq.n_cached:  # rebuilt tokens are back in the path
                seq.tokens.extend(part)
            if complete:
                rows.append((child, self._batch.n_tokens - 1))
        self._decode()
        self.counters.tokens_decoded += self._batch.n_tokens
        for child, row in rows:
            if self.config.capture_states:
                self._read_state(child, row)
            if child.closing:
                child.seq.logits = self._logits(row)
                child.done = True
                continue
            token = llama_cpp.llama_sampler_sample(child.sampler, self._ctx, row)
            self._accept(child, token, self._stats(self._logits_view(row), token))

    def _stats(self, logits: np.ndarray, token: int) -> tuple[float, float, float] | None:
        return token_stats(logits, token) if self.config.capture_confidence else None

    def _accept(self, child: _Child, token: int, stats: tuple[float, float, float] | None = None) -> None:
        """Record a sampled token: end the path, end the step, or queue it for decoding."""
        cfg = self.config
        path, seq = child.path, child.seq
        self.counters.tokens_sampled += 1
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._end_path(child, "eos")
            return
        if stats is not None:
            path.token_stats.append(stats)
        seq.tokens.append(token)
        path.n_tokens += 1
        child.step_tokens += 1
        child.step_bytes += self.piece(token)
        stop = next((s for s in self._stop_strings if s in child.step_bytes), None)
        if stop is not None:
            child.step_bytes = child.step_bytes[: child.step_bytes.index(stop)]
            self._end_path(child, "eos")
            return
        if self._sampling.stop and self._cut_at_stop(child):
            self._end_path(child, "stop")
            return
        if path.n_tokens >= (self._sampling.max_tokens or cfg.max_tokens):
            self._end_path(child, "max_tokens")
            return
        child.to_decode = [token]
        sep = STEP_SEPARATOR.encode()
        cut = child.step_bytes.find(sep)
        if cut < 0 and child.step_tokens < cfg.max_step_tokens:
            return
        end = cut + len(sep) if cut >= 0 else len(child.step_bytes)
        self._push_step(child, child.step_bytes[:end])
        child.step_bytes = child.step_bytes[end:]
        child.step_tokens = 0
        if not child.to_end:
            child.closing = True  # decode this last token once more for its logits, then stop

    def _cut_at_stop(self, child: _Child) -> bool:
        """Whether a stop string of this search now appears; if so, cut the text where it begins.

        The text since the last step (carry and the current step's bytes) is searched together
        with the end of the steps before (``tail``), so a stop string that spans a step boundary
        (``"\n\nAnswer"``) is found too; the finished steps then lose its first bytes.
        """
        seq = child.seq
        window = seq.tail + seq.carry + child.step_bytes
        hits = [window.find(s.encode()) for s in self._sampling.stop]
        found = [i for i in hits if i >= 0]
        if not found:
            return False
        cut = min(found)
        before, pending = len(seq.tail), len(seq.carry)
        if cut >= before + pending:
            child.step_bytes = child.step_bytes[: cut - before - pending]
        else:
            child.step_bytes = b""
            seq.carry = seq.carry[: max(cut - before, 0)]
            if cut < before:  # the stop began in the last finished step: trim it
                path = child.path
                last = path.steps[-1].encode()[: -(before - cut)]
                path.steps[-1] = last.decode("utf-8", errors="replace")
                if not path.steps[-1].strip():  # nothing of that step is left
                    path.steps.pop()
                    del path.step_states[len(path.steps) :]
                    del path.step_token_ends[len(path.steps) :]
        return True

    def _push_step(self, child: _Child, data: bytes, last_token_decoded: bool = False) -> None:
        stop_window = max((len(s.encode()) for s in self._sampling.stop), default=0)
        if stop_window:
            child.seq.tail = (child.seq.tail + child.seq.carry + data)[-stop_window:]
        text = (child.seq.carry + data).decode("utf-8", errors="replace")
        child.seq.carry = b""
        path = child.path
        if text.strip():
            path.steps.append(text)
            if self.config.capture_confidence:
                path.step_token_ends.append(len(path.token_stats))
        elif path.steps:
            path.steps[-1] += text  # blank lines belong to the step before
            if self.config.capture_confidence:
                path.step_token_ends[-1] = len(path.token_stats)
        else:
            return
        if self.config.capture_states:
            # The latest state for now; when the step's last token is still to be decoded,
            # that decode replaces it (_read_state). A path that ends first keeps this one.
            if len(path.step_states) < len(path.steps):
                path.step_states.append(child.seq.hidden)
            else:
                path.step_states[-1] = child.seq.hidden
            child.state_pending = None if last_token_decoded else len(path.steps) - 1

    def _state(self, row: int) -> np.ndarray:
        """The step state of batch row ``row`` of the last decode: its ``state_layers``, joined."""
        parts = []
        for layer in self.config.state_layers:
            if layer < 0:
                ptr = llama_cpp.llama_get_embeddings_ith(self._ctx, row)
                parts.append(np.ctypeslib.as_array(ptr, shape=(self._n_embd,)).copy())
            else:
                parts.append(self._tap.rows[layer][row].copy())  # type: ignore[union-attr]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _read_state(self, child: _Child, row: int) -> None:
        child.seq.hidden = self._state(row)
        if child.state_pending is not None:
            child.path.step_states[child.state_pending] = child.seq.hidden
            child.state_pending = None

    def _end_path(self, child: _Child, reason: str) -> None:
        # At an end of sequence the text's last token is the one just decoded; at a length or
        # stop-string cut it was sampled but is never decoded, so the state before it stands in.
        self._push_step(child, child.step_bytes, last_token_decoded=True)
        child.step_bytes = b""
        child.path.finished = True
        child.path.stop_reason = reason
        child.done = True
        child.to_decode = []

    def _finish_child(self, child: _Child) -> None:
        if child.sampler is not None:
            llama_cpp.llama_sampler_free(child.sampler)
            child.sampler = None
        seq = child.seq
        if child.path.finished:
            self._free(seq)  # a finished path is never extended: its KV is not needed
        else:
            seq.carry = child.step_bytes

    def _stop_at_deadline(self, child: _Child) -> None:
        """Leave the child as it is; a later extend decodes whatever its KV lacks."""
        child.path.stop_reason = "deadline"
        if child.sampler is None:  # never started: it stands for its parent as it was
            if self._inherits(child):
                child.seq.slot, child.parent.slot = child.parent.slot, None
                child.seq.n_cached, child.seq.logits = child.parent.n_cached, child.parent.logits
            return
        if child.step_bytes:
            self._push_step(child, child.step_bytes)
            child.step_bytes = b""
        child.seq.logits = None  # tokens past n_cached (sampled, not decoded) are decoded later
        llama_cpp.llama_sampler_free(child.sampler)
        child.sampler = None

    # -- llama.cpp helpers ---------------------------------------------------------------------

    def _add(self, token: int, pos: int, slot: int, logits: bool) -> None:
        b = self._batch
        i = b.n_tokens
        if i >= self.config.n_batch:
            raise PolicyError(f"batch overflow: more than n_batch={self.config.n_batch} tokens")
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = slot
        b.logits[i] = logits
        b.n_tokens = i + 1

    def _decode_tokens(self, tokens: list[int], first_pos: int, slot: int, output_last: bool) -> None:
        """Decode ``tokens`` into ``slot`` in batches of n_batch, outputs for the last one only."""
        for start in range(0, len(tokens), self.config.n_batch):
            chunk = tokens[start : start + self.config.n_batch]
            self._batch.n_tokens = 0
            for i, tok in enumerate(chunk):
                self._add(tok, first_pos + start + i, slot, output_last and start + i == len(tokens) - 1)
            self._decode()

    def _decode_quietly(self, tokens: list[int], first_pos: int, slot: int) -> None:
        """Decode tokens whose outputs nobody reads (a prompt's head, a parked path's rebuild).

        While embeddings are on (``capture_states``) llama.cpp outputs *every* token of a batch,
        logits included: 0.6 MB a token at a 152k vocabulary, about 110 MB more peak memory for a
        90-token prompt and 300 MB for a full batch (measured). So they go with embeddings off.
        """
        if not tokens:
            return
        if self.config.capture_states:
            llama_cpp.llama_set_embeddings(self._ctx, False)
        if self._tap is not None:
            self._tap.on = False
        try:
            self._decode_tokens(tokens, first_pos, slot, output_last=False)
        finally:
            if self.config.capture_states:
                llama_cpp.llama_set_embeddings(self._ctx, True)
            if self._tap is not None:
                self._tap.on = True

    def _decode(self) -> None:
        ret = llama_cpp.llama_decode(self._ctx, self._batch)
        self.counters.decode_calls += 1
        if ret == 1:
            raise PolicyError(
                f"the KV cache is full (n_ctx={self.config.resolved_n_ctx()}); "
                "raise n_ctx or lower n_seq_max / max_tokens"
            )
        if ret != 0:
            raise PolicyError(f"llama_decode failed with code {ret}")

    def _logits(self, row: int) -> np.ndarray:
        return self._logits_view(row).copy()

    def _logits_view(self, row: int) -> np.ndarray:
        """Batch row ``row``'s logits in llama.cpp's buffer: valid until the next decode."""
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def _new_sampler(self, lineage: tuple[int, ...]) -> llama_cpp.llama_sampler_p:
        cfg = self._sampling
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if cfg.temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        # Each path gets its own stream, fixed by the run seed and its place in the tree, so a
        # run is reproducible whatever order the batch happens to decode in.
        seed = zlib.crc32(repr((cfg.seed, lineage)).encode())
        if cfg.top_k > 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(cfg.top_k))
        if cfg.top_p < 1.0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(cfg.top_p, 1))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(cfg.temperature))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    def _sample_from(self, sampler: llama_cpp.llama_sampler_p, logits: np.ndarray) -> int:
        """Sample from saved logits (a fork's first token) with the child's own sampler."""
        data = (llama_cpp.llama_token_data * self._n_vocab)()
        view = np.ctypeslib.as_array(data).view(
            np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        )
        view["id"] = np.arange(self._n_vocab, dtype=np.int32)
        view["logit"] = logits
        view["p"] = 0.0
        arr = llama_cpp.llama_token_data_array(data=data, size=self._n_vocab, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
        token = int(data[arr.selected].id)
        llama_cpp.llama_sampler_accept(sampler, token)
        return token

    def _free(self, seq: _Seq) -> None:
        if seq.slot is None or seq.is_template:
            return
        llama_cpp.llama_memory_seq_rm(self._memory, seq.slot, -1, -1)
        self._free_slots.append(seq.slot)
        seq.slot = None
        seq.n_cached = 0
