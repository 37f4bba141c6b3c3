"""``OnnxDetector``: ``efficientdet.Detector``'s interface on an exported ONNX graph.

Everything the graph needs is read from its metadata (input size, mean, std, class names,
anchor and post-processing config), so only the ``.onnx`` file is required.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import PostprocessConfig, PreprocessConfig
from ..data.reduced import DecodedImage
from ..inference.postprocess import postprocess, postprocess_candidates
from ..inference.preprocess import preprocess_batch
from ..inference.protocol import (
    Detections,
    Prepared,
    StagedDetector,
    finish_detections,
    torch_threads,
    with_score_threshold,
)
from ..ops.anchors import anchors_for_config
from ..ops.boxes import clip_boxes
from ..ops.nms import batched_nms
from .metadata import OnnxMetadata, is_graph_file, read_onnx_metadata

__all__ = ["OnnxDetector", "check_graph_options", "physical_cores"]


def physical_cores() -> int:
    """Physical cores this process may use (SMT siblings counted once).

    Intra-op threads beyond the physical cores compete for the same execution units and slow
    conv-heavy graphs down; we also stay within the CPU affinity mask (containers, taskset).
    """
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    try:
        import psutil  # optional

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    if physical is None:
        try:
            cores = set()
            with open("/proc/cpuinfo") as f:
                phys = core = None
                for line in f:
                    key, _, value = line.partition(":")
                    key = key.strip()
                    if key == "physical id":
                        phys = value.strip()
                    elif key == "core id":
                        core = value.strip()
                    elif not line.strip() and core is not None:
                        cores.add((phys, core))
                        phys = core = None
                if core is not None:
                    cores.add((phys, core))
            physical = len(cores) or None
        except OSError:
            physical = None
    return max(1, min(allowed, physical or allowed))


class OnnxDetector(StagedDetector):
    """Runs an ONNX graph written by :func:`efficientdet.export.export_onnx` on images.

    ``detector(images)`` takes a list of images (paths, PIL images, HWC uint8 arrays or CHW
    tensors; sizes may differ) and returns one dict per image, as ``efficientdet.Detector``:
    ``boxes`` [M, 4] float32 xyxy in the image's own pixels, ``scores`` [M], ``labels`` [M]
    int64 (0-based) and, when the graph carries class names, ``names``.

    Graphs without NMS are post-processed with ``efficientdet.inference.postprocess`` exactly as
    ``Detector`` does. Graphs with NMS inside have their thresholds fixed; their boxes are
    clipped to the whole model input before NMS (not to the letterboxed image's region), so
    their detections are clipped to the image and go through NMS again here, which removes
    the duplicates the graph let through. A box the graph suppressed only through overlap
    inside the padding stays lost: at a non-square photo's bottom/right edge the set can
    still differ from ``Detector``'s.

    Args:
        path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers (default CPU).
        intra_op_threads: threads per op; default the physical cores (see :func:`physical_cores`).
        postprocess_config: for graphs without NMS (refused for one with NMS inside); default the
            exported model's.
        batch_size: images per run (graphs exported with a fixed batch use theirs, padding).
        session_options: a ready ``onnxruntime.SessionOptions`` (overrides the threading and
            spinning choices).
    """

    runtime_name = "ONNX Runtime"  # in errors

    # The network runs in the runtime's threads; torch only decodes, resizes and post-processes.
    host_threads: int | None = 1

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        postprocess_config: PostprocessConfig | None = None,
        batch_size: int = 8,
        session_options: Any = None,
    ) -> None:
        self.path = os.fspath(path)
        self.metadata: OnnxMetadata = read_onnx_metadata(self.path)
        meta = self.metadata
        if postprocess_config is not None and not isinstance(postprocess_config, PostprocessConfig):
            raise TypeError(f"postprocess_config must be an efficientdet.PostprocessConfig, not {type(postprocess_config).__name__}")
        if meta.nms_inside and postprocess_config is not None:  # its IoU, nms and max_detections were ignored
            raise ValueError(
                f"{self.path}: this graph runs NMS inside, with the settings it was exported with; "
                "postprocess_config applies to graphs exported without NMS (pass score_threshold to the call instead)"
            )
        try:
            self.fixed_batch: int | None = self.open_graph(providers, intra_op_threads, session_options)
        except (ValueError, ImportError):  # our own messages, and a missing runtime's install hint
            raise
        except Exception as err:  # the runtime's parser: e.g. a graph damaged past its metadata
            detail = (str(err).strip().splitlines() or [""])[-1].strip()  # OpenVINO's reason is its last line
            raise ValueError(f"{self.path}: {self.runtime_name} cannot load this graph ({type(err).__name__}: {detail})") from None
        self.batch_size = self.fixed_batch or batch_size
        self.config = meta.config
        self.class_names = meta.class_names
        self.num_classes = meta.num_classes
        self.preprocess_config = PreprocessConfig(
            image_size=meta.image_size,
            mean=meta.mean,
            std=meta.std,
            max_input_pixels=meta.config.preprocess.max_input_pixels,
        )
        self.postprocess_config = postprocess_config or meta.config.postprocess
        self.anchors = None if meta.nms_inside else anchors_for_config(meta.config.anchors, meta.image_size)

    def open_graph(self, providers: Sequence[str] | None, intra_op_threads: int | None, session_options: Any) -> int | None:
        """Open ``self.path`` in ONNX Runtime; returns the graph's fixed batch (None: dynamic)."""
        import onnxruntime as ort

        if (self.metadata.int8 or {}).get("runtime") == "openvino":
            # ONNX Runtime cannot run every NNCF graph (per-channel activation zero points).
            raise ValueError(
                f"{self.path}: this int8 graph was quantized by NNCF for OpenVINO: run it with --backend openvino "
                "(or export it with --quantizer onnxruntime for ONNX Runtime)"
            )
        if session_options is None:
            session_options = ort.SessionOptions()
            session_options.intra_op_num_threads = intra_op_threads or physical_cores()
            # One graph, one request at a time: parallelism inside ops, none between them.
            session_options.inter_op_num_threads = 1
            session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # No busy-waiting workers after a run: between runs this process decodes, resizes
            # and post-processes on the same cores, and spinning threads would compete with that
            # (end to end ~5% slower on 2 cores); the wake-up cost per run is far smaller.
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            # Errors only: ONNX Runtime's int8 (QDQ) graphs made it print a warning per unused
            # initializer (172 lines for Lite0) on every predict, eval and serve start.
            session_options.log_severity_level = 3
        self.session = ort.InferenceSession(
            self.path, session_options, providers=list(providers or ["CPUExecutionProvider"])
        )
        self.input_name = self.session.get_inputs()[0].name
        fixed = self.session.get_inputs()[0].shape[0]
        return fixed if isinstance(fixed, int) else None

    def infer(self, array: np.ndarray) -> list[np.ndarray]:
        """One run of the graph on a float32 [n, 3, h, w] array (n = the fixed batch, if any)."""
        return self.session.run(None, {self.input_name: array})

    @classmethod
    def from_weights(
        cls,
        weights: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str],
        *,
        model_name: str | None = None,
        image_size: int | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 8,
        max_input_pixels: int | None = None,
        score_threshold: float | None = None,
    ) -> OnnxDetector:
        """An ``.onnx`` file as it is (options that contradict its metadata are ValueErrors),
        or any other weights (checkpoint, registered name, URL) exported once into
        ``cache_dir`` (:func:`~efficientdet.export.cache.cached_onnx`). ``max_input_pixels``
        overrides the limit the graph's metadata carries."""
        from .cache import cached_onnx, onnx_providers, require_onnxruntime

        require_onnxruntime()
        providers = onnx_providers(device)  # checked before a possibly long export
        if is_graph_file(weights):
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"--weights {weights}: no such file")
            check_graph_options(path, read_onnx_metadata(path), model_name, image_size, score_threshold)
        else:
            # Imported here: running a graph needs neither the model code nor timm (slow imports).
            from ..factory import create_model
            from ..weights.registry import resolve_weights

            overrides: dict[str, Any] = {} if image_size is None else {"image_size": image_size}
            model = create_model(model_name, weights=weights, **overrides)
            path = cached_onnx(model, cache_dir, source=resolve_weights(weights)[0])
        detector = cls(path, providers=providers, batch_size=batch_size)
        if max_input_pixels is not None:
            detector.preprocess_config = dataclasses.replace(detector.preprocess_config, max_input_pixels=max_input_pixels)
        return detector

    def run(self, batch: torch.Tensor) -> list[np.ndarray]:
        """Session runs on a float32 [N, 3, h, w] CPU batch -> the graph's outputs for the N
        images (a graph with a fixed batch runs in pieces of its size, the last one padded)."""
        n = batch.shape[0]
        array = batch.numpy()
        if self.fixed_batch is None:
            return self.infer(array)
        pieces = []
        for start in range(0, n, self.fixed_batch):
            part = array[start : start + self.fixed_batch]
            if part.shape[0] < self.fixed_batch:
                pad = np.zeros((self.fixed_batch - part.shape[0], *part.shape[1:]), dtype=part.dtype)
                part = np.concatenate([part, pad])
            pieces.append(self.infer(part))
        return [np.concatenate([p[i] for p in pieces])[:n] for i in range(len(pieces[0]))]

    def prepare(self, decoded: Sequence[DecodedImage]) -> Prepared:
        """uint8 [3, H_i, W_i] images (or reduced ones) -> the graph's input (on the CPU), scales, full sizes."""
        with torch_threads(self.host_threads):
            batch, scales, sizes = preprocess_batch([d.cpu() for d in decoded], self.preprocess_config)
        return Prepared(batch, scales, sizes)

    def forward(self, prepared: Prepared) -> list[np.ndarray]:
        """The graph's outputs (see :mod:`efficientdet.export.onnx` for each layout)."""
        return self.run(prepared.inputs)

    def postprocess(
        self, outputs: list[np.ndarray], prepared: Prepared, config: PostprocessConfig | None = None
    ) -> Detections:
        """Graph outputs -> one dict per image in its own pixels (CPU tensors, class names)."""
        with torch_threads(self.host_threads):
            return self._postprocess(outputs, prepared, config or self.postprocess_config)

    def _postprocess(self, outputs: list[np.ndarray], prepared: Prepared, post: PostprocessConfig) -> Detections:
        scales, sizes = prepared.scales, prepared.image_sizes
        if self.metadata.nms_inside:
            dets = self._from_nms_outputs(outputs, scales, sizes, post.score_threshold)
            return finish_detections(dets, self.class_names)
        anchors = self.anchors
        assert anchors is not None  # __init__ builds them for every graph without NMS inside
        if self.metadata.candidates:
            logits, codes, rows = (torch.from_numpy(o) for o in outputs[:3])  # [N, C, K], [N, C, 4], [N, C]
            dets = postprocess_candidates(logits, codes, rows, anchors, post, scales=scales, image_sizes=sizes)
        else:
            cls, box = (torch.from_numpy(o) for o in outputs[:2])  # [N, T, K], [N, T, 4]
            # postprocess takes per-level [N, A*C, H, W] maps; the flat rows are one "level" of
            # height T, width 1 and A = 1 (its flattening gives back exactly [N, T, C]).
            dets = postprocess(
                [cls.transpose(1, 2).unsqueeze(-1)], [box.transpose(1, 2).unsqueeze(-1)], anchors, post,
                num_classes=self.num_classes, scales=scales, image_sizes=sizes,
            )  # fmt: skip
        return finish_detections(dets, self.class_names)

    def config_with_threshold(self, score_threshold: float | None) -> PostprocessConfig:
        """As every detector's; a graph with NMS inside cannot go below its own threshold."""
        graph_threshold = (self.metadata.postprocess or {}).get("score_threshold")
        # A graph whose metadata lacks its threshold (written by hand or another tool) is not checked.
        below = score_threshold is not None and graph_threshold is not None and score_threshold < graph_threshold
        if self.metadata.nms_inside and below:
            raise ValueError(
                f"this graph drops scores below {graph_threshold} itself; a lower score_threshold "
                f"({score_threshold}) needs a graph exported with it (or without NMS inside)"
            )
        return with_score_threshold(self.postprocess_config, score_threshold)

    def _from_nms_outputs(
        self,
        outputs: list[np.ndarray],
        scales: torch.Tensor,
        sizes: list[tuple[int, int]],
        score_threshold: float,
    ) -> list[dict[str, torch.Tensor]]:
        """NMS-inside outputs -> per-image dicts; ``score_threshold`` filters exactly when it is
        above the graph's own (a box below it never suppresses one above it). The boxes, once
        clipped to each image, go through the graph's class-wise NMS again."""
        boxes, scores, labels, counts = (torch.from_numpy(np.ascontiguousarray(o)) for o in outputs[:4])
        iou_threshold = (self.metadata.postprocess or {}).get("iou_threshold")  # None: a graph not written by us
        dets = []
        for i, (h, w) in enumerate(sizes):
            n = int(counts[i])
            b, s, lab = boxes[i, :n], scores[i, :n], labels[i, :n].to(torch.int64)
            if score_threshold > 0:
                keep = s >= score_threshold
                b, s, lab = b[keep], s[keep], lab[keep]
            b = clip_boxes(b / scales[i], float(h), float(w))
            if iou_threshold is not None and len(b) > 1:
                # The graph ran NMS on boxes clipped to the whole input, not to the letterboxed
                # image: boxes reaching into the padding overlap less there, and duplicates of
                # one object survived (IoU 0.6 after clipping, on 3 of 8 portrait photos).
                keep = batched_nms(b, s, lab, float(iou_threshold))
                b, s, lab = b[keep], s[keep], lab[keep]
            dets.append({"boxes": b, "scores": s, "labels": lab})
        return dets


def check_graph_options(
    path: Path, meta: OnnxMetadata, model_name: str | None, image_size: int | None, score_threshold: float | None
) -> None:
    """A ready graph fixes the variant and the input size: options asking otherwise are errors."""
    from ..variants import get_config

    if model_name is not None:
        try:
            wanted = get_config(model_name).name
        except ValueError:
            wanted = model_name
        if wanted != meta.model_name:
            raise ValueError(f"{path}: this graph is {meta.model_name}, not {model_name}")
    if image_size is not None and (image_size, image_size) != tuple(meta.image_size):
        h, w = meta.image_size
        raise ValueError(f"--image-size {image_size}: {path} has a fixed {h}x{w} input; drop --image-size or re-export")
    graph_thr = (meta.postprocess or {}).get("score_threshold")
    if meta.nms_inside and score_threshold is not None and graph_thr is not None and score_threshold < graph_thr:
        raise ValueError(
            f"{path} has NMS inside that drops scores below {graph_thr}; --score-threshold {score_threshold} needs a "
            "graph exported without --nms (or pass the normal weights)"
        )
