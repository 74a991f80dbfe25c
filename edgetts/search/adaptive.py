"""When to stop sampling: a stopping rule for the vote-based strategies.

A vote over N samples has often settled long before N: when the first eight samples all agree,
eight more rarely change the winner. Adaptive sampling draws the samples in *waves* (a wave
decodes together in one batch, so batching stays efficient) and, after each wave, asks how likely
the answer now leading is to stay ahead; it stops once that is at least ``threshold``.

Two rules, both computed exactly (no sampling), so a decision is a pure function of the votes:
deterministic, and the same in a simulation over kept samples as live.

* ``"beta"``: Adaptive-Consistency's Beta criterion (Aggarwal et al., 2023). With ``v1`` votes for
  the leader and ``v2`` for the runner-up, the leader's share of the two, under a uniform prior, is
  ``Beta(v1 + 1, v2 + 1)``; the probability that it stays the majority is the chance that share
  exceeds one half (the regularised incomplete Beta function). It asks about the vote *in the long
  run*, as if sampling could go on for ever.
* ``"budget"`` (the default): the same model asked the question that matters when at most ``n``
  samples will be drawn: will the leader still lead once the ``n - drawn`` samples left are in?
  The next samples are predicted by the posterior of that model (a Dirichlet-multinomial over
  leader, runner-up and everything else, each with one prior vote: a Polya urn), and the
  probability is summed exactly over how the samples left can split (a tie counts one half).
  As the samples left grow, it tends to the Beta rule's probability; with few left, a lead they
  cannot overturn stops at once. On the kept N = 16 sets at 0.95 it saves about twice the Beta
  rule's tokens on GSM8K (19 % against 10 % with majority), with accuracy within one problem of
  all N on both sets (``tools/bench_adaptive.py``, ``docs/bench``).

(The samples themselves are seeded as in one run of N; on llama.cpp a long
sample can still differ token-wise from its full-run twin, since logits round differently with
the rows in a batch: a replay is then an estimate of a live run, not its copy.)

Weighted votes (PRM scores, trace confidence) enter as their *shares* of the total weight, scaled
to the number of samples that voted: ``v = n_votes * weight / total``. So the evidence grows with
the number of samples, as in the unweighted rule, whatever the weights' scale, and the weights
decide how it splits. Samples without an answer do not vote and so never help a stop.

``n`` (``SearchConfig.n``) stays the maximum: the last wave is cut to fit it, and a vote that has
not settled by then simply uses all ``n``.

Pruning (``prune_below``, with a PRM): a sample need not run to its end to be outvoted. With the
``min`` aggregation a sample whose weakest step so far scores under ``prune_below`` would add
less than that to its answer's total, however it ends; the generator stops it at that step
(``StepGenerator.extend(stop_early=...)``, stop reason ``"pruned"``) and it votes only when no
sample has a real answer. A wave always runs one of its samples to the end, so the vote never
rests on pruned fragments alone when the PRM dislikes every sample. The shipped probe's
threshold, 0.2, is the largest that lost no problem at N = 8 on the training sets the probe
never saw (32 GSM8K-train, 98 MAWPS-train problems, ``tools/bench_adaptive.py --prune-below``).
Replayed on the kept N = 16 test sets at the threshold 0.95, weighted best-of-N then saves 37 %
of its tokens on GSM8K (23 % without pruning) and 59 % on MAWPS, one problem better on GSM8K and
level on MAWPS (docs/bench, "Pruning").

A weighted vote's own threshold (``weighted_threshold``): the vote's evidence is the verifier's
weights, and a verifier that puts most weight on one answer makes that evidence firmer than the
same count of plain votes; how far it can be trusted is the verifier's to say, so its manifest
may set ``adaptive_threshold`` and the Solver copies it here (weighted best-of-N and ``auto``'s
weighted continuation stop at it; majority and the confidence vote keep ``threshold``). The
shipped probe's 0.8 is the lowest of 0.8-0.95 that lost no problem on problems it never saw,
among them 30 MAWPS problems at N = 16 where majority at 0.9 already lost one. Replayed on the
kept N = 16 test sets with pruning, weighted best-of-N then saves 53 % of its tokens on GSM8K
(one problem better: won 3, lost 2) and 66 % on MAWPS (one problem worse) (docs/bench, "The
weighted vote's own threshold").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

# Continued-fraction evaluation of the incomplete Beta function: these bounds reach double
# precision for the vote counts seen here (a few hundred at most) well before the cap.
_CF_MAX_ITER = 300
_CF_EPS = 1e-15
_TINY = 1e-300
RULES = ("budget", "beta")


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
    rule: str = "budget"  # one of RULES (module docstring)
    # With a PRM (weighted best-of-N, auto's weighted continuation): a sample whose lowest step
    # score so far falls below this stops at that step and votes only as a fallback, like a path
    # cut short, so its remaining tokens are never decoded (module docstring, "Pruning"). On the
    # PRM's own scale, so the Solver takes it from the verifier's manifest; None: no pruning.
    prune_below: float | None = None
    # With a PRM-weighted vote (weighted best-of-N, auto's weighted continuation): the threshold
    # it stops at instead of ``threshold``. Its evidence is the verifier's weights, whose spread
    # is the verifier's own, so the Solver takes it from the verifier's manifest
    # (``adaptive_threshold``, module docstring); None: ``threshold``.
    weighted_threshold: float | None = None

    def validate(self) -> None:
        """Raise ValueError with a user-facing message for impossible settings."""
        if self.rule not in RULES:
            raise ValueError(f"adaptive rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if not 0.5 <= self.threshold <= 1.0:
            raise ValueError(f"adaptive threshold must be in [0.5, 1], got {self.threshold}")
        if self.weighted_threshold is not None and not 0.5 <= self.weighted_threshold <= 1.0:
            raise ValueError(
                f"adaptive weighted_threshold must be in [0.5, 1], got {self.weighted_threshold}"
            )
        if self.min_n < 1:
            raise ValueError(f"adaptive min_n must be at least 1, got {self.min_n}")
        if self.wave < 1:
            raise ValueError(f"adaptive wave must be at least 1, got {self.wave}")
        if self.prune_below is not None and not 0.0 < self.prune_below < 1.0:
            raise ValueError(f"adaptive prune_below must be in (0, 1), got {self.prune_below}")

    def for_weighted_vote(self) -> AdaptiveStop:
        """This rule as a PRM-weighted vote applies it: ``weighted_threshold`` when set."""
        if self.weighted_threshold is None:
            return self
        return replace(self, threshold=self.weighted_threshold, weighted_threshold=None)

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

    def settled(self, tally: Tally, drawn: int, n: int) -> bool:
        """Whether sampling may stop after ``drawn`` of at most ``n`` samples whose vote is ``tally``."""
        if drawn < self.min_n:
            return False
        return self.probability(tally, drawn, n) >= self.threshold

    def probability(self, tally: Tally, drawn: int, n: int) -> float:
        """This rule's chance that the leader stays ahead (compared with ``threshold``)."""
        if self.rule == "beta":
            return leader_probability(tally)
        return stay_ahead_probability(tally, drawn, n - drawn)


def replay(rule: AdaptiveStop, n: int, tally_of_first: Callable[[int], Tally], drawn: int = 0) -> int:
    """How many of ``n`` samples adaptive sampling draws, given the vote over the first ``k``
    (``tally_of_first(k)``), from ``drawn`` samples already there.

    The live strategies stop exactly here (:func:`edgetts.search.common.sample_in_waves` walks
    the same waves), so a replay over kept samples in their order is what a live run would do.
    """
    if drawn and rule.settled(tally_of_first(drawn), drawn, n):
        return drawn
    for size in rule.waves(n, drawn):
        drawn += size
        if rule.settled(tally_of_first(drawn), drawn, n):
            break
    return drawn


def _leader_and_runner_up(tally: Tally) -> tuple[float, float] | None:
    """The leader's and runner-up's votes, weights turned into vote counts by their shares of
    the voters (module docstring); None when nobody voted."""
    weights = sorted((max(float(w), 0.0) for w in tally.totals.values()), reverse=True)
    total = sum(weights)
    if tally.n_votes <= 0 or total <= 0:
        return None
    v1 = tally.n_votes * weights[0] / total
    v2 = tally.n_votes * weights[1] / total if len(weights) > 1 else 0.0
    return v1, v2


def stay_ahead_probability(tally: Tally, drawn: int, remaining: int) -> float:
    """Probability that the leader still leads after ``remaining`` more samples (0 with no votes;
    a tie at the end counts one half). The ``"budget"`` rule of the module docstring.

    The ``drawn`` samples split into the leader's ``v1`` votes, the runner-up's ``v2`` and the
    rest ``v3`` (other answers, and samples without one). Each of the three gets one prior vote;
    the ``remaining`` samples then split as a Dirichlet-multinomial with those counts, whose
    probabilities are summed over every split in which the leader stays ahead.
    """
    votes = _leader_and_runner_up(tally)
    if votes is None:
        return 0.0
    if remaining <= 0:
        return 1.0
    v1, v2 = votes
    alphas = (v1 + 1.0, v2 + 1.0, max(drawn - v1 - v2, 0.0) + 1.0)
    # log of r! Gamma(A) / Gamma(r + A) / prod Gamma(alpha): the part of the pmf all splits share
    log_front = math.lgamma(remaining + 1) + math.lgamma(sum(alphas)) - math.lgamma(remaining + sum(alphas))
    log_front -= sum(math.lgamma(a) for a in alphas)
    # log Gamma(k + alpha) / k! for k = 0..remaining, per group; a split (i, j, r - i - j) sums three
    counts = range(remaining + 1)
    leader, runner, rest = (
        np.array([math.lgamma(k + a) - math.lgamma(k + 1) for k in counts]) for a in alphas
    )
    i = np.arange(remaining + 1)[:, None]  # samples to the leader
    j = np.arange(remaining + 1)[None, :]  # samples to the runner-up
    to_rest = remaining - i - j
    log_p = log_front + leader[i] + runner[j] + rest[np.clip(to_rest, 0, remaining)]
    margin = (v1 + i) - (v2 + j)
    # a tie counts one half; a fractional margin (weighted votes) is never a tie
    credit = np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))
    stay = float(np.sum(np.exp(log_p) * credit, where=to_rest >= 0))
    return min(stay, 1.0)


def leader_probability(tally: Tally) -> float:
    """Probability that the leading answer stays ahead of the runner-up (0 with no votes).

    ``P(X > 1/2)`` for ``X ~ Beta(v1 + 1, v2 + 1)``, where ``v1`` and ``v2`` are the leader's and
    runner-up's votes, weights turned into vote counts by their shares (module docstring).
    """
    votes = _leader_and_runner_up(tally)
    if votes is None:
        return 0.0
    v1, v2 = votes
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
