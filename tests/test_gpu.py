"""GPU set-up logic (edgetts.gpu): offload from the environment, onnxruntime shadowing, `edgetts gpu`.

No GPU here: onnxruntime's provider list and the installed distributions are faked where a test
is about a GPU install; the CPU install of this machine is checked for real.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetts import gpu
from edgetts.cli import main

TOOLS = Path(__file__).resolve().parent.parent / "tools"
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
CPU = ["CPUExecutionProvider"]


@pytest.mark.parametrize("env, expected", [(None, 0), ("", 0), ("-1", -1), (" 12 ", 12), ("0", 0)])
def test_gpu_layers_come_from_the_environment(monkeypatch, env, expected):
    if env is None:
        monkeypatch.delenv(gpu.GPU_LAYERS_ENV, raising=False)
    else:
        monkeypatch.setenv(gpu.GPU_LAYERS_ENV, env)
    assert gpu.default_gpu_layers() == expected
    assert gpu.requested_gpu_layers() == (None if not (env or "").strip() else expected)


@pytest.mark.parametrize(
    "env, match", [("all", "whole number"), ("-2", "-1 .all layers. or more"), ("1.5", "whole number")]
)
def test_bad_gpu_layers_are_an_error_not_a_cpu_run(monkeypatch, env, match):
    monkeypatch.setenv(gpu.GPU_LAYERS_ENV, env)
    with pytest.raises(gpu.GpuSetupError, match=match):
        gpu.default_gpu_layers()


def test_a_cpu_install_is_no_problem():
    assert gpu.onnxruntime_problem({"onnxruntime": "1.22.0"}, CPU) is None
    assert gpu.onnxruntime_problem({"onnxruntime-gpu": "1.22.0"}, CUDA) is None  # the GPU path done right


def test_cpu_onnxruntime_shadowing_the_gpu_one_is_named_with_the_fix():
    both = {"onnxruntime": "1.22.0", "onnxruntime-gpu": "1.22.0"}
    shadowed = gpu.onnxruntime_problem(both, CPU)
    assert shadowed is not None and "the CPU files won" in shadowed
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in shadowed
    assert "onnxruntime-gpu==1.22.0" in shadowed
    # The GPU files may win the race this time; the next reinstall of either breaks the other.
    lucky = gpu.onnxruntime_problem(both, CUDA)
    assert lucky is not None and "GPU files won this time" in lucky
    # Only onnxruntime-gpu recorded, but its CUDA provider gone: a CPU install overwrote it.
    gone = gpu.onnxruntime_problem({"onnxruntime-gpu": "1.20.1"}, CPU)
    assert gone is not None and "no CUDA provider" in gone and "onnxruntime-gpu==1.20.1" in gone


def test_this_machine_reports_its_real_onnxruntime():
    installed = gpu.installed_onnxruntimes()
    assert installed, "onnxruntime is a dependency: some distribution must be installed"
    providers = gpu.onnxruntime_providers()
    assert "CPUExecutionProvider" in providers
    lines, problems = gpu.report()
    assert any(line.startswith("onnxruntime providers: ") for line in lines)
    assert problems == ([] if gpu.onnxruntime_problem(installed, providers) is None else problems)


def _fake_install(monkeypatch, installed: dict[str, str], providers: list[str], offload: bool) -> None:
    monkeypatch.setattr(gpu, "installed_onnxruntimes", lambda: dict(installed))
    monkeypatch.setattr(gpu, "onnxruntime_providers", lambda: list(providers))
    monkeypatch.setattr(gpu, "llama_gpu_offload", lambda: offload)


def test_edgetts_gpu_fails_on_shadowing_and_says_the_fix(monkeypatch):
    _fake_install(monkeypatch, {"onnxruntime": "1.22.0", "onnxruntime-gpu": "1.22.0"}, CPU, True)
    out = CliRunner().invoke(main, ["gpu"])
    assert out.exit_code == 1
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in out.output
    assert "PRM runs on: CPU" in out.output


def test_edgetts_gpu_passes_a_clean_gpu_install(monkeypatch):
    _fake_install(monkeypatch, {"onnxruntime-gpu": "1.22.0"}, CUDA, True)
    monkeypatch.setenv(gpu.GPU_LAYERS_ENV, "-1")
    out = CliRunner().invoke(main, ["gpu", "--require-cuda"])
    assert out.exit_code == 0, out.output
    assert "GPU offload yes" in out.output and "PRM runs on: CUDA" in out.output
    assert "by default: -1" in out.output and out.output.rstrip().endswith("ok")


def test_require_cuda_refuses_cpu_builds(monkeypatch):
    _fake_install(monkeypatch, {"onnxruntime": "1.22.0"}, CPU, False)
    assert CliRunner().invoke(main, ["gpu"]).exit_code == 0  # a CPU install is fine as such
    out = CliRunner().invoke(main, ["gpu", "--require-cuda"])
    assert out.exit_code == 1
    assert "llama.cpp is a CPU build" in out.output and "no CUDA provider" in out.output


def test_require_cuda_on_this_machine_matches_its_real_builds():
    out = CliRunner().invoke(main, ["gpu", "--require-cuda"])
    real_gpu = gpu.llama_gpu_offload() and "CUDAExecutionProvider" in gpu.onnxruntime_providers()
    assert (out.exit_code == 0) == real_gpu, out.output


def test_prm_says_why_it_runs_on_the_cpu_when_shadowed(monkeypatch, caplog):
    """The real shipped PRM opens on the real (CPU) onnxruntime; the install is faked as shadowed."""
    from edgetts import prm

    monkeypatch.setattr(
        prm, "installed_onnxruntimes", lambda: {"onnxruntime": "1.22.0", "onnxruntime-gpu": "1.22.0"}
    )
    monkeypatch.delenv("EDGETTS_PRM_DEVICE", raising=False)
    with caplog.at_level(logging.WARNING, logger="edgetts.prm"):
        session = prm.open_session(prm.find_prm(prm.DEFAULT_PRM_NAME) / "model.onnx", threads=1)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert "runs on the CPU" in caplog.text and "pip uninstall -y onnxruntime" in caplog.text
    monkeypatch.setenv("EDGETTS_PRM_DEVICE", "cuda")
    with pytest.raises(prm.PRMError, match="pip uninstall -y onnxruntime onnxruntime-gpu"):
        prm.choose_providers(CPU, None)


def test_readme_gpu_install_pins_the_llama_version_pyproject_pins():
    """The README's copy of the CUDA rebuild must name the version the package depends on: another
    version would replace the tested llama.cpp with an untested one."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pinned = re.search(r'"llama-cpp-python==([^"]+)"', (root / "pyproject.toml").read_text()).group(1)
    readme = (root / "README.md").read_text()
    section = readme[readme.index("### GPU") :]
    assert f"llama-cpp-python=={pinned}" in section
    assert (
        'CMAKE_ARGS="-DGGML_CUDA=on"' in section and "pip uninstall -y onnxruntime onnxruntime-gpu" in section
    )


@pytest.mark.slow
def test_the_offline_gpu_smoke_check_runs_and_passes_as_a_dry_run_on_cpu(tmp_path):
    """tools/gpu_smoke.py on the tiny model tools/make_tiny_gguf.py writes, with its 'GPU' run
    on the CPU too (--gpu-layers 0): every check the GPU machine will run, with the same code."""
    tiny = tmp_path / "tiny.gguf"
    subprocess.run([sys.executable, str(TOOLS / "make_tiny_gguf.py"), "--out", str(tiny)], check=True)
    assert tiny.stat().st_size < 20 * 2**20  # it must travel in the GPU machine's 64 MiB
    report = tmp_path / "smoke.json"
    run = subprocess.run(
        [
            sys.executable,
            str(TOOLS / "gpu_smoke.py"),
            "--model",
            str(tiny),
            "--gpu-layers",
            "0",
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "EDGETTS_THREADS": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    checks = json.loads(report.read_text())["checks"]
    assert len(checks) == 5 and all(c["ok"] for c in checks), checks
