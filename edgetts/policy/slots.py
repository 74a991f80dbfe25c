"""Which KV sequence ids are free: the bookkeeping of the policy's slots, with no model behind it."""

from __future__ import annotations

TEMPLATE_SLOT = 0  # the prefilled prompt's sequence; never handed out


class SlotPool:
    """Sequence ids ``1..n_slots`` for the paths being decoded; ``TEMPLATE_SLOT`` holds the prompt.

    A freed id is the next one taken, so a search that forks and frees in turn keeps reusing
    the same few ids. The KV cells behind an id are the policy's to drop when it frees one.
    """

    def __init__(self, n_slots: int) -> None:
        self.n_slots = n_slots
        self.free: list[int] = []  # empty until the first prompt: nothing to fork from yet

    def reset(self) -> None:
        """Every id free (a new prompt: the cache holds only the template)."""
        self.free = list(range(self.n_slots, 0, -1))

    def take(self) -> int:
        return self.free.pop()

    def next_free(self) -> int:
        """The id :meth:`take` would return, left free (for a short use that gives it back)."""
        return self.free[-1]

    def give(self, slot: int) -> None:
        self.free.append(slot)

    def __len__(self) -> int:
        return len(self.free)
