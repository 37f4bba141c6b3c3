"""Metadata stored in exported ONNX graphs (``ModelProto.metadata_props``, all strings)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ..config import ModelConfig

__all__ = ["CANDIDATE_LAYOUT", "CANDIDATE_OUTPUTS", "NMS_LAYOUT", "NMS_OUTPUTS", "RAW_LAYOUT", "RAW_OUTPUTS", "OnnxMetadata", "is_graph_file", "metadata_props", "read_onnx_metadata"]

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
    def from_props(cls, props: dict[str, str], source: str = "model") -> OnnxMetadata:
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
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        if os.path.isdir(source):  # was "no such file"
            raise ValueError(f"{source}: is a folder, not an ONNX graph file")
        if not os.path.isfile(source):
            raise FileNotFoundError(f"{source}: no such file")
        try:
            props = metadata_props(source)
        except (ValueError, OSError) as err:  # not an ONNX file (or not one we can read)
            raise ValueError(f"{source}: not a readable ONNX graph ({type(err).__name__}: {err})") from None
        return OnnxMetadata.from_props(props, source)
    return OnnxMetadata.from_props({p.key: p.value for p in model.metadata_props}, "model")


# ModelProto's field number of its key/value metadata entries (onnx.proto).
_METADATA_FIELD = 14


def metadata_props(path: str | os.PathLike[str]) -> dict[str, str]:
    """``ModelProto.metadata_props`` of the ONNX file at ``path``, read from protobuf's wire format.

    Only the model's top-level fields are walked and the graph is skipped by its length, so a
    large graph is not parsed, and ``onnx`` is not imported (its import takes ~0.5 s, nearly all
    of it in ``ml_dtypes``, on every ``predict`` / ``eval`` / ``serve`` start). ValueError where the
    bytes are not protobuf: a bad tag or wire type, a field running past the end. (As for
    ``onnx.load``, an empty file is an empty model; the runtimes reject what the graph lacks.)
    Hand-written because ``google.protobuf`` with a one-field stub message still reads the whole
    graph, as unknown fields: slower here than ``onnx.load`` itself.
    """
    props: dict[str, str] = {}
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        while f.tell() < size:
            field, wire = divmod(_varint(f), 8)
            if field < 1 or wire not in (0, 1, 2, 5):
                raise ValueError(f"bad protobuf tag (field {field}, wire type {wire}) at byte {f.tell()}")
            if wire == 2:  # length-delimited: a string, bytes or a sub-message
                length = _varint(f)
                if f.tell() + length > size:
                    raise ValueError(f"field {field} runs past the end of the file ({size} bytes)")
                if field == _METADATA_FIELD:
                    key, value = _string_entry(f.read(length))
                    props[key] = value
                else:  # the graph (field 7) and everything else
                    f.seek(length, os.SEEK_CUR)
            else:
                _varint(f) if wire == 0 else f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
        if f.tell() != size:
            raise ValueError(f"the last field runs past the end of the file ({size} bytes)")
    return props


def _varint(f: Any) -> int:
    """One base-128 varint from the file-like ``f`` (protobuf's integers and tags)."""
    value = 0
    for shift in range(0, 70, 7):
        byte = f.read(1)
        if not byte:
            raise ValueError("the file ends inside a number")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    raise ValueError("a number longer than 10 bytes")


def _string_entry(data: bytes) -> tuple[str, str]:
    """A ``StringStringEntryProto`` (field 1 key, field 2 value, both strings) from its bytes."""
    import io

    fields = {1: "", 2: ""}
    f = io.BytesIO(data)
    while f.tell() < len(data):
        field, wire = divmod(_varint(f), 8)
        if wire != 2:
            raise ValueError(f"metadata entry: field {field} is not a string")
        length = _varint(f)
        raw = f.read(length)
        if len(raw) != length:
            raise ValueError("metadata entry runs past its end")
        if field in fields:
            fields[field] = raw.decode("utf-8")
    return fields[1], fields[2]
