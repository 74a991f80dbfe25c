"""When to stop sampling: Adaptive-Consistency's Beta stopping rule for the vote-based strategies.

A vote over N samples has often settled long before N: when the first eight samples all agree,
eight more rarely change the winner. Adaptive sampling draws the samples in *waves* (a wave
decodes together in one batch, so batching stays efficient) and, after each wave, asks how likely
the answer now leading is to stay ahead; it stops once that is at least ``threshold``.

The rule is Adaptive-Consistency's Beta criterion (Aggarwal et al., 2023): with ``v1`` votes for
the leader and ``v2`` for the runner-up, the leader's share of the two, under a uniform prior, is
``Beta(v1 + 1, v2 + 1)``; the probability that it stays the majority is the chance that share
exceeds one half. It is computed exactly (the regularised incomplete Beta function, no sampling),
so the decision is a pure function of the votes: deterministic, and the same in a simulation over
kept samples as live. (The samples themselves are seeded as in one run of N; on llama.cpp a long
sample can still differ token-wise from its full-run twin, since logits round differently with
the rows in a batch: a replay is then an estimate of a live run, not its copy.)

Weighted votes (PRM scores, trace confidence) enter as their *shares* of the total weight, scaled
to the number of samples that voted: ``v = n_votes * weight / total``. So the evidence grows with
the number of samples, as in the unweighted rule, whatever the weights' scale, and the weights
decide how it splits. Samples without an answer do not vote and so never help a stop.

``n`` (``SearchConfig.n``) stays the maximum: the last wave is cut to fit it, and a vote that has
not settled by then simply uses all ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# Continued-fraction evaluation of the incomplete Beta function: these bounds reach double
# precision for the vote counts seen here (a few hundred at most) well before the cap.
_CF_MAX_ITER = 300
_CF_EPS = 1e-15
_TINY = 1e-300


@dataclass(frozen=True)
class Tally:
    """A vote as it stands: summed weight per answer, and how many samples voted."""

    totals: Mapping[str, float]
    n_votes: int


@dataclass(frozen=True)
class AdaptiveStop:
    """Settings of adaptive sampling: stop once the leader stays ahead with ``threshold``
    probability, never before ``min_n`` samples; draw ``wave`` samples at a time."""

    # Chance the leader stays the majority. 0.95 is Adaptive-Consistency's setting; the kept
    # sample sets put its cost and accuracy beside other thresholds (tools/bench_adaptive.py).
    threshold: float = 0.95
    min_n: int = 4  # never stop before this many samples (the first wave draws at least this many)
    wave: int = 4  # samples decoded together between checks

    def validate(self) -> None:
        """Raise ValueError with a user-facing message for impossible settings."""
        if not 0.5 <= self.threshold <= 1.0:
            raise ValueError(f"adaptive threshold must be in [0.5, 1], got {self.threshold}")
        if self.min_n < 1:
            raise ValueError(f"adaptive min_n must be at least 1, got {self.min_n}")
        if self.wave < 1:
            raise ValueError(f"adaptive wave must be at least 1, got {self.wave}")

    def waves(self, n: int, drawn: int = 0) -> list[int]:
        """Sizes of the waves that bring ``drawn`` samples up to at most ``n``: the first reaches
        at least ``min_n`` (or one wave), later ones add ``wave``, the last is cut to fit."""
        sizes: list[int] = []
        while drawn < n:
            size = max(self.wave, self.min_n - drawn)
            size = min(size, n - drawn)
            sizes.append(size)
            drawn += size
        return sizes

    def settled(self, tally: Tally, drawn: int) -> bool:
        """Whether sampling may stop after ``drawn`` samples whose vote is ``tally``."""
        if drawn < self.min_n:
            return False
        return leader_probability(tally) >= self.threshold


def replay(rule: AdaptiveStop, n: int, tally_of_first: Callable[[int], Tally], drawn: int = 0) -> int:
    """How many of ``n`` samples adaptive sampling draws, given the vote over the first ``k``
    (``tally_of_first(k)``), from ``drawn`` samples already there.

    The live strategies stop exactly here (:func:`edgetts.search.common.sample_in_waves` walks
    the same waves), so a replay over kept samples in their order is what a live run would do.
    """
    if drawn and rule.settled(tally_of_first(drawn), drawn):
        return drawn
    for size in rule.waves(n, drawn):
        drawn += size
        if rule.settled(tally_of_first(drawn), drawn):
            break
    return drawn


def leader_probability(tally: Tally) -> float:
    """Probability that the leading answer stays ahead of the runner-up (0 with no votes).

    ``P(X > 1/2)`` for ``X ~ Beta(v1 + 1, v2 + 1)``, where ``v1`` and ``v2`` are the leader's and
    runner-up's votes, weights turned into vote counts by their shares (module docstring).
    """
    weights = sorted((max(float(w), 0.0) for w in tally.totals.values()), reverse=True)
    total = sum(weights)
    if tally.n_votes <= 0 or total <= 0:
        return 0.0
    v1 = tally.n_votes * weights[0] / total
    v2 = tally.n_votes * weights[1] / total if len(weights) > 1 else 0.0
    # P(X > 1/2) = 1 - I_{1/2}(a, b) = I_{1/2}(b, a) for X ~ Beta(a, b)
    return regularized_beta(0.5, v2 + 1.0, v1 + 1.0)


def regularized_beta(x: float, a: float, b: float) -> float:
    """The regularised incomplete Beta function ``I_x(a, b)`` (the Beta(a, b) CDF at ``x``).

    Lentz's continued fraction (Numerical Recipes, ``betai``), on whichever side of the mean it
    converges fast; pure ``math``, so no SciPy at run time.
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"Beta parameters must be positive, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(x, a, b) / a
    return 1.0 - front * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of the incomplete Beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _CF_MAX_ITER + 1):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for num in (even, odd):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            delta = d * c
            h *= delta
        if abs(delta - 1.0) < _CF_EPS:
            break
    return h
