"""The policy: a GGUF model on llama.cpp that grows solution paths step by step.

``llama_policy`` is the orchestration (prefill once, fork sequences, decode every live path in
one batch per token); ``slots`` and ``steps`` are its bookkeeping, testable without a model;
``config`` its settings. The llama.cpp objects it drives live in :mod:`edgetts.llama`.
"""

from edgetts.policy.config import (
    GeneratorCounters,
    PolicyConfig,
    PolicyError,
    PromptTooLong,
    SearchNotStarted,
    available_cores,
    check_threads,
    default_threads,
)
from edgetts.policy.llama_policy import LlamaPolicy
from edgetts.prompts import Prompt

__all__ = [
    "GeneratorCounters",
    "LlamaPolicy",
    "SearchNotStarted",
    "PolicyConfig",
    "PolicyError",
    "Prompt",
    "PromptTooLong",
    "available_cores",
    "check_threads",
    "default_threads",
]
