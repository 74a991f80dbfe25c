"""Importing edgetts changes nothing process-wide: an app that embeds it keeps its llama.cpp
log setup until edgetts loads a model."""

import subprocess
import sys

SCRIPT = """
import ctypes
import llama_cpp

@llama_cpp.llama_log_callback
def mine(level, text, user_data):
    pass

llama_cpp.llama_log_set(mine, ctypes.c_void_p(1234))
import edgetts, edgetts.cli, edgetts.server, edgetts.solver  # everything a user may import
edgetts.Solver, edgetts.PolicyConfig  # (loaded on first use)
callback, user_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
llama_cpp.llama_log_get(ctypes.byref(callback), ctypes.byref(user_data))
print(user_data.value)
"""


def test_import_keeps_the_apps_llama_log_callback():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1234"


def test_the_answer_comparing_child_loads_neither_llama_cpp_nor_numpy():
    """``python -m edgetts.symbolic`` runs beside every grading process: importing the package
    loaded llama.cpp and numpy before its memory limit applied (0.5 s a start)."""
    script = "import sys, edgetts.symbolic; print(sorted({'llama_cpp', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_submodules_are_found_as_attributes():
    script = "import edgetts; print(edgetts.solver.Solver is edgetts.Solver, hasattr(edgetts, 'nothing'))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True False", out.stderr
