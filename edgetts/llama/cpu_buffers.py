"""Which CPU buffer types llama.cpp may put a model's weights in: never AMX unless asked.

llama.cpp repacks weights into "extra" CPU buffer types for faster kernels: ``CPU_REPACK``
(interleaved layouts for AVX2 / AVX-512) and, on Intel CPUs with AMX, ``AMX``. The AMX kernel
segfaults at the first decode on some hosts (llama.cpp issue 20824, closed stale without a fix;
seen on this project's Sapphire-Rapids-class Xeons with the Q4_K_M policy). Loading with
``use_extra_bufts = False`` avoids it, but also drops the repacked buffers every other CPU gains
from. So before a model loads, edgetts takes only the AMX entry out of ggml's list of extra
buffer types, the list llama.cpp walks when it places weights.

``EDGETTS_CPU_AMX=1`` keeps AMX (a host where it works); ``0`` or unset leaves it out. The
choice is process-wide, like the list it edits, and holds for every model loaded after it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import llama_cpp

from edgetts.llama import ggml

log = logging.getLogger("edgetts.llama")

AMX_BUFFER = "AMX"
AMX_ENV = "EDGETTS_CPU_AMX"


@dataclass(frozen=True)
class CpuBufferPlan:
    """What a model load may use: the extra buffer types kept, and whether to use any."""

    kept: tuple[str, ...]
    removed: tuple[str, ...]
    use_extra_bufts: bool  # False only when AMX must go but ggml's list could not be edited


def amx_allowed(environ: dict[str, str] | None = None) -> bool:
    """Whether ``$EDGETTS_CPU_AMX`` asks to keep llama.cpp's AMX weight buffers (default: no)."""
    value = (os.environ if environ is None else environ).get(AMX_ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{AMX_ENV} must be 0 or 1, got {value!r}")


def plan_cpu_buffers(available: list[str] | None, allow_amx: bool, cpu_has_amx: bool) -> CpuBufferPlan:
    """Decide the buffer types from what ggml offers (``None``: its list could not be read)."""
    if available is None:
        # Without the list, the only way to keep AMX out is to give up every extra buffer type.
        return CpuBufferPlan(kept=(), removed=(), use_extra_bufts=allow_amx or not cpu_has_amx)
    kept = tuple(name for name in available if allow_amx or name != AMX_BUFFER)
    removed = tuple(name for name in available if name not in kept)
    return CpuBufferPlan(kept=kept, removed=removed, use_extra_bufts=True)


def cpu_has_amx() -> bool:
    """llama.cpp's own report of this CPU and build (``AMX_INT8 = 1`` when AMX kernels exist)."""
    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


_original: list[int] | None = None  # ggml's extra buffer types as first seen, in its order


def apply_cpu_buffer_policy(allow_amx: bool | None = None) -> CpuBufferPlan:
    """Edit ggml's extra buffer types for the next model loads; call before loading a model.

    ``allow_amx`` None reads ``$EDGETTS_CPU_AMX``. Calling again with the other choice puts
    back or takes out the AMX entry (models already loaded keep the buffers they have).
    """
    global _original
    if allow_amx is None:
        allow_amx = amx_allowed()
    array = ggml.cpu_extra_buffer_types()
    if array is None:
        plan = plan_cpu_buffers(None, allow_amx, cpu_has_amx())
    else:
        if _original is None:
            _original = []
            while array[len(_original)]:
                _original.append(array[len(_original)])
        names = [ggml.buffer_type_name(buft) for buft in _original]
        # The list holds AMX only where the build and this CPU both have it, so it answers the
        # question without llama_print_system_info(), which on a CUDA build also sets up the
        # CUDA backend's feature strings (and was the last thing before a model load that
        # crashed on the lent H200 machine in stop 31; not confirmed as the cause).
        plan = plan_cpu_buffers(names, allow_amx, cpu_has_amx=AMX_BUFFER in names)
        kept = [buft for buft, name in zip(_original, names, strict=True) if name in plan.kept]
        # The array holds len(_original) entries and a terminating null: rewrite it in place.
        for i in range(len(_original) + 1):
            array[i] = kept[i] if i < len(kept) else None
    if plan.removed or not plan.use_extra_bufts:
        log.info(
            "llama.cpp CPU weight buffers: %s (without %s, see edgetts/llama/cpu_buffers.py)",
            ", ".join(plan.kept) or "plain",
            ", ".join(plan.removed) or "the extra buffer types",
        )
    return plan
