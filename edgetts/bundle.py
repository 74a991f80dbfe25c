"""Air-gapped installs: a bundle made on a connected machine, installed and run with no network.

A bundle is a folder::

    DIR/wheels/       edgetts and every wheel it needs, llama-cpp-python built here for any CPU
                      of this architecture (see PORTABLE_CMAKE_ARGS)
    DIR/models/       NAME.json (the registry manifest: file, size, sha256) and the GGUF it names
    DIR/bundle.json   what the wheels need of a machine, and every file's sha256
    DIR/check.py      checks the bundle and this machine against bundle.json (standard library)
    DIR/install.sh    check, venv, wheels, models, one answer: ``sh DIR/install.sh [VENV]``
    DIR/INSTALL.txt   the same steps by hand

The wheels fit machines with this machine's operating system, CPU architecture, C library (or
newer) and Python version (pip builds and picks them for this one); ``check.py`` names the first
mismatch before pip runs. The PRMs and the compute-optimal table travel inside the edgetts wheel.
Every file is checked against its sha256 before install, and every GGUF again when imported.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path

from edgetts import models as registry
from edgetts import paths
from edgetts.models import ModelError, ModelSpec

# llama.cpp's CPU code in the bundle is built for any CPU of this architecture that has the
# instruction sets below (x86-64: AVX2, FMA, F16C, BMI2: Intel Haswell, AMD Zen and later), not
# for this machine's own: llama.cpp's default native build uses AVX-512 and AMX where the build
# machine has them, and a workstation without them dies with SIGILL at the first decode.
PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF"
PORTABLE_CPU_FLAGS = {
    "x86_64": ["sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"]
}  # as /proc/cpuinfo names them

INSTALL_TEXT = """\
edgetts {version} bundle, made {made}: for Python {python} on {machine} Linux, glibc {glibc} or newer.

On the machine without network, in this folder:

    sh install.sh .venv             # all of the below, with the checks first
                                    # (PYTHON=python{python} sh install.sh: not python3)

or by hand:

    python3 check.py                # this machine and the bundle's files against bundle.json
    python3 -m venv .venv && . .venv/bin/activate
    pip install --no-index --find-links wheels --force-reinstall edgetts
    export EDGETTS_OFFLINE=1        # never reach for the network; name what is missing instead
    edgetts models import models
    edgetts solve -m {first} "A pen costs 3 dollars. How much do 7 pens cost?"

Models in this bundle: {names}.
"""

INSTALL_SH = """\
#!/bin/sh
# Install this edgetts bundle with no network: sh install.sh [VENV] (default: .venv here).
# PYTHON=python3.11 sh install.sh: another interpreter than python3 (the bundle's version).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${{1:-$here/.venv}}
python=${{PYTHON:-python3}}
"$python" "$here/check.py"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --no-index --find-links "$here/wheels" --force-reinstall edgetts
EDGETTS_OFFLINE=1 "$venv/bin/edgetts" models import "$here/models"
EDGETTS_OFFLINE=1 "$venv/bin/edgetts" solve -m {first} --strategy greedy --max-tokens 64 "What is 2 + 3?"
echo "installed: . $venv/bin/activate && export EDGETTS_OFFLINE=1"
"""

# Run by the workstation's own python3 before pip: the standard library only.
CHECK_PY = r'''"""Check this machine and this bundle's files against bundle.json; exit 1 naming a mismatch."""
import hashlib, json, os, platform, sys

here = os.path.dirname(os.path.abspath(__file__))


def incomplete(why):  # bundle.json is written last: without it, or torn, the copy is unfinished
    sys.exit("the bundle is incomplete (bundle.json %s): copy it again" % why)


try:
    with open(os.path.join(here, "bundle.json")) as f:
        need = json.load(f)
except OSError as exc:
    incomplete("missing or unreadable: %s" % (exc.strerror or exc))
except ValueError as exc:
    incomplete("torn: %s" % exc)
if not isinstance(need, dict) or not isinstance(need.get("files"), dict) or not all(
        key in need for key in ("python", "machine", "cpu_flags")):
    incomplete("torn: fields are missing")
problems = []
python = "%d.%d" % sys.version_info[:2]
if python != need["python"]:
    problems.append("python3 is %s; the wheels are for Python %s" % (python, need["python"]))
if platform.machine() != need["machine"]:
    problems.append("this is %s; the wheels are for %s" % (platform.machine(), need["machine"]))
libc, version = platform.libc_ver()
if need.get("glibc") and (libc != "glibc" or tuple(map(int, version.split(".")[:2])) < tuple(need["glibc"])):
    problems.append("C library %s %s; the wheels need glibc %s or newer" % (libc or "?", version or "?",
                                                                        ".".join(map(str, need["glibc"]))))
try:
    with open("/proc/cpuinfo") as f:
        flags = set(next((l.split(":", 1)[1].split() for l in f if l.startswith(("flags", "Features"))), []))
except OSError:
    flags = None
missing = [x for x in need["cpu_flags"] if flags is not None and x not in flags]
if missing:
    problems.append("this CPU lacks %s, which llama.cpp in this bundle was built to use" % ", ".join(missing))
for name, digest in sorted(need["files"].items()):
    path = os.path.join(here, name)
    if not os.path.isfile(path):
        problems.append("%s is missing (an incomplete copy?)" % name)
        continue
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != digest:
        problems.append("%s does not match its sha256 (altered or damaged in the copy)" % name)
# pip installs any wheel in wheels/ and the import takes any manifest in models/: only listed ones
for folder in ("wheels", "models"):
    for root, dirs, names in os.walk(os.path.join(here, folder)):
        for name in sorted(names):
            listed = os.path.relpath(os.path.join(root, name), here).replace(os.sep, "/")
            if listed not in need["files"]:
                problems.append("%s is not listed in bundle.json (not from this bundle): remove it" % listed)
if problems:
    sys.exit("this bundle cannot install here:\n  " + "\n  ".join(problems))
print("bundle and machine ok: Python %s, %s, %d files" % (python, need["machine"], len(need["files"])))
'''


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
    if not sys.platform.startswith("linux"):
        raise ModelError("bundles are made on Linux for Linux workstations")
    wheels, model_dir = out / "wheels", out / "models"
    model_dir.mkdir(parents=True, exist_ok=True)
    log(
        f"building wheels into {wheels} (llama-cpp-python compiles for any {platform.machine()} CPU: minutes)"
    )
    _build_wheels(source or project_source(), wheels)
    for name in names:
        spec = reg[name]
        log(f"adding {name} ({spec.size_bytes / 1e6:,.0f} MB)")
        shutil.copyfile(registry.pull(spec), model_dir / spec.file)
        (model_dir / f"{name}.json").write_text(json.dumps(_manifest(spec), indent=2) + "\n")
    files = list(wheels.glob("*.whl"))
    need = {
        "edgetts": metadata.version("edgetts"),
        "made": time.strftime("%Y-%m-%d"),
        "python": ".".join(map(str, sys.version_info[:2])),
        "machine": platform.machine(),
        "glibc": _glibc_needed(files),
        "cpu_flags": PORTABLE_CPU_FLAGS.get(platform.machine(), []),
        "models": names,
        "files": {
            p.relative_to(out).as_posix(): registry.sha256_file(p)
            for p in sorted([*files, *model_dir.iterdir()])
        },
    }
    (out / "check.py").write_text(CHECK_PY)
    (out / "install.sh").write_text(INSTALL_SH.format(first=names[0]))
    (out / "install.sh").chmod(0o755)
    (out / "INSTALL.txt").write_text(
        INSTALL_TEXT.format(
            version=need["edgetts"],
            made=need["made"],
            machine=need["machine"],
            glibc=".".join(map(str, need["glibc"])) if need["glibc"] else "any",
            python=need["python"],
            first=names[0],
            names=", ".join(names),
        )
    )
    # Written last: a bundle without it is an interrupted one, and check.py refuses it.
    (out / "bundle.json").write_text(json.dumps(need, indent=2) + "\n")
    return BundleReport(
        directory=str(out),
        models=tuple(names),
        wheels=len(files),
        wheels_bytes=sum(f.stat().st_size for f in files),
        models_bytes=sum(f.stat().st_size for f in model_dir.glob("*.gguf")),
        seconds=round(time.perf_counter() - start, 1),
    )


def _build_wheels(source: Path, wheels: Path) -> None:
    """``pip wheel`` edgetts and its runtime dependencies (not the dev or train extras), with
    llama-cpp-python compiled for any CPU of this architecture first (pip's cached wheel of it
    is this machine's native build)."""
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels)]
    llama = f"llama-cpp-python=={metadata.version('llama-cpp-python')}"
    env = {**os.environ, "CMAKE_ARGS": PORTABLE_CMAKE_ARGS}  # not a CUDA or native build of the user's
    _pip([*pip, "--no-cache-dir", "--no-deps", "--no-binary", "llama-cpp-python", llama], env)
    built = sorted(wheels.glob("llama_cpp_python-*.whl"))
    had_build = source.is_dir() and (source / "build").exists()
    _pip([*pip, "--prefer-binary", "--find-links", str(wheels), str(source)], dict(os.environ))
    if sorted(wheels.glob("llama_cpp_python-*.whl")) != built or len(built) != 1:
        raise ModelError("pip replaced the portable llama-cpp-python wheel: the bundle would not be portable")
    if source.is_dir() and not had_build:
        shutil.rmtree(source / "build", ignore_errors=True)  # setuptools' leftovers in a checkout


def _pip(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ModelError(f"pip could not build the wheels: {proc.stderr.strip()[-800:]}")


def _glibc_needed(wheels: list[Path]) -> list[int]:
    """The newest glibc symbol version any library in ``wheels`` links against ([] if none)."""
    import re
    import zipfile

    newest: tuple[int, ...] = ()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                if ".so" in info.filename:
                    for found in re.finditer(rb"GLIBC_(\d+)\.(\d+)", archive.read(info)):
                        newest = max(newest, (int(found[1]), int(found[2])))
    return list(newest)


def _manifest(spec: ModelSpec) -> dict:
    data = asdict(spec)
    data["parts"] = [asdict(p) for p in spec.parts]
    return data


def import_models(path: Path, name: str | None = None) -> list[str]:
    """Register models here: a bundle's ``models`` folder, or one GGUF file under ``name``.

    Each GGUF is copied into the user folder (``$EDGETTS_HOME/models``) after its sha256 matches
    its manifest (a bundle) or is recorded (a file), so the registry, the scheduler and the server
    treat it like a shipped model. A new entry's manifest goes to ``$EDGETTS_HOME/policies``; a
    registry model imported with its own weights keeps its entry. An import never replaces another
    entry's weights or file, and every name is a plain file name (nothing lands outside the home).
    """
    if path.is_dir():
        if name is not None:
            raise ModelError("--name is for one .gguf file; a bundle's models keep their names")
        if (path / "bundle.json").is_file():
            raise ModelError(
                f"{path} is a bundle's root (it holds bundle.json, not model manifests): point the "
                f"import at its models folder, `edgetts models import {path / 'models'}`"
            )
        manifests = sorted(path.glob("*.json"))
        if not manifests:
            raise ModelError(f"{path} has no model manifests (*.json): not a bundle's models folder")
        return _import_bundled(manifests)
    if path.suffix != ".gguf":
        raise ModelError(f"{path} is neither a bundle's models folder nor a .gguf file")
    if not name:
        raise ModelError("give the imported model a name: --name NAME")
    return [_import_file(path, name)]


def _import_bundled(manifests: list[Path]) -> list[str]:
    """Check every manifest against the registry (and the others) first, then install each: a
    bundle with one bad manifest changes nothing."""
    known = registry.load_registry()
    fix = (
        "the bundle was made with another registry: bring one made with this edgetts, or remove "
        f"that entry from {paths.home() / 'policies'}"
    )
    plan = []
    for manifest in manifests:
        spec = registry.read_manifest(manifest)
        entry = _entry_for(spec, known, f"model manifest {manifest}", fix)
        known[entry.name] = entry
        plan.append((manifest.parent / spec.file, entry))
    for source, entry in plan:
        _install(source, entry)
    return [entry.name for _, entry in plan]


def _import_file(gguf: Path, name: str) -> str:
    from edgetts.metadata import read_metadata

    registry.check_name(name)
    registry.check_gguf_file(gguf)
    meta = read_metadata(gguf)
    spec = ModelSpec(
        name=name,
        file=f"{name}.gguf",
        kind="instruct" if meta.chat_template else "base",
        size_bytes=gguf.stat().st_size,
        sha256=registry.sha256_file(gguf),
        default=False,
        description=f"imported from {gguf.name} ({meta.architecture}, {meta.n_params / 1e6:.0f}M params)",
    )
    _install(gguf, _entry_for(spec, registry.load_registry(), f"--name {name}", "choose another name"))
    return name


def _entry_for(spec: ModelSpec, known: dict[str, ModelSpec], where: str, fix: str) -> ModelSpec:
    """The registry entry an import of ``spec`` installs: the entry of that name where its weights
    are the same (its file, default flag and parts stay: no override), else ``spec`` as a new,
    non-default entry. Refused where it would replace other weights or another entry's file."""
    entry = known.get(spec.name)
    if entry is not None:
        if entry.sha256 != spec.sha256:
            raise ModelError(f"{where}: {spec.name!r} is already a registry model with other weights; {fix}")
        return entry
    owner = next((s for s in known.values() if s.file == spec.file), None)
    if owner is not None:
        raise ModelError(f"{where}: {spec.file} is the file of registry model {owner.name!r}; {fix}")
    return replace(spec, default=False)  # an import never changes which model is the default


def _install(source: Path, spec: ModelSpec) -> None:
    """Copy ``source`` into the cache as ``spec`` says, refusing any file but the one it names,
    under the lock a pull of it takes; then register ``spec`` if the registry lacks it."""
    if not source.is_file():
        raise ModelError(f"{source} is missing: the manifest names it")
    size = source.stat().st_size
    if size != spec.size_bytes:
        raise ModelError(f"{source} has {size:,} of {spec.size_bytes:,} bytes (truncated or wrong file)")
    with registry.model_lock(spec):
        if not registry.is_ready(spec):  # else another import put these weights there meanwhile
            registry.sweep_leftovers(spec)
            registry.place(spec, lambda tmp: shutil.copyfile(source, tmp), str(source))
    if registry.load_registry().get(spec.name) != spec:
        manifest = paths.home() / "policies" / f"{registry.check_name(spec.name)}.json"
        paths.write_atomically(manifest, json.dumps(_manifest(spec), indent=2) + "\n")
