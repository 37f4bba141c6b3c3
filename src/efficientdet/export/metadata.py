"""Metadata stored in exported ONNX graphs (``ModelProto.metadata_props``, all strings)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ..config import ModelConfig

__all__ = ["CANDIDATE_LAYOUT", "CANDIDATE_OUTPUTS", "NMS_LAYOUT", "NMS_OUTPUTS", "OnnxMetadata", "RAW_LAYOUT", "RAW_OUTPUTS", "is_graph_file", "read_onnx_metadata"]

FORMAT_VERSION = "1"
RAW_OUTPUTS = ("cls_logits", "box_codes")
NMS_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
CANDIDATE_OUTPUTS = ("cand_logits", "cand_codes", "cand_anchors")
RAW_LAYOUT = "cls_logits[N,T,K] logits; box_codes[N,T,4] (ty,tx,th,tw); rows in anchor order (level,y,x,anchor)"
CANDIDATE_LAYOUT = (
    "cand_logits[N,C,K] logits; cand_codes[N,C,4] (ty,tx,th,tw); cand_anchors[N,C] int64 anchor rows: "
    "the C anchors with the largest class logit, best first"
)
NMS_LAYOUT = (
    "boxes[N,D,4] xyxy model-input pixels; scores[N,D]; labels[N,D] int64 (-1 = padding); "
    "num_detections[N] int64; rows sorted by score"
)


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported graph needs to be used without its Python model.

    ``image_size`` (h, w) is the graph's fixed input size; ``mean``/``std`` normalise 0..255
    pixels (``(x - mean) / std``); ``outputs`` are the graph's output names, described by
    ``output_layout``; ``config`` is the full model config (anchors, post-processing);
    ``postprocess`` the thresholds compiled into the graph when ``nms_inside``.
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
    int8: dict[str, Any] | None = None  # how the graph was quantized (export.quantize), None: float

    @property
    def candidates(self) -> bool:
        """Whether the graph outputs pre-selected candidates (``export_onnx(candidates=True)``)."""
        return self.outputs == CANDIDATE_OUTPUTS

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries (JSON values where not plain strings)."""
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
            "int8": json.dumps(self.int8),
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
                int8=json.loads(props.get("int8", "null")),  # absent in files of earlier versions
            )
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{source}: malformed efficientdet metadata ({err!r})") from None

    def write_to(self, proto: Any) -> None:
        """Set these entries on an ``onnx.ModelProto`` (other keys are kept)."""
        props = {p.key: p.value for p in proto.metadata_props}
        props.update(self.to_props())
        del proto.metadata_props[:]
        for key, value in props.items():
            proto.metadata_props.add(key=key, value=value)


def is_graph_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an exported ONNX graph (``.onnx``, any case) rather than weights."""
    return os.fspath(path).lower().endswith(".onnx")


def read_onnx_metadata(model: str | os.PathLike[str] | Any) -> OnnxMetadata:
    """Metadata of an exported graph: a path or a loaded ``onnx.ModelProto``."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"{source}: no such file")
        try:
            model = onnx.load(source, load_external_data=False)
        except Exception as err:  # protobuf's DecodeError and friends: not an ONNX file
            raise ValueError(f"{source}: not a readable ONNX graph ({type(err).__name__}: {err})") from None
    else:
        source = "model"
    return OnnxMetadata.from_props({p.key: p.value for p in model.metadata_props}, source)
