"""Training checkpoints: written atomically, read without unpickling code, complete for resume.

A checkpoint holds model, EMA, optimiser, scheduler, scaler, epoch, step and every RNG state,
so that a resumed run continues exactly where it stopped. It is a ``torch.save`` file of plain
tensors and containers only, read back with ``weights_only=True``.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .. import fs
from ..variants import get_config

TRAIN_FORMAT = "efficientdet-train-1"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file."""


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors / plain Python values (loadable with ``weights_only``)."""
    np_state = np.random.get_state(legacy=True)  # the default, spelt out: numpy's stubs type a plain call as a dict
    if isinstance(np_state, dict):  # legacy=True gives a dict only for a bit generator other than MT19937
        raise CheckpointError(f"cannot record numpy's global RNG: it uses {np_state.get('bit_generator')}, not MT19937")
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _RecordingWriter:
    """File wrapper that keeps the ``OSError`` a write raised.

    ``torch.save`` into a file object turns a failed ``write`` (a full disk) into an opaque
    ``RuntimeError`` ("unexpected pos ..."); this wrapper lets us report the real cause.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def describe_write_error(path: Path, err: BaseException, what: str = "the checkpoint") -> str:
    """One line naming the file and the cause, a full disk spelt out as such."""
    return fs.describe_write_error(path, err, what)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (:func:`efficientdet.fs.atomic_open`).

    A crash (or SIGKILL, or a full disk) at any moment leaves either the previous file or
    the new one, never a half-written file; the temp file (``.NAME.*.tmp``, never matching
    ``*.ckpt``) is removed on errors. Raises ``CheckpointError`` naming the file and the cause.
    """
    path = Path(path)
    writer: _RecordingWriter | None = None
    try:
        with fs.atomic_open(path, "wb") as f:
            writer = _RecordingWriter(f)
            torch.save(state, writer)  # type: ignore[arg-type]  # has write/flush
    except BaseException as err:
        cause = writer.error if writer is not None and writer.error is not None else err
        if isinstance(cause, OSError):
            raise CheckpointError(describe_write_error(path, cause)) from err
        raise


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete temp files a killed writer left behind (``.last.ckpt.XXXX.tmp``, the
    ``.safetensors`` ones of ``write_weights`` and safetensors' own ``.tmpXXXXXX``); returns
    what was removed.

    Only one training run may write to an output folder, so at start-up none is in use.
    """
    return fs.remove_stale_temp_files(folder, ("*.ckpt", "*.safetensors", "*.csv", "*.png"), writer_temps=True)


def check_resumable(
    path: Path, state: dict[str, Any], model: str, image_size: Any, class_names: list[str]
) -> None:
    """Refuse to resume a checkpoint of another model, image size or class list (both named)."""
    if state.get("format") != TRAIN_FORMAT and path.suffix == ".safetensors":  # best/last.safetensors
        raise CheckpointError(
            f"{path}: inference weights, not a training checkpoint: resume from the run's last.ckpt (or best.ckpt) "
            f"beside it; to start a new run from these weights, pass weights={path}"
        )
    if state.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path}: not a training checkpoint of this library (format {state.get('format')!r})")
    saved = state.get("config") or {}
    try:
        variant = get_config(str(saved.get("model")))
        saved_model, native_size = variant.name, variant.image_size
    except ValueError:
        saved_model, native_size = str(saved.get("model")), None
    saved_size = _pair(saved.get("image_size") or native_size)
    if saved_model != model or (saved_size is not None and saved_size != _pair(image_size)):
        raise CheckpointError(
            f"{path}: the checkpoint is a {saved_model!r} run at image size {saved_size}, but this "
            f"config trains {model!r} at {image_size}. Use the checkpoint's model settings, or "
            "another output folder for a new run."
        )
    names = state.get("class_names")
    if names is not None and list(names) != list(class_names):
        raise CheckpointError(
            f"{path}: the checkpoint was trained on the classes {list(names)[:10]}, but the "
            f"training data has {list(class_names)[:10]}"
        )


# Settings a resumed run may change without a word: where and how long it runs, what it logs.
FREE_ON_RESUME = frozenset({
    "output", "resume", "device", "epochs", "max_steps", "time_budget_minutes", "eval_every", "log_every",
    "checkpoint_every_steps", "checkpoint_min_interval_s", "data.workers",
})  # fmt: skip
# Changes the optimiser state cannot follow (its parameter groups and their state differ)
FIXED_ON_RESUME = ("optim.optimizer", "freeze_backbone")
# Restored from the checkpoint (the optimiser's state, the weights): the new value has no effect
RESTORED_ON_RESUME = ("optim.lr", "optim.momentum", "optim.weight_decay", "weights", "pretrained_backbone")


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def config_changes(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The settings in which ``current`` differs from the checkpoint's ``saved`` config, as
    ``key: old -> new`` (those without effect marked so); refuses changes the optimiser state
    cannot follow. Where and how long the run goes (:data:`FREE_ON_RESUME`) are left out."""
    old, new = _flatten(saved), _flatten(current)
    changed = [k for k in new if k in old and old[k] != new[k] and k not in FREE_ON_RESUME]
    for key in FIXED_ON_RESUME:
        if key in changed:
            raise CheckpointError(
                f"{path}: the checkpoint's run has {key}={old[key]!r}, this config {new[key]!r}: its optimiser "
                f"state cannot carry over. Keep {key}={old[key]!r} to resume, or start a new run from its "
                # the EMA weights saved beside it: weights= refuses a training checkpoint
                f"weights in another output folder (weights={path.with_suffix('.safetensors')})."
            )
    return [f"{k}: {old[k]!r} -> {new[k]!r}" + (" (no effect: restored)" if k in RESTORED_ON_RESUME else "") for k in changed]


def _pair(size: Any) -> tuple[int, int] | None:
    """128 and (128, 128) (or a list from a config file) are the same image size."""
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (no code is ever unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refused a global: the file holds Python objects, maybe code
        match = re.search(r"GLOBAL ([\w.]+)", str(err))
        culprit = f" (it references {match.group(1)!r})" if match else ""
        raise CheckpointError(
            f"{path}: refused to load: the file contains Python objects or code, not only tensors"
            f"{culprit}. Nothing in it was executed. Training checkpoints of this library hold "
            "tensors and plain values only: use a checkpoint from a source you trust."
        ) from err
    except Exception as err:  # deliberately broad: any failure means the same to the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable training checkpoint, the file is truncated or of another "
            f"format ({type(err).__name__}: {first})"
        ) from err
