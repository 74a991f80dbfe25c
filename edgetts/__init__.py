"""edgetts: offline test-time scaling for small language models.

>>> import edgetts
>>> edgetts.solve("A pen costs 3 dollars. How much do 7 pens cost?").answer
'21'
"""

from edgetts.policy import PolicyConfig, PolicyError, PromptTooLong, SearchNotStarted
from edgetts.search.base import Sampling, SearchConfig, SearchResult
from edgetts.solver import SolveOptions, Solver, solve

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
