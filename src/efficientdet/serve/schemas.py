"""The API's request options (parsed and checked) and its JSON answers (pydantic models)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel

__all__ = [
    "DETECT_FIELDS", "DETECT_OPENAPI", "ApiError", "DetectOptions", "DetectResponse", "Detection", "ImageSize", "ModelInfo",
    "Timing", "apply_options", "parse_options",
]  # fmt: skip

# Every field /v1/detect accepts (query string or multipart form); anything else is an error.
DETECT_FIELDS = ("image", "score_threshold", "classes", "max_detections")
MAX_DETECTIONS_LIMIT = 10_000


class ApiError(Exception):
    """An error answered as ``{"error": {"code": ..., "message": ...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class DetectOptions:
    """Checked options of one detect request (``classes``: label indices to keep, None: all)."""

    score_threshold: float
    classes: frozenset[int] | None
    max_detections: int | None


def parse_options(
    fields: Mapping[str, str],
    class_names: Sequence[str] | None,
    num_classes: int,
    default_threshold: float,
    min_threshold: float = 0.0,
) -> DetectOptions:
    """Check ``fields`` (strings from the query or the form); ApiError(422) naming the problem.

    ``min_threshold``: the lowest score the model can answer at (a graph with NMS inside drops
    lower scores itself), so a lower ``score_threshold`` is refused rather than answered short.
    """
    unknown = sorted(set(fields) - set(DETECT_FIELDS))
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field {unknown[0]!r}; expected {', '.join(DETECT_FIELDS)}")
    threshold = default_threshold
    if "score_threshold" in fields:
        threshold = _number(fields["score_threshold"], "score_threshold", float)
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            text = fields["score_threshold"]
            raise ApiError(422, "bad_score_threshold", f"score_threshold {text!r}: must be in 0..1")
        if threshold < min_threshold:
            message = (
                f"score_threshold {fields['score_threshold']!r}: must be at least {min_threshold}: this model's graph "
                f"has NMS inside that drops lower scores (see min_score_threshold in GET /v1/model)"
            )
            raise ApiError(422, "bad_score_threshold", message)
    max_det = None
    if fields.get("max_detections", "") != "":
        max_det = _number(fields["max_detections"], "max_detections", int)
        if not 0 <= max_det <= MAX_DETECTIONS_LIMIT:
            raise ApiError(422, "bad_max_detections", f"max_detections {max_det}: must be in 0..{MAX_DETECTIONS_LIMIT}")
    classes = _classes(fields["classes"], class_names, num_classes) if fields.get("classes") else None
    return DetectOptions(threshold, classes, max_det)


def _number(text: str, name: str, kind: type) -> Any:
    try:
        return kind(text)
    except (TypeError, ValueError):
        noun = "an integer" if kind is int else "a number"
        raise ApiError(422, f"bad_{name}", f"{name} {text!r}: expected {noun}") from None


def _classes(text: str, class_names: Sequence[str] | None, num_classes: int) -> frozenset[int]:
    """``"cat,dog"`` or ``"0,3"`` -> label indices; unknown names or indices are an error."""
    index = {name: i for i, name in enumerate(class_names or [])}
    out = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part in index:
            out.add(index[part])
        elif part.isdigit() and int(part) < num_classes:
            out.add(int(part))
        else:
            raise ApiError(422, "bad_classes", f"classes: unknown class {part!r} (see GET /v1/model)")
    if not out:  # "," kept nothing: a 200 with no detections, while "" (no filter) keeps all
        raise ApiError(422, "bad_classes", f"classes {text!r}: names no class; leave it out for all classes (see GET /v1/model)")
    return frozenset(out)


def apply_options(det: dict[str, Any], options: DetectOptions) -> dict[str, Any]:
    """Apply ``classes`` and ``max_detections`` to one image's detections (sorted by score,
    highest first): boxes [M, 4], scores [M], labels [M], names (optional)."""
    order = torch.argsort(det["scores"], descending=True, stable=True)
    if options.classes is not None:
        wanted = torch.tensor(sorted(options.classes), dtype=det["labels"].dtype)
        order = order[torch.isin(det["labels"][order], wanted)]
    if options.max_detections is not None:
        order = order[: options.max_detections]
    out = {k: det[k][order] for k in ("boxes", "scores", "labels")}
    if "names" in det:
        out["names"] = [det["names"][i] for i in order.tolist()]
    return out


class Detection(BaseModel):
    """One box: ``box`` is [x1, y1, x2, y2] in the uploaded image's pixels."""

    box: list[float]
    score: float
    label: int
    name: str | None = None


class ImageSize(BaseModel):
    width: int
    height: int


class Timing(BaseModel):
    """Milliseconds: reading + decoding the upload, waiting for and running its batch, in all."""

    decode_ms: float
    inference_ms: float
    total_ms: float


class DetectResponse(BaseModel):
    model: str
    image: ImageSize
    detections: list[Detection]
    time: Timing


class ModelInfo(BaseModel):
    name: str
    classes: list[str]
    num_classes: int
    input_size: list[int]  # [height, width]
    backend: str
    max_batch: int
    max_input_pixels: int
    max_upload_bytes: int
    default_score_threshold: float
    min_score_threshold: float  # a graph with NMS inside drops lower scores itself; else 0


# /v1/detect reads its request itself (raw body or multipart, with a size limit), so FastAPI
# cannot infer its inputs: without this, /docs and /openapi.json showed no body and no options.
_OPTION_SCHEMAS: dict[str, dict[str, Any]] = {
    "score_threshold": {"type": "number", "minimum": 0, "maximum": 1},
    "classes": {"type": "string"},
    "max_detections": {"type": "integer", "minimum": 0, "maximum": MAX_DETECTIONS_LIMIT},
}
_OPTION_HELP = {
    "score_threshold": "lowest score answered (default: the server's --score-threshold)",
    "classes": "comma-separated class names or indices to keep (default: all)",
    "max_detections": "at most this many detections, highest scores first",
}
_ERROR = {"description": "an error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}}}}}}}}  # fmt: skip
DETECT_OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": k, "in": "query", "required": False, "schema": v, "description": _OPTION_HELP[k]}
        for k, v in _OPTION_SCHEMAS.items()
    ],
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary", "description": "the image file"},
            **{k: {**v, "description": _OPTION_HELP[k]} for k, v in _OPTION_SCHEMAS.items()},
        }}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    }},
    "responses": {str(status): _ERROR for status in (400, 413, 422, 500, 503)},
}  # fmt: skip
