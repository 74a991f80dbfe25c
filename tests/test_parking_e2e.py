"""Parking in host memory on the real default model (slow): paths that outnumber the KV slots keep
their KV in host memory and are restored, not decoded again; past ``park_mb`` they are rebuilt."""

from __future__ import annotations

import numpy as np
import pytest

from edgetts.policy import LlamaPolicy, PolicyConfig
from edgetts.policy.slots import TEMPLATE_SLOT
from edgetts.search.base import SolutionPath

pytestmark = pytest.mark.slow

QUESTION = "Tom has 12 apples and gives away 5. How many apples does he have left?"


def small_policy(park_mb: float) -> LlamaPolicy:
    return LlamaPolicy(PolicyConfig(n_seq_max=4, max_tokens=96, seed=0, park_mb=park_mb))


def decode_one(policy: LlamaPolicy, token: int, pos: int, slot: int) -> np.ndarray:
    """Logits of ``token`` decoded alone at ``pos`` into ``slot``."""
    batch = policy._batch
    batch.clear()
    batch.add(token, pos, slot, True)
    policy.context.decode(batch)
    return policy.context.logits_view(0).copy()


def test_a_parked_path_is_restored_bit_for_bit():
    """Park a path, restore it into a slot: the same KV bytes and the same next-token logits."""
    policy = small_policy(park_mb=64)
    try:
        paths = policy.extend([policy.root(QUESTION)], 3)  # slots 1-3; slot 4 stays free
        seq = paths[0].handle
        assert seq.slot is not None and not paths[0].finished
        n_prompt, n_cached, free = len(seq.prompt.tokens), seq.n_cached, policy.slots.next_free()
        token = policy.tokenize(" So", special=False)[0]
        pos = n_prompt + n_cached
        # Never parked: a fork of the live path decodes one more token.
        policy.context.seq_copy(seq.slot, free)
        never_parked = decode_one(policy, token, pos, free)
        policy.context.seq_remove(free)

        kept_logits = seq.logits
        whole = policy.context.seq_state_size(seq.slot)  # what llama.cpp saves: prompt and path
        policy._park(seq)
        assert seq.slot is None and seq.parked is not None and seq.parked_n == n_cached
        # Only the path's own cells are kept (the template holds the prompt's): the copy is in
        # proportion to the path's tokens alone (~12 KB each for this model).
        per_token = whole / (n_prompt + n_cached)
        assert abs(seq.parked.nbytes - n_cached * per_token) < 0.01 * per_token * n_cached
        assert policy.parking.used == seq.parked.nbytes == policy.counters.bytes_parked

        slot = policy.slots.take()
        assert policy.context.seq_restore(seq.parked, slot)
        assert policy.context.seq_positions(slot) == (n_prompt, pos - 1)
        policy.context.seq_copy(TEMPLATE_SLOT, slot)
        # The round trip is exact: saving the restored cells again gives the same bytes.
        policy.context.seq_remove(slot, 0, n_prompt)
        assert np.array_equal(policy.context.seq_save(slot), seq.parked)
        policy.context.seq_copy(TEMPLATE_SLOT, slot)
        restored = decode_one(policy, token, pos, slot)
        # Bit-identical, not merely close: here the restored cells are visited in the same order
        # as the live ones (prompt, path, new token). Attention accumulates over cells in cache
        # order, so a path whose cells lie in another order (the cache reuses freed gaps, parked
        # or not) gets logits that differ in the last bits; the policy needs no such decode for
        # the first token after a restore, which is sampled from the logits kept when the step
        # closed (``kept_logits``, untouched by parking).
        assert np.array_equal(restored, never_parked)
        assert seq.logits is kept_logits
    finally:
        policy.close()


def grow_in_waves(policy: LlamaPolicy) -> tuple[list[SolutionPath], list[SolutionPath], int]:
    """Four paths in four slots, then two children each: parents are parked and brought back.

    Returns both rounds and the tokens of the search tree (each token once)."""
    first = policy.extend([policy.root(QUESTION)], 4)
    live = [p for p in first if not p.finished]
    assert len(live) > 2  # more children than slots, or nothing is parked
    second = policy.extend(live, 2)
    tree = sum(p.n_tokens for p in first) + sum(
        p.n_tokens - live[i // 2].n_tokens for i, p in enumerate(second)
    )
    # a path cut at max_tokens counts its last sampled token, which is never decoded
    cut = sum(p.stop_reason == "max_tokens" for p in [*first, *second])
    return first, second, tree - cut


@pytest.fixture(scope="module")
def waves() -> dict[float, tuple[LlamaPolicy, list[str], dict[str, int]]]:
    """The same two rounds with a park budget that holds everything, one too small for any path
    (0.1 MB, 8 tokens of this model's KV) and none (``park_mb=0``: re-decoding only)."""
    runs = {}
    for park_mb in (64.0, 0.1, 0.0):
        policy = small_policy(park_mb)
        before = dict(vars(policy.counters))
        first, second, tree = grow_in_waves(policy)
        counters = {k: v - before[k] for k, v in vars(policy.counters).items() if k != "seconds"}
        counters["tree"] = tree
        policy.release([*first, *second])
        runs[park_mb] = (policy, [p.text for p in second], counters)
    yield runs
    for policy, _, _ in runs.values():
        policy.close()


def test_parked_paths_are_restored_instead_of_decoded_again(waves):
    policy, _, c = waves[64.0]
    assert c["tokens_restored"] > 0 and c["bytes_parked"] > 0
    assert c["tokens_redecoded"] == 0
    assert c["tokens_decoded"] == c["tree"]  # each token of the tree decoded once
    assert 0 < policy.parking.peak <= policy.parking.limit
    assert policy.parking.used == 0  # every copy dropped once its children started or it was released


def test_without_a_park_budget_parked_paths_are_decoded_again(waves):
    policy, _, c = waves[0.0]
    assert c["tokens_restored"] == 0 and c["bytes_parked"] == 0 and policy.parking.peak == 0
    assert c["tokens_redecoded"] > 0
    assert c["tokens_decoded"] == c["tree"] + c["tokens_redecoded"]


def test_past_the_park_budget_paths_are_decoded_again(waves):
    policy, _, c = waves[0.1]
    assert c["tokens_restored"] == 0 and c["bytes_parked"] == 0 and policy.parking.peak == 0
    assert c["tokens_decoded"] == c["tree"] + c["tokens_redecoded"]
    # Whatever the budget, the same parked tokens come back, restored or decoded again.
    full, none = waves[64.0][2], waves[0.0][2]
    assert c["tokens_redecoded"] == full["tokens_restored"] == none["tokens_redecoded"] > 0


def test_parking_does_not_change_what_is_generated(waves):
    """Same seed, same texts: restoring is a copy of the KV re-decoding computes again."""
    texts = {park_mb: run[1] for park_mb, run in waves.items()}
    assert texts[64.0] == texts[0.1] == texts[0.0]
