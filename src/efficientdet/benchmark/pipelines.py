"""The benchmarked inference paths, each split into decode / preprocess / network / postprocess.

Every pipeline runs exactly the steps its public entry point runs, in the same order, so the
sum of the stages is what a user of that entry point waits for:

* ``torch``: ``efficientdet.Detector(model)`` exactly as ``predict`` builds it (its default
  inference-optimised copy; ``torch.compile`` on request): the decoder ``predict`` uses
  (torchvision's libjpeg-turbo), then the detector's public stages ``prepare`` / ``forward`` /
  ``postprocess``.
* ``onnxruntime``: ``efficientdet.export.OnnxDetector`` on the graph ``predict --backend
  onnxruntime`` exports (:func:`efficientdet.export.cached_onnx`: no NMS inside, candidate
  pre-selection), through the same public stages.
* ``onnxruntime-nms``: the same on a graph with decoding + NMS inside (``export --nms``, with
  the benchmark's ``--score-threshold`` exported into it), so its "network" stage includes the
  post-processing and "postprocess" is only the rescaling on the host.
* ``onnxruntime-int8``: ``OnnxDetector`` on the graph ``export --int8`` writes (same layout as
  ``onnxruntime``'s, the network quantized with the default options, calibrated on the
  benchmark's images or ``calibration``).
* ``openvino``: ``efficientdet.export.OpenVinoDetector`` (float32) on ``onnxruntime``'s graph,
  as ``predict --backend openvino`` runs it.
* ``openvino-int8``: ``OpenVinoDetector`` on the graph ``export --int8`` writes with its default
  quantizer (NNCF), calibrated as ``onnxruntime-int8``.
* ``effdet`` (the reference, its predict path as its README and ``validate.py`` use it):
  Pillow decode + ``convert("RGB")``, effdet's eval transforms (``ResizePad`` +
  ``ImageToNumpy``, i.e. ``transforms_coco_eval``), stacking + normalising as its loader does,
  ``DetBenchPredict``: the raw model, then effdet's top-k + per-image NMS (its
  ``_post_process`` / ``_batch_detection``, called in ``DetBenchPredict.forward``'s order),
  and the detections copied to CPU.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.reduced import DecodedImage
from ..inference.protocol import ImageDetector
from ..models.efficientdet import EfficientDet
from . import BACKENDS, REFERENCE

__all__ = ["BACKENDS", "Pipeline", "make_pipeline"]



class Pipeline:
    """One inference path; ``network`` input/output types are the backend's own."""

    name: str = ""
    device: torch.device = torch.device("cpu")
    # False where "network" includes post-processing (NMS in the graph): no network-only rows.
    network_only: bool = True

    def decode(self, paths: Sequence[Path]) -> list[Any]:
        raise NotImplementedError

    def preprocess(self, decoded: list[Any]) -> tuple[Any, Any]:
        """-> (network input, what ``postprocess`` needs: scales, original sizes)."""
        raise NotImplementedError

    def network(self, inputs: Any) -> Any:
        raise NotImplementedError

    def postprocess(self, outputs: Any, info: Any) -> Any:
        raise NotImplementedError

    def set_score_threshold(self, threshold: float) -> None:
        """Drop scores below ``threshold`` before NMS (our backends; what predict does)."""
        raise ValueError(f"{self.name}: no score threshold option")

    def sync(self) -> None:
        """Wait for queued device work (CUDA kernels run asynchronously)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class DetectorPipeline(Pipeline):
    """Any of our detectors, through its public stages (what ``detector(images)`` runs)."""

    def __init__(self, name: str, detector: ImageDetector, device: torch.device, network_only: bool = True) -> None:
        self.name = name
        self.detector = detector
        self.device = device
        self.network_only = network_only
        self.post = detector.postprocess_config

    def decode(self, paths: Sequence[Path]) -> list[DecodedImage]:
        # As the detector's own call decodes (large JPEGs at a reduced scale for its input size).
        return next(self.detector.decode_chunks(list(paths), len(paths)))

    def set_score_threshold(self, threshold: float) -> None:
        if not self.network_only:
            raise ValueError(f"{self.name}: the graph's score threshold is fixed at export")
        self.post = dataclasses.replace(self.post, score_threshold=threshold)

    def preprocess(self, decoded: list[DecodedImage]) -> tuple[Any, Any]:
        prepared = self.detector.prepare(decoded)
        return prepared, prepared

    def network(self, inputs: Any) -> Any:
        return self.detector.forward(inputs)

    def postprocess(self, outputs: Any, info: Any) -> list[dict[str, Any]]:
        return self.detector.postprocess(outputs, info, self.post)


def torch_pipeline(model: EfficientDet, device: torch.device, compile: bool = False) -> DetectorPipeline:
    """``Detector(model)`` as ``predict`` builds it; ``compile`` wraps its network in ``torch.compile``."""
    from ..inference.detector import Detector

    detector = Detector(model, device=device)
    if compile:
        detector.model = torch.compile(detector.model)  # type: ignore[assignment]
    return DetectorPipeline("torch-compile" if compile else "torch", detector, device)


def onnx_pipeline(
    model: EfficientDet,
    device: torch.device,
    threads: int,
    workdir: Path,
    nms_inside: bool,
    dynamo: bool,
    int8_calibration: Sequence[Path] | None = None,
    engine: str = "onnxruntime",
    nms_score_threshold: float | None = None,
) -> DetectorPipeline:
    """``OnnxDetector`` (``engine="openvino"``: ``OpenVinoDetector``) on the graph ``predict
    --backend onnxruntime`` runs (or, for ``onnxruntime-nms``, one with decoding + NMS inside, as
    ``export --nms [--score-threshold nms_score_threshold]`` writes; with ``int8_calibration``,
    the int8 graph ``export --int8`` writes with the engine's quantizer, calibrated on those files)."""
    from ..export.cache import cached_onnx

    name = engine
    if int8_calibration is not None:
        from ..export.calibration import load_calibration_images
        from ..export.quantize import Int8Options, export_int8

        quantizer = "nncf" if engine == "openvino" else "onnxruntime"
        path = workdir / f"model.{quantizer}.int8.onnx"
        assert model.config is not None  # create_model sets it
        images = load_calibration_images(list(int8_calibration), image_size=model.config.image_size, warn=_data_issue)
        export_int8(model, path, images, Int8Options(quantizer=quantizer))  # the layout `export --int8` picks
        name = f"{engine}-int8"
    elif nms_inside:
        from ..export import attach_postprocess, export_onnx

        raw, path = workdir / "model.onnx", workdir / "model.nms.onnx"
        export_onnx(model, raw, dynamic_batch=True, dynamo=dynamo, check=False)
        attach_postprocess(raw, path, score_threshold=nms_score_threshold, dynamo=dynamo, check=False)
        name = "onnxruntime-nms"
    else:
        path = cached_onnx(model, workdir, dynamo=dynamo)
    return DetectorPipeline(name, _graph_detector(engine, path, device, threads), device, network_only=not nms_inside)


def _data_issue(message: str) -> None:
    """Unreadable calibration images were skipped without a word (``export --int8`` names them)."""
    import warnings

    from ..data.records import DataIssue

    warnings.warn(message, DataIssue, stacklevel=2)


def _graph_detector(engine: str, path: Path, device: torch.device, threads: int) -> ImageDetector:
    from ..export.cache import onnx_providers

    if engine == "openvino":
        from ..export.openvino import OpenVinoDetector

        if device.type != "cpu":
            raise ValueError("the openvino backends run on the CPU only (--device cpu)")
        # Its graphs are throwaway files (calibrated per run) and compile time is not measured:
        # no executables left in the user's compile cache.
        return OpenVinoDetector(path, intra_op_threads=threads, compile_cache=False)
    from ..export.runtime import OnnxDetector

    return OnnxDetector(path, providers=onnx_providers(device), intra_op_threads=threads)


class EffdetPipeline(Pipeline):
    """The reference's predict path (see the module docs) on an effdet ``EfficientDet``."""

    name = REFERENCE

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        from effdet import DetBenchPredict
        from effdet.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, transforms_coco_eval

        self.device = device
        self.bench = DetBenchPredict(model).eval().to(device)
        cfg: Any = model.config  # effdet's config (an OmegaConf dict; effdet has no type information)
        mean = tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN))
        std = tuple(cfg.get("std", IMAGENET_DEFAULT_STD))
        # effdet's defaults for evaluation (effdet.data.loader.create_loader, is_training=False).
        self.transform = transforms_coco_eval(
            tuple(cfg.image_size), interpolation="bilinear", use_prefetcher=True, fill_color="mean", mean=mean, std=std
        )
        # Its PrefetchLoader normalises on the device: x.float().sub_(255 * mean).div_(255 * std).
        self.mean = torch.tensor([255 * m for m in mean], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([255 * s for s in std], device=device).view(1, 3, 1, 1)

    def decode(self, paths: Sequence[Path]) -> list[Any]:
        from PIL import Image

        return [Image.open(p).convert("RGB") for p in paths]

    def preprocess(self, decoded: list[Any]) -> tuple[torch.Tensor, Any]:
        arrays, scales, sizes = [], [], []
        for image in decoded:
            array, anno = self.transform(image, {})
            arrays.append(array)
            scales.append(anno["img_scale"])
            sizes.append((image.width, image.height))  # effdet's img_size is (w, h)
        x = torch.from_numpy(np.stack(arrays)).to(self.device).float().sub_(self.mean).div_(self.std)
        info = {
            "img_scale": torch.tensor(scales, dtype=torch.float32, device=self.device),
            "img_size": torch.tensor(sizes, dtype=torch.float32, device=self.device),
        }
        return x, info

    def network(self, inputs: torch.Tensor) -> Any:
        return self.bench.model(inputs)

    def postprocess(self, outputs: Any, info: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> [N, max_det, 6] (x0, y0, x1, y1, score, class), on CPU."""
        from effdet.bench import _batch_detection, _post_process

        b = self.bench
        cls, box, indices, classes = _post_process(
            *outputs, num_levels=b.num_levels, num_classes=b.num_classes, max_detection_points=b.max_detection_points
        )
        dets = _batch_detection(
            cls.shape[0], cls, box, b.anchors.boxes, indices, classes, info["img_scale"], info["img_size"],
            max_det_per_image=b.max_det_per_image, soft_nms=b.soft_nms,
        )  # fmt: skip
        return dets.cpu()


def make_pipeline(
    backend: str,
    model: EfficientDet,
    device: torch.device,
    threads: int,
    workdir: Path,
    compile: bool = False,
    onnx_exporter: str = "torchscript",
    reference: torch.nn.Module | None = None,
    calibration: Sequence[Path] = (),
    score_threshold: float | None = None,
) -> Pipeline:
    """Set up ``backend`` (export, fold, quantize, open a session); not timed. ``onnx_exporter``:
    of the float graphs (default ``torchscript``, the exporter of ``predict --backend
    onnxruntime``'s cached graph). ``calibration``: image files for the int8 backends. ``score_threshold``: our backends drop lower scores
    before NMS (``onnxruntime-nms``: in its graph, as ``export --nms --score-threshold``)."""
    pipeline = _make_pipeline(backend, model, device, threads, workdir, compile, onnx_exporter, reference,
                              calibration, score_threshold)  # fmt: skip
    if score_threshold is not None and pipeline.network_only and backend != REFERENCE:
        pipeline.set_score_threshold(score_threshold)
    return pipeline


def _make_pipeline(
    backend: str,
    model: EfficientDet,
    device: torch.device,
    threads: int,
    workdir: Path,
    compile: bool,
    onnx_exporter: str,
    reference: torch.nn.Module | None,
    calibration: Sequence[Path],
    score_threshold: float | None,
) -> Pipeline:
    if backend == "torch":
        return torch_pipeline(model, device, compile=compile)
    if backend == "onnxruntime-nms":
        return onnx_pipeline(model, device, threads, workdir, True, onnx_exporter == "dynamo",
                             nms_score_threshold=score_threshold)  # fmt: skip
    if backend == "onnxruntime":
        return onnx_pipeline(model, device, threads, workdir, False, onnx_exporter == "dynamo")
    if backend == "openvino":
        return onnx_pipeline(model, device, threads, workdir, False, onnx_exporter == "dynamo", engine="openvino")
    if backend in ("onnxruntime-int8", "openvino-int8"):
        if not calibration:
            raise ValueError(f"the {backend} backend needs calibration images")
        engine = backend.removesuffix("-int8")
        return onnx_pipeline(model, device, threads, workdir, False, False, int8_calibration=calibration, engine=engine)
    if backend == REFERENCE:
        if reference is None:
            raise ValueError("the effdet pipeline needs the reference model")
        return EffdetPipeline(reference, device)
    raise ValueError(f"unknown backend {backend!r}; available backends: {', '.join(BACKENDS)}")


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in or below ``folder``, sorted (for ``--images``)."""
    from ..data.common import IMAGE_EXTENSIONS

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--images {root}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"--images {root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    return files
