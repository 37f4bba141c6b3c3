"""``Detector``: images in, boxes out, on an inference-optimised copy of an ``EfficientDet``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from ..config import PostprocessConfig, PreprocessConfig
from ..data.reduced import DecodedImage
from ..devices import parse_device
from ..models.efficientdet import EfficientDet
from ..models.fuse import optimize_for_inference
from ..ops.anchors import anchors_for_config
from .postprocess import postprocess
from .preprocess import preprocess_batch
from .protocol import Detections, Prepared, StagedDetector, finish_detections

__all__ = ["Detector", "inference_model"]

# Devices where channels_last was measured faster end to end for EfficientDet (docs/benchmarks.md):
# oneDNN's and cuDNN's depthwise and 1x1 kernels. Elsewhere (MPS, ...) NCHW, the safe default.
_CHANNELS_LAST_DEVICES = ("cpu", "cuda")


def inference_model(model: EfficientDet, device: torch.device) -> EfficientDet:
    """An eval-mode copy of ``model`` on ``device`` for inference: BatchNorms folded into the
    convs, channels_last where that is faster (CPU, CUDA). ``model`` itself is untouched."""
    fast = optimize_for_inference(model, channels_last=device.type in _CHANNELS_LAST_DEVICES)
    return fast.to(device)  # type: ignore[return-value]  # .to keeps the memory format


class Detector(StagedDetector):
    """Runs an ``EfficientDet`` on images of any size.

    ``detector(images)`` takes a list of images (paths, PIL images, HWC uint8 arrays or CHW
    tensors; sizes may differ) and returns one dict per image: ``boxes`` ``[M, 4]`` xyxy in
    that image's own pixels, ``scores`` ``[M]``, ``labels`` ``[M]`` (0-based class indices) and,
    when the model carries class names, ``names`` (list of M strings).

    By default the network is an inference-optimised copy (:func:`inference_model`); the
    caller's model is left as it is. ``optimize=False`` runs ``model`` itself (moved to
    ``device`` and put in eval mode). The stages are public (see
    :mod:`efficientdet.inference.protocol`): ``prepare`` -> ``forward`` -> ``postprocess``.
    """

    def __init__(
        self,
        model: EfficientDet,
        device: str | torch.device | None = None,
        postprocess_config: PostprocessConfig | None = None,
        batch_size: int = 8,
        optimize: bool = True,
    ) -> None:
        if isinstance(model, (str, os.PathLike)):  # was "'str' object has no attribute 'config'"
            raise TypeError(f"Detector takes a model from efficientdet.create_model, not a path; "
                            f"for weights on disk use Detector.from_pretrained({os.fspath(model)!r})")  # fmt: skip
        if model.config is None:
            raise ValueError("the model has no config; build it with efficientdet.create_model")
        if postprocess_config is not None and not isinstance(postprocess_config, PostprocessConfig):
            # a dict was "'dict' object has no attribute 'max_candidates'" at the first call
            raise TypeError(f"postprocess_config must be an efficientdet.PostprocessConfig, not "
                            f"{type(postprocess_config).__name__}; e.g. PostprocessConfig(max_detections=50)")  # fmt: skip
        self.config = model.config
        self.device = (
            parse_device(device, "device", "'cpu', 'cuda' or 'cuda:N'", "'cpu'")
            if device is not None
            else next(model.parameters()).device
        )
        self.model = inference_model(model, self.device) if optimize else model.to(self.device).eval()
        # A float64 / half / bfloat16 model runs in its own dtype: preprocessing gives float32.
        self.dtype = next(self.model.parameters()).dtype
        self.postprocess_config = postprocess_config or self.config.postprocess
        self.batch_size = batch_size
        self.class_names = model.class_names
        self.anchors = anchors_for_config(self.config.anchors, self.config.image_size).to(self.device)

    def __repr__(self) -> str:
        h, w = self.config.image_size
        return (f"Detector({self.config.name}, {h}x{w}, {self.num_classes} classes, device={self.device}, "
                f"dtype={self.dtype}, batch_size={self.batch_size})")  # fmt: skip

    @property
    def preprocess_config(self) -> PreprocessConfig:  # type: ignore[override]
        return self.config.preprocess

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @classmethod
    def from_pretrained(
        cls, weights: str | os.PathLike[str], name: str | None = None, device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> Detector:
        """A detector from a checkpoint, a registered weights name or a URL."""
        from ..factory import create_model

        return cls(create_model(name, weights=weights), device=device, **kwargs)

    def prepare(self, decoded: Sequence[DecodedImage]) -> Prepared:
        """uint8 ``[3, H_i, W_i]`` images -> model input [N, 3, h, w], scales [N] and original
        sizes, on the detector's device (:func:`~efficientdet.inference.preprocess.preprocess_batch`)."""
        if self.device.type == "cuda":  # (verified there; other accelerators keep the CPU path)
            # The uint8 images go over first and are resized there: a quarter of the bytes of
            # the float input, and the CPU's per-image resizes dominated end-to-end time at
            # batch 16 on a GPU. (GPU and CPU antialiased resizes can differ by one uint8 level.)
            decoded = [image.to(self.device) for image in decoded]
        batch, scales, sizes = preprocess_batch(list(decoded), self.config.preprocess)
        return Prepared(batch.to(self.device), scales.to(self.device), sizes)

    def forward(self, prepared: Prepared) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The network's raw per-level outputs, float32: class [N, A*K, H_l, W_l], box [N, A*4, H_l, W_l]
        (the network runs in its own dtype)."""
        # no_grad here, not only in detect(): the stages are public, and called one by one they
        # recorded autograd (memory, and detections whose .numpy() raised).
        with torch.no_grad():
            class_out, box_out = self.model(prepared.inputs.to(self.dtype))
        if self.dtype == torch.float32:
            return class_out, box_out
        # decoded and NMS'd in float32: boxes in half / bfloat16 are off by pixels at 512+
        return [c.float() for c in class_out], [b.float() for b in box_out]

    def postprocess(
        self,
        outputs: tuple[list[torch.Tensor], list[torch.Tensor]],
        prepared: Prepared,
        config: PostprocessConfig | None = None,
    ) -> Detections:
        """Raw outputs -> one dict per image in its own pixels (CPU tensors, class names)."""
        class_out, box_out = outputs
        dets = postprocess(
            class_out, box_out, self.anchors, config or self.postprocess_config, num_classes=self.config.num_classes,
            scales=prepared.scales, image_sizes=prepared.image_sizes,
        )  # fmt: skip
        return finish_detections(dets, self.class_names)
