"""Picking a program by how candidates behave when run (pure: no model, no processes).

* **Behaviour clusters** (AlphaCode): programs that give the same outputs on the probe inputs
  (the calls in the policy's own generated tests and in the docstring examples) and the same
  pass/fail on every test are one cluster; a cluster's size is how many samples agree on it.
* **Visible tests** (the user's tests, docstring examples) filter: only clusters passing all of
  them compete; when none does, those passing the most.
* **Dual agreement** (CodeT): a cluster scores its size times the number of generated tests it
  passes, so agreement among programs and agreement with the policy's own tests both count
  and neither alone decides. Ties go to the cluster with the best-scored member (when a
  confidence score exists), then to the earliest sample.

``use_visible=False, use_generated=False`` is majority-of-outputs: the biggest cluster wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Behaviour:
    """What running one candidate showed (None fields: not run)."""

    runnable: bool  # a program was extracted and its source executed without error
    visible: tuple[bool, ...] = ()  # each visible test passed
    generated: tuple[bool, ...] = ()  # each policy-generated assert passed
    outputs: tuple[str, ...] = ()  # repr of the value (or "error: ...") on each probe input
    score: float | None = None  # confidence, for ties only


@dataclass(frozen=True)
class Cluster:
    members: tuple[int, ...]
    visible_passed: int
    generated_passed: int
    support: float  # the ranking score (see module docstring)


def clusters(behaviours: Sequence[Behaviour], use_tests: bool = True) -> list[Cluster]:
    """Runnable candidates grouped by behaviour, in order of first member."""
    groups: dict[tuple, list[int]] = {}
    for i, b in enumerate(behaviours):
        if not b.runnable:
            continue
        key = (b.outputs, b.visible, b.generated) if use_tests else b.outputs
        groups.setdefault(key, []).append(i)
    out = []
    for members in groups.values():
        first = behaviours[members[0]]
        out.append(Cluster(tuple(members), sum(first.visible), sum(first.generated), float(len(members))))
    return out


def select_program(
    behaviours: Sequence[Behaviour], use_visible: bool = True, use_generated: bool = True
) -> tuple[int | None, list[Cluster]]:
    """The index of the chosen candidate (None when none is runnable) and the ranked clusters."""
    groups = clusters(behaviours, use_tests=use_visible or use_generated)
    if not groups:
        return None, []
    if use_visible:
        best_visible = max(g.visible_passed for g in groups)
        pool = [g for g in groups if g.visible_passed == best_visible]
    else:
        pool = list(groups)
    ranked = []
    for g in pool:
        size = len(g.members)
        support = size * g.generated_passed if use_generated else size
        ranked.append(Cluster(g.members, g.visible_passed, g.generated_passed, float(support)))

    def best_score(c: Cluster) -> float:
        scores = [behaviours[i].score for i in c.members if behaviours[i].score is not None]
        return max(scores) if scores else float("-inf")

    ranked.sort(key=lambda c: (-c.support, -len(c.members), -best_score(c), c.members[0]))
    top = ranked[0]
    chosen = max(
        top.members,
        key=lambda i: (behaviours[i].score if behaviours[i].score is not None else float("-inf"), -i),
    )
    return chosen, ranked
