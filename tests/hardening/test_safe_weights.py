"""Safe weights: no code runs from a checkpoint, downloads are hash-checked before they are
read, and weights of another variant are refused with both names.

Already covered elsewhere (not repeated): ``tests/weights/test_io.py`` (a malicious ``.pth``
refused by ``read_weights``, nothing executed, the global named) and
``tests/weights/test_registry.py`` (a download whose SHA256 does not match is deleted and the
error names URL, expected and actual hash; a corrupt cache entry is downloaded again).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from efficientdet.cli import main
from efficientdet.engine.checkpoint import TRAIN_FORMAT, CheckpointError, check_resumable, load_checkpoint
from efficientdet.factory import create_model, save_model
from efficientdet.weights import registry
from efficientdet.weights.io import WeightsError
from efficientdet.weights.registry import OFFICIAL_WEIGHTS, OfficialWeights

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _make_marker(path: str) -> None:
    """What a malicious checkpoint would run when unpickled; it must never be called."""
    Path(path).write_text("pwned")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return (_make_marker, (self.marker,))


def _evil_training_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"format": TRAIN_FORMAT, "model": {"w": torch.ones(1)}, "step": 1, "x": _Evil(marker)}, path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from efficientdet.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("safe_data")
    return make_synthetic_dataset(root, num_images=2, image_size=(128, 128), seed=1, max_objects=1)


def _train_args(data: Path, output: Path, **extra: Any) -> list[str]:
    base = {"model": "efficientdet_lite0", "pretrained_backbone": False, "image_size": 128, "device": "cpu",
            "data.train": data, "data.workers": 0, "batch_size": 2, "max_steps": 1, "eval_every": 0,
            "output": output, **extra}  # fmt: skip
    return ["train", "--no-progress", *(f"{k}={v}" for k, v in base.items())]


# --- training checkpoints: weights_only ---------------------------------------------------
def test_training_checkpoint_with_code_is_refused_and_not_run(tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "last.ckpt"
    _evil_training_checkpoint(path, marker)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused to load") and "\n" not in message
    assert "_make_marker" in message and "Nothing in it was executed" in message
    assert not marker.exists()


def test_truncated_training_checkpoint_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1000)}, buffer)
    path.write_bytes(buffer.getvalue()[:1500])  # what a non-atomic writer leaves when killed
    expected = r"last\.ckpt: not a readable training checkpoint, the file is truncated"
    with pytest.raises(CheckpointError, match=expected) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_cli_resume_from_malicious_checkpoint(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker, evil = tmp_path / "pwned", tmp_path / "evil.ckpt"
    _evil_training_checkpoint(evil, marker)
    rc = main(_train_args(dataset, tmp_path / "out", resume=evil))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"efficientdet train: error: {evil}: refused to load")
    assert not marker.exists() and not (tmp_path / "out" / "last.ckpt").exists()


# --- a checkpoint of another model ---------------------------------------------------------
def test_create_model_refuses_our_checkpoint_of_another_variant(tmp_path: Path) -> None:
    path = tmp_path / "d1.safetensors"
    save_model(create_model("efficientdet_d1", num_classes=3), path)
    with pytest.raises(WeightsError) as info:
        create_model("efficientdet_d0", weights=path)
    message = str(info.value)
    assert str(path) in message and "'efficientdet_d1'" in message and "'efficientdet_d0'" in message
    assert create_model(weights=path).config.name == "efficientdet_d1"  # the name is optional


def test_resume_refuses_checkpoint_of_another_variant(tmp_path: Path) -> None:
    state = {"format": TRAIN_FORMAT, "config": {"model": "efficientdet_d1", "image_size": None}, "class_names": ["a"]}
    with pytest.raises(CheckpointError) as info:
        check_resumable(tmp_path / "last.ckpt", state, "efficientdet_d0", (512, 512), ["a"])
    message = str(info.value)
    assert "'efficientdet_d1' run at image size (640, 640)" in message  # d1's native size
    assert "trains 'efficientdet_d0' at (512, 512)" in message
    # same variant, other size; same model, other classes
    state["config"] = {"model": "efficientdet_d0", "image_size": 256}
    with pytest.raises(CheckpointError, match=r"image size \(256, 256\).*at \(512, 512\)"):
        check_resumable(tmp_path / "last.ckpt", state, "efficientdet_d0", (512, 512), ["a"])
    state["config"] = {"model": "efficientdet_d0", "image_size": [512, 512]}
    with pytest.raises(CheckpointError, match=r"classes \['a'\], but the training data has \['b'\]"):
        check_resumable(tmp_path / "last.ckpt", state, "efficientdet_d0", (512, 512), ["b"])
    check_resumable(tmp_path / "last.ckpt", state, "efficientdet_d0", (512, 512), ["a"])  # fits


def test_resume_from_inference_weights_says_which_file_to_use(tmp_path: Path) -> None:
    """``resume=runs/x/best.safetensors`` said "not a training checkpoint of this library
    (format None)": no word of the .ckpt beside it, or of ``weights=`` for a new run."""
    path = tmp_path / "best.safetensors"
    save_model(create_model("efficientdet_lite0", num_classes=1, image_size=128), path)
    with pytest.raises(CheckpointError) as info:
        check_resumable(path, load_checkpoint(path), "efficientdet_lite0", (128, 128), ["0"])
    assert str(info.value) == (
        f"{path}: inference weights, not a training checkpoint: resume from the run's last.ckpt (or best.ckpt) "
        f"beside it; to start a new run from these weights, pass weights={path}"
    )


def test_cli_resume_of_another_variant_names_both(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(_train_args(dataset, out)) == 0
    capsys.readouterr()
    rc = main(_train_args(dataset, out, model="efficientdet_lite1", resume="auto", max_steps=2))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "'efficientdet_lite0' run at image size (128, 128)" in err[0]
    assert "trains 'efficientdet_lite1' at (128, 128)" in err[0]
    assert load_checkpoint(out / "last.ckpt")["step"] == 1  # untouched


# --- registered downloads: hash checked before anything is read ----------------------------
@pytest.fixture
def fake_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """An empty cache and a 'network' serving ``served['payload']`` for every URL."""
    monkeypatch.setenv("EFFICIENTDET_CACHE", str(tmp_path / "cache"))
    served: dict[str, Any] = {"payload": b"", "calls": []}

    def download(url: str, dest: str | Path, progress: bool = False) -> None:
        served["calls"].append(url)
        Path(dest).write_bytes(served["payload"])

    monkeypatch.setattr(registry, "download_file", download)
    return served


def test_tampered_download_is_never_unpickled(tmp_path: Path, fake_registry: dict[str, Any]) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": _Evil(marker)}, buffer)
    fake_registry["payload"] = buffer.getvalue()  # not the file whose hash the registry holds
    with pytest.raises(WeightsError) as info:
        create_model("efficientdet_d0", weights="efficientdet_d0.coco")
    message = str(info.value)
    assert OFFICIAL_WEIGHTS["efficientdet_d0.coco"].sha256 in message
    assert hashlib.sha256(fake_registry["payload"]).hexdigest() in message
    assert not marker.exists() and not list((tmp_path / "cache").rglob("*.pth"))


def test_registered_weights_of_another_variant_name_both(
    tmp_path: Path, fake_registry: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(1)}, buffer)
    fake_registry["payload"] = buffer.getvalue()
    name = "efficientdet_d1.coco"
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    entry = OfficialWeights(**{**OFFICIAL_WEIGHTS[name].__dict__, "sha256": digest})
    monkeypatch.setitem(OFFICIAL_WEIGHTS, name, entry)  # so that the fake download verifies
    with pytest.raises(WeightsError, match=r"'efficientdet_d1\.coco' are for 'efficientdet_d1', not 'efficientdet_d0'"):
        create_model("efficientdet_d0", weights=name)
    assert fake_registry["calls"] == [entry.url]
