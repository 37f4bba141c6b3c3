"""Training set-up: device and mixed-precision rules, and the model as the Trainer trains it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from efficientdet.engine.setup import build_train_model, resolve_amp_dtype, resolve_device
from efficientdet.models.layers import PointwiseConv2d
from efficientdet.models.lean_bn import LeanBatchNormSiLU2d

CPU = torch.device("cpu")


def test_device_and_amp_rules() -> None:
    assert resolve_device("cpu", 3) == CPU
    assert resolve_device("auto", 0) == (torch.device("cuda:0") if torch.cuda.is_available() else CPU)
    # one line naming the setting (torch's listed some 20 device types, or wanted an index)
    with pytest.raises(ValueError, match=r"^device tpu: not a device; use auto, cpu, cuda or cuda:N$"):
        resolve_device("tpu", 0)
    if torch.cuda.is_available():  # plain cuda: this rank's GPU, as set_device and DDP need
        assert resolve_device("cuda", 1 % torch.cuda.device_count()) == torch.device("cuda", 1 % torch.cuda.device_count())
    else:
        with pytest.raises(ValueError, match=r"^device cuda: CUDA is not available on this machine; use device=cpu"):
            resolve_device("cuda", 0)
    assert resolve_amp_dtype("auto", CPU) is None  # CPU autocast: off unless asked
    assert resolve_amp_dtype("off", torch.device("cuda")) is None
    assert resolve_amp_dtype("fp16", CPU) is torch.float16
    assert resolve_amp_dtype("bf16", CPU) is torch.bfloat16


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_cpu_model_gets_the_training_rewrites(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    # D0 (SiLU; Lite0's ReLU6 has no lean BN form)
    cfg = make_config(tiny_dataset, tmp_path, model="efficientdet_d0", bn_momentum=0.05, freeze_backbone=True)
    amp_dtype = resolve_amp_dtype(cfg.amp, CPU)
    with pytest.warns(UserWarning, match="backbone stays random"):  # random init + frozen: told
        model = build_train_model(cfg, ["a", "b", "c"], CPU, distributed=False, amp_dtype=amp_dtype)
    assert model.class_names == ["a", "b", "c"] and model.config.num_classes == 3
    assert _count(model, LeanBatchNormSiLU2d) == 32 and _count(model, PointwiseConv2d) > 50  # D0 backbone BN+SiLU
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.class_head.parameters())
    assert {m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)} == {0.05}
    stem = next(p for p in model.parameters() if p.dim() == 4)
    assert stem.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("overrides", [{"amp": "bf16"}, {"channels_last": False}])
def test_rewrites_only_where_they_apply(tiny_dataset: Path, tmp_path: Path, make_config, overrides) -> None:
    cfg = make_config(tiny_dataset, tmp_path, model="efficientdet_d0", **overrides)
    model = build_train_model(cfg, ["a"], CPU, distributed=False, amp_dtype=resolve_amp_dtype(cfg.amp, CPU))
    # lean BN computes in fp32 (not under autocast); the GEMM 1x1 conv needs channels-last memory
    assert (_count(model, LeanBatchNormSiLU2d) > 0) == ("amp" not in overrides)
    assert _count(model, PointwiseConv2d) == 0


def test_settings_that_need_another_setting_are_named(tiny_dataset: Path, tmp_path: Path, make_config) -> None:
    """``data.crop_scale_range`` without ``data.crop_size``, ``augment.close_mosaic`` without
    mosaic or mixup: accepted and silently unused; now the trainer says so before training."""
    from efficientdet.engine.config import load_train_config
    from efficientdet.engine.setup import unused_settings
    from efficientdet.engine.trainer import Trainer

    assert unused_settings(load_train_config(None, None, "finetune")) == []
    assert unused_settings(load_train_config(None, ["data.crop_size=64", "data.crop_scale_range=[0.5, 2]"])) == []
    assert unused_settings(load_train_config(None, ["augment.mixup=0.1", "augment.close_mosaic=3", "epochs=5"])) == []
    crop, close = unused_settings(load_train_config(None, ["data.crop_scale_range=[0.5, 2]", "augment.close_mosaic=3"]))
    assert crop.startswith("data.crop_scale_range=[0.5, 2.0] does nothing without data.crop_size")
    assert close == "augment.close_mosaic=3 does nothing: augment.mosaic and augment.mixup are 0"
    lines: list[str] = []
    cfg = make_config(tiny_dataset, tmp_path / "run", **{"data.crop_scale_range": [0.5, 2.0]})
    Trainer(cfg, log=lines.append, progress=False)
    assert [line for line in lines if "crop_scale_range" in line] == [f"warning: {crop}"]
    # close_mosaic counts back from `epochs`: a max_steps run that ends before that never closes
    for epochs, expected in ((10, 1), (3, 1), (2, 0)):  # 8 images, batch 2: 4 steps per epoch; 8 steps = 2 epochs
        lines.clear()
        overrides = {"augment.mosaic": 0.5, "augment.close_mosaic": 1, "epochs": epochs, "max_steps": 8}
        Trainer(make_config(tiny_dataset, tmp_path / f"run{epochs}", **overrides), log=lines.append, progress=False)
        said = [line for line in lines if "close_mosaic" in line]
        assert said == [
            f"warning: augment.close_mosaic=1 does nothing: it counts back from epochs={epochs}, but max_steps=8 "
            "stops the run after 2 epochs; set epochs=2"
        ][:expected]
    close_long = ["augment.mosaic=0.5", "augment.close_mosaic=5", "epochs=50", "max_steps=8"]
    assert unused_settings(load_train_config(None, close_long), steps_per_epoch=4) == [
        "augment.close_mosaic=5 does nothing: it counts back from epochs=50, but max_steps=8 stops the run after "
        "2 epochs; set epochs=2 and close_mosaic below 2"  # epochs=2 alone would be refused
    ]


def test_training_data_that_lists_no_image_is_named_so(tmp_path: Path) -> None:
    """A COCO file with ``images: []`` said "no usable training images (0 records skipped, see
    the warnings above)", and there were none above."""
    import json

    from efficientdet.data.formats import read_dataset
    from efficientdet.engine.setup import check_has_images

    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(ValueError, match=r"^.*train\.json: no training images: the dataset lists none$"):
        check_has_images(read_dataset(path), str(path))
