"""ctypes bindings to the few ggml functions llama-cpp-python does not bind.

llama-cpp-python loads ggml's shared libraries from its own ``lib`` folder (``llama_cpp._ggml``);
we open the same files, so every handle and pointer here belongs to the ggml instance that
llama.cpp itself uses in this process.
"""

from __future__ import annotations

import ctypes
import functools

import llama_cpp
import llama_cpp._ctypes_extensions as ctypes_ext
import llama_cpp._ggml

GGML_BACKEND_DEVICE_TYPE_CPU = 0


@functools.cache
def ggml_lib() -> ctypes.CDLL:
    """libggml (backend registry), with the signatures edgetts calls declared."""
    lib = llama_cpp._ggml.libggml
    lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


@functools.cache
def ggml_base_lib() -> ctypes.CDLL:
    """libggml-base (tensors, buffer types), with the signatures edgetts calls declared."""
    lib = ctypes_ext.load_shared_library("ggml-base", llama_cpp._ggml.libggml_base_path)
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_nelements.restype = ctypes.c_int64
    lib.ggml_nelements.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    size = ctypes.c_size_t
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, size, size]
    lib.ggml_backend_buft_name.restype = ctypes.c_char_p
    lib.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    return lib


def cpu_extra_buffer_types() -> ctypes.Array | None:
    """The CPU backend's null-terminated list of extra weight buffer types, or None if absent.

    It is the array llama.cpp itself walks when it places a model's weights (a process-wide
    static inside ggml-cpu), so an entry removed here is never chosen by a later model load.
    """
    ggml = ggml_lib()
    llama_cpp.llama_backend_init()
    device = ggml.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    if not device:
        return None
    registry = ggml.ggml_backend_dev_backend_reg(device)
    address = ggml.ggml_backend_reg_get_proc_address(registry, b"ggml_backend_dev_get_extra_bufts")
    if not address:
        return None
    get_extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)
    return get_extra(device)


def buffer_type_name(buft: int) -> str:
    return ggml_base_lib().ggml_backend_buft_name(buft).decode()
