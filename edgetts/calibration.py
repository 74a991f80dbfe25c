"""Calibration: how fast this machine runs a policy and a PRM, measured once and cached.

``edgetts calibrate`` measures prefill tokens/s, decode tokens/s at several batch sizes (one row
per live sequence, all decoded in one batch per token) and PRM steps/s, and saves them as
``$EDGETTS_HOME/calibration/<model-key>__<machine-id>__t<threads>.json`` (with ``__gall`` or
``__g<layers>`` before ``.json`` when layers were offloaded to a GPU: a CPU measurement does not
predict a GPU run, nor the reverse). The scheduler reads that
file to predict how long a plan takes. Without one it falls back to deliberately conservative
estimates from the model's size (:func:`estimate`), and says so in the plan.

A file that is corrupt, of another format version, or written for another model file is ignored
with a warning; ``edgetts calibrate`` writes a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgetts import paths
from edgetts.metadata import ModelMetadata

FORMAT_VERSION = 1
DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32)
DEFAULT_TOKENS_PER_ROW = 16  # tokens decoded per sequence at each batch size
# A GSM8K-sized prompt: long enough that prefill speed is not dominated by per-call overhead.
CALIBRATION_QUESTION = (
    "A farmer has 17 rows of apple trees with 23 trees in each row. Each tree gives 41 apples in "
    "a good year and 29 apples in a bad year. Last year was good for the first 9 rows and bad "
    "for the others. He sells apples in boxes of 12 and keeps the apples that do not fill a box. "
    "How many boxes did he sell, and how many apples did he keep? Explain every step."
)

# Conservative fallbacks (no calibration file). CPU decoding is memory-bound: each decoded batch
# reads every weight once, so a single sequence runs at about bandwidth / weights_bytes. 2 GB/s
# per thread is below what a busy 2-core VM measured here (about 4 GB/s at one thread), so the
# plan errs towards answering early rather than late.
FALLBACK_BANDWIDTH_BYTES_S = 2.0e9
FALLBACK_BATCH_EXPONENT = 0.5  # aggregate tokens/s grows like batch**0.5 (measured: ~0.6-0.8)
FALLBACK_PREFILL_FACTOR = 6.0  # prefill tokens/s vs one-sequence decode tokens/s
FALLBACK_PRM_STEPS_S = 40.0  # MiniLM-sized PRM, one thread (measured: ~150 on a busy core)


@dataclass
class Calibration:
    """Measured (or estimated) speeds of one policy + PRM on one machine at one thread count."""

    model_key: str
    machine_id: str
    n_threads: int
    prefill_tok_s: float
    decode_tok_s: dict[int, float]  # batch size -> tokens/s summed over the batch
    prm_steps_s: float | None
    source: str = "measured"  # "measured" or "estimate"
    prm: str | None = None  # the PRM directory's name whose speed prm_steps_s is (None: unknown)
    gpu_layers: int = 0  # layers offloaded while measured (offload_key: 0 CPU, -1 all)
    measured_at: float = field(default_factory=time.time)
    version: int = FORMAT_VERSION

    def decode_at(self, batch: int) -> float:
        """Aggregate decode tokens/s at ``batch`` rows, log-linear between measured sizes."""
        sizes = sorted(self.decode_tok_s)
        if batch <= sizes[0]:
            return self.decode_tok_s[sizes[0]] * batch / sizes[0]
        if batch >= sizes[-1]:
            return self.decode_tok_s[sizes[-1]]  # no gain assumed past what was measured
        hi = next(s for s in sizes if s >= batch)
        lo = max(s for s in sizes if s <= batch)
        if hi == lo:
            return self.decode_tok_s[lo]
        t = (math.log(batch) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return self.decode_tok_s[lo] * (self.decode_tok_s[hi] / self.decode_tok_s[lo]) ** t

    def to_json(self) -> str:
        data = asdict(self)
        data["decode_tok_s"] = {str(k): v for k, v in self.decode_tok_s.items()}
        return json.dumps(data, indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        """Build and sanity-check; raise ValueError on anything a planner could not use."""
        if not isinstance(data, dict):  # a damaged file may hold any JSON value: `[]`, `"x"`
            raise ValueError(f"not a JSON object but {type(data).__name__}")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"format version {data.get('version')!r}, expected {FORMAT_VERSION}")
        decode = {int(k): float(v) for k, v in dict(data["decode_tok_s"]).items()}
        cal = cls(
            model_key=str(data["model_key"]),
            machine_id=str(data["machine_id"]),
            n_threads=int(data["n_threads"]),
            prefill_tok_s=float(data["prefill_tok_s"]),
            decode_tok_s=decode,
            prm_steps_s=None if data.get("prm_steps_s") is None else float(data["prm_steps_s"]),
            source=str(data.get("source", "measured")),
            prm=None if data.get("prm") is None else str(data["prm"]),
            gpu_layers=int(data.get("gpu_layers", 0)),  # (files before it: measured on the CPU)
            measured_at=float(data.get("measured_at", 0.0)),
        )
        speeds = [cal.prefill_tok_s, *decode.values()] + ([cal.prm_steps_s] if cal.prm_steps_s else [])
        if not decode or any(not math.isfinite(s) or s <= 0 for s in speeds):
            raise ValueError("speeds must be positive numbers")
        if min(decode) < 1:
            raise ValueError("decode speeds are per batch size, 1 or more")
        return cal


def calibration_dir() -> Path:
    return paths.home() / "calibration"


def machine_id() -> str:
    """A short stable id of this machine's compute: host, CPU model, cores, llama.cpp build."""
    cpu = platform.processor()
    try:
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
    except OSError:
        pass
    import llama_cpp

    parts = [
        platform.node(),
        platform.machine(),
        cpu,
        str(os.cpu_count()),
        llama_cpp.__version__,
        str(bool(llama_cpp.llama_supports_gpu_offload())),
    ]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def model_key(meta: ModelMetadata) -> str:
    """File stem plus size: a re-quantized or different file gets a different key."""
    return f"{Path(meta.path).stem}-{meta.file_bytes}"


def offload_key(n_gpu_layers: int, n_layers: int) -> int:
    """Offloaded layers as calibrations name them: 0 (the CPU), -1 (every layer), or a count."""
    return -1 if n_gpu_layers < 0 or n_gpu_layers > n_layers else n_gpu_layers


def calibration_path(meta: ModelMetadata, n_threads: int, gpu_layers: int = 0) -> Path:
    offload = "" if gpu_layers == 0 else "__gall" if gpu_layers < 0 else f"__g{gpu_layers}"
    return calibration_dir() / f"{model_key(meta)}__{machine_id()}__t{n_threads}{offload}.json"


def load(meta: ModelMetadata, n_threads: int, gpu_layers: int = 0) -> tuple[Calibration | None, str | None]:
    """The saved calibration for this model, machine, thread count and offload (``gpu_layers``,
    an :func:`offload_key`), or (None, why not)."""
    path = calibration_path(meta, n_threads, gpu_layers)
    if not path.is_file():
        offload = f" --n-gpu-layers {gpu_layers}" if gpu_layers else ""
        return None, f"no calibration at {path}; run `edgetts calibrate{offload}`"
    try:
        cal = Calibration.from_dict(json.loads(path.read_text()))
    except OSError as exc:
        why = exc.strerror or exc
        return None, f"ignoring unreadable calibration {path} ({why}); run `edgetts calibrate`"
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # OverflowError: int(1e999)
        return None, f"ignoring corrupt or stale calibration {path} ({exc}); run `edgetts calibrate`"
    if cal.model_key != model_key(meta) or cal.n_threads != n_threads or cal.gpu_layers != gpu_layers:
        why = "another model, thread count or offload"
        return None, f"ignoring calibration {path}: it was measured for {why}"
    return cal, None


def save(cal: Calibration, meta: ModelMetadata) -> Path:
    path = calibration_path(meta, cal.n_threads, cal.gpu_layers)
    paths.write_atomically(path, cal.to_json())  # never a half-written file for the planner
    return path


def estimate(meta: ModelMetadata, n_threads: int, batches=DEFAULT_BATCHES) -> Calibration:
    """Conservative speeds from the model size alone (see the FALLBACK_* constants)."""
    threads_gain = max(1, n_threads) ** 0.5  # threads contend for the same memory bandwidth
    single = FALLBACK_BANDWIDTH_BYTES_S * threads_gain / max(meta.weights_bytes, 1)
    return Calibration(
        model_key=model_key(meta),
        machine_id="estimate",
        n_threads=n_threads,
        prefill_tok_s=single * FALLBACK_PREFILL_FACTOR,
        decode_tok_s={b: single * b**FALLBACK_BATCH_EXPONENT for b in batches},
        prm_steps_s=FALLBACK_PRM_STEPS_S * threads_gain,
        source="estimate",
    )


def measure(
    model: str | None,
    prm_path: str | None,
    n_threads: int,
    batches=DEFAULT_BATCHES,
    tokens: int = DEFAULT_TOKENS_PER_ROW,
    progress=print,
    n_gpu_layers: int | None = None,
) -> tuple[Calibration, ModelMetadata]:
    """Measure prefill, decode at each batch size (``tokens`` per row) and PRM steps/s, with
    ``n_gpu_layers`` offloaded (None: ``$EDGETTS_N_GPU_LAYERS``, else none)."""
    import llama_cpp

    from edgetts.gpu import default_gpu_layers
    from edgetts.policy import LlamaPolicy, PolicyConfig

    if n_gpu_layers is None:
        n_gpu_layers = default_gpu_layers()
    if not llama_cpp.llama_supports_gpu_offload():
        n_gpu_layers = 0  # a CPU build keeps every layer on the CPU, whatever was asked

    batches = sorted(set(batches))
    config = PolicyConfig(
        model=model,
        n_seq_max=batches[-1],
        max_tokens=tokens,
        n_threads=n_threads,
        n_gpu_layers=n_gpu_layers,
        temperature=1.0,
        max_prompt_tokens=512,
    )
    policy = LlamaPolicy(config)
    try:
        prefill_tok, prefill_s, decode = 0, 0.0, {}
        for batch in batches:
            # the first root prefills; the next ones reuse its template (0 tokens, as counted)
            before = policy.counters.seconds
            root = policy.root(CALIBRATION_QUESTION)
            prefill_s += policy.counters.seconds - before
            prefill_tok += policy.counters.tokens_prefilled - prefill_tok
            tok0, s0 = policy.counters.tokens_decoded, policy.counters.seconds
            paths = policy.extend([root], batch, to_end=True)
            policy.release(paths)
            decoded = policy.counters.tokens_decoded - tok0
            decode[batch] = decoded / max(policy.counters.seconds - s0, 1e-9)
            progress(f"decode batch {batch:>2}: {decode[batch]:8.1f} tokens/s ({decoded} tokens)")
        # Aggregate decode speed does not drop with more rows on one machine (the weights are
        # read once per batch); a measured drop is another process taking the core meanwhile,
        # and believing it would steer plans away from batching.
        for smaller, larger in zip(batches, batches[1:], strict=False):
            decode[larger] = max(decode[larger], decode[smaller])
        prefill = prefill_tok / max(prefill_s, 1e-9)
        progress(f"prefill: {prefill:8.1f} tokens/s")
        meta = policy.metadata
    finally:
        policy.close()
    if prm_path is None:  # the PRM this policy would run with
        from edgetts.probe import default_prm_dir

        prm_path = str(default_prm_dir(meta.name, meta.n_embd))
    prm = measure_prm(prm_path, n_threads, progress)
    cal = Calibration(
        model_key=model_key(meta),
        machine_id=machine_id(),
        n_threads=n_threads,
        prefill_tok_s=prefill,
        decode_tok_s=decode,
        prm_steps_s=prm,
        prm=Path(prm_path).name if prm is not None else None,
        gpu_layers=offload_key(n_gpu_layers, meta.n_layers),
    )
    return cal, meta


def measure_prm(prm_path: str | None, n_threads: int, progress=print) -> float | None:
    """PRM steps/s on 16 paths of 4 GSM8K-length steps; None when the PRM does not load."""
    try:
        from edgetts.probe import load_scorer

        scorer = load_scorer(prm_path, threads=n_threads)
    except Exception as exc:  # a missing PRM only leaves PRM speed unmeasured
        progress(f"PRM not measured: {exc}")
        return None
    step = "We multiply 23 trees by 17 rows to get 391 trees, then 391 * 41 = 16031 apples.\n\n"
    steps = [[f"Step {i + 1}: {step}" for i in range(4)] for _ in range(16)]
    if scorer.needs_states:  # a policy probe: scores states, not text
        import numpy as np

        from edgetts.search.base import SolutionPath

        width = scorer.manifest.hidden_size
        paths = [SolutionPath(steps=s, step_states=[np.ones(width, np.float32)] * len(s)) for s in steps]
        scorer.score(CALIBRATION_QUESTION, paths[:2])
        start = time.perf_counter()
        scorer.score(CALIBRATION_QUESTION, paths)
    else:
        scorer.score_steps(CALIBRATION_QUESTION, steps[:2])  # warm-up: first run allocates
        start = time.perf_counter()
        scorer.score_steps(CALIBRATION_QUESTION, steps)
    rate = 64 / (time.perf_counter() - start)
    progress(f"PRM: {rate:8.1f} steps/s")
    return rate
