"""Token confidence: what the policy's own next-token distributions say about a step or a trace.

Recorded for free while decoding, for a search whose ``Sampling.record_confidence`` asks (the
Solver sets it for the strategies and probes that read it; ``PolicyConfig.capture_confidence``
records it for every search): for every generated token, its log-probability under the model's
untempered distribution, the distribution's entropy, and DeepConf's *token confidence* (minus
the mean log-probability of the top-k candidates: high when the model is sure of its choice, low
when many tokens compete). From those, per step (features a probe can read beside the hidden
states) and per trace (DeepConf's lowest sliding-window confidence, for a vote that needs no PRM):

* ``mean_logprob``, ``min_logprob``: of the step's tokens; a single unlikely token is a typical
  place for an arithmetic slip.
* ``mean_entropy``: how spread the step's next-token distributions were.
* ``mean_conf``: mean token confidence of the step.
* ``min_window_conf``: the lowest mean confidence of any ``WINDOW`` consecutive tokens of the
  trace up to the end of this step (DeepConf's "lowest group confidence", running).
* ``log_tokens``: log(1 + tokens in the step); long steps ramble.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TOP_K = 20  # DeepConf's k for token confidence
WINDOW = 32  # tokens per sliding window; DeepConf uses 2048 for long traces, ours are ~300 tokens
STEP_FEATURES: tuple[str, ...] = (
    "mean_logprob",
    "min_logprob",
    "mean_entropy",
    "mean_conf",
    "min_window_conf",
    "log_tokens",
)


def token_stats(logits: np.ndarray, token: int, top_k: int = TOP_K) -> tuple[float, float, float]:
    """(log-probability of ``token``, entropy, DeepConf token confidence) from raw logits."""
    # float32 throughout (a NumPy float64 scalar would upcast the whole vocabulary): this runs
    # once per generated token over ~150k logits, so it is kept to a few passes.
    x = np.asarray(logits, dtype=np.float32)
    shifted = x - x.max()
    exp = np.exp(shifted)
    total = float(exp.sum())
    log_total = math.log(total)
    entropy = log_total - float(np.dot(exp, shifted)) / total
    top = np.partition(shifted, len(x) - top_k)[-top_k:] if len(x) > top_k else shifted
    return float(shifted[token]) - log_total, entropy, log_total - float(top.mean())


def window_confs(confs: Sequence[float], window: int = WINDOW) -> np.ndarray:
    """Mean confidence of every window of ``window`` consecutive tokens (one if fewer tokens)."""
    c = np.asarray(confs, dtype=np.float64)
    if len(c) == 0:
        return np.zeros(0)
    if len(c) <= window:
        return np.array([c.mean()])
    csum = np.r_[0.0, np.cumsum(c)]
    return (csum[window:] - csum[:-window]) / window


def step_features(
    stats: Sequence[Sequence[float]], step_ends: Sequence[int], window: int = WINDOW
) -> np.ndarray:
    """``[n_steps, len(STEP_FEATURES)]`` features from per-token ``(logprob, entropy, conf)``.

    ``step_ends[i]`` is the number of the trace's tokens up to the end of step i. A step without
    tokens of its own (possible at a cut) repeats the previous step's features.
    """
    a = np.asarray(stats, dtype=np.float64).reshape(-1, 3)
    out = np.zeros((len(step_ends), len(STEP_FEATURES)))
    start = 0
    for i, end in enumerate(step_ends):
        end = min(int(end), len(a))
        part = a[start:end]
        if len(part) == 0:
            out[i] = out[i - 1] if i else 0.0
            continue
        lowest = window_confs(a[:end, 2], window).min()
        out[i] = (
            part[:, 0].mean(),
            part[:, 0].min(),
            part[:, 1].mean(),
            part[:, 2].mean(),
            lowest,
            np.log1p(len(part)),
        )
        start = end
    return out


def trace_confidence(
    confs: Sequence[float], mode: str = "lowest", window: int = WINDOW, tail: int = 64
) -> float:
    """One confidence per trace, DeepConf's measures: ``lowest`` sliding window, ``tail`` (mean
    of the last ``tail`` tokens) or ``mean`` over all tokens. 0 for a trace without tokens."""
    c = np.asarray(confs, dtype=np.float64)
    if len(c) == 0:
        return 0.0
    if mode == "lowest":
        return float(window_confs(c, window).min())
    if mode == "tail":
        return float(c[-tail:].mean())
    if mode == "mean":
        return float(c.mean())
    raise ValueError(f"unknown trace confidence {mode!r}; choose lowest, tail or mean")
