"""GPU set-up: how many policy layers to offload, and whether the GPU builds are really in place.

Two runtimes must each be a GPU build for a GPU run:

* **llama.cpp** (the policy). llama-cpp-python compiles llama.cpp when it installs; a CUDA build
  needs ``CMAKE_ARGS="-DGGML_CUDA=on"`` at that moment, which no pip extra can express, so the
  GPU install path (README, "GPU") reinstalls the pinned version from source with it.
  :func:`llama_gpu_offload` says which build is loaded.
* **onnxruntime** (the PRM). The CUDA build is another distribution, ``onnxruntime-gpu``, that
  writes the same ``onnxruntime`` import package as the CPU one. edgetts depends on
  ``onnxruntime`` (a CPU machine must work after ``pip install edgetts``), and a pip extra cannot
  remove a base dependency, so ``pip install edgetts[gpu]`` leaves both installed and whichever
  was unpacked last owns the files. :func:`onnxruntime_problem` detects that and says the fix.

The number of offloaded layers is a policy setting (``PolicyConfig.n_gpu_layers``,
``--n-gpu-layers``); when none is given it comes from ``$EDGETTS_N_GPU_LAYERS``
(:func:`default_gpu_layers`), so a whole test suite or tool run can be moved onto the GPU without
editing each call. ``-1`` means every layer (llama.cpp reads any negative count so).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from importlib import metadata

GPU_LAYERS_ENV = "EDGETTS_N_GPU_LAYERS"
ORT_CPU = "onnxruntime"
ORT_GPU = "onnxruntime-gpu"
CUDA_PROVIDER = "CUDAExecutionProvider"


class GpuSetupError(ValueError):
    """A GPU setting cannot be used; the message says why and what to change."""


def default_gpu_layers() -> int:
    """Layers to offload when the caller gave none: ``$EDGETTS_N_GPU_LAYERS``, else 0 (CPU)."""
    layers = requested_gpu_layers()
    return 0 if layers is None else layers


def requested_gpu_layers() -> int | None:
    """``$EDGETTS_N_GPU_LAYERS`` as a layer count, None when unset (-1 = every layer).

    A value llama.cpp would misread is an error rather than a silent CPU run, since the variable
    is set precisely to get a GPU run.
    """
    env = os.environ.get(GPU_LAYERS_ENV, "").strip()
    if not env:
        return None
    try:
        layers = int(env)
    except ValueError:
        raise GpuSetupError(
            f"{GPU_LAYERS_ENV} must be a whole number (-1 = all layers), got {env!r}"
        ) from None
    if layers < -1:
        raise GpuSetupError(f"{GPU_LAYERS_ENV} must be -1 (all layers) or more, got {layers}")
    return layers


def installed_onnxruntimes() -> dict[str, str]:
    """The onnxruntime distributions pip has installed here, name -> version."""
    found = {}
    for name in (ORT_CPU, ORT_GPU):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def onnxruntime_fix(gpu_version: str) -> str:
    """The commands that leave onnxruntime-gpu alone in place.

    Both packages are removed first: uninstalling only the CPU one would delete files the GPU one
    shares with it, so the GPU one is then installed again from scratch.
    """
    return (
        f"pip uninstall -y {ORT_CPU} {ORT_GPU} && "
        f"pip install --no-deps --force-reinstall {ORT_GPU}=={gpu_version}"
    )


def onnxruntime_problem(installed: Mapping[str, str], providers: Sequence[str]) -> str | None:
    """Why onnxruntime-gpu's CUDA provider is shadowed or at risk, with the fix; None if not.

    ``installed`` is :func:`installed_onnxruntimes`, ``providers`` onnxruntime's
    ``get_available_providers()``. A CPU-only install (no onnxruntime-gpu) is no problem: it is
    what a CPU machine should have.
    """
    gpu = installed.get(ORT_GPU)
    if gpu is None:
        return None
    fix = onnxruntime_fix(gpu)
    if ORT_CPU in installed:
        state = (
            "the CPU files won: no CUDA provider"
            if CUDA_PROVIDER not in providers
            else "the GPU files won this time, but reinstalling or removing either breaks the other"
        )
        return (
            f"both {ORT_CPU} {installed[ORT_CPU]} and {ORT_GPU} {gpu} are installed; they write "
            f"the same `onnxruntime` package, so the one unpacked last owns it ({state}). "
            f"Fix: {fix}"
        )
    if CUDA_PROVIDER not in providers:
        return (
            f"{ORT_GPU} {gpu} is installed but onnxruntime offers no CUDA provider "
            f"(providers: {', '.join(providers) or 'none'}): a CPU onnxruntime overwrote or removed "
            f"its files. Fix: {fix}"
        )
    return None


def onnxruntime_providers() -> list[str]:
    """onnxruntime's available providers (imports onnxruntime)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def llama_gpu_offload() -> bool:
    """Whether the loaded llama.cpp build can offload layers to a GPU (a CUDA, Metal... build)."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def report(require_cuda: bool = False) -> tuple[list[str], list[str]]:
    """What this machine offers a GPU run: (lines to print, problems). Imports both runtimes.

    With ``require_cuda`` a CPU llama.cpp build or an onnxruntime without a CUDA provider is a
    problem too (``tools/gpu_check.sh`` asks for that: a GPU check on CPU builds proves nothing).
    """
    installed = installed_onnxruntimes()
    providers = onnxruntime_providers()
    try:
        llama_version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        llama_version = "?"
    offload = llama_gpu_offload()
    lines = [
        f"llama-cpp-python {llama_version}: GPU offload {'yes' if offload else 'no (a CPU build)'}",
        "onnxruntime distributions: "
        + (", ".join(f"{k} {v}" for k, v in sorted(installed.items())) or "none"),
        f"onnxruntime providers: {', '.join(providers)}",
        f"PRM runs on: {'CUDA' if CUDA_PROVIDER in providers else 'CPU'} "
        "(EDGETTS_PRM_DEVICE=cpu forces the CPU)",
        f"policy layers offloaded by default: {default_gpu_layers()} ({GPU_LAYERS_ENV}; -1 = all)",
    ]
    problems = []
    shadow = onnxruntime_problem(installed, providers)
    if shadow:
        problems.append(shadow)
    if require_cuda and not offload:
        problems.append(
            "llama.cpp is a CPU build: reinstall llama-cpp-python with "
            'CMAKE_ARGS="-DGGML_CUDA=on" (README, "GPU")'
        )
    if require_cuda and CUDA_PROVIDER not in providers and not shadow:
        problems.append(
            f'onnxruntime has no CUDA provider: install {ORT_GPU} in place of {ORT_CPU} (README, "GPU")'
        )
    return lines, problems
