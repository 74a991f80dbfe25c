"""Search strategies over a StepGenerator and a StepScorer, and one entry point to run them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass

from edgetts.search.base import SearchConfig, SearchResult, StepGenerator, StepScorer
from edgetts.search.common import require_scorer
from edgetts.search.registry import REGISTRY, Strategy

STRATEGIES: dict[str, Strategy] = {name: info.run for name, info in REGISTRY.items()}
# Strategies that cannot work without a step scorer.
NEEDS_SCORER: set[str] = {name for name, info in REGISTRY.items() if info.needs_scorer}
# Strategies that read the policy's token confidence.
NEEDS_CONFIDENCE: set[str] = {name for name, info in REGISTRY.items() if info.needs_confidence}


def counters_of(obj: object) -> dict[str, float]:
    """What ``obj`` (a generator or scorer) has spent so far: its ``counters`` dataclass as a
    dict, or {} when it keeps none."""
    counters = getattr(obj, "counters", None)
    return asdict(counters) if is_dataclass(counters) else {}


def spent_since(obj: object, before: dict[str, float]) -> dict[str, float]:
    """What ``obj`` has spent since ``before`` (an earlier :func:`counters_of`)."""
    return {k: v - before.get(k, 0) for k, v in counters_of(obj).items()}


def run_search(
    strategy: str,
    question: str,
    generator: StepGenerator,
    scorer: StepScorer | None,
    config: SearchConfig,
) -> SearchResult:
    """Validate the settings, run ``strategy`` and attach what it cost.

    Counters: tokens prefilled and decoded (from the generator), PRM calls and steps scored
    (from the scorer), and wall time split into policy, PRM and other seconds.
    ``tokens_generated`` is the search tree's tokens, each once: what was decoded less what was
    decoded again to rebuild parked paths (``tokens_redecoded``, non-zero only when the paths
    outnumber the generator's KV slots and ran in waves).
    """
    if strategy not in REGISTRY:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {sorted(REGISTRY)}")
    info = REGISTRY[strategy]
    info.validate(config)
    if info.needs_scorer:
        require_scorer(strategy, scorer)
    return measured(generator, scorer, lambda: info.run(question, generator, scorer, config))


def measured(
    generator: StepGenerator, scorer: StepScorer | None, search: Callable[[], SearchResult]
) -> SearchResult:
    """Run ``search`` and set its counters from the generator's and scorer's counter deltas.

    Counters: tokens prefilled and decoded (from the generator), PRM calls and steps scored
    (from the scorer), and wall time split into policy, PRM and other seconds; counters the
    search set itself (sandbox runs) are kept.
    """
    gen_before, prm_before = counters_of(generator), counters_of(scorer)
    start = time.perf_counter()
    result = search()
    wall_s = time.perf_counter() - start
    gen, prm = spent_since(generator, gen_before), spent_since(scorer, prm_before)
    policy_s = gen.pop("seconds", 0.0)
    prm_s = prm.pop("seconds", 0.0)
    generated = gen.get("tokens_decoded", 0) - gen.get("tokens_redecoded", 0)
    result.counters = {
        **gen,
        "tokens_generated": generated,
        **{f"prm_{k}": v for k, v in prm.items()},
        "policy_s": round(policy_s, 3),
        "prm_s": round(prm_s, 3),
        "other_s": round(max(0.0, wall_s - policy_s - prm_s), 3),
        "wall_s": round(wall_s, 3),
        **result.counters,
    }
    return result
