"""Budget scheduler: from a memory budget and a deadline to a concrete plan.

Memory (:func:`estimate_memory`) comes from the model files' own metadata, in MB of 2**20 bytes,
as peak resident memory of the whole process:

* runtime: Python, numpy and the llama.cpp libraries (measured: 87 MB; 90 counted);
* policy weights: the GGUF tensors, memory-mapped and all touched while decoding (on a GPU only
  the layers not offloaded stay in host memory);
* KV cache: ``n_ctx`` cells (padded to 256 as llama.cpp does) x layers x KV heads x (K + V head
  size) x bytes per element (f16 2, q8_0 34/32). llama-cpp-python's default ``swa_full`` keeps
  sliding-window layers at full size too, so they are counted in full;
* compute buffers: fixed 32 MB plus 15 % of the weights, and 16 bytes x vocabulary per sequence
  (logit rows and their copies). These two constants were fitted to measured peaks of
  Qwen2.5-0.5B and Gemma-3-270M (each within 2 %);
* parked paths (:func:`park_mb`), only when a tree search's paths outnumber the KV slots: the
  policy keeps a
waiting path's own KV cells in host memory instead of decoding them again later. The plan
  sizes this park budget for the paths beyond the slots at the expected solution length
  (``EXPECTED_TOKEN_SHARE`` of ``max_tokens``), capped by :attr:`PolicyConfig.park_mb`, and the
  policy it configures holds no more than that: past it, parked paths are decoded again;
* PRM (:func:`prm_cost`), by its kind. A text PRM: onnxruntime and the tokenizer (52 MB
  measured), the graph's initializers, and the activations of one batch of input windows: about
  100 MB per full 512-token window of the shipped MiniLM (measured 100 / 98 / 97 MB per window at
  batch 1 / 4 / 8). The plan runs it one window at a time (``prm_batch_size`` 1): batching gave
  no speed on CPU (2.5 s at batch 1, 3.2 s at 16 for the same 128 steps) but cost up to 1.5 GB.
  Concurrent searches sharing it score in turn (``PRMScorer.session_lock``), so one batch's
  activations are all it holds however many searches run.
  A policy probe (:mod:`edgetts.probe`) reads the policy's own states: onnxruntime alone (38 MB
  measured) and its few weights.

Time (:func:`predict_seconds`) comes from a calibration (see :mod:`edgetts.calibration`) or its
conservative fallback. A solution is assumed to use 60 % of ``max_tokens`` in steps of about 45
tokens; beam search and DVTS rescore every live path's whole prefix each round.

The plan (:func:`make_plan`) is the largest N whose memory fits and whose predicted time fits the
deadline; for that N it prefers enough KV slots for every path at once (no waves), then an f16
cache over q8_0. Without a deadline the budget only bounds N, which stays at DEFAULT_N unless
given. The deadline counts from the start of the search: loading the models is excluded (a
Solver loads them once).
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from edgetts import calibration as calib
from edgetts.llama.context import MAX_SEQUENCES
from edgetts.metadata import ModelMetadata
from edgetts.policy.config import KV_TYPES, PolicyConfig
from edgetts.prm import PRM_BATCH_SIZE
from edgetts.search.auto import PROBE_N
from edgetts.search.base import DEFAULT_N, SearchConfig
from edgetts.search.registry import DEFAULT_STRATEGY, REGISTRY, names

log = logging.getLogger("edgetts.scheduler")

MB = 1 << 20
RUNTIME_MB = 90.0
COMPUTE_FIXED_MB = 32.0
COMPUTE_WEIGHT_SHARE = 0.15
SEQ_BYTES_PER_VOCAB = 16
PRM_RUNTIME_MB = 52.0  # onnxruntime and a text PRM's tokenizer
PRM_WINDOW_MB = 100.0  # activations of one 512-token window of the shipped MiniLM
PROBE_RUNTIME_MB = 38.0  # onnxruntime alone (measured with the shipped probe loaded and scoring)
PROBE_FALLBACK_STEPS_S = 5000.0  # one small matrix product per call (measured: ~50k steps/s)
KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32}
KV_PAD = 256

EXPECTED_TOKEN_SHARE = 0.6
TOKENS_PER_STEP = 45
PROMPT_TEMPLATE_TOKENS = 40  # chat template around the question
N_CHOICES = (1, 2, 4, 8, 16, 32)
# What the memory model needs of each strategy, from the one table (edgetts/search/registry.py).
SAMPLE_STRATEGIES = names("sample")
TREE_STRATEGIES = names("tree")
SCORED = tuple(name for name, info in REGISTRY.items() if info.reads_scorer)
# Paths wait between rounds only in a tree search (auto may end in one): samples run to their end,
# so they free their slot and are never parked.
PARKING = (*TREE_STRATEGIES, "auto")


class PlanError(ValueError):
    """No configuration fits the budget; the message says what would, ``field`` which setting
    is short (``deadline_s``, ``memory_mb``, ``strategy``) when one is."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class MemoryEstimate:
    """Predicted peak resident memory, by part, in MB (2**20 bytes)."""

    runtime_mb: float
    weights_mb: float
    kv_mb: float
    compute_mb: float
    prm_mb: float = 0.0
    park_mb: float = 0.0  # parked paths' KV in host memory (paths beyond the KV slots)
    gpu_mb: float = 0.0  # on the GPU, not counted in total_mb

    @property
    def total_mb(self) -> float:
        return self.runtime_mb + self.weights_mb + self.kv_mb + self.compute_mb + self.prm_mb + self.park_mb

    def describe(self) -> str:
        parts = [
            f"runtime {self.runtime_mb:.0f}",
            f"weights {self.weights_mb:.0f}",
            f"KV {self.kv_mb:.0f}",
            f"compute {self.compute_mb:.0f}",
        ]
        if self.park_mb:
            parts.append(f"parked {self.park_mb:.0f}")
        if self.prm_mb:
            parts.append(f"PRM {self.prm_mb:.0f}")
        text = " + ".join(parts) + f" = {self.total_mb:.0f} MB"
        return text + (f" (+ {self.gpu_mb:.0f} MB on the GPU)" if self.gpu_mb else "")


@dataclass(frozen=True)
class Budget:
    """What the user allows; None = unbounded. ``n`` fixes N instead of letting the plan pick."""

    memory_mb: float | None = None
    deadline_s: float | None = None
    strategy: str = DEFAULT_STRATEGY
    n: int | None = None
    beam_width: int = SearchConfig.beam_width
    max_tokens: int = PolicyConfig.max_tokens
    # A request's own lower limit (SolveOptions.max_tokens), if any: what a solution is predicted
    # to use, for time and parking. The KV cache is still sized for max_tokens, the policy's
    # limit, so that the context loaded for this request serves the next one.
    answer_max_tokens: int | None = None
    max_prompt_tokens: int = PolicyConfig.max_prompt_tokens
    max_steps: int = SearchConfig.max_steps
    prompt_tokens: int = 160
    n_threads: int | None = None  # None = choose
    kv_type: str | None = None  # None = choose
    n_gpu_layers: int | None = None  # None = choose (all when llama.cpp has a GPU)
    # Searches sharing the loaded policy at once (PolicyConfig.max_searches): each keeps its
    # prompt's prefill in KV cells and a sequence of its own, so the plan counts every one.
    searches: int = PolicyConfig.max_searches
    # Host memory parking may hold at most (the user's PolicyConfig.park_mb): 0 re-decodes.
    park_limit_mb: float = PolicyConfig.park_mb
    # The KV slots of a model loaded for good (a server's, Solver.fixed_policy): the plan runs
    # on exactly these (fewer when N is smaller), so its time is predicted for them.
    slots: int | None = None

    @property
    def searches_with_own_slots(self) -> int:
        """How many searches at once each get the plan's slots (run --concurrent K: K); a
        loaded model's slots are one pool, shared as they are (1)."""
        return 1 if self.slots else self.searches


@dataclass
class Plan:
    """A concrete configuration and why it was chosen."""

    strategy: str
    n: int
    beam_width: int
    n_seq_max: int
    n_ctx: int
    kv_type: str
    n_threads: int
    n_gpu_layers: int
    max_tokens: int
    park_mb: float  # host memory for parked paths (PolicyConfig.park_mb); 0 when slots suffice
    use_prm: bool
    prm_batch_size: int
    predicted_memory_mb: float
    predicted_s: float
    memory: MemoryEstimate
    calibration_source: str
    notes: list[str] = field(default_factory=list)

    def explain(self) -> str:
        """A few human lines: the choice, the memory split, the time estimate and any caveats."""
        lines = [
            f"plan: {self.strategy} N={self.n}"
            + (f" beam width {self.beam_width}" if self.strategy in TREE_STRATEGIES else "")
            + f", {self.n_seq_max} KV slots, n_ctx {self.n_ctx}, KV {self.kv_type}, "
            f"{self.n_threads} threads, {'all' if self.n_gpu_layers < 0 else self.n_gpu_layers} GPU layers, "
            f"max {self.max_tokens} tokens"
            + (f", {self.park_mb:.0f} MB to park paths" if self.park_mb else "")
            + (f", PRM batch {self.prm_batch_size}" if self.use_prm else ""),
            f"memory: {self.memory.describe()}",
            f"time: ~{self.predicted_s:.1f} s predicted ({self.calibration_source} speeds)",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


# -- memory ------------------------------------------------------------------------------------


def kv_mb(meta: ModelMetadata, n_ctx: int, kv_type: str) -> float:
    """KV cache size: every layer at full ``n_ctx`` (swa_full, see module doc)."""
    cells = math.ceil(n_ctx / KV_PAD) * KV_PAD
    return meta.kv_bytes_per_token(KV_BYTES_PER_ELEMENT[kv_type]) * cells / MB


def park_mb(
    meta: ModelMetadata,
    n: int,
    n_seq_max: int,
    max_tokens: int,
    kv_type: str,
    limit_mb: float = PolicyConfig.park_mb,
) -> float:
    """Host memory for parked paths: the paths beyond the KV slots, each with its own KV cells at
    the expected solution length (the prompt's stay in the template), at most ``limit_mb``."""
    if n <= n_seq_max:
        return 0.0
    tokens = EXPECTED_TOKEN_SHARE * max_tokens
    per_token = meta.kv_bytes_per_token(KV_BYTES_PER_ELEMENT[kv_type])  # swa_full: every layer
    return min(limit_mb, (n - n_seq_max) * tokens * per_token / MB)


@dataclass(frozen=True)
class PrmCost:
    """What a PRM adds to a solve: peak memory, and its speed when no calibration measured it."""

    name: str  # the PRM directory's name, as calibrations record it
    memory_mb: float
    fallback_steps_s: float


def prm_cost(prm_dir: str | Path | None) -> PrmCost | None:
    """Memory and fallback speed of the PRM in ``prm_dir`` by its kind; None if it is absent."""
    from edgetts.prm import default_text_prm

    directory = Path(prm_dir or default_text_prm())
    model = directory / "model.onnx"
    if not model.is_file():
        return None
    stat = model.stat()
    weights_mb = _prm_bytes(str(model), stat.st_size, stat.st_mtime) / MB
    if _is_probe(directory):
        return PrmCost(directory.name, PROBE_RUNTIME_MB + weights_mb, PROBE_FALLBACK_STEPS_S)
    return PrmCost(
        directory.name,
        PRM_RUNTIME_MB + weights_mb + PRM_WINDOW_MB * PRM_BATCH_SIZE,
        calib.FALLBACK_PRM_STEPS_S,
    )


def _is_probe(directory: Path) -> bool:
    from edgetts.prm import read_manifest
    from edgetts.probe import KIND

    try:
        return read_manifest(directory).get("kind") == KIND
    except Exception:  # an unreadable manifest fails where the PRM loads, with its own message
        return False


@lru_cache(maxsize=4)
def _prm_bytes(path: str, size: int, mtime: float) -> int:
    """Cached per file version: parsing the graph takes a noticeable share of a short deadline."""
    model = Path(path)
    try:
        import numpy as np
        import onnx
        from onnx import helper

        graph = onnx.load(str(model), load_external_data=False).graph
        return int(
            sum(
                np.prod(t.dims) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                for t in graph.initializer
            )
        )
    except Exception:  # no onnx, or a graph it cannot read: the file size is close enough
        return model.stat().st_size


def estimate_memory(
    meta: ModelMetadata,
    n_ctx: int,
    n_seq_max: int,
    kv_type: str = "f16",
    n_gpu_layers: int = 0,
    prm_mb: float | None = None,
    park_mb: float = 0.0,
    searches: int = 1,
) -> MemoryEstimate:
    """Peak resident memory of a solve with these settings (see the module doc for each part).

    ``searches``: prompts held at once (PolicyConfig.max_searches), a sequence each beside the
    ``n_seq_max`` solution slots; their KV cells are in ``n_ctx``.

    ``park_mb`` is the policy's budget for parked paths (:func:`park_mb`, PolicyConfig.park_mb):
    counted in full, as a search whose paths outnumber the slots may fill it."""
    # llama.cpp reads any negative count as "every layer" (the output layer included).
    offloaded = meta.n_layers + 1 if n_gpu_layers < 0 else min(n_gpu_layers, meta.n_layers + 1)
    on_gpu = offloaded / (meta.n_layers + 1)
    weights = meta.weights_bytes / MB
    kv = kv_mb(meta, n_ctx, kv_type)
    compute = COMPUTE_FIXED_MB + COMPUTE_WEIGHT_SHARE * weights * (1 - on_gpu)
    compute += SEQ_BYTES_PER_VOCAB * meta.n_vocab * (n_seq_max + searches) / MB
    return MemoryEstimate(
        runtime_mb=RUNTIME_MB,
        weights_mb=weights * (1 - on_gpu),
        kv_mb=kv * (1 - on_gpu),
        compute_mb=compute,
        prm_mb=prm_mb or 0.0,
        park_mb=park_mb,
        gpu_mb=(weights + kv) * on_gpu,
    )


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB, the measured side of ``estimate_memory``.

    Linux's VmHWM belongs to the address space, so it starts afresh at exec. ``ru_maxrss`` does
    not: a server that a 3 GB test runner (or any big parent) spawned reports the parent's size,
    which is why it is only the fallback (macOS). None where neither exists (Windows).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    unit_bytes = 1 if sys.platform == "darwin" else 1 << 10  # ru_maxrss: bytes on macOS, KiB elsewhere
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit_bytes / MB, 1)


def estimate_for_policy(
    config: PolicyConfig, meta: ModelMetadata, prm_mb: float | None, parked_mb: float
) -> MemoryEstimate:
    """The estimate for a loaded policy configured as ``config``: its context (every search's
    prompt and the solution slots), the PRM's ``prm_mb`` if one is loaded, and ``parked_mb`` of
    parked paths (what parking held at its peak, at most ``config.park_mb``)."""
    import llama_cpp

    from edgetts.gpu import default_gpu_layers

    # A CPU build of llama.cpp keeps every layer in host memory, whatever offload was asked for;
    # on a GPU build no setting means what the policy loaded with (default_gpu_layers).
    asked = default_gpu_layers() if config.n_gpu_layers is None else config.n_gpu_layers
    gpu_layers = asked if llama_cpp.llama_supports_gpu_offload() else 0
    return estimate_memory(
        meta,
        config.resolved_n_ctx(),
        config.n_seq_max,
        config.kv_type,
        gpu_layers,
        prm_mb,
        parked_mb,
        config.max_searches,
    )


# -- time --------------------------------------------------------------------------------------


def predict_seconds(
    cal: calib.Calibration,
    strategy: str,
    n: int,
    n_seq_max: int,
    max_tokens: int,
    prompt_tokens: int,
    max_steps: int = 40,
    use_prm: bool = True,
    parks: bool = False,
    searches: int = 1,
) -> float:
    """Predicted search time (model load excluded) of one question; ``parks``: paths beyond the
    KV slots are parked in host memory (restored, not decoded again). ``searches``: as many run
    at once, each with ``n_seq_max`` slots: they share the machine, so one takes as long as all
    their work done together, their paths decoding in one batch."""
    tokens = EXPECTED_TOKEN_SHARE * max_tokens
    steps = max(1.0, min(max_steps, tokens / TOKENS_PER_STEP))
    prefill_s = searches * prompt_tokens / cal.prefill_tok_s
    prm_rate = (cal.prm_steps_s or calib.FALLBACK_PRM_STEPS_S) / searches

    def decode_s(k: int) -> float:
        return searches * k * tokens / cal.decode_at(searches * min(k, n_seq_max))

    def sample_s(k: int, scored: bool) -> float:
        return prefill_s + decode_s(k) + (k * steps / prm_rate if scored else 0.0)

    def tree_s(k: int) -> float:
        decode = decode_s(k)
        if n_seq_max < k and not parks:
            decode *= 1.5  # parked beams are rebuilt by decoding their tokens again
        return prefill_s + decode + k * steps * (steps + 1) / 2 / prm_rate

    if strategy in TREE_STRATEGIES:
        return tree_s(n)
    if strategy == "auto":
        if n <= PROBE_N:  # auto then only picks among its probes (search/auto.py)
            return sample_s(n, use_prm)
        probe = PROBE_N
        rest = max(sample_s(n - probe, use_prm) if n > probe else 0.0, tree_s(n) if use_prm else 0.0)
        return sample_s(probe, use_prm) + rest
    return sample_s(n, use_prm and strategy not in ("majority", "confidence_vote"))


# -- plan --------------------------------------------------------------------------------------


def _n_choices(budget: Budget) -> list[int]:
    if budget.strategy == "greedy":
        return [1]
    if budget.n is not None:
        return [budget.n]
    cap = max(N_CHOICES) if budget.deadline_s is not None else DEFAULT_N
    choices = [n for n in N_CHOICES if n <= cap]
    if budget.strategy in TREE_STRATEGIES:
        # multiples of the beam width; past the cap (a wide beam) or off the list (width 3),
        # the smallest tree that width makes
        width = budget.beam_width
        trees = [n for n in N_CHOICES if n >= width and n % width == 0]
        choices = [n for n in trees if n <= cap] or trees[:1] or [width]
    return sorted(choices, reverse=True)


def _slot_choices(n: int, searches: int = 1) -> list[int]:
    """KV slots of a search of N paths: all at once first, then halving (paths run in waves);
    each of ``searches`` at once gets as many, within llama.cpp's sequences (a template each)."""
    slots, s = [], min(n, (MAX_SEQUENCES - searches) // searches)
    while s >= 1:
        slots.append(s)
        s //= 2
    return slots


def make_plan(
    meta: ModelMetadata,
    budget: Budget,
    cal: calib.Calibration | None = None,
    cal_note: str | None = None,
    prm: PrmCost | None = None,
    gpu_offload: bool = False,
    default_threads: int = 1,
) -> Plan:
    """The largest-compute configuration that fits ``budget`` (see the module doc)."""
    threads = budget.n_threads or default_threads
    notes = []
    measured = cal is not None
    if cal is None:
        cal = calib.estimate(meta, threads)
        if prm is not None:
            cal.prm_steps_s = prm.fallback_steps_s
        notes.append(
            f"{cal_note or 'no calibration'}; until then: conservative speed estimates from the model size"
        )
    elif prm is not None and cal.prm is not None and cal.prm != prm.name:
        cal = replace(cal, prm_steps_s=prm.fallback_steps_s)
        notes.append(
            f"the calibration measured PRM {cal.prm!r}, not {prm.name!r}: its speed is "
            "estimated (run `edgetts calibrate --prm ...`)"
        )
    gpu_layers = asked_gpu_layers(budget, meta, gpu_offload)
    if gpu_layers and not gpu_offload:
        # A CPU build of llama.cpp ignores the offload and keeps every layer in host memory, so
        # counting them as GPU memory would let a plan overrun the host budget.
        notes.append(
            f"{'all' if gpu_layers < 0 else gpu_layers} GPU layers asked for, but this llama.cpp "
            'is a CPU build: they stay in host memory (README, "GPU")'
        )
        gpu_layers = 0
    use_prm = budget.strategy in SCORED and prm is not None
    if budget.strategy in SCORED and budget.strategy != "auto" and not use_prm:
        raise PlanError(f"strategy {budget.strategy!r} needs a PRM and none was found", field="strategy")
    kv_types = [budget.kv_type] if budget.kv_type else list(KV_TYPES)
    prefill_s = budget.prompt_tokens / cal.prefill_tok_s
    if budget.deadline_s is not None and budget.deadline_s < prefill_s and not measured:
        # the estimate is deliberately slow (seen: 5.4 s predicted for a prefill measured at
        # 1.5 s): a refusal on its word turned away deadlines the machine meets
        notes.append(
            f"the deadline may be shorter than one prefill of the prompt (~{prefill_s:.1f} s by "
            "the conservative estimate): run `edgetts calibrate` for a measured figure"
        )
    elif budget.deadline_s is not None and budget.deadline_s < prefill_s:
        raise PlanError(
            f"a deadline of {budget.deadline_s:g} s is shorter than one prefill of the prompt "
            f"(~{budget.prompt_tokens} tokens, ~{prefill_s:.1f} s here); needs at least "
            f"{math.ceil(prefill_s * 10) / 10:g} s",
            field="deadline_s",
        )

    if budget.deadline_s is not None and budget.deadline_s < 3 * prefill_s:
        notes.append(
            f"the deadline is under 3x the predicted prefill ({prefill_s:.1f} s), which no "
            "deadline can interrupt: on a busy machine it alone may overrun"
        )

    def build(n: int, slots: int, kv_type: str, with_prm: bool) -> Plan:
        # ``slots``: one search's. With K searches at once (run --concurrent K) each gets as
        # many, so the policy holds K times as many (seen: K searches given one search's slots
        # ran in waves).
        searches = budget.searches_with_own_slots
        all_slots = slots * searches
        n_ctx = budget.searches * budget.max_prompt_tokens + all_slots * budget.max_tokens
        parks = budget.strategy in PARKING
        answer_tokens = min(budget.answer_max_tokens or budget.max_tokens, budget.max_tokens)
        parked = 0.0
        if parks:
            limit_mb = budget.park_limit_mb  # one budget for every search's parked paths
            parked = min(limit_mb, searches * park_mb(meta, n, slots, answer_tokens, kv_type, limit_mb))
        prm_mb = prm.memory_mb if with_prm else None
        mem = estimate_memory(meta, n_ctx, all_slots, kv_type, gpu_layers, prm_mb, parked, budget.searches)
        seconds = predict_seconds(
            cal,
            budget.strategy,
            n,
            slots,
            answer_tokens,
            budget.prompt_tokens,
            budget.max_steps,
            with_prm,
            parked > 0,
            searches,
        )
        return Plan(
            strategy=budget.strategy,
            n=n,
            beam_width=min(budget.beam_width, n),
            n_seq_max=all_slots,
            n_ctx=n_ctx,
            kv_type=kv_type,
            n_threads=threads,
            n_gpu_layers=gpu_layers,
            max_tokens=answer_tokens,
            park_mb=round(parked, 1),
            use_prm=with_prm,
            prm_batch_size=PRM_BATCH_SIZE,
            predicted_memory_mb=round(mem.total_mb, 1),
            predicted_s=round(seconds, 2),
            memory=mem,
            calibration_source=cal.source,
            notes=list(notes),
        )

    prm_options = [True, False] if use_prm and budget.strategy == "auto" else [use_prm]
    for with_prm in prm_options:
        fitting: list[Plan] = []
        for n in _n_choices(budget):
            for slots in [min(n, budget.slots)] if budget.slots else _slot_choices(n, budget.searches):
                for kv_type in kv_types:
                    plan = build(n, slots, kv_type, with_prm)
                    if budget.memory_mb is None or plan.predicted_memory_mb <= budget.memory_mb:
                        fitting.append(plan)
        in_time = [p for p in fitting if budget.deadline_s is None or p.predicted_s <= budget.deadline_s]
        if in_time:
            return _annotate(in_time[0], budget, with_prm, use_prm)
        if fitting:  # fits in memory, but even the cheapest is predicted to run past the deadline
            plan = min(fitting, key=lambda p: (p.predicted_s, -p.n))
            plan.notes.append(
                f"predicted {plan.predicted_s:.1f} s exceeds the {budget.deadline_s:g} s "
                "deadline: the answer will be the best found when time runs out"
            )
            return _annotate(plan, budget, with_prm, use_prm)
    smallest = build(min(_n_choices(budget)), 1, kv_types[-1], prm_options[-1])
    raise PlanError(
        f"a memory budget of {budget.memory_mb:g} MB is too small: the smallest configuration "
        f"({smallest.strategy}, 1 KV slot, KV {smallest.kv_type}, "
        f"{smallest.max_tokens} tokens) needs at least {math.ceil(smallest.predicted_memory_mb)} MB",
        field="memory_mb",
    )


def _annotate(plan: Plan, budget: Budget, with_prm: bool, wanted_prm: bool) -> Plan:
    if wanted_prm and not with_prm:
        plan.notes.append(
            "the PRM does not fit the memory budget: auto judges difficulty by "
            "agreement alone and picks among PRM-free strategies"
        )
    slots = plan.n_seq_max // budget.searches_with_own_slots  # one search's
    if slots < plan.n:
        parked = f", waiting paths parked in {plan.park_mb:.0f} MB of host memory" if plan.park_mb else ""
        plan.notes.append(f"{plan.n} paths share {slots} KV slots: they run in waves{parked}")
    if budget.deadline_s is None and budget.n is None and plan.strategy != "greedy":
        plan.notes.append(f"no deadline: N stays at {plan.n} (give --deadline-s to let edgetts spend more)")
    return plan


def plan_for(
    model: str | None,
    budget: Budget,
    prm_dir: str | None = None,
) -> tuple[Plan, ModelMetadata]:
    """Resolve the model, read calibration and PRM size, and plan."""
    import llama_cpp

    from edgetts.metadata import read_metadata
    from edgetts.models import resolve
    from edgetts.policy import default_threads

    meta = read_metadata(resolve(model))
    threads = budget.n_threads or default_threads()
    gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
    # the speeds measured with the offload this plan will run with (a CPU build offloads none)
    offloaded = asked_gpu_layers(budget, meta, gpu_offload) if gpu_offload else 0
    cal, note = calib.load(meta, threads, calib.offload_key(offloaded, meta.n_layers))
    if cal is None and note and note.startswith("ignoring"):
        log.warning(note)  # a broken file deserves a word even without --explain
    prm = prm_cost(prm_dir) if budget.strategy in SCORED else None
    plan = make_plan(meta, budget, cal, note, prm, gpu_offload=gpu_offload, default_threads=threads)
    return plan, meta


def asked_gpu_layers(budget: Budget, meta: ModelMetadata, gpu_offload: bool) -> int:
    """The layers a plan offloads before it checks the build: the budget's, else every layer
    (and the output layer) on a GPU build, else none."""
    if budget.n_gpu_layers is not None:
        return budget.n_gpu_layers
    return meta.n_layers + 1 if gpu_offload else 0


def prompt_tokens_for(question: str | None) -> int:
    """A cheap prompt-length guess (about 3 characters a token plus the template)."""
    if not question:
        return Budget.prompt_tokens
    return PROMPT_TEMPLATE_TOKENS + len(question) // 3
