"""On a CUDA GPU the model, the inference path and the CPU-training rewrites give the CPU's results.

Skipped without a GPU (CI has none); run on one with ``pytest tests/test_cuda.py tests/engine/test_cuda_training.py``.
TF32 is turned off so that the comparisons measure our code, not reduced-precision matmuls.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from efficientdet import Detector, create_model
from efficientdet.inference.postprocess import postprocess
from efficientdet.models.fuse import optimize_for_inference
from efficientdet.ops.anchors import anchors_for_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _model(name: str = "efficientdet_d0", size: int = 256) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, image_size=(size, size), num_classes=5).eval()


def _flat(out: tuple[list[torch.Tensor], list[torch.Tensor]]) -> list[torch.Tensor]:
    return [t.float().cpu() for level in out for t in level]


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor], rtol: float = 1e-4) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        scale = b.abs().max().clamp(min=1.0)
        assert (a - b).abs().max() <= rtol * scale, ((a - b).abs().max(), scale)


@torch.inference_mode()
def test_raw_outputs_equal_the_cpus() -> None:
    model = _model()
    x = torch.randn(2, 3, 256, 256)
    want = _flat(model(x))
    _assert_close(_flat(copy.deepcopy(model).to(CUDA)(x.to(CUDA))), want)
    # the inference rewrite (BN folded, static padding, channels_last) on the GPU
    fast = optimize_for_inference(copy.deepcopy(model).to(CUDA))
    _assert_close(_flat(fast(x.to(CUDA).contiguous(memory_format=torch.channels_last))), want)


@torch.inference_mode()
def test_postprocess_gives_the_cpus_detections() -> None:
    """Same raw outputs in, same boxes, scores and labels out (decode, top-k, batched NMS on the GPU)."""
    model = _model("efficientdet_lite0", 320)
    cfg = model.config
    gen = torch.Generator().manual_seed(1)
    shapes = [(c.shape, b.shape) for c, b in zip(*model(torch.zeros(2, 3, 320, 320)))]
    # spread-out logits (a random-init head scores everything near its 0.01 prior) and box codes
    cls_out = [torch.randn(c, generator=gen) * 2 - 2 for c, _ in shapes]
    box_out = [torch.randn(b, generator=gen) * 0.3 for _, b in shapes]
    anchors = anchors_for_config(cfg.anchors, cfg.image_size)
    scales = torch.tensor([1.0, 0.5])
    sizes = [(320, 320), (640, 500)]
    kw = dict(num_classes=cfg.num_classes, image_sizes=sizes)
    want = postprocess(cls_out, box_out, anchors, cfg.postprocess, scales=scales, **kw)
    got = postprocess(
        [c.to(CUDA) for c in cls_out], [b.to(CUDA) for b in box_out], anchors.to(CUDA), cfg.postprocess,
        scales=scales.to(CUDA), **kw,
    )  # fmt: skip
    for g, w in zip(got, want, strict=True):
        assert len(w["boxes"]) > 10
        assert g["boxes"].device.type == "cuda"
        assert torch.equal(g["labels"].cpu(), w["labels"])
        assert torch.allclose(g["scores"].cpu(), w["scores"], atol=1e-5)
        assert torch.allclose(g["boxes"].cpu(), w["boxes"], atol=1e-3)


def test_gpu_preprocessing_matches_the_cpus() -> None:
    """On a GPU the uint8 images are resized there; the antialiased resizes may differ by one level."""
    model = _model("efficientdet_lite0", 320)
    gen = torch.Generator().manual_seed(3)
    images = [torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen) for shape in ((3, 240, 400), (3, 700, 90))]
    gpu, cpu = Detector(copy.deepcopy(model), device="cuda"), Detector(model, device="cpu")
    (batch_g, scales_g, sizes_g), (batch_c, scales_c, sizes_c) = gpu.prepare(images), cpu.prepare(images)
    assert batch_g.device.type == scales_g.device.type == "cuda" and sizes_g == sizes_c == [(240, 400), (700, 90)]
    assert torch.equal(scales_g.cpu(), scales_c)
    one_level = 1.0 / min(model.config.preprocess.std) + 1e-4
    assert (batch_g.cpu() - batch_c).abs().max() <= one_level


def test_detector_runs_on_the_gpu_and_returns_cpu_friendly_results() -> None:
    model = _model("efficientdet_lite0", 320)
    gen = torch.Generator().manual_seed(2)
    # sizes that need no resize (scale 1): the same model input on both devices
    images = [torch.rand(3, 320, 320, generator=gen), torch.rand(3, 160, 320, generator=gen)]
    got = Detector(copy.deepcopy(model), device="cuda")(images, score_threshold=0.0)
    want = Detector(model, device="cpu")(images, score_threshold=0.0)
    for g, w in zip(got, want, strict=True):
        # the top detections agree; deep in the list near-equal scores may swap between devices
        n = min(20, len(w["scores"]))
        assert torch.allclose(g["scores"][:n].cpu(), w["scores"][:n], atol=1e-4)
        assert torch.allclose(g["boxes"][:n].cpu(), w["boxes"][:n], atol=1e-2)


def test_cpu_training_rewrites_also_work_on_the_gpu() -> None:
    """Lean BN+SiLU and the pointwise GEMM are CPU defaults, but a user may apply them anywhere."""
    from timm.layers import BatchNormAct2d

    from efficientdet.models.layers import make_pointwise_convs_matmul
    from efficientdet.models.lean_bn import make_batchnorm_silu_lean

    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8, act_layer=nn.SiLU), nn.Conv2d(8, 4, 1)).to(CUDA)
    lean = copy.deepcopy(ref)
    assert make_batchnorm_silu_lean(lean) == 1 and make_pointwise_convs_matmul(lean) == 1
    x = torch.randn(4, 3, 17, 19, device=CUDA).contiguous(memory_format=torch.channels_last)
    y_ref, y = ref(x), lean(x)
    assert torch.allclose(y, y_ref, atol=1e-5)
    g = torch.randn_like(y)
    grads_ref = torch.autograd.grad(y_ref, list(ref.parameters()), g)
    for a, b in zip(grads_ref, torch.autograd.grad(y, list(lean.parameters()), g)):
        assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(ref[1].running_var, lean[1].running_var, atol=1e-6)
