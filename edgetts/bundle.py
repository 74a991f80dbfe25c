"""Air-gapped installs: a bundle made on a connected machine, installed and run with no network.

A bundle is a folder::

    DIR/wheels/       edgetts and every wheel it needs, llama-cpp-python built once, here
    DIR/models/       NAME.json (the registry manifest: file, size, sha256) and the GGUF it names
    DIR/INSTALL.txt   the commands below

On the workstation::

    pip install --no-index --find-links DIR/wheels edgetts
    EDGETTS_OFFLINE=1 edgetts models import DIR/models

The wheels fit machines with this machine's operating system, CPU architecture and Python
version (pip builds and picks them for this one). The PRMs and the compute-optimal table travel
inside the edgetts wheel. Every GGUF is checked against its manifest's sha256 when imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgetts import models as registry
from edgetts import paths
from edgetts.models import ModelError, ModelSpec, Part

INSTALL_TEXT = """\
edgetts bundle, made {made} on {platform} for Python {python}.

On the machine without network (same OS, CPU architecture and Python version):

    python3 -m venv .venv && . .venv/bin/activate
    pip install --no-index --find-links {wheels} edgetts
    export EDGETTS_OFFLINE=1        # never reach for the network; name what is missing instead
    edgetts models import {models}
    edgetts solve "A pen costs 3 dollars. How much do 7 pens cost?"

Models in this bundle: {names}.
"""


@dataclass(frozen=True)
class BundleReport:
    """What a bundle holds and what making it cost."""

    directory: str
    models: tuple[str, ...]
    wheels: int
    wheels_bytes: int
    models_bytes: int
    seconds: float


def project_source() -> Path:
    """The edgetts source tree this package runs from (a checkout or an editable install)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise ModelError(
            "edgetts is installed from a wheel, so there is no source here to build its wheel "
            "from: pass --source with an edgetts checkout or an edgetts-*.whl file"
        )
    return root


def make_bundle(out: Path, names: list[str], source: Path | None = None, log=print) -> BundleReport:
    """Write a bundle of edgetts (wheels) and the named registry models (pulled first) to ``out``."""
    if registry.offline():
        raise ModelError(f"{registry.OFFLINE_ENV} is set: a bundle is made on a connected machine")
    start = time.perf_counter()
    reg = registry.load_registry()
    names = names or [registry.default_model_name(reg)]
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise ModelError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(reg)}")
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out} is not empty: a bundle goes into a new or empty folder")
    wheels, model_dir = out / "wheels", out / "models"
    model_dir.mkdir(parents=True, exist_ok=True)
    log(f"building wheels into {wheels} (llama-cpp-python compiles once if pip has no wheel of it)")
    _build_wheels(source or project_source(), wheels)
    for name in names:
        spec = reg[name]
        log(f"adding {name} ({spec.size_bytes / 1e6:,.0f} MB)")
        shutil.copyfile(registry.pull(spec), model_dir / spec.file)
        (model_dir / f"{name}.json").write_text(json.dumps(_manifest(spec), indent=2) + "\n")
    python = ".".join(map(str, sys.version_info[:2]))
    (out / "INSTALL.txt").write_text(
        INSTALL_TEXT.format(
            made=time.strftime("%Y-%m-%d"),
            platform=sys.platform,
            python=python,
            wheels=wheels.resolve(),
            models=model_dir.resolve(),
            names=", ".join(names),
        )
    )
    files = list(wheels.glob("*.whl"))
    return BundleReport(
        directory=str(out),
        models=tuple(names),
        wheels=len(files),
        wheels_bytes=sum(f.stat().st_size for f in files),
        models_bytes=sum(f.stat().st_size for f in model_dir.glob("*.gguf")),
        seconds=round(time.perf_counter() - start, 1),
    )


def _build_wheels(source: Path, wheels: Path) -> None:
    """``pip wheel`` edgetts and its runtime dependencies (not the dev or train extras)."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelError(f"pip could not build the wheels: {proc.stderr.strip()[-800:]}")
    if source.is_dir():
        shutil.rmtree(source / "build", ignore_errors=True)  # setuptools' leftovers in a checkout


def _manifest(spec: ModelSpec) -> dict:
    data = asdict(spec)
    data["parts"] = [asdict(p) for p in spec.parts]
    return data


def import_models(path: Path, name: str | None = None) -> list[str]:
    """Register models here: a bundle's ``models`` folder, or one GGUF file under ``name``.

    Each GGUF is copied into the user folder (``$EDGETTS_HOME/models``) after its sha256 matches
    its manifest (a bundle) or is recorded (a file), so the registry, the scheduler and the server
    treat it like a shipped model. A manifest goes to ``$EDGETTS_HOME/policies`` unless the same
    entry already ships.
    """
    if path.is_dir():
        if name is not None:
            raise ModelError("--name is for one .gguf file; a bundle's models keep their names")
        manifests = sorted(path.glob("*.json"))
        if not manifests:
            raise ModelError(f"{path} has no model manifests (*.json): not a bundle's models folder")
        return [_import_bundled(m) for m in manifests]
    if path.suffix != ".gguf":
        raise ModelError(f"{path} is neither a bundle's models folder nor a .gguf file")
    if not name:
        raise ModelError("give the imported model a name: --name NAME")
    return [_import_file(path, name)]


def _import_bundled(manifest: Path) -> str:
    try:
        raw = json.loads(manifest.read_text())
        spec = ModelSpec(**{**raw, "parts": tuple(Part(**p) for p in raw.get("parts", []))})
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelError(f"model manifest {manifest} is malformed: {exc}") from exc
    _install(manifest.parent / spec.file, spec)
    return spec.name


def _import_file(gguf: Path, name: str) -> str:
    from edgetts.metadata import read_metadata

    registry.check_gguf_file(gguf)
    meta = read_metadata(gguf)
    shipped = registry.load_registry()
    sha = registry.sha256_file(gguf)
    if name in shipped and shipped[name].sha256 != sha:
        raise ModelError(f"{name!r} is already a registry model with other weights; choose another name")
    spec = ModelSpec(
        name=name,
        file=f"{name}.gguf",
        kind="instruct" if meta.chat_template else "base",
        size_bytes=gguf.stat().st_size,
        sha256=sha,
        default=False,
        description=f"imported from {gguf.name} ({meta.architecture}, {meta.n_params / 1e6:.0f}M params)",
    )
    _install(gguf, spec)
    return name


def _install(source: Path, spec: ModelSpec) -> None:
    """Copy ``source`` into the cache as ``spec`` says, refusing any file but the one it names."""
    if not source.is_file():
        raise ModelError(f"{source} is missing: the manifest names it")
    size = source.stat().st_size
    if size != spec.size_bytes:
        raise ModelError(f"{source} has {size:,} of {spec.size_bytes:,} bytes (truncated or wrong file)")
    if registry.sha256_file(source) != spec.sha256:
        raise ModelError(f"{source} does not match its sha256 {spec.sha256} (altered or corrupt)")
    target = registry.model_path(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    registry.verify(spec)  # hashes the copy and stamps it ready
    shipped = registry.load_registry(paths.shipped_dir()).get(spec.name)
    if shipped != spec:
        policies = paths.home() / "policies"
        policies.mkdir(parents=True, exist_ok=True)
        (policies / f"{spec.name}.json").write_text(json.dumps(_manifest(spec), indent=2) + "\n")
