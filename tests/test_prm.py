"""PRM runtime tests: real onnxruntime sessions on the shipped model and on bad PRM directories."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetts.prm import PRMError, PRMScorer, default_text_prm
from edgetts.search.base import SolutionPath, StepScorer

TOOLS = Path(__file__).resolve().parent.parent / "tools"

QUESTION = (
    "Tom buys 4 boxes of pencils. Each box has 12 pencils. He gives 10 pencils to his "
    "sister. How many pencils does Tom have left?"
)
GOOD = [
    "Tom buys 4 boxes with 12 pencils each, so he has 4 * 12 = 48 pencils.",
    "He gives 10 pencils away, so he has 48 - 10 = 38 pencils left.",
    "The answer is 38.",
]
BAD = [
    "Tom buys 4 boxes with 12 pencils each, so he has 4 * 12 = 52 pencils.",
    "He gives 10 pencils away, so he has 52 - 10 = 42 pencils left.",
    "The answer is 42.",
]


@pytest.fixture(scope="module")
def scorer() -> PRMScorer:
    return PRMScorer.load(threads=1)


def copy_prm(tmp_path: Path) -> Path:
    d = tmp_path / "prm"
    shutil.copytree(default_text_prm(), d)
    return d


def edit_manifest(d: Path, **changes: object) -> None:
    m = json.loads((d / "manifest.json").read_text())
    for k, v in changes.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    (d / "manifest.json").write_text(json.dumps(m))


def test_shipped_model_is_small_and_complete() -> None:
    for f in ("manifest.json", "model.onnx", "tokenizer.json"):
        assert (default_text_prm() / f).is_file(), f
    assert (default_text_prm() / "model.onnx").stat().st_size < 50 * 2**20


def test_ranks_correct_above_corrupted(scorer: PRMScorer) -> None:
    # The shipped configuration (neural PRM + the manifest's calculator check) ranks the
    # corrupted solution below the correct one, at the corrupted step.
    good, bad = scorer.score_steps(QUESTION, [GOOD, BAD])
    assert len(good) == len(GOOD) and len(bad) == len(BAD)
    assert all(0.0 <= s <= 1.0 for s in good + bad)
    assert min(good) > min(bad)
    assert good[0] > bad[0]  # the corrupted first step itself scores lower
    # Note: the neural part alone does not separate this arithmetic slip reliably (its last-step
    # scores for the two paths are within 0.001); the calculator check does the work here.


def test_step_scorer_protocol_and_counters(scorer: PRMScorer) -> None:
    assert isinstance(scorer, StepScorer)
    before = scorer.counters.steps_scored
    calls = scorer.counters.calls
    out = scorer.score(QUESTION, [SolutionPath(steps=[s + "\n\n" for s in GOOD]), SolutionPath(steps=[])])
    assert out[1] == []
    assert np.allclose(out[0], scorer.score_steps(QUESTION, [GOOD])[0], atol=1e-6)
    assert scorer.counters.steps_scored == before + 2 * len(GOOD)
    assert scorer.counters.calls == calls + 2
    assert scorer.counters.seconds > 0


def test_empty_inputs(scorer: PRMScorer) -> None:
    assert scorer.score_steps(QUESTION, []) == []
    assert scorer.score_steps(QUESTION, [[], []]) == [[], []]
    assert len(scorer.score_steps("", [["just one step"]])[0]) == 1


def test_loaded_scorer_holds_the_batch_the_scheduler_counts(scorer: PRMScorer) -> None:
    """Seen: PRMScorer.load batched 16 windows (about 1.6 GB of activations) where no plan bounded
    it (a server started without --memory-mb), while /health and the plan counted one."""
    from edgetts import scheduler

    weights_mb = (scorer.directory / scorer.manifest.model_file).stat().st_size / scheduler.MB
    counted_mb = scheduler.prm_cost(scorer.directory).memory_mb - scheduler.PRM_RUNTIME_MB - weights_mb
    assert scorer.batch_size * scheduler.PRM_WINDOW_MB <= counted_mb + 5  # weights: estimated


def test_batching_does_not_change_scores(scorer: PRMScorer) -> None:
    together = scorer.with_batch_size(16).score_steps(QUESTION, [GOOD, BAD, GOOD[:1]])
    alone = [scorer.score_steps(QUESTION, [p])[0] for p in (GOOD, BAD, GOOD[:1])]
    # int8 dynamic quantization scales activations per batch, so batch-mates move scores a bit.
    tol = 0.08 if scorer.manifest.extra.get("precision") == "int8-dynamic" else 1e-4
    for a, b in zip(together, alone, strict=True):
        assert np.allclose(a, b, atol=tol)


def test_long_inputs_are_truncated_not_rejected(scorer: PRMScorer) -> None:
    long_q = "How many? " * 400
    steps = [f"Step {i}: we add {i} and {i} to get {2 * i}." for i in range(120)]
    steps.append("word " * 2000)  # one step longer than max_length
    (scores,) = scorer.score_steps(long_q, [steps])
    assert len(scores) == len(steps)
    assert all(0.0 <= s <= 1.0 for s in scores)
    windows = scorer.builder.windows(long_q, steps)
    assert len(windows) > 1
    assert all(len(w.ids) <= scorer.manifest.max_length for w in windows)
    # The first window holds the latest steps.
    assert windows[0].step_indices[-1] == len(steps) - 1


def test_missing_dir_and_files(tmp_path: Path) -> None:
    with pytest.raises(PRMError, match="not found"):
        PRMScorer.load(tmp_path / "nope")
    d = copy_prm(tmp_path)
    (d / "model.onnx").unlink()
    with pytest.raises(PRMError, match=r"model\.onnx"):
        PRMScorer.load(d)


def test_truncated_onnx(tmp_path: Path) -> None:
    d = copy_prm(tmp_path)
    data = (d / "model.onnx").read_bytes()
    (d / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(PRMError, match="does not load"):
        PRMScorer.load(d)


def test_manifest_missing_field(tmp_path: Path) -> None:
    d = copy_prm(tmp_path)
    edit_manifest(d, output=None)
    with pytest.raises(PRMError, match="missing field.*output"):
        PRMScorer.load(d)


def test_manifest_bad_json_and_values(tmp_path: Path) -> None:
    d = copy_prm(tmp_path)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(PRMError, match="not valid JSON"):
        PRMScorer.load(d)
    d2 = copy_prm(tmp_path / "b")
    edit_manifest(d2, output={"name": "logits", "kind": "probability"})
    with pytest.raises(PRMError, match="output.kind"):
        PRMScorer.load(d2)
    d3 = copy_prm(tmp_path / "c")
    assert PRMScorer.load(d3).prune_below is None  # the shipped text PRM does not prune
    assert PRMScorer.load(d3).adaptive_threshold is None  # nor has it a weighted vote's threshold
    edit_manifest(d3, prune_below=2)
    with pytest.raises(PRMError, match="prune_below"):
        PRMScorer.load(d3)
    d4 = copy_prm(tmp_path / "d")
    edit_manifest(d4, adaptive_threshold=0.3)
    with pytest.raises(PRMError, match="adaptive_threshold"):
        PRMScorer.load(d4)
    edit_manifest(d4, adaptive_threshold=0.9)
    assert PRMScorer.load(d4).adaptive_threshold == 0.9
    for bad, field in (  # seen in review: each loaded, and failed at the first step scored or never
        ({"tokenizer_file": "../../tokenizer.json"}, "inside the PRM's folder"),
        ({"max_step_tokens": "160"}, "max_step_tokens"),
        ({"max_question_tokens": -1}, "max_question_tokens"),
        ({"calculator_cap": "0.05"}, "calculator_cap"),
        ({"threshold": -3}, "threshold"),
    ):
        d5 = copy_prm(tmp_path / f"e-{field[:8]}-{len(str(bad))}")
        edit_manifest(d5, **bad)
        with pytest.raises(PRMError, match=field):
            PRMScorer.load(d5)


def test_manifest_disagrees_with_graph(tmp_path: Path) -> None:
    d = copy_prm(tmp_path)
    edit_manifest(d, output={"name": "scores", "kind": "logit"})
    with pytest.raises(PRMError, match="'scores' is not a graph output"):
        PRMScorer.load(d)
    edit_manifest(
        d, output={"name": "logits", "kind": "label_softmax", "positive_index": 1, "negative_index": 0}
    )
    with pytest.raises(PRMError, match="rank 2; kind 'label_softmax'"):
        PRMScorer.load(d)
    edit_manifest(
        d,
        output={"name": "logits", "kind": "logit"},
        inputs={"input_ids": "input_ids", "attention_mask": "attention_mask"},
    )
    with pytest.raises(PRMError, match=r"\['token_type_ids'\] are not named"):
        PRMScorer.load(d)


def test_bad_tokenizer_and_step_tag(tmp_path: Path) -> None:
    d = copy_prm(tmp_path)
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": 3}')
    with pytest.raises(PRMError, match="tokenizer file does not load"):
        PRMScorer.load(d)
    d2 = copy_prm(tmp_path / "b")
    edit_manifest(d2, step_tag="<no-such-token>")
    with pytest.raises(PRMError, match="step tag"):
        PRMScorer.load(d2)


def test_contract_rejects_wrong_graph(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    # A graph with a float input of rank 3 and a differently named output.
    x = helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, ["b", "t", 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "t", 4])
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["out"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    d = copy_prm(tmp_path)
    onnx.save(model, str(d / "model.onnx"))
    edit_manifest(d, inputs={"input_ids": "input_ids"})
    with pytest.raises(PRMError) as e:
        PRMScorer.load(d)
    msg = str(e.value)
    assert "tensor(float)" in msg and "rank 3" in msg and "'logits' is not a graph output" in msg


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qwen-prm", "math-shepherd"])
def test_tiny_public_prm_export_parity(tmp_path: Path, kind: str) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnx")
    sys.path.insert(0, str(TOOLS))
    import export_public_prm

    res = export_public_prm.run(kind, tmp_path / kind, tiny=True)
    assert res["max_abs_output_diff"] < 1e-4
    assert res["max_abs_score_diff"] < 1e-5
    scorer = PRMScorer.load(tmp_path / kind)
    assert scorer.manifest.output["kind"] == "label_softmax"
    out = scorer.score_steps("Find the total .", [["4 times 3 equals 12 ."], []])
    assert len(out[0]) == 1 and out[1] == []


def test_calculator_check_caps_wrong_arithmetic(tmp_path: Path) -> None:
    d = copy_prm(tmp_path)
    edit_manifest(d, calculator_check=True, calculator_cap=0.01)
    s = PRMScorer.load(d, threads=1)
    good, bad = s.score_steps(QUESTION, [GOOD, BAD])
    assert bad[0] <= 0.01 and good[0] > 0.01


BOTH = ["CUDAExecutionProvider", "CPUExecutionProvider"]
CPU = ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    "available, use_cuda, env, expected",
    [
        (BOTH, None, "", BOTH),
        (BOTH, None, "cpu", CPU),
        (BOTH, False, "cuda", CPU),  # an explicit argument wins over the environment
        (CPU, None, "auto", CPU),
        (CPU, True, "", CPU),
    ],
)
def test_prm_picks_cuda_when_onnxruntime_offers_it(monkeypatch, available, use_cuda, env, expected):
    from edgetts.prm import choose_providers

    monkeypatch.setenv("EDGETTS_PRM_DEVICE", env)
    assert choose_providers(available, use_cuda) == expected


def test_prm_device_cuda_without_the_provider_is_an_error(monkeypatch):
    from edgetts.prm import choose_providers

    monkeypatch.setenv("EDGETTS_PRM_DEVICE", "cuda")
    with pytest.raises(PRMError, match="no CUDA provider"):
        choose_providers(["CPUExecutionProvider"], None)
    monkeypatch.setenv("EDGETTS_PRM_DEVICE", "gpu0")
    with pytest.raises(PRMError, match="auto, cpu or cuda"):
        choose_providers(["CPUExecutionProvider"], None)


def test_concurrent_searches_score_one_batch_at_a_time(scorer: PRMScorer) -> None:
    """The scheduler counts one batch of windows' activations for the PRM: searches sharing it
    on several threads must not each hold their own."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    real = scorer.session
    running, most = 0, 0
    count = threading.Lock()

    class Watched:  # the real session, counting the runs in flight
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def run(self, *args: object, **kwargs: object) -> object:
            nonlocal running, most
            with count:
                running += 1
                most = max(most, running)
            try:
                return real.run(*args, **kwargs)
            finally:
                with count:
                    running -= 1

    views = [scorer.with_own_counters().with_batch_size(1) for _ in range(4)]
    for view in views:
        view.session = Watched()
    with ThreadPoolExecutor(4) as pool:
        scores = list(pool.map(lambda v: v.score_steps(QUESTION, [GOOD, BAD, GOOD]), views))
    assert most == 1
    assert all(s == scores[0] for s in scores)
    assert all(v.counters.steps_scored == 9 for v in views)


def test_special_token_names_in_the_text_are_plain_text(scorer: PRMScorer) -> None:
    """Seen in review: "[SEP]" in a question or step became the real separator, reshaping the
    window the PRM reads; only the manifest's own template may place special tokens."""
    special = {scorer.builder.tok.token_to_id(t) for t in ("[CLS]", "[SEP]")}
    plain = scorer.builder.windows("What is 2 plus 3?", ["Step one x."])[0]
    tricky = scorer.builder.windows("What is 2 [SEP] 3?", ["Step one [CLS] x. [SEP]"])[0]
    assert sum(i in special for i in tricky.ids) == sum(i in special for i in plain.ids) == 3
