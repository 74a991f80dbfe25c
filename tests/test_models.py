import hashlib
import json

import pytest

from edgetts import models
from edgetts.models import ModelError, ModelSpec


def test_registry_manifests_are_complete():
    registry = models.load_registry()
    assert models.default_model_name(registry) == "qwen2.5-coder-0.5b-instruct"
    for spec in registry.values():
        assert spec.kind in ("instruct", "base")
        assert len(spec.sha256) == 64 and spec.size_bytes > 0
        assert spec.parts and all(p.package and p.version and p.member for p in spec.parts)


def test_malformed_manifest(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "bad.json").write_text(json.dumps({"name": "x", "unexpected": 1}))
    with pytest.raises(ModelError, match="bad.json"):
        models.load_registry(tmp_path)


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETTS_HOME", str(tmp_path))
    return tmp_path / "models"


def _spec_for(data: bytes) -> ModelSpec:
    return ModelSpec(
        name="tiny",
        file="tiny.gguf",
        kind="base",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def test_verify_detects_truncation_and_corruption(fake_cache):
    data = b"GGUF" + bytes(range(256)) * 4
    spec = _spec_for(data)
    fake_cache.mkdir(parents=True)
    path = fake_cache / "tiny.gguf"
    path.write_bytes(data[:-10])
    with pytest.raises(ModelError, match="truncated"):
        models.verify(spec)
    path.write_bytes(data[:-1] + b"X")
    with pytest.raises(ModelError, match="corrupt"):
        models.verify(spec)
    path.write_bytes(data)
    models.verify(spec)
    assert models.is_ready(spec)
    path.write_bytes(data[:-1] + b"Y")  # changed after verification: the stamp no longer matches
    assert not models.is_ready(spec)


def test_unknown_name_and_bad_files(tmp_path):
    with pytest.raises(ModelError, match="unknown model"):
        models.resolve("no-such-model")
    with pytest.raises(ModelError, match="does not exist"):
        models.resolve(str(tmp_path / "missing.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(ModelError, match="not a GGUF file"):
        models.resolve(str(bad))
    short = tmp_path / "short.gguf"
    short.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(ModelError, match="not a readable GGUF"):
        models.resolve(str(short))


def test_concurrent_pulls_take_turns(fake_cache, monkeypatch):
    """Seen: two `edgetts models pull` at once wrote into one .partial file."""
    import threading
    import time

    from edgetts.models import Part

    data = b"GGUF" + bytes(1000)
    spec = ModelSpec(
        name="tiny",
        file="tiny.gguf",
        kind="base",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        parts=(Part("p", "1", "m"),),
    )
    writers: list[int] = []

    def assemble(spec, target, progress):
        writers.append(1)
        assert len(writers) == 1, "a second pull wrote while the first was writing"
        time.sleep(0.2)
        target.write_bytes(data)

    monkeypatch.setattr(models, "_assemble", assemble)
    hash_and_stamp = models.verify

    def slow_verify(spec):  # hashing a real model takes seconds: the stamp comes late
        time.sleep(0.3)
        hash_and_stamp(spec)

    monkeypatch.setattr(models, "verify", slow_verify)
    threads = [threading.Thread(target=models.pull, args=(spec,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writers == [1] and models.is_ready(spec)
