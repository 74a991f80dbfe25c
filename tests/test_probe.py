"""Policy-probe PRM (edgetts.probe): real onnxruntime sessions on heads written by tools/train_probe."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetts.prm import PRMError, PRMScorer
from edgetts.probe import ProbeScorer, load_scorer, load_states, save_states
from edgetts.search.base import SolutionPath

pytest.importorskip("onnx")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import label_steps  # noqa: E402
import train_probe  # noqa: E402

WIDTH = 8


def write_probe(d: Path, w: np.ndarray, b: float, **manifest: object) -> Path:
    m = {
        "kind": "policy_probe",
        "name": "tiny-probe",
        "hidden_size": len(w),
        "policy": {"name": "tiny-policy", "n_embd": len(w)},
        "default_aggregation": "last",
        "calculator_check": False,
        **manifest,
    }
    train_probe.export(d, w, b, m)
    return d


def paths_with_states(rng: np.random.Generator, n_steps: list[int]) -> list[SolutionPath]:
    return [
        SolutionPath(
            steps=[f"step {i}\n\n" for i in range(k)],
            step_states=[rng.normal(size=WIDTH).astype(np.float32) for _ in range(k)],
        )
        for k in n_steps
    ]


def test_states_of_other_layers_get_a_clear_error(tmp_path: Path) -> None:
    """States recorded for another layer set (a final-layer run scored by a two-layer probe)."""
    rng = np.random.default_rng(0)
    scorer = load_scorer(write_probe(tmp_path / "p", rng.normal(size=2 * WIDTH), 0.0, layers=[12, -1]))
    with pytest.raises(PRMError, match=r"16 wide .* hold 8: record them with state_layers=\(12, -1\)"):
        scorer.score("q", paths_with_states(rng, [2]))


def test_scores_are_the_logistic_head(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=WIDTH), 0.3
    scorer = load_scorer(write_probe(tmp_path / "p", w, b), threads=1)
    assert isinstance(scorer, ProbeScorer) and scorer.default_aggregation == "last"
    paths = paths_with_states(rng, [3, 1, 0])
    got = scorer.score("q", paths)
    assert [len(s) for s in got] == [3, 1, 0]
    for path, scores in zip(paths, got, strict=True):
        want = [1 / (1 + np.exp(-(s.astype(np.float64) @ w + b))) for s in path.step_states]
        np.testing.assert_allclose(scores, want, atol=1e-5)
    assert scorer.counters.steps_scored == 4


def test_a_search_counts_its_own_scoring_apart_from_its_neighbours(tmp_path: Path) -> None:
    """Concurrent searches share one loaded probe; each counts only what it scored."""
    rng = np.random.default_rng(1)
    shared = load_scorer(write_probe(tmp_path / "p", rng.normal(size=WIDTH), 0.0), threads=1)
    first, second = shared.with_own_counters(), shared.with_own_counters()
    assert first.session is shared.session and second.session is shared.session
    first.score("q", paths_with_states(rng, [3, 2]))
    second.score("q", paths_with_states(rng, [1]))
    assert (first.counters.steps_scored, second.counters.steps_scored, shared.counters.steps_scored) == (
        5,
        1,
        0,
    )


def test_calculator_check_caps_wrong_arithmetic(tmp_path: Path) -> None:
    scorer = load_scorer(
        write_probe(tmp_path / "p", np.zeros(WIDTH), 5.0, calculator_check=True, calculator_cap=0.05),
        threads=1,
    )
    path = SolutionPath(
        steps=["So 4 * 12 = 52 pencils.\n\n", "The answer is 52."],
        step_states=[np.zeros(WIDTH, np.float32)] * 2,
    )
    assert scorer.score("q", [path])[0][0] <= 0.05
    assert scorer.score("q", [path])[0][1] > 0.99


def test_paths_without_states_are_refused(tmp_path: Path) -> None:
    scorer = load_scorer(write_probe(tmp_path / "p", np.zeros(WIDTH), 0.0), threads=1)
    with pytest.raises(PRMError, match="capture_states"):
        scorer.score("q", [SolutionPath(steps=["a\n\n", "b"])])


def test_policy_mismatch_is_named(tmp_path: Path) -> None:
    scorer = load_scorer(write_probe(tmp_path / "p", np.zeros(WIDTH), 0.0), threads=1)
    scorer.check_policy("tiny-policy", WIDTH)
    with pytest.raises(PRMError, match="reads the hidden states of 'tiny-policy'"):
        scorer.check_policy("other-model", 896)


def test_contract_and_manifest_errors(tmp_path: Path) -> None:
    d = write_probe(tmp_path / "p", np.zeros(WIDTH), 0.0)
    m = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps({**m, "hidden_size": WIDTH + 1}))
    with pytest.raises(PRMError, match=r"expected \[batch, 9\]"):
        ProbeScorer.load(d)
    (d / "manifest.json").write_text(json.dumps({**m, "input_name": "h"}))
    with pytest.raises(PRMError, match="'h' is not a graph input"):
        ProbeScorer.load(d)
    (d / "manifest.json").write_text(json.dumps({k: v for k, v in m.items() if k != "policy"}))
    with pytest.raises(PRMError, match="missing field"):
        ProbeScorer.load(d)
    (d / "manifest.json").write_text(json.dumps({**m, "default_aggregation": "mean"}))
    with pytest.raises(PRMError, match="default_aggregation"):
        ProbeScorer.load(d)
    for bad in (1.5, 0, "0.2", True):
        (d / "manifest.json").write_text(json.dumps({**m, "prune_below": bad}))
        with pytest.raises(PRMError, match="prune_below"):
            ProbeScorer.load(d)
    for bad in (0.4, 1.2, "0.9", False):
        (d / "manifest.json").write_text(json.dumps({**m, "adaptive_threshold": bad}))
        with pytest.raises(PRMError, match="adaptive_threshold"):
            ProbeScorer.load(d)
    (d / "manifest.json").write_text(json.dumps({**m, "prune_below": 0.3, "adaptive_threshold": 0.9}))
    assert ProbeScorer.load(d).prune_below == 0.3
    assert ProbeScorer.load(d).adaptive_threshold == 0.9
    (d / "manifest.json").write_text(json.dumps(m))
    assert ProbeScorer.load(d).prune_below is None
    assert ProbeScorer.load(d).adaptive_threshold is None
    # seen in review: these loaded, and failed mid-search or not at all
    for bad, field in (
        ({"threshold": 7.5}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"calculator_cap": "0.05"}, "calculator_cap"),
        ({"model_file": "/etc/model.onnx"}, "inside the PRM's folder"),
        ({"model_file": "../a/model.onnx"}, "inside the PRM's folder"),
        ({"policy": "Qwen"}, "policy must be"),
        ({"layers": 5}, "layers"),
        ({"layers": []}, "layers"),
    ):
        (d / "manifest.json").write_text(json.dumps({**m, **bad}))
        with pytest.raises(PRMError, match=field):
            ProbeScorer.load(d)
    (d / "manifest.json").write_text(json.dumps(m))
    (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:20])
    with pytest.raises(PRMError, match="does not load"):
        ProbeScorer.load(d)


def test_load_scorer_picks_the_text_prm_by_default() -> None:
    assert isinstance(load_scorer(None, threads=1), PRMScorer)


def test_states_round_trip(tmp_path: Path) -> None:
    paths = paths_with_states(np.random.default_rng(1), [2, 0, 3])
    save_states(tmp_path / "s.npz", paths)
    back = load_states(tmp_path / "s.npz")
    assert [p.steps for p in back] == [p.steps for p in paths]
    for a, b in zip(back, paths, strict=True):
        for x, y in zip(a.step_states, b.step_states, strict=True):
            np.testing.assert_allclose(x, y, atol=1e-2)  # kept as float16
    with pytest.raises(ValueError, match="capture_states"):
        save_states(tmp_path / "t.npz", [SolutionPath(steps=["a"])])


def test_fit_logistic_separates_and_folds_standardisation() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, WIDTH)) * 5 + 3  # raw scale and offset: the fold-back must undo it
    y = (X[:, 0] - 3 > 0).astype(float)
    w, b = train_probe.fit_logistic(X, y, l2=0.001)
    p = 1 / (1 + np.exp(-(X @ w + b)))
    assert ((p > 0.5) == (y > 0)).mean() > 0.95
    assert abs(w[0]) > 5 * np.abs(w[1:]).max()


def test_default_prm_is_the_policys_own_probe_when_one_ships(tmp_path: Path) -> None:
    from edgetts.prm import default_text_prm
    from edgetts.probe import default_prm_dir

    write_probe(tmp_path / "probe-a", np.zeros(WIDTH), 0.0)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    for i, odd in enumerate(
        ([1], {"kind": "policy_probe", "policy": "Qwen"}, {"kind": "policy_probe", "layers": 3})
    ):
        (tmp_path / f"odd-{i}").mkdir()  # seen in review: each broke every default-PRM lookup
        (tmp_path / f"odd-{i}" / "manifest.json").write_text(json.dumps(odd))
    assert default_prm_dir("tiny-policy", WIDTH, tmp_path) == tmp_path / "probe-a"
    assert default_prm_dir("tiny-policy", WIDTH + 1, tmp_path) == default_text_prm()
    assert default_prm_dir("another-policy", WIDTH, tmp_path) == default_text_prm()


def test_fingerprint_follows_what_the_scorer_reads_not_where_it_lies(tmp_path: Path) -> None:
    from edgetts.probe import verifier_fingerprint

    a = write_probe(tmp_path / "a", np.ones(WIDTH), 0.0, prune_below=0.2)
    b = write_probe(tmp_path / "b", np.ones(WIDTH), 0.0, prune_below=0.2)
    (b / "README.md").write_text("a model card says nothing the scorer reads")
    assert verifier_fingerprint(a) == verifier_fingerprint(b)
    assert verifier_fingerprint(a).startswith("tiny-probe@")
    manifest = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**manifest, "prune_below": 0.3}))
    assert verifier_fingerprint(a) != verifier_fingerprint(b)  # a stopping setting changed
    c = write_probe(tmp_path / "c", np.full(WIDTH, 2.0), 0.0, prune_below=0.2)
    assert verifier_fingerprint(a) != verifier_fingerprint(c)  # the weights changed
    with pytest.raises(PRMError, match="not found"):
        verifier_fingerprint(tmp_path / "missing")


def test_a_probe_on_two_layers_is_twice_as_wide_and_found_for_its_policy(tmp_path: Path) -> None:
    from edgetts.probe import default_prm_dir

    d = write_probe(tmp_path / "two", np.zeros(2 * WIDTH), 0.0, layers=[12, -1])
    scorer = load_scorer(d, threads=1)
    assert scorer.manifest.layers == [12, -1]
    scorer.check_policy("tiny-policy", WIDTH)  # n_embd 8, two layers: 16 wide
    with pytest.raises(PRMError, match="16 wide"):
        scorer.check_policy("tiny-policy", 2 * WIDTH)
    assert default_prm_dir("tiny-policy", WIDTH, tmp_path) == d


def test_training_rows_pick_some_of_their_captured_layers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = [
        SolutionPath(
            steps=["a\n\n", "b"],
            step_states=[rng.normal(size=3 * WIDTH).astype(np.float32) for _ in range(2)],
        )
    ]
    label_steps.write_row(
        label_steps.open_label_rows(tmp_path),
        {"key": "k", "question": "q", "layers": [8, 12, -1], "candidates": [{"correct": True}]},
        paths,
    )
    full = np.stack(paths[0].step_states).astype(np.float16).astype(np.float32)
    (row,) = train_probe.load_dir(str(tmp_path), [-1, 8])
    np.testing.assert_array_equal(row["states"][0], np.hstack([full[:, 2 * WIDTH :], full[:, :WIDTH]]))
    assert row["layers"] == [-1, 8]
    assert train_probe.load_dir(str(tmp_path))[0]["states"][0].shape == (2, 3 * WIDTH)
    with pytest.raises(SystemExit, match="no states of layer"):
        train_probe.load_dir(str(tmp_path), [16])


def test_layers_ranks_an_informative_layer_above_noise(tmp_path: Path, capsys) -> None:
    """Captured [3, -1]: block 3 carries the outcome, the final state is noise."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    written = label_steps.open_label_rows(tmp_path)
    for k in range(10):
        cands, paths = [], []
        for j in range(4):
            right = (j + k) % 2 == 0
            signal = rng.normal(size=WIDTH) + (1.5 if right else -1.5)
            states = [
                np.concatenate([signal + rng.normal(size=WIDTH) * 0.1, rng.normal(size=WIDTH)]).astype(
                    np.float32
                )
                for _ in range(2)
            ]
            paths.append(SolutionPath(steps=["a\n\n", "b"], step_states=states))
            cands.append(
                {
                    "correct": right,
                    "answer": "1" if right else str(j + 2),
                    "text": "a\n\nb",
                    "score": None,
                    "step_scores": [],
                    "n_tokens": 2,
                    "stop_reason": "eos",
                }
            )
        label_steps.write_row(
            written,
            {"key": f"k{k}", "question": f"q{k}", "gold": "1", "layers": [3, -1], "candidates": cands},
            paths,
        )
    train_probe.layers(SimpleNamespace(train=[str(tmp_path)], folds=5, l2=[0.1]))
    table = {line.split()[0]: float(line.split()[1]) for line in capsys.readouterr().out.splitlines()[1:]}
    assert table["3"] > 90 and table["-1"] < 75
