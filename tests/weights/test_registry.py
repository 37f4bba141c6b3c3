"""The official weights table, the cache and download/verify logic (no network: all mocked)."""

from __future__ import annotations

import hashlib
import io
import urllib.error
from pathlib import Path

import pytest

from efficientdet.weights import registry
from efficientdet.weights.coco import COCO_CATEGORY_NAMES, coco90_class_names
from efficientdet.weights.io import WeightsError
from efficientdet.weights.registry import (
    OFFICIAL_WEIGHTS,
    OfficialWeights,
    resolve_weights,
    verify_sha256,
    weights_cache_dir,
)

PAYLOAD = b"pretend these are EfficientDet weights\n" * 100
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
NAME = "efficientdet_d0.coco"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("EFFICIENTDET_CACHE", str(directory))
    return directory


@pytest.fixture
def fake_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the network with a function writing PAYLOAD; records the URLs asked for."""
    calls: list[str] = []

    def download(url: str, dest: str | Path, progress: bool = False) -> None:
        calls.append(url)
        Path(dest).write_bytes(PAYLOAD)

    monkeypatch.setattr(registry, "download_file", download)
    return calls


def _with_hash(monkeypatch: pytest.MonkeyPatch, sha256: str) -> OfficialWeights:
    entry = OfficialWeights(**{**OFFICIAL_WEIGHTS[NAME].__dict__, "sha256": sha256})
    monkeypatch.setitem(OFFICIAL_WEIGHTS, NAME, entry)
    return entry


def test_table_names_and_hash_prefixes() -> None:
    variants = [f"d{i}" for i in range(8)] + ["d7x"] + [f"lite{i}" for i in range(5)] + ["lite3x"]
    assert set(OFFICIAL_WEIGHTS) == {f"efficientdet_{v}.coco" for v in variants}
    for name, entry in OFFICIAL_WEIGHTS.items():
        assert entry.name == name and entry.model_name == name.removesuffix(".coco")
        assert entry.num_classes == 90 and entry.dataset == "coco"
        assert entry.url.startswith("https://github.com/rwightman/efficientdet-pytorch/releases/")
        file_name = entry.url.rsplit("/", 1)[1]
        assert file_name.startswith("tf_" + entry.model_name) and file_name.endswith(".pth")
        assert file_name.rsplit("-", 1)[1].split(".")[0] == entry.sha256
        assert registry.hash_prefix_from_filename(file_name) == entry.sha256


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EFFICIENTDET_CACHE", str(tmp_path / "a"))
    assert weights_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("EFFICIENTDET_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_cache_dir() == tmp_path / "xdg" / "efficientdet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert weights_cache_dir() == Path.home() / ".cache" / "efficientdet"


def test_verify_sha256_prefix_and_full(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    assert verify_sha256(path, PAYLOAD_SHA[:8]) == PAYLOAD_SHA
    assert verify_sha256(path, PAYLOAD_SHA.upper()) == PAYLOAD_SHA
    wrong = ("0" if PAYLOAD_SHA[0] != "0" else "1") + PAYLOAD_SHA[1:]
    with pytest.raises(WeightsError, match="mismatch") as info:
        verify_sha256(path, wrong)
    assert wrong in str(info.value) and PAYLOAD_SHA in str(info.value) and str(path) in str(info.value)
    with pytest.raises(ValueError, match=r"^expected SHA256 must be 1-64 hex digits, got 'not-hex'$"):
        verify_sha256(path, "not-hex")


def test_existing_path_is_returned_as_is(tmp_path: Path, cache: Path, fake_download: list[str]) -> None:
    path = tmp_path / "mine.pth"
    path.write_bytes(b"x")
    assert resolve_weights(path) == (path, None)
    assert resolve_weights(str(path)) == (path, None)
    # A manually downloaded official file is recognised by its release file name.
    official = tmp_path / OFFICIAL_WEIGHTS[NAME].file_name
    official.write_bytes(b"x")
    assert resolve_weights(official) == (official, OFFICIAL_WEIGHTS[NAME])
    assert fake_download == []


@pytest.mark.parametrize("digest", ["prefix", "full"])
def test_registered_name_downloads_verifies_and_caches(
    cache: Path, fake_download: list[str], monkeypatch: pytest.MonkeyPatch, digest: str
) -> None:
    entry = _with_hash(monkeypatch, PAYLOAD_SHA[:8] if digest == "prefix" else PAYLOAD_SHA)
    path, got = resolve_weights(NAME)
    assert got == entry
    assert path == cache / entry.file_name and path.read_bytes() == PAYLOAD
    assert fake_download == [entry.url]
    assert sorted(p.name for p in cache.iterdir()) == [entry.file_name]  # no temp leftovers
    # Second call: served from the cache, no download.
    assert resolve_weights(NAME) == (path, entry)
    assert fake_download == [entry.url]


def test_corrupt_cache_entry_is_downloaded_again(
    cache: Path, fake_download: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = _with_hash(monkeypatch, PAYLOAD_SHA[:8])
    cache.mkdir()
    (cache / entry.file_name).write_bytes(b"truncated")
    with pytest.warns(RuntimeWarning, match="mismatch"):
        path, _ = resolve_weights(NAME)
    assert path.read_bytes() == PAYLOAD and fake_download == [entry.url]


def test_hash_mismatch_deletes_download(cache: Path, fake_download: list[str]) -> None:
    entry = OFFICIAL_WEIGHTS[NAME]  # real prefix; PAYLOAD does not match it
    with pytest.raises(WeightsError) as info:
        resolve_weights(NAME)
    message = str(info.value)
    assert entry.url in message and entry.sha256 in message and PAYLOAD_SHA in message
    assert list(cache.iterdir()) == []


def test_url_uses_hash_from_file_name(cache: Path, fake_download: list[str]) -> None:
    good = f"https://example.com/weights/my_model-{PAYLOAD_SHA[:10]}.pth"
    path, entry = resolve_weights(good)
    assert entry is None and path == cache / f"my_model-{PAYLOAD_SHA[:10]}.pth"
    bad = "https://example.com/weights/other-deadbeef.pth"
    with pytest.raises(WeightsError, match=rf"SHA256 prefix \(8 hex digits\) mismatch: expected deadbeef, actual {PAYLOAD_SHA[:8]} "):
        resolve_weights(bad)
    assert not (cache / "other-deadbeef.pth").exists()
    # No hash in the name: nothing to verify against.
    assert resolve_weights("https://example.com/plain.pth")[0].read_bytes() == PAYLOAD


def test_offline_download_explains_what_to_do(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(registry.urllib.request, "urlopen", offline)
    entry = OFFICIAL_WEIGHTS[NAME]
    with pytest.raises(WeightsError) as info:
        resolve_weights(NAME)
    message = str(info.value)
    assert entry.url in message and "local path" in message
    assert "failed" in message and str(cache / entry.file_name) in message
    assert list(cache.iterdir()) == []  # no partial file left


@pytest.mark.parametrize("spec", ["efficientdet_d9.coco", "no/such/file.pth"])
def test_unknown_spec_lists_registered_names(cache: Path, spec: str) -> None:
    with pytest.raises(WeightsError) as info:
        resolve_weights(spec)
    message = str(info.value)
    assert spec in message and "neither" in message
    assert all(name in message for name in OFFICIAL_WEIGHTS)


def test_coco_class_names() -> None:
    assert len(COCO_CATEGORY_NAMES) == 80
    names = coco90_class_names()
    assert len(names) == 90
    assert names[0] == "person" and names[89] == "toothbrush" and names[12] == "stop sign"
    assert names[11] == "class_12" and names[82] == "class_83"
    assert sum(n.startswith("class_") for n in names) == 10


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, declared: int) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(declared)}


def test_download_streams_and_detects_truncation(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    declared = {"n": len(PAYLOAD)}
    monkeypatch.setattr(
        registry.urllib.request, "urlopen", lambda *a, **k: _FakeResponse(PAYLOAD, declared["n"])
    )
    url = f"https://example.com/m-{PAYLOAD_SHA[:8]}.pth"
    path, _ = resolve_weights(url, progress=True)
    assert path.read_bytes() == PAYLOAD
    path.unlink()
    declared["n"] = len(PAYLOAD) + 100  # the connection dropped before the end
    with pytest.raises(WeightsError, match="incomplete download"):
        resolve_weights(url)
    assert list(cache.iterdir()) == []
