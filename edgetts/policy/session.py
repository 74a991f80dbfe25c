"""One search's view of a shared policy: a StepGenerator with its own counters and slots.

Several searches (threads of an app, a server's concurrent requests) can each hold a session on
one :class:`~edgetts.policy.llama_policy.LlamaPolicy`: their paths are decoded together in the
policy's one decode loop, while each session counts what its search spent (its counters add up
to the policy's) and owns what its paths hold. Closing a session frees every KV slot and parked
copy its paths still hold, and its prompt's prefill when no other session uses it: a finished
or cancelled search hands its slots to the others at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgetts.policy.config import GeneratorCounters
from edgetts.prompts import Prompt
from edgetts.search.base import Deadline, Sampling, SolutionPath

if TYPE_CHECKING:
    from edgetts.policy.llama_policy import LlamaPolicy


class PolicySession:
    """A StepGenerator for one search at a time on a shared policy (see module doc).

    ``counters``: where the session counts (a fresh :class:`GeneratorCounters` if None; pass
    one to watch a search's progress from another thread). Everything that is not the
    StepGenerator protocol (tokenize, metadata, config) is the policy's own. ``deadline``: the
    search's wall clock and cancel, which a root waiting for a prompt slot heeds (raising
    :class:`~edgetts.policy.config.SearchNotStarted`); None waits as long as it takes.
    """

    def __init__(
        self, policy: LlamaPolicy, counters: GeneratorCounters | None = None, deadline: Deadline | None = None
    ) -> None:
        self.policy = policy
        self.counters = counters if counters is not None else GeneratorCounters()
        self.deadline = deadline
        self.template: Any = None  # the policy's prefilled prompt this session's paths grow from
        self.closed = False
        self.is_default = False  # a thread's session for calls on the policy itself

    def root(
        self, question: Prompt, sampling: Sampling | None = None, system: str | None = None
    ) -> SolutionPath:
        """As :meth:`LlamaPolicy.root`; this session's earlier paths are dropped."""
        return self.policy.search_root(self, question, sampling, system)

    def extend(
        self,
        paths: list[SolutionPath],
        n_each: int,
        to_end: bool = False,
        deadline: Deadline | None = None,
        first_index: int = 0,
        stop_early: Callable[[SolutionPath], bool] | None = None,
    ) -> list[SolutionPath]:
        """As :meth:`LlamaPolicy.extend`, decoded in one batch with every other session's paths."""
        return self.policy.search_extend(self, paths, n_each, to_end, deadline, first_index, stop_early)

    def submit(
        self,
        paths: list[SolutionPath],
        n_each: int,
        to_end: bool = False,
        deadline: Deadline | None = None,
    ) -> Any:
        """As :meth:`LlamaPolicy.submit`: one more run in the shared batch, not waited for."""
        return self.policy.search_submit(self, paths, n_each, to_end, deadline)

    def wait_any(self, tickets: list[Any]) -> tuple[Any, list[SolutionPath]]:
        """As :meth:`LlamaPolicy.wait_any`: the first of this search's submitted runs done."""
        return self.policy.search_wait_any(self, tickets)

    def release(self, paths: list[SolutionPath]) -> None:
        """Drop the KV sequences of paths the strategy no longer needs."""
        self.policy.release(paths)

    def close(self) -> None:
        """Free everything this session's paths hold (see module doc); safe to call twice."""
        if not self.closed:
            self.closed = True
            self.policy.close_search(self)

    def __enter__(self) -> PolicySession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)
