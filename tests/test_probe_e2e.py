"""Step states recorded by the real policy, and a policy-probe PRM driving a real search (slow)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgetts.policy import LlamaPolicy, PolicyConfig, PolicyError
from edgetts.prompts import split_steps
from edgetts.search.base import Sampling

pytestmark = pytest.mark.slow
pytest.importorskip("onnx")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import train_probe  # noqa: E402

QUESTION = "Tom has 3 boxes with 4 apples each. He eats 2 apples. How many apples are left?"


@pytest.fixture(scope="module")
def capturing():
    pol = LlamaPolicy(PolicyConfig(n_seq_max=4, max_tokens=256, temperature=0.0, seed=0, capture_states=True))
    yield pol
    pol.close()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_states_are_the_same_stepwise_to_the_end_and_from_a_prefill(capturing):
    whole = capturing.extend([capturing.root(QUESTION)], 1, to_end=True)[0]
    # Ended by the model: at a length cut the last token is never decoded, and the last step's
    # state is the one before it (documented), so a prefill would differ there.
    assert whole.stop_reason == "eos" and len(whole.steps) >= 2
    assert len(whole.step_states) == len(whole.steps)
    live = [capturing.root(QUESTION)]
    for _ in range(20):
        live = capturing.extend(live, 1)
        if live[0].finished:
            break
    stepwise = live[0]
    assert stepwise.steps == whole.steps
    for a, b in zip(stepwise.step_states, whole.step_states, strict=True):
        np.testing.assert_array_equal(a, b)  # same tokens, same batch shapes: same numbers
    # A prefill of the written text (training data, kept samples) gives the same states up to
    # batch numerics, from the steps as written or as split_steps cuts them.
    for steps in (whole.steps, split_steps(whole.text)):
        prefilled = capturing.states_of(QUESTION, steps)
        assert len(prefilled) == len(whole.steps)
        assert min(cosine(a, b) for a, b in zip(prefilled, whole.step_states, strict=True)) > 0.99
    # Different steps end in different states.
    assert cosine(whole.step_states[0], whole.step_states[-1]) < 0.99


def test_block_outputs_join_the_final_state_and_match_a_prefill(capturing):
    """state_layers=(12, -1): block 12's output (read through the eval callback), then the final
    state; the final part equals what a final-state-only policy records, and block 12's part
    is the same from generation and from a prefill of the written text."""
    n = capturing.metadata.n_embd
    whole = capturing.extend([capturing.root(QUESTION)], 1, to_end=True)[0]
    tapped = LlamaPolicy(
        PolicyConfig(
            n_seq_max=4, max_tokens=256, temperature=0.0, seed=0, capture_states=True, state_layers=(12, -1)
        )
    )
    try:
        path = tapped.extend([tapped.root(QUESTION)], 1, to_end=True)[0]
        prefilled = tapped.states_of(QUESTION, path.steps)
        with pytest.raises(PolicyError, match="state_layers"):
            LlamaPolicy(PolicyConfig(capture_states=True, state_layers=(23,)))  # the last block
    finally:
        tapped.close()
    assert path.steps == whole.steps
    assert all(s.shape == (2 * n,) for s in path.step_states)
    for joined, final in zip(path.step_states, whole.step_states, strict=True):
        np.testing.assert_allclose(joined[n:], final, rtol=1e-4, atol=1e-4)
        assert cosine(joined[:n], final) < 0.9  # block 12 is not the final state
    assert min(cosine(a[:n], b[:n]) for a, b in zip(prefilled, path.step_states, strict=True)) > 0.99


def test_a_path_stopped_early_is_the_full_paths_prefix_with_its_states(capturing):
    """stop_early sees each step once it is complete with its state; a pruned path is the
    unpruned one cut at that step (same seed, same batch shape: same tokens), its KV freed."""
    sampling = Sampling(temperature=0.8, seed=3)
    whole = capturing.extend([capturing.root(QUESTION, sampling)], 1, to_end=True)[0]
    assert len(whole.steps) >= 3
    asked: list[tuple[int, int, bool]] = []

    def stop_at_two(path) -> bool:
        asked.append((len(path.steps), len(path.step_states), path.step_states[-1] is not None))
        time.sleep(0.25)  # a PRM call: the scorer's time, not the policy's
        return len(path.steps) >= 2

    root = capturing.root(QUESTION, sampling)
    policy_s, start = capturing.counters.seconds, time.perf_counter()
    cut = capturing.extend([root], 1, to_end=True, stop_early=stop_at_two)[0]
    wall_s = time.perf_counter() - start
    assert asked == [(1, 1, True), (2, 2, True)]
    assert capturing.counters.seconds - policy_s < wall_s - 0.45  # both callbacks left out
    assert cut.finished and cut.stop_reason == "pruned"
    assert cut.steps == whole.steps[:2] and cut.n_tokens < whole.n_tokens
    for a, b in zip(cut.step_states, whole.step_states[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(capturing.slots.free) == list(range(1, capturing.config.n_seq_max + 1))


def test_every_step_keeps_a_state_when_paths_are_parked_and_rebuilt(capturing):
    live = capturing.extend([capturing.root(QUESTION, Sampling(temperature=0.8))], 3)
    for _ in range(3):  # 9 children of 3 parents on 4 slots: parents are parked and rebuilt
        keep = [p for p in live if not p.finished][:3]
        capturing.release([p for p in live if all(p is not k for k in keep)])
        live = capturing.extend(keep, 3)
    capturing.release(live)
    assert live
    for p in live:
        assert len(p.step_states) == len(p.steps)
        assert all(s is not None and s.shape == (capturing.metadata.n_embd,) for s in p.step_states)


def test_solver_runs_beam_search_on_a_probe_and_refuses_another_policys(tmp_path, capturing):
    from edgetts.solver import SolveOptions, Solver

    meta = capturing.metadata
    w = np.random.default_rng(0).normal(size=meta.n_embd) / np.sqrt(meta.n_embd)
    manifest = {
        "kind": "policy_probe",
        "name": "probe",
        "hidden_size": meta.n_embd,
        "policy": {"name": meta.name, "n_embd": meta.n_embd},
        "default_aggregation": "min",
    }
    train_probe.export(tmp_path / "probe", w, 0.0, manifest)
    solver = Solver(PolicyConfig(n_seq_max=4, max_tokens=160), prm_path=str(tmp_path / "probe"))
    try:
        result = solver.solve(QUESTION, SolveOptions(strategy="beam_search", n=4, beam_width=2))
        assert solver.policy.config.capture_states  # the policy it ran records step states
    finally:
        solver.close()
    assert not solver.policy_config.capture_states  # the user's settings stay as given
    assert result.candidates
    for c in result.candidates:
        assert len(c.step_scores) >= 1
        assert all(0.0 <= s <= 1.0 for s in c.step_scores)
        assert c.score == pytest.approx(min(c.step_scores))  # the manifest's aggregation

    other = {**manifest, "policy": {"name": "some-other-model", "n_embd": meta.n_embd}}
    train_probe.export(tmp_path / "other", w, 0.0, other)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgetts.cli",
            "solve",
            QUESTION,
            "--strategy",
            "best_of_n",
            "-n",
            "2",
            "--prm",
            str(tmp_path / "other"),
            "--max-tokens",
            "40",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "reads the hidden states of 'some-other-model'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_solver_gives_the_policy_the_layers_its_probe_reads(tmp_path, capturing):
    from edgetts.solver import SolveOptions, Solver

    meta = capturing.metadata
    w = np.random.default_rng(1).normal(size=2 * meta.n_embd) / np.sqrt(meta.n_embd)
    manifest = {
        "kind": "policy_probe",
        "name": "probe2",
        "hidden_size": 2 * meta.n_embd,
        "layers": [12, -1],
        "policy": {"name": meta.name, "n_embd": meta.n_embd},
    }
    train_probe.export(tmp_path / "probe2", w, 0.0, manifest)
    solver = Solver(PolicyConfig(n_seq_max=2, max_tokens=120), prm_path=str(tmp_path / "probe2"))
    try:
        result = solver.solve(QUESTION, SolveOptions(strategy="best_of_n", n=2))
        ran = solver.policy.config  # the settings of the policy the solve ran on
    finally:
        solver.close()
    assert ran.capture_states and ran.state_layers == (12, -1)
    assert all(c.step_scores and all(0.0 <= s <= 1.0 for s in c.step_scores) for c in result.candidates)
