"""The official (TF-ported, COCO) EfficientDet weights and how to get them onto disk.

The files are the effdet (``rwightman/efficientdet-pytorch``) v0.1 release ``.pth`` state dicts.

About the hashes, honestly: this table was written on a machine without internet, so the full
SHA256 of each file is not known here. The release file names follow the torch.hub convention
``<name>-<hash prefix>.<ext>`` where the prefix is the first hex digits of the file's SHA256
(``tf_efficientdet_d0_34-f153e0cf.pth`` -> ``f153e0cf``). We store that prefix and verify by
prefix (32 bits: catches truncated/corrupt/wrong downloads, not a determined attacker). The data
model takes a full 64-hex digest too, which is verified in full; fill them in when known. Either
way the files are loaded with ``torch.load(weights_only=True)``, never executed.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from efficientdet.fs import atomic_open, atomic_path
from efficientdet.weights.io import WeightsError

__all__ = [
    "OFFICIAL_WEIGHTS",
    "OfficialWeights",
    "download_file",
    "hash_prefix_from_filename",
    "resolve_weights",
    "sha256_file",
    "verify_sha256",
    "weights_cache_dir",
]

_RELEASE = "https://github.com/rwightman/efficientdet-pytorch/releases/download/v0.1/"
# torch.hub's convention: "-<hex>." right before the extension. At least 8 hex digits, so that
# ordinary names such as "model-a.pth" are not mistaken for hashed ones.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")
_HEX = re.compile(r"[0-9a-f]{1,64}")
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class OfficialWeights:
    """One downloadable weight file. ``sha256`` is a hex prefix or the full 64-hex digest."""

    name: str
    model_name: str
    url: str
    sha256: str
    num_classes: int = 90
    dataset: str = "coco"

    @property
    def file_name(self) -> str:
        return _url_file_name(self.url)


def _coco(variant: str, file_name: str) -> OfficialWeights:
    prefix = hash_prefix_from_filename(file_name)
    assert prefix is not None, file_name  # every release file carries its hash prefix
    return OfficialWeights(
        name=f"efficientdet_{variant}.coco",
        model_name=f"efficientdet_{variant}",
        url=_RELEASE + file_name,
        sha256=prefix,
    )


def hash_prefix_from_filename(file_name: str) -> str | None:
    """The torch.hub-style SHA256 prefix in ``name-<hex>.ext``, or ``None``."""
    matches = _HASH_IN_NAME.findall(file_name)
    return matches[-1] if matches else None


_ENTRIES = [
    _coco("d0", "tf_efficientdet_d0_34-f153e0cf.pth"),
    _coco("d1", "tf_efficientdet_d1_40-a30f94af.pth"),
    _coco("d2", "tf_efficientdet_d2_43-8107aa99.pth"),
    _coco("d3", "tf_efficientdet_d3_47-0b525f35.pth"),
    _coco("d4", "tf_efficientdet_d4_49-f56376d9.pth"),
    _coco("d5", "tf_efficientdet_d5_51-c79f9be6.pth"),
    _coco("d6", "tf_efficientdet_d6_52-4eda3773.pth"),
    _coco("d7", "tf_efficientdet_d7_53-6d1d7a95.pth"),
    _coco("d7x", "tf_efficientdet_d7x-f390b87c.pth"),
    _coco("lite0", "tf_efficientdet_lite0-dfacfc78.pth"),
    _coco("lite1", "tf_efficientdet_lite1-6dc7ab30.pth"),
    _coco("lite2", "tf_efficientdet_lite2-86c5d55b.pth"),
    _coco("lite3", "tf_efficientdet_lite3-506852cb.pth"),
    _coco("lite3x", "tf_efficientdet_lite3x-8404c57b.pth"),
    _coco("lite4", "tf_efficientdet_lite4-391ddabc.pth"),
]

OFFICIAL_WEIGHTS: dict[str, OfficialWeights] = {entry.name: entry for entry in _ENTRIES}


def weights_cache_dir() -> Path:
    """``$EFFICIENTDET_CACHE``, else ``$XDG_CACHE_HOME/efficientdet``, else ``~/.cache/efficientdet``."""
    explicit = os.environ.get("EFFICIENTDET_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "efficientdet"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Full hex SHA256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike[str], expected: str) -> str:
    """Check ``path`` against ``expected`` (a hex prefix or full digest); return the full digest.

    Raises ``WeightsError`` naming the file, expected and actual values on mismatch.
    """
    actual = sha256_file(path)
    problem = _hash_problem(expected, actual)
    if problem:
        raise WeightsError(f"{path}: {problem}")
    return actual


def _hash_problem(expected: str, actual: str) -> str | None:
    """Why ``actual`` does not match ``expected`` (prefix or full digest), or ``None``."""
    want = expected.strip().lower()
    if not _HEX.fullmatch(want):
        raise ValueError(f"expected SHA256 must be 1-64 hex digits, got {expected!r}")
    if actual.startswith(want):  # equality when ``want`` is all 64 digits
        return None
    kind = "SHA256" if len(want) == 64 else f"SHA256 prefix ({len(want)} hex digits)"
    return f"{kind} mismatch: expected {want}, actual {actual[: len(want)]} (full {actual})"


def download_file(url: str, dest: str | os.PathLike[str], progress: bool = False) -> None:
    """Stream ``url`` into ``dest``, replaced atomically once complete. Network errors
    propagate as ``OSError``; ``dest`` is then untouched."""
    request = urllib.request.Request(url, headers={"User-Agent": "efficientdet"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response, atomic_open(dest, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            done += len(chunk)
            if progress:
                shown = f"{done / 2**20:.1f}/{total / 2**20:.1f} MiB" if total else f"{done / 2**20:.1f} MiB"
                print(f"\rdownloading {url}: {shown}", end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
        if total is not None and done != total:
            # A dropped connection can end the stream early without an exception.
            raise OSError(f"incomplete download: got {done} of {total} bytes")


def resolve_weights(
    spec: str | os.PathLike[str], progress: bool = False
) -> tuple[Path, OfficialWeights | None]:
    """Turn a local path, a registered name or an http(s) URL into a verified local file.

    * existing file -> returned as is (not hashed: it is the user's own file); the registry
      entry is returned too when its file name is an official release file name;
    * registered name (``efficientdet_d0.coco``) -> the cached file if its hash verifies,
      else downloaded into ``weights_cache_dir()`` and verified;
    * URL -> the same, the expected hash prefix taken from a ``-<hex>.`` file name (no check
      when the name has none).
    """
    if isinstance(spec, os.PathLike) or not _is_url(str(spec)):
        path = Path(spec).expanduser()
        if path.is_file():
            return path, _entry_for_file_name(path.name)
        if path.exists():
            raise WeightsError(f"{path}: not a regular file")
    text = os.fspath(spec)
    if text in OFFICIAL_WEIGHTS:
        entry = OFFICIAL_WEIGHTS[text]
        return _cached_download(entry.url, entry.sha256, progress), entry
    if _is_url(text):
        known = next((e for e in OFFICIAL_WEIGHTS.values() if e.url == text), None)
        expected = known.sha256 if known else hash_prefix_from_filename(_url_file_name(text))
        return _cached_download(text, expected, progress), known
    names = ", ".join(OFFICIAL_WEIGHTS)
    raise WeightsError(
        f"{text!r} is neither an existing file nor a registered weights name nor an http(s) URL. "
        f"Registered names: {names}"
    )


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _url_file_name(url: str) -> str:
    name = urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name)
    # The name becomes a path in the cache dir: refuse anything that could escape it.
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise WeightsError(f"{url}: cannot derive a file name from this URL")
    return name


def _entry_for_file_name(file_name: str) -> OfficialWeights | None:
    return next((e for e in OFFICIAL_WEIGHTS.values() if e.file_name == file_name), None)


def _cached_download(url: str, expected: str | None, progress: bool) -> Path:
    cache = weights_cache_dir()
    target = cache / _url_file_name(url)
    if target.is_file():
        if expected is None:
            return target
        try:
            verify_sha256(target, expected)
            return target
        except WeightsError as exc:
            # A stale or corrupted cache entry: fetch a fresh copy rather than fail.
            warnings.warn(f"{exc}; downloading it again", RuntimeWarning, stacklevel=3)
            target.unlink(missing_ok=True)

    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"{cache}: cannot create the weights cache directory ({exc})") from exc
    # Download beside the target and rename only once verified, so the cache never holds a
    # partial or wrong file under the real name (and concurrent downloads do not collide).
    with atomic_path(target) as tmp:
        try:
            download_file(url, tmp, progress=progress)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise WeightsError(
                f"download of {url} failed ({type(exc).__name__}: {exc}). If this machine is "
                f"offline, download the file elsewhere and pass its local path "
                f"(--weights /path/to/{target.name} on the command line, weights=... in Python), or put it in the "
                f"cache directory as {target}"
            ) from exc
        if expected is not None:
            problem = _hash_problem(expected, sha256_file(tmp))
            if problem:
                raise WeightsError(f"{url}: the downloaded file was deleted, {problem}")
    return target
