"""The policy on llama.cpp's low-level API: one prefill, forked KV sequences, one batch per token.

How a question is answered, in KV-cache terms:

* ``root(question)`` decodes the prompt once into a *template* sequence, keeping the logits of
  its last token, and drops the search's earlier paths. Asked again for the same prompt it keeps
  the template, so a second round of samples (``auto`` continuing after its probes, a server
  retry) forks from the same prefill instead of decoding the prompt again. A search alone starts
  from a clear cache with its template in sequence 0, as it always did.
* ``extend(paths, n_each)`` forks every parent into children. A child copies its parent's sequence
  (``llama_memory_seq_cp``; with the unified KV cache this only tags the same cells with one more
  sequence id, so a shared prefix is stored once), samples its first token from the parent's saved
  logits with its own sampler, and from then on every live child decodes together, one row each,
  in a single ``llama_batch`` per token. The last child of a parent inherits the parent's slot.
* A child stops at the step separator (a blank line), at end of generation, at one of the
  search's stop strings (cut off, across step boundaries too: see :mod:`.steps`), at the token
  limit or at the deadline. The token that closed a step is decoded once more so its logits can seed the
  next round, which makes the decoded-token count exactly: the prompt once plus every token of
  the search tree.
* ``release(paths)`` drops sequences (``llama_memory_seq_rm``); finished paths free theirs at once.

Several searches at once (``PolicyConfig.max_searches``): each runs in a
:class:`~edgetts.policy.session.PolicySession` (``root``/``extend`` on the policy itself use one
per thread) with its own counters; each prompt has a template sequence of its own (ids 0 and
``n_seq_max + 1 ...``; an unused one is dropped for a new prompt, and a root waits while every
template serves a running search). Their ``extend`` calls meet in one
:class:`~edgetts.policy.loop.DecodeLoop`: each pass (:meth:`LlamaPolicy._advance`) starts what
can start, earliest call first, and decodes the active children of *every* search in one batch.
Everything that touches the context runs on the loop's driver, one thread at a time.

Slots are finite (``n_seq_max``, shared by all searches). When more children are asked for than
there are slots, they run in waves: a child waits until a slot frees up (another search's too),
and when every slot is held by a path that is only waiting for the next round (its own search's
first, then any search's, see ``_can_start``), that path is *parked*: it gives up its slot,
and its own KV cells (those after the prompt, which the template holds anyway) are copied to
host memory (``llama_state_seq_get_data``). A child of a parked path restores them into a free
slot (a copy, ``llama_state_seq_set_data``), tags the template's prompt cells with that slot
again, and samples its first token from the logits its parent kept when its step closed: no
token is decoded again.
``tokens_restored`` counts the tokens brought back that way. The copies live within
``PolicyConfig.park_mb``; past it (or when the cache has no contiguous run of free cells to
restore into) a parked path is rebuilt from the template by decoding its own tokens again, which
``tokens_redecoded`` counts. Both are zero whenever the slots suffice.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgetts.confidence import token_stats
from edgetts.gpu import default_gpu_layers
from edgetts.llama.context import MAX_SEQUENCES, LlamaBatch, LlamaContext
from edgetts.llama.errors import LlamaError
from edgetts.llama.layer_tap import LayerTap
from edgetts.llama.model import LlamaModel
from edgetts.llama.sampler import Sampler
from edgetts.metadata import ModelMetadata, read_metadata
from edgetts.models import resolve
from edgetts.policy.config import (
    KV_TYPES,
    GeneratorCounters,
    PolicyConfig,
    PolicyError,
    PromptTooLong,
    SearchNotStarted,
    check_threads,
    default_threads,
)
from edgetts.policy.loop import RETRY, DecodeLoop, Run
from edgetts.policy.session import PolicySession
from edgetts.policy.slots import TEMPLATE_SLOT, ParkBudget, SlotPool
from edgetts.policy.steps import StepAccumulator, trim_steps, whole_characters
from edgetts.prompts import STEP_SEPARATOR, Prompt, prompt_parts, question_text
from edgetts.search.base import Deadline, Sampling, SolutionPath

# A question longer than this many characters per token of the prompt's limit is refused
# without tokenizing it (a 30 MB paste took 50 s to be refused): no tokenizer packs 64
# characters into every token of ordinary text, so nothing that would fit is refused.
MAX_CHARS_PER_TOKEN = 64


@dataclass
class _Prompt:
    question: str
    tokens: list[int]
    slot: int  # the KV sequence holding its prefill (the template's)


@dataclass
class _Seq:
    """The generator's side of a SolutionPath (kept in ``SolutionPath.handle``)."""

    prompt: _Prompt
    sampling: Sampling  # the search's, from its root: every path grown from it samples so
    tokens: list[int] = field(default_factory=list)  # generated after the prompt
    slot: int | None = None  # KV sequence id; None when parked or freed
    n_cached: int = 0  # how many of ``tokens`` the slot's KV holds
    logits: np.ndarray | None = None  # next-token logits, valid when n_cached == len(tokens)
    lineage: tuple[int, ...] = ()  # child indices from the root: seeds the sampler
    carry: bytes = b""  # text sampled past a step separator, belongs to the next step
    is_template: bool = False
    hidden: np.ndarray | None = None  # final hidden state of the last decoded token (capture_states)
    tail: bytes = b""  # the end of the steps so far, for search stop strings across a step boundary
    # The path's own KV cells (after the prompt) in host memory while it is parked, and how many
    # of ``tokens`` they hold; None when it was not parked or nothing needs them any more.
    parked: np.ndarray | None = None
    parked_n: int = 0
    search: PolicySession | None = None  # the search it belongs to: counts its cost, owns its slot
    # A template only: the sessions whose paths grow from it (it stays while any does).
    users: list[PolicySession] = field(default_factory=list)


@dataclass
class _Child:
    """A path being generated in the current ``extend`` call."""

    path: SolutionPath
    seq: _Seq
    parent: _Seq
    steps: StepAccumulator
    last_of_parent: bool
    to_end: bool
    take_parent_slot: bool = False  # set when slots run out: siblings rebuild from the template
    # Step whose last token is still to be decoded: its hidden state comes with that decode.
    state_pending: int | None = None
    sampler: Sampler | None = None
    to_decode: list[int] = field(default_factory=list)
    closing: bool = False  # the step is complete once ``to_decode`` is decoded
    done: bool = False
    # extend's stop_early (to_end only), and how many of the path's steps it has been asked about
    stop_early: Callable[[SolutionPath], bool] | None = None
    steps_asked: int = 0


# A path whose search ended no longer has its KV or its prompt's prefill: extending it would
# fork whatever holds those slots now (seen: another thread's prompt, answered as this one).
ENDED_MESSAGE = (
    "this path's search has ended (its session was closed, or a root on another thread took its "
    "prompt's place: concurrent searches each need their own policy.session()); root again"
)


def _ended(seq: _Seq) -> bool:
    return seq.search is not None and seq.search.closed


class _Run(Run):
    """One ``extend`` call's children, advanced by the decode loop's passes with everyone else's."""

    def __init__(self, search: PolicySession, queue: deque[_Child], deadline: Deadline | None) -> None:
        super().__init__()
        self.search = search
        self.queue = queue  # not started yet (filled by _new_run)
        self.deadline = deadline
        self.active: list[_Child] = []  # decoding
        self.waiting: list[_Child] = []  # finished their step, still holding a slot
        self.children: list[SolutionPath] = []  # what the extend returns, in its order


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
        if cfg.max_searches < 1:
            raise PolicyError(f"max_searches must be at least 1, got {cfg.max_searches}")
        if cfg.n_seq_max + cfg.max_searches > MAX_SEQUENCES:  # a template sequence per search
            raise PolicyError(
                f"n_seq_max + max_searches is at most {MAX_SEQUENCES} (llama.cpp's limit), "
                f"got {cfg.n_seq_max} + {cfg.max_searches}"
            )
        self.model_path: Path = resolve(cfg.model)
        self.metadata: ModelMetadata = read_metadata(self.model_path)
        n_ctx_train = self.metadata.n_ctx_train
        if n_ctx_train and cfg.max_tokens + cfg.max_prompt_tokens > n_ctx_train:
            raise PolicyError(
                f"max_tokens={cfg.max_tokens} plus a prompt of up to {cfg.max_prompt_tokens} tokens is "
                f"more than this model's context of {n_ctx_train} tokens"
            )
        n_layers = self.metadata.n_layers
        # The last block keeps only its output rows (llama.cpp drops the rest before it), so it
        # is read as -1, after the output norm.
        if not cfg.state_layers or any(not -1 <= i < n_layers - 1 for i in cfg.state_layers):
            raise PolicyError(
                f"state_layers must be -1 (the final state) or blocks 0..{n_layers - 2}, "
                f"got {cfg.state_layers}"
            )
        self.counters = GeneratorCounters()
        self._counting = threading.Lock()  # callers add their seconds while the driver counts tokens
        wants_blocks = cfg.capture_states and any(i >= 0 for i in cfg.state_layers)
        self._tap = LayerTap(cfg.state_layers, self.metadata.n_embd) if wants_blocks else None
        layers = default_gpu_layers() if cfg.n_gpu_layers is None else cfg.n_gpu_layers
        self.model = LlamaModel(self.model_path, layers)
        self.context = LlamaContext(
            self.model,
            n_ctx=cfg.resolved_n_ctx(),
            n_batch=cfg.n_batch,
            n_seq_max=cfg.n_seq_max + cfg.max_searches,  # + a template sequence per search
            n_threads=cfg.n_threads or default_threads(),
            kv_type=cfg.kv_type,
            embeddings=cfg.capture_states,
            tap=self._tap,
        )
        # llama.cpp clamps n_batch to n_ctx: a batch of cfg.n_batch tokens could fail its assert
        self._batch = LlamaBatch(self.context.n_batch)
        self.slots = SlotPool(cfg.n_seq_max)
        self.slots.reset()
        self._slot_owner: dict[int, _Seq] = {}  # path slot -> the path holding it
        # Prefilled prompts by their tokens, least recently rooted first; one slot each, slot 0
        # first, then the ids after the path slots.
        self._templates: dict[tuple[int, ...], _Seq] = {}
        # The template prefilled into a clear cache, while no other prefill has followed it.
        self._fresh_template: _Seq | None = None
        self._template_slots = [TEMPLATE_SLOT, *range(cfg.n_seq_max + 1, cfg.n_seq_max + cfg.max_searches)]
        self._loop = DecodeLoop(self._advance)
        self._local = threading.local()  # each thread's default session (root/extend called here)
        if cfg.park_mb < 0:
            raise PolicyError(f"park_mb must be 0 (no parking in host memory) or more, got {cfg.park_mb}")
        self.parking = ParkBudget(int(cfg.park_mb * (1 << 20)))
        self._parked: dict[int, _Seq] = {}  # id -> path whose KV is in host memory
        self._stop_strings = () if self.metadata.chat_template else (b"\nQuestion:",)

    def close(self) -> None:
        """Free the llama.cpp batch, context and model (also done when the object is collected)."""
        for owner in ("_batch", "context", "model"):
            if getattr(self, owner, None) is not None:
                getattr(self, owner).close()

    def __del__(self) -> None:
        self.close()

    # -- tokens --------------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool, add_bos: bool | None = None) -> list[int]:
        """Tokens of ``text``; ``special``: read special-token markers in it (trusted text only)
        and add the BOS token if the model wants one (``add_bos`` decides on its own if given).
        No default: a caller says whether the text is trusted (a forgotten flag trusted it)."""
        try:
            return self.model.tokenize(text, special, special if add_bos is None else add_bos)
        except LlamaError as exc:
            raise PolicyError(str(exc)) from None

    def piece(self, token: int) -> bytes:
        return self.model.piece(token)

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

    def checked_prompt_tokens(self, question: Prompt, system: str | None = None) -> list[int]:
        """:meth:`prompt_tokens`, refused with a PolicyError (:class:`PromptTooLong`) when the
        prompt is longer than this policy's context allows."""
        limit = min(self.config.max_prompt_tokens, self.config.resolved_n_ctx() - self.config.max_tokens)
        chars = sum(len(text) for text, _ in self._prompt_parts(question, system))
        if chars > limit * MAX_CHARS_PER_TOKEN:  # refused before tokenizing megabytes
            raise PromptTooLong(
                f"the question is too long: {chars} characters, where the prompt may have "
                f"{limit} tokens (max_prompt_tokens; --max-prompt-tokens)"
            )
        tokens = self.prompt_tokens(question, system)
        if len(tokens) > limit:
            raise PromptTooLong(
                f"the question is too long: its prompt has {len(tokens)} tokens, the limit is "
                f"{limit} (max_prompt_tokens; --max-prompt-tokens)"
            )
        return tokens

    def _prompt_parts(self, question: Prompt, system: str | None) -> list[tuple[str, bool]]:
        template, bos, eos = self.metadata.chat_template, self.model.bos_text, self.model.eos_text
        try:
            if isinstance(question, str):
                return prompt_parts(question, template, bos=bos, eos=eos, system=system)
            if system is not None:
                raise ValueError("a conversation or raw prompt brings its own system prompt")
            return question.parts(template, bos=bos, eos=eos)
        except ValueError as exc:
            raise PolicyError(str(exc)) from None

    # -- StepGenerator -------------------------------------------------------------------------

    def session(
        self, counters: GeneratorCounters | None = None, deadline: Deadline | None = None
    ) -> PolicySession:
        """A generator for one search that may run beside others on this policy (see
        :mod:`edgetts.policy.session`); close it when the search ends. ``counters``: where it
        counts (its own if None). ``deadline``: how long its root may wait for a prompt slot
        while :attr:`PolicyConfig.max_searches` other searches hold them (None: as long as it takes)."""
        return PolicySession(self, counters, deadline)

    def _thread_session(self) -> PolicySession:
        """The session :meth:`root` and :meth:`extend` use when called on the policy itself:
        one per thread, replaced at each root (its paths dropped, as a new root always did)."""
        session = getattr(self._local, "session", None)
        if session is None or session.closed:
            session = self._local.session = PolicySession(self)
            session.is_default = True
        return session

    def root(
        self, question: Prompt, sampling: Sampling | None = None, system: str | None = None
    ) -> SolutionPath:
        """Prefill the prompt for ``question`` once (kept for a next root of the same prompt).

        The root begins a search: ``sampling`` (None: this policy's configured sampling) holds
        for every path grown from it. ``system`` replaces the math instructions (code tasks and
        programs use their own). ``question`` may also be a whole
        :class:`~edgetts.prompts.Conversation` or a :class:`~edgetts.prompts.RawPrompt`.
        Called on the policy, it runs in this thread's default session: the paths of this
        thread's previous search are dropped. Concurrent searches use :meth:`session`.
        """
        return self.search_root(self._thread_session(), question, sampling, system)

    def search_root(
        self,
        search: PolicySession,
        question: Prompt,
        sampling: Sampling | None = None,
        system: str | None = None,
    ) -> SolutionPath:
        """:meth:`root` for ``search`` (a :class:`PolicySession` calls this)."""
        text = question_text(question)
        if not text or not text.strip():
            raise PolicyError("the question is empty")
        sampling = sampling or self._configured_sampling()
        if sampling.max_tokens is not None and not 1 <= sampling.max_tokens <= self.config.max_tokens:
            raise PolicyError(
                f"max_tokens must be 1..{self.config.max_tokens} (the limit this policy's "
                f"context was made for), got {sampling.max_tokens}"
            )
        start = time.perf_counter()
        tokens = self.checked_prompt_tokens(question, system)
        path = self._loop.call(lambda: self._root_now(search, text, tokens, sampling))
        self._count(search, seconds=time.perf_counter() - start)
        return path

    def _root_now(
        self, search: PolicySession, text: str, tokens: list[int], sampling: Sampling
    ) -> SolutionPath | object:
        """On the loop: ``search``'s root, prefilling its prompt unless a template holds it
        already; RETRY while every template slot serves another search.

        A search alone starts from the cache a search alone always had: its prompt's prefill
        reused only if it is the last one made and it was made into a clear cache, else the
        cache is cleared and the prompt prefilled again. So the KV layout, and with it every
        logit, is what it would be with no other search before it (other prompts' cells would
        widen the attention's span and round the logits a little differently).
        """
        self._drop_paths_of(search)  # its previous paths are done with
        key = tuple(tokens)
        alone = self._cache_idle(search)  # (before the pop: another search may use this prompt)
        template = self._templates.pop(key, None)
        if alone and template is not self._fresh_template:
            template = None
        if template is None:
            if alone:
                self.context.clear()
                self._templates.clear()
                slot: int | None = TEMPLATE_SLOT
            else:
                # its old prompt (its paths are dropped) must not hold a slot against its new one:
                # two searches each asking for a second prompt would wait on each other for good
                self._stop_using_template(search)
                slot = self._free_template_slot(search)
                if slot is None:
                    if search.deadline is not None and search.deadline.expired():
                        raise SearchNotStarted(
                            f"the deadline passed (or the search was cancelled) while all "
                            f"{len(self._template_slots)} prompt slots served other searches "
                            "(PolicyConfig.max_searches)"
                        )
                    return RETRY
            template = self._prefill(search, text, tokens, slot)  # type: ignore[arg-type]
            self._fresh_template = template if alone else None
        self._templates[key] = template  # the most recently rooted last
        if search.template is not template:
            self._stop_using_template(search)
            template.users.append(search)
            search.template = template
        # The template's KV and logits serve every search on this prompt; each root has its own
        # sampling, so it gets its own view of them.
        return SolutionPath(handle=replace(template, sampling=sampling, search=search, users=[]))

    def _free_template_slot(self, search: PolicySession) -> int | None:
        """A template slot for a new prompt: a free one, else the least recently rooted prompt
        no session uses (or only default sessions, see :meth:`_thread_session`), dropped; None
        while every template serves a search."""
        taken = {t.prompt.slot for t in self._templates.values()}
        free = [slot for slot in self._template_slots if slot not in taken]
        if free:
            return free[0]
        for key, template in self._templates.items():
            if all(user.is_default and user is not search for user in template.users):
                for user in list(template.users):
                    self._close_now(user)
                del self._templates[key]
                self.context.seq_remove(template.prompt.slot)
                return template.prompt.slot
        return None

    def _cache_idle(self, search: PolicySession) -> bool:
        """Nothing in the cache serves a search but ``search``'s own template."""
        if self._slot_owner or self._parked:
            return False
        return all(user is search for t in self._templates.values() for user in t.users)

    def _stop_using_template(self, search: PolicySession) -> None:
        template = search.template
        if template is not None and search in template.users:
            template.users.remove(search)
        search.template = None

    def close_search(self, search: PolicySession) -> None:
        """Free what ``search``'s paths hold (a :class:`PolicySession` closing calls this)."""
        self._loop.post(lambda: self._close_now(search))

    def _close_now(self, search: PolicySession) -> None:
        search.closed = True
        self._drop_paths_of(search)
        self._stop_using_template(search)

    def _drop_paths_of(self, search: PolicySession) -> None:
        """Free every slot and parked copy of ``search``'s paths."""
        for seq in [seq for seq in self._slot_owner.values() if seq.search is search]:
            self._free(seq)
        for seq in [seq for seq in self._parked.values() if seq.search is search]:
            self._unpark(seq)

    def _prefill(self, search: PolicySession, question: str, tokens: list[int], slot: int) -> _Seq:
        """Decode the prompt into template slot ``slot``."""
        self.context.seq_remove(slot)
        # Only the last prompt token's outputs are read (see _decode_quietly for why the rest
        # go separately when states are captured).
        head = tokens[:-1] if self.config.capture_states else []
        self._decode_quietly(head, 0, slot, search)
        self._decode_tokens(tokens[len(head) :], len(head), slot, search, output_last=True)
        self._count(search, tokens_prefilled=len(tokens))
        last_row = self._batch.n_tokens - 1
        seq = _Seq(
            prompt=_Prompt(question, tokens, slot),
            sampling=self._configured_sampling(),
            slot=slot,
            is_template=True,
            logits=self._logits(last_row),
        )
        if self.config.capture_states:
            seq.hidden = self._state(last_row)
        return seq

    def extend(
        self,
        paths: list[SolutionPath],
        n_each: int,
        to_end: bool = False,
        deadline: Deadline | None = None,
        first_index: int = 0,
        stop_early: Callable[[SolutionPath], bool] | None = None,
    ) -> list[SolutionPath]:
        """Fork each path into ``n_each`` children and decode them together (see module doc).

        Children are numbered from ``first_index`` in their lineage, which seeds their samplers:
        a second call on a new root with ``first_index=k`` samples with the streams of children
        ``k..`` of one call (adaptive sampling's later waves). Token for token the same only
        while the logits are: they round a little differently with the rows in the batch.
        """
        return self.search_extend(
            self._thread_session(), paths, n_each, to_end, deadline, first_index, stop_early
        )

    def search_extend(
        self,
        search: PolicySession,
        paths: list[SolutionPath],
        n_each: int,
        to_end: bool = False,
        deadline: Deadline | None = None,
        first_index: int = 0,
        stop_early: Callable[[SolutionPath], bool] | None = None,
    ) -> list[SolutionPath]:
        """:meth:`extend` for ``search``: its children join the decode loop's batch with every
        other search's and this returns when they have reached their step boundary.
        ``stop_early`` runs on the decode loop's thread, between two batches."""
        start = time.perf_counter()
        run = self._new_run(search, paths, n_each, to_end, deadline, first_index, stop_early)
        if not run.done:
            self._loop.run(run)
        self._count(search, seconds=time.perf_counter() - start)
        return run.children

    def submit(
        self,
        paths: list[SolutionPath],
        n_each: int,
        to_end: bool = False,
        deadline: Deadline | None = None,
    ) -> _Run:
        """Start :meth:`extend` without waiting (see StepGenerator.submit); :meth:`wait_any`
        collects it."""
        return self.search_submit(self._thread_session(), paths, n_each, to_end, deadline)

    def wait_any(self, tickets: list[_Run]) -> tuple[_Run, list[SolutionPath]]:
        """The first submitted extension among ``tickets`` whose children are all back."""
        return self.search_wait_any(self._thread_session(), tickets)

    def search_submit(
        self,
        search: PolicySession,
        paths: list[SolutionPath],
        n_each: int,
        to_end: bool = False,
        deadline: Deadline | None = None,
    ) -> _Run:
        """:meth:`submit` for ``search``: its children are one more run in the decode loop,
        advanced by every pass from now on, beside this search's other runs."""
        run = self._new_run(search, paths, n_each, to_end, deadline, 0)
        if not run.done:
            self._loop.submit(run)
        return run

    def search_wait_any(self, search: PolicySession, tickets: list[_Run]) -> tuple[_Run, list[SolutionPath]]:
        """:meth:`wait_any` for ``search``; the wait counts as its time in the policy (runs
        under way together count once)."""
        start = time.perf_counter()
        run = self._loop.wait_any(tickets)
        self._count(search, seconds=time.perf_counter() - start)
        return run, run.children

    def _new_run(
        self,
        search: PolicySession,
        paths: list[SolutionPath],
        n_each: int,
        to_end: bool,
        deadline: Deadline | None,
        first_index: int,
        stop_early: Callable[[SolutionPath], bool] | None = None,
    ) -> _Run:
        """The children of one extend as a run (already done when every parent is finished)."""
        if n_each < 1:
            raise PolicyError(f"n_each must be at least 1, got {n_each}")
        if first_index < 0:
            raise PolicyError(f"first_index must be >= 0, got {first_index}")
        run = _Run(search, deque(), deadline)
        for path in paths:
            if path.finished:
                run.children.append(path)
                continue
            parent: _Seq = path.handle
            if _ended(parent):
                raise PolicyError(ENDED_MESSAGE)
            for j in range(n_each):
                child = self._child(
                    search, path, parent, first_index + j, last=(j == n_each - 1), to_end=to_end
                )
                if to_end:
                    child.stop_early, child.steps_asked = stop_early, len(path.steps)
                run.children.append(child.path)
                run.queue.append(child)
        run.done = not run.queue
        return run

    def release(self, paths: list[SolutionPath]) -> None:
        """Drop the KV sequences of paths the strategy no longer needs (before the next pass of
        the decode loop; at once when no other thread is using the policy)."""
        paths = list(paths)
        self._loop.post(lambda: self._release_now(paths))

    def _release_now(self, paths: list[SolutionPath]) -> None:
        for path in paths:
            seq = path.handle
            if isinstance(seq, _Seq) and not seq.is_template:
                self._free(seq)
                self._unpark(seq)
                seq.logits = None

    # -- written solutions ---------------------------------------------------------------------

    def states_of(self, question: str, steps: list[str]) -> list[np.ndarray]:
        """The hidden state at each step's last token of a written solution (``capture_states``).

        The same states generation records, from a prefill of the prompt and the solution; for
        solutions the policy did not just generate (training data, kept samples). See
        :meth:`read_solution`, which also gives the tokens' confidence.
        """
        return self.read_solution(question, steps).step_states

    def read_solution(
        self, question: str, steps: list[str], confidence: bool = False, as_generated: bool = False
    ) -> SolutionPath:
        """Prefill a written solution: a path with the states a generation would have recorded.

        ``step_states`` holds the hidden state at each step's last token (``capture_states``);
        with ``confidence``, ``token_stats`` and ``step_token_ends`` too, each token judged by
        the logits before it, as :attr:`PolicyConfig.capture_confidence` records them. Each
        step is tokenized on its own with its step separator (added when missing, as
        ``split_steps`` drops it), as generation cuts tokens at step ends. Like :meth:`root` it
        starts from a clear cache (the prompt's prefill is reused): not for use in the middle
        of a search. It decodes with embeddings on, so llama.cpp keeps logits for up to n_batch
        tokens at once (0.6 MB each): fine for the tools it serves, not for a tight budget.

        ``as_generated``: the steps are the policy's own text (kept samples, joined as written):
        a step longer than ``max_step_tokens`` is cut there as generation cut it, so the path
        may hold more steps than ``steps``, each with the state its generation recorded.
        Without it the given steps stay the units (labelled solutions, scored step by step).
        """
        if not self.config.capture_states:
            raise PolicyError("read_solution needs a policy created with capture_states=True")
        root = self.root(question)
        tokens, ends, steps = self._solution_tokens(steps, close_last=False, cut_long=as_generated)
        first = len(root.handle.prompt.tokens)
        limit = self.config.resolved_n_ctx() - first
        if len(tokens) > limit:
            raise PolicyError(f"the solution has {len(tokens)} tokens; the context holds {limit}")

        def decode() -> tuple[dict[int, np.ndarray], list, np.ndarray]:  # on the loop
            if not len(self.slots):
                raise PolicyError("read_solution needs a free KV slot")
            slot = self.slots.next_free()
            self.context.seq_remove(slot)
            self.context.seq_copy(root.handle.prompt.slot, slot)
            try:
                return self._decode_solution(root, tokens, ends, slot, confidence)
            finally:
                self.context.seq_remove(slot)

        states, stats, _ = self._loop.call(decode)
        self._count(root.handle.search, tokens_decoded=len(tokens))  # as path_from counts them
        return SolutionPath(
            steps=list(steps),
            step_states=[states[e] for e in ends],
            finished=True,
            n_tokens=len(tokens),
            token_stats=stats,
            step_token_ends=[e + 1 for e in ends] if confidence else [],
        )

    def path_from(self, question: str, steps: list[str]) -> SolutionPath:
        """An unfinished path holding a written solution's ``steps``, ready to :meth:`extend`.

        The steps (each closed by the step separator) are decoded once into a slot of their own
        after the prompt's prefill; extending the path then forks that slot (``seq_cp``) like any
        other, so K continuations from a prefix cost the prefix once (Monte-Carlo step labels).
        Like :meth:`root` it starts from a clear cache when the prompt changes.
        """
        root = self.root(question)
        tokens, ends, steps = self._solution_tokens(steps, close_last=True, cut_long=False)
        prompt = root.handle.prompt
        if not tokens:
            raise PolicyError("path_from needs at least one step")
        if len(prompt.tokens) + len(tokens) + self.config.max_tokens > self.config.resolved_n_ctx():
            raise PolicyError(f"the solution has {len(tokens)} tokens; the context is too small")
        cfg = self.config
        seq = _Seq(prompt=prompt, sampling=root.handle.sampling, tokens=tokens, search=root.handle.search)

        def decode() -> tuple[dict[int, np.ndarray], list, np.ndarray]:  # on the loop
            if not len(self.slots):
                raise PolicyError("path_from needs a free KV slot")
            self._take_slot(seq)
            self.context.seq_copy(prompt.slot, seq.slot)
            # The prefix's steps get what generation would have recorded for them (states,
            # confidence), so its children's steps line up with their scores.
            return self._decode_solution(
                root, tokens, ends if cfg.capture_states else [], seq.slot, cfg.capture_confidence
            )

        states, stats, logits = self._loop.call(decode)
        self._count(seq.search, tokens_decoded=len(tokens))
        seq.n_cached, seq.logits, seq.hidden = len(tokens), logits, states.get(len(tokens) - 1)
        return SolutionPath(
            steps=list(steps),
            handle=seq,
            n_tokens=len(tokens),
            step_states=[states[e] for e in ends] if cfg.capture_states else [],
            token_stats=stats,
            step_token_ends=[e + 1 for e in ends] if cfg.capture_confidence else [],
        )

    def _decode_solution(
        self, root: SolutionPath, tokens: list[int], ends: list[int], slot: int, confidence: bool
    ) -> tuple[dict[int, np.ndarray], list, np.ndarray]:
        """Decode a solution's tokens after the prompt into ``slot``: the states at ``ends``, the
        tokens' confidence (each judged by the logits before it, the prompt's for the first) and
        the last token's logits."""
        first, last = len(root.handle.prompt.tokens), len(tokens) - 1
        wanted: set[int] = set(ends)
        states: dict[int, np.ndarray] = {}
        stats = [token_stats(root.handle.logits, tokens[0])] if confidence and tokens else []
        logits = root.handle.logits
        n_batch = self.context.n_batch  # as llama.cpp clamped it (see __init__)
        for start in range(0, len(tokens), n_batch):
            self._batch.clear()
            chunk = range(start, min(start + n_batch, len(tokens)))
            for i in chunk:
                self._batch.add(tokens[i], first + i, slot, confidence or i in wanted or i == last)
            self._decode(root.handle.search)
            rows = {i: row for row, i in enumerate(chunk)}
            states.update({i: self._state(rows[i]) for i in wanted if i in rows})
            if confidence:
                stats += [
                    token_stats(self.context.logits_view(rows[i]), tokens[i + 1]) for i in chunk if i < last
                ]
            if last in rows:
                logits = self._logits(rows[last])
        return states, stats, logits

    def _solution_tokens(
        self, steps: list[str], close_last: bool, cut_long: bool
    ) -> tuple[list[int], list[int], list[str]]:
        """Tokens of written steps, each tokenized on its own with its separator (as generation
        cuts them), the index of each step's last token, and the steps. ``cut_long``: a step of
        more than ``max_step_tokens`` tokens becomes pieces of that many, as generation cuts it
        (:class:`~edgetts.policy.steps.StepAccumulator`), each piece a step of its own."""
        tokens: list[int] = []
        ends: list[int] = []
        pieces: list[str] = []
        most = self.config.max_step_tokens if cut_long else None
        for i, step in enumerate(steps):
            if (close_last or i < len(steps) - 1) and not step.endswith(STEP_SEPARATOR):
                step += STEP_SEPARATOR
            step_tokens = self.tokenize(step, special=False)
            if most is None or len(step_tokens) <= most:
                tokens += step_tokens
                ends.append(max(len(tokens) - 1, 0))
                pieces.append(steps[i])
                continue
            cut = [step_tokens[at : at + most] for at in range(0, len(step_tokens), most)]
            carry = b""  # a character the piece before began: its text begins the next (as generated)
            for piece in cut:
                tokens += piece
                ends.append(len(tokens) - 1)
                data = carry + b"".join(map(self.piece, piece))
                end = whole_characters(data)
                pieces.append(data[:end].decode("utf-8", errors="replace"))
                carry = data[end:]
            if not steps[i].endswith(STEP_SEPARATOR):  # given without it, as split_steps gives steps
                pieces[-1] = pieces[-1].removesuffix(STEP_SEPARATOR)
        return tokens, ends, pieces

    def _configured_sampling(self) -> Sampling:
        cfg = self.config
        return Sampling(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, seed=cfg.seed)

    # -- generation ----------------------------------------------------------------------------

    def _child(
        self, search: PolicySession, path: SolutionPath, parent: _Seq, index: int, last: bool, to_end: bool
    ) -> _Child:
        seq = _Seq(
            prompt=parent.prompt,
            sampling=parent.sampling,
            search=search,
            tokens=list(parent.tokens),
            lineage=(*parent.lineage, index),
            carry=parent.carry,
            hidden=parent.hidden,
            tail=parent.tail,
        )
        child_path = SolutionPath(
            steps=list(path.steps),
            handle=seq,
            n_tokens=path.n_tokens,
            step_states=list(path.step_states),
            token_stats=list(path.token_stats),
            token_pieces=list(path.token_pieces),
            step_token_ends=list(path.step_token_ends),
        )
        steps = StepAccumulator(
            self.config.max_step_tokens,
            self._stop_strings,
            search_stops=tuple(s.encode() for s in parent.sampling.stop),
            carry=parent.carry,
            tail=parent.tail,
        )
        return _Child(
            path=child_path, seq=seq, parent=parent, steps=steps, last_of_parent=last, to_end=to_end
        )

    def _advance(self, runs: list[_Run]) -> bool:
        """One pass of the decode loop over every search's live ``extend``: stop those past
        their deadline, start the children that can have a slot (the earliest run first), then
        decode one batch for all active children. Says whether anything happened; marks runs
        done when all their children have reached their step boundary."""
        progressed = False
        for run in runs:
            if run.search.closed:
                # Its search unwound (another of its runs failed) and freed its paths without
                # waiting for this one: decoding it on would be for nobody.
                self._fail(run, "the search closed while this extension ran")
                progressed = True
            elif any(_ended(child.parent) for child in run.queue):
                # its paths' search ended after extend checked them (a root on another thread)
                self._fail(run, ENDED_MESSAGE)
                progressed = True
        runs = [run for run in runs if not run.done]
        for run in runs:
            if run.deadline is not None and run.deadline.expired():
                for child in [*run.active, *run.queue]:
                    self._stop_at_deadline(child)
                run.active, run.queue = [], deque()
                run.done = progressed = True
        for run in runs:
            while run.queue and self._can_start(run.queue[0], run, runs):
                child = run.queue.popleft()
                self._start(child)
                progressed = True
                if child.done:  # ended on its very first token
                    self._finish_child(child)
                else:
                    run.active.append(child)
        active = [child for run in runs for child in run.active]
        if active:
            self._step(active)
            progressed = True
            for run in runs:
                for child in [c for c in run.active if c.done]:
                    run.active.remove(child)
                    self._finish_child(child)
                    if child.seq.slot is not None:
                        run.waiting.append(child)
        for run in runs:
            if not run.queue and not run.active:
                run.done = True
        return progressed

    def _fail(self, run: _Run, message: str) -> None:
        """End ``run`` with a PolicyError, freeing the slots its started children hold."""
        for child in run.active:
            self._free(child.seq)
        run.active, run.queue, run.waiting = [], deque(), []
        run.error = PolicyError(message)
        run.done = True

    def _can_start(self, child: _Child, run: _Run, runs: list[_Run]) -> bool:
        """Whether ``child`` can start now, freeing a slot for it if that is the way forward.

        Slots run short when the searches want more paths than there are. In order: a free
        slot; one of this run's children done with its step gives up its slot (parked); wait
        while any child anywhere is decoding (it frees or parks a slot soon); with nothing
        decoding, another run's done child is parked, then the child takes its own parent's
        slot (its siblings rebuild from a copy), then any idle path's slot (a path of a search
        between rounds: parked, restored when extended). Some slot is always held by an idle
        path when nothing decodes, so the searches never wait on each other forever.
        """
        if self._inherits(child) or len(self.slots):
            return True
        if run.waiting:
            self._park(run.waiting.pop(0).seq)  # restored later, or rebuilt by decoding its tokens
            return True
        if any(r.active for r in runs):
            return False  # wait for an active child to finish or close its step
        for other in runs:
            if other.waiting:
                self._park(other.waiting.pop(0).seq)
                return True
        parent = child.parent
        if parent.slot is not None and not parent.is_template:
            child.take_parent_slot = True  # every slot holds a parent: siblings rebuild later
            return True
        idle = next(iter(self._slot_owner.values()), None)
        if idle is None:
            raise PolicyError("no KV sequence slot can be freed; raise n_seq_max")
        self._park(idle)
        return True

    @staticmethod
    def _inherits(child: _Child) -> bool:
        parent = child.parent
        wants = child.last_of_parent or child.take_parent_slot
        return wants and not parent.is_template and parent.slot is not None

    def _start(self, child: _Child) -> None:
        parent, seq = child.parent, child.seq
        search = seq.search
        if self._inherits(child):
            if not child.last_of_parent:  # its siblings start later from a copy of the parent
                self._save(parent)
            self._hand_slot(parent, seq)
        elif parent.slot is not None:
            self._take_slot(seq)
            self.context.seq_copy(parent.slot, seq.slot)
            seq.n_cached = parent.n_cached
        else:  # parent was parked: restore its copy, or rebuild from the template prompt
            self._take_slot(seq)
            if parent.parked is not None and self.context.seq_restore(parent.parked, seq.slot):
                seq.n_cached = parent.parked_n
                self._count(search, tokens_restored=parent.parked_n)
            else:
                seq.n_cached = 0
            self.context.seq_copy(seq.prompt.slot, seq.slot)
        self._count(search, sequences_forked=1)
        child.sampler = self._new_sampler(seq)
        if seq.n_cached == len(seq.tokens) and parent.logits is not None:
            token = child.sampler.sample_from(parent.logits)
            self._accept(child, token, self._stats(child, parent.logits, token))
        else:
            child.to_decode = seq.tokens[seq.n_cached :]  # counted as re-decoded when decoded
            seq.tokens = seq.tokens[: seq.n_cached]
        if child.last_of_parent and not parent.is_template:
            parent.logits = None  # no sibling needs it any more (the template's serve a next root)
            self._unpark(parent)

    def _step(self, active: list[_Child]) -> None:
        """Decode one batch: every active child's pending tokens, then sample each child.

        The children may belong to several searches: each counts the rows it put in the batch.
        A child rebuilding a parked path may have more tokens pending than the batch holds; it
        then decodes a slice now and samples in a later batch. With captured states, all but its
        last rebuilt token go first, quietly (see _decode_quietly).
        """
        if self.config.capture_states:
            for child in [c for c in active if len(c.to_decode) > 1]:
                seq, rebuilt = child.seq, child.to_decode[:-1]
                self._decode_quietly(rebuilt, len(seq.prompt.tokens) + seq.n_cached, seq.slot, seq.search)
                self._count(seq.search, tokens_decoded=len(rebuilt))
                child.to_decode = child.to_decode[-1:]
                seq.n_cached += len(rebuilt)
                if len(seq.tokens) < seq.n_cached:  # rebuilt tokens are back in the path
                    seq.tokens.extend(rebuilt)
                    self._count(seq.search, tokens_redecoded=len(rebuilt))
        batch = self._batch
        batch.clear()
        rows: list[tuple[_Child, int]] = []
        searches: dict[int, PolicySession | None] = {}
        for child in active:
            if batch.room <= 0:
                break
            seq = child.seq
            part, child.to_decode = child.to_decode[: batch.room], child.to_decode[batch.room :]
            complete = not child.to_decode
            for k, tok in enumerate(part):
                pos = len(seq.prompt.tokens) + seq.n_cached + k
                batch.add(tok, pos, seq.slot, complete and k == len(part) - 1)
            seq.n_cached += len(part)
            if len(seq.tokens) < seq.n_cached:  # rebuilt tokens are back in the path
                seq.tokens.extend(part)
                # counted as they are decoded: a deadline may stop a rebuild part-way
                self._count(seq.search, tokens_redecoded=len(part))
            if complete:
                rows.append((child, batch.n_tokens - 1))
            self._count(seq.search, tokens_decoded=len(part))
            searches[id(seq.search)] = seq.search
        self._decode(*searches.values())
        for child, row in rows:
            if self.config.capture_states:
                self._read_state(child, row)
            if child.closing:
                child.seq.logits = self._logits(row)
                child.done = True
                continue
            if self._stops_early(child):
                self._prune(child)
                continue
            token = child.sampler.sample(self.context, row)  # type: ignore[union-attr]
            self._accept(child, token, self._stats(child, self.context.logits_view(row), token))

    def _stats(self, child: _Child, logits: np.ndarray, token: int) -> tuple[float, float, float] | None:
        return token_stats(logits, token) if self._records_confidence(child.seq) else None

    def _records_confidence(self, seq: _Seq) -> bool:
        s = seq.sampling
        return self.config.capture_confidence or s.record_confidence or s.record_tokens

    def _accept(self, child: _Child, token: int, stats: tuple[float, float, float] | None = None) -> None:
        """Record a sampled token: end the path, end the step, or queue it for decoding."""
        path, seq = child.path, child.seq
        self._count(seq.search, tokens_sampled=1)
        if self.model.is_end(token):
            self._end_path(child, "eos")
            return
        piece = self.model.piece(token)
        if stats is not None:
            path.token_stats.append(stats)
            if seq.sampling.record_tokens:
                path.token_pieces.append(piece)
        seq.tokens.append(token)
        path.n_tokens += 1
        reason = child.steps.add(piece)  # a stop string appeared
        if reason is not None:
            if child.steps.trimmed:  # a search stop string that began in the finished steps
                self._trim_steps(path, child.steps.trimmed)
            self._end_path(child, reason)
            return
        if path.n_tokens >= (seq.sampling.max_tokens or self.config.max_tokens):
            self._end_path(child, "max_tokens")
            return
        child.to_decode = [token]
        step = child.steps.cut()
        if step is None:
            return
        self._push_step(child, step)
        if not child.to_end:
            child.closing = True  # decode this last token once more for its logits, then stop

    @staticmethod
    def _trim_steps(path: SolutionPath, n_bytes: int) -> None:
        trim_steps(path.steps, n_bytes)
        del path.step_states[len(path.steps) :]
        del path.step_token_ends[len(path.steps) :]

    def _push_step(self, child: _Child, text: str, last_token_decoded: bool = False) -> None:
        path = child.path
        if text.strip():
            path.steps.append(text)
            if self._records_confidence(child.seq):
                path.step_token_ends.append(len(path.token_stats))
        elif path.steps:
            path.steps[-1] += text  # blank lines belong to the step before
            if self._records_confidence(child.seq):
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
                parts.append(self.context.embedding(row))
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
        self._push_step(child, child.steps.rest(), last_token_decoded=True)
        child.path.finished = True
        child.path.stop_reason = reason
        child.done = True
        child.to_decode = []

    def _stops_early(self, child: _Child) -> bool:
        """Ask ``stop_early`` about the child's new steps, once each is complete (its last token
        decoded, so its state is in; extend's docstring)."""
        path = child.path
        if child.stop_early is None or child.state_pending is not None:
            return False
        if len(path.steps) <= child.steps_asked:
            return False
        child.steps_asked = len(path.steps)
        start = time.perf_counter()
        stop = child.stop_early(path)
        # The callback's time (pruning: a PRM call) is its own owner's to count (the scorer's),
        # so it leaves the policy's seconds: policy + PRM time still add up to the wall time.
        self._count(child.seq.search, seconds=-(time.perf_counter() - start))
        return stop

    @staticmethod
    def _prune(child: _Child) -> None:
        """End the child at its last complete step (stop_early said so); text it sampled past
        that step's end is dropped with the rest of the path's future."""
        child.path.finished = True
        child.path.stop_reason = "pruned"
        child.done = True
        child.to_decode = []

    def _finish_child(self, child: _Child) -> None:
        if child.sampler is not None:
            child.sampler.close()
            child.sampler = None
        seq = child.seq
        if child.path.finished:
            self._free(seq)  # a finished path is never extended: its KV is not needed
        else:
            seq.carry, seq.tail = child.steps.leftover(), child.steps.tail

    def _stop_at_deadline(self, child: _Child) -> None:
        """Leave the child as it is; a later extend decodes whatever its KV lacks."""
        child.path.stop_reason = "deadline"
        seq = child.seq
        if child.sampler is None:  # never started: it stands for its parent as it was
            if self._inherits(child):
                self._hand_slot(child.parent, seq)
            # (a root's child has no tokens to decode again: its first comes from these logits)
            seq.logits = child.parent.logits
            return
        # tokens waiting to be decoded stay the path's (a rebuild took them off its tokens)
        missing = seq.n_cached + len(child.to_decode) - len(seq.tokens)
        if missing > 0:
            seq.tokens.extend(child.to_decode[-missing:])
        child.to_decode = []
        if child.steps.pending:
            self._push_step(child, child.steps.rest())
        child.seq.carry, child.seq.tail = child.steps.leftover(), child.steps.tail
        child.seq.logits = None  # tokens past n_cached (sampled, not decoded) are decoded later
        child.sampler.close()
        child.sampler = None

    # -- llama.cpp helpers ---------------------------------------------------------------------

    def _decode_tokens(
        self, tokens: list[int], first_pos: int, slot: int, search: PolicySession | None, output_last: bool
    ) -> None:
        """Decode ``tokens`` into ``slot`` for ``search`` in batches of n_batch, outputs for the
        last one only."""
        n_batch = self.context.n_batch  # as llama.cpp clamped it (see __init__)
        for start in range(0, len(tokens), n_batch):
            chunk = tokens[start : start + n_batch]
            self._batch.clear()
            for i, tok in enumerate(chunk):
                self._batch.add(
                    tok, first_pos + start + i, slot, output_last and start + i == len(tokens) - 1
                )
            self._decode(search)

    def _decode_quietly(
        self, tokens: list[int], first_pos: int, slot: int, search: PolicySession | None
    ) -> None:
        """Decode tokens whose outputs nobody reads (a prompt's head, a parked path's rebuild).

        While embeddings are on (``capture_states``) llama.cpp outputs *every* token of a batch,
        logits included: 0.6 MB a token at a 152k vocabulary, about 110 MB more peak memory for a
        90-token prompt and 300 MB for a full batch (measured). So they go with embeddings off.
        """
        if not tokens:
            return
        if self.config.capture_states:
            self.context.set_embeddings(False)
        if self._tap is not None:
            self._tap.on = False
        try:
            self._decode_tokens(tokens, first_pos, slot, search, output_last=False)
        finally:
            if self.config.capture_states:
                self.context.set_embeddings(True)
            if self._tap is not None:
                self._tap.on = True

    def _decode(self, *searches: PolicySession | None) -> None:
        """Decode the batch; each of ``searches`` (those with rows in it) counts the call."""
        self.counters.decode_calls += 1
        for search in searches:
            if search is not None:
                search.counters.decode_calls += 1
        try:
            self.context.decode(self._batch)
        except LlamaError as exc:
            raise PolicyError(str(exc)) from None

    def _logits(self, row: int) -> np.ndarray:
        return self.context.logits_view(row).copy()

    def _new_sampler(self, seq: _Seq) -> Sampler:
        s = seq.sampling
        # Each path gets its own stream, fixed by the run seed and its place in the tree, so a
        # run is reproducible whatever order the batch happens to decode in.
        seed = zlib.crc32(repr((s.seed, seq.lineage)).encode())
        return Sampler(s.temperature, s.top_p, s.top_k, seed)

    def _park(self, seq: _Seq) -> None:
        """Give up ``seq``'s slot for another path, keeping its KV in host memory if it fits."""
        self._save(seq)
        self._free(seq)

    def _save(self, seq: _Seq) -> None:
        """Copy the KV cells ``seq`` holds past the prompt to host memory, within the park budget.

        The template keeps the prompt's cells for every path, so they are left out: the slot's
        tags on them are dropped for the copy and put back after (tags only, no data moves).
        """
        if seq.slot is None or seq.is_template or seq.parked is not None or seq.n_cached == 0:
            return
        if self.parking.limit == 0:
            return
        self.context.seq_remove(seq.slot, 0, len(seq.prompt.tokens))
        try:
            size = self.context.seq_state_size(seq.slot)
            if self.parking.hold(size):
                seq.parked = self.context.seq_save(seq.slot)
                seq.parked_n = seq.n_cached
                self._parked[id(seq)] = seq
                self._count(seq.search, bytes_parked=size)
        finally:
            self.context.seq_copy(seq.prompt.slot, seq.slot)

    def _unpark(self, seq: _Seq) -> None:
        """Drop ``seq``'s copy in host memory: no child will restore it any more."""
        if seq.parked is not None:
            self.parking.drop(seq.parked.nbytes)
            seq.parked = None
            seq.parked_n = 0
            self._parked.pop(id(seq), None)

    def _free(self, seq: _Seq) -> None:
        if seq.slot is None or seq.is_template:
            return
        self.context.seq_remove(seq.slot)
        self.slots.give(seq.slot)
        self._slot_owner.pop(seq.slot, None)
        seq.slot = None
        seq.n_cached = 0

    def _take_slot(self, seq: _Seq) -> None:
        seq.slot = self.slots.take()
        self._slot_owner[seq.slot] = seq

    def _hand_slot(self, parent: _Seq, child: _Seq) -> None:
        """``child`` takes over ``parent``'s slot and what it holds."""
        child.slot, child.n_cached, parent.slot = parent.slot, parent.n_cached, None
        self._slot_owner[child.slot] = child

    def _count(self, search: PolicySession | None, **amounts: float) -> None:
        """Add ``amounts`` to the policy's counters and to ``search``'s (their share of them)."""
        with self._counting:
            for name, amount in amounts.items():
                setattr(self.counters, name, getattr(self.counters, name) + amount)
                if search is not None:
                    setattr(search.counters, name, getattr(search.counters, name) + amount)
