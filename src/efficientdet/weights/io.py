"""Reading and writing weight files without executing anything they contain.

Two formats are read:

* ``.safetensors`` (our own format): tensors plus a JSON document under the header metadata
  key ``"efficientdet"`` holding ``format_version`` (1), ``config`` (``ModelConfig.to_dict()``),
  ``class_names`` (list of str or null) and any extra keys the writer added.
* PyTorch pickles (``.pth``, ``.pt``, ``.bin``, ``.ckpt``, anything else): loaded with
  ``torch.load(..., weights_only=True)``, which refuses arbitrary Python objects, so a
  malicious checkpoint is rejected instead of run.

Only ``.safetensors`` is written, atomically (:func:`efficientdet.fs.atomic_path`).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from ..fs import atomic_path

__all__ = ["FORMAT_VERSION", "METADATA_KEY", "WeightsError", "read_weights", "write_weights"]

METADATA_KEY = "efficientdet"
FORMAT_VERSION = 1

# Checkpoint containers seen in the wild (timm/effdet train scripts, Lightning, detectron-style).
# Plain model weights win over EMA weights: a checkpoint that has both is usually a training
# checkpoint whose "state_dict" is what the user trained/validated; EMA is taken only when it is
# the sole set of weights in the file. Convert EMA weights explicitly if you want them.
_PLAIN_KEYS = ("state_dict", "model", "model_state_dict", "net", "network")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
_MAX_NESTING = 3  # e.g. {"model": {"state_dict": {...}}}; deeper means "not a checkpoint"

# torch's weights_only message names the refused global as "GLOBAL posix.system".
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


class WeightsError(RuntimeError):
    """A weight file is missing, unreadable, unsafe or not what was expected."""


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Load ``(state_dict, metadata)`` from a weight file on CPU.

    ``metadata`` is the parsed ``"efficientdet"`` document of our ``.safetensors`` files, and
    ``None`` for pickled checkpoints and for safetensors files written by other tools.
    Pickled checkpoints are unwrapped (see ``_PLAIN_KEYS``/``_EMA_KEYS``) and a DDP ``module.``
    prefix is stripped when every key carries it.
    """
    file = Path(path)
    if not file.exists():
        raise WeightsError(f"{file}: weight file not found")
    if not file.is_file():
        raise WeightsError(f"{file}: not a regular file")
    if file.stat().st_size == 0:
        raise WeightsError(f"{file}: file is empty (an interrupted download or copy?)")
    if file.suffix.lower() == ".safetensors":
        return _read_safetensors(file)
    return _read_pickle(file), None


def _read_safetensors(file: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    try:
        with safetensors.safe_open(str(file), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
        state_dict = safetensors.torch.load_file(str(file), device="cpu")
    except Exception as exc:  # the Rust loader raises its own SafetensorError and others
        raise WeightsError(f"{file}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    _check_state_dict(state_dict, file)
    raw = header.get(METADATA_KEY)
    if raw is None:
        return state_dict, None
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{file}: metadata key {METADATA_KEY!r} is not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise WeightsError(f"{file}: metadata key {METADATA_KEY!r} is not a JSON object")
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise WeightsError(
            f"{file}: unsupported efficientdet format_version {version!r} "
            f"(this library reads version {FORMAT_VERSION}; a newer file needs a newer library)"
        )
    return state_dict, document


_NOT_WEIGHTS_HINT = (
    "weights are a .safetensors file (from training or save_model), a registered name or an effdet "
    ".pth; an exported .onnx runs with --backend onnxruntime or openvino"
)


def _exported_kind(file: Path, head: bytes) -> str | None:
    """What ``file`` is (a phrase) when it is one of our exports rather than weights: without
    this, an ONNX graph was "refused: contains Python objects or code", a TorchScript module
    a hint to rerun ``torch.load`` unsafely and a ``.pt2`` program "corrupt"."""
    if file.suffix.lower() == ".onnx":
        return "an exported ONNX graph, not model weights"
    if head != b"PK\x03\x04":
        return None
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None  # torch.load names the damage
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "an exported TorchScript module (load it with torch.jit.load), not model weights"
    if any(n.endswith("/archive_format") or "/models/" in n for n in names):
        return "an exported torch.export program (load it with torch.export.load), not model weights"
    return None


def _read_pickle(file: Path) -> dict[str, Tensor]:
    with file.open("rb") as f:
        head = f.read(4)
    kind = _exported_kind(file, head)
    if kind is not None:
        raise WeightsError(f"{file}: {kind}; {_NOT_WEIGHTS_HINT}")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        if head[:1] != b"\x80" and head != b"PK\x03\x04":  # torch.save writes a zip, or a protocol 2+ pickle
            message = f"{file}: not model weights (neither a PyTorch zip archive nor a pickle); {_NOT_WEIGHTS_HINT}"
            raise WeightsError(message) from exc
        _raise_unreadable(file, exc)
    if isinstance(obj, Mapping) and str(obj.get("format", "")).startswith("efficientdet-train"):
        # engine.checkpoint.TRAIN_FORMAT. Unwrapped, its "model" entry loaded silently: the
        # raw (not EMA) weights, at the variant's default size, without the class names.
        raise WeightsError(
            f"{file}: a training checkpoint (for `efficientdet train --resume`), not inference weights; "
            f"use best.safetensors or last.safetensors from the same folder (EMA weights with the model's "
            "config and class names)"
        )
    state_dict = _unwrap(obj, file)
    _check_state_dict(state_dict, file)
    return _strip_prefix(state_dict, "module.")


def _raise_unreadable(file: Path, exc: Exception) -> NoReturn:
    """The error for a checkpoint ``torch.load`` refused or could not read."""
    if isinstance(exc, pickle.UnpicklingError):
        match = _GLOBAL_RE.search(str(exc))
        culprit = f" (it references {match.group(1)!r})" if match else ""
        raise WeightsError(
            f"{file}: refused to load: the file contains Python objects or code that are not plain "
            f"tensors{culprit}, or pickle features the safe loader does not support. Nothing in it "
            "was executed. Only convert checkpoints from sources you trust, and preferably "
            "re-save them as plain state dicts or safetensors."
        ) from exc
    # corrupt zip, truncated pickle, garbage bytes: EOFError, KeyError, RuntimeError, ...
    raise WeightsError(
        f"{file}: not a readable PyTorch checkpoint, the file is corrupt or of another format "
        f"({type(exc).__name__}: {exc})"
    ) from exc


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _unwrap(obj: Any, file: Path) -> dict[str, Any]:
    """Find the state dict inside a checkpoint container."""
    for _ in range(_MAX_NESTING + 1):
        if not isinstance(obj, Mapping):
            raise WeightsError(f"{file}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
        if _is_tensor_dict(obj):
            return dict(obj)
        inner = next((obj[k] for k in _PLAIN_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            inner = next((obj[k] for k in _EMA_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            return dict(obj)  # not a known container: let _check_state_dict explain what is wrong
        obj = inner
    raise WeightsError(f"{file}: checkpoint containers nested too deeply to find a state dict")


def _check_state_dict(state_dict: Mapping[Any, Any], file: Path) -> None:
    if not state_dict:
        raise WeightsError(f"{file}: contains no tensors")
    bad_keys = [k for k in state_dict if not isinstance(k, str)]
    if bad_keys:
        raise WeightsError(f"{file}: state dict keys must be strings, found {bad_keys[:3]!r}")
    bad = [(k, type(v).__name__) for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if bad:
        shown = ", ".join(f"{k!r} ({t})" for k, t in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise WeightsError(
            f"{file}: not a dict of tensors; non-tensor entries: {shown}{more} "
            f"(top-level keys: {sorted(state_dict)[:10]})"
        )


def _strip_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    # Only when *every* key has it: a partial prefix means the keys are genuinely named so.
    if not all(k.startswith(prefix) for k in state_dict):
        return state_dict
    return {k[len(prefix):]: v for k, v in state_dict.items()}


def write_weights(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, Tensor],
    config: dict[str, Any],
    class_names: list[str] | None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Atomically write ``state_dict`` and its metadata document as ``.safetensors``.

    ``extra`` keys are added to the JSON document beside ``config``/``class_names``. Either the
    complete new file ends up at ``path`` or a pre-existing file there is left untouched.
    """
    file = Path(path)
    if file.suffix.lower() != ".safetensors":  # read_weights knows the format by this name alone
        raise WeightsError(
            f"{file}: weights are written as safetensors and read back by the .safetensors name "
            f"(under another name they are refused as 'not model weights'); e.g. {file.with_suffix('.safetensors')}"
        )
    document: dict[str, Any] = {"format_version": FORMAT_VERSION, "config": config, "class_names": class_names}
    for key, value in (extra or {}).items():
        if key in document:
            raise WeightsError(f"{file}: extra metadata key {key!r} is reserved")
        document[key] = value
    if class_names is not None and not all(isinstance(n, str) for n in class_names):
        raise WeightsError(f"{file}: class_names must be a list of str or None")
    try:
        metadata = {METADATA_KEY: json.dumps(document, sort_keys=True)}
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{file}: metadata is not JSON-serialisable ({exc})") from exc
    tensors = _prepare_tensors(state_dict, file)

    try:
        with atomic_path(file) as tmp:
            safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)
    except Exception as exc:
        if not isinstance(exc, WeightsError):
            raise WeightsError(f"{file}: writing weights failed ({type(exc).__name__}: {exc})") from exc
        raise


def _prepare_tensors(state_dict: Mapping[str, Tensor], file: Path) -> dict[str, Tensor]:
    """CPU, contiguous, and no two entries sharing storage (safetensors refuses shared tensors)."""
    _check_state_dict(state_dict, file)
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        tensor = value.detach().to("cpu")
        ptr = tensor.untyped_storage().data_ptr()
        # Tied weights / views of one buffer: give later ones their own copy; a view of a bigger
        # buffer gets a compact copy too. Zero-size tensors may all report pointer 0, so cloning
        # them (free) keeps them out of the shared check.
        whole = tensor.storage_offset() == 0 and tensor.nbytes == tensor.untyped_storage().nbytes()
        if ptr in seen or ptr == 0 or not whole or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        else:
            seen.add(ptr)
        out[key] = tensor
    return out
