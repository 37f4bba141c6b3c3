"""What every detector offers, and the loop they share.

A detector runs the one pipeline in three public stages, so evaluation, the benchmark, the
server and the CLI can time, batch or interleave them without reaching into any backend:

    decoded uint8 [3, H_i, W_i] images (or ReducedImage s of large JPEGs, decoded at a fraction
    of their size for the detector's ``decode_size``) --prepare--> Prepared (model input [N, 3, h, w],
    scales, original sizes) --forward--> raw outputs (backend-specific) --postprocess-->
    one dict per image (CPU tensors: boxes [M, 4] xyxy in the image's own pixels, scores [M],
    labels [M] int64, and names when the model has class names).

``Detector`` (torch), ``TTADetector`` and ``export.OnnxDetector`` implement
:class:`ImageDetector`; :class:`StagedDetector` gives them ``detect`` and ``__call__``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..config import PostprocessConfig, PreprocessConfig, check_score_threshold
from ..data.decode import iter_image_chunks
from ..data.reduced import DecodedImage

__all__ = [
    "Detections",
    "ImageDetector",
    "ImageInput",
    "Prepared",
    "StagedDetector",
    "check_score_threshold",
    "finish_detections",
    "torch_threads",
    "with_score_threshold",
]

ImageInput = Any  # path, PIL.Image, HWC numpy array, CHW tensor
Detections = list[dict[str, Any]]


@dataclass
class Prepared:
    """A batch ready for the network: ``inputs`` float32 [N, 3, h, w] on the detector's device,
    ``scales`` [N] (model pixels per image pixel), ``image_sizes`` the originals' (H_i, W_i)."""

    inputs: torch.Tensor
    scales: torch.Tensor
    image_sizes: list[tuple[int, int]]


@runtime_checkable
class ImageDetector(Protocol):
    """The interface of every detector (torch, TTA, ONNX Runtime)."""

    class_names: list[str] | None
    batch_size: int
    host_threads: int | None

    @property
    def num_classes(self) -> int: ...

    @property
    def preprocess_config(self) -> PreprocessConfig: ...

    @property
    def postprocess_config(self) -> PostprocessConfig: ...

    @property
    def decode_size(self) -> tuple[int, int] | None: ...

    def decode_chunks(self, images: ImageInput | Sequence[ImageInput], batch_size: int | None = None) -> Iterator[list[DecodedImage]]: ...

    def prepare(self, decoded: Sequence[DecodedImage]) -> Any: ...

    def forward(self, prepared: Any) -> Any: ...

    def postprocess(self, outputs: Any, prepared: Any, config: PostprocessConfig | None = None) -> Detections: ...

    def detect(self, decoded: Sequence[DecodedImage], config: PostprocessConfig | None = None) -> Detections: ...

    def __call__(
        self, images: ImageInput | Sequence[ImageInput], score_threshold: float | None = None,
        batch_size: int | None = None,
    ) -> Detections: ...  # fmt: skip


@contextmanager
def torch_threads(limit: int | None) -> Iterator[None]:
    """torch's intra-op threads at most ``limit`` inside the block (None: unchanged); restored after.

    Detectors whose network runs in another runtime's threads (ONNX Runtime, OpenVINO) decode,
    resize and post-process under ``torch_threads(1)``: on torch's OpenMP pool, the workers keep
    spinning after each parallel region and take the cores from the runtime's next network run
    (on 2 cores the network ran ~25% slower; docs/quantization.md).
    """
    saved = torch.get_num_threads()
    if limit is None or saved <= limit:
        yield
        return
    torch.set_num_threads(limit)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def with_score_threshold(config: PostprocessConfig, score_threshold: float | None) -> PostprocessConfig:
    """``config`` with another score threshold (None: unchanged), checked."""
    if score_threshold is not None:
        check_score_threshold(score_threshold)
    return config if score_threshold is None else dataclasses.replace(config, score_threshold=score_threshold)


def finish_detections(dets: Sequence[dict[str, torch.Tensor]], class_names: Sequence[str] | None) -> Detections:
    """Detections as detectors return them: tensors on the CPU, class names attached."""
    out: Detections = []
    for det in dets:
        cpu: dict[str, Any] = {k: v.cpu() for k, v in det.items()}
        if class_names is not None:
            cpu["names"] = [class_names[i] for i in cpu["labels"].tolist()]
        out.append(cpu)
    return out


class StagedDetector:
    """``detect`` and ``__call__`` from a subclass's ``prepare`` / ``forward`` / ``postprocess``.

    Subclasses set ``class_names``, ``batch_size``, ``preprocess_config`` and
    ``postprocess_config``; ``host_threads``: torch's thread limit while decoding (see
    :func:`torch_threads`; None: torch runs the network too and keeps all its threads).
    """

    class_names: list[str] | None = None
    batch_size: int = 8
    host_threads: int | None = None
    preprocess_config: PreprocessConfig
    postprocess_config: PostprocessConfig

    @property
    def decode_size(self) -> tuple[int, int] | None:
        """The input size large JPEGs may be decoded at a fraction of their size for (see
        :func:`~efficientdet.data.images.load_for_model`): the model's; None: always in full."""
        h, w = self.preprocess_config.image_size
        return int(h), int(w)

    def prepare(self, decoded: Sequence[DecodedImage]) -> Any:
        raise NotImplementedError

    def forward(self, prepared: Any) -> Any:
        raise NotImplementedError

    def postprocess(self, outputs: Any, prepared: Any, config: PostprocessConfig | None = None) -> Detections:
        raise NotImplementedError

    def config_with_threshold(self, score_threshold: float | None) -> PostprocessConfig:
        """The post-processing config for a call with ``score_threshold`` (None: the default);
        a backend that cannot honour a threshold raises here, before any work."""
        return with_score_threshold(self.postprocess_config, score_threshold)

    def detect(self, decoded: Sequence[DecodedImage], config: PostprocessConfig | None = None) -> Detections:
        """Decoded uint8 [3, H_i, W_i] images -> one dict per image (the three stages)."""
        with torch.inference_mode():
            prepared = self.prepare(decoded)
            return self.postprocess(self.forward(prepared), prepared, config)

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        score_threshold: float | None = None,
        batch_size: int | None = None,
    ) -> Detections:
        """Images (paths, PIL images, HWC uint8 arrays or CHW tensors; any sizes) -> one dict
        per image. Decodes ``batch_size`` images at a time (the ``max_input_pixels`` guard
        included) and runs :meth:`detect` on each chunk."""
        post = self.config_with_threshold(score_threshold)
        results: Detections = []
        for decoded in self.decode_chunks(images, batch_size):
            results += self.detect(decoded, post)
        return results

    def decode_chunks(
        self, images: ImageInput | Sequence[ImageInput], batch_size: int | None = None
    ) -> Iterator[list[DecodedImage]]:
        """Decode ``images`` ``batch_size`` (default the detector's) at a time -> lists of uint8
        [3, H, W] tensors (large JPEGs: reduced, for :attr:`decode_size`), each chunk under
        :func:`torch_threads` ``(host_threads)``; the ``max_input_pixels`` guard applies."""
        size = self.batch_size if batch_size is None else batch_size
        if size < 1:  # -1 gave no detections at all, silently
            raise ValueError(f"batch_size {size}: must be at least 1")
        max_pixels = self.preprocess_config.max_input_pixels
        chunks = iter_image_chunks(images, size, max_pixels, self.decode_size)
        while True:
            with torch_threads(self.host_threads):
                decoded = next(chunks, None)
            if decoded is None:
                return
            yield decoded
