"""Probes with confidence features and MLP heads (tools/train_verifier.py), on real onnxruntime."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetts.confidence import STEP_FEATURES, step_features
from edgetts.prm import PRMError
from edgetts.probe import ProbeScorer, default_prm_dir, load_scorer
from edgetts.search.base import SolutionPath

pytest.importorskip("onnx")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import label_steps  # noqa: E402
import train_verifier as tv  # noqa: E402

WIDTH = 6


def manifest(width: int, **extra: object) -> dict:
    return {
        "kind": "policy_probe",
        "name": "tiny",
        "hidden_size": width,
        "policy": {"name": "tiny-policy", "n_embd": WIDTH},
        "default_aggregation": "last",
        "calculator_check": False,
        **extra,
    }


def conf_path(rng: np.random.Generator, n_steps: int) -> SolutionPath:
    stats = [(-rng.random(), rng.random(), 5 + rng.random()) for _ in range(4 * n_steps)]
    return SolutionPath(
        steps=[f"s{i}\n\n" for i in range(n_steps)],
        step_states=[rng.normal(size=WIDTH).astype(np.float32) for _ in range(n_steps)],
        token_stats=stats,
        step_token_ends=[4 * (i + 1) for i in range(n_steps)],
    )


def test_a_probe_with_confidence_features_reads_them_after_the_states(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feats = ["min_logprob", "mean_conf"]
    W1 = rng.normal(size=(WIDTH + 2, 1)).astype(np.float32)
    head = tv.Head(W1, np.array([0.2], np.float32))
    tv.export_head(head, tmp_path / "p", manifest(WIDTH + 2, features=feats))
    scorer = load_scorer(tmp_path / "p", threads=1)
    assert isinstance(scorer, ProbeScorer) and scorer.needs_confidence
    scorer.check_policy("tiny-policy", WIDTH)  # width = n_embd * layers + features
    paths = [conf_path(rng, 3), conf_path(rng, 1)]
    got = scorer.score("q", paths)
    for p, scores in zip(paths, got, strict=True):
        cols = [STEP_FEATURES.index(f) for f in feats]
        X = np.hstack([np.stack(p.step_states), step_features(p.token_stats, p.step_token_ends)[:, cols]])
        np.testing.assert_allclose(scores, 1 / (1 + np.exp(-(X @ W1[:, 0] + 0.2))), atol=1e-4)


def test_missing_confidence_is_an_error_not_a_silent_zero(tmp_path: Path) -> None:
    tv.export_head(
        tv.Head(np.ones((WIDTH + 1, 1), np.float32), np.zeros(1, np.float32)),
        tmp_path / "p",
        manifest(WIDTH + 1, features=["mean_conf"]),
    )
    scorer = load_scorer(tmp_path / "p", threads=1)
    p = conf_path(np.random.default_rng(1), 2)
    p.step_token_ends = []
    with pytest.raises(PRMError, match="record_confidence"):
        scorer.score("q", [p])


def test_unknown_feature_names_are_refused(tmp_path: Path) -> None:
    tv.export_head(
        tv.Head(np.ones((WIDTH + 1, 1), np.float32), np.zeros(1, np.float32)),
        tmp_path / "p",
        manifest(WIDTH + 1, features=["vibes"]),
    )
    with pytest.raises(PRMError, match="unknown feature"):
        load_scorer(tmp_path / "p", threads=1)


def test_default_prm_dir_counts_features_in_the_width(tmp_path: Path) -> None:
    tv.export_head(
        tv.Head(np.ones((2 * WIDTH + 2, 1), np.float32), np.zeros(1, np.float32)),
        tmp_path / "probe",
        manifest(2 * WIDTH + 2, layers=[12, -1], features=["mean_conf", "min_logprob"]),
    )
    assert default_prm_dir("tiny-policy", WIDTH, tmp_path) == tmp_path / "probe"
    assert default_prm_dir("tiny-policy", WIDTH + 1, tmp_path) != tmp_path / "probe"


def test_mlp_export_matches_the_numpy_head(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    head = tv.Head(
        rng.normal(size=(WIDTH, 5)).astype(np.float32),
        rng.normal(size=5).astype(np.float32),
        rng.normal(size=(5, 1)).astype(np.float32),
        rng.normal(size=1).astype(np.float32),
    )
    tv.export_head(head, tmp_path / "m", manifest(WIDTH))
    scorer = load_scorer(tmp_path / "m", threads=1)
    X = rng.normal(size=(7, WIDTH)).astype(np.float32)
    np.testing.assert_allclose(scorer.score_states(X), 1 / (1 + np.exp(-head.logits(X))), atol=1e-5)


@pytest.mark.parametrize("hidden", [0, 8])
def test_fit_separates_a_learnable_problem(hidden: int) -> None:
    pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 10)).astype(np.float32) * 3 + 1
    y = (X[:, 0] - 0.5 * X[:, 3] > 1).astype(np.float32)
    head = tv.fit(X, y, np.zeros(len(y), dtype=int), hidden=hidden, wd=1e-4, epochs=200)
    s = head.logits(X)
    auc = np.mean([a > b for a in s[y == 1] for b in s[y == 0]])
    assert auc > 0.97


def test_a_linear_fit_is_the_losss_one_minimum_whatever_the_seed_or_row_order() -> None:
    """Convex, so fitted to convergence: the seed and the row order change nothing, and a step
    along the gradient from the head makes the loss no lower."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 12)).astype(np.float32) * 2 - 1
    y = (X[:, 1] + rng.normal(size=300) > 0).astype(np.float32)
    g = np.zeros(len(y), dtype=int)
    head = tv.fit(X, y, g, hidden=0, wd=0.1, seed=0)
    order = rng.permutation(len(y))
    again = tv.fit(X[order], y[order], g, hidden=0, wd=0.1, seed=7)
    np.testing.assert_allclose(again.W1, head.W1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(again.b1, head.b1, rtol=1e-4, atol=1e-6)

    mu, sd = X.mean(0), X.std(0) + 1e-4
    w = torch.tensor(head.W1[:, 0] * sd, dtype=torch.float64, requires_grad=True)  # standardised terms
    b = torch.tensor(head.b1 + mu @ head.W1, dtype=torch.float64, requires_grad=True)
    Z, t = torch.tensor((X - mu) / sd, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    pos = float(y.mean())
    weight = torch.where(t > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    loss = (
        torch.nn.functional.binary_cross_entropy_with_logits(Z @ w + b, t, weight=weight) + 0.1 * (w**2).sum()
    )
    loss.backward()
    assert float(torch.linalg.vector_norm(w.grad)) < 1e-3


def test_within_problem_features_keep_only_what_tells_a_problems_rows_apart() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(12, 3))
    g = np.repeat([0, 1, 2], 4)
    Z = tv.within_problem(X, g)
    for k in range(3):
        np.testing.assert_allclose(Z[g == k].mean(0), X.mean(0))
        np.testing.assert_allclose(np.diff(Z[g == k], axis=0), np.diff(X[g == k], axis=0))


def test_a_head_fit_within_problems_ranks_a_problems_samples_by_their_own_signal() -> None:
    """Problem difficulty (feature 0, plus noise that means nothing) decides most outcomes; in a
    few problems the samples' own signal (feature 1) does. A head fit on all rows leans on
    feature 0 and ranks those problems' samples by its noise; one fit within problems does not."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(60), 8)
    difficulty = rng.normal(size=60)[g] * 3
    signal = rng.normal(size=len(g))
    mixed = np.isin(g, np.arange(0, 60, 6))
    y = np.where(mixed, signal > 0, difficulty > 0).astype(np.float32)
    X = np.stack([difficulty + rng.normal(size=len(g)), 0.3 * signal], 1).astype(np.float32)

    def pair_auc(head: tv.Head) -> float:
        s = head.logits(X)
        k_mixed = np.arange(0, 60, 6)
        return np.mean(
            [a > b for k in k_mixed for a in s[(g == k) & (y == 1)] for b in s[(g == k) & (y == 0)]]
        )

    assert pair_auc(tv.fit(X, y, g, hidden=0, wd=1e-4, within=True)) > 0.9
    assert pair_auc(tv.fit(X, y, g, hidden=0, wd=1e-4)) < 0.8


def test_step_labels_follow_the_first_error() -> None:
    assert label_steps.step_labels(5, [3, 4]) == [1, 1, 0, 0, 0]
    assert label_steps.step_labels(3, []) == [1, 1, 1]


def test_prmbench_items_keep_one_original_per_problem(tmp_path: Path) -> None:
    rows = [
        {
            "idx": "a",
            "classification": c,
            "original_question": "q",
            "original_process": ["x", "y"],
            "modified_process": ["x", "z"],
            "error_steps": [2],
        }
        for c in ("circular", "deception")
    ]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = label_steps.prmbench_items([str(f)])
    assert [i["key"] for i in items] == ["a-original", "a-circular", "a-deception"]
    assert items[1]["error_steps"] == [2]


def test_a_prmbench_item_whose_first_error_is_past_its_steps_is_left_out(tmp_path: Path) -> None:
    """Tools review: prm_train_p1_51-confidence names step 34 of 33 and was labelled all right."""
    row = {"idx": "a", "original_question": "q", "original_process": ["x"], "modified_process": ["x", "z"]}
    f = tmp_path / "p.jsonl"
    f.write_text(
        json.dumps({**row, "classification": "past", "error_steps": [3]})
        + "\n"
        + json.dumps({**row, "classification": "zero", "error_steps": [0]})
        + "\n"
        + json.dumps({**row, "classification": "empty", "modified_process": ["x", " "], "error_steps": [2]})
        + "\n"
    )
    assert [i["key"] for i in label_steps.prmbench_items([str(f)])] == ["a-original"]


def test_prmbench_items_of_a_split_leave_the_other_splits_problems_out(tmp_path: Path) -> None:
    from build_prm_data import DEV_FRAC, TEST_FRAC, split_of

    ids = [f"prm_train_p1_{k}" for k in range(40)]
    rows = [
        {
            "idx": idx,
            "classification": "circular",
            "original_question": "q",
            "original_process": ["x", "y"],
            "modified_process": ["x", "z"],
            "error_steps": [2],
        }
        for idx in ids
    ]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = {idx: split_of(idx, DEV_FRAC, TEST_FRAC) for idx in ids}
    assert set(splits.values()) == {"train", "dev", "test"}  # the test sees every split
    for split in ("train", "dev", "test"):
        kept = {i["idx"] for i in label_steps.prmbench_items([str(f)], split)}
        assert kept == {idx for idx in ids if splits[idx] == split}
    assert len(label_steps.prmbench_items([str(f)])) == 2 * len(ids)


def test_rollout_targets_alternate_wrong_and_right() -> None:
    row = {
        "candidates": [
            {"correct": True, "answer": "1"},
            {"correct": True, "answer": "1"},
            {"correct": False, "answer": "2"},
            {"correct": False, "answer": None},
        ]
    }
    picked = [i for _, i, _ in label_steps.rollout_targets([row], per_problem=3)]
    assert picked == [2, 0, 1]  # an unparsed wrong sample says nothing about steps


def test_step_auc_counts_ties_half_and_matches_pair_counting() -> None:
    rng = np.random.default_rng(4)
    s = np.round(rng.random(60), 1)
    y = (rng.random(60) > 0.5).astype(float)
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a in s[y == 1] for b in s[y == 0]]
    assert tv.step_auc(s, y) == pytest.approx(100 * np.mean(pairs))
    assert tv.first_error(np.array([1, 1, 0, 1.0])) == 2 and tv.first_error(np.ones(3)) == -1


def test_kept_states_carry_token_confidence(tmp_path: Path) -> None:
    from edgetts.probe import load_states, save_states

    rng = np.random.default_rng(5)
    paths = [conf_path(rng, 2), conf_path(rng, 3)]
    save_states(tmp_path / "s.npz", paths)
    back = load_states(tmp_path / "s.npz")
    for a, b in zip(paths, back, strict=True):
        assert b.step_token_ends == a.step_token_ends
        np.testing.assert_allclose(np.array(b.token_stats), np.array(a.token_stats), rtol=1e-6)
    # without confidence recorded, none is invented
    save_states(tmp_path / "t.npz", [SolutionPath(steps=["a"], step_states=[np.zeros(WIDTH, np.float32)])])
    assert load_states(tmp_path / "t.npz")[0].step_token_ends == []


class PrefixPolicy:
    """Stands in for LlamaPolicy in mc_labels: continuations depend on the prefix's length."""

    def __init__(self) -> None:
        self.prefixes: list[list[str]] = []
        self.batches: list[int] = []  # prefixes per extend

    def path_from(self, question: str, steps: list[str]) -> SolutionPath:
        self.prefixes.append(list(steps))
        return SolutionPath(steps=list(steps))

    def extend(self, paths: list[SolutionPath], n_each: int, to_end: bool = False) -> list[SolutionPath]:
        self.batches.append(len(paths))
        children = []
        for p in paths:  # children come per parent, in the parents' order (as LlamaPolicy's)
            # after one step, every other rollout ends right; after two, all of them
            right = [i % 2 == 0 for i in range(n_each)] if len(p.steps) == 1 else [True] * n_each
            children += [
                SolutionPath(steps=[*p.steps, f"\\boxed{{{7 if ok else 8}}}"], finished=True) for ok in right
            ]
        return children

    def release(self, paths: list[SolutionPath]) -> None:
        pass


def test_mc_labels_are_the_share_of_rollouts_that_end_right() -> None:
    policy = PrefixPolicy()
    steps = ["a\n\n", "b\n\n", "so \\boxed{8}"]
    labels = label_steps.mc_labels(policy, "q", steps, "7", k=4)
    assert labels == [0.5, 1.0, 0.0]  # the last step's label is the sample's own (wrong) outcome
    assert policy.prefixes == [steps[:1], steps[:2]]
    assert policy.batches == [1, 1]  # by default one prefix's rollouts at a time


@pytest.mark.parametrize("per_batch", [2, 3, 16])
def test_mc_labels_batch_prefixes_without_mixing_their_rollouts(per_batch: int) -> None:
    policy = PrefixPolicy()
    steps = ["a\n\n", "b\n\n", "c\n\n", "so \\boxed{8}"]
    labels = label_steps.mc_labels(policy, "q", steps, "7", k=4, per_batch=per_batch)
    assert labels == [0.5, 1.0, 1.0, 0.0]
    assert policy.prefixes == [steps[:1], steps[:2], steps[:3]]
    assert policy.batches == {2: [2, 1], 3: [3], 16: [3]}[per_batch]


def test_kept_solutions_read_each_source_in_the_order_its_states_were_saved() -> None:
    questions = {"3": "q3"}
    items = {"7-original": {"question": "p7", "steps": ["x", " ", "y "]}}
    sample = {"source": "sample", "id": 3, "candidates": [{"text": "a\n\nb"}, {"text": "c"}]}
    rollout = {"source": "rollout", "id": "3", "text": "d\n\ne\n\nf"}
    prmbench = {"source": "prmbench", "key": "7-original"}
    assert label_steps.kept_solutions(sample, questions, items) == [("q3", ["a", "b"]), ("q3", ["c"])]
    assert label_steps.kept_solutions(rollout, questions, items) == [("q3", ["d", "e", "f"])]
    assert label_steps.kept_solutions(prmbench, questions, items) == [("p7", ["x", "y"])]
    assert label_steps.step_counts({"source": "sample", "candidates": [{"step_stats": [[0]] * 2}]}) == [2]


def test_restore_limit_takes_the_first_problems_by_number_not_by_key() -> None:
    rows = [{"dataset": "g", "id": i, "key": f"g-{i}"} for i in (10, 2, 1, 30)]
    rows.append({"dataset": "p", "key": "p-x"})  # PRMBench rows: no numeric id
    assert [r["key"] for r in sorted(rows, key=label_steps.problem_order)] == [
        "g-1",
        "g-2",
        "g-10",
        "g-30",
        "p-x",
    ]


def test_restore_refuses_rows_whose_question_it_cannot_find(tmp_path: Path) -> None:
    import gzip

    packed = tmp_path / "rows.jsonl.gz"
    with gzip.open(packed, "wt") as f:
        f.write(json.dumps({"key": "d-99", "source": "sample", "id": "99", "layers": [-1], "candidates": []}))
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "1", "question": "q", "answer": "1"}) + "\n")
    sys_argv = ["label_steps.py", "restore", str(packed), "--data", str(data), "--out", str(tmp_path / "out")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", sys_argv)
        with pytest.raises(SystemExit, match="1 rows have no question .*first: d-99"):
            label_steps.main()
    assert not (tmp_path / "out").exists()  # nothing written, no model loaded


@pytest.mark.slow
def test_restored_rows_get_states_a_prefill_recomputes(tmp_path: Path) -> None:
    """A committed MAWPS row, cut to two samples, restored on the real policy: the row is kept as
    committed and each sample's states line up with its recorded step statistics."""
    import gzip

    repo = Path(__file__).resolve().parent.parent
    with gzip.open(repo / "data/labels/mawps.jsonl.gz", "rt") as f:
        row = json.loads(f.readline())
    row["candidates"] = row["candidates"][:2]
    packed = tmp_path / "rows.jsonl.gz"
    with gzip.open(packed, "wt") as f:
        f.write(json.dumps(row) + "\n")
    data = repo.parent / "shared/data/mawps.jsonl"
    if not data.is_file():
        pytest.skip(f"{data} is not on this machine")
    out = tmp_path / "out"
    argv = ["label_steps.py", "restore", str(packed), "--data", str(data), "--out", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", argv)
        label_steps.main()
    (written,) = [json.loads(line) for line in (out / "results.jsonl").open()]
    assert written == row
    from edgetts.probe import load_states

    paths = load_states(out / "states" / f"{row['key']}.npz")
    assert [len(p.step_states) for p in paths] == label_steps.step_counts(row)
    recorded = np.array([s for c in row["candidates"] for s in c["step_stats"]])
    recomputed = np.array([s for p in paths for s in step_features(p.token_stats, p.step_token_ends)])
    # The same tokens (log length exact); their statistics move only by batch rounding (on a
    # GSM8K row: medians 0.001-0.03, the largest 0.15 on one step's least likely token).
    diff = np.abs(recorded - recomputed)
    assert diff[:, STEP_FEATURES.index("log_tokens")].max() < 1e-3
    assert np.median(diff) < 0.05 and diff.max() < 0.5


def labelled_solutions(rng: np.random.Generator, groups: range, informative: bool) -> list[tv.Solution]:
    """Solutions whose first error (if any) shows in state feature 0 when ``informative``."""
    sols = []
    for g in groups:
        n = 6
        first = int(rng.integers(1, n)) if g % 2 else n  # half the solutions are right throughout
        labels = np.array([1.0 if i < first else 0.0 for i in range(n)], dtype=np.float32)
        states = rng.normal(size=(n, 4 * WIDTH)).astype(np.float32)
        if informative:
            states[:, 0] += 4 * (labels - 0.5)
        stats = np.zeros((n, len(STEP_FEATURES)), np.float32)
        sols.append(tv.Solution(str(g), "prmbench", states, stats, labels, [f"step {i}" for i in range(n)]))
    return sols


def test_a_step_head_is_judged_on_other_problems_with_a_threshold_from_dev() -> None:
    pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    captured, layers = [6, 12, 18, -1], [12, -1]  # feature 0 is block 6's: a head on 12, -1 misses it
    train = labelled_solutions(rng, range(0, 60), True)
    dev, test = labelled_solutions(rng, range(60, 80), True), labelled_solutions(rng, range(80, 100), True)
    head = tv.fit(*tv.design(train, captured, [6], False), hidden=0, wd=1e-3)
    got = tv.step_heldout(head, dev, test, captured, [6], False)
    assert got["test"]["step_auc"] > 90 and got["test"]["f1"] > 60
    assert 0 < got["threshold"] < 1
    blind = tv.fit(*tv.design(train, captured, layers, False), hidden=0, wd=1e-3)
    assert tv.step_heldout(blind, dev, test, captured, layers, False)["test"]["step_auc"] < 75


def test_a_blend_of_two_linear_heads_averages_their_logits_and_reads_back_from_onnx(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    shipped = tv.Head(rng.normal(size=(WIDTH, 1)).astype(np.float32), np.array([0.3], np.float32))
    tv.export_head(shipped, tmp_path / "shipped", manifest(WIDTH))
    other = tv.read_head(str(tmp_path / "shipped"))
    fitted = tv.Head(rng.normal(size=(WIDTH, 1)).astype(np.float32), np.array([-1.0], np.float32))
    X = rng.normal(size=(5, WIDTH)).astype(np.float32)
    blended = tv.Blend(other, 0.25)(fitted)
    np.testing.assert_allclose(
        blended.logits(X), 0.25 * fitted.logits(X) + 0.75 * shipped.logits(X), atol=1e-5
    )
    np.testing.assert_allclose(tv.Blend(other, 0.0)(fitted).logits(X), shipped.logits(X), atol=1e-6)


def test_confidence_features_alone_take_no_state_columns() -> None:
    rng = np.random.default_rng(8)
    (sol,) = labelled_solutions(rng, range(1), True)
    sol.stats[:] = 1.0
    X = tv.features(sol, [6, 12, 18, -1], [], True)
    assert X.shape == (len(sol.labels), len(STEP_FEATURES)) and (X == 1.0).all()


def test_near_copies_of_held_out_problems_are_found_by_their_words_not_numbers():
    held = [
        "Joan found 70 seashells on the beach. She gave Sam some. She has 27 left. How many did she give?"
    ]
    twin = "Joan found 12 seashells on the beach. She gave Sam some. She has 5 left. How many did she give?"
    other = "A train travels 60 miles per hour for 3 hours. How far does it go?"
    assert label_steps.near_copies([twin, other], held) == [True, False]
    assert label_steps.near_copies([other], []) == [False]


def test_held_out_specs_take_the_first_k_problems(tmp_path):
    f = tmp_path / "mawps.jsonl"
    rows = [
        {"input": f"Question number {w}?", "target": i, "idx": i}
        for i, w in enumerate(["one", "two", "three"])
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert label_steps.held_out_questions([f"{f}:2"]) == ["Question number one?", "Question number two?"]
    with pytest.raises(SystemExit, match="FILE:K"):
        label_steps.held_out_questions([str(f)])


def test_a_learning_curves_subsets_are_seeded_and_nested() -> None:
    rows = [tv.EvalRow(row={"id": i}, solutions=[]) for i in range(10)]
    ids = lambda k, seed=0: [r.row["id"] for r in tv.subset_problems(rows, k, seed)]  # noqa: E731
    assert ids(None) == list(range(10))
    assert ids(4) == ids(4) and ids(4) == sorted(ids(4))
    assert set(ids(4)) < set(ids(7)) < set(ids(10))
    assert ids(4, seed=1) != ids(4, seed=0)
    with pytest.raises(SystemExit, match="hold 10 problems"):
        tv.subset_problems(rows, 11, 0)
