"""Process reward model (PRM) runtime: score every step of a solution with an ONNX model.

A PRM directory holds three files:

* ``manifest.json`` -- how to build the inputs and read the scores (see :class:`Manifest`);
* ``model.onnx`` -- the graph, run with onnxruntime (CPU; CUDA when present and asked for);
* ``tokenizer.json`` -- a HuggingFace ``tokenizers`` file.

Input layout (token ids, built here, never by string concatenation of the tags)::

    prefix  question  middle  step_1 TAG  step_2 TAG ... step_n TAG  suffix

``prefix`` / ``middle`` / ``suffix`` are texts from the manifest (for the shipped MiniLM PRM:
``[CLS]``, ``[SEP]``, ``[SEP]``), ``TAG`` is the step-tag token id. The score of step *i* is read
at its tag: ``sigmoid(logit)`` (``output.kind == "logit"``) or the softmax probability of the
positive label token (``"label_softmax"``, as in Qwen2.5-Math-PRM / Math-Shepherd).
When the graph takes ``token_type_ids`` the prefix/question/middle get type 0 and the rest type 1.

Truncation (deliberate, so the runtime never fails on long inputs):

1. the question keeps its first ``max_question_tokens`` tokens;
2. a step longer than ``max_step_tokens`` (or than what fits next to the question) keeps its first
   and last tokens, dropping the middle;
3. when the steps do not all fit in ``max_length``, the path is split into windows scanned from
   the end: the first window holds the question and the *latest* steps that fit, the next window
   the question and the steps before those, and so on. Every step therefore gets a score and the
   latest steps always see the question and their nearest predecessors.

An int8 (dynamically quantized) model computes activation scales per batch, so a step's score
can move slightly (a few hundredths) with the other paths in the batch; fp32 models are exact.

Empty step list for a path -> empty score list; no paths -> ``[]``. A trailing blank-line step
separator (``"\\n\\n"``) is stripped before tokenizing. Bad PRM directories raise :class:`PRMError`
with a message naming the file or field.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgetts import paths
from edgetts.arithmetic import calculator_capped
from edgetts.gpu import installed_onnxruntimes, onnxruntime_problem
from edgetts.search.base import SolutionPath

log = logging.getLogger("edgetts.prm")

DEFAULT_PRM_NAME = "prm-minilm"  # the shipped text PRM, for any policy
FORMAT_VERSION = 1
OUTPUT_KINDS = ("logit", "label_softmax")


def default_text_prm() -> Path:
    """The text PRM used when no PRM is named: the user's ``prms/prm-minilm``, else the shipped."""
    return find_prm(DEFAULT_PRM_NAME)


def find_prm(name: str) -> Path:
    """A PRM folder by name: ``$EDGETTS_HOME/prms/NAME`` if there, else the shipped one."""
    user = paths.home() / "prms" / name
    return user if (user / "manifest.json").is_file() else paths.shipped_dir() / name


class PRMError(ValueError):
    """A PRM directory, manifest, graph or tokenizer that cannot be used."""


@dataclass
class Manifest:
    """What ``manifest.json`` says about the model. See the module docstring for the layout."""

    name: str
    step_tag: str
    max_length: int
    inputs: dict[str, str]  # role (input_ids/attention_mask/token_type_ids) -> graph input name
    output: dict[str, Any]  # {name, kind, positive_index?, negative_index?}
    format_version: int = FORMAT_VERSION
    step_tag_id: int | None = None
    step_separator: str = "\n\n"
    max_question_tokens: int = 128
    max_step_tokens: int = 160
    prefix: str = ""
    middle: str = ""
    suffix: str = ""
    pad_id: int = 0
    score_positions: str = "step_tag"
    default_aggregation: str = "last"
    threshold: float = 0.5
    model_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    # Optional calculator check: a step holding a plain-number equation that is false
    # ("4 * 12 = 52") gets its score capped at calculator_cap.
    calculator_check: bool = False
    calculator_cap: float = 0.05
    # Weighted best-of-N stops a sample whose weakest step so far scores under this
    # (AdaptiveStop.prune_below; on this scorer's own scale). None: no pruning.
    prune_below: float | None = None
    # A vote weighted by this scorer stops sampling once its leader stays ahead with this chance
    # (AdaptiveStop.weighted_threshold). None: the rule's own threshold.
    adaptive_threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    REQUIRED = ("name", "step_tag", "max_length", "inputs", "output")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest.json") -> Manifest:
        """Validate and build; raise PRMError naming the missing or bad field."""
        missing = [k for k in cls.REQUIRED if k not in d]
        if missing:
            raise PRMError(f"{where}: missing field(s) {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        m = cls(
            **{k: v for k, v in d.items() if k in known and k != "extra"},
            extra={k: v for k, v in d.items() if k not in known},
        )
        if m.format_version != FORMAT_VERSION:
            raise PRMError(
                f"{where}: format_version {m.format_version} is not supported "
                f"(this runtime reads {FORMAT_VERSION})"
            )
        if not isinstance(m.inputs, dict) or "input_ids" not in m.inputs:
            raise PRMError(f"{where}: field 'inputs' must map at least 'input_ids' to a graph input")
        bad_roles = set(m.inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if bad_roles:
            raise PRMError(f"{where}: field 'inputs' has unknown role(s) {sorted(bad_roles)}")
        if not isinstance(m.output, dict) or "name" not in m.output:
            raise PRMError(f"{where}: field 'output' must have a 'name'")
        kind = m.output.get("kind")
        if kind not in OUTPUT_KINDS:
            raise PRMError(f"{where}: output.kind {kind!r} must be one of {OUTPUT_KINDS}")
        if kind == "label_softmax":
            for k in ("positive_index", "negative_index"):
                if not isinstance(m.output.get(k), int):
                    raise PRMError(f"{where}: output.{k} (an int) is required for label_softmax")
        if m.score_positions != "step_tag":
            raise PRMError(
                f"{where}: score_positions {m.score_positions!r} is not supported (only 'step_tag')"
            )
        if m.default_aggregation not in ("last", "min", "prod"):
            raise PRMError(
                f"{where}: default_aggregation {m.default_aggregation!r} must be last, min or prod"
            )
        if not isinstance(m.max_length, int) or m.max_length < 16:
            raise PRMError(f"{where}: max_length must be an int >= 16, got {m.max_length!r}")
        for name, least in (("max_step_tokens", 1), ("max_question_tokens", 0)):
            value = getattr(m, name)  # (past max_length the windowing clamps it)
            if not is_int(value) or value < least:
                raise PRMError(f"{where}: {name} must be an int >= {least}, got {value!r}")
        check_stop_settings(m.prune_below, m.adaptive_threshold, where)
        check_common_settings(m.threshold, m.calculator_cap, (m.model_file, m.tokenizer_file), where)
        return m


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: object) -> bool:
    """A JSON whole number (``true`` is an int to Python, not to a manifest)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_common_settings(threshold: object, cap: object, files: tuple[object, ...], where: str) -> None:
    """Raise PRMError unless ``threshold`` and ``calculator_cap`` are numbers in [0, 1] and each
    of ``files`` names a file inside the PRM's folder (loaded from a path outside it, a model
    would change without changing the folder's fingerprint, which resumed runs are checked by)."""
    for name, value in (("threshold", threshold), ("calculator_cap", cap)):
        if not (_is_number(value) and 0.0 <= value <= 1.0):
            raise PRMError(f"{where}: {name} must be a number in [0, 1], got {value!r}")
    for file in files:
        parts = PurePosixPath(file).parts if isinstance(file, str) else ()
        if not parts or PurePosixPath(file).is_absolute() or ".." in parts or "\\" in file:
            raise PRMError(f"{where}: file {file!r} must be a name inside the PRM's folder")


def check_stop_settings(prune_below: object, adaptive_threshold: object, where: str) -> None:
    """Raise PRMError unless a manifest's ``prune_below`` is None or a number in (0, 1) and its
    ``adaptive_threshold`` None or a number in [0.5, 1]."""
    if prune_below is not None and not (_is_number(prune_below) and 0.0 < prune_below < 1.0):
        raise PRMError(f"{where}: prune_below must be a number in (0, 1) or null, got {prune_below!r}")
    if adaptive_threshold is not None and not (
        _is_number(adaptive_threshold) and 0.5 <= adaptive_threshold <= 1.0
    ):
        raise PRMError(
            f"{where}: adaptive_threshold must be a number in [0.5, 1] or null, got {adaptive_threshold!r}"
        )


@dataclass
class Window:
    """One model input: token ids, their types, and which step each tag position scores."""

    ids: list[int]
    types: list[int]
    tag_positions: list[int]
    step_indices: list[int]


class InputBuilder:
    """Turns (question, steps) into model windows exactly as training did (shared code)."""

    def __init__(self, tokenizer: Any, manifest: Manifest) -> None:
        self.tok = tokenizer
        self.m = manifest
        tag = manifest.step_tag_id
        if tag is None:
            tag = tokenizer.token_to_id(manifest.step_tag)
        if tag is None:
            raise PRMError(
                f"{manifest.tokenizer_file}: step tag {manifest.step_tag!r} is not in "
                "the vocabulary; set step_tag_id in manifest.json"
            )
        self.tag_id = int(tag)
        self.prefix = self._enc(manifest.prefix)
        self.middle = self._enc(manifest.middle)
        self.suffix = self._enc(manifest.suffix)
        # Questions and steps are untrusted text: "[SEP]" or "[CLS]" in them is plain text, not
        # the special token the manifest's own parts use. (add_special_tokens=False only stops
        # the tokenizer adding its own; a copy, so threads never toggle a shared setting.)
        self.text_tok = type(tokenizer).from_str(tokenizer.to_str())
        self.text_tok.encode_special_tokens = True

    def _enc(self, text: str) -> list[int]:
        """The manifest's own template text (trusted: its special tokens are meant)."""
        return list(self.tok.encode(text, add_special_tokens=False).ids) if text else []

    def _encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """Untrusted text, special-token names read as plain text."""
        if not texts:
            return []
        return [list(e.ids) for e in self.text_tok.encode_batch(list(texts), add_special_tokens=False)]

    @staticmethod
    def _clip(ids: list[int], n: int) -> list[int]:
        """Keep the first and last tokens of an over-long step (n >= 1)."""
        if len(ids) <= n:
            return ids
        head = n // 2
        return ids[:head] + ids[len(ids) - (n - head) :]

    def clean_step(self, step: str) -> str:
        sep = self.m.step_separator
        s = step
        while sep and s.endswith(sep):
            s = s[: -len(sep)]
        return s.strip()

    def windows(self, question: str, steps: Sequence[str]) -> list[Window]:
        """All windows for one path (see the module docstring for the truncation rule)."""
        if not steps:
            return []
        q = self._encode_many([question])[0][: self.m.max_question_tokens]
        head = self.prefix + q + self.middle
        budget = self.m.max_length - len(head) - len(self.suffix)
        if budget < 2:
            raise PRMError(
                f"manifest.json: max_length {self.m.max_length} leaves no room for "
                "steps after the question; raise max_length or lower "
                "max_question_tokens"
            )
        cap = max(1, min(self.m.max_step_tokens, budget - 1))
        enc = [self._clip(e, cap) for e in self._encode_many([self.clean_step(s) for s in steps])]
        out: list[Window] = []
        end = len(enc)
        while end > 0:
            start, used = end, 0
            while start > 0 and used + len(enc[start - 1]) + 1 <= budget:
                used += len(enc[start - 1]) + 1
                start -= 1
            ids = list(head)
            types = [0] * len(head)
            tags: list[int] = []
            for i in range(start, end):
                ids.extend(enc[i])
                ids.append(self.tag_id)
                tags.append(len(ids) - 1)
            ids.extend(self.suffix)
            types.extend([1] * (len(ids) - len(types)))
            out.append(Window(ids, types, tags, list(range(start, end))))
            end = start
        return out


@dataclass
class PRMCounters:
    """Work done by a scorer since it was loaded."""

    calls: int = 0
    steps_scored: int = 0
    seconds: float = 0.0


def _load_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    if not path.is_file():
        raise PRMError(f"{path}: tokenizer file not found")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise PRMError(f"{path}: tokenizer file does not load ({str(e).splitlines()[0]})") from None
    tok.no_truncation()
    tok.no_padding()
    return tok


def check_contract(session: Any, m: Manifest, where: str) -> None:
    """Compare the ONNX graph's inputs/outputs with the manifest; raise PRMError on a mismatch."""
    graph_in = {i.name: i for i in session.get_inputs()}
    graph_out = {o.name: o for o in session.get_outputs()}
    wanted = set(m.inputs.values())
    problems: list[str] = []
    for role, name in m.inputs.items():
        node = graph_in.get(name)
        if node is None:
            problems.append(
                f"manifest inputs.{role} = {name!r} is not a graph input (graph inputs: {sorted(graph_in)})"
            )
            continue
        if node.type != "tensor(int64)":
            problems.append(f"graph input {name!r} has dtype {node.type}, expected tensor(int64)")
        if len(node.shape) != 2:
            problems.append(f"graph input {name!r} has rank {len(node.shape)}, expected 2 [batch, sequence]")
    extra = sorted(set(graph_in) - wanted)
    if extra:
        problems.append(f"graph input(s) {extra} are not named in manifest 'inputs'")
    out_name = m.output["name"]
    node = graph_out.get(out_name)
    if node is None:
        problems.append(
            f"manifest output.name = {out_name!r} is not a graph output (graph outputs: {sorted(graph_out)})"
        )
    else:
        if node.type not in ("tensor(float)", "tensor(float16)"):
            problems.append(f"graph output {out_name!r} has dtype {node.type}, expected float")
        rank = len(node.shape)
        if m.output["kind"] == "logit" and rank not in (2, 3):
            problems.append(
                f"graph output {out_name!r} has rank {rank}; kind 'logit' needs "
                "[batch, sequence] (or [batch, sequence, 1])"
            )
        if m.output["kind"] == "label_softmax":
            if rank != 3:
                problems.append(
                    f"graph output {out_name!r} has rank {rank}; kind "
                    "'label_softmax' needs [batch, sequence, labels]"
                )
            else:
                n = node.shape[2]
                top = max(m.output["positive_index"], m.output["negative_index"])
                if isinstance(n, int) and top >= n:
                    problems.append(
                        f"output.positive/negative_index {top} is out of range for "
                        f"{n} labels in graph output {out_name!r}"
                    )
    if problems:
        raise PRMError(f"{where}: ONNX graph does not match manifest.json: " + "; ".join(problems))


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """A PRM directory's manifest as a dict, with a clear error when it is missing or bad."""
    mpath = Path(directory) / "manifest.json"
    if not Path(directory).is_dir():
        raise PRMError(f"{directory}: PRM directory not found")
    if not mpath.is_file():
        raise PRMError(f"{mpath}: manifest not found")
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PRMError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise PRMError(f"{mpath}: must hold a JSON object")
    return raw


DEVICE_ENV = "EDGETTS_PRM_DEVICE"


def choose_providers(available: Sequence[str], use_cuda: bool | None) -> list[str]:
    """onnxruntime providers for a PRM: CUDA first when onnxruntime has it, unless told CPU.

    ``use_cuda`` None follows ``$EDGETTS_PRM_DEVICE`` (``auto``, the default, ``cpu`` or
    ``cuda``); ``cuda`` where onnxruntime has no CUDA provider is an error, not a silent CPU run.
    """
    if use_cuda is None:
        device = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
        if device not in ("auto", "cpu", "cuda"):
            raise PRMError(f"{DEVICE_ENV} must be auto, cpu or cuda, got {device!r}")
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            shadow = onnxruntime_problem(installed_onnxruntimes(), available)
            raise PRMError(
                f"{DEVICE_ENV}=cuda but this onnxruntime has no CUDA provider: "
                + (shadow or 'install onnxruntime-gpu in place of onnxruntime (README, "GPU")')
            )
        use_cuda = device != "cpu"
    cuda = use_cuda and "CUDAExecutionProvider" in available
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


def open_session(onnx_path: Path, threads: int | None, use_cuda: bool | None = None) -> Any:
    """An onnxruntime session (providers from :func:`choose_providers`), clear errors."""
    import onnxruntime as ort

    if not onnx_path.is_file():
        raise PRMError(f"{onnx_path}: ONNX model not found")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    available = ort.get_available_providers()
    providers = choose_providers(available, use_cuda)
    if "CUDAExecutionProvider" not in available:
        shadow = onnxruntime_problem(installed_onnxruntimes(), available)
        if shadow:  # onnxruntime-gpu was meant to run this PRM; say why it runs on the CPU
            log.warning("the PRM runs on the CPU: %s", shadow)
    try:
        return ort.InferenceSession(str(onnx_path), opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PRMError(
            f"{onnx_path}: ONNX model does not load (missing, truncated or corrupt?): {msg[:300]}"
        ) from None


# Input windows scored in one session run. One: batching gave no speed on CPU (2.5 s at batch 1,
# 3.2 s at 16 for the same 128 steps) but each 512-token window's activations cost about 100 MB.
# The scheduler counts this batch (edgetts.scheduler.prm_cost); bench tools may ask for more.
PRM_BATCH_SIZE = 1


class PRMScorer:
    """Scores steps with an ONNX PRM from their text; a :class:`edgetts.search.base.Verifier`."""

    # It reads the steps' text, whatever policy wrote them.
    needs_states = False
    needs_confidence = False
    state_layers: tuple[int, ...] = ()

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        manifest: Manifest,
        batch_size: int = PRM_BATCH_SIZE,
        directory: Path | None = None,
    ) -> None:
        self.session = session
        self.manifest = manifest
        self.builder = InputBuilder(tokenizer, manifest)
        self.batch_size = max(1, batch_size)
        self.directory = directory
        self.counters = PRMCounters()
        # One batch of windows at a time, shared by every view (with_batch_size,
        # with_own_counters): concurrent searches score in turn, so the activations held stay
        # the one batch the scheduler counts (about 100 MB a window), not one per search. On
        # CPU the session's own threads already use the cores.
        self.session_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        use_cuda: bool | None = None,
        batch_size: int = PRM_BATCH_SIZE,
    ) -> PRMScorer:
        """Load a PRM directory (None: the text PRM, ``prm-minilm``, see :func:`default_text_prm`)."""
        d = Path(path) if path is not None else default_text_prm()
        mpath = d / "manifest.json"
        try:
            manifest = Manifest.from_dict(read_manifest(d), str(mpath))
        except TypeError as e:
            raise PRMError(f"{mpath}: bad field value ({e})") from None
        tok = _load_tokenizer(d / manifest.tokenizer_file)
        onnx_path = d / manifest.model_file
        session = open_session(onnx_path, threads, use_cuda)
        check_contract(session, manifest, str(onnx_path))
        return cls(session, tok, manifest, batch_size=batch_size, directory=d)

    # -- scoring -------------------------------------------------------------------------------

    def _run(self, batch: list[Window]) -> list[np.ndarray]:
        m = self.manifest
        n = max(len(w.ids) for w in batch)
        ids = np.full((len(batch), n), m.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), n), dtype=np.int64)
        types = np.zeros((len(batch), n), dtype=np.int64)
        for r, w in enumerate(batch):
            ids[r, : len(w.ids)] = w.ids
            mask[r, : len(w.ids)] = 1
            types[r, : len(w.ids)] = w.types
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feed = {name: arrays[role] for role, name in m.inputs.items()}
        with self.session_lock:
            out = self.session.run([m.output["name"]], feed)[0].astype(np.float32)
        scores: list[np.ndarray] = []
        for r, w in enumerate(batch):
            at = out[r, w.tag_positions]
            if m.output["kind"] == "logit":
                logit = at.reshape(len(w.tag_positions), -1)[:, 0]
                s = 1.0 / (1.0 + np.exp(-logit))
            else:
                pos, neg = m.output["positive_index"], m.output["negative_index"]
                two = at[:, [neg, pos]]
                two = two - two.max(axis=1, keepdims=True)
                e = np.exp(two)
                s = e[:, 1] / e.sum(axis=1)
            scores.append(s)
        return scores

    @property
    def default_aggregation(self) -> str:
        """How this PRM's step scores are best combined into a path score (its manifest says)."""
        return self.manifest.default_aggregation

    @property
    def prune_below(self) -> float | None:
        """The score under which weighted best-of-N stops a sample early (its manifest says)."""
        return self.manifest.prune_below

    @property
    def adaptive_threshold(self) -> float | None:
        """The chance at which a vote weighted by this scorer stops sampling (its manifest says)."""
        return self.manifest.adaptive_threshold

    def check_policy(self, name: str, n_embd: int) -> None:
        """Any policy will do: a text PRM reads the steps, not the policy's states."""

    def with_batch_size(self, batch_size: int) -> PRMScorer:
        """This PRM (same session, tokenizer and counters) scoring ``batch_size`` windows at once."""
        view = copy.copy(self)
        view.batch_size = max(1, batch_size)
        return view

    def with_own_counters(self) -> PRMScorer:
        """This PRM (same session, tokenizer and batch size) counting in fresh counters."""
        view = copy.copy(self)
        view.counters = PRMCounters()
        return view

    def score_steps(self, question: str, steps_per_path: list[list[str]]) -> list[list[float]]:
        """Per-step scores in [0, 1] for each path (batched by length)."""
        return self.score_pairs([(question, steps) for steps in steps_per_path])

    def score_pairs(self, pairs: list[tuple[str, list[str]]]) -> list[list[float]]:
        """Like :meth:`score_steps` for paths of different questions (used by evaluation)."""
        t0 = time.perf_counter()
        result: list[list[float]] = [[0.0] * len(steps) for _, steps in pairs]
        jobs: list[tuple[int, Window]] = []
        for p, (question, steps) in enumerate(pairs):
            jobs.extend((p, w) for w in self.builder.windows(question, steps))
        jobs.sort(key=lambda j: len(j[1].ids))
        for b in range(0, len(jobs), self.batch_size):
            chunk = jobs[b : b + self.batch_size]
            for (p, w), s in zip(chunk, self._run([w for _, w in chunk]), strict=True):
                for i, v in zip(w.step_indices, s, strict=True):
                    result[p][i] = float(v)
        if self.manifest.calculator_check:
            result = [
                calculator_capped(steps, scores, self.manifest.calculator_cap)
                for (_, steps), scores in zip(pairs, result, strict=True)
            ]
        self.counters.calls += 1
        self.counters.steps_scored += sum(len(s) for _, s in pairs)
        self.counters.seconds += time.perf_counter() - t0
        return result

    def score(self, question: str, paths: list[SolutionPath]) -> list[list[float]]:
        """StepScorer interface: per-step scores of each path's steps."""
        return self.score_steps(question, [list(p.steps) for p in paths])
