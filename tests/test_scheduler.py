"""Memory model, calibration files and plans (fast); estimate vs measured peak RSS (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from types import SimpleNamespace

import pytest

from edgetts import calibration as calib
from edgetts import scheduler
from edgetts.metadata import ModelMetadata, read_metadata
from edgetts.scheduler import Budget, PlanError, estimate_memory, kv_mb, make_plan, peak_rss_mb

# Shaped like Qwen2.5-0.5B Q4_K_M (the default policy).
META = ModelMetadata(
    path="/nonexistent/qwen.gguf",
    architecture="qwen2",
    name="q",
    n_layers=24,
    n_ctx_train=32768,
    n_embd=896,
    n_head=14,
    n_head_kv=2,
    head_dim_k=64,
    head_dim_v=64,
    n_params=630_167_424,
    weights_bytes=485_452_288,
    file_bytes=491_400_064,
    chat_template=None,
    sliding_window=None,
    swa_layers=0,
    n_vocab=151_936,
)
# The shipped text PRM's cost (22.6 MB of initializers): runtime + weights + one window.
TEXT_PRM = scheduler.PrmCost("prm-minilm", 52.0 + 22_607_241 / 2**20 + 100.0, 40.0)


def cal(decode=None, prefill=200.0, prm=150.0) -> calib.Calibration:
    decode = decode or {1: 10.0, 4: 25.0, 16: 40.0, 32: 45.0}
    return calib.Calibration(
        model_key=calib.model_key(META),
        machine_id="m",
        n_threads=1,
        prefill_tok_s=prefill,
        decode_tok_s=decode,
        prm_steps_s=prm,
    )


def plan(budget: Budget, c: calib.Calibration | None = None, **kw):
    return make_plan(META, budget, c or cal(), prm=kw.pop("prm", TEXT_PRM), **kw)


def test_kv_is_padded_and_q8_is_about_half():
    per_token = 24 * 2 * (64 + 64) * 2  # layers x KV heads x (K + V) x f16
    assert kv_mb(META, 1000, "f16") == pytest.approx(per_token * 1024 / 2**20)
    assert kv_mb(META, 1024, "q8_0") / kv_mb(META, 1024, "f16") == pytest.approx(34 / 64)


def test_memory_parts_add_up_and_gpu_moves_weights_off_the_host():
    cpu = estimate_memory(META, 9216, 16, "f16", 0, TEXT_PRM.memory_mb)
    assert cpu.total_mb == pytest.approx(
        cpu.runtime_mb + cpu.weights_mb + cpu.kv_mb + cpu.compute_mb + cpu.prm_mb
    )
    assert cpu.weights_mb == pytest.approx(META.weights_bytes / 2**20)
    assert cpu.prm_mb > 100 and cpu.gpu_mb == 0
    gpu = estimate_memory(META, 9216, 16, "f16", META.n_layers + 1, TEXT_PRM.memory_mb)
    assert gpu.weights_mb == 0 and gpu.kv_mb == 0 and gpu.gpu_mb > 500
    assert gpu.total_mb < cpu.total_mb
    assert "PRM" in cpu.describe() and "GPU" in gpu.describe()
    every = estimate_memory(META, 9216, 16, "f16", -1, TEXT_PRM.memory_mb)  # -1: all
    assert every == gpu


def test_vocab_size_from_header(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETTS_HOME", str(tmp_path / "home"))  # its metadata cache
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.name", "tiny")
    writer.add_array("tokenizer.ggml.scores", [0.5] * 7)
    writer.add_token_list([f"t{i}" for i in range(11)])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert read_metadata(path).n_vocab == 11


def test_larger_budgets_buy_more_compute():
    tight = plan(Budget(memory_mb=700, deadline_s=30, max_tokens=256))
    medium = plan(Budget(memory_mb=1000, deadline_s=120, max_tokens=256))
    generous = plan(Budget(memory_mb=4000, deadline_s=1000, max_tokens=256))
    assert tight.n <= medium.n <= generous.n
    assert generous.n == 32
    for p, mb in ((tight, 700), (medium, 1000), (generous, 4000)):
        assert p.predicted_memory_mb <= mb
    assert not tight.use_prm  # 700 MB holds the policy but not the PRM as well
    assert "agreement" in tight.explain()


def test_deadline_bounds_predicted_time():
    p = plan(Budget(deadline_s=60, max_tokens=256, strategy="weighted_best_of_n"))
    assert p.predicted_s <= 60
    bigger = plan(Budget(deadline_s=600, max_tokens=256, strategy="weighted_best_of_n"))
    assert bigger.n > p.n


def test_a_requests_own_token_limit_buys_more_samples_in_the_same_context():
    """Seen in review: a request's max_tokens of 64 on a 512-token policy was planned as 512
    tokens a solution, so a deadline bought N = 1 where N = 32 had time."""
    budget = Budget(deadline_s=60, max_tokens=512, strategy="majority")
    whole, short = plan(budget), plan(replace(budget, answer_max_tokens=64))
    assert short.n > whole.n and short.predicted_s <= 60 and short.max_tokens == 64
    assert short.n_ctx == plan(replace(budget, n=short.n)).n_ctx  # sized for the policy's limit


def test_tight_memory_picks_q8_then_waves():
    full = plan(Budget(memory_mb=10_000, n=32, strategy="majority", max_tokens=1024))
    assert (full.kv_type, full.n_seq_max) == ("f16", 32)
    budget_mb = full.predicted_memory_mb - 100  # f16 with 32 slots no longer fits
    squeezed = plan(Budget(memory_mb=budget_mb, n=32, strategy="majority", max_tokens=1024))
    assert squeezed.kv_type == "q8_0" and squeezed.n_seq_max == 32
    waves = plan(Budget(memory_mb=800, n=32, strategy="majority", max_tokens=1024))
    assert waves.n_seq_max < 32 and "waves" in waves.explain()


def test_parked_paths_are_counted_only_when_paths_outnumber_the_slots():
    all_at_once = plan(Budget(n=16, strategy="beam_search", max_tokens=400))
    assert all_at_once.n_seq_max == 16 and all_at_once.park_mb == 0
    assert all_at_once.memory.park_mb == 0 and "parked" not in all_at_once.memory.describe()
    per_token = 24 * 2 * (64 + 64) * 2  # the path's own cells only: the template has the prompt
    expected = 48 * scheduler.EXPECTED_TOKEN_SHARE * 400 * per_token / 2**20
    assert scheduler.park_mb(META, 64, 16, 400, "f16") == pytest.approx(expected)
    assert scheduler.park_mb(META, 64, 16, 400, "f16", limit_mb=10) == 10  # PolicyConfig.park_mb caps it
    # A tight budget: the plan runs 32 beams in waves and counts what parking them takes.
    waves = plan(Budget(memory_mb=1000, n=32, strategy="beam_search", max_tokens=1024))
    assert waves.n_seq_max < 32 and waves.park_mb > 0 and "parked in" in waves.explain()
    assert waves.memory.park_mb == pytest.approx(waves.park_mb, abs=0.1)
    assert waves.predicted_memory_mb <= 1000 and "parked" in waves.memory.describe()
    unparked = estimate_memory(META, waves.n_ctx, waves.n_seq_max, waves.kv_type, 0, TEXT_PRM.memory_mb)
    assert waves.memory.total_mb == pytest.approx(unparked.total_mb + waves.memory.park_mb)
    # Samples run to their end and free their slot: never parked, nothing counted.
    samples = plan(Budget(memory_mb=800, n=32, strategy="majority", max_tokens=1024))
    assert samples.n_seq_max < 32 and samples.park_mb == 0 and samples.memory.park_mb == 0


def test_pinned_settings_are_kept():
    p = plan(Budget(memory_mb=4000, kv_type="q8_0", n_gpu_layers=0, n_threads=3), gpu_offload=True)
    assert (p.kv_type, p.n_gpu_layers, p.n_threads) == ("q8_0", 0, 3)
    assert plan(Budget(memory_mb=4000), gpu_offload=True).n_gpu_layers == META.n_layers + 1


def test_concurrent_searches_each_get_their_prompt_and_slots_in_the_plan():
    """A policy shared by 4 searches holds 4 prompts' KV cells and sequences and each search's
    slots (seen in review: 4 searches were given one search's slots and ran in waves): the
    plan's context, memory and time count them, and under a budget that fits one search's
    slots each of the four takes fewer."""
    budget = Budget(memory_mb=4000, n=16, strategy="majority", kv_type="f16", max_tokens=512)
    one, four = plan(budget), plan(replace(budget, searches=4))
    assert (one.n_seq_max, four.n_seq_max) == (16, 64)
    assert four.n_ctx - one.n_ctx == 3 * budget.max_prompt_tokens + 48 * budget.max_tokens
    extra_kv = kv_mb(META, four.n_ctx, "f16") - kv_mb(META, one.n_ctx, "f16")
    assert four.predicted_memory_mb - one.predicted_memory_mb == pytest.approx(
        extra_kv + scheduler.SEQ_BYTES_PER_VOCAB * META.n_vocab * (3 + 48) / 2**20, abs=0.2
    )
    assert four.predicted_s > one.predicted_s  # four searches' tokens on the same machine
    tight = plan(replace(budget, memory_mb=one.predicted_memory_mb + 1, searches=4))
    assert tight.n_seq_max % 4 == 0 and tight.n_seq_max < four.n_seq_max
    assert tight.predicted_memory_mb <= one.predicted_memory_mb + 1


def test_all_layers_offloaded_is_accounted_in_the_plan():
    """-1 (every layer, as llama.cpp reads it) moves weights and KV off the host like a full count,
    so a budget that only fits with offload gets a plan with -1, and a CPU plan would not fit."""
    budget = Budget(memory_mb=4000, n=16, strategy="majority", kv_type="f16")
    every, full, none = (
        plan(replace(budget, n_gpu_layers=k), gpu_offload=True) for k in (-1, META.n_layers + 1, 0)
    )
    assert every.n_gpu_layers == -1
    assert every.memory == full.memory and every.memory.weights_mb == 0 and every.memory.kv_mb == 0
    assert every.memory.gpu_mb > 300 and "on the GPU" in every.memory.describe()
    assert none.predicted_memory_mb - every.predicted_memory_mb > 300
    tight = replace(budget, memory_mb=every.predicted_memory_mb + 1, n=16)
    assert plan(replace(tight, n_gpu_layers=-1), gpu_offload=True).n_seq_max == 16
    with pytest.raises(PlanError):
        plan(
            replace(tight, n_gpu_layers=0, kv_type="q8_0", memory_mb=every.predicted_memory_mb - 200),
            gpu_offload=True,
        )
    # A CPU build of llama.cpp keeps the layers in host memory whatever was asked: so does the plan.
    cpu_build = plan(replace(budget, n_gpu_layers=-1), gpu_offload=False)
    assert cpu_build.n_gpu_layers == 0 and cpu_build.memory == none.memory
    assert any("CPU build" in note for note in cpu_build.notes)


def test_budget_too_small_says_what_fits():
    with pytest.raises(PlanError, match=r"needs at least \d+ MB"):
        plan(Budget(memory_mb=300))
    with pytest.raises(PlanError, match="needs a PRM"):
        plan(Budget(memory_mb=4000, strategy="beam_search"), prm=None)


def test_deadline_shorter_than_prefill_is_refused():
    with pytest.raises(PlanError, match="shorter than one prefill"):
        plan(Budget(deadline_s=0.5, prompt_tokens=400), cal(prefill=100.0))


def test_a_deadline_under_the_estimated_prefill_is_a_warning_until_measured():
    """Seen in review: with no calibration, `plan --deadline-s 5` was refused as shorter than a
    prefill predicted at 5.4 s by the conservative estimate; the prefill took 1.5 s."""
    p = make_plan(META, Budget(deadline_s=0.5, prompt_tokens=400), None, prm=TEXT_PRM)  # estimated
    assert "may be shorter than one prefill" in p.explain()


def test_past_deadline_plan_warns():
    p = plan(Budget(deadline_s=5, max_tokens=1024), cal(decode={1: 1.0, 4: 2.0}, prefill=500.0))
    assert p.n == 1 and "exceeds" in p.explain()


def test_without_calibration_plan_says_estimate():
    p = make_plan(META, Budget(memory_mb=2000), None, "no calibration at X", TEXT_PRM)
    assert p.calibration_source == "estimate"
    assert "conservative" in p.explain()


def test_prm_cost_by_kind_of_the_shipped_prms():
    from edgetts.paths import shipped_dir

    text = scheduler.prm_cost(shipped_dir() / "prm-minilm")
    probe = scheduler.prm_cost(shipped_dir() / "prm-probe-qwen05")
    assert text.memory_mb > 150  # runtime + tokenizer + 22 MB of weights + one 512-token window
    assert probe.memory_mb < 45  # onnxruntime and a 4 KB head: no second model's activations
    assert probe.fallback_steps_s > 10 * text.fallback_steps_s
    assert scheduler.prm_cost("/nonexistent/prm") is None


def test_calibration_of_another_prm_is_not_used_for_its_speed():
    probe = scheduler.PrmCost("prm-probe-qwen05", 38.0, 5000.0)
    slow_text = calib.Calibration(
        model_key=calib.model_key(META),
        machine_id="m",
        n_threads=1,
        prefill_tok_s=200.0,
        decode_tok_s={1: 10.0, 16: 40.0},
        prm_steps_s=2.0,
        prm="prm-minilm",
    )
    budget = Budget(deadline_s=30, strategy="beam_search")
    p = plan(budget, slow_text, prm=probe)
    assert "measured PRM 'prm-minilm'" in p.explain()
    same = plan(budget, replace(slow_text, prm="prm-probe-qwen05"), prm=probe)
    assert p.predicted_s < same.predicted_s  # the probe's own (fast) speed, not the text PRM's


def test_estimate_is_below_measured_speeds():
    est = calib.estimate(META, 1)
    # Measured on a busy 2-core VM, one thread: ~18 tokens/s alone, ~30 at batch 16.
    assert est.decode_at(1) < 18 and est.decode_at(16) < 30
    assert est.decode_at(16) > est.decode_at(1)


def test_decode_interpolation():
    c = cal(decode={1: 10.0, 4: 40.0})
    assert c.decode_at(1) == 10.0 and c.decode_at(4) == 40.0
    assert c.decode_at(2) == pytest.approx(20.0)
    assert c.decode_at(64) == 40.0  # no gain assumed past the largest measured batch


def test_calibration_roundtrip_and_bad_files(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETTS_HOME", str(tmp_path))
    assert calib.load(META, 1)[0] is None
    path = calib.save(cal(), META)
    assert path.parent == tmp_path / "calibration"
    loaded, note = calib.load(META, 1)
    assert note is None and loaded.decode_tok_s == cal().decode_tok_s
    assert calib.load(META, 2)[0] is None  # another thread count is another file
    path.write_text("{not json")
    loaded, note = calib.load(META, 1)
    assert loaded is None and "corrupt" in note
    data = json.loads(cal().to_json())
    for bad in ({"version": 0}, {"prefill_tok_s": -1}, {"decode_tok_s": {}}, {"model_key": "other"}):
        path.write_text(json.dumps({**data, **bad}))
        assert calib.load(META, 1)[0] is None


def test_machine_id_is_stable():
    assert calib.machine_id() == calib.machine_id()
    assert len(calib.machine_id()) == 12


RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    from edgetts.policy import LlamaPolicy, PolicyConfig
    settings = json.loads(sys.argv[1])
    repeats = settings.pop("question_repeats", 1)
    cfg = PolicyConfig(**settings)
    policy = LlamaPolicy(cfg)
    root = policy.root(repeats * ("Natalia sold clips to 48 of her friends in April, and then half "
                                  "as many in May. How many clips did she sell altogether? "))
    policy.release(policy.extend([root], cfg.n_seq_max, to_end=True))
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print(json.dumps({"hwm_kb": int(hwm.split()[1]), "path": str(policy.model_path)}))
""")


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        {"n_seq_max": 8, "max_tokens": 32, "kv_type": "f16", "n_ctx": 8192},
        {"n_seq_max": 2, "max_tokens": 32, "kv_type": "q8_0"},
        # Hidden states for the probe: a long prompt (~400 tokens) must not make llama.cpp output
        # every prompt token's logits (0.6 MB a token).
        {"n_seq_max": 4, "max_tokens": 32, "capture_states": True, "question_repeats": 10},
    ],
)
def test_memory_estimate_matches_measured_peak_rss(settings, monkeypatch):
    """A real (short) run in a subprocess: estimated peak within 15 % of VmHWM."""
    from edgetts.metadata import read_metadata
    from edgetts.policy import PolicyConfig

    monkeypatch.setenv("EDGETTS_THREADS", "1")
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, json.dumps(settings)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    meta = read_metadata(measured["path"])
    cfg = PolicyConfig(**{k: v for k, v in settings.items() if k != "question_repeats"})
    est = estimate_memory(meta, cfg.resolved_n_ctx(), cfg.n_seq_max, cfg.kv_type)
    measured_mb = measured["hwm_kb"] / 1024
    assert abs(est.total_mb - measured_mb) / measured_mb < 0.15, (est.describe(), measured_mb)


def test_solver_plans_only_under_a_budget(monkeypatch):
    from edgetts import solver as solver_mod
    from edgetts.policy import PolicyConfig

    seen = {}

    def fake_plan_for(model, budget, prm_dir):
        seen["budget"] = budget
        return plan(budget, gpu_offload=True), META

    monkeypatch.setattr(solver_mod, "plan_for", fake_plan_for)
    monkeypatch.delenv("EDGETTS_N_GPU_LAYERS", raising=False)
    s = solver_mod.Solver(PolicyConfig(max_tokens=256), pinned=frozenset({"kv_type"}))
    assert s.plan(solver_mod.SolveOptions()) is None
    p = s.plan(solver_mod.SolveOptions(memory_mb=4000, deadline_s=100), "What is 6 * 7?")
    assert seen["budget"].kv_type == "f16" and seen["budget"].n_gpu_layers is None
    assert seen["budget"].max_tokens == 256 and p.kv_type == "f16"
    s.plan(solver_mod.SolveOptions(deadline_s=100, max_tokens=64), "What is 6 * 7?")
    assert seen["budget"].max_tokens == 256 and seen["budget"].answer_max_tokens == 64
    # $EDGETTS_N_GPU_LAYERS is the user's setting too: the plan keeps it (and accounts it).
    monkeypatch.setenv("EDGETTS_N_GPU_LAYERS", "-1")
    p = s.plan(solver_mod.SolveOptions(memory_mb=4000, deadline_s=100), "What is 6 * 7?")
    assert seen["budget"].n_gpu_layers == -1 and p.n_gpu_layers == -1 and p.memory.weights_mb == 0


class LoadedPolicy:
    """Stands for a loaded LlamaPolicy: records what was loaded and closed."""

    log: list[str] = []
    metadata = SimpleNamespace(name="fake", n_embd=1)  # what a probe checks the policy by

    def __init__(self, config):
        self.config = config
        LoadedPolicy.log.append(f"load {config.n_seq_max} {config.kv_type}")

    def close(self):
        LoadedPolicy.log.append("close")


def test_solver_keeps_a_loaded_context_that_covers_the_plan(monkeypatch):
    from dataclasses import replace

    from edgetts import solver as solver_mod
    from edgetts.policy import PolicyConfig

    monkeypatch.setattr(solver_mod, "LlamaPolicy", LoadedPolicy)
    LoadedPolicy.log = []
    s = solver_mod.Solver(PolicyConfig(max_tokens=256, n_seq_max=16))
    big = plan(Budget(memory_mb=4000, deadline_s=100, max_tokens=256))
    assert s._policy_for(None, big, 4000).config.n_seq_max == big.n_seq_max
    smaller = replace(
        big,
        n_seq_max=max(1, big.n_seq_max // 2),
        n_ctx=big.n_ctx // 2,
        predicted_memory_mb=big.predicted_memory_mb / 2,
    )
    assert s._policy_for(None, smaller, 4000).config.n_seq_max == big.n_seq_max  # kept
    assert len(LoadedPolicy.log) == 1
    policy_mb = big.predicted_memory_mb - big.memory.prm_mb  # the PRM is counted apart
    s._policy_for(None, smaller, policy_mb - 1)  # the loaded one no longer fits
    assert LoadedPolicy.log[1:] == ["close", f"load {smaller.n_seq_max} f16"]
    s._policy_for(None, replace(smaller, kv_type="q8_0"), None)  # another cache type: reload
    assert LoadedPolicy.log[-1] == f"load {smaller.n_seq_max} q8_0"
    reloads = len(LoadedPolicy.log)
    s._policy_for(None, replace(smaller, kv_type="q8_0", park_mb=64.0), None)  # parking it lacks
    assert len(LoadedPolicy.log) == reloads + 2 and s.policy.config.park_mb == 64.0
    assert s.policy_config == PolicyConfig(max_tokens=256, n_seq_max=16)  # never changed


def test_a_prm_still_loaded_counts_against_the_budget_of_a_solve_that_reuses_the_policy(monkeypatch):
    """Seen in review: a PRM loaded for an earlier solve stayed beside a policy reused for a
    solve planned without one, 927 MB under a 900 MB budget."""
    from dataclasses import replace

    from edgetts import solver as solver_mod
    from edgetts.policy import PolicyConfig
    from edgetts.prm import default_text_prm
    from edgetts.scheduler import prm_cost

    monkeypatch.setattr(solver_mod, "LlamaPolicy", LoadedPolicy)
    LoadedPolicy.log = []
    s = solver_mod.Solver(PolicyConfig(max_tokens=256, n_seq_max=16), prm_path=str(default_text_prm()))
    first = replace(plan(Budget(memory_mb=4000, max_tokens=256, strategy="majority")), n_seq_max=4)
    s._policy_for(None, first, 4000)
    policy_mb, held_mb = first.predicted_memory_mb, prm_cost(s.prm_dir).memory_mb
    s._policy_for(None, first, policy_mb + 1)  # no PRM loaded: the policy fits
    assert len(LoadedPolicy.log) == 1
    s._scorer = object()  # a PRM an earlier solve loaded
    s._policy_for(None, first, policy_mb + held_mb - 1)  # policy + PRM: over, so not kept
    assert LoadedPolicy.log[1:] == ["close", "load 4 f16"]
    s._unload_scorer_over(held_mb + 1)  # room for it: kept
    assert s.scorer_loaded
    s._unload_scorer_over(held_mb - 1)
    assert not s.scorer_loaded


def test_a_budgeted_solve_leaves_the_next_one_as_configured(monkeypatch):
    """Seen: after a request with memory_mb, a beam search that had worked failed for good
    ("no KV sequence slot can be freed"): the plan's 2 slots stayed for every later request."""
    from dataclasses import replace

    from edgetts import solver as solver_mod
    from edgetts.policy import PolicyConfig

    monkeypatch.setattr(solver_mod, "LlamaPolicy", LoadedPolicy)
    LoadedPolicy.log = []
    s = solver_mod.Solver(PolicyConfig(max_tokens=256, n_seq_max=16))
    small = replace(plan(Budget(memory_mb=700, max_tokens=256)), n_seq_max=2)
    assert s._policy_for(None, small, 700).config.n_seq_max == 2
    assert s._policy_for(None, None, None).config.n_seq_max == 16


class Probe:
    """Stands for a PRM that reads the policy's states."""

    needs_states, state_layers = True, (12, -1)

    def check_policy(self, name: str, n_embd: int) -> None:
        pass  # any policy will do here

    def with_batch_size(self, batch_size: int) -> Probe:
        return self


def test_a_policy_keeping_states_serves_solves_that_need_none(monkeypatch):
    """Seen: a server answering majority and weighted requests in turn loaded the policy again
    for every request (with states kept, then without)."""
    from edgetts import solver as solver_mod
    from edgetts.policy import PolicyConfig

    monkeypatch.setattr(solver_mod, "LlamaPolicy", LoadedPolicy)
    LoadedPolicy.log = []
    s = solver_mod.Solver(PolicyConfig(max_tokens=256, n_seq_max=16))
    s._policy_for(None, None, None)  # majority
    assert s._policy_for(Probe(), None, None).config.capture_states  # a probe: load with states
    for scorer in (None, Probe(), None):
        s._policy_for(scorer, None, None)
    assert LoadedPolicy.log == ["load 16 f16", "close", "load 16 f16"]


def test_a_fixed_policy_is_never_reloaded_for_a_plan(monkeypatch):
    """A server's solver: a request's budget plans its search, never the model under the others,
    nor does it unload the PRM they share."""
    from dataclasses import replace

    from edgetts import solver as solver_mod
    from edgetts.policy import PolicyConfig

    monkeypatch.setattr(solver_mod, "LlamaPolicy", LoadedPolicy)
    LoadedPolicy.log = []
    s = solver_mod.Solver(PolicyConfig(max_tokens=256, n_seq_max=16), fixed_policy=True)
    big = plan(Budget(memory_mb=4000, deadline_s=100, max_tokens=256))
    s._policy_for(Probe(), big, 4000)  # the server's own plan, at start, keeping the states
    s._scorer = Probe()  # the PRM it loaded with the policy
    held_mb = s._loaded_policy_mb() + s._loaded_prm_mb()
    smaller = replace(big, n_seq_max=2, n_ctx=big.n_ctx // 4, kv_type="q8_0", predicted_memory_mb=100.0)
    s._check_fits_as_loaded(held_mb + 1)
    for strategy in ("majority", "beam_search"):
        scorer, policy = s._as_loaded(strategy, smaller)
        assert policy.config.n_seq_max == big.n_seq_max and s.scorer_loaded
    assert len(LoadedPolicy.log) == 1  # neither a smaller nor another plan loaded it again
    with pytest.raises(ValueError, match="less than the loaded model may hold"):
        s._check_fits_as_loaded(held_mb - 1)
    assert s.scorer_loaded  # the PRM the other requests share stays
    # A policy loaded keeping none of the states the probe reads (it loaded later): PRM
    # strategies are refused, auto goes on by agreement alone; nothing is loaded again.
    plain = solver_mod.Solver(PolicyConfig(max_tokens=256, n_seq_max=16), fixed_policy=True)
    plain._policy_for(None, big, 4000)
    plain._scorer = Probe()
    with pytest.raises(ValueError, match="keeps none of the states"):
        plain._as_loaded("weighted_best_of_n", None)
    assert plain._as_loaded("auto", None)[0] is None
    assert len(LoadedPolicy.log) == 2


def test_a_plan_on_a_loaded_models_slots_predicts_its_waves():
    free = plan(Budget(deadline_s=60, strategy="majority", n=16, max_tokens=256))
    fixed = plan(Budget(deadline_s=60, strategy="majority", n=16, max_tokens=256, slots=4))
    assert free.n_seq_max == 16 and fixed.n_seq_max == 4
    assert fixed.predicted_s > free.predicted_s  # 16 paths in waves of 4
    assert plan(Budget(deadline_s=60, strategy="majority", n=2, slots=4)).n_seq_max == 2


def test_a_fixed_policy_plans_for_the_model_as_loaded(monkeypatch):
    """A server's deadline plan: its N is chosen for the slots, cache and offload loaded, not
    for a shape it will never get (it then came back cut short)."""
    from edgetts import solver as solver_mod
    from edgetts.policy import PolicyConfig

    seen = {}

    def fake_plan_for(model, budget, prm_dir):
        seen["budget"] = budget
        return plan(budget), META

    monkeypatch.setattr(solver_mod, "plan_for", fake_plan_for)
    monkeypatch.setattr(solver_mod, "LlamaPolicy", LoadedPolicy)
    s = solver_mod.Solver(PolicyConfig(max_tokens=256, n_seq_max=16), fixed_policy=True)
    s.plan(solver_mod.SolveOptions(deadline_s=30), "What is 6 * 7?")
    assert seen["budget"].slots is None  # nothing loaded yet: the plan picks
    s._load(PolicyConfig(max_tokens=256, n_seq_max=8, kv_type="q8_0"))
    s.plan(solver_mod.SolveOptions(deadline_s=30), "What is 6 * 7?")
    assert seen["budget"].slots == 8 and seen["budget"].kv_type == "q8_0"


def test_cli_plan_errors_are_clear(monkeypatch):
    from click.testing import CliRunner

    from edgetts import cli
    from edgetts import solver as solver_mod

    def too_small(model, budget, prm_dir):
        raise PlanError("a memory budget of 300 MB is too small: ... needs at least 669 MB")

    monkeypatch.setattr(solver_mod, "plan_for", too_small)
    result = CliRunner().invoke(cli.main, ["plan", "--memory-mb", "300"])
    assert result.exit_code != 0 and "needs at least 669 MB" in result.output
    result = CliRunner().invoke(cli.main, ["plan"])
    assert result.exit_code != 0 and "give a budget" in result.output
    monkeypatch.setattr(solver_mod, "plan_for", lambda m, b, p: (plan(b), META))
    result = CliRunner().invoke(cli.main, ["plan", "--memory-mb", "4000", "--deadline-s", "100"])
    assert result.exit_code == 0 and result.output.startswith("plan: auto N=")


@pytest.mark.slow
def test_calibrate_measures_and_the_planner_uses_it(tmp_path, monkeypatch):
    """A real calibration: saved for this model, its PRM named, speeds the planner then uses."""
    monkeypatch.setattr(calib, "calibration_dir", lambda: tmp_path)
    measured, meta = calib.measure(None, None, 1, batches=(1, 2, 4), tokens=8, progress=lambda _: None)
    assert calib.save(measured, meta).parent == tmp_path
    loaded, note = calib.load(meta, 1)
    assert note is None and loaded.source == "measured"
    assert loaded.prm == "prm-probe-qwen05"  # the PRM the default policy runs with
    speeds = [loaded.decode_tok_s[b] for b in (1, 2, 4)]
    assert speeds == sorted(speeds)  # a busy machine's dip is not believed
    assert loaded.prefill_tok_s > 0 and loaded.prm_steps_s > 0
    plan, _ = scheduler.plan_for(None, Budget(deadline_s=30, n_threads=1))
    assert plan.calibration_source == "measured"


def test_peak_rss_is_the_process_own_not_its_parents():
    """A server spawned by a big process (pytest with torch loaded, in CI) reports its own peak.

    ``ru_maxrss`` carries the parent's size across fork and exec; CI's server reported 2.8 GB for a
    720 MB process until VmHWM replaced it.
    """
    ballast = bytearray(b"\x01") * (600 << 20)  # written, so resident
    code = "from edgetts.scheduler import peak_rss_mb; print(peak_rss_mb())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child_mb = float(child.stdout)
    assert peak_rss_mb() > 600
    assert child_mb < 400, child_mb
    del ballast


def test_the_estimate_of_a_policy_without_an_offload_setting_on_a_gpu_build(monkeypatch):
    """Seen in review: /health crashed on a CUDA build after a solve without --n-gpu-layers."""
    import llama_cpp

    from edgetts.policy import PolicyConfig
    from edgetts.scheduler import estimate_for_policy

    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    monkeypatch.delenv("EDGETTS_N_GPU_LAYERS", raising=False)
    estimate = estimate_for_policy(PolicyConfig(), META, None, 0.0)
    assert estimate.gpu_mb == 0 and estimate.weights_mb > 0  # no offload asked: all on the CPU
    monkeypatch.setenv("EDGETTS_N_GPU_LAYERS", "-1")
    assert estimate_for_policy(PolicyConfig(), META, None, 0.0).gpu_mb > 0


@pytest.mark.parametrize("width, deadline_s, n", [(8, None, 8), (3, 60, 3), (8, 600, None)])
def test_a_wide_or_odd_beam_gets_a_plan_not_an_error(width, deadline_s, n):
    p = plan(Budget(memory_mb=4000, deadline_s=deadline_s, strategy="beam_search", beam_width=width))
    assert p.n % width == 0 and (n is None or p.n == n)


def test_a_calibration_with_a_batch_size_under_one_is_refused_as_corrupt():
    data = {
        "version": calib.FORMAT_VERSION,
        "model_key": "k",
        "machine_id": "m",
        "n_threads": 1,
        "prefill_tok_s": 200.0,
        "decode_tok_s": {"0": 5.0, "4": 20.0},
    }
    with pytest.raises(ValueError, match="batch size"):
        calib.Calibration.from_dict(data)


def test_a_plan_parks_no_more_than_the_users_limit():
    wide = Budget(memory_mb=1000, deadline_s=600, strategy="beam_search", n=64, max_tokens=256)
    assert plan(wide).park_mb > 0
    assert plan(replace(wide, park_limit_mb=0.0)).park_mb == 0  # the user's 0: re-decode instead
    assert plan(replace(wide, park_limit_mb=1.0)).park_mb <= 1.0


def test_a_calibration_is_read_only_for_the_offload_it_was_measured_with(tmp_path, monkeypatch):
    """Review: the file named no offload, so a CPU measurement planned a GPU run and the reverse."""
    from dataclasses import replace

    monkeypatch.setenv("EDGETTS_HOME", str(tmp_path))
    cpu_path = calib.save(cal(), META)
    gpu_path = calib.save(replace(cal(), gpu_layers=-1, prefill_tok_s=9999.0), META)
    assert cpu_path != gpu_path and gpu_path.name.endswith("__gall.json")
    assert calib.load(META, 1)[0].prefill_tok_s == cal().prefill_tok_s
    assert calib.load(META, 1, gpu_layers=-1)[0].prefill_tok_s == 9999.0
    assert calib.load(META, 1, gpu_layers=12)[0] is None  # a partial offload is its own
    assert calib.offload_key(META.n_layers + 1, META.n_layers) == -1 and calib.offload_key(0, 24) == 0
    gpu_path.write_text(cpu_path.read_text())  # a CPU file put where the GPU one belongs
    loaded, note = calib.load(META, 1, gpu_layers=-1)
    assert loaded is None and "offload" in note
    gpu_path.unlink()
    assert "calibrate --n-gpu-layers -1" in calib.load(META, 1, gpu_layers=-1)[1]


def test_a_plan_reads_the_calibration_of_its_own_offload(tmp_path, monkeypatch):
    import llama_cpp

    monkeypatch.setenv("EDGETTS_HOME", str(tmp_path))
    asked: list[int] = []
    real_load = calib.load

    def load(meta, threads, gpu_layers=0):
        asked.append(gpu_layers)
        return real_load(meta, threads, gpu_layers)

    monkeypatch.setattr(calib, "load", load)
    monkeypatch.setattr("edgetts.metadata.read_metadata", lambda path: META)
    monkeypatch.setattr("edgetts.models.resolve", lambda model: "/nonexistent/qwen.gguf")
    cases = ((False, None, 0), (False, -1, 0), (True, None, -1), (True, 0, 0), (True, 8, 8))
    for gpu_build, layers, expected in cases:
        monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda gpu_build=gpu_build: gpu_build)
        asked.clear()
        scheduler.plan_for(None, Budget(deadline_s=60, max_tokens=256, n_gpu_layers=layers))
        assert asked == [expected], (gpu_build, layers)
