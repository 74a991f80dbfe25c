"""edgetts: offline test-time scaling for small language models.

>>> import edgetts
>>> edgetts.solve("A pen costs 3 dollars. How much do 7 pens cost?").answer
'21'

The names below load on first use (PEP 562), so that ``import edgetts.grading`` or the
answer-comparing child (``python -m edgetts.symbolic``) does not load llama.cpp and numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Each public name and the module that defines it.
_EXPORTS = {
    "PolicyConfig": "edgetts.policy",
    "PolicyError": "edgetts.policy",
    "PromptTooLong": "edgetts.policy",
    "SearchNotStarted": "edgetts.policy",
    "Sampling": "edgetts.search.base",
    "SearchConfig": "edgetts.search.base",
    "SearchResult": "edgetts.search.base",
    "SolveOptions": "edgetts.solver",
    "Solver": "edgetts.solver",
    "solve": "edgetts.solver",
}
__all__ = [
    "PolicyConfig",
    "PolicyError",
    "PromptTooLong",
    "Sampling",
    "SearchConfig",
    "SearchNotStarted",
    "SearchResult",
    "SolveOptions",
    "Solver",
    "solve",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from edgetts.policy import PolicyConfig, PolicyError, PromptTooLong, SearchNotStarted
    from edgetts.search.base import Sampling, SearchConfig, SearchResult
    from edgetts.solver import SolveOptions, Solver, solve


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    try:  # a submodule, as `import edgetts; edgetts.solver` found it when the package loaded it
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise  # the submodule exists and lacks something it imports
        raise AttributeError(f"module 'edgetts' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
