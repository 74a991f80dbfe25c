"""Air-gapped bundles: what an import accepts and refuses, offline errors, and (slow) the whole
path from a bundle to an answer in a fresh venv with no index and no network."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import run_at_once

from edgetts import bundle, models
from edgetts.models import ModelError, ModelSpec


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETTS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def fake_bundle(folder: Path, data: bytes) -> ModelSpec:
    spec = ModelSpec(
        name="tiny",
        file="tiny.gguf",
        kind="base",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    folder.mkdir(parents=True)
    (folder / "tiny.gguf").write_bytes(data)
    (folder / "tiny.json").write_text(json.dumps(bundle._manifest(spec)))
    return spec


def tiny_gguf(path: Path) -> Path:
    """A real (weightless) GGUF file: what `models import FILE --name NAME` reads."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.name", path.stem)
    writer.add_token_list([f"t{i}" for i in range(11)])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def written_outside(root: Path, home: Path, *inputs: Path) -> list[Path]:
    """Files under ``root`` an import wrote outside ``home`` (``inputs`` were there before)."""
    return [p for p in root.rglob("*") if p.is_file() and home not in p.parents and p not in inputs]


def test_import_registers_a_bundled_model(tmp_path, home):
    spec = fake_bundle(tmp_path / "models", b"GGUF" + bytes(500))
    assert bundle.import_models(tmp_path / "models") == ["tiny"]
    assert models.load_registry()["tiny"] == spec and models.is_ready(spec)
    assert (home / "policies" / "tiny.json").is_file()


def test_offline_a_model_whose_stamp_was_lost_is_hashed_not_refused(tmp_path, home, monkeypatch):
    """Seen in review: a model cache copied without its file times lost its stamp, and offline
    the model was refused as missing instead of being checked again."""
    import time

    spec = fake_bundle(tmp_path / "models", b"GGUF" + bytes(500))
    bundle.import_models(tmp_path / "models")
    target = models.model_path(spec)
    os.utime(target, (time.time() - 100, time.time() - 100))  # as a copy without -p leaves it
    assert not models.is_ready(spec)
    monkeypatch.setenv("EDGETTS_OFFLINE", "1")
    monkeypatch.setattr(models, "check_gguf_file", lambda path: None)  # the fake is no real GGUF
    assert models.resolve("tiny") == target and models.is_ready(spec)
    target.write_bytes(b"GGUF" + bytes(499) + b"X")  # and a damaged one is still refused
    with pytest.raises(ModelError, match="corrupt"):
        models.resolve("tiny")


def test_a_manifest_naming_a_file_outside_its_folder_is_refused(tmp_path, home):
    spec = fake_bundle(tmp_path / "models", b"GGUF" + bytes(500))
    manifest = json.loads((tmp_path / "models" / "tiny.json").read_text())
    (tmp_path / "models" / "tiny.json").write_text(json.dumps({**manifest, "file": "../../etc/x.gguf"}))
    with pytest.raises(ModelError, match="tiny.json is malformed: field 'file': .* is not a file name"):
        bundle.import_models(tmp_path / "models")
    assert not models.is_ready(spec)


def test_truncated_or_altered_files_are_refused(tmp_path, home):
    data = b"GGUF" + bytes(500)
    fake_bundle(tmp_path / "models", data)
    (tmp_path / "models" / "tiny.gguf").write_bytes(data[:-7])
    with pytest.raises(ModelError, match="497 of 504 bytes"):
        bundle.import_models(tmp_path / "models")
    (tmp_path / "models" / "tiny.gguf").write_bytes(data[:-1] + b"X")
    with pytest.raises(ModelError, match="does not match its sha256"):
        bundle.import_models(tmp_path / "models")
    assert not (home / "models" / "tiny.gguf").exists()


def test_offline_pull_names_what_is_missing_and_how_to_bring_it(home, monkeypatch):
    monkeypatch.setenv("EDGETTS_OFFLINE", "1")
    spec = models.load_registry()["gemma-3-270m"]
    with pytest.raises(ModelError, match="edgetts bundle --model gemma-3-270m") as err:
        models.pull(spec)
    assert str(models.model_path(spec)) in str(err.value)


def test_import_needs_a_name_for_a_file_and_a_bundle_folder_otherwise(tmp_path, home):
    with pytest.raises(ModelError, match="no model manifests"):
        bundle.import_models(tmp_path)
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="--name"):
        bundle.import_models(tmp_path / "x.gguf")


@pytest.mark.slow
def test_a_bundle_installs_and_answers_with_no_network(tmp_path):
    """Bundle the 270M model; install it with its install.sh (checks, a fresh venv, --no-index,
    EDGETTS_OFFLINE=1, a fresh EDGETTS_HOME: import and answer); llama.cpp in it uses no
    instruction set past AVX2 (a workstation without AVX-512 or AMX runs it); then remove the
    model."""
    out = tmp_path / "bundle"
    made = subprocess.run(
        [sys.executable, "-m", "edgetts.cli", "bundle", "--out", str(out), "--model", "gemma-3-270m"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert made.returncode == 0, made.stderr
    assert (out / "INSTALL.txt").is_file() and list((out / "wheels").glob("edgetts-*.whl"))
    need = json.loads((out / "bundle.json").read_text())
    assert need["models"] == ["gemma-3-270m"] and "models/gemma-3-270m-q4_k_m.gguf" in need["files"]
    venv = tmp_path / "venv"
    env = {
        **os.environ,
        "EDGETTS_HOME": str(tmp_path / "home"),
        "EDGETTS_THREADS": "1",
        "PIP_INDEX_URL": "http://127.0.0.1:9/",
    }  # any index use fails
    install = subprocess.run(
        ["sh", str(out / "install.sh"), str(venv)], capture_output=True, text=True, env=env, timeout=1200
    )
    assert install.returncode == 0, install.stderr
    assert "bundle and machine ok" in install.stdout and "installed:" in install.stdout
    features = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info())"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "AVX2 = 1" in features and "AVX512 = 1" not in features and "AMX_INT8 = 1" not in features, (
        features
    )
    env["EDGETTS_OFFLINE"] = "1"

    def edgetts(*args):
        return subprocess.run(
            [str(venv / "bin" / "edgetts"), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=600,
        )

    imported = edgetts("models", "import", str(out / "models"))
    assert imported.returncode == 0, imported.stderr
    answer = edgetts(
        "solve", "What is 2+3?", "-m", "gemma-3-270m", "--strategy", "greedy", "--max-tokens", "48"
    )
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr
    (tmp_path / "home" / "models" / "gemma-3-270m-q4_k_m.gguf").unlink()
    missing = edgetts("solve", "What is 2+3?", "-m", "gemma-3-270m", "--strategy", "greedy")
    assert missing.returncode == 1 and "EDGETTS_OFFLINE is set" in missing.stderr
    assert "gemma-3-270m-q4_k_m.gguf" in missing.stderr and "edgetts bundle" in missing.stderr


def _bundle_to_check(tmp_path, **need):
    """A bundle folder with one file, bundle.json saying what it needs, and check.py."""
    import platform

    (tmp_path / "wheels").mkdir(exist_ok=True)
    (tmp_path / "wheels" / "x.whl").write_bytes(b"wheel")
    need = {
        "python": ".".join(map(str, sys.version_info[:2])),
        "machine": platform.machine(),
        "glibc": [2, 0],
        "cpu_flags": [],
        "files": {"wheels/x.whl": hashlib.sha256(b"wheel").hexdigest()},
        **need,
    }
    (tmp_path / "bundle.json").write_text(json.dumps(need))
    (tmp_path / "check.py").write_text(bundle.CHECK_PY)
    return subprocess.run([sys.executable, str(tmp_path / "check.py")], capture_output=True, text=True)


def test_the_bundle_check_passes_a_machine_and_files_that_fit(tmp_path):
    done = _bundle_to_check(tmp_path)
    assert done.returncode == 0 and "bundle and machine ok" in done.stdout, done.stderr


@pytest.mark.parametrize(
    "need, words",
    [
        ({"python": "2.7"}, "the wheels are for Python 2.7"),
        ({"machine": "riscv128"}, "the wheels are for riscv128"),
        ({"glibc": [9, 99]}, "need glibc 9.99 or newer"),
        ({"cpu_flags": ["avx9000"]}, "this CPU lacks avx9000"),
        ({"files": {"wheels/x.whl": "0" * 64}}, "wheels/x.whl does not match its sha256"),
        ({"files": {"wheels/gone.whl": "0" * 64}}, "wheels/gone.whl is missing"),
    ],
)
def test_the_bundle_check_names_what_does_not_fit(tmp_path, need, words):
    """Seen in review: a bundle built on an AVX-512 machine, or for another Python or glibc, failed
    on the workstation with SIGILL or pip's "no matching distribution", nothing naming why."""
    if "cpu_flags" in need and not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo")
    done = _bundle_to_check(tmp_path, **need)
    assert done.returncode == 1 and "cannot install here" in done.stderr and words in done.stderr, done.stderr


@pytest.mark.parametrize("name", ["../../escaped", "ABS", ".", "..", "a/b", "a\\b", "x\n"])
def test_an_imported_model_name_that_is_not_a_file_name_is_refused(tmp_path, home, name):
    """Seen in review: `models import a.gguf --name ../../escaped` (or an absolute name) wrote the
    model and its manifest outside $EDGETTS_HOME."""
    name = str(tmp_path / "abs" / "escaped") if name == "ABS" else name
    gguf = tiny_gguf(tmp_path / "a.gguf")
    with pytest.raises(ModelError, match="not a file name"):
        bundle.import_models(gguf, name)
    assert written_outside(tmp_path, home, gguf) == [] and not (home / "policies").exists()


def test_a_bundle_manifest_whose_name_is_a_path_is_refused(tmp_path, home):
    fake_bundle(tmp_path / "models", b"GGUF" + bytes(500))
    manifest = tmp_path / "models" / "tiny.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "name": "../../escaped"}))
    with pytest.raises(ModelError, match="tiny.json.*not a file name"):
        bundle.import_models(tmp_path / "models")
    inputs = [*(tmp_path / "models").iterdir()]
    assert written_outside(tmp_path, home, *inputs) == [] and not (home / "models").exists()


def test_an_import_never_overwrites_another_registry_models_file(tmp_path, home):
    """Seen in review: `models import b.gguf --name gemma-3-270m-q4_k_m` (another entry's file
    name, other weights) replaced that entry's verified 253 MB file."""
    gemma = models.load_registry()["gemma-3-270m"]
    target = models.model_path(gemma)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"gemma's weights")
    gguf = tiny_gguf(tmp_path / "b.gguf")
    with pytest.raises(ModelError, match="registry model 'gemma-3-270m'"):
        bundle.import_models(gguf, "gemma-3-270m-q4_k_m")
    with pytest.raises(ModelError, match="other weights"):
        bundle.import_models(gguf, "gemma-3-270m")
    assert target.read_bytes() == b"gemma's weights" and not (home / "policies").exists()


@pytest.mark.parametrize(
    "change, words",
    [({"name": "gemma-3-270m"}, "other weights"), ({"file": "gemma-3-270m-q4_k_m.gguf"}, "'gemma-3-270m'")],
)
def test_a_bundle_manifest_never_replaces_another_registry_model(tmp_path, home, change, words):
    """Seen in review: a bundle manifest named like a registry model with other weights wrote an
    override of that model before failing."""
    data = b"GGUF" + bytes(500)
    fake_bundle(tmp_path / "models", data)
    manifest = tmp_path / "models" / "tiny.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **change}))
    (tmp_path / "models" / "gemma-3-270m-q4_k_m.gguf").write_bytes(data)
    with pytest.raises(ModelError, match=words):
        bundle.import_models(tmp_path / "models")
    assert not (home / "policies").exists() and not (home / "models").exists()
    assert models.load_registry()["gemma-3-270m"].file == "gemma-3-270m-q4_k_m.gguf"


def test_importing_a_registry_model_under_its_own_name_keeps_its_entry(tmp_path, home):
    """Seen in review: importing the default model's file under its own name (same sha256) wrote
    an override with default false and no parts, and then every command failed with "the
    registry must mark exactly one default model"."""
    gguf = tiny_gguf(tmp_path / "a.gguf")
    data = gguf.read_bytes()
    default = models.load_registry()[models.default_model_name()]
    # The registry's default entry, for this small file (a user manifest replaces the shipped one)
    entry = replace(default, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest = home / "policies" / f"{default.name}.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps(bundle._manifest(entry)))
    before = manifest.read_text()
    assert bundle.import_models(gguf, default.name) == [default.name]
    assert models.default_model_name() == default.name and models.load_registry()[default.name] == entry
    assert models.is_ready(entry) and models.model_path(entry).read_bytes() == data
    assert manifest.read_text() == before and sorted((home / "policies").iterdir()) == [manifest]


def test_concurrent_imports_take_turns(tmp_path, home, monkeypatch):
    """Seen in review: two imports at once shared one .partial file; the second crashed (ENOENT)."""
    import shutil

    spec = fake_bundle(tmp_path / "models", b"GGUF" + bytes(500))
    copy = shutil.copyfile

    def slow_copy(*args, **kwargs):  # a 500 MB copy takes seconds: the other import comes meanwhile
        done = copy(*args, **kwargs)
        time.sleep(0.3)
        return done

    monkeypatch.setattr(shutil, "copyfile", slow_copy)
    assert run_at_once(bundle.import_models, tmp_path / "models") == [] and models.is_ready(spec)
    assert not [p for p in (home / "models").iterdir() if "partial" in p.name or p.name.startswith(".")]


def test_importing_a_bundles_root_points_at_its_models_folder(tmp_path, home):
    """Seen: `models import DIR` on a bundle's root said "unexpected keyword argument 'edgetts'"."""
    fake_bundle(tmp_path / "models", b"GGUF" + bytes(500))
    (tmp_path / "bundle.json").write_text(json.dumps({"edgetts": "0.1", "files": {}}))
    with pytest.raises(ModelError, match=re.escape(f"edgetts models import {tmp_path / 'models'}")):
        bundle.import_models(tmp_path)


@pytest.mark.parametrize(
    "extra", ["wheels/evil-1.0-py3-none-any.whl", "models/extra.json", "wheels/sub/x.whl"]
)
def test_the_bundle_check_refuses_files_bundle_json_does_not_list(tmp_path, extra):
    """Seen in review: a wheel added to wheels/ after the bundle was made passed the check, and pip
    would have installed it."""
    (tmp_path / extra).parent.mkdir(parents=True)
    (tmp_path / extra).write_bytes(b"not from the bundle")
    done = _bundle_to_check(tmp_path)
    assert done.returncode == 1 and f"{extra} is not listed in bundle.json" in done.stderr, done.stderr


@pytest.mark.parametrize("text", [None, '{"python": "3.1', "[]", "{}", '{"files": 3}'])
def test_the_bundle_check_names_a_missing_or_torn_bundle_json(tmp_path, text):
    """Seen in review: check.py on a bundle without bundle.json (an interrupted copy) gave a traceback."""
    if text is not None:
        (tmp_path / "bundle.json").write_text(text)
    (tmp_path / "check.py").write_text(bundle.CHECK_PY)
    done = subprocess.run([sys.executable, str(tmp_path / "check.py")], capture_output=True, text=True)
    assert done.returncode == 1 and "the bundle is incomplete" in done.stderr, done.stderr
    assert "copy it again" in done.stderr and "Traceback" not in done.stderr
