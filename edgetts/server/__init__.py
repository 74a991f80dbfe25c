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

import importlib

# Where each public name lives. They load on first use (PEP 562), so that reading the settings'
# defaults (the CLI's option defaults do) does not import the web framework.
_HOMES = {
    "App": "app",
    "create_app": "app",
    "known_strategies": "app",
    "load_solver": "app",
    "model_names": "app",
    "serve": "app",
    "Engine": "engine",
    "Job": "engine",
    "ApiError": "errors",
    "code_as_search_result": "responses",
    "ranked_choices": "responses",
    "ServerSettings": "settings",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'edgetts.server' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edgetts.server.{_HOMES[name]}"), name)
