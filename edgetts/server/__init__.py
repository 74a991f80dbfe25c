"""A local OpenAI-compatible server: ``POST /v1/chat/completions`` answers with a test-time search.

Any OpenAI client works against it, with OpenAI's meanings: ``n`` is the number of choices (the
best distinct answers the search found, ranked), and any model name means the loaded policy
(``--strict-model`` to refuse others). The search is chosen in an ``edgetts`` extension object
(``{"strategy": "weighted_best_of_n", "samples": 16, "beam_width", "deadline_s", "memory_mb", ...}``;
the old top-level fields still work, with a deprecation note), and every response carries an
``edgetts`` object with the final answer, the votes or scores and the counters. ``usage`` counts
the prompt as prefilled (``prompt_tokens``) and every token the search sampled over all its paths
(``completion_tokens``), not only the returned choices'.

The whole conversation goes through the chat template (:class:`~edgetts.prompts.Conversation`):
the client's system message replaces the math instructions, and every message is untrusted text.
``stop`` ends each sampled solution where a stop string first appears. ``POST /v1/completions``
continues a raw prompt (:class:`~edgetts.prompts.RawPrompt`) with no template.

How requests flow:

* One :class:`~edgetts.solver.Solver` (the policy and the PRM, loaded once) serves every request.
  llama.cpp has one context, so searches run one at a time on a single worker thread.
* Requests wait in a bounded queue; when it is full the server answers 503 with ``Retry-After``
  instead of piling up work it cannot finish.
* Each request owns a cancel event that the search sees as an expired deadline. A client that
  disconnects sets it: its search stops within a token and frees its KV sequences, or, if still
  queued, never starts. Shutdown (Ctrl-C, SIGTERM) sets every event, so in-flight requests still
  get their best answer so far (``cut_short``) and queued ones a 503.
* Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``.
"""

from edgetts.server.app import App, create_app, known_strategies, load_solver, model_names, serve
from edgetts.server.engine import Engine, Job
from edgetts.server.errors import ApiError
from edgetts.server.responses import code_as_search_result, ranked_choices
from edgetts.server.settings import ServerSettings

__all__ = [
    "ApiError",
    "App",
    "Engine",
    "Job",
    "ServerSettings",
    "code_as_search_result",
    "create_app",
    "known_strategies",
    "load_solver",
    "model_names",
    "ranked_choices",
    "serve",
]
