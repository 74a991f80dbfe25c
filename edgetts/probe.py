"""A PRM that reads the policy's own hidden states: a small ONNX head, no second model to run.

While it decodes, the policy already computes a final hidden state for every token. With
``PolicyConfig.capture_states`` it keeps the one at each step's last token on the path
(``SolutionPath.step_states``), and this scorer maps each to a step score with a tiny head (a logistic
probe trained by ``tools/train_probe.py`` on the policy's own samples, labelled by their final
answers: the score estimates how likely a solution that has come this far ends right). Scoring
is one matrix product per call: the cost of a second model's forward pass disappears, which is
what an edge device wants. The price: the head fits one policy only (the manifest names it) and
the states must come from generation (or from :meth:`edgetts.policy.LlamaPolicy.states_of`).

A probe directory holds ``manifest.json`` (``"kind": "policy_probe"``) and ``model.onnx``:
input ``[batch, hidden_size]`` float32, output ``[batch]`` or ``[batch, 1]`` logits. The
manifest may ask for the calculator check of :mod:`edgetts.prm`, which caps steps whose written
arithmetic is wrong.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetts.arithmetic import calculator_capped
from edgetts.confidence import STEP_FEATURES, step_features
from edgetts.prm import (
    PRMCounters,
    PRMError,
    check_common_settings,
    check_stop_settings,
    is_int,
    open_session,
    read_manifest,
)
from edgetts.search.base import AGGREGATIONS, SolutionPath

KIND = "policy_probe"


@dataclass
class ProbeManifest:
    """What a probe's ``manifest.json`` says (see the module docstring)."""

    name: str
    hidden_size: int
    policy: dict[str, Any]  # {"name": GGUF general.name, "n_embd": ..., "file": ...}: the policy read
    input_name: str = "hidden"
    output_name: str = "logit"
    default_aggregation: str = "last"
    threshold: float = 0.5
    calculator_check: bool = False
    calculator_cap: float = 0.05
    model_file: str = "model.onnx"
    kind: str = KIND
    # The policy's layers a step state joins (PolicyConfig.state_layers): -1 the final hidden
    # state, i >= 0 block i's output; hidden_size is n_embd times their number.
    layers: list[int] = field(default_factory=lambda: [-1])
    # Token-confidence features (edgetts.confidence.STEP_FEATURES names) joined after the
    # states, so hidden_size = n_embd * len(layers) + len(features); the policy must record
    # token confidence (capture_confidence) for them.
    features: list[str] = field(default_factory=list)
    # Weighted best-of-N stops a sample whose weakest step so far scores under this
    # (AdaptiveStop.prune_below; on this scorer's own scale). None: no pruning.
    prune_below: float | None = None
    # A vote weighted by this probe stops sampling once its leader stays ahead with this chance
    # (AdaptiveStop.weighted_threshold). None: the rule's own threshold.
    adaptive_threshold: float | None = None
    training: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> ProbeManifest:
        missing = [k for k in ("name", "hidden_size", "policy") if k not in d]
        if missing:
            raise PRMError(f"{where}: missing field(s) {missing}")
        known = set(cls.__dataclass_fields__)
        m = cls(**{k: v for k, v in d.items() if k in known})
        if m.kind != KIND:
            raise PRMError(f"{where}: kind is {m.kind!r}, expected {KIND!r}")
        unknown = [f for f in m.features if f not in STEP_FEATURES]
        if unknown:
            raise PRMError(f"{where}: unknown feature(s) {unknown}; known: {list(STEP_FEATURES)}")
        if m.default_aggregation not in AGGREGATIONS:
            raise PRMError(
                f"{where}: default_aggregation {m.default_aggregation!r} is not one of {list(AGGREGATIONS)}"
            )
        check_stop_settings(m.prune_below, m.adaptive_threshold, where)
        check_common_settings(m.threshold, m.calculator_cap, (m.model_file,), where)
        if not is_int(m.hidden_size) or m.hidden_size < 1:
            raise PRMError(f"{where}: hidden_size must be a positive int, got {m.hidden_size!r}")
        if not isinstance(m.policy, dict) or not isinstance(m.policy.get("name"), str):
            raise PRMError(f'{where}: policy must be an object naming the policy ({{"name": ...}})')
        layers_ok = isinstance(m.layers, list) and m.layers
        if not layers_ok or not all(is_int(i) for i in m.layers):
            raise PRMError(f"{where}: layers must be a non-empty list of ints (-1: the final state)")
        return m


class ProbeScorer:
    """Scores steps from ``SolutionPath.step_states``; a :class:`edgetts.search.base.Verifier`."""

    needs_states = True  # the policy must run with capture_states

    def __init__(self, session: Any, manifest: ProbeManifest, directory: Path | None = None) -> None:
        self.session = session
        self.manifest = manifest
        self.directory = directory
        self.counters = PRMCounters()

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], threads: int | None = None, use_cuda: bool | None = None
    ) -> ProbeScorer:
        """Load a probe directory; the ONNX input and output are checked against the manifest."""
        d = Path(path)
        where = str(d / "manifest.json")
        try:
            manifest = ProbeManifest.from_dict(read_manifest(d), where)
        except TypeError as e:
            raise PRMError(f"{where}: bad field value ({e})") from None
        onnx_path = d / manifest.model_file
        session = open_session(onnx_path, threads, use_cuda)
        _check_contract(session, manifest, str(onnx_path))
        return cls(session, manifest, directory=d)

    @property
    def default_aggregation(self) -> str:
        return self.manifest.default_aggregation

    @property
    def prune_below(self) -> float | None:
        """The score under which weighted best-of-N stops a sample early (its manifest says)."""
        return self.manifest.prune_below

    @property
    def adaptive_threshold(self) -> float | None:
        """The chance at which a vote weighted by this probe stops sampling (its manifest says)."""
        return self.manifest.adaptive_threshold

    @property
    def state_layers(self) -> tuple[int, ...]:
        """The policy layers a step state is made of, as the probe was trained."""
        return tuple(self.manifest.layers)

    def with_batch_size(self, batch_size: int) -> ProbeScorer:
        """This probe: it scores every state in one small product, with no batch to bound."""
        return self

    def with_own_counters(self) -> ProbeScorer:
        """This probe (same ONNX session) counting in fresh counters."""
        view = copy.copy(self)
        view.counters = PRMCounters()
        return view

    @property
    def needs_confidence(self) -> bool:
        """Whether the policy must record token confidence (``capture_confidence``) for it."""
        return bool(self.manifest.features)

    def check_policy(self, name: str, n_embd: int) -> None:
        """Raise PRMError unless the policy is the one this head was trained on."""
        want = self.manifest.policy
        width = n_embd * len(self.manifest.layers) + len(self.manifest.features)
        if width != self.manifest.hidden_size or (want.get("name") and want["name"] != name):
            raise PRMError(
                f"PRM {self.manifest.name!r} reads the hidden states of {want.get('name')!r} "
                f"({self.manifest.hidden_size} wide); the policy is {name!r} ({width} wide). "
                "Use --prm with a PRM for this policy (e.g. the shipped edgetts/assets/prm-minilm)."
            )

    def score_states(self, states: np.ndarray) -> np.ndarray:
        """Scores in [0, 1] for a ``[n, hidden_size]`` array of step states."""
        if len(states) == 0:
            return np.zeros(0, dtype=np.float32)
        out = self.session.run(
            [self.manifest.output_name], {self.manifest.input_name: states.astype(np.float32)}
        )[0]
        logit = np.asarray(out, dtype=np.float64).reshape(len(states))
        return 1.0 / (1.0 + np.exp(-logit))

    def score(self, question: str, paths: list[SolutionPath]) -> list[list[float]]:
        """StepScorer interface: one score per step, read from each path's recorded states."""
        t0 = time.perf_counter()
        for i, p in enumerate(paths):
            if len(p.step_states) != len(p.steps) or any(s is None for s in p.step_states):
                raise PRMError(
                    f"PRM {self.manifest.name!r} reads the policy's hidden states, but path {i} "
                    f"has {len(p.step_states)} for {len(p.steps)} steps: run the policy with "
                    "capture_states=True (the Solver does this for you)"
                )
        states = [s for p in paths for s in p.step_states]
        width = self.manifest.hidden_size - len(self.manifest.features)
        if states and len(states[0]) != width:
            raise PRMError(
                f"PRM {self.manifest.name!r} reads step states {width} wide (layers "
                f"{self.manifest.layers}), the paths hold {len(states[0])}: record them with "
                f"state_layers={tuple(self.manifest.layers)}"
            )
        if self.manifest.features and states:
            states = list(np.hstack([np.stack(states), self._confidence_features(paths)]))
        flat = iter(self.score_states(np.stack(states)) if states else [])
        result = [[float(next(flat)) for _ in p.steps] for p in paths]
        if self.manifest.calculator_check:
            result = [
                calculator_capped(p.steps, s, self.manifest.calculator_cap)
                for p, s in zip(paths, result, strict=True)
            ]
        self.counters.calls += 1
        self.counters.steps_scored += len(states)
        self.counters.seconds += time.perf_counter() - t0
        return result

    def _confidence_features(self, paths: list[SolutionPath]) -> np.ndarray:
        """The manifest's confidence features of every step of ``paths``, in step order."""
        columns = [STEP_FEATURES.index(f) for f in self.manifest.features]
        blocks = []
        for i, p in enumerate(paths):
            if len(p.step_token_ends) != len(p.steps):
                raise PRMError(
                    f"PRM {self.manifest.name!r} reads token confidence, but path {i} has "
                    f"{len(p.step_token_ends)} step ends for {len(p.steps)} steps: sample "
                    "with Sampling(record_confidence=True) (the Solver does this for you)"
                )
            blocks.append(step_features(p.token_stats, p.step_token_ends)[:, columns])
        return np.vstack(blocks)


def _check_contract(session: Any, m: ProbeManifest, where: str) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    problems = []
    node = inputs.get(m.input_name)
    if node is None:
        problems.append(f"input {m.input_name!r} is not a graph input (graph inputs: {sorted(inputs)})")
    else:
        if node.type != "tensor(float)":
            problems.append(f"graph input {m.input_name!r} has dtype {node.type}, expected tensor(float)")
        dims = node.shape
        if len(dims) != 2 or (isinstance(dims[1], int) and dims[1] != m.hidden_size):
            problems.append(
                f"graph input {m.input_name!r} has shape {node.shape}, expected [batch, {m.hidden_size}]"
            )
    if len(inputs) > 1:
        problems.append(f"graph has inputs {sorted(inputs)}; a probe takes one")
    out = outputs.get(m.output_name)
    if out is None:
        problems.append(f"output {m.output_name!r} is not a graph output (graph outputs: {sorted(outputs)})")
    elif len(out.shape) not in (1, 2):
        problems.append(
            f"graph output {m.output_name!r} has rank {len(out.shape)}, expected [batch] or [batch, 1]"
        )
    if problems:
        raise PRMError(f"{where}: ONNX graph does not match manifest.json: " + "; ".join(problems))


def load_scorer(
    path: str | os.PathLike[str] | None = None, threads: int | None = None, use_cuda: bool | None = None
) -> Any:
    """Load any PRM directory: a policy probe or a text PRM (None: the shipped text PRM)."""
    from edgetts.prm import PRMScorer

    if path is not None and read_manifest(path).get("kind") == KIND:
        return ProbeScorer.load(path, threads=threads, use_cuda=use_cuda)
    return PRMScorer.load(path, threads=threads, use_cuda=use_cuda)


def verifier_fingerprint(path: str | os.PathLike[str]) -> str:
    """``name@hash`` of a PRM directory: its manifest's name and a SHA-256 over every file the
    scorer reads (all but READMEs). Results files record it, so a run resumed after the PRM
    changed (a new edgetts shipping new weights or stopping settings, a probe installed under
    ``$EDGETTS_HOME/prms``) is refused instead of mixing two verifiers' answers."""
    import hashlib

    folder = Path(path)
    name = read_manifest(folder).get("name") or folder.name  # a clear error for a bad folder
    digest = hashlib.sha256()
    for file in sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("README")):
        digest.update(file.name.encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return f"{name}@{digest.hexdigest()[:16]}"


def save_states(file: str | os.PathLike[str], paths: list[SolutionPath]) -> None:
    """Keep paths' steps and step states (float16) in one ``.npz``, for rescoring or training;
    with their token confidence too when every path recorded it (``capture_confidence``)."""
    flat = [s for p in paths for s in p.step_states]
    if any(s is None for s in flat) or any(len(p.step_states) != len(p.steps) for p in paths):
        raise ValueError("every step needs a recorded state (capture_states)")
    width = len(flat[0]) if flat else 0
    extra = {}
    if paths and all(len(p.step_token_ends) == len(p.steps) for p in paths):
        stats = [s for p in paths for s in p.token_stats]
        extra = {
            "token_stats": np.array(stats, dtype=np.float32).reshape(-1, 3),
            "ntokens": np.array([len(p.token_stats) for p in paths], dtype=np.int64),
            "step_token_ends": np.array([e for p in paths for e in p.step_token_ends], dtype=np.int64),
        }
    np.savez(
        file,
        H=np.stack(flat).astype(np.float16) if flat else np.zeros((0, width), np.float16),
        nsteps=np.array([len(p.steps) for p in paths], dtype=np.int64),
        steps=np.array([s for p in paths for s in p.steps], dtype=str),
        **extra,
    )


def load_states(file: str | os.PathLike[str]) -> list[SolutionPath]:
    """Paths (steps, float32 step states and any token confidence) as :func:`save_states` kept
    them."""
    z = np.load(file)
    bounds = np.cumsum(np.r_[0, z["nsteps"]])
    H, steps = z["H"].astype(np.float32), [str(s) for s in z["steps"]]
    paths = [
        SolutionPath(steps=steps[a:b], step_states=list(H[a:b]), finished=True)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    if "token_stats" in z:
        tb = np.cumsum(np.r_[0, z["ntokens"]])
        for p, a, b, c, d in zip(paths, tb[:-1], tb[1:], bounds[:-1], bounds[1:], strict=True):
            p.token_stats = [tuple(map(float, row)) for row in z["token_stats"][a:b]]
            p.step_token_ends = [int(e) for e in z["step_token_ends"][c:d]]
    return paths


def policy_prm_dir(model: str | None = None) -> Path:
    """The PRM edgetts runs ``model`` with (a registry name or GGUF path; None: the default
    policy): :func:`default_prm_dir` for its GGUF's name and width."""
    from edgetts.metadata import read_metadata
    from edgetts.models import resolve

    meta = read_metadata(resolve(model))
    return default_prm_dir(meta.name, meta.n_embd)


def default_prm_dir(policy_name: str, n_embd: int, *roots: Path) -> Path:
    """The PRM for a policy: a probe made for it (its manifest names the policy; the user's
    ``$EDGETTS_HOME/prms`` first, then the shipped ones), else the text PRM, which reads any
    policy's text. ``roots``: folders of PRM folders to search instead."""
    from edgetts import paths
    from edgetts.prm import default_text_prm

    roots = roots or (paths.home() / "prms", paths.shipped_dir())
    manifests = [m for root in roots for m in sorted(root.glob("*/manifest.json"))]
    for manifest in manifests:
        try:
            m = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        # a folder that is not a probe for this policy is passed over, however its manifest
        # is shaped (one holding a list broke every solve that looked for the default PRM)
        if not isinstance(m, dict) or m.get("kind") != KIND or not isinstance(m.get("policy"), dict):
            continue
        layers, features = m.get("layers") or [-1], m.get("features") or []
        if not isinstance(layers, list) or not isinstance(features, list):
            continue
        width = n_embd * len(layers) + len(features)
        if m["policy"].get("name") == policy_name and m.get("hidden_size") == width:
            return manifest.parent
    return default_text_prm()
