"""The ``edgetts`` command line: solve one question, run a benchmark file, manage models.

Output is plain text that pipes; ``--json`` prints the full result as one JSON object. Bad input
ends with ``Error: ...`` on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgetts import calibration as calib
from edgetts import models as registry
from edgetts.distributed import DETECT as DETECT_RAY  # what a bare --ray means (Ray loads later)
from edgetts.policy.config import KV_TYPES, PolicyConfig
from edgetts.results import UNKNOWN, solve_row
from edgetts.search.adaptive import AdaptiveStop
from edgetts.search.base import AGGREGATIONS, MAX_N, SearchResult
from edgetts.search.registry import DEFAULT_STRATEGY, GREEDY, MODES, REGISTRY
from edgetts.search.registry import choices as strategy_choices
from edgetts.search.registry import names as search_names
from edgetts.server.settings import ServerSettings
from edgetts.solver import SolveOptions

if TYPE_CHECKING:
    from edgetts.data import Problem

EXIT_INTERRUPTED = 130
MAX_CONCURRENT = 16  # run --concurrent: problems at once (each holds a prompt sequence)
STRATEGY_NAMES = [*strategy_choices(), "exec"]  # exec: code tasks only (--task code; auto is exec there)
LOG_LEVELS = ["debug", "info", "warning", "error"]


def _friendly_errors(func):
    """Turn the errors users cause (bad model, data, settings) into one clear line."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from edgetts.data import DataError
        from edgetts.distributed import RayUnavailable
        from edgetts.policy import PolicyError
        from edgetts.results import ResultsError
        from edgetts.sandbox import SandboxUnavailable

        known: tuple[type[BaseException], ...] = (
            registry.ModelError,
            PolicyError,
            DataError,
            ResultsError,
            ValueError,
            OSError,
            SandboxUnavailable,
            RayUnavailable,
        )
        try:
            return func(*args, **kwargs)
        except BrokenPipeError:
            raise  # `| head` closed the pipe: click ends quietly, as for its own output
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except known as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


class _Positive(click.ParamType):
    """A finite number above 0 (a deadline, a memory budget): 0, negatives, inf and nan are
    usage errors at the command line, not failures at the first question or request."""

    name = "number"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} is not a positive number", param, ctx)
        return number


POSITIVE = _Positive()


def _search_options(func):
    """Options shared by ``solve`` and ``run`` (one definition, so they never drift apart)."""
    options = [
        click.option(
            "--strategy",
            default=DEFAULT_STRATEGY,
            show_default=True,
            type=click.Choice(STRATEGY_NAMES),
            help="How to search (see the README's table).",
        ),
        click.option(
            "-n",
            "--n",
            "n",
            type=click.IntRange(1, MAX_N),
            default=None,
            help="Samples (majority, best-of-N), beams (beam search) or leaves (DVTS) "
            "[default: planned under a budget, else 4].",
        ),
        click.option(
            "--beam-width",
            default=SolveOptions.beam_width,
            show_default=True,
            type=click.IntRange(1, MAX_N),
            help="Expansions per kept beam (beam search, DVTS).",
        ),
        click.option(
            "--max-steps",
            default=SolveOptions.max_steps,
            show_default=True,
            type=click.IntRange(1),
            help="Search rounds at most.",
        ),
        click.option(
            "--agg",
            default=None,
            type=click.Choice(AGGREGATIONS),
            help="How step scores combine into a path score [default: the PRM's own, from its manifest].",
        ),
        click.option("--temperature", default=SolveOptions.temperature, show_default=True, type=float),
        click.option("--top-p", default=SolveOptions.top_p, show_default=True, type=float),
        click.option(
            "--top-k",
            default=SolveOptions.top_k,
            show_default=True,
            type=int,
            help="Sample among the k likeliest tokens only (0: off).",
        ),
        click.option("--seed", default=SolveOptions.seed, show_default=True, type=int),
        click.option(
            "--no-adaptive",
            is_flag=True,
            help="Always draw all N samples: majority, weighted best-of-N, confidence vote "
            f"and auto otherwise sample in waves of {AdaptiveStop.wave} and stop once the vote has "
            "settled (the leader stays ahead through the samples left with probability "
            f"{AdaptiveStop.threshold}; a PRM-weighted vote: the verifier's adaptive_threshold, "
            "its manifest's, 0.8 for the shipped probe).",
        ),
        click.option(
            "--no-prune",
            is_flag=True,
            help="Let every sample of weighted best-of-N (and auto's weighted vote) run to its "
            "end. By default, with adaptive sampling and min or prod aggregation, a sample whose "
            "weakest step so far scores under the verifier's prune_below (its manifest; the "
            "shipped probe's 0.2) stops there.",
        ),
        click.option(
            "--no-check-arithmetic",
            is_flag=True,
            help="Let every answer vote. By default a solution whose written arithmetic does not "
            "hold (48 * 3 = 124) votes only when no solution without such a slip has an answer.",
        ),
        click.option(
            "--deadline-s",
            type=POSITIVE,
            default=None,
            help="Answer within this many seconds (model load excluded); plans N to fit.",
        ),
        click.option(
            "--memory-mb",
            type=POSITIVE,
            default=None,
            help="Peak memory budget (MB of 2**20 bytes); plans N, KV cache and slots to fit.",
        ),
        click.option("--explain", is_flag=True, help="Print the budget plan (to stderr) first."),
        click.option(
            "-m",
            "--model",
            default=None,
            help="Registry name or path to a .gguf file (default: the default model).",
        ),
        click.option(
            "--prm",
            "prm_path",
            default=None,
            help="PRM directory: a text PRM or a policy probe (default: the one shipped for the policy).",
        ),
        click.option(
            "--max-tokens",
            default=PolicyConfig.max_tokens,
            show_default=True,
            type=click.IntRange(1),
            help="Generated tokens per solution.",
        ),
        click.option(
            "--max-prompt-tokens",
            default=PolicyConfig.max_prompt_tokens,
            show_default=True,
            type=click.IntRange(1),
            help="Tokens a question's prompt (with its template) may have; a longer one is refused "
            "(run: skipped, named, exit 1 at the end).",
        ),
        click.option(
            "--threads",
            type=click.IntRange(1),
            default=None,
            help="CPU threads (default: $EDGETTS_THREADS, else all cores).",
        ),
        click.option(
            "--n-gpu-layers",
            type=click.IntRange(-1),
            default=None,
            help="Layers to offload to a GPU (CUDA build of llama.cpp; -1: all) [default: "
            "$EDGETTS_N_GPU_LAYERS, else 0, or planned under a budget].",
        ),
        click.option(
            "--kv-type",
            default=None,
            type=click.Choice(KV_TYPES),
            help="KV cache element type [default: f16, or planned under a budget].",
        ),
        click.option(
            "--task",
            default="math",
            show_default=True,
            type=click.Choice(["math", "code"]),
            help="code: write a Python function, run the candidates in the sandbox, pick by "
            "behaviour (strategy greedy, majority or exec; auto = exec).",
        ),
        click.option(
            "--mode",
            default="cot",
            show_default=True,
            type=click.Choice(MODES),
            help="Math: prose (cot), Python programs run in the sandbox (pot), or both voting.",
        ),
        click.option(
            "--pot-n",
            type=click.IntRange(1),
            default=None,
            help="Programs for --mode cot+pot [default: as many as prose samples, -n].",
        ),
        click.option(
            "--run-programs",
            is_flag=True,
            help="Math prose: run the Python a solution writes (in the sandbox) and let the number "
            "it prints replace the answer written after it, then pick again.",
        ),
        click.option(
            "--tests",
            "tests_path",
            default=None,
            type=click.Path(path_type=Path),
            help="Code tasks: a Python file of asserts / test_* functions (visible tests).",
        ),
        click.option(
            "--allow-weak-sandbox",
            is_flag=True,
            help="Run model-written code even where the sandbox cannot set its limits "
            "(see `edgetts sandbox`).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _ray_option(what: str, unit: str):
    """``--ray [ADDRESS]`` for ``run`` and ``serve`` (one definition, so they never drift apart)."""
    return click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value=DETECT_RAY,
        default=None,
        metavar="[ADDRESS]",
        help=f'{what} (pip install "edgetts[ray]"): ADDRESS of a cluster (HOST:6379, '
        "ray://HOST:10001, auto), 'local' for a new local instance, none to join the cluster on "
        f"this machine or else start one. --threads is per {unit} (default: $EDGETTS_THREADS, "
        "else 1).",
    )


def _gpu_share(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A GPU share Ray can reserve: a whole number of GPUs, or a share of one to 4 decimals."""
    if value is None or value == int(value) or (value < 1 and round(value, 4) == value and value >= 1e-4):
        return value
    raise click.BadParameter("a whole number of GPUs, or a share of one GPU to 4 decimals (0.5, 0.25)")


def _ray_gpus_option(unit: str):
    """``--gpus-per-actor`` / ``--gpus-per-replica``: the GPU share each Ray worker reserves."""
    return click.option(
        f"--gpus-per-{unit}",
        "ray_gpus",
        type=click.FloatRange(0),
        callback=_gpu_share,
        default=None,
        help=f"With --ray: GPUs each {unit} reserves (0.5: two share one GPU); Ray gives it that GPU "
        "alone (CUDA_VISIBLE_DEVICES), for a CUDA build's --n-gpu-layers [default: 0, CPU only].",
    )


def _make_solver(kw: dict, searches: int = 1):
    """The solver and options of a command's flags; ``searches``: problems in flight at once on
    its one model (``run --concurrent``), each holding a prompt sequence besides its paths."""
    from edgetts.llama.context import MAX_SEQUENCES
    from edgetts.policy import PolicyConfig
    from edgetts.solver import Solver

    options = SolveOptions(
        strategy=kw["strategy"],
        n=kw["n"],
        beam_width=kw["beam_width"],
        max_steps=kw["max_steps"],
        agg=kw["agg"],
        deadline_s=kw["deadline_s"],
        memory_mb=kw["memory_mb"],
        temperature=kw["temperature"],
        top_p=kw["top_p"],
        top_k=kw["top_k"],
        seed=kw["seed"],
        mode=kw["mode"],
        pot_n=kw["pot_n"],
        adaptive=not kw["no_adaptive"],
        prune=not kw["no_prune"],
        check_arithmetic=not kw["no_check_arithmetic"],
        run_programs=kw["run_programs"],
    )
    code = kw["task"] == "code"
    if not code and kw["tests_path"] is not None:
        raise click.UsageError("--tests is for --task code")
    ctx = click.get_current_context(silent=True)

    def typed(*names: str) -> list[str]:
        """The flags of ``names`` typed on the command line (a value from the config file or the
        environment is for the other strategies: not an error)."""
        source = ctx.get_parameter_source if ctx is not None else lambda name: None
        return [
            f"--{n.replace('_', '-')}" for n in names if source(n) == click.core.ParameterSource.COMMANDLINE
        ]

    if options.strategy == GREEDY and typed("n") and options.n != 1:
        raise click.UsageError(
            f"--strategy greedy answers with one sample at temperature 0: -n {options.n} is for the searches"
        )
    tree = typed("beam_width", "max_steps")
    if tree and options.strategy not in (*search_names("tree"), "auto"):  # auto may choose a tree
        raise click.UsageError(f"{', '.join(tree)} is for beam_search, dvts and auto, not {options.strategy}")
    sampling = typed("temperature", "top_p", "top_k")
    if options.strategy == GREEDY and sampling:
        raise click.UsageError(
            f"--strategy greedy decodes at temperature 0: {', '.join(sampling)} is for the samplers"
        )
    try:  # fail on bad settings before a model loads: the flags' error, exit 2
        if code:
            from edgetts.solver import validate_code_options

            validate_code_options(options)
        else:
            options.validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    n_parallel = options.n_paths
    policy_config = PolicyConfig(
        model=kw["model"],
        max_tokens=kw["max_tokens"],
        max_prompt_tokens=kw["max_prompt_tokens"],
        n_threads=kw["threads"],
        n_gpu_layers=kw["n_gpu_layers"],
        kv_type=kw["kv_type"] or PolicyConfig.kv_type,
        n_seq_max=min(min(n_parallel, PolicyConfig.n_seq_max) * searches, MAX_SEQUENCES - searches),
        max_searches=searches,
    )
    pinned = frozenset(k for k in ("kv_type", "n_gpu_layers") if kw[k] is not None)
    sandbox = None
    if code or options.mode != "cot" or options.run_programs:  # the user asked for code to run
        from edgetts.sandbox import Sandbox

        sandbox = Sandbox(allow_weak=kw["allow_weak_sandbox"])
    return Solver(policy_config, prm_path=kw["prm_path"], pinned=pinned, sandbox=sandbox), options


def _code_tests(kw: dict) -> tuple:
    """The user's --tests file as sandbox checks (a clear error when it cannot be read)."""
    from edgetts.code.checks import file_checks

    path = kw["tests_path"]
    if path is None:
        return ()
    return tuple(file_checks(_read_tests(path), str(path)))


def _read_tests(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read tests file {path}: {exc}") from None


def _tests_sha256(path: Path) -> str:
    """A short hash of the --tests file's text, as rows keep a code prompt's (``prompt_sha256``)."""
    from edgetts.results import fingerprint

    return fingerprint(_read_tests(path))


def _explain(solver, options, question: str | None) -> None:
    """Print the plan (or that there is none) to stderr, so stdout stays the answer."""
    plan = solver.plan(options, question)
    text = plan.explain() if plan else "no budget (--memory-mb / --deadline-s): settings as given"
    click.echo(text, err=True)


class _PlainFormatter(logging.Formatter):
    """``Warning: ...`` on one line, as click prints ``Error: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.capitalize()}: {record.getMessage()}"


CONFIG_ENV = "EDGETTS_CONFIG"


def config_path() -> Path:
    """The config file: ``$EDGETTS_CONFIG``, else ``config.toml`` in the user config folder."""
    import platformdirs

    env = os.environ.get(CONFIG_ENV)
    folder = platformdirs.user_config_dir("edgetts", appauthor=False)
    return Path(env) if env else Path(folder) / "config.toml"


def load_config(path: Path) -> dict:
    """Defaults from a TOML file, as click's default_map: a table per command (``[solve]``,
    ``[serve]``, ...), top-level keys for every command; names as the flags (``max-tokens``).
    Values reach click as text, as from the command line (see :func:`_config_value`)."""
    if not path.is_file():
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise click.ClickException(f"config file {path}: {exc}") from None
    shared = _config_settings(data, path, None)
    return {
        **shared,
        **{
            command: {**shared, **_config_settings(table, path, command)}
            for command, table in data.items()
            if isinstance(table, dict)
        },
    }


def _config_settings(table: dict, path: Path, command: str | None) -> dict:
    """A config table's settings by parameter-style name (``max_tokens``); in a command's table a
    table is refused (click would never read it), at the top level it is a command's."""
    settings = {}
    for key, value in table.items():
        if isinstance(value, dict):
            if command is None:
                continue
            raise click.ClickException(
                f"config file {path}: [{command}.{key}] is a table inside [{command}]: a command's "
                f"settings are keys of its own table (see edgetts {command} --help)"
            )
        where = f"[{command}] {key}" if command else key
        settings[key.replace("-", "_")] = _config_value(value, path, where)
    return settings


def _config_value(value: object, path: Path, where: str) -> str | list[str]:
    """A config value as click reads one from the command line: text, so a setting is parsed
    and checked alike from either (``max-tokens = 100.9`` is refused as ``--max-tokens 100.9``
    is, not cut to 100; ``n = true`` is not 1). A list (of such values) is for an option that
    takes several; dates and times no option takes."""
    if isinstance(value, list):
        return [_config_scalar(item, path, where) for item in value]
    return _config_scalar(value, path, where)


def _config_scalar(value: object, path: Path, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as TOML writes it; click's flags read it so
    if isinstance(value, (str, int, float)):
        return str(value)
    kind = {"list": "list within a list", "dict": "table within a list"}.get(type(value).__name__)
    raise click.ClickException(
        f"config file {path}: {where} is a {kind or 'TOML ' + type(value).__name__}, which no setting "
        "takes: write the value as on the command line"
    )


def _renamed_flags(command: click.Command) -> dict[str, str]:
    """A command's long flags, written as config keys (``prm``), whose parameter has another
    name (``prm_path``): click looks defaults up by the parameter's name, users by the flag."""
    renamed = {}
    for param in command.params:
        for opt in getattr(param, "opts", []):
            flag = opt[2:].replace("-", "_") if opt.startswith("--") else None
            if flag and flag != param.name:
                renamed[flag] = param.name
    return renamed


def _setting_names(command: click.Command) -> set[str]:
    """What a config table may set for ``command``: its parameters, by name and by long flag
    (a group's: every subcommand's)."""
    if isinstance(command, click.Group):
        return set().union(*(_setting_names(c) for c in command.commands.values()))
    return {p.name for p in command.params if p.name} | set(_renamed_flags(command))


def _takes_many(command: click.Command, name: str) -> bool:
    """Whether ``command``'s setting ``name`` (by parameter or flag) takes several values (a
    group's: any subcommand's), so that a config list is its values."""
    if isinstance(command, click.Group):
        return any(_takes_many(c, name) for c in command.commands.values())
    name = _renamed_flags(command).get(name, name)
    return any(p.name == name and (getattr(p, "multiple", False) or p.nargs != 1) for p in command.params)


class _Main(click.Group):
    """Flags win over ``EDGETTS_<COMMAND>_<FLAG>`` variables, which win over the config file.

    Both name an option by its flag (``--prm``: ``prm = ...``, ``EDGETTS_SOLVE_PRM``), also
    where its parameter is named otherwise; the parameter's own name works too.
    """

    def main(self, *args, **kwargs):
        if sys.stderr is None:
            # `2>&-`: what goes to stderr (the progress bar, warnings, errors) goes nowhere; else
            # tqdm ends the run writing to None, and click prints errors on stdout instead
            sys.stderr = open(os.devnull, "w", encoding="utf-8")  # held for the process
        return super().main(*args, **kwargs)

    def make_context(self, info_name, args, parent=None, **extra):
        extra.setdefault("auto_envvar_prefix", "EDGETTS")
        if "default_map" not in extra:
            path = config_path()
            if os.environ.get(CONFIG_ENV) and not path.is_file():
                raise click.ClickException(f"${CONFIG_ENV} names {path}, which is not a file")
            defaults = load_config(path)
            self._check_config(defaults, path)
            extra["default_map"] = self._by_parameter(defaults)
        self._name_env_vars_by_flags()
        return super().make_context(info_name, args, parent, **extra)

    def _check_config(self, defaults: dict, path: Path) -> None:
        """A misspelt table or key is an error naming it, not a setting silently ignored; so is a
        list for a setting that takes one value."""
        known = {name: _setting_names(command) for name, command in self.commands.items()}
        shared = {key for key, value in defaults.items() if not isinstance(value, dict)}
        for key in sorted(shared - set().union(*known.values())):
            raise click.ClickException(f"config file {path}: no command has a setting {key!r}")
        for key in sorted(shared):  # every command that has the setting reads it
            for name in sorted(n for n in known if key in known[n]):
                self._check_list(defaults, key, name, path, key)
        for name, table in defaults.items():
            if not isinstance(table, dict):
                continue
            if name not in known:
                raise click.ClickException(
                    f"config file {path}: [{name}] is not a command ({', '.join(sorted(known))})"
                )
            for key in sorted(set(table) - shared - known[name]):
                raise click.ClickException(
                    f"config file {path}: [{name}] has no setting {key!r} (see edgetts {name} --help)"
                )
            for key in sorted(set(table) - shared):
                self._check_list(table, key, name, path, f"[{name}] {key}")

    def _check_list(self, table: dict, key: str, name: str, path: Path, where: str) -> None:
        if isinstance(table[key], list) and not _takes_many(self.commands[name], key):
            flag = key.replace("_", "-")
            raise click.ClickException(
                f"config file {path}: {where} is a list, but edgetts {name} --{flag} takes one value"
            )

    def _by_parameter(self, defaults: dict) -> dict:
        """The config's tables with flag-named keys renamed to their parameters'."""
        out = dict(defaults)
        for name, command in self.commands.items():
            table, renamed = defaults.get(name), _renamed_flags(command)
            if isinstance(table, dict):
                out[name] = {renamed.get(key, key): value for key, value in table.items()}
        return out

    def _name_env_vars_by_flags(self) -> None:
        for name, command in self.commands.items():
            prefix = f"EDGETTS_{name.upper()}_"
            for flag, param_name in _renamed_flags(command).items():
                option = next(p for p in command.params if p.name == param_name)
                if isinstance(option, click.Option) and option.envvar is None:
                    option.envvar = [prefix + flag.upper(), prefix + param_name.upper()]


@click.group(cls=_Main)
@click.version_option(package_name="edgetts")
@click.option(
    "--offline",
    is_flag=True,
    help="Never reach the network: a missing model is an error naming what to bring "
    "(also $EDGETTS_OFFLINE=1).",
)
@click.option("-v", "--verbose", is_flag=True, help="Say what happens (--log-level info).")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS),
    default=None,
    help="How much edgetts and llama.cpp tell on stderr [default: warning].",
)
def main(offline: bool, verbose: bool, log_level: str | None) -> None:
    """edgetts: small models answer better by spending compute at answer time.

    Sample several reasoning paths on a local GGUF model, score their steps with a process
    reward model, search, and answer. Everything runs offline once the models are in place.

    Defaults come from ~/.config/edgetts/config.toml ($EDGETTS_CONFIG; a table per command:
    [solve], [run], [serve] ..., keys named as the flags), then EDGETTS_<COMMAND>_<FLAG>
    variables, then the flags.
    """
    if offline:
        os.environ[registry.OFFLINE_ENV] = "1"  # read by every later model lookup in this process
    logger = logging.getLogger("edgetts")
    if not logger.handlers:  # warnings (a missing PRM, an unusable file) as one plain line
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel((log_level or ("info" if verbose else "warning")).upper())


@main.command()
@click.argument("question", required=False)
@_search_options
@click.option("--show", is_flag=True, help="Also print the chosen reasoning, votes and scores.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@_friendly_errors
def solve(question: str | None, show: bool, as_json: bool, **kw) -> None:
    """Answer QUESTION and print the final answer (QUESTION absent or - : read it from stdin).

    Example: edgetts solve "A pen costs 3 dollars. How much do 7 pens cost?" --show
    """
    if show and as_json:
        raise click.UsageError(
            "--show prints text and --json prints JSON (which holds all --show says): choose one"
        )
    question = _question_or_stdin(question)
    if not question.strip():
        raise click.ClickException("the question is empty")
    solver, options = _make_solver(kw)
    if kw["task"] == "code":
        _solve_code(solver, options, question, _code_tests(kw), show, as_json)
        return
    if kw["explain"]:
        _explain(solver, options, question)
    result = solver.solve(question, options)
    if as_json:
        click.echo(json.dumps({**asdict(result), "provisional": result.provisional}, ensure_ascii=False))
        return
    if show and result.chosen is not None:
        _show(result)
    click.echo(result.answer if result.answer is not None else "(no answer)")
    if result.provisional:  # on stderr: stdout stays the answer alone, for pipes
        click.echo("(a guess: no solution wrote its answer out before it was cut short)", err=True)


def _solve_code(solver, options, prompt: str, tests: tuple, show: bool, as_json: bool) -> None:
    from edgetts.code import CodeTask

    task = CodeTask.from_prompt(prompt, tests)
    result = solver.solve_code(task, options)
    if as_json:
        click.echo(json.dumps(asdict(result), ensure_ascii=False))
        return
    if show:
        _show_code(result)
    if result.program is None:
        raise click.ClickException("no candidate produced a runnable program")
    click.echo(result.program.rstrip())


def _show_code(result) -> None:
    """Which tests each candidate passed, the clusters, and what it cost: on stdout, before the
    program, as ``solve --show`` prints a math result (asked for, so it is output, not a note)."""
    echo = click.echo
    echo(f"function: {result.entry_point}; strategy: {result.strategy}")
    echo(f"visible tests ({len(result.visible_tests)}): " + "; ".join(result.visible_tests))
    echo(f"generated tests ({len(result.generated_tests)}): " + "; ".join(result.generated_tests))
    for i, cand in enumerate(result.candidates):
        mark = "  <- chosen" if i == result.chosen else ""
        if cand.program is None or not cand.runnable:
            echo(f"  {i + 1:>2}. fails: {cand.error}{mark}")
            continue
        passed = [v["name"] for v in cand.visible if v["passed"]]
        failed = [v["name"] for v in cand.visible if not v["passed"]]
        echo(
            f"  {i + 1:>2}. visible {len(passed)}/{len(cand.visible)}, generated "
            f"{cand.generated_passed}/{len(result.generated_tests)}, cluster {cand.cluster}, "
            f"{cand.n_tokens} tokens{mark}"
        )
        for name in failed:
            echo(f"       failed: {name}")
    c = result.counters
    echo(
        f"tokens: {c['tokens_prefilled']} prefilled, {c['tokens_generated']} generated; sandbox: "
        f"{c['sandbox_runs']} runs, {c['sandbox_s']:.2f} s of {c['wall_s']:.1f} s"
    )


def _stop_interrupted(results) -> None:
    """Ctrl-C during a run: say what was kept and how to resume, exit 130. The file is closed
    first: one this run made and wrote nothing to is removed, and then said to be."""
    results.close()
    if results.path.exists():
        kept = f"{len(results.records)} results kept in {results.path}; run the same command again to resume"
    else:
        kept = f"nothing was answered, and {results.path} (made by this run) was removed"
    click.echo(f"\ninterrupted: {kept}", err=True)
    sys.exit(EXIT_INTERRUPTED)


def _question_or_stdin(question: str | None, required: bool = True) -> str | None:
    """The question given, or stdin's text when it is ``-``, or absent and stdin is not a
    terminal. Not ``required`` (plan): an absent question is None, and stdin is read only for
    ``-`` (a plan in a shell loop or under ssh must not swallow or wait on the caller's stdin)."""
    if question is None and not required:
        return None
    if question in (None, "-"):
        if sys.stdin is None or sys.stdin.isatty():
            ctx = click.get_current_context(silent=True)
            command = ctx.info_name if ctx is not None else "solve"
            raise click.UsageError(
                f"give a QUESTION, or pipe one in: echo 'What is 2+3?' | edgetts {command}"
            )
        try:
            question = sys.stdin.read()
        except UnicodeDecodeError:
            raise click.ClickException("the question on stdin is not UTF-8 text") from None
    try:
        question.encode("utf-8")  # bytes that are not UTF-8 reach argv as lone surrogates
    except UnicodeEncodeError:
        raise click.ClickException("the question is not UTF-8 text") from None
    return question if required or question.strip() else None


def _show(result: SearchResult) -> None:
    """The chosen reasoning with its step scores, every candidate, votes and what it cost."""
    click.echo(result.chosen.text.strip())
    click.echo("")
    click.echo(f"strategy: {result.strategy}")
    if result.chosen.step_scores:
        click.echo(f"step scores: {' '.join(f'{s:.2f}' for s in result.chosen.step_scores)}")
    click.echo(f"candidates ({len(result.candidates)}):")
    for i, cand in enumerate(result.candidates, start=1):
        score = "-" if cand.score is None else f"{cand.score:.2f}"
        mark = "  <- chosen" if cand is result.chosen else ""
        click.echo(f"  {i:>2}. answer {cand.answer}  score {score}  {cand.n_tokens} tokens{mark}")
    if result.votes:
        click.echo(f"votes: {', '.join(f'{a}: {v:g}' for a, v in result.votes.items())}")
    c = result.counters
    rebuilt, restored = c.get("tokens_redecoded", 0), c.get("tokens_restored", 0)
    parts = [f"+{rebuilt} decoded again"] if rebuilt else []
    parts += [f"{restored} restored from host memory"] if restored else []
    waves = f" ({', '.join(parts)}: paths ran in waves)" if parts else ""
    click.echo(
        f"tokens: {c.get('tokens_prefilled', 0)} prefilled, {c.get('tokens_generated', 0)} generated"
        f"{waves}; PRM: {c.get('prm_calls', 0)} calls, {c.get('prm_steps_scored', 0)} steps"
    )
    click.echo(
        f"time: {c.get('wall_s', 0):.1f} s = policy {c.get('policy_s', 0):.1f} + PRM "
        f"{c.get('prm_s', 0):.2f} + other {c.get('other_s', 0):.2f}"
        + (" (cut short by the deadline)" if result.cut_short else "")
    )


def _n_label(options: SolveOptions) -> str:
    """N for a progress bar: ``planned`` where a budget sets it per question."""
    return "planned" if options.n is None and options.has_budget else str(options.n_paths)


def problem_worker(kw: dict):
    """A solver built from ``run``'s options, as a function from a problem to its row (what a
    Ray actor calls ``functools.partial(problem_worker, kw)`` to get; the model loads lazily)."""
    solver, options = _make_solver(kw)
    solve = functools.partial(solve_row, solver, options, model=registry.canonical_name(kw["model"]))
    return functools.partial(solve_or_skip, solve)


def solve_or_skip(solve: Callable[[Problem], dict], problem: Problem) -> dict:
    """``solve(problem)``'s row, or for a question whose prompt is longer than the policy takes
    a row that only says so (``"skipped"``): one such question must not end a whole run."""
    from edgetts.policy.config import PromptTooLong

    try:
        return solve(problem)
    except PromptTooLong as exc:
        return {"id": problem.id, "skipped": str(exc)}


def _append_or_skip(results, skipped: list[str], row: dict) -> None:
    """Append a problem's row; a skipped problem (see :func:`solve_or_skip`) is named on stderr
    and in ``skipped`` instead (no row: a rerun with a larger --max-prompt-tokens answers it)."""
    if "skipped" in row:
        skipped.append(row["id"])
        _note(f"problem {row['id']}: skipped: {row['skipped']}")
    else:
        results.append(row)


def _progress(iterable=None, **kw):
    """A run's progress bar on stderr (hidden where stderr is not a terminal). None without a
    stderr (an in-process caller's; the command line's is os.devnull then, see _Main.main): tqdm
    would write to None and end the run."""
    from tqdm import tqdm

    return tqdm(iterable, unit="problem", disable=True if sys.stderr is None else None, file=sys.stderr, **kw)


def _note(text: str) -> None:
    """A line on stderr, above the progress bar; nowhere without a stderr (tqdm would put it on
    stdout, into the summary that pipes)."""
    from tqdm import tqdm

    if sys.stderr is not None:
        tqdm.write(text, file=sys.stderr)


def _ray_threads(kw: dict) -> int:
    """Threads per Ray actor: --threads, else $EDGETTS_THREADS, else 1 (an actor per core; a
    default of all cores would give every actor of a node all of its cores). Not checked against
    this machine's cores: the actors may run on bigger nodes."""
    from edgetts.policy.config import PolicyError, env_threads

    if kw["threads"] is not None:
        return kw["threads"]
    try:
        n_threads = env_threads()
    except PolicyError as exc:
        raise click.UsageError(str(exc)) from None
    return n_threads if n_threads is not None else 1


def _run_on_ray(
    todo: list,
    results,
    skipped: list[str],
    address: str,
    actors: int | None,
    gpus: float,
    desc: str,
    kw: dict,
) -> None:
    """``run --ray``: the problems sharded over Ray actors; this process alone writes the file."""
    from edgetts.distributed import connect, plan_workers
    from edgetts.distributed.run import MAX_ATTEMPTS, run_sharded

    if not todo:
        return
    threads = _ray_threads(kw)
    connect(address)
    n_actors = min(plan_workers(actors, threads, gpus, "actor"), len(todo))
    each = f"{threads} threads" + (f" + {gpus:g} GPU" if gpus else "")
    click.echo(f"Ray: {n_actors} actors x {each}", err=True)
    worker_kw = {**kw, "threads": threads, "explain": False}
    with _progress(total=len(todo), desc=desc) as bar:

        def write(row: dict) -> None:
            _append_or_skip(results, skipped, row)
            bar.update(1)

        report = run_sharded(
            todo,
            functools.partial(problem_worker, worker_kw),
            write,
            actors=n_actors,
            threads=threads,
            gpus=gpus,
            done=results.done,
        )
    if report.given_up:
        raise click.ClickException(
            f"{len(report.given_up)} problem(s) lost their Ray actor {MAX_ATTEMPTS} times and "
            f"were not answered ({', '.join(report.given_up[:10])}); the other results are in "
            f"{results.path}: run the same command again to retry them"
        )


def _run_concurrent(
    todo: list, results, skipped: list[str], solver, options: SolveOptions, kw: dict, desc: str
) -> None:
    """``run --concurrent K``: K worker threads each solve one problem at a time on the one
    solver (their searches decode in one batch); this thread alone appends the rows, as they
    finish. On Ctrl-C the searches under way are cancelled and their rows dropped (a cut-short
    search is not its answer): a rerun solves them again."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
    from itertools import islice

    cancel = threading.Event()
    solve = functools.partial(
        solve_or_skip,
        functools.partial(
            solve_row, solver, options, model=registry.canonical_name(kw["model"]), cancel=cancel
        ),
    )
    waiting = iter(todo)
    with (
        ThreadPoolExecutor(max_workers=kw["concurrent"], thread_name_prefix="edgetts-run") as pool,
        _progress(total=len(todo), desc=desc) as bar,
    ):
        running = {pool.submit(solve, problem) for problem in islice(waiting, kw["concurrent"])}
        try:
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    # a search's error stops the run, as without K
                    _append_or_skip(results, skipped, future.result())
                    bar.update(1)
                    running |= {pool.submit(solve, problem) for problem in islice(waiting, 1)}
        except BaseException:
            cancel.set()  # the others stop at their next check; their rows are not written
            raise


# Settings that change a run's answers; a results file keeps them, and a resume must match.
# (Not threads or GPU offload: they change how llama.cpp rounds its sums, rarely a sampled token,
# and a resume on another machine or thread count is allowed; docs/scale-out.md says so.)
ANSWER_SETTINGS = (
    "strategy",
    "n",
    "beam_width",
    "max_steps",
    "agg",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "deadline_s",
    "memory_mb",
    "max_tokens",
    "kv_type",
    "prm_path",
    "no_adaptive",
    "no_prune",
    "no_check_arithmetic",
    "run_programs",
    "mode",
    "pot_n",
)


# Settings recorded since a later version, each with the value that does what runs did before:
# a results file made then resumes with that value (no_adaptive: every sample was drawn;
# no_prune: every sample ran to its end; no_check_arithmetic: every answer voted; run_programs:
# no program ran). Which data file, verifier, mode (prose or programs) and --tests contents an
# older file was made with cannot be known: it resumes with any (UNKNOWN); a file made since
# refuses another.
UNRECORDED_SETTINGS = {
    "no_adaptive": True,
    "no_prune": True,
    "no_check_arithmetic": True,
    "run_programs": False,
    "mode": UNKNOWN,
    "pot_n": UNKNOWN,
    "data": UNKNOWN,
    "verifier": UNKNOWN,
    "tests_sha256": UNKNOWN,
}


def _run_settings(kw: dict, data: dict) -> dict:
    """What a results file records of its run. ``data``: the data file's name and the keys it was
    read with; rows are matched by problem id, and ids repeat across files (0, 1, 2 ...)."""
    settings = {key: kw[key] for key in ANSWER_SETTINGS}
    settings["model"] = registry.canonical_name(kw["model"])
    settings["data"] = data
    if kw["task"] == "code":
        # programs are picked by running them (no PRM); the visible tests change the pick
        # (their contents, not only their path: a resume after the file was edited is refused)
        tests = kw["tests_path"]
        return {
            **settings,
            "task": "code",
            "tests": None if tests is None else str(tests),
            "tests_sha256": None if tests is None else _tests_sha256(tests),
        }
    strategy = REGISTRY.get(kw["strategy"])
    if strategy is not None and strategy.reads_scorer:
        # the PRM's content, not only its path: the default one changes with edgetts releases
        # and with probes installed under $EDGETTS_HOME/prms, and its weights and stopping
        # settings change the answers
        from edgetts.probe import policy_prm_dir, verifier_fingerprint

        settings["verifier"] = verifier_fingerprint(kw["prm_path"] or policy_prm_dir(kw["model"]))
    return settings


@main.command()
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Benchmark file (JSONL, or a .json list); - reads JSONL from stdin.",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Results JSONL; appended, and a rerun skips problems already in it.",
)
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first LIMIT problems.")
@click.option("--question-key", default=None, help="Question field(s), e.g. body+question.")
@click.option("--answer-key", default=None, help="Gold answer field.")
@click.option(
    "--id-key", default=None, help="Problem id field (default: unique_id, idx or id, else the line number)."
)
@_search_options
@_ray_option("Shard the problems over Ray actors", "actor")
@click.option(
    "--actors",
    type=click.IntRange(1),
    default=None,
    help="With --ray: actors to start [default: as many as the cluster's CPUs fit at --threads each].",
)
@_ray_gpus_option("actor")
@click.option(
    "--concurrent",
    type=click.IntRange(1, MAX_CONCURRENT),
    default=1,
    show_default=True,
    help="Problems solved at once, their searches decoding in one batch (fills the rows a tree "
    "search's round leaves idle; on a GPU, K times the batch). Rows are appended as they finish.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@_friendly_errors
def run(
    data_path: Path,
    out_path: Path,
    limit,
    question_key,
    answer_key,
    id_key,
    ray_address: str | None,
    actors: int | None,
    ray_gpus: float | None,
    as_json: bool,
    **kw,
) -> None:
    """Answer every problem in a benchmark file, appending one JSON line per problem.

    The file is JSONL (or a .json list) of objects: the question in question, problem, input,
    prompt or body+question, the gold answer in answer (GSM8K's after ####), target or
    solution's last \\boxed{}; other names with --question-key / --answer-key. Rows without a
    gold answer are answered, not graded.

    With --concurrent K, K problems are solved at once on one model: their searches share one
    decode loop. With --ray the problems run on Ray actors (one solver each) and this process
    appends their rows as they finish. Either way: in any order, each problem once, resumable.
    """
    from edgetts.data import load_problems
    from edgetts.results import check_same_problems

    if str(out_path) == "-":
        raise click.UsageError("--out names the results file (JSONL, appended); the summary goes to stdout")
    if out_path.exists() and data_path.exists() and out_path.resolve() == data_path.resolve():
        raise click.UsageError("--out is the --data file; results go to a file of their own")
    if kw["concurrent"] > 1 and (ray_address is not None or kw["task"] == "code"):
        raise click.UsageError(
            "--concurrent runs math problems in this process (not with --ray or --task code)"
        )
    if ray_address is not None:
        if kw["task"] == "code":
            raise click.UsageError("--ray runs math problems; --task code runs in one process")
        from edgetts.distributed import require_ray

        require_ray()  # before anything loads or is read: say at once how to get it
    elif actors is not None or ray_gpus is not None:
        raise click.UsageError(f"{'--actors' if actors is not None else '--gpus-per-actor'} is for --ray")
    if kw["task"] == "code":
        _run_code(data_path, out_path, limit, kw, as_json)
        return
    problems = load_problems(data_path, question_key, answer_key, id_key, limit)
    data = {"file": data_path.name, "question_key": question_key, "answer_key": answer_key, "id_key": id_key}
    settings = _run_settings(kw, data)
    # the settings' usage errors before the output is opened: a refused run changes nothing there
    solver, options = _make_solver(kw, searches=kw["concurrent"])
    with _results_file(out_path, settings) as results:
        check_same_problems(
            results, {p.id: {"question": p.question, "gold": p.answer} for p in problems}, data_path
        )
        todo = [p for p in problems if p.id not in results.done]
        if len(todo) < len(problems):
            click.echo(
                f"resuming: {len(problems) - len(todo)} of {len(problems)} already in {out_path}", err=True
            )
        if kw["explain"]:
            _explain(solver, options, todo[0].question if todo else None)
        desc = f"{options.strategy} n={_n_label(options)}"
        skipped: list[str] = []
        try:
            if ray_address is not None:
                _run_on_ray(todo, results, skipped, ray_address, actors, ray_gpus or 0.0, desc, kw)
            elif kw["concurrent"] > 1:
                _run_concurrent(todo, results, skipped, solver, options, kw, desc)
            else:
                solve = functools.partial(solve_row, solver, options, model=settings["model"])
                for problem in _progress(todo, desc=desc):
                    _append_or_skip(results, skipped, solve_or_skip(solve, problem))
        except KeyboardInterrupt:
            _stop_interrupted(results)
        _print_summary(results, [p.id for p in problems], out_path, as_json)
        _fail_if_skipped(skipped, kw, out_path)


def _results_file(out_path: Path, settings: dict):
    """``run``'s output, held for this run: its rows must look like rows ``run`` writes (a data
    file with ids is not a results file whose problems are done)."""
    from edgetts.results import RUN_ROW_FIELDS, ResultsFile

    return ResultsFile(
        out_path, settings=settings, unrecorded=UNRECORDED_SETTINGS, lock=True, row_fields=RUN_ROW_FIELDS
    )


def _fail_if_skipped(skipped: list[str], kw: dict, out_path: Path) -> None:
    """Exit 1 naming the problems skipped for prompts too long (after the summary)."""
    if skipped:
        raise click.ClickException(
            f"{len(skipped)} problem(s) skipped, their prompts longer than --max-prompt-tokens "
            f"{kw['max_prompt_tokens']} allows ({', '.join(skipped[:10])}"
            f"{' ...' if len(skipped) > 10 else ''}); the other results are in {out_path}: a "
            "rerun with a larger --max-prompt-tokens answers them"
        )


def _print_summary(results, ids: list[str], out_path: Path, as_json: bool, measure: str = "accuracy") -> None:
    """``run``'s last line: the accuracy over this run's problems (``ids``: those --limit kept,
    answered now or before; the file may hold more) as one JSON object with --json."""
    correct, graded = results.accuracy(ids)
    rows = results.of(ids)
    guesses = sum(bool(r.get("provisional")) for r in rows)
    if as_json:
        summary = {
            "out": str(out_path),
            "answered": len(rows),
            "graded": graded,
            "correct": correct,
            "accuracy": correct / graded if graded else None,
            "provisional": guesses,
        }
        click.echo(json.dumps(summary))
        return
    if graded:
        click.echo(f"{measure}: {correct}/{graded} = {correct / graded:.1%}")
    else:
        click.echo(f"answered {len(rows)} problems (none could be graded)")
    if guesses:  # on stderr, as solve's note: stdout stays the summary line
        click.echo(
            f"({guesses} of the answers are guesses: no solution wrote its answer out before it was "
            "cut short; a larger --max-tokens may help)",
            err=True,
        )


def _run_code(data_path: Path, out_path: Path, limit: int | None, kw: dict, as_json: bool) -> None:
    """``run --task code``: every HumanEval-style row, graded by its own hidden test."""
    import time

    from edgetts.code import CodeTask
    from edgetts.code.checks import hidden_check
    from edgetts.data import load_code_problems
    from edgetts.policy.config import PromptTooLong
    from edgetts.results import check_same_problems, fingerprint

    problems = load_code_problems(data_path, limit)
    tests = _code_tests(kw)
    settings = _run_settings(kw, {"file": data_path.name})
    solver, options = _make_solver(kw)  # its usage errors before the output is opened
    with _results_file(out_path, settings) as results:
        prompts = {p.id: {"prompt_sha256": fingerprint(p.prompt)} for p in problems}
        check_same_problems(results, prompts, data_path)
        todo = [p for p in problems if p.id not in results.done]
        if len(todo) < len(problems):
            click.echo(
                f"resuming: {len(problems) - len(todo)} of {len(problems)} already in {out_path}", err=True
            )
        skipped: list[str] = []
        try:
            for problem in _progress(todo, desc=f"code {options.strategy} n={_n_label(options)}"):
                start = time.perf_counter()
                task = CodeTask(problem.prompt, problem.entry_point, tests)
                try:
                    result = solver.solve_code(task, options)
                except PromptTooLong as exc:  # as the math run does: named, the run goes on
                    _append_or_skip(results, skipped, {"id": problem.id, "skipped": str(exc)})
                    continue
                hidden: dict[str, bool] = {}
                if problem.test is not None:
                    check = hidden_check(problem.test, problem.entry_point)
                    for cand in result.candidates:
                        if cand.program is not None and cand.program not in hidden:
                            run_ = solver.sandbox.run(cand.program, [check], run_name="candidate")
                            hidden[cand.program] = run_.passed_all
                correct = (
                    None if problem.test is None else bool(result.program and hidden.get(result.program))
                )
                candidates = [
                    {
                        **asdict(c),
                        "correct": hidden.get(c.program, False) if problem.test is not None else None,
                    }
                    for c in result.candidates
                ]
                results.append(
                    {
                        "id": problem.id,
                        "prompt_sha256": prompts[problem.id]["prompt_sha256"],
                        "entry_point": result.entry_point,
                        "correct": correct,
                        "program": result.program,
                        "strategy": result.strategy,
                        "n": len(result.candidates),
                        "seed": options.seed,
                        "model": settings["model"],
                        "chosen": result.chosen,
                        "visible_tests": result.visible_tests,
                        "generated_tests": result.generated_tests,
                        "clusters": result.clusters,
                        "candidates": candidates,
                        "counters": result.counters,
                        "seconds": round(time.perf_counter() - start, 3),
                    }
                )
        except KeyboardInterrupt:
            _stop_interrupted(results)
        _print_summary(results, [p.id for p in problems], out_path, as_json, measure="pass@1")
        _fail_if_skipped(skipped, kw, out_path)


@main.command()
@click.argument("question", required=False)
@_search_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON object.")
@_friendly_errors
def plan(question: str | None, as_json: bool, **kw) -> None:
    """Print the plan for a budget without running it (QUESTION sets the prompt length; - or
    absent: read from stdin when it is piped, as solve does).

    Example: edgetts plan --memory-mb 1500 --deadline-s 20
    """
    question = _question_or_stdin(question, required=False)
    solver, options = _make_solver(kw)
    if options.memory_mb is None and options.deadline_s is None:
        raise click.UsageError("give a budget: --memory-mb and/or --deadline-s")
    chosen = solver.plan(options, question)
    click.echo(json.dumps(asdict(chosen)) if as_json else chosen.explain())


@main.command()
@click.option("-m", "--model", default=None, help="Registry name or .gguf path (default model).")
@click.option(
    "--prm", "prm_path", default=None, help="PRM directory (default: the one shipped for the policy)."
)
@click.option(
    "--threads", type=click.IntRange(1), default=None, help="CPU threads (default: $EDGETTS_THREADS or all)."
)
@click.option(
    "--batches",
    default=",".join(map(str, calib.DEFAULT_BATCHES)),
    show_default=True,
    help="Batch sizes (sequences decoded together) to measure.",
)
@click.option(
    "--tokens",
    type=click.IntRange(1),
    default=calib.DEFAULT_TOKENS_PER_ROW,
    show_default=True,
    help="Tokens decoded per sequence and batch.",
)
@click.option(
    "--n-gpu-layers",
    type=click.IntRange(-1),
    default=None,
    help="Layers to offload while measuring (CUDA build; -1: all), as the runs to plan will "
    "[default: $EDGETTS_N_GPU_LAYERS, else 0]. Plans read the calibration of their own offload.",
)
@_friendly_errors
def calibrate(
    model: str | None,
    prm_path: str | None,
    threads: int | None,
    batches: str,
    tokens: int,
    n_gpu_layers: int | None,
) -> None:
    """Measure prefill, decode (per batch size) and PRM speed here; save them for the planner."""
    from edgetts.policy import default_threads

    try:
        sizes = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise click.UsageError("--batches must list positive integers, e.g. 1,2,4,8")
    n_threads = threads or default_threads()
    cal, meta = calib.measure(
        model,
        prm_path,
        n_threads,
        sizes,
        tokens,
        progress=lambda line: click.echo(line, err=True),
        n_gpu_layers=n_gpu_layers,
    )
    click.echo(str(calib.save(cal, meta)))


@main.command()
@_friendly_errors
def sandbox() -> None:
    """Print what the sandbox for model-written code isolates on this machine."""
    from edgetts.sandbox import Sandbox

    iso = Sandbox().isolation()
    click.echo(iso.describe())
    click.echo("weak: refused unless --allow-weak-sandbox" if iso.weak else "ok: model-written code may run")


@main.command()
@click.option(
    "--require-cuda",
    is_flag=True,
    help="Also fail unless llama.cpp can offload and onnxruntime has its CUDA provider.",
)
@_friendly_errors
def gpu(require_cuda: bool) -> None:
    """Print what this install offers a GPU run; exit 1 on a set-up problem, with its fix.

    The problem it looks for: a CPU onnxruntime installed beside onnxruntime-gpu (both write the
    same package, so the PRM may silently run on the CPU).
    """
    from edgetts.gpu import report

    lines, problems = report(require_cuda=require_cuda)
    for line in lines:
        click.echo(line)
    if problems:
        raise click.ClickException("\n".join(problems))
    click.echo("ok")


@main.group(invoke_without_command=True)
@click.pass_context
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model, one per line.")
def models(ctx: click.Context, as_json: bool) -> None:
    """List the registry models (name, kind, size, ready or not). Subcommands: list, pull, import,
    verify."""
    if ctx.invoked_subcommand is None:
        _list_models(as_json)


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model, one per line.")
def models_list(as_json: bool) -> None:
    """List the registry models (as plain `edgetts models`)."""
    _list_models(as_json)


@_friendly_errors  # a damaged manifest in the user's policies folder: one line naming it
def _list_models(as_json: bool) -> None:
    for spec in registry.load_registry().values():
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "name": spec.name,
                        "default": spec.default,
                        "kind": spec.kind,
                        "size_bytes": spec.size_bytes,
                        "ready": registry.is_ready(spec),
                        "path": str(registry.model_path(spec)),
                    }
                )
            )
            continue
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


@models.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", default=None, help="Registry name for a single .gguf file.")
@_friendly_errors
def models_import(path: Path, name: str | None) -> None:
    """Register a bundle's models folder, or one local .gguf file under --name.

    Each file is sha256-checked and copied into $EDGETTS_HOME/models, so it runs with no network.
    """
    from edgetts.bundle import import_models

    for imported in import_models(path, name):
        click.echo(f"{imported}: ready ({registry.model_path(registry.load_registry()[imported])})")


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


@main.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="New or empty folder for the bundle.",
)
@click.option(
    "--model",
    "model_names",
    multiple=True,
    help="Registry model to include (repeat for more; default: the default model).",
)
@click.option(
    "--source",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="edgetts checkout or wheel to bundle (default: the one running, if a checkout).",
)
@_friendly_errors
def bundle(out_dir: Path, model_names: tuple[str, ...], source: Path | None) -> None:
    """Make an air-gapped bundle: wheels (llama.cpp for any CPU of this architecture), verified
    models, install.sh (see edgetts/bundle.py).

    Example: edgetts bundle --out /media/usb/edgetts, then on the workstation:
    sh /media/usb/edgetts/install.sh ~/edgetts-venv
    """
    from edgetts.bundle import make_bundle

    report = make_bundle(out_dir, list(model_names), source, log=lambda line: click.echo(line, err=True))
    click.echo(
        f"{report.directory}: {report.wheels} wheels ({report.wheels_bytes / 1e6:,.0f} MB), "
        f"models {', '.join(report.models)} ({report.models_bytes / 1e6:,.0f} MB), "
        f"{report.seconds:.0f} s; on the workstation: sh {report.directory}/install.sh [VENV]"
    )


@main.command()
@click.option(
    "--host",
    default=ServerSettings.host,
    show_default=True,
    help="Address to bind; anything but loopback exposes the server to the network.",
)
@click.option("--port", default=ServerSettings.port, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--api-key",
    envvar="EDGETTS_API_KEY",
    default=None,
    show_envvar=True,
    help="Require 'Authorization: Bearer KEY' on every path but /health. A key given here shows in `ps` to "
    "every user of this machine: prefer $EDGETTS_API_KEY or --api-key-file.",
)
@click.option(
    "--api-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Read the API key from this file (its first line).",
)
@click.option(
    "-m", "--model", default=None, help="Registry name or path to a .gguf file (default: the default model)."
)
@click.option(
    "--prm", "prm_path", default=None, help="PRM directory (default: the one shipped for the policy)."
)
@click.option(
    "--strategy",
    default=None,
    type=click.Choice(strategy_choices()),
    help="Default strategy for requests that name none (default: auto).",
)
@click.option(
    "-n",
    "--n",
    "n",
    default=ServerSettings.default_n,
    show_default=True,
    type=click.IntRange(1, MAX_N),
    help="Default n for requests.",
)
@click.option("--deadline-s", type=POSITIVE, default=None, help="Default deadline for requests.")
@click.option(
    "--memory-mb",
    type=POSITIVE,
    default=None,
    help="Memory budget (MB): the model, its KV cache and slots are planned under it once, at start.",
)
@click.option(
    "--max-n",
    default=ServerSettings.max_n,
    show_default=True,
    type=click.IntRange(1, MAX_N),
    help="Largest n a request may ask for.",
)
@click.option(
    "--concurrent",
    default=ServerSettings.concurrent,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Searches run at once, their paths decoded together in one batch (1: one at a time).",
)
@click.option(
    "--max-queue",
    default=ServerSettings.max_queue,
    show_default=True,
    type=click.IntRange(0),
    help="Requests that may wait behind the running ones; more get 503 + Retry-After.",
)
@click.option(
    "--max-tokens",
    default=ServerSettings.max_tokens,
    show_default=True,
    type=click.IntRange(1),
    help="Generated tokens per solution, at most (requests may ask for fewer).",
)
@click.option(
    "--max-prompt-tokens",
    default=PolicyConfig.max_prompt_tokens,
    show_default=True,
    type=click.IntRange(1),
    help="Tokens a request's prompt (its whole conversation) may have; longer ones get a 400.",
)
@click.option(
    "--max-body-kb",
    default=ServerSettings.max_body_bytes // 1024,
    show_default=True,
    type=click.IntRange(1),
    help="Largest request body.",
)
@click.option(
    "--threads", type=click.IntRange(1), default=None, help="CPU threads (default: $EDGETTS_THREADS or all)."
)
@click.option(
    "--n-gpu-layers",
    default=None,
    type=click.IntRange(-1),
    help="Layers to offload to a GPU (-1: all) [default: $EDGETTS_N_GPU_LAYERS, else 0].",
)
@click.option(
    "--kv-type",
    default=None,
    type=click.Choice(KV_TYPES),
    help="KV cache element type [default: f16, or planned under a budget].",
)
@click.option(
    "--strict-model",
    is_flag=True,
    help="Answer only requests naming this model (default: any name means it).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    help="Browser origin allowed to call the API, e.g. http://localhost:3000 (repeatable).",
)
@click.option(
    "--allow-exec",
    is_flag=True,
    help="Run model-written code in the sandbox for requests with task=code or mode=pot "
    "(refused with a 400 otherwise).",
)
@click.option(
    "--allow-weak-sandbox",
    is_flag=True,
    help="With --allow-exec: run code even where the sandbox cannot set its limits.",
)
@_ray_option("Serve --replicas copies behind Ray Serve", "replica")
@click.option(
    "--replicas",
    type=click.IntRange(1),
    default=None,
    help="With --ray: replicas, each with its own model [default: 1].",
)
@_ray_gpus_option("replica")
@_friendly_errors
def serve(
    host: str,
    port: int,
    api_key: str | None,
    api_key_file: Path | None,
    model: str | None,
    prm_path: str | None,
    strategy: str | None,
    n: int,
    deadline_s: float | None,
    memory_mb: float | None,
    max_n: int,
    concurrent: int,
    max_queue: int,
    max_tokens: int,
    max_prompt_tokens: int,
    max_body_kb: int,
    threads: int | None,
    n_gpu_layers: int | None,
    kv_type: str | None,
    strict_model: bool,
    cors_origins: tuple[str, ...],
    allow_exec: bool,
    allow_weak_sandbox: bool,
    ray_address: str | None,
    replicas: int | None,
    ray_gpus: float | None,
) -> None:
    """Serve an OpenAI-compatible API (POST /v1/chat/completions) on HOST:PORT.

    Example: edgetts serve --port 8000, then point any OpenAI client at http://127.0.0.1:8000/v1
    """
    from edgetts.policy import PolicyConfig
    from edgetts.server import ServerSettings, model_names
    from edgetts.server import serve as run_server

    if n > max_n:
        raise click.UsageError(f"--n {n} is more than --max-n {max_n}")
    if ray_address is not None:
        from edgetts.distributed import require_ray

        require_ray()  # before anything loads: say at once how to get it
    elif replicas is not None or ray_gpus is not None:
        used = "--replicas" if replicas is not None else "--gpus-per-replica"
        raise click.UsageError(f"{used} is for --ray")
    if api_key_file is not None:
        lines = api_key_file.read_text(encoding="utf-8").splitlines()
        api_key = lines[0] if lines else ""
    if api_key is not None and not api_key.strip():
        raise click.ClickException("the API key is empty: it would let every client in; give a key or none")
    api_key = api_key.strip() if api_key is not None else None
    if api_key is not None and not (api_key.isascii() and api_key.isprintable()):
        # HTTP headers carry bytes a client may encode either way: such a key would never match
        raise click.ClickException("the API key must be printable ASCII (letters, digits, symbols)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s:     %(message)s")
    logging.getLogger("edgetts").setLevel(logging.INFO)
    model_id, aliases = model_names(model)
    settings = ServerSettings(
        host=host,
        port=port,
        api_key=api_key,
        model_id=model_id,
        model_aliases=aliases,
        max_tokens=max_tokens,
        max_n=max_n,
        concurrent=concurrent,
        max_queue=max_queue,
        max_body_bytes=max_body_kb * 1024,
        default_strategy=strategy,
        default_n=n,
        default_deadline_s=deadline_s,
        memory_mb=memory_mb,
        strict_model=strict_model,
        cors_origins=cors_origins,
        allow_exec=allow_exec,
    )
    if ray_address is not None:
        threads = _ray_threads({"threads": threads})
    policy_config = PolicyConfig(
        model=model,
        max_tokens=max_tokens,
        max_prompt_tokens=max_prompt_tokens,
        n_threads=threads,
        n_gpu_layers=n_gpu_layers,
        kv_type=kv_type or PolicyConfig.kv_type,
        n_seq_max=min(max_n, PolicyConfig.n_seq_max),
        max_searches=concurrent,
    )
    # what the user set, a request's budget plan keeps (as for solve and run)
    pinned = frozenset(k for k, v in (("kv_type", kv_type), ("n_gpu_layers", n_gpu_layers)) if v is not None)
    make_solver = functools.partial(
        server_solver, policy_config, prm_path, threads, allow_exec, allow_weak_sandbox, pinned
    )
    if ray_address is None:
        solver = make_solver()  # the sandbox check refuses a weak one before the model loads
        click.echo(f"loading {model_id} ...", err=True)
        run_server(solver, settings)
        return
    _serve_on_ray(make_solver, settings, ray_address, replicas or 1, threads, ray_gpus or 0.0)


def server_solver(
    policy_config,
    prm_path: str | None,
    threads: int | None,
    allow_exec: bool,
    allow_weak_sandbox: bool,
    pinned: frozenset[str] = frozenset(),
):
    """The server's solver (models not loaded yet), with a sandbox when code may run. Built
    where it serves: in this process, or in each Ray Serve replica (each node checks its own
    isolation, and its sandbox runs its own Python)."""
    from edgetts.solver import Solver

    sandbox = None
    if allow_exec:
        from edgetts.sandbox import Sandbox, SandboxUnavailable

        sandbox = Sandbox(allow_weak=allow_weak_sandbox)
        isolation = sandbox.isolation()  # refuse at startup, not at the first request
        if isolation.weak and not allow_weak_sandbox:
            raise SandboxUnavailable(
                "--allow-exec: this machine cannot contain model-written code\n"
                + isolation.describe()
                + "\nadd --allow-weak-sandbox to run it anyway"
            )
    # fixed_policy: loaded once (planned under the server's budget); a request never reloads it.
    # The context is sized up front for the server's max_tokens and KV slots.
    policy_config = replace(policy_config, n_ctx=policy_config.resolved_n_ctx())
    solver_kw = {"prm_path": prm_path, "prm_threads": threads, "pinned": pinned, "sandbox": sandbox}
    return Solver(policy_config, fixed_policy=True, **solver_kw)


def _serve_on_ray(make_solver, settings, address: str, replicas: int, threads: int, gpus: float) -> None:
    """``serve --ray``: the app in ``replicas`` Ray Serve replicas until Ctrl-C / SIGTERM."""
    from edgetts.distributed import connect, plan_workers
    from edgetts.distributed.serve import serve_on_ray
    from edgetts.server.settings import LOOPBACK_HOSTS

    connect(address)
    plan_workers(replicas, threads, gpus, "replica")  # a ValueError if the nodes cannot hold them
    if settings.host not in LOOPBACK_HOSTS and not settings.api_key:
        logging.getLogger("edgetts").warning(
            "binding to %s: the server is reachable from other machines and has no --api-key", settings.host
        )
    click.echo(
        f"loading {settings.model_id} in {replicas} Ray Serve replicas x {threads} threads ...", err=True
    )
    serve_on_ray(
        make_solver,
        settings,
        replicas,
        threads,
        ready=lambda base: click.echo(f"serving {base}/v1 ({replicas} replicas); Ctrl-C stops", err=True),
        gpus=gpus,
    )


if __name__ == "__main__":
    main()
