"""``Detector``: images in, boxes out (pre-processing, network, anchors, decoding, NMS)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from efficientdet.config import PostprocessConfig
from efficientdet.data.decode import iter_image_chunks
from efficientdet.models.efficientdet import EfficientDet
from efficientdet.ops.anchors import anchors_for_config
from efficientdet.inference.postprocess import postprocess
from efficientdet.inference.preprocess import preprocess_batch

ImageInput = Any  # path, PIL.Image, HWC numpy array, CHW tensor
Detections = list[dict[str, Any]]


def with_score_threshold(config: PostprocessConfig, score_threshold: float | None) -> PostprocessConfig:
    """``config`` with another score threshold (None: unchanged)."""
    return config if score_threshold is None else dataclasses.replace(config, score_threshold=score_threshold)


def finish_detections(dets: Detections, class_names: Sequence[str] | None) -> Detections:
    """Detections as ``Detector`` returns them: tensors on the CPU, class names attached."""
    out = []
    for det in dets:
        det = {k: v.cpu() for k, v in det.items()}
        if class_names is not None:
            det["names"] = [class_names[i] for i in det["labels"].tolist()]
        out.append(det)
    return out


def detect_in_chunks(
    images: ImageInput | Sequence[ImageInput],
    detect_chunk: Callable[[list[torch.Tensor]], Detections],
    batch_size: int,
    max_pixels: int | None,
    class_names: Sequence[str] | None,
) -> Detections:
    """The loop every detector shares: decode ``batch_size`` images at a time (uint8 CHW, the
    ``max_pixels`` guard included), ``detect_chunk(decoded)`` -> one dict per image, tensors
    moved to the CPU and class names attached (:func:`finish_detections`)."""
    results: Detections = []
    for decoded in iter_image_chunks(images, batch_size, max_pixels):
        results += finish_detections(detect_chunk(decoded), class_names)
    return results


class Detector:
    """Runs an ``EfficientDet`` on images of any size.

    ``detector(images)`` takes a list of images (paths, PIL images, HWC uint8 arrays or CHW
    tensors; sizes may differ) and returns one dict per image: ``boxes`` ``[M, 4]`` xyxy in
    that image's own pixels, ``scores`` ``[M]``, ``labels`` ``[M]`` (0-based class indices) and,
    when the model carries class names, ``names`` (list of M strings).
    """

    def __init__(
        self,
        model: EfficientDet,
        device: str | torch.device | None = None,
        postprocess_config: PostprocessConfig | None = None,
        batch_size: int = 8,
    ) -> None:
        if model.config is None:
            raise ValueError("the model has no config; build it with efficientdet.create_model")
        self.config = model.config
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.postprocess_config = postprocess_config or self.config.postprocess
        self.batch_size = batch_size
        self.class_names = model.class_names
        self.anchors = anchors_for_config(self.config.anchors, self.config.image_size).to(self.device)

    @classmethod
    def from_pretrained(
        cls, weights: str | os.PathLike[str], name: str | None = None, device: str | None = None, **kwargs: Any
    ) -> "Detector":
        """A detector from a checkpoint, a registered weights name or a URL."""
        from efficientdet.factory import create_model

        return cls(create_model(name, weights=weights), device=device, **kwargs)

    def prepare(self, decoded: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """uint8 ``[3, H_i, W_i]`` images -> (model input [N, 3, h, w], scales [N], original
        sizes), on the detector's device (see :func:`efficientdet.inference.preprocess.preprocess_batch`)."""
        if self.device.type == "cuda":  # (verified there; other accelerators keep the CPU path)
            # The uint8 images go over first and are resized there: a quarter of the bytes of
            # the float input, and the CPU's per-image resizes were 40% of end-to-end time at
            # D0 batch 16 on a GPU. (GPU and CPU antialiased resizes can differ by one uint8 level.)
            decoded = [image.to(self.device) for image in decoded]
        batch, scales, sizes = preprocess_batch(list(decoded), self.config.preprocess)
        return batch.to(self.device), scales.to(self.device), sizes

    @torch.inference_mode()
    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        score_threshold: float | None = None,
        batch_size: int | None = None,
    ) -> Detections:
        post = with_score_threshold(self.postprocess_config, score_threshold)

        def detect_chunk(decoded: list[torch.Tensor]) -> Detections:
            batch, scales, sizes = self.prepare(decoded)
            class_out, box_out = self.model(batch)
            return postprocess(
                class_out, box_out, self.anchors, post, num_classes=self.config.num_classes, scales=scales,
                image_sizes=sizes,
            )  # fmt: skip

        return detect_in_chunks(
            images, detect_chunk, batch_size or self.batch_size, self.config.preprocess.max_input_pixels,
            self.class_names,
        )  # fmt: skip
