"""Which KV sequence ids are free: the bookkeeping of the policy's slots, with no model behind it."""

from __future__ import annotations

TEMPLATE_SLOT = 0  # the prefilled prompt's sequence; never handed out


class SlotPool:
    """Sequence ids ``1..n_slots`` for the paths being decoded, shared by every search on the
    policy; ``TEMPLATE_SLOT`` (and the ids after ``n_slots``) hold prompts.

    A freed id is the next one taken, so a search that forks and frees in turn keeps reusing
    the same few ids. The KV cells behind an id are the policy's to drop when it frees one.
    """

    def __init__(self, n_slots: int) -> None:
        self.n_slots = n_slots
        self.free: list[int] = []  # the policy resets it (every id free) once its context exists

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


class ParkBudget:
    """Bytes of parked KV held in host memory, within a limit (0: parking keeps nothing).

    A path parked for lack of KV slots keeps its own cells here, to be restored instead of
    decoded again; past the limit it is dropped and rebuilt by decoding (the fallback). The
    policy holds bytes when it saves a path and drops them when no child will restore it.
    """

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 0:
            raise ValueError(f"the park budget must be 0 or more bytes, got {limit_bytes}")
        self.limit = limit_bytes
        self.used = 0
        self.peak = 0  # the most held at once since the policy was made

    def hold(self, n_bytes: int) -> bool:
        """Reserve ``n_bytes`` if they fit under the limit; False (nothing reserved) if not."""
        if n_bytes <= 0 or self.used + n_bytes > self.limit:
            return False
        self.used += n_bytes
        self.peak = max(self.peak, self.used)
        return True

    def drop(self, n_bytes: int) -> None:
        """Give back bytes reserved with :meth:`hold`."""
        if not 0 <= n_bytes <= self.used:
            raise ValueError(f"dropping {n_bytes} bytes, but only {self.used} are held")
        self.used -= n_bytes
