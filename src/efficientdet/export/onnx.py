"""ONNX export, with or without post-processing (NMS) inside the graph, plus its metadata.

Graph layouts (input ``images`` [N, 3, H, W] float32: resized, normalised, padded as
``efficientdet.preprocess.preprocess_batch`` makes it; N dynamic unless asked otherwise):

* ``include_postprocess=False``: outputs ``cls_logits`` [N, T, K] (class logits, before the
  sigmoid) and ``box_codes`` [N, T, 4] (ty, tx, th, tw), one row per anchor in the order of
  ``efficientdet.ops.anchors`` (level, row, column, anchor). We flatten in the graph because
  two outputs are simpler to consume than 2 x levels and the transposes cost nothing there;
  ``efficientdet.postprocess`` reproduces the detections from them.
* ``include_postprocess=True``: outputs ``boxes`` [N, D, 4] float32 xyxy in model-input pixels,
  ``scores`` [N, D] float32, ``labels`` [N, D] int64 and ``num_detections`` [N] int64; rows past
  ``num_detections`` are padding (0, 0, -1). Sigmoid, top-k, decoding with the anchors (a
  constant) and class-wise ONNX ``NonMaxSuppression`` run in the graph: a deployer divides the
  boxes by the resize scale and needs nothing else. See ``graph.DetectionGraph``.

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export based, the default in torch >= 2.9)
with the NMS op translated by ONNX Script; ``dynamo=False`` uses the deprecated TorchScript
exporter, which is several times faster to run and gives equivalent graphs.

Metadata (``ModelProto.metadata_props``, all strings) is described by :class:`OnnxMetadata`.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..ops.anchors import anchors_for_config
from .fuse import fuse_batchnorm
from .graph import DetectionGraph, FlatOutputs, dynamo_translations, register_torchscript_symbolic

__all__ = ["ExportError", "OnnxMetadata", "export_onnx", "read_onnx_metadata"]

FORMAT_VERSION = "1"
RAW_OUTPUTS = ("cls_logits", "box_codes")
NMS_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
RAW_LAYOUT = "cls_logits[N,T,K] logits; box_codes[N,T,4] (ty,tx,th,tw); rows in anchor order (level,y,x,anchor)"
NMS_LAYOUT = (
    "boxes[N,D,4] xyxy model-input pixels; scores[N,D]; labels[N,D] int64 (-1 = padding); "
    "num_detections[N] int64; rows sorted by score"
)


class ExportError(RuntimeError):
    """An export whose result failed validation (checker, loading or a test run)."""


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported graph needs to be used without its Python model.

    ``image_size`` (h, w) is the graph's fixed input size; ``mean``/``std`` normalise 0..255
    pixels; ``postprocess`` holds the thresholds compiled into the graph (when ``nms_inside``).
    """

    model_name: str
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    class_names: list[str] | None
    nms_inside: bool
    output_layout: str
    outputs: tuple[str, ...]
    config: ModelConfig
    postprocess: dict[str, Any] | None = None

    def to_props(self) -> dict[str, str]:
        return {
            "efficientdet.format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "image_size": json.dumps(list(self.image_size)),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "num_classes": str(self.num_classes),
            "class_names": json.dumps(self.class_names),
            "nms_inside": json.dumps(self.nms_inside),
            "output_layout": self.output_layout,
            "outputs": json.dumps(list(self.outputs)),
            "config": self.config.to_json(),
            "postprocess": json.dumps(self.postprocess),
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> "OnnxMetadata":
        if "efficientdet.format_version" not in props:
            raise ValueError(f"{source}: no efficientdet metadata; was it written by efficientdet.export?")
        try:
            h, w = json.loads(props["image_size"])
            return cls(
                model_name=props["model_name"],
                image_size=(int(h), int(w)),
                mean=tuple(float(v) for v in json.loads(props["mean"])),  # type: ignore[arg-type]
                std=tuple(float(v) for v in json.loads(props["std"])),  # type: ignore[arg-type]
                num_classes=int(props["num_classes"]),
                class_names=json.loads(props["class_names"]),
                nms_inside=bool(json.loads(props["nms_inside"])),
                output_layout=props["output_layout"],
                outputs=tuple(json.loads(props["outputs"])),
                config=ModelConfig.from_dict(json.loads(props["config"])),
                postprocess=json.loads(props["postprocess"]),
            )
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{source}: malformed efficientdet metadata ({err!r})") from None


def read_onnx_metadata(model: str | os.PathLike[str] | Any) -> OnnxMetadata:
    """Metadata of an exported graph: a path or a loaded ``onnx.ModelProto``."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        model = onnx.load(source, load_external_data=False)
    else:
        source = "model"
    return OnnxMetadata.from_props({p.key: p.value for p in model.metadata_props}, source)


def _image_size(model: nn.Module, config: ModelConfig, image_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if image_size is None:
        size = tuple(config.image_size)
    elif isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(image_size)
    divisor = int(getattr(model, "size_divisor", 32))
    if len(size) != 2 or any(s <= 0 or s % divisor for s in size):
        raise ValueError(f"image_size must be (h, w) with positive multiples of {divisor}, got {image_size}")
    return int(size[0]), int(size[1])


def inference_copy(model: nn.Module, fuse: bool) -> nn.Module:
    """A CPU float32 eval copy of ``model`` to trace (BNs folded when ``fuse``)."""
    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    return fuse_batchnorm(model, inplace=True) if fuse else model


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    image_size: int | tuple[int, int] | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = True,
    include_postprocess: bool = False,
    opset: int = 18,
    score_threshold: float | None = None,
    iou_threshold: float | None = None,
    max_detections: int | None = None,
    max_candidates: int | None = None,
    fuse: bool = True,
    dynamo: bool = True,
    check: bool = True,
) -> Path:
    """Export an ``EfficientDet`` to ONNX at ``path`` (one self-contained file); returns the path.

    Args:
        image_size: the graph's fixed input size (h, w) or a side; default the model's. Sides
            must be multiples of 32. Anchors depend on it, so it cannot be dynamic.
        batch_size: batch of the example input (and of the graph when not ``dynamic_batch``).
        include_postprocess: put decoding and NMS in the graph (see the module docs).
        opset: ONNX opset (17 or newer; the dynamo exporter emits 18 and converts down).
        score_threshold, iou_threshold, max_detections, max_candidates: the in-graph
            post-processing; default the model's ``config.postprocess``. NMS is hard NMS.
        fuse: fold BatchNorms first (the exporters fold them anyway; tracing the fused model is
            quicker).
        dynamo: use the torch.export-based exporter (else the TorchScript one).
        check: run ``onnx.checker`` and one ONNX Runtime inference; :class:`ExportError` if
            either fails.
    """
    config: ModelConfig | None = getattr(model, "config", None)
    if config is None:
        raise ValueError("the model has no config; build it with efficientdet.create_model")
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = _image_size(model, config, image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = inference_copy(model, fuse)
    num_classes = config.num_classes
    post = config.postprocess
    post_meta: dict[str, Any] | None = None
    wrapper: nn.Module
    if include_postprocess:
        if post.nms != "hard":
            warnings.warn(f"the model's post-processing uses {post.nms} NMS; the ONNX graph does hard NMS", stacklevel=2)
        post_meta = {
            "max_candidates": max_candidates if max_candidates is not None else post.max_candidates,
            "score_threshold": score_threshold if score_threshold is not None else post.score_threshold,
            "iou_threshold": iou_threshold if iou_threshold is not None else post.iou_threshold,
            "max_detections": max_detections if max_detections is not None else post.max_detections,
            "nms": "hard",
        }
        anchors = anchors_for_config(config.anchors, size)
        wrapper = DetectionGraph(
            net,
            anchors,
            num_classes,
            size,
            post_meta["max_candidates"],
            post_meta["score_threshold"],
            post_meta["iou_threshold"],
            post_meta["max_detections"],
        )
        post_meta.update(max_candidates=wrapper.k, max_detections=wrapper.max_detections)  # as clamped
        outputs = NMS_OUTPUTS
    else:
        wrapper = FlatOutputs(net, num_classes)
        outputs = RAW_OUTPUTS
    wrapper.eval()

    example = torch.zeros(batch_size, 3, *size)
    with warnings.catch_warnings():
        # Tracer warnings about Python bools on shapes are expected: the sizes are fixed.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        if dynamo:
            _export_dynamo(wrapper, example, path, outputs, opset, dynamic_batch)
        else:
            _export_torchscript(wrapper, example, path, outputs, opset, dynamic_batch)

    meta = OnnxMetadata(
        model_name=config.name,
        image_size=size,
        mean=tuple(config.preprocess.mean),  # type: ignore[arg-type]
        std=tuple(config.preprocess.std),  # type: ignore[arg-type]
        num_classes=num_classes,
        class_names=list(model.class_names) if getattr(model, "class_names", None) else None,
        nms_inside=include_postprocess,
        output_layout=NMS_LAYOUT if include_postprocess else RAW_LAYOUT,
        outputs=outputs,
        config=config.replace(image_size=size),
        postprocess=post_meta,
    )
    _write_metadata(path, meta)
    if check:
        check_onnx(path, batch_size)
    return path


def _export_dynamo(
    wrapper: nn.Module, example: torch.Tensor, path: Path, outputs: tuple[str, ...], opset: int, dynamic: bool
) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    try:
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=list(outputs),
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=dynamo_translations(),
            verbose=False,
        )
    except Exception as err:
        raise ExportError(f"torch.onnx.export (dynamo) failed: {err}") from err
    assert program is not None
    program.save(path, external_data=False)


def _export_torchscript(
    wrapper: nn.Module, example: torch.Tensor, path: Path, outputs: tuple[str, ...], opset: int, dynamic: bool
) -> None:
    register_torchscript_symbolic(opset)
    axes = None
    if dynamic:
        axes = {"images": {0: "batch"}, **{name: {0: "batch"} for name in outputs}}
    try:
        torch.onnx.export(
            wrapper,
            (example,),
            os.fspath(path),
            dynamo=False,
            input_names=["images"],
            output_names=list(outputs),
            opset_version=opset,
            dynamic_axes=axes,
        )
    except Exception as err:
        raise ExportError(f"torch.onnx.export (TorchScript) failed: {err}") from err


def _write_metadata(path: Path, meta: OnnxMetadata) -> None:
    import onnx

    proto = onnx.load(os.fspath(path))
    old = {p.key: p.value for p in proto.metadata_props}
    del proto.metadata_props[:]
    for key, value in {**old, **meta.to_props()}.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = proto.producer_name or "efficientdet"
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, os.fspath(tmp))
    os.replace(tmp, path)  # never leave a half-written file at ``path``


def check_onnx(path: str | os.PathLike[str], batch_size: int = 1) -> list[Any]:
    """``onnx.checker`` + one ONNX Runtime run on zeros; returns the outputs.

    Raises :class:`ExportError` naming the step that failed.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    path = os.fspath(path)
    try:
        onnx.checker.check_model(path)
    except Exception as err:  # onnx raises its own ValidationError types
        raise ExportError(f"{path}: onnx.checker rejected the exported model: {err}") from err
    try:
        meta = read_onnx_metadata(path)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        images = np.zeros((batch_size, 3, *meta.image_size), dtype=np.float32)
        result = session.run(None, {session.get_inputs()[0].name: images})
    except Exception as err:
        raise ExportError(f"{path}: ONNX Runtime could not run the exported model: {err}") from err
    names = [o.name for o in session.get_outputs()]
    if tuple(names) != tuple(meta.outputs):
        raise ExportError(f"{path}: graph outputs {names} do not match the metadata's {list(meta.outputs)}")
    return result

