"""Detector: mixed image inputs, geometry back to each image's own pixels, bad images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet import Detector, create_model
from efficientdet.data.images import ImageError
from efficientdet.ops.anchors import anchors_for_config


@pytest.fixture(scope="module")
def detector() -> Detector:
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=3, class_names=["cat", "dog", "cup"])
    return Detector(model)


def test_mixed_inputs_of_different_sizes(detector: Detector, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    jpeg = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (240, 400, 3), dtype=np.uint8)).save(jpeg)
    png16 = tmp_path / "deep.png"
    Image.fromarray(rng.integers(0, 65535, (100, 90), dtype=np.uint16)).save(png16)
    gray = Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8), mode="L")
    rgba = rng.integers(0, 255, (64, 32, 4), dtype=np.uint8)
    chw = torch.rand(3, 33, 77)
    inputs = [str(jpeg), png16, gray, rgba, chw]
    sizes = [(240, 400), (100, 90), (50, 70), (64, 32), (33, 77)]
    results = detector(inputs, score_threshold=0.0, batch_size=2)
    assert len(results) == len(inputs)
    for res, (h, w) in zip(results, sizes):
        boxes = res["boxes"]
        assert boxes.shape[1] == 4 and len(boxes) == len(res["scores"]) == len(res["labels"]) > 0
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (res["scores"][:-1] >= res["scores"][1:]).all()  # sorted
        assert res["names"] == [["cat", "dog", "cup"][i] for i in res["labels"].tolist()]


def test_boxes_come_back_in_the_images_own_pixels(detector: Detector, monkeypatch) -> None:
    """One confident anchor with zero box codes: the detection must be that anchor / scale."""
    cfg = detector.config
    anchors = anchors_for_config(cfg.anchors, cfg.image_size)
    target_anchor = 4 * 9 + 2  # level P3, row 0, column 4, anchor 2
    num_classes = cfg.num_classes

    def fake_forward(images: torch.Tensor):
        n, _, h, w = images.shape
        cls, box = [], []
        for level in range(3, 8):
            fh, fw = -(-h // 2**level), -(-w // 2**level)
            cls.append(torch.full((n, 9 * num_classes, fh, fw), -20.0))
            box.append(torch.zeros(n, 36, fh, fw))
        # anchor a of location (0, 4) at P3 -> channel a * K + class
        cls[0][:, 2 * num_classes + 1, 0, 4] = 5.0
        return cls, box

    monkeypatch.setattr(detector.model, "forward", fake_forward)
    image = torch.zeros(3, 480, 640, dtype=torch.uint8)  # scale 320 / 640 = 0.5
    [res] = detector([image], score_threshold=0.5)
    assert res["labels"].tolist() == [1] and res["names"] == ["dog"]
    expected = (anchors[target_anchor] / 0.5).clamp(min=0)
    assert torch.allclose(res["boxes"][0], expected, atol=1e-3)


def test_empty_image_is_a_clear_error(detector: Detector) -> None:
    with pytest.raises(ImageError) as err:
        detector([np.zeros((8, 8, 3), np.uint8), np.zeros((0, 10, 3), np.uint8)])
    assert "image #1" in str(err.value)


def test_text_file_named_jpg_is_a_clear_error(detector: Detector, tmp_path: Path) -> None:
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello")
    with pytest.raises(ImageError) as err:
        detector([bad])
    assert "not_an_image.jpg" in str(err.value)


def test_fast_path_is_the_default_and_leaves_the_model_alone() -> None:
    """Detector(model) runs a BN-folded, channels_last copy; the caller's model keeps its
    BatchNorms, its layout and its training mode; the detections equal the plain model's."""
    from efficientdet.models.fuse import count_batchnorms

    torch.manual_seed(0)
    model = create_model("efficientdet_d0", num_classes=3, image_size=256).train()
    for m in model.modules():  # non-trivial BN statistics, so folding them matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bns = count_batchnorms(model)
    fast = Detector(model)
    assert model.training and count_batchnorms(model) == bns
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert count_batchnorms(fast.model) < bns  # folded (the heads' per-level BNs stay)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in fast.model.parameters() if p.ndim == 4)
    plain = Detector(model, optimize=False)
    assert plain.model is model and not model.training
    image = torch.randint(0, 256, (3, 200, 300), dtype=torch.uint8)
    with torch.inference_mode():
        prepared = fast.prepare([image])
        for a, b in zip(fast.forward(prepared), plain.forward(prepared)):
            for x, y in zip(a, b):
                assert torch.allclose(x, y, atol=1e-4, rtol=1e-4)
    [a], [b] = fast([image], score_threshold=0.001), plain([image], score_threshold=0.001)
    assert len(a["scores"]) == len(b["scores"]) > 0
    assert torch.allclose(a["scores"], b["scores"], atol=1e-4)
    assert a["labels"][0] == b["labels"][0] and torch.allclose(a["boxes"][0], b["boxes"][0], atol=1e-2)


def test_every_detector_offers_the_protocol(detector: Detector) -> None:
    from efficientdet.inference import ImageDetector, TTADetector

    tta = TTADetector(detector, flips=True)
    image = torch.randint(0, 256, (3, 120, 90), dtype=torch.uint8)
    for d in (detector, tta):
        assert isinstance(d, ImageDetector)
        [det] = d.detect([image], d.postprocess_config)
        [again] = d([image])
        assert torch.equal(det["boxes"], again["boxes"]) and det["names"] == again["names"]


def test_the_stages_run_one_by_one_give_plain_tensors(detector: Detector) -> None:
    """prepare -> forward -> postprocess called by hand (docs/usage.md, "The pipeline's stages")
    used to record autograd: boxes with a grad_fn, and ``.numpy()`` raised."""
    from efficientdet.inference import TTADetector

    image = torch.randint(0, 255, (3, 60, 90), dtype=torch.uint8)
    for staged in (detector, TTADetector(detector)):
        prepared = staged.prepare([image])
        det = staged.postprocess(staged.forward(prepared), prepared)[0]
        assert not det["boxes"].requires_grad and not det["scores"].requires_grad
        np.testing.assert_allclose(det["boxes"].numpy(), staged.detect([image])[0]["boxes"].numpy(), atol=1e-5)


@pytest.mark.parametrize("threshold", [30.0, -1.0, float("nan")])
def test_a_score_threshold_outside_0_1_is_refused(detector: Detector, threshold: float) -> None:
    """30 (meant as 30 %) gave no detections and -1 every candidate, silently (the CLI checked, the API did not)."""
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"score_threshold .*: must be in 0\.\.1"):
        detector([image], score_threshold=threshold)
    assert detector([image], score_threshold=1.0)[0]["boxes"].shape == (0, 4)


@pytest.mark.parametrize(("at_init", "batch_size"), [(True, 0), (True, -1), (False, -1), (False, 0)])
def test_a_batch_size_below_1_is_refused(detector: Detector, at_init: bool, batch_size: int) -> None:
    """-1 returned no detections at all, silently; 0 at construction was "range() arg 3 must not be zero"."""
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    if at_init:
        batched = Detector(detector.model, optimize=False, batch_size=batch_size)
        with pytest.raises(ValueError, match=f"batch_size {batch_size}: must be at least 1"):
            batched([image])
    else:
        with pytest.raises(ValueError, match=f"batch_size {batch_size}: must be at least 1"):
            detector([image], batch_size=batch_size)


def test_a_weights_path_instead_of_a_model_points_to_from_pretrained(tmp_path: Path) -> None:
    """Detector("best.safetensors") was "AttributeError: 'str' object has no attribute 'config'"."""
    with pytest.raises(TypeError, match=r"Detector\.from_pretrained\('w\.safetensors'\)"):
        Detector("w.safetensors")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"a model from efficientdet\.create_model"):
        Detector(tmp_path / "w.safetensors")  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("optimize", [True, False])
def test_a_model_in_another_dtype_runs_in_it_and_gives_float32_detections(dtype: torch.dtype, optimize: bool) -> None:
    # was "Input type (float) and bias type (double) should be the same" from inside the network
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=2, image_size=128).eval()
    image = np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8)
    [want] = Detector(model)([image], score_threshold=0.0)
    [got] = Detector(model.to(dtype), optimize=optimize)([image], score_threshold=0.0)
    assert got["boxes"].dtype == got["scores"].dtype == torch.float32 and len(got["boxes"]) == len(want["boxes"]) > 0
    assert next(model.parameters()).dtype == dtype  # the caller's model keeps its dtype
    tol = 1e-4 if dtype == torch.float64 else 0.1  # bfloat16 keeps ~3 significant digits
    assert torch.allclose(got["scores"][:5], want["scores"][:5], atol=tol)


def test_a_postprocess_config_of_another_type_is_a_type_error_and_repr_says_what_runs() -> None:
    model = create_model("efficientdet_lite0", num_classes=2, image_size=128)
    with pytest.raises(TypeError, match=r"postprocess_config must be an efficientdet.PostprocessConfig, not dict"):
        Detector(model, postprocess_config={"max_detections": 5})  # type: ignore[arg-type]
    assert repr(Detector(model, batch_size=2)) == (
        "Detector(efficientdet_lite0, 128x128, 2 classes, device=cpu, dtype=torch.float32, batch_size=2)"
    )


@pytest.mark.parametrize("device", ["tpu", "cuda:x"])
def test_a_device_torch_does_not_know_is_a_value_error_naming_device(device: str) -> None:
    # was torch's RuntimeError listing 20 device types, naming no argument
    model = create_model("efficientdet_lite0", num_classes=2, image_size=128)
    with pytest.raises(ValueError, match=rf"device {device}: not a device; use 'cpu', 'cuda' or 'cuda:N'"):
        Detector(model, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_value_error_naming_device() -> None:
    model = create_model("efficientdet_lite0", num_classes=2, image_size=128)
    with pytest.raises(ValueError, match=r"device cuda: CUDA is not available on this machine; use 'cpu'"):
        Detector(model, device="cuda")
