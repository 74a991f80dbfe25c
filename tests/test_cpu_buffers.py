"""llama.cpp's AMX weight buffer is left out (it segfaults on some Intel hosts), repacking kept."""

import logging

import pytest

from edgetts.llama.cpu_buffers import amx_allowed, apply_cpu_buffer_policy, plan_cpu_buffers


def test_amx_is_removed_and_repacking_kept_on_an_amx_host():
    plan = plan_cpu_buffers(["AMX", "CPU_REPACK"], allow_amx=False, cpu_has_amx=True)
    assert plan.kept == ("CPU_REPACK",) and plan.removed == ("AMX",) and plan.use_extra_bufts


def test_amx_kept_when_asked():
    plan = plan_cpu_buffers(["AMX", "CPU_REPACK"], allow_amx=True, cpu_has_amx=True)
    assert plan.kept == ("AMX", "CPU_REPACK") and plan.removed == ()


def test_other_hosts_keep_every_buffer_type():
    plan = plan_cpu_buffers(["CPU_REPACK"], allow_amx=False, cpu_has_amx=False)
    assert plan.kept == ("CPU_REPACK",) and plan.use_extra_bufts


def test_unreadable_list_on_an_amx_host_turns_extra_buffers_off():
    assert not plan_cpu_buffers(None, allow_amx=False, cpu_has_amx=True).use_extra_bufts
    assert plan_cpu_buffers(None, allow_amx=False, cpu_has_amx=False).use_extra_bufts
    assert plan_cpu_buffers(None, allow_amx=True, cpu_has_amx=True).use_extra_bufts


@pytest.mark.parametrize(("value", "expected"), [("", False), ("0", False), ("off", False), ("1", True)])
def test_amx_env(value, expected):
    assert amx_allowed({"EDGETTS_CPU_AMX": value}) is expected


def test_amx_env_rejects_garbage():
    with pytest.raises(ValueError, match="EDGETTS_CPU_AMX must be 0 or 1"):
        amx_allowed({"EDGETTS_CPU_AMX": "maybe"})


def test_real_ggml_list_is_edited_both_ways():
    from edgetts.llama import ggml

    def names():
        array, out = ggml.cpu_extra_buffer_types(), []
        while array[len(out)]:
            out.append(ggml.buffer_type_name(array[len(out)]))
        return out

    kept_all = apply_cpu_buffer_policy(allow_amx=True).kept
    assert names() == list(kept_all)
    plan = apply_cpu_buffer_policy(allow_amx=False)
    assert "AMX" not in names() and names() == list(plan.kept)
    assert [n for n in kept_all if n != "AMX"] == names()


@pytest.mark.slow
def test_real_model_loads_without_amx_buffers_and_decodes(caplog):
    from edgetts.policy import LlamaPolicy, PolicyConfig

    caplog.set_level(logging.DEBUG, logger="edgetts.llama")
    policy = LlamaPolicy(PolicyConfig(n_seq_max=1, max_tokens=8, temperature=0))
    try:
        [path] = policy.extend([policy.root("What is 2+3?")], 1, to_end=True)
    finally:
        policy.close()
    buffers = [r.getMessage() for r in caplog.records if "model buffer size" in r.getMessage()]
    assert buffers, "llama.cpp reported no weight buffers"
    assert not any("AMX" in line for line in buffers)
    assert path.n_tokens > 0
