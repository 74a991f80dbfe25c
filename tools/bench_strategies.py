"""Accuracy against compute for every strategy, the way the test-time-scaling figures show it.

Per problem, as the method does, sampling is paid once: ``--n-max`` full samples are drawn and
scored by the PRM, and majority / best-of-N / weighted best-of-N at every N <= n-max are computed
from the first N of them. Greedy runs once; beam search and DVTS run for real at each N. One JSON
line per (problem, strategy, N) is appended to ``--out``; a rerun skips what is there (resumable).

    python tools/bench_strategies.py run --data ../shared/data/gsm8k_test.jsonl --limit 100 \\
        --out runs/bench_gsm8k.jsonl --dataset gsm8k
    python tools/bench_strategies.py run ... --model qwen2.5-coder-1.5b-instruct --only greedy
    python tools/bench_strategies.py report --results runs/bench_gsm8k.jsonl --plot docs/gsm8k.png
    python tools/bench_strategies.py rescore --samples runs/bench_gsm8k.samples.jsonl \\
        --prm work/prm/new --out runs/bench_gsm8k_newprm.jsonl
    python tools/bench_strategies.py rescore --labels runs/labels/gsm8k_test \\
        --prm edgetts/assets/prm-probe-qwen05 --out runs/gsm8k_test.rescored.jsonl
    python tools/bench_strategies.py compare runs/bench_gsm8k.jsonl:beam_search:4 \\
        runs/bench_gsm8k.jsonl:best_of_n:16     # paired: wins, losses, sign test

``run`` also keeps every problem's samples in ``<out>.samples.jsonl`` and their step states (the
policy's hidden state at each step end) in ``<out>.states/<problem_id>.npz``: ``rescore``
recomputes the sample-based rows (majority, best-of-N, weighted best-of-N) with another PRM, a
text PRM or a policy probe (``edgetts.probe``), without sampling again. ``rescore --labels`` reads
the committed N = 16 sets instead (``data/labels/*.jsonl.gz``, unpacked with their states by
``tools/label_steps.py restore``): the bench's selection tables are made from those.

Rows: ``{problem_id, dataset, model, strategy, n, correct, answer, gold, tokens_generated,
seconds, prm, difficulty_features}``; ``tokens_generated`` counts each generated token once (a
tree's tokens, or the N samples'), and tree rows add ``tokens_redecoded``, the tokens decoded
again to rebuild beams parked when N paths outnumber the 16 KV slots (rows written before
2026-12-03 counted those inside ``tokens_generated``); ``difficulty_features`` (agreement and
PRM scores of the first four samples) is what ``tools/fit_compute_optimal.py`` bins problems by.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import paired
from plots import accuracy_axes, accuracy_curve, accuracy_level, dodged, save_accuracy_plot, standard_error
from rows import open_rows
from train_probe import load_layers

from edgetts.arithmetic import has_wrong_arithmetic
from edgetts.data import load_problems
from edgetts.grading import answers_equal
from edgetts.models import default_model_name
from edgetts.policy import LlamaPolicy, PolicyConfig, default_threads
from edgetts.pot import run_written_programs
from edgetts.probe import load_scorer, load_states, policy_prm_dir, save_states
from edgetts.prompts import split_steps
from edgetts.results import ResultsFile
from edgetts.sandbox import Sandbox
from edgetts.search import run_search
from edgetts.search.auto import difficulty_features  # the same features auto sees at run time
from edgetts.search.base import Candidate, Sampling, SearchConfig, SolutionPath, aggregate
from edgetts.search.common import pick
from edgetts.search.registry import REGISTRY, names
from edgetts.search.select import pick_by_vote, score_paths, to_candidate
from edgetts.solver import SolveOptions

# Computed from the kept samples' PRM scores (confidence_vote needs token confidence instead).
SUBSET_STRATEGIES = tuple(s for s in names("sample") if not REGISTRY[s].needs_confidence)
SEARCH_STRATEGIES = names("tree")
REPO = Path(__file__).resolve().parent.parent


def prm_label(directory: str | Path) -> str:
    """How a row names its PRM: relative to the repository when it ships there, so rows made on
    two machines name the shipped PRM alike; any other path as given."""
    path = Path(directory).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(directory)


def done_rows(rows: ResultsFile) -> set[tuple[str, str, str, int]]:
    """The (problem, model, strategy, N) rows a results file already holds."""
    return {(r["problem_id"], r["model"], r["strategy"], r["n"]) for r in rows.records}


def samples_path(out: Path, samples: str | None = None) -> Path:
    """Where ``run`` keeps every problem's N_max samples: ``--samples``, else beside the results."""
    return Path(samples) if samples else out.with_name(out.stem + ".samples.jsonl")


def subset_rows(candidates: list[Candidate], gold: str, n_list: list[int]) -> list[dict]:
    """Majority, best-of-N and weighted best-of-N at each N from the first N samples."""
    rows = []
    for n in n_list:
        subset = candidates[:n]
        # Majority sees no scores (tied votes go to the earliest answer): the same baseline
        # whatever PRM scored the samples.
        unscored = [dataclasses.replace(c, score=None) for c in subset]
        picks = {
            "majority": pick_by_vote(unscored, lambda c: 1.0)[0],
            "best_of_n": pick(subset, weighted=False)[0],
            "weighted_best_of_n": pick(subset, weighted=True)[0],
        }
        tokens = sum(c.n_tokens for c in subset)
        for strategy, chosen in picks.items():
            answer = chosen.answer if chosen else None
            rows.append(
                {
                    "strategy": strategy,
                    "n": n,
                    "answer": answer,
                    "correct": answers_equal(answer, gold),
                    "tokens_generated": tokens,
                }
            )
    return rows


def pick_record(c: Candidate) -> dict:
    """A tree search's finished path as its row keeps it: answer and scores, no text."""
    return {
        "answer": c.answer,
        "score": None if c.score is None else round(c.score, 5),
        "step_scores": [round(x, 5) for x in c.step_scores],
        "n_tokens": c.n_tokens,
        "provisional": c.provisional,
    }


def kept_layers(scorer: object) -> tuple[int, ...]:
    """The policy layers whose step states are kept: a probe's own, else the final layer."""
    return tuple(getattr(scorer, "state_layers", ())) or (-1,)


def run(args: argparse.Namespace) -> None:
    # The PRM edgetts itself would pick for this policy (its own probe when one ships).
    prm = args.prm or policy_prm_dir(args.model)
    # What every row of a file must share; the rows themselves differ by problem, strategy and N.
    keys = "temperature top_p top_k seed max_tokens n_max beam_width max_steps agg rank_agg".split()
    settings = {key: getattr(args, key) for key in keys}
    if args.only and set(args.only) <= set(SEARCH_STRATEGIES):  # what picks a tree search's answer
        settings["weighted_pick"] = not args.best_pick
    # Beam search's refill (the default since stop 41, whose rows record nothing) or narrowing
    if args.no_refill:
        settings["beam_refill"] = False
    # DVTS's first steps in a DVTS run: dealt (stop 44's default, whose rows record nothing) or in
    # order (the default since stop 45; its rows say so)
    if args.only and "dvts" in args.only and set(args.only) <= set(SEARCH_STRATEGIES) and not args.deal:
        settings["dvts_deal"] = False
    out = open_rows(Path(args.out), {**settings, "prm": prm_label(prm)})
    done = done_rows(out)
    kept = open_rows(samples_path(Path(args.out), args.samples), None)
    problems = load_problems(args.data, args.question_key, args.answer_key, args.id_key, args.limit)
    # A shard (--offset) lets two processes share the 2 cores on one sweep, appending to one file.
    problems = problems[args.offset :]
    model = args.model or default_model_name()
    scorer = load_scorer(prm, threads=default_threads()) if args.only != ["greedy"] else None
    # Kept states are those the PRM reads (a probe's layers), so a rescore with it needs no policy.
    layers = kept_layers(scorer)
    policy = LlamaPolicy(
        PolicyConfig(
            model=args.model,
            max_tokens=args.max_tokens,
            n_seq_max=min(args.n_max, 16),
            seed=args.seed,
            capture_states=True,
            state_layers=layers,
            capture_confidence=getattr(scorer, "needs_confidence", False),
        )
    )
    n_list = sorted(n for n in args.n if n <= args.n_max)
    sampling = Sampling(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    agg = args.agg or (scorer.default_aggregation if scorer else "last")
    for index, problem in enumerate(problems):
        base = {"problem_id": problem.id, "dataset": args.dataset, "model": model, "gold": problem.answer}

        def todo(strategy: str, n: int, problem_id: str = problem.id) -> bool:
            return (problem_id, model, strategy, n) not in done and (not args.only or strategy in args.only)

        features: dict[str, float] = {}
        if todo("greedy", 1):
            greedy = SearchConfig(n=1, sampling=dataclasses.replace(sampling, temperature=0.0))
            result = run_search("majority", problem.question, policy, None, greedy)
            out.append(
                {
                    **base,
                    "strategy": "greedy",
                    "n": 1,
                    "answer": result.answer,
                    "correct": answers_equal(result.answer, problem.answer),
                    "tokens_generated": result.counters["tokens_generated"],
                    "seconds": result.counters["wall_s"],
                    "difficulty_features": {},
                },
            )
        if any(todo(s, n) for s in SUBSET_STRATEGIES for n in n_list):
            start = time.perf_counter()
            paths = policy.extend([policy.root(problem.question, sampling)], args.n_max, to_end=True)
            policy.release(paths)
            score_paths(scorer, problem.question, paths)
            candidates = [to_candidate(p, agg) for p in paths]
            seconds = time.perf_counter() - start
            features = difficulty_features(candidates)
            # The samples are the expensive part: keep them so another PRM can rescore them later.
            kept_states_dir(kept.path).mkdir(parents=True, exist_ok=True)
            save_states(kept_states_dir(kept.path) / f"{problem.id}.npz", paths)
            kept.append(
                {
                    **base,
                    "question": problem.question,
                    "prm": prm_label(scorer.directory),
                    "seconds": round(seconds, 3),
                    "candidates": [asdict(c) for c in candidates],
                },
            )
            for row in subset_rows(candidates, problem.answer, n_list):
                if todo(row["strategy"], row["n"]):
                    out.append(
                        {
                            **base,
                            **row,
                            "seconds": round(seconds * row["n"] / args.n_max, 3),
                            "prm": prm_label(prm),
                            "difficulty_features": features,
                        },
                    )
        for strategy in SEARCH_STRATEGIES:
            for n in n_list:
                if n < args.beam_width or not todo(strategy, n) or n > args.search_n_max:
                    continue
                config = SearchConfig(
                    n=n,
                    beam_width=args.beam_width,
                    max_steps=args.max_steps,
                    agg=agg,
                    rank_agg=args.rank_agg,
                    weighted_pick=not args.best_pick,
                    dvts_deal=args.deal,
                    beam_refill=not args.no_refill,
                    sampling=sampling,
                )
                result = run_search(strategy, problem.question, policy, scorer, config)
                out.append(
                    {
                        **base,
                        "strategy": strategy,
                        "n": n,
                        "answer": result.answer,
                        "correct": answers_equal(result.answer, problem.answer),
                        "tokens_generated": result.counters["tokens_generated"],
                        "tokens_redecoded": result.counters["tokens_redecoded"],
                        "seconds": result.counters["wall_s"],
                        "prm": prm_label(prm),
                        "difficulty_features": features,
                        # what the search picked among (no text), so `repick` can pick again
                        "finished": [pick_record(c) for c in result.candidates],
                    },
                )
        print(f"[{index + 1}/{len(problems)}] {problem.id} done", flush=True)


def kept_sample_rows(args: argparse.Namespace) -> list[dict]:
    """The kept sample sets ``rescore`` reads, each row with ``states_file`` and ``layers``.

    ``--samples``: ``run``'s ``<out>.samples.jsonl`` (states in ``<out>.states``, the policy
    probe's own layers). ``--labels``: a ``tools/label_steps.py sample`` folder (``results.jsonl``
    and ``states/``, as ``label_steps.py restore`` rebuilds them from the committed
    ``data/labels`` rows), whose rows hold no question (``--data`` gives them to a text PRM).
    """
    if args.samples:
        folder = kept_states_dir(Path(args.samples))
        return [
            {**r, "states_file": folder / f"{r['problem_id']}.npz", "layers": None}
            for r in load_rows([args.samples])
        ]
    folder = Path(args.labels)
    questions = {str(p.id): p.question for p in load_problems(args.data)} if args.data else {}
    rows = [r for r in load_rows([str(folder / "results.jsonl")]) if r["source"] == "sample"]
    # The dataset's first --limit problems (label rows are written in no particular order).
    rows = sorted(rows, key=lambda r: (len(str(r["id"])), str(r["id"])))[: args.limit]
    return [
        {
            "problem_id": str(r["id"]),
            "dataset": r["dataset"],
            "model": args.model or default_model_name(),
            "gold": r["gold"],
            "question": questions.get(str(r["id"]), ""),
            "seconds": None,  # label runs kept no per-problem time
            "candidates": r["candidates"],
            "states_file": folder / "states" / f"{r['key']}.npz",
            "layers": r["layers"],
        }
        for r in rows
    ]


def kept_paths(sample_row: dict, wanted_layers: list[int]) -> list[SolutionPath]:
    """The row's kept step states, cut to the layers a probe reads when more were captured."""
    if sample_row["layers"] is None:  # run kept the probe's own layers
        return load_states(sample_row["states_file"])
    return load_layers(sample_row["states_file"], list(sample_row["layers"]), wanted_layers)


def rescore(args: argparse.Namespace) -> None:
    """Sample-based rows again from kept samples, scored by another PRM (no policy needed)."""
    scorer = load_scorer(args.prm, threads=args.threads)
    sandbox = Sandbox() if args.run_programs else None
    if args.labels and not getattr(scorer, "needs_states", False) and not args.data:
        sys.exit("error: --labels rows hold no question; a text PRM needs them from --data")
    agg = args.agg or scorer.default_aggregation
    settings = {
        "prm": prm_label(scorer.directory),
        "agg": agg,
        "check_arithmetic": not args.no_check_arithmetic,
        "run_programs": args.run_programs,
    }
    out = open_rows(Path(args.out), settings)
    done = done_rows(out)
    n_list = sorted(args.n)
    skipped = 0
    for sample_row in kept_sample_rows(args):
        cands = [Candidate.from_dict(c) for c in sample_row["candidates"]]
        if getattr(scorer, "needs_states", False):
            if not sample_row["states_file"].is_file():
                skipped += 1
                continue
            paths = kept_paths(sample_row, list(scorer.state_layers))
            scored = scorer.score(sample_row["question"], paths)
        else:
            scored = scorer.score_steps(sample_row["question"], [split_steps(c.text) for c in cands])
        cands = [
            dataclasses.replace(c, step_scores=sc, score=aggregate(sc, agg) if sc else None)
            for c, sc in zip(cands, scored, strict=True)
        ]
        base = {k: sample_row[k] for k in ("problem_id", "dataset", "model", "gold")}
        features = difficulty_features(cands)  # every sample counts, as auto computes them
        if not args.no_check_arithmetic:  # as a search marks its candidates (edgetts.arithmetic)
            cands = [dataclasses.replace(c, arithmetic_error=has_wrong_arithmetic(c.text)) for c in cands]
        if sandbox is not None:  # --run-programs: as the Solver does after a search
            cands, _ = run_written_programs(cands, sandbox)
        for row in subset_rows(cands, sample_row["gold"], [n for n in n_list if n <= len(cands)]):
            if (base["problem_id"], base["model"], row["strategy"], row["n"]) not in done:
                total = sample_row["seconds"]
                seconds = None if total is None else round(total * row["n"] / len(cands), 3)
                out.append(
                    {
                        **base,
                        **row,
                        "seconds": seconds,
                        "prm": prm_label(scorer.directory),
                        "difficulty_features": features,
                    },
                )
    if skipped:
        print(
            f"{skipped} problems skipped: no step states kept for them (sampled before run kept "
            "them, or not restored); this PRM reads the policy's states"
        )
    print(f"rows written to {out.path}")


def kept_states_dir(samples: Path) -> Path:
    """``<out>.states`` beside ``<out>.samples.jsonl``."""
    return samples.with_name(samples.name.removesuffix(".samples.jsonl") + ".states")


def states(args: argparse.Namespace) -> None:
    """Fill in step states for samples kept before ``run`` kept them (policy probes need them)."""
    samples = Path(args.samples)
    folder = kept_states_dir(samples)
    folder.mkdir(parents=True, exist_ok=True)
    probe = load_scorer(args.prm or policy_prm_dir(args.model), threads=1)
    config = PolicyConfig(
        model=args.model, n_seq_max=1, max_tokens=1024, capture_states=True, state_layers=kept_layers(probe)
    )
    policy = LlamaPolicy(config)
    for row in load_rows([args.samples]):
        target = folder / f"{row['problem_id']}.npz"
        if target.is_file():
            continue
        paths = [
            policy.read_solution(row["question"], split_steps(c["text"]), as_generated=True)
            for c in row["candidates"]
        ]
        save_states(target, paths)
        print(f"{row['problem_id']}: states of {len(paths)} samples", flush=True)


def load_rows(paths: list[str]) -> list[dict]:
    """JSON lines of every file, a ``.gz`` one read through gzip."""
    rows = []
    for path in paths:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def summarize(rows: list[dict]) -> dict[tuple[str, str, int], dict[str, float]]:
    """(model, strategy, n) -> accuracy, mean generated tokens, problems, over shared problems."""
    by_key: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in rows:
        by_key[r["model"], r["strategy"], r["n"]].append(r)
    return {
        key: {
            "accuracy": statistics.fmean(bool(r["correct"]) for r in group),
            "tokens": statistics.fmean(r["tokens_generated"] for r in group),
            "problems": len(group),
        }
        for key, group in sorted(by_key.items())
    }


def wanted(row: dict, only: list[str]) -> bool:
    """Whether ``--only`` (strategies, or ``strategy:N`` for one N of a strategy) keeps ``row``."""
    return not only or row["strategy"] in only or f"{row['strategy']}:{row['n']}" in only


def problem_of(row: dict) -> str:
    """A row's problem, named by dataset and id: ids repeat across datasets."""
    return f"{row.get('dataset')}/{row['problem_id']}"


def report(args: argparse.Namespace) -> None:
    rows = [r for r in load_rows(args.results) if wanted(r, args.only)]
    # Compare on the problems every (model, strategy, n) has, so partial runs stay fair.
    per_key: dict[tuple, set[str]] = defaultdict(set)
    for r in rows:
        key = r["model"], r["strategy"], r["n"]
        if problem_of(r) in per_key[key]:  # it would count twice in the mean
            raise SystemExit(f"two rows of {problem_of(r)} for {key} in {' '.join(map(str, args.results))}")
        per_key[key].add(problem_of(r))
    common = set.intersection(*per_key.values()) if per_key else set()
    rows = [r for r in rows if problem_of(r) in common]
    summary = summarize(rows)
    print(f"{len(common)} problems common to every row; ± is one standard error")
    print(f"{'model':<30} {'strategy':<20} {'N':>3} {'accuracy':>9} {'±':>6} {'gen tokens':>11}")
    for (model, strategy, n), s in summary.items():
        se = standard_error(s["accuracy"], s["problems"])
        print(f"{model:<30} {strategy:<20} {n:>3} {s['accuracy']:>9.1%} {se:>6.1%} {s['tokens']:>11.0f}")
    if args.plot:
        plot(summary, args.plot, args.title or Path(args.results[0]).stem, len(common))


def correct_map(spec: str) -> dict[str, bool]:
    """``FILE:STRATEGY:N`` -> ``{dataset/problem_id: correct}`` for that configuration's rows."""
    parts = spec.rsplit(":", 2)
    if len(parts) != 3 or not parts[1] or not parts[2].isdigit():
        raise SystemExit(f"wanted FILE:STRATEGY:N (e.g. docs/bench/mawps.jsonl:beam_search:4), got {spec!r}")
    path, strategy, n = parts
    if not Path(path).is_file():
        raise SystemExit(f"no such results file: {path}")
    rows = [r for r in load_rows([path]) if r["strategy"] == strategy and r["n"] == int(n)]
    models = sorted({r["model"] for r in rows})
    if not models:
        raise SystemExit(f"{spec}: no rows of that strategy and N in the file")
    if len(models) > 1:
        raise SystemExit(f"{spec}: rows of several models ({', '.join(models)}); split the file by model")
    return {problem_of(r): bool(r["correct"]) for r in rows}


def compare(args: argparse.Namespace) -> None:
    result = paired.compare(correct_map(args.a), correct_map(args.b))
    if not result.problems:
        raise SystemExit("the two configurations share no problem")
    k = result.problems
    print(f"A {args.a}: {result.a_right}/{k} right ({result.a_right / k:.1%})")
    print(f"B {args.b}: {result.b_right}/{k} right ({result.b_right / k:.1%})")
    print(
        f"on {k} shared problems A won {result.wins}, lost {result.losses} "
        f"(two-sided sign test p = {result.p_value:.3g})"
    )


def repick(args: argparse.Namespace) -> None:
    """Tree-search rows again with the finished paths' answers summed by score (weighted pick)
    instead of the top score: ``STRATEGY_weighted`` rows, from the paths the rows kept."""
    out = open_rows(Path(args.out), None)
    done = done_rows(out)
    rows = [r for r in load_rows(args.results) if r["strategy"] in SEARCH_STRATEGIES]
    kept = [r for r in rows if "finished" in r]
    if len(kept) < len(rows):
        print(
            f"{len(rows) - len(kept)} of {len(rows)} rows kept no finished paths: left out", file=sys.stderr
        )
    for r in kept:
        strategy = f"{r['strategy']}_weighted"
        if (r["problem_id"], r["model"], strategy, r["n"]) in done:
            continue
        candidates = [Candidate(text="", stop_reason=None, **c) for c in r["finished"]]
        chosen, _ = pick(candidates, weighted=True)
        answer = chosen.answer if chosen else None
        fresh = {k: v for k, v in r.items() if k != "finished"}
        out.append(
            {**fresh, "strategy": strategy, "answer": answer, "correct": answers_equal(answer, r["gold"])},
        )


def plot(summary: dict, path: str, title: str, n_problems: int) -> None:
    models = sorted({m for m, _, _ in summary})
    default = default_model_name()
    fig, ax = accuracy_axes()
    colors = dict(
        zip(
            ("majority", "best_of_n", "weighted_best_of_n", "beam_search", "dvts"),
            ("tab:gray", "tab:blue", "tab:green", "tab:red", "tab:purple"),
            strict=True,
        )
    )
    drawn = [st for st in colors if any(m == default and k == st for m, k, _ in summary)]
    for index, strategy in enumerate(drawn):
        points = sorted(
            (n, s["accuracy"], s["problems"])
            for (m, st, n), s in summary.items()
            if m == default and st == strategy
        )
        ns, accuracy, problems = zip(*points, strict=True)
        accuracy_curve(
            ax,
            dodged(ns, index, len(drawn)),
            accuracy,
            problems,
            color=colors[strategy],
            label=strategy.replace("_", " "),
        )
    styles = iter(["--", ":"])
    for model in models:
        greedy = summary.get((model, "greedy", 1))
        if greedy:
            accuracy_level(
                ax,
                greedy["accuracy"],
                greedy["problems"],
                linestyle=next(styles, "-."),
                color="black",
                label=f"{model} greedy",
            )
    save_accuracy_plot(
        fig, ax, path, "N (samples / beams), log scale", f"{title} ({n_problems} problems, policy {default})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="answer problems with every strategy, append rows")
    r.add_argument("--data", required=True)
    r.add_argument("--out", required=True)
    r.add_argument(
        "--samples",
        default=None,
        help="where to keep the samples (they hold the question text, so keep them out of "
        "the repo): default <out>.samples.jsonl, their step states beside it in <name>.states/",
    )
    r.add_argument("--dataset", default="data")
    r.add_argument("--limit", type=int, default=None)
    r.add_argument(
        "--offset",
        type=int,
        default=0,
        help="skip the first K of the --limit problems (to run shards side by side)",
    )
    r.add_argument("--question-key")
    r.add_argument("--answer-key")
    r.add_argument("--id-key")
    r.add_argument("--model", default=None, help="policy (default: the default model)")
    r.add_argument(
        "--prm", default=None, help="PRM directory (default: the one edgetts picks for the policy)"
    )
    r.add_argument("--n", type=int, nargs="+", default=[1, 4, 16])
    r.add_argument("--n-max", type=int, default=16, help="samples drawn once per problem")
    r.add_argument("--search-n-max", type=int, default=16, help="largest N for beam search / DVTS")
    r.add_argument("--beam-width", type=int, default=4)
    r.add_argument(
        "--agg",
        choices=["last", "min", "prod"],
        default=None,
        help="path score from step scores (default: the PRM manifest's)",
    )
    r.add_argument("--max-steps", type=int, default=12)
    r.add_argument(
        "--rank-agg",
        choices=["last", "min", "prod"],
        default=None,
        help="how beam search and DVTS rank partial paths (default: as --agg; SearchConfig.rank_agg)",
    )
    r.add_argument(
        "--best-pick",
        action="store_true",
        help="beam search answers with its best-scored beam, not the score-weighted vote of its N beams",
    )
    r.add_argument(
        "--deal",
        action="store_true",
        help="DVTS deals distinct first steps to different subtrees (SearchConfig.dvts_deal; the "
        "default gives each subtree M in order, repeats and all)",
    )
    r.add_argument(
        "--no-refill",
        action="store_true",
        help="beam search's survivors grow M beams each, however few survive (SearchConfig.beam_refill; "
        "the default refills them to N)",
    )
    r.add_argument("--max-tokens", type=int, default=400)
    r.add_argument("--temperature", type=float, default=SolveOptions.temperature)
    r.add_argument("--top-p", type=float, default=SolveOptions.top_p)
    r.add_argument("--top-k", type=int, default=SolveOptions.top_k)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--only", nargs="*", default=[], help="only these strategies (e.g. greedy)")
    p = sub.add_parser("report", help="table (and plot) of accuracy against N")
    p.add_argument("--results", nargs="+", required=True)
    p.add_argument("--plot", default=None, help="PNG path")
    p.add_argument("--title", default=None)
    p.add_argument(
        "--only",
        nargs="*",
        default=[],
        help="only these strategies, or STRATEGY:N for one N of one (a partial run: more "
        "problems in common), e.g. majority best_of_n beam_search:4",
    )
    q = sub.add_parser("rescore", help="sample-based rows again, from kept samples, with another PRM")
    kept = q.add_mutually_exclusive_group(required=True)
    kept.add_argument("--samples", help="<out>.samples.jsonl written by run")
    kept.add_argument(
        "--labels", help="a tools/label_steps.py sample folder (results.jsonl and states/): data/labels sets"
    )
    q.add_argument("--data", default=None, help="with --labels and a text PRM: the questions' file")
    q.add_argument("--limit", type=int, default=None, help="with --labels: the first N problems only")
    q.add_argument(
        "--model",
        default=None,
        help="with --labels: the policy that sampled them (default: the default policy)",
    )
    q.add_argument("--prm", required=True, help="PRM directory")
    q.add_argument("--out", required=True, help="results JSONL (appended, resumable)")
    q.add_argument("--n", type=int, nargs="+", default=[1, 4, 16])
    q.add_argument(
        "--agg",
        choices=["last", "min", "prod"],
        default=None,
        help="path score from step scores (default: the PRM manifest's)",
    )
    q.add_argument("--threads", type=int, default=1)
    q.add_argument(
        "--no-check-arithmetic",
        action="store_true",
        help="let every sample vote (as before stop 38); by default a sample whose written sums "
        "do not hold votes only when none without such a slip has an answer, as searches do",
    )
    q.add_argument(
        "--run-programs",
        action="store_true",
        help="run the Python each kept sample writes (in the sandbox) and let its printed number "
        "answer, as SolveOptions(run_programs=True) does",
    )
    t = sub.add_parser("states", help="step states of kept samples that have none (a prefill each)")
    t.add_argument("--samples", required=True, help="<out>.samples.jsonl written by run")
    t.add_argument("--model", default=None)
    t.add_argument("--prm", default=None, help="the probe whose layers to keep (default: the policy's own)")
    c = sub.add_parser("compare", help="A against B on the problems both ran: wins, losses, sign test")
    c.add_argument("a", help="FILE:STRATEGY:N, e.g. docs/bench/mawps.jsonl:beam_search:4")
    c.add_argument("b", help="FILE:STRATEGY:N, e.g. docs/bench/mawps.jsonl:best_of_n:16")
    w = sub.add_parser("repick", help="tree-search rows again, the finished paths' answers summed by score")
    w.add_argument("--results", nargs="+", required=True, help="run's rows (beam search, DVTS)")
    w.add_argument("--out", required=True, help="results JSONL (appended, resumable)")
    args = ap.parse_args()
    commands = {
        "run": run,
        "report": report,
        "rescore": rescore,
        "states": states,
        "compare": compare,
        "repick": repick,
    }
    commands[args.command](args)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # `report ... | head` closed the pipe: stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
