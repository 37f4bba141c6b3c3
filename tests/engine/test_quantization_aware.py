"""Quantization-aware fine-tuning: NNCF fake-quantizers in training, float checkpoints out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("nncf")


def _trained(tmp_path: Path, tiny_dataset: Path, make_config, **overrides):
    from efficientdet.engine.trainer import Trainer

    base = tmp_path / "float"
    Trainer(make_config(tiny_dataset, base, max_steps=2), progress=False).fit()
    cfg = make_config(
        tiny_dataset, tmp_path / "qat", weights=str(base / "last.safetensors"), quantization_aware=True,
        quantization_calibration_images=3, max_steps=3, **overrides,
    )  # fmt: skip
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    return trainer


def test_training_runs_through_quantizers_and_saves_float_weights(tiny_dataset: Path, tmp_path: Path, make_config):
    from efficientdet import create_model
    from efficientdet.engine.quantization_aware import float_state_dict, is_quantization_aware
    from efficientdet.models.efficientdet import build_model

    trainer = _trained(tmp_path, tiny_dataset, make_config, **{"data.val": str(tiny_dataset)})
    model = trainer.state.model
    assert is_quantization_aware(model) and is_quantization_aware(trainer.ema.module)
    assert trainer.step == 3
    stats = trainer.validate()  # the float weights (see the module), through the inference path
    assert stats is not None and 0.0 <= stats["AP"] <= 1.0
    # The checkpoint holds exactly the plain network's tensors, and every tool can load it.
    saved = create_model(weights=tmp_path / "qat" / "last.safetensors")
    assert set(saved.state_dict()) == set(build_model(saved.config).state_dict())
    # BN kept the float model's statistics (its affine parameters trained on).
    start = create_model(weights=tmp_path / "float" / "last.safetensors").state_dict()
    after = saved.state_dict()
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(start[k], after[k]) for k in stats)
    assert any(not torch.equal(start[k], after[k]) for k in start if k.endswith(".weight"))
    # The wrapped model rounds: its outputs differ from the same float weights' (but not by much).
    plain = build_model(saved.config)
    plain.load_state_dict(float_state_dict(model))
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    model.eval()
    plain.eval()
    with torch.no_grad():
        (q_cls, _), (f_cls, _) = model(x), plain(x)
    gap = (q_cls[0] - f_cls[0]).abs().max().item()
    assert 0 < gap < 0.5 * f_cls[0].abs().max().item()


def test_resume_keeps_the_quantizers(tiny_dataset: Path, tmp_path: Path, make_config):
    from efficientdet.engine.trainer import Trainer

    first = _trained(tmp_path, tiny_dataset, make_config)
    scales = {k: v.clone() for k, v in first.state.model.state_dict().items() if "scale" in k}
    assert scales
    cfg = first.cfg.replace(resume=True, max_steps=4)
    again = Trainer(cfg, progress=False)
    assert again.step == 3
    restored = again.state.model.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in scales.items())
    again.fit()
    assert again.step == 4


def test_unsupported_settings_are_clear_errors(tiny_dataset: Path, tmp_path: Path, make_config):
    from efficientdet.engine.setup import check_quantization_aware

    cfg = make_config(tiny_dataset, tmp_path, quantization_aware=True, weights="w.safetensors")
    with pytest.raises(ValueError, match="torchrun"):
        check_quantization_aware(cfg, distributed=True, amp_dtype=None)
    with pytest.raises(ValueError, match="amp=off"):
        check_quantization_aware(cfg, distributed=False, amp_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="quantization_calibration_images"):
        make_config(tiny_dataset, tmp_path, quantization_calibration_images=0)
    with pytest.warns(UserWarning, match="without weights"):
        check_quantization_aware(cfg.replace(weights=None), distributed=False, amp_dtype=None)
