"""Paired comparison of two configurations on the same problems: wins, losses, exact sign test.

Two strategies run on the same problems differ only where one is right and the other wrong; the
sign test asks whether those disagreements split unevenly by more than chance. It is what the
benchmark notes quote ("8 won / 0 lost, p = 0.008") and what the compute-optimal fit requires
before it leaves its default rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def sign_test_p(wins: int, losses: int, two_sided: bool = True) -> float:
    """Exact sign-test p-value for ``wins`` against ``losses`` (ties left out), under p = 1/2.

    One-sided: the chance of at least ``wins`` wins among ``wins + losses`` fair coin flips.
    Two-sided: twice the smaller tail, capped at 1.
    """
    n = wins + losses
    if n == 0:
        return 1.0

    def tail(k: int) -> float:
        return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n

    if not two_sided:
        return tail(wins)
    return min(1.0, 2 * tail(max(wins, losses)))


@dataclass
class Paired:
    """How configuration A fared against B on the problems both were run on."""

    problems: int
    a_right: int
    b_right: int
    wins: int  # A right, B wrong
    losses: int  # B right, A wrong

    @property
    def p_value(self) -> float:
        """Two-sided exact sign test on the disagreements."""
        return sign_test_p(self.wins, self.losses)


def compare(a: dict[str, bool], b: dict[str, bool]) -> Paired:
    """Compare two ``problem -> correct`` maps on the problems they share."""
    shared = sorted(set(a) & set(b))
    return Paired(
        problems=len(shared),
        a_right=sum(a[k] for k in shared),
        b_right=sum(b[k] for k in shared),
        wins=sum(a[k] and not b[k] for k in shared),
        losses=sum(b[k] and not a[k] for k in shared),
    )
