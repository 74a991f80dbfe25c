"""The ``edgetts`` command line: solve one question, run a benchmark file, manage models.

Output is plain text that pipes; ``--json`` prints the full result as one JSON object. Bad input
ends with ``Error: ...`` on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from edgetts import models as registry
from edgetts.grading import answers_equal

EXIT_INTERRUPTED = 130


def _friendly_errors(func):
    """Turn the errors users cause (bad model, data, settings) into one clear line."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from edgetts.data import DataError
        from edgetts.policy import PolicyError
        from edgetts.results import ResultsError

        known: tuple[type[BaseException], ...] = (
            registry.ModelError, PolicyError, DataError, ResultsError, ValueError, OSError,
        )
        try:
            return func(*args, **kwargs)
        except known as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _search_options(func):
    """Options shared by ``solve`` and ``run`` (one definition, so they never drift apart)."""
    options = [
        click.option("--strategy", default="majority", show_default=True,
                     help="greedy, majority, best_of_n, weighted_best_of_n, beam_search or dvts."),
        click.option("-n", "--n", "n", default=4, show_default=True,
                     help="Samples (majority, best-of-N), beams (beam search) or leaves (DVTS)."),
        click.option("--beam-width", default=4, show_default=True,
                     help="Expansions per kept beam (beam search, DVTS)."),
        click.option("--max-steps", default=40, show_default=True, help="Search rounds at most."),
        click.option("--agg", default="last", show_default=True,
                     type=click.Choice(["last", "min", "prod"]),
                     help="How step scores combine into a path score."),
        click.option("--temperature", default=0.8, show_default=True, type=float),
        click.option("--top-p", default=1.0, show_default=True, type=float),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--deadline-s", type=float, default=None,
                     help="Answer within this many seconds with the best answer so far."),
        click.option("-m", "--model", default=None,
                     help="Registry name or path to a .gguf file (default: the default model)."),
        click.option("--prm", "prm_path", default=None,
                     help="PRM directory (default: the shipped PRM)."),
        click.option("--max-tokens", default=512, show_default=True,
                     help="Generated tokens per solution."),
        click.option("--threads", type=int, default=None, help="CPU threads (default: all)."),
        click.option("--n-gpu-layers", default=0, show_default=True,
                     help="Layers to offload to a GPU (CUDA build of llama.cpp)."),
        click.option("--kv-type", default="f16", show_default=True,
                     type=click.Choice(["f16", "q8_0"]), help="KV cache element type."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _make_solver(kw: dict):
    from edgetts.policy import PolicyConfig
    from edgetts.solver import SolveOptions, Solver

    options = SolveOptions(
        strategy=kw["strategy"], n=kw["n"], beam_width=kw["beam_width"],
        max_steps=kw["max_steps"], agg=kw["agg"], deadline_s=kw["deadline_s"],
        temperature=kw["temperature"], top_p=kw["top_p"], seed=kw["seed"],
    )
    options.validate()  # fail on bad settings before a model loads
    n_parallel = max(options.n, 1) if options.strategy != "greedy" else 1
    policy_config = PolicyConfig(
        model=kw["model"], max_tokens=kw["max_tokens"], n_threads=kw["threads"],
        n_gpu_layers=kw["n_gpu_layers"], kv_type=kw["kv_type"], n_seq_max=min(n_parallel, 16),
    )
    return Solver(policy_config, prm_path=kw["prm_path"]), options


@click.group()
@click.version_option(package_name="edgetts")
def main() -> None:
    """edgetts: small models answer better by spending compute at answer time.

    Sample several reasoning paths on a local GGUF model, score their steps with a process
    reward model, search, and answer. Everything runs offline.
    """


@main.command()
@click.argument("question")
@_search_options
@click.option("--show", is_flag=True, help="Also print the chosen reasoning, votes and scores.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@_friendly_errors
def solve(question: str, show: bool, as_json: bool, **kw) -> None:
    """Answer QUESTION and print the final answer.

    Example: edgetts solve "A pen costs 3 dollars. How much do 7 pens cost?" --show
    """
    if not question.strip():
        raise click.UsageError("the question is empty")
    solver, options = _make_solver(kw)
    result = solver.solve(question, options)
    if as_json:
        click.echo(json.dumps(asdict(result), ensure_ascii=False))
        return
    if show and result.chosen is not None:
        click.echo(result.chosen.text.strip())
        click.echo("")
        if result.chosen.step_scores:
            scores = " ".join(f"{s:.2f}" for s in result.chosen.step_scores)
            click.echo(f"step scores: {scores}")
        if result.votes:
            votes = ", ".join(f"{a}: {v:g}" for a, v in result.votes.items())
            click.echo(f"votes: {votes}")
        c = result.counters
        click.echo(
            f"tokens: {c.get('tokens_prefilled', 0)} prefilled, "
            f"{c.get('tokens_decoded', 0)} generated; {c.get('wall_s', 0):.1f} s"
            + (" (cut short by the deadline)" if result.cut_short else "")
        )
    click.echo(result.answer if result.answer is not None else "(no answer)")


def _record(problem, result, options, model: str | None, seconds: float) -> dict:
    correct = None if problem.answer is None else answers_equal(result.answer, problem.answer)
    candidates = []
    for cand in result.candidates:
        item = asdict(cand)
        if problem.answer is not None:
            item["correct"] = answers_equal(cand.answer, problem.answer)
        candidates.append(item)
    return {
        "id": problem.id,
        "question": problem.question,
        "gold": problem.answer,
        "answer": result.answer,
        "correct": correct,
        "strategy": result.strategy,
        "n": options.n if options.strategy != "greedy" else 1,
        "seed": options.seed,
        "model": model,
        "votes": result.votes,
        "cut_short": result.cut_short,
        "chosen": asdict(result.chosen) if result.chosen else None,
        "candidates": candidates,
        "counters": result.counters,
        "seconds": round(seconds, 3),
    }


@main.command()
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="Benchmark file (JSONL, or a .json list).")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="Results JSONL; appended, and a rerun skips problems already in it.")
@click.option("--limit", type=int, default=None, help="Only the first LIMIT problems.")
@click.option("--question-key", default=None, help="Question field(s), e.g. body+question.")
@click.option("--answer-key", default=None, help="Gold answer field.")
@click.option("--id-key", default=None, help="Problem id field (default: idx/id/line number).")
@_search_options
@_friendly_errors
def run(data_path: Path, out_path: Path, limit, question_key, answer_key, id_key, **kw) -> None:
    """Answer every problem in a benchmark file, appending one JSON line per problem."""
    import time

    from tqdm import tqdm

    from edgetts.data import load_problems
    from edgetts.results import ResultsFile

    problems = load_problems(data_path, question_key, answer_key, id_key, limit)
    results = ResultsFile(out_path)
    todo = [p for p in problems if p.id not in results.done]
    if len(todo) < len(problems):
        click.echo(f"resuming: {len(problems) - len(todo)} of {len(problems)} already in {out_path}",
                   err=True)
    solver, options = _make_solver(kw)
    try:
        for problem in tqdm(todo, desc=f"{options.strategy} n={options.n}", unit="problem",
                            disable=None, file=sys.stderr):
            start = time.perf_counter()
            result = solver.solve(problem.question, options)
            seconds = time.perf_counter() - start
            results.append(_record(problem, result, options, kw["model"], seconds))
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {len(results.records)} results kept in {out_path}; "
                   "run the same command again to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    correct, graded = results.accuracy()
    if graded:
        click.echo(f"accuracy: {correct}/{graded} = {correct / graded:.1%}")
    else:
        click.echo(f"answered {len(results.records)} problems (no gold answers to grade)")


@main.group(invoke_without_command=True)
@click.pass_context
def models(ctx: click.Context) -> None:
    """List the registry models (name, size, ready or not). Subcommands: pull, verify."""
    if ctx.invoked_subcommand is not None:
        return
    for spec in registry.load_registry().values():
        state = "ready" if registry.is_ready(spec) else "not pulled"
        default = " (default)" if spec.default else ""
        click.echo(f"{spec.name}{default}\t{spec.kind}\t{spec.size_bytes / 1e6:.0f} MB\t{state}")


@models.command("pull")
@click.argument("name", required=False)
@click.option("--force", is_flag=True, help="Download and assemble again even if ready.")
@_friendly_errors
def models_pull(name: str | None, force: bool) -> None:
    """Download and assemble NAME (default: the default model) into the cache."""
    spec = _spec(name)
    path = registry.pull(spec, force=force)
    click.echo(str(path))


@models.command("verify")
@click.argument("name", required=False)
@_friendly_errors
def models_verify(name: str | None) -> None:
    """Re-hash an assembled model against its registry sha256."""
    spec = _spec(name)
    registry.verify(spec)
    click.echo(f"{spec.name}: ok ({registry.model_path(spec)})")


def _spec(name: str | None) -> registry.ModelSpec:
    reg = registry.load_registry()
    name = name or registry.default_model_name(reg)
    if name not in reg:
        raise registry.ModelError(f"unknown model {name!r}; known: {', '.join(reg)}")
    return reg[name]


if __name__ == "__main__":
    main()
