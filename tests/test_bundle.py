"""Air-gapped bundles: what an import accepts and refuses, offline errors, and (slow) the whole
path from a bundle to an answer in a fresh venv with no index and no network."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_import_registers_a_bundled_model(tmp_path, home):
    spec = fake_bundle(tmp_path / "models", b"GGUF" + bytes(500))
    assert bundle.import_models(tmp_path / "models") == ["tiny"]
    assert models.load_registry()["tiny"] == spec and models.is_ready(spec)
    assert (home / "policies" / "tiny.json").is_file()


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
    """Bundle the 270M model; install from it in a fresh venv with --no-index; with
    EDGETTS_OFFLINE=1 and a fresh EDGETTS_HOME, import and answer; then remove the model."""
    out = tmp_path / "bundle"
    made = subprocess.run(
        [sys.executable, "-m", "edgetts.cli", "bundle", "--out", str(out), "--model", "gemma-3-270m"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert made.returncode == 0, made.stderr
    assert (out / "INSTALL.txt").is_file() and list((out / "wheels").glob("edgetts-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(out / "wheels"),
            "edgetts",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert install.returncode == 0, install.stderr
    env = {
        **os.environ,
        "EDGETTS_OFFLINE": "1",
        "EDGETTS_HOME": str(tmp_path / "home"),
        "EDGETTS_THREADS": "1",
        "PIP_INDEX_URL": "http://127.0.0.1:9/",
    }  # any index use fails

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
