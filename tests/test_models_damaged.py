"""Damaged files in $EDGETTS_HOME (a calibration, a user manifest, the metadata cache) are ignored
with a warning or refused with a message naming the file, never a traceback."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from edgetts import calibration, metadata, models, paths
from edgetts.metadata import ModelError, ModelMetadata

META = ModelMetadata(
    path="/models/tiny.gguf",
    architecture="llama",
    name="tiny",
    n_layers=2,
    n_ctx_train=512,
    n_embd=64,
    n_head=4,
    n_head_kv=4,
    head_dim_k=16,
    head_dim_v=16,
    n_params=1000,
    weights_bytes=1000,
    file_bytes=2000,
    chat_template=None,
    sliding_window=None,
    swa_layers=0,
    n_vocab=11,
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETTS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize(
    "content",
    [
        b"[]",
        b'"x"',
        b"null",
        b"\xff\xfe not text",
        b'{"version": 1, "model_key": "k", "machine_id": "m", "n_threads": 1e999, "prefill_tok_s": 1,'
        b' "decode_tok_s": {"1": 1}}',
    ],
)
def test_a_damaged_calibration_file_is_ignored_with_a_warning(home, monkeypatch, content):
    """Seen in review: a calibration file holding `[]` or `"x"` crashed (AttributeError) instead of
    being ignored with a warning, as the module says."""
    monkeypatch.setattr(calibration, "machine_id", lambda: "m")
    path = calibration.calibration_path(META, 1)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    cal, why = calibration.load(META, 1)
    assert cal is None and "ignoring corrupt or stale calibration" in why and str(path) in why


@pytest.mark.parametrize(
    "content, words",
    [
        ('"abc"', "not a JSON object"),
        ("[1]", "not a JSON object"),
        (b"\xff\xfe", "bad.json"),
        ({"size_bytes": "416"}, "size_bytes"),
        ({"size_bytes": True}, "size_bytes"),
        ({"file": 5}, "file"),
        ({"file": "../x.gguf"}, "file"),
        ({"name": "a/b"}, "name"),
        ({"kind": "chat"}, "kind"),
        ({"sha256": "abc"}, "sha256"),
        ({"default": "yes"}, "default"),
        ({"description": None}, "description"),
        ({"parts": "p"}, "parts"),
        ({"parts": [5]}, "parts"),
        ({"parts": [{"package": "p", "version": 1, "member": "m"}]}, "parts"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_damaged_user_manifest_is_refused_naming_the_file_and_field(home, content, words, caplog):
    """Seen in review: a user manifest holding `"abc"` crashed (AttributeError), and wrong field
    types (`"size_bytes": "416"`, `"file": 5`) were taken and failed far from the manifest."""
    good = {
        "name": "tiny",
        "file": "tiny.gguf",
        "kind": "base",
        "size_bytes": 416,
        "sha256": hashlib.sha256(b"x").hexdigest(),
        "default": False,
        "description": "",
        "parts": [{"package": "p", "version": "1", "member": "m"}],
    }
    bad = home / "policies" / "bad.json"
    bad.parent.mkdir(parents=True)
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content if isinstance(content, str) else json.dumps({**good, **content}))
    with pytest.raises(ModelError, match="bad.json") as err:
        models.read_manifest(bad)
    assert words in str(err.value)
    # the registry skips it with a warning naming it: one damaged file takes no model away
    with caplog.at_level(logging.WARNING, logger="edgetts.models"):
        assert "tiny" not in models.load_registry() and models.default_model_name()
    assert "bad.json" in caplog.text and words in caplog.text
    bad.write_text(json.dumps(good))  # and the same manifest, whole, is read
    assert models.load_registry()["tiny"].size_bytes == 416


def test_a_metadata_cache_that_is_not_text_is_read_again(tmp_path, home):
    """Seen in review: a metadata cache file with non-UTF-8 bytes crashed every command that read
    the model (UnicodeDecodeError) instead of being treated as stale."""
    import gguf

    model = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(model), "llama")
    writer.add_token_list([f"t{i}" for i in range(11)])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    first = metadata.read_metadata(model)
    stat = model.stat()
    cached = metadata._disk_cache(model, stat.st_size, stat.st_mtime)
    assert cached.is_file()
    cached.write_bytes(b"\xff\xfe{")
    assert metadata.read_metadata(model) == first
    assert json.loads(cached.read_text())["n_vocab"] == 11  # written again


def test_edgetts_home_with_a_tilde_is_the_users_folder(tmp_path, monkeypatch):
    """Seen in review: EDGETTS_HOME='~/x' (quoted, so the shell left the tilde) made a folder
    named `~` in the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("EDGETTS_HOME", "~/x")
    assert paths.home() == tmp_path / "x"


def test_a_manifest_named_before_names_were_checked_still_loads(home):
    """Seen in diff review: an import named `my qwen:0.5b` (allowed then) made every command fail
    once names were checked as [A-Za-z0-9._-]; a name is one file name, nothing stricter."""
    spec = {"name": "my qwen:0.5b", "file": "my qwen:0.5b.gguf", "kind": "base", "size_bytes": 416}
    (home / "policies").mkdir(parents=True)
    (home / "policies" / "my qwen:0.5b.json").write_text(json.dumps({**spec, "sha256": "0" * 64}))
    assert models.load_registry()["my qwen:0.5b"].file == "my qwen:0.5b.gguf"
    for bad in ("../x", "a/b", "a\\b", ".", "..", ""):
        with pytest.raises(ModelError, match="not a file name"):
            models.check_name(bad)


def _gguf(path, arch: str = "llama", fields=()):
    """A weightless GGUF with a vocabulary and ``fields`` (key, kind, value) added."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_token_list([f"t{i}" for i in range(11)])
    for key, kind, value in fields:
        getattr(writer, f"add_{kind}")(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    "arch, pattern, expected",
    [
        ("gemma3", None, 10),  # five sliding layers to one global: 12 - 2
        ("gemma2", None, 6),  # alternating (it was counted as Gemma 3's 10)
        ("gemma3", 0, 12),  # every layer (it fell back to 6)
        ("gemma3", [True, True, False] * 4, 8),  # a per-layer array (it raised TypeError)
        ("phi3", None, 0),  # llama.cpp gives it no sliding layers
    ],
)
def test_sliding_window_layers_follow_llama_cpps_layout(tmp_path, home, arch, pattern, expected):
    fields = [(f"{arch}.block_count", "uint32", 12), (f"{arch}.attention.sliding_window", "uint32", 512)]
    if isinstance(pattern, list):
        fields.append((f"{arch}.attention.sliding_window_pattern", "array", pattern))
    elif pattern is not None:
        fields.append((f"{arch}.attention.sliding_window_pattern", "uint32", pattern))
    meta = metadata.read_metadata(_gguf(tmp_path / "m.gguf", arch, fields))
    assert meta.swa_layers == expected


def test_a_metadata_field_that_is_not_text_is_a_model_error(tmp_path, home):
    """Review: a GGUF whose string field held bytes that are not UTF-8 raised UnicodeDecodeError."""
    path = _gguf(tmp_path / "m.gguf", fields=[("general.name", "string", "ab")])
    data = path.read_bytes()
    path.write_bytes(
        data.replace(b"\x02\x00\x00\x00\x00\x00\x00\x00ab", b"\x02\x00\x00\x00\x00\x00\x00\x00\xff\xfe")
    )
    with pytest.raises(ModelError, match="damaged"):
        metadata.read_metadata(path)


def test_a_metadata_cache_of_an_older_reader_is_not_served(tmp_path, home, monkeypatch):
    """Review: the cache key was path, size and mtime only: a fix to the reader never reached
    files cached before it."""
    path = _gguf(tmp_path / "m.gguf")
    metadata.read_metadata(path)
    stat = path.stat()
    before = metadata._disk_cache(path, stat.st_size, stat.st_mtime)
    monkeypatch.setattr(metadata, "METADATA_VERSION", metadata.METADATA_VERSION + 1)
    assert metadata._disk_cache(path, stat.st_size, stat.st_mtime) != before
