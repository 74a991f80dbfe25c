"""The one error the llama.cpp layer raises."""

from __future__ import annotations


class LlamaError(Exception):
    """llama.cpp could not do what was asked; the message says why and what to change."""
