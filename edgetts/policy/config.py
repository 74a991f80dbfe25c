"""The policy's settings, its counters, and the threads llama.cpp may use."""

from __future__ import annotations

import os
from dataclasses import dataclass

from edgetts.llama.errors import LlamaError
from edgetts.search.base import Sampling


def default_threads() -> int:
    """Threads for llama.cpp: ``$EDGETTS_THREADS`` if set, else the cores we may run on.

    More threads than free cores is much slower than fewer (llama.cpp's threads wait on each
    other at every layer), so on a busy machine set EDGETTS_THREADS below the core count.
    """
    n_threads = env_threads()
    return check_threads(n_threads) if n_threads is not None else available_cores()


def env_threads() -> int | None:
    """``$EDGETTS_THREADS`` as a number of threads (None when unset or blank), not checked
    against this machine's cores (Ray actors may run on bigger nodes)."""
    env = os.environ.get("EDGETTS_THREADS", "").strip()
    if not env:
        return None
    if not env.isdigit() or int(env) < 1:
        raise PolicyError(f"EDGETTS_THREADS must be a positive whole number, got {env!r}")
    return int(env)


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_threads(n_threads: int | None) -> int | None:
    """``n_threads`` if it is 1..the cores here; more threads than cores only slow llama.cpp."""
    if n_threads is not None and not 1 <= n_threads <= available_cores():
        raise PolicyError(
            f"threads must be 1..{available_cores()} (the cores this process may use), got {n_threads}"
        )
    return n_threads


class PolicyError(LlamaError):
    """The policy cannot run this request; the message says why and what to change."""


class SearchNotStarted(PolicyError):
    """A search waited for others until its deadline or cancel: for a prompt slot (more
    concurrent searches than PolicyConfig.max_searches), or for a Solver to load the policy
    again for it (which waits until no search runs)."""


class PromptTooLong(PolicyError):
    """The prompt has more tokens than the policy's context allows (PolicyConfig.max_prompt_tokens)."""


KV_TYPES = ("f16", "q8_0")  # KV cache element types (edgetts.llama.context maps them to ggml's)


@dataclass(frozen=True)
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
    kv_type: str = "f16"  # one of KV_TYPES
    # Sampling for a root() given none (tools, tests); searches pass their own Sampling.
    temperature: float = Sampling.temperature
    top_p: float = Sampling.top_p
    top_k: int = Sampling.top_k  # 0 = off
    seed: int = Sampling.seed
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
    # Host memory (MB of 2**20 bytes) for parked paths: when paths outnumber the KV slots, a
    # path waiting for its next round gives up its slot but keeps its own KV cells here, and is
    # restored (a copy) instead of decoded again. Beyond it, and with 0, parked paths are
    # rebuilt by decoding their tokens again. The scheduler counts it in the plan's memory.
    park_mb: float = 512.0
    # Searches that may share the context at once (threads of an app, a server's concurrent
    # requests): each keeps its prompt's prefill in a sequence of its own, and their paths share
    # the n_seq_max slots and one decode batch (edgetts.policy.loop). 1: one prompt at a time.
    max_searches: int = 1

    def resolved_n_ctx(self) -> int:
        """KV cells: the set ``n_ctx``, else room for every search's prompt and n_seq_max solutions."""
        return self.n_ctx or self.max_searches * self.max_prompt_tokens + self.n_seq_max * self.max_tokens


@dataclass
class GeneratorCounters:
    """What a policy (or one search on it, :class:`~edgetts.policy.session.PolicySession`) spent.

    The token counts of concurrent searches add up to the policy's. ``decode_calls`` counts the
    batches a search took part in (a batch shared by two searches counts for each, once in the
    policy's), and ``seconds`` is each search's own wall time in the policy (summed in the
    policy's, so concurrent searches count the same second more than once), less the time its
    ``stop_early`` callbacks took (a PRM call when pruning: the scorer counts it).
    """

    tokens_prefilled: int = 0  # prompt tokens decoded
    # tokens decoded after the prompt: each token of the search tree once, plus tokens_redecoded
    tokens_decoded: int = 0
    tokens_redecoded: int = 0  # decoded again to rebuild parked paths (waves), part of the above
    tokens_restored: int = 0  # parked paths' tokens restored from host memory instead (park_mb)
    bytes_parked: int = 0  # KV bytes copied to host memory when parking (restores read them back)
    tokens_sampled: int = 0
    sequences_forked: int = 0
    decode_calls: int = 0
    seconds: float = 0.0
