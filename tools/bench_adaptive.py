"""Adaptive sampling replayed over kept sample sets: tokens saved and accuracy, per threshold.

Each kept row (``tools/label_steps.py sample``; ``data/labels/*.jsonl.gz`` or a run's
``results.jsonl``) holds one problem's N samples in the order the policy drew them, each with its
answer, whether it is right, its token count and trace confidence. Live adaptive sampling draws
samples seeded as those, in that order (waves are numbered on: ``StepGenerator.extend(first_index)``)
and stops where :func:`edgetts.search.adaptive.replay` stops, so replaying the rule over a row
estimates a live run at the same seed without decoding a token. An estimate, not a copy: on
llama.cpp a sample's tokens depend a little on the other rows of its batch (float rounding), so
live samples part from kept ones now and then (``--live`` counts how often the two agree)::

    python tools/bench_adaptive.py data/labels/gsm8k_test.jsonl.gz data/labels/mawps.jsonl.gz \\
        --thresholds 0.8 0.9 0.95 0.99
    # all problems of the bench's rows: a lower bound from the problems that stop after one wave
    python tools/bench_adaptive.py data/labels/*.jsonl.gz \\
        --bench docs/bench/gsm8k_test.jsonl docs/bench/mawps.jsonl
    # and a live run (`edgetts run --strategy majority -n 16 ...`) against the bench's full N
    python tools/bench_adaptive.py data/labels/gsm8k_test.jsonl.gz \\
        --live runs/adaptive/gsm8k_test_majority16.jsonl --baseline docs/bench/gsm8k_test.jsonl

Per dataset and vote (majority; DeepConf's confidence vote), for the full N and each threshold:
accuracy, the paired sign test against the full N (``tools/paired.py``), the generated tokens
(summed over problems) and the samples used per problem (median, mean). Rows of several files
for one problem count once (the one with more samples). Weighted best-of-N needs PRM scores,
which kept rows do not carry: ``--states runs/labels/gsm8k_test ...`` scores each sample with the
probe (``--prm``, default the shipped one) from the step states a label run keeps beside its rows
(``tools/label_steps.py restore`` recomputes them on a new machine) and adds its rows for the
problems whose states are there.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired import compare  # noqa: E402

from edgetts.arithmetic import has_wrong_arithmetic  # noqa: E402
from edgetts.search.adaptive import RULES, AdaptiveStop, Tally, replay  # noqa: E402
from edgetts.search.base import Candidate, SolutionPath, aggregate  # noqa: E402
from edgetts.search.confidence_vote import KEEP, MODE  # noqa: E402
from edgetts.search.select import (  # noqa: E402
    pick_by_confidence,
    pick_by_vote,
    tally_confidence,
    tally_votes,
    to_candidate,
)

if TYPE_CHECKING:
    from edgetts.probe import ProbeScorer

DEFAULT_THRESHOLDS = (0.8, 0.9, 0.95, 0.99)
RULE_LABELS = {"beta": "Beta", "budget": "budget"}  # the table's rule column


@dataclass
class Problem:
    """One kept row: its samples in drawing order and which of them are right."""

    key: str
    dataset: str
    candidates: list[Candidate]
    correct: list[bool]
    confidence: list[float]  # DeepConf trace confidence (MODE) per sample
    step_ends: list[list[int]] = field(default_factory=list)  # per sample: tokens at each step's end
    layers: tuple[int, ...] = ()  # the policy layers its step states were kept from
    scores: list[float] | None = None  # each sample's PRM score, when add_probe_scores found states
    # each sample as a path (steps, step scores, step_token_ends), when add_probe_scores found states
    paths: list[SolutionPath] | None = None

    @property
    def n(self) -> int:
        return len(self.candidates)


def _open(path: Path) -> Iterable[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from f


def load(paths: list[Path], check_arithmetic: bool = True) -> list[Problem]:
    """Kept rows from ``paths``, one per problem (the one with the most samples); with
    ``check_arithmetic`` each sample is marked as a search marks it (edgetts.arithmetic)."""
    best: dict[str, Problem] = {}
    for path in paths:
        for line in _open(path):
            if not line.strip():
                continue
            row = json.loads(line)
            cands = row["candidates"]
            problem = Problem(
                key=row["key"],
                dataset=row["dataset"],
                candidates=[
                    replace(
                        Candidate.from_dict(c),
                        arithmetic_error=check_arithmetic and has_wrong_arithmetic(c["text"]),
                    )
                    for c in cands
                ],
                correct=[bool(c["correct"]) for c in cands],
                confidence=[_confidence(c) for c in cands],
                step_ends=[list(c.get("step_token_ends") or []) for c in cands],
                layers=tuple(row.get("layers") or ()),
            )
            if problem.key not in best or problem.n > best[problem.key].n:
                best[problem.key] = problem
    return list(best.values())


def _confidence(cand: dict) -> float:
    conf = cand.get("trace_conf") or {}
    return float(conf[MODE]) if MODE in conf else 0.0


def add_probe_scores(problems: list[Problem], state_dirs: list[Path], scorer: ProbeScorer) -> int:
    """Score each problem's samples with the probe ``scorer`` from their kept step states
    (``<dir>/states/<key>.npz``, as ``tools/label_steps.py sample`` / ``restore`` leave them),
    each sample's score aggregated as the probe's manifest says; returns how many were scored."""
    from train_probe import load_layers

    wanted = list(scorer.state_layers)
    done = 0
    for p in problems:
        files = [d / "states" / f"{p.key}.npz" for d in state_dirs]
        file = next((f for f in files if f.is_file()), None)
        if file is None or not p.layers:
            continue
        paths = load_layers(file, list(p.layers), wanted)
        scores = scorer.score("", paths)  # the calculator check caps steps, as in a search
        p.scores = [aggregate(s, scorer.default_aggregation) if s else 0.0 for s in scores]
        for path, step_scores, c, ends in zip(paths, scores, p.candidates, p.step_ends, strict=True):
            path.scores, path.n_tokens, path.stop_reason = list(step_scores), c.n_tokens, "eos"
            path.step_token_ends = path.step_token_ends or ends
        p.paths = paths
        done += 1
    return done


def step_cuts(text: str, steps: list[str]) -> list[int] | None:
    """Where in ``text`` (a kept row's) each of ``steps`` (as its states file has them, maybe
    stripped of separators) ends; the last runs to the end of the text. None if one is missing."""
    cuts, pos = [], 0
    for step in steps:
        found = text.find(step.strip(), pos)
        if found < 0:
            return None
        pos = found + len(step.strip())
        cuts.append(pos)
    if cuts:
        cuts[-1] = len(text)
    return cuts


def save_step_scores(problems: list[Problem], out: Path, prm: str, agg: str) -> int:
    """Keep what :func:`add_probe_scores` found, without the states: per problem and sample,
    where each step ends in the row's text and its score (gzip JSONL; :func:`add_step_scores`)."""
    kept = 0
    with gzip.open(out, "wt", encoding="utf-8") as f:
        for p in problems:
            if p.paths is None:
                continue
            row = {
                "key": p.key,
                "prm": prm,
                "agg": agg,
                "step_cuts": [
                    step_cuts(c.text, path.steps) for c, path in zip(p.candidates, p.paths, strict=True)
                ],
                "step_scores": [[round(v, 6) for v in path.scores] for path in p.paths],
            }
            f.write(json.dumps(row) + "\n")
            kept += 1
    return kept


def add_step_scores(problems: list[Problem], files: list[Path]) -> int:
    """Step scores kept by :func:`save_step_scores`, on the rows' own texts; returns how many
    problems had them. A sample whose steps could not be placed in its text runs to its end."""
    kept = {}
    for file in files:
        for line in _open(file):
            if line.strip():
                row = json.loads(line)
                kept[row["key"]] = row
    done = 0
    for p in problems:
        row = kept.get(p.key)
        if row is None:
            continue
        paths = []
        for c, cuts, scores, ends in zip(
            p.candidates, row["step_cuts"], row["step_scores"], p.step_ends, strict=True
        ):
            bounds = [0, *(cuts or [len(c.text)])]
            steps = [c.text[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            paths.append(
                SolutionPath(
                    steps=steps,
                    finished=True,
                    stop_reason="eos",
                    n_tokens=c.n_tokens,
                    scores=list(scores) if cuts else [],
                    step_token_ends=list(ends),
                )
            )
        p.scores = [aggregate(s, row["agg"]) if s else 0.0 for s in row["step_scores"]]
        p.paths = paths
        done += 1
    return done


def pruned(p: Problem, below: float, waves: Sequence[int], check_arithmetic: bool = True) -> Problem:
    """``p`` as weighted best-of-N with ``AdaptiveStop.prune_below`` would have drawn it in waves
    of ``waves`` samples: a sample whose weakest step so far scores under ``below`` ends at that
    step (never at its last), its tokens up to there, and votes as a pruned path does
    (:func:`to_candidate`); but as :class:`edgetts.search.common.Pruner`, a wave stops at most all
    but one of its samples, in the order a batch reaches them (tokens, then sample order)."""
    assert p.paths is not None and p.scores is not None, "pruned needs add_probe_scores"
    cands, scores = list(p.candidates), list(p.scores)
    first = 0
    for size in waves:
        members = range(first, min(first + size, len(p.paths)))
        first += size
        cuts = {i: k for i in members if (k := _prune_step(p.paths[i], below)) is not None}
        in_order = sorted(cuts, key=lambda i: (p.paths[i].step_token_ends[cuts[i]], i))
        for i in in_order[: size - 1]:
            path, k = p.paths[i], cuts[i]
            cut = SolutionPath(
                steps=path.steps[: k + 1],
                finished=True,
                stop_reason="pruned",
                n_tokens=path.step_token_ends[k],
                scores=path.scores[: k + 1],
            )
            cands[i] = to_candidate(cut, "min", check_arithmetic)
            scores[i] = min(path.scores[: k + 1])
    return replace(p, candidates=cands, scores=scores)


def _prune_step(path: SolutionPath, below: float) -> int | None:
    """The step (not the last) at which ``path``'s weakest score so far first falls under ``below``."""
    if len(path.step_token_ends) != len(path.steps) or len(path.scores) != len(path.steps):
        return None  # kept without its token counts: runs to its end
    lowest = 1.0
    for k, score in enumerate(path.scores[:-1]):
        lowest = min(lowest, score)
        if lowest < below:
            return k
    return None


# A vote over a row's first k samples: (its tally for the stopping rule, is its pick right)
Vote = Callable[[Problem, int], tuple[Tally, bool]]


def majority_vote(p: Problem, k: int) -> tuple[Tally, bool]:
    """Majority over the first ``k`` samples, as ``majority`` counts it."""
    cands = p.candidates[:k]
    chosen, _ = pick_by_vote(cands, lambda c: 1.0)
    return tally_votes(cands, lambda c: 1.0), _right(p, chosen, cands)


def confidence_vote(p: Problem, k: int) -> tuple[Tally, bool]:
    """DeepConf's filtered, confidence-weighted vote over the first ``k``, as ``confidence_vote``."""
    cands, confs = p.candidates[:k], p.confidence[:k]
    chosen, _ = pick_by_confidence(cands, confs, KEEP)
    return tally_confidence(cands, confs, KEEP), _right(p, chosen, cands)


def _right(p: Problem, chosen: Candidate | None, among: list[Candidate]) -> bool:
    """Whether ``chosen``, one of ``among`` (the row's first samples, in order), is right."""
    if chosen is None:
        return False
    index = next(i for i, c in enumerate(among) if c is chosen)
    return p.correct[index]


def weighted_vote(p: Problem, k: int) -> tuple[Tally, bool]:
    """Weighted best-of-N over the first ``k``: answers summed by PRM score (add_probe_scores)."""
    cands = _scored(p, k)
    chosen, _ = pick_by_vote(cands, lambda c: c.score or 0.0)
    return tally_votes(cands, lambda c: c.score or 0.0), _right(p, chosen, cands)


def _scored(p: Problem, k: int) -> list[Candidate]:
    """The first ``k`` samples, each with its PRM score (the kept candidates are left as they were)."""
    assert p.scores is not None, "weighted_vote needs add_probe_scores"
    return [replace(c, score=s) for c, s in zip(p.candidates[:k], p.scores, strict=False)]


VOTES: dict[str, Vote] = {
    "majority": majority_vote,
    "confidence_vote": confidence_vote,
    "weighted_best_of_n": weighted_vote,
}


def simulate(problems: list[Problem], vote: Vote, rule: AdaptiveStop | None) -> dict[str, dict]:
    """key -> samples used, tokens used, right; ``rule`` None: all N."""
    out = {}
    for p in problems:
        k = p.n if rule is None else replay(rule, p.n, lambda k, p=p: vote(p, k)[0])
        out[p.key] = {
            "samples": k,
            "tokens": sum(c.n_tokens for c in p.candidates[:k]),
            "right": vote(p, k)[1],
        }
    return out


def table(
    problems: list[Problem],
    thresholds: list[float],
    min_n: int,
    wave: int,
    rules: Sequence[str] = RULES,
    prune_below: Sequence[float] = (),
    check_arithmetic: bool = True,
) -> list[str]:
    """Markdown rows: per dataset and vote, the full N and each rule at each threshold; for
    weighted best-of-N also each ``prune_below`` (all N, and each rule), against the full N."""
    lines = [
        "| dataset | vote | rule | problems | accuracy | Δ points | won/lost (p) "
        "| tokens | saved | samples median / mean |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for dataset in sorted({p.dataset for p in problems}):
        rows = [p for p in problems if p.dataset == dataset]
        for name, vote in VOTES.items():
            if vote is weighted_vote:  # only the problems whose states were found (--states)
                rows = [p for p in rows if p.scores is not None]
                if not rows:
                    continue
            full = simulate(rows, vote, None)
            full_tokens = sum(r["tokens"] for r in full.values())
            full_acc = _acc(full)
            lines.append(_line(dataset, name, f"all {_ns(rows)}", full, full_acc, None, full_tokens))
            prunes = (None, *prune_below) if vote is weighted_vote else (None,)
            for below in prunes:
                suffix = "" if below is None else f", pruned under {below:g}"
                if below is not None:
                    res = simulate([pruned(p, below, [p.n], check_arithmetic) for p in rows], vote, None)
                    lines.append(_line(dataset, name, f"all{suffix}", res, full_acc, full, full_tokens))
                for rule_name in rules:
                    for threshold in thresholds:
                        rule = AdaptiveStop(threshold=threshold, min_n=min_n, wave=wave, rule=rule_name)
                        cut = (
                            rows
                            if below is None
                            else [pruned(p, below, rule.waves(p.n), check_arithmetic) for p in rows]
                        )
                        res = simulate(cut, vote, rule)
                        label = f"{RULE_LABELS[rule_name]} {threshold:g}{suffix}"
                        lines.append(_line(dataset, name, label, res, full_acc, full, full_tokens))
    return lines


def _ns(rows: list[Problem]) -> str:
    ns = sorted({p.n for p in rows})
    return "N = " + "/".join(str(n) for n in ns)


def _acc(res: dict[str, dict]) -> float:
    return 100.0 * sum(r["right"] for r in res.values()) / max(len(res), 1)


def _line(
    dataset: str,
    vote: str,
    rule: str,
    res: dict[str, dict],
    full_acc: float,
    full: dict[str, dict] | None,
    full_tokens: int,
) -> str:
    acc = _acc(res)
    tokens = sum(r["tokens"] for r in res.values())
    samples = [r["samples"] for r in res.values()]
    if full is None:
        delta, paired, saved = "", "", ""
    else:
        pair = compare({k: r["right"] for k, r in res.items()}, {k: r["right"] for k, r in full.items()})
        delta = f"{acc - full_acc:+.1f}"
        paired = f"{pair.wins}/{pair.losses} ({pair.p_value:.2f})"
        saved = f"{100.0 * (1 - tokens / max(full_tokens, 1)):.0f} %"
    return (
        f"| {dataset} | {vote} | {rule} | {len(res)} | {acc:.1f} % | {delta} | {paired} "
        f"| {tokens} | {saved} | {statistics.median(samples):g} / {statistics.fmean(samples):.1f} |"
    )


def full_n_rows(path: Path, strategy: str, n: int) -> dict[str, dict]:
    """Problem id -> ``{"correct", "tokens_generated"}`` of the full-N rows in ``path``: the
    bench's rows (``docs/bench/*.jsonl``, one per strategy and N) or a live ``edgetts run
    --no-adaptive`` results file (the same machine as the adaptive run: no drift between them)."""
    base = {}
    for r in map(json.loads, filter(str.strip, _open(path))):
        if r["strategy"] != strategy or r["n"] != n:
            continue
        if "problem_id" in r:  # a bench row
            base[str(r["problem_id"])] = r
        else:  # an `edgetts run` row
            if not r.get("settings", {}).get("no_adaptive", True):
                raise SystemExit(f"{path}: not a full-N run (it sampled adaptively)")
            base[str(r["id"])] = {
                "correct": r["correct"],
                "tokens_generated": r["counters"]["tokens_generated"],
            }
    return base


def live_table(
    live_path: Path,
    baseline_path: Path,
    kept: list[Problem],
    rule: AdaptiveStop,
    check_arithmetic: bool = True,
) -> list[str]:
    """A live adaptive run (``edgetts run`` rows) against the full-N baseline rows of the bench
    (``docs/bench/*.jsonl``, strategy and n as the live run's), and against the replay of
    ``rule`` (the one the live run used, with its ``prune_below``) over kept rows of the same
    problems (what the simulation predicted for them). Majority, or weighted best-of-N where
    the kept rows have PRM scores."""
    live = [json.loads(line) for line in _open(live_path) if line.strip()]
    strategy, n = live[0]["strategy"], live[0]["n"]
    base = full_n_rows(baseline_path, strategy, n)
    rows = [r for r in live if str(r["id"]) in base]
    right = {str(r["id"]): bool(r["correct"]) for r in rows}
    full = {k: bool(base[k]["correct"]) for k in right}
    pair = compare(right, full)
    tokens = sum(sum(c["n_tokens"] for c in r["candidates"]) for r in rows)
    full_tokens = sum(base[k]["tokens_generated"] for k in right)
    samples = [len(r["candidates"]) for r in rows]
    lines = [
        f"# live {strategy}, N = {n} at most, vs the full N ({baseline_path}): {len(rows)} problems",
        f"accuracy {_pct(pair.a_right, len(rows))} vs {_pct(pair.b_right, len(rows))}"
        f" (won/lost {pair.wins}/{pair.losses}, p = {pair.p_value:.2f}); tokens {tokens} vs {full_tokens}"
        f" ({100 * (1 - tokens / max(full_tokens, 1)):.0f} % saved); samples median"
        f" {statistics.median(samples):g}, mean {statistics.fmean(samples):.1f};"
        f" seconds {sum(r['seconds'] for r in rows):.0f}",
    ]
    by_key = {p.key: p for p in kept}
    dataset = kept_dataset(kept, baseline_path)
    vote = VOTES.get(strategy)
    same_k = same_answer = checked = 0
    for r in rows:
        p = by_key.get(f"{dataset}-{r['id']}")
        if (
            p is None
            or vote not in (majority_vote, weighted_vote)
            or (vote is weighted_vote and p.scores is None)
        ):
            continue
        if vote is weighted_vote and rule.prune_below is not None:
            p = pruned(p, rule.prune_below, rule.waves(p.n), check_arithmetic)
        checked += 1
        k = replay(rule, p.n, lambda m, p=p: vote(p, m)[0])
        same_k += k == len(r["candidates"])
        if vote is weighted_vote:
            chosen, _ = pick_by_vote(_scored(p, k), lambda c: c.score or 0.0)
        else:
            chosen, _ = pick_by_vote(p.candidates[:k], lambda c: 1.0)
        same_answer += (chosen.answer if chosen else None) == r["answer"]
    if checked:
        lines.append(
            f"replay over kept rows of the same problems: samples equal on {same_k}/{checked}, "
            f"answer equal on {same_answer}/{checked}"
        )
    elif vote in (majority_vote, weighted_vote):
        lines.append(f"replay: no kept rows of these problems (kept datasets: {_datasets(kept)})")
    return lines


def _datasets(kept: list[Problem]) -> list[str]:
    return sorted({p.dataset for p in kept})


def kept_dataset(kept: list[Problem], baseline_path: Path) -> str | None:
    """The dataset of the kept rows a live run is replayed over (its rows name only ids): the
    one the baseline's rows name (the bench's do), else the kept rows' one dataset, else the one
    the baseline file is named after (``gsm8k_test.jsonl``; ``full16_gsm8k_test_live`` too)."""
    rows = [json.loads(line) for line in _open(baseline_path) if line.strip()]
    named_in_rows = {r["dataset"] for r in rows if r.get("dataset")}
    if len(named_in_rows) == 1:
        return named_in_rows.pop()
    datasets = _datasets(kept)
    if len(datasets) == 1:
        return datasets[0]
    named = [d for d in datasets if d in baseline_path.name]
    return max(named, key=len) if named else None  # gsm8k_test, not gsm8k, in gsm8k_test.jsonl


def first_wave_bound(bench_path: Path, rule: AdaptiveStop) -> str:
    """What the bench's full-N rows alone say (all their problems, no kept samples): a problem
    whose first 4 samples agree (``difficulty_features.agreement`` = 1, as ``auto`` probes) stops
    after the first wave with majority@4's answer; the rest are counted at the full N. So the
    tokens saved are a lower bound and the accuracy is exact for the problems that stop there.
    Valid when the first wave is 4 and 4 agreeing votes settle (threshold <= 31/32, min_n <= 4).
    """
    if rule.waves(16)[0] != 4 or not rule.settled(Tally({"a": 4.0}, 4), 4, 16):
        return f"first-wave bound: not for this rule ({rule})"
    rows = [json.loads(line) for line in _open(bench_path) if line.strip()]
    by = {(r["problem_id"], r["n"]): r for r in rows if r["strategy"] == "majority"}
    if not any(n == 4 for _, n in by):
        return f"{bench_path}: no majority rows at N = 4 and more"
    n_max = max(n for _, n in by)
    ids = sorted({i for i, n in by if n == n_max and (i, 4) in by})
    early = [i for i in ids if by[(i, n_max)]["difficulty_features"].get("agreement") == 1.0]
    full_tokens = sum(by[(i, n_max)]["tokens_generated"] for i in ids)
    saved = sum(by[(i, n_max)]["tokens_generated"] - by[(i, 4)]["tokens_generated"] for i in early)
    adaptive = {i: bool(by[(i, 4) if i in early else (i, n_max)]["correct"]) for i in ids}
    pair = compare(adaptive, {i: bool(by[(i, n_max)]["correct"]) for i in ids})
    return (
        f"{bench_path}: {len(ids)} problems, majority N = {n_max}; {len(early)} stop after the first "
        f"wave: at least {100.0 * saved / max(full_tokens, 1):.0f} % fewer tokens; accuracy "
        f"{_pct(pair.b_right, len(ids))} -> {_pct(pair.a_right, len(ids))} "
        f"(won/lost {pair.wins}/{pair.losses})"
    )


def _pct(k: int, n: int) -> str:
    return f"{100.0 * k / max(n, 1):.1f} %"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="kept sample rows (.jsonl or .jsonl.gz)")
    ap.add_argument("--thresholds", nargs="+", type=float, default=list(DEFAULT_THRESHOLDS))
    ap.add_argument("--min-n", type=int, default=AdaptiveStop.min_n)
    ap.add_argument("--wave", type=int, default=AdaptiveStop.wave)
    ap.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES), help="stopping rules to replay")
    ap.add_argument("--live", type=Path, help="an `edgetts run` results file of a live adaptive run")
    ap.add_argument(
        "--live-rule",
        choices=RULES,
        default=AdaptiveStop.rule,
        help="the rule the live run used (its rows do not say; the committed 15 used beta)",
    )
    ap.add_argument(
        "--live-threshold",
        type=float,
        default=AdaptiveStop.threshold,
        help="the threshold the live run stopped at (a weighted vote: its verifier's adaptive_threshold)",
    )
    ap.add_argument(
        "--live-prune-below",
        type=float,
        help="the prune_below the live run used (weighted best-of-N; its rows do not say)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        help="the full N (with --live): the bench's rows, or an `edgetts run --no-adaptive` results file",
    )
    ap.add_argument(
        "--bench",
        nargs="*",
        type=Path,
        default=[],
        help="bench rows (docs/bench/*.jsonl): the first-wave lower bound on all their problems",
    )
    ap.add_argument(
        "--states",
        nargs="*",
        type=Path,
        default=[],
        help="label-set directories with the rows' step states (runs/labels/*): adds weighted best-of-N",
    )
    ap.add_argument(
        "--no-check-arithmetic",
        action="store_true",
        help="let every sample vote, as runs before stop 38 did (default: as searches now vote)",
    )
    ap.add_argument("--prm", type=Path, default=None, help="probe for --states (default: the shipped one)")
    ap.add_argument(
        "--prune-below",
        nargs="*",
        type=float,
        default=[],
        help="with --states or --step-scores: also weighted best-of-N with samples pruned under "
        "each score (AdaptiveStop.prune_below; the shipped probe's manifest says 0.2)",
    )
    ap.add_argument(
        "--step-scores",
        nargs="*",
        type=Path,
        default=[],
        help="the probe's step scores kept by --save-step-scores (data/labels/*.probe_steps.jsonl.gz): "
        "weighted best-of-N without the states",
    )
    ap.add_argument("--save-step-scores", type=Path, help="with --states: keep the step scores in this file")
    args = ap.parse_args(argv)
    if args.prune_below and not (args.states or args.step_scores):
        ap.error("--prune-below needs --states or --step-scores (the samples' step scores)")
    if args.save_step_scores and not args.states:
        ap.error("--save-step-scores needs --states")
    problems = load(args.files, check_arithmetic=not args.no_check_arithmetic)
    if args.states:
        from edgetts.paths import shipped_dir
        from edgetts.probe import ProbeScorer

        prm = args.prm or shipped_dir() / "prm-probe-qwen05"
        scorer = ProbeScorer.load(prm, threads=1)
        scored = add_probe_scores(problems, args.states, scorer)
        print(f"# PRM scores from kept states: {scored} of {len(problems)} problems")
        if args.save_step_scores:
            save_step_scores(problems, args.save_step_scores, prm.name, scorer.default_aggregation)
    elif args.step_scores:
        scored = add_step_scores(problems, args.step_scores)
        print(
            f"# PRM step scores kept in {' '.join(map(str, args.step_scores))}: "
            f"{scored} of {len(problems)} problems"
        )
    print(f"# adaptive sampling replayed: min_n {args.min_n}, wave {args.wave}")
    check = not args.no_check_arithmetic
    lines = table(problems, args.thresholds, args.min_n, args.wave, args.rules, args.prune_below, check)
    print("\n".join(lines))
    for path in args.bench:
        print(first_wave_bound(path, AdaptiveStop(min_n=args.min_n, wave=args.wave, rule="beta")))
    if args.live and args.baseline:
        live_rule = AdaptiveStop(
            threshold=args.live_threshold,
            min_n=args.min_n,
            wave=args.wave,
            rule=args.live_rule,
            prune_below=args.live_prune_below,
        )
        print("\n".join(live_table(args.live, args.baseline, problems, live_rule, check)))


if __name__ == "__main__":
    main()
