"""Reading and writing weight files: round trips, atomicity, containers and unsafe pickles."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch

from efficientdet.config import ModelConfig
from efficientdet.weights import io as wio
from efficientdet.weights.io import WeightsError, read_weights, write_weights


def _state_dict() -> dict[str, torch.Tensor]:
    # A few effdet-style keys; small tensors keep the test fast.
    return {
        "backbone.conv_stem.weight": torch.randn(8, 3, 3, 3),
        "backbone.bn1.num_batches_tracked": torch.tensor(7),
        "fpn.cell.0.fnode.0.combine.edge_weights": torch.ones(2),
        "class_net.predict.conv_pw.bias": torch.randn(9 * 90),
        "box_net.predict.conv_pw.weight": torch.randn(36, 8, 1, 1).half(),
    }


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def _make_marker(path: str) -> None:
    """What a malicious checkpoint would run on load; it must never be called."""
    Path(path).write_text("pwned")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_make_marker, (self.marker,))


def test_round_trip_with_config_and_class_names(tmp_path: Path) -> None:
    config = ModelConfig(name="efficientdet_d0").replace(num_classes=3)
    sd = _state_dict()
    path = tmp_path / "model.safetensors"
    write_weights(path, sd, config.to_dict(), ["cat", "dog", "bird"], extra={"source": "unit test"})
    loaded, meta = read_weights(path)
    _assert_same(sd, loaded)
    assert meta is not None
    assert meta["format_version"] == 1
    assert meta["class_names"] == ["cat", "dog", "bird"]
    assert meta["source"] == "unit test"
    assert ModelConfig.from_dict(meta["config"]) == config
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp leftovers


def test_round_trip_without_class_names_and_foreign_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    write_weights(path, _state_dict(), {"name": "x"}, None)
    assert read_weights(path)[1]["class_names"] is None  # type: ignore[index]
    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, str(foreign), metadata={"format": "pt"})
    loaded, meta = read_weights(foreign)
    assert meta is None and torch.equal(loaded["w"], torch.ones(2))


def test_write_handles_shared_views_and_non_contiguous(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    sd = {"a": base, "tied": base, "view": base[1], "t": base.t()}
    path = tmp_path / "shared.safetensors"
    write_weights(path, sd, {"name": "x"}, None)
    loaded, _ = read_weights(path)
    for key, value in sd.items():
        assert torch.equal(loaded[key], value), key


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.safetensors"
    doc = json.dumps({"format_version": 99, "config": {}, "class_names": None})
    safetensors.torch.save_file({"w": torch.ones(1)}, str(path), metadata={"efficientdet": doc})
    with pytest.raises(WeightsError, match="format_version"):
        read_weights(path)


@pytest.mark.parametrize("stage", ["save", "replace"])
def test_failed_write_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    path = tmp_path / "model.safetensors"
    write_weights(path, {"w": torch.zeros(4)}, {"name": "old"}, ["old"])
    before = path.read_bytes()

    if stage == "save":
        real_save = safetensors.torch.save_file

        def broken_save(tensors, filename, metadata=None):  # type: ignore[no-untyped-def]
            real_save(tensors, filename, metadata=metadata)
            with open(filename, "r+b") as handle:  # leave a half-written file behind
                handle.truncate(10)
            raise OSError("disk full")

        monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    else:

        def broken_replace(src, dst):  # type: ignore[no-untyped-def]
            raise OSError("rename failed")

        monkeypatch.setattr(wio.os, "replace", broken_replace)

    with pytest.raises(WeightsError, match=re.escape("model.safetensors")):
        write_weights(path, {"w": torch.ones(4)}, {"name": "new"}, ["new"])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert read_weights(path)[1]["class_names"] == ["old"]  # type: ignore[index]


def test_reads_effdet_pth_plain_wrapped_and_ddp(tmp_path: Path) -> None:
    sd = _state_dict()
    variants = {
        "plain.pth": sd,
        "wrapped.pth": {"state_dict": sd, "epoch": 3, "arch": "tf_efficientdet_d0"},
        "model.pt": {"model": sd},
        "ddp.ckpt": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "ema_only.bin": {"state_dict_ema": sd, "epoch": 1},
        "nested.pth": {"model": {"state_dict": sd}},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        loaded, meta = read_weights(tmp_path / name)
        assert meta is None
        _assert_same(sd, loaded)


def test_prefers_plain_weights_over_ema(tmp_path: Path) -> None:
    plain = {"w": torch.zeros(2)}
    ema = {"w": torch.ones(2)}
    torch.save({"state_dict_ema": ema, "state_dict": plain}, tmp_path / "both.pth")
    assert torch.equal(read_weights(tmp_path / "both.pth")[0]["w"], plain["w"])


def test_partial_module_prefix_is_kept(tmp_path: Path) -> None:
    sd = {"module.a": torch.ones(1), "b": torch.ones(1)}
    torch.save(sd, tmp_path / "mixed.pth")
    assert set(read_weights(tmp_path / "mixed.pth")[0]) == {"module.a", "b"}


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save({"state_dict": {"w": torch.ones(1)}, "x": _Evil(marker)}, path)
    else:
        # No tensors here: plain-pickled tensors are refused first, under another global name.
        with open(path, "wb") as handle:
            pickle.dump({"x": _Evil(marker)}, handle, protocol=2)
    with pytest.raises(WeightsError) as info:
        read_weights(path)
    message = str(info.value)
    assert str(path) in message
    assert "not executed" in message or "was executed" in message
    assert "trust" in message
    assert "_make_marker" in message  # the offending global is named
    assert not marker.exists()
    # Control: the payload is real, an unrestricted unpickler does run it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Evil(control)))
    assert control.exists()


def test_non_tensor_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notweights.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(WeightsError, match="not a dict of tensors"):
        read_weights(path)
    torch.save([torch.ones(1)], path)
    with pytest.raises(WeightsError, match=re.escape(f"{path}: expected a dict of tensors (a state dict), got list")):
        read_weights(path)


@pytest.mark.parametrize("name", ["garbage.pth", "garbage.safetensors"])
def test_garbage_bytes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(os.urandom(256) + b"not a checkpoint" * 8)
    with pytest.raises(WeightsError) as info:
        read_weights(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["empty.pth", "empty.safetensors"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.touch()
    with pytest.raises(WeightsError, match="empty") as info:
        read_weights(path)
    assert str(path) in str(info.value)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save(_state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(WeightsError, match=re.escape("cut.pth")):
        read_weights(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.safetensors"
    with pytest.raises(WeightsError, match="not found") as info:
        read_weights(path)
    assert str(path) in str(info.value)


def test_exports_and_images_given_as_weights_say_what_they_are(tmp_path: Path) -> None:
    """Our own exports passed back as --weights (and a photo) were "refused: the file contains
    Python objects or code", or "corrupt", or a hint to rerun torch.load unsafely."""
    import warnings

    from PIL import Image

    net = torch.nn.Linear(2, 2).eval()
    x = torch.ones(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        torch.jit.save(torch.jit.trace(net, x), str(tmp_path / "model.pt"))
    torch.export.save(torch.export.export(net, (x,)), str(tmp_path / "model.pt2"))
    (tmp_path / "model.onnx").write_bytes(b"\x08\x08\x12\x07pytorch")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    expected = {
        "model.pt": "an exported TorchScript module (load it with torch.jit.load), not model weights",
        "model.pt2": "an exported torch.export program (load it with torch.export.load), not model weights",
        "model.onnx": "an exported ONNX graph, not model weights",
        "photo.jpg": "not model weights (neither a PyTorch zip archive nor a pickle)",
    }
    for name, what in expected.items():
        with pytest.raises(WeightsError) as info:
            read_weights(tmp_path / name)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / name}: {what}; weights are a .safetensors file"), message
        assert "Python objects" not in message and "weights_only" not in message


def test_training_checkpoint_given_as_weights_points_to_the_safetensors(tmp_path: Path) -> None:
    """``predict --weights last.ckpt --model ...`` used to run the raw (not EMA) weights at the
    variant's default size with class names "0", "1", ...; without --model it said "name is
    required unless the weights say which model they are"."""
    path = tmp_path / "last.ckpt"
    torch.save({"format": "efficientdet-train-1", "model": _state_dict(), "ema": {"module": _state_dict()},
                "class_names": ["raccoon"]}, path)  # fmt: skip
    with pytest.raises(WeightsError) as info:
        read_weights(path)
    assert str(info.value).startswith(f"{path}: a training checkpoint (for `efficientdet train --resume`)")
    assert "use best.safetensors or last.safetensors" in str(info.value)
    torch.save({"model": _state_dict(), "epoch": 3}, path)  # another tool's checkpoint still loads
    assert set(read_weights(path)[0]) == set(_state_dict())


@pytest.mark.parametrize("name", ["mine.pth", "mine", "mine.safetensors.tmp"])
def test_weights_under_another_name_than_safetensors_are_refused_before_writing(tmp_path: Path, name: str) -> None:
    # save_model(model, "mine.pth") wrote a safetensors file that create_model then refused as "not model weights"
    with pytest.raises(WeightsError, match=r"weights are written as safetensors and read back by the \.safetensors name"):
        write_weights(tmp_path / name, _state_dict(), {"name": "x"}, None)
    assert list(tmp_path.iterdir()) == []
    write_weights(tmp_path / "MINE.SAFETENSORS", _state_dict(), {"name": "x"}, None)  # the name's case is free
    assert read_weights(tmp_path / "MINE.SAFETENSORS")[1] is not None
