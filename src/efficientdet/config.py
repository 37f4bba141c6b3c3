"""Frozen configuration dataclasses, one per concern.

Configs describe *what* to build; only the builders (``models.efficientdet.build_model``,
``Detector``) read them. Modules receive explicit arguments.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal

FusionMode = Literal["fast_normalized", "softmax", "unbounded", "sum"]
Topology = Literal["bifpn", "fpn", "panet"]
Activation = Literal["silu", "relu6", "relu"]


def check_score_threshold(value: float, name: str = "score_threshold") -> None:
    """A score threshold outside 0..1 (30 meant as 30 %, NaN) is a ValueError naming ``name``:
    it would silently give no detections, or every candidate."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} {value}: must be in 0..1 (a score, not a percentage)")


@dataclass(frozen=True)
class BackboneConfig:
    """A timm feature backbone giving stride 8/16/32 feature maps (P3, P4, P5)."""

    name: str = "tf_efficientnet_b0"
    drop_path_rate: float = 0.2
    # TF "same" padding: the official weights were trained with it. Only meaningful for the
    # ``tf_`` timm variants, whose stride-2 convs are made statically padded by our builder.
    static_same_padding: bool = True


@dataclass(frozen=True)
class FeatureNetConfig:
    """Feature network (BiFPN and the ablation topologies) between backbone and heads."""

    min_level: int = 3
    max_level: int = 7
    channels: int = 64
    repeats: int = 3
    topology: Topology = "bifpn"
    fusion: FusionMode = "fast_normalized"
    activation: Activation = "silu"
    separable: bool = True
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1


@dataclass(frozen=True)
class HeadConfig:
    """Class and box heads shared across levels (a BN per level)."""

    num_classes: int = 90
    repeats: int = 3
    prior_prob: float = 0.01


@dataclass(frozen=True)
class AnchorConfig:
    """Anchors: ``num_scales`` octave scales x ``aspect_ratios`` per location, per level."""

    min_level: int = 3
    max_level: int = 7
    num_scales: int = 3
    aspect_ratios: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
    anchor_scale: float = 4.0

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location."""
        return self.num_scales * len(self.aspect_ratios)


@dataclass(frozen=True)
class PreprocessConfig:
    """Resize (keeping aspect ratio), pad to ``image_size`` and normalise; pixel values 0-255."""

    image_size: tuple[int, int] = (512, 512)  # (height, width)
    mean: tuple[float, float, float] = (0.485 * 255, 0.456 * 255, 0.406 * 255)
    std: tuple[float, float, float] = (0.229 * 255, 0.224 * 255, 0.225 * 255)
    max_input_pixels: int = 100_000_000  # refuse larger decoded images (memory guard)


@dataclass(frozen=True)
class PostprocessConfig:
    """Official post-processing: top-k candidates, decode, class-wise NMS, top detections."""

    max_candidates: int = 5000
    iou_threshold: float = 0.5
    score_threshold: float = 0.001
    max_detections: int = 100
    nms: Literal["hard", "soft"] = "hard"
    soft_nms_sigma: float = 0.5

    def __post_init__(self) -> None:
        # Checked here, where every detector, eval and export read them: out of range they gave
        # no detections (score 30, max_detections 0) or no suppression (IoU 5), silently.
        check_score_threshold(self.score_threshold)
        check_score_threshold(self.iou_threshold, "iou_threshold")
        for name in ("max_candidates", "max_detections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} {value!r}: must be an integer of at least 1")
        if self.nms not in ("hard", "soft"):
            raise ValueError(f"unknown nms mode {self.nms!r}; expected 'hard' or 'soft'")
        if not self.soft_nms_sigma > 0:
            raise ValueError(f"soft_nms_sigma {self.soft_nms_sigma}: must be positive")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a detector and run it on images."""

    name: str
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    feature_net: FeatureNetConfig = field(default_factory=FeatureNetConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocess.image_size

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def max_stride(self) -> int:
        """Input sides must be multiples of this (the coarsest pyramid level's stride)."""
        return 2**self.feature_net.max_level

    def replace(self, **overrides: Any) -> ModelConfig:
        """Return a copy with overrides; dotted keys reach sub-configs (``feature_net.channels``).

        ``num_classes`` and ``image_size`` are accepted as shortcuts.
        """
        nested: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for key, value in overrides.items():
            if key == "num_classes":
                key = "head.num_classes"
            elif key == "image_size":
                key = "preprocess.image_size"
                value = (value, value) if isinstance(value, int) else tuple(value)
            if "." in key:
                section, _, attr = key.partition(".")
                nested.setdefault(section, {})[attr] = value
            else:
                top[key] = value
        valid = {f.name for f in fields(self)}
        for section, values in nested.items():
            if section not in valid or section == "name":
                raise ValueError(f"unknown config section {section!r}; valid: {sorted(valid - {'name'})}")
            sub = getattr(self, section)
            sub_valid = {f.name for f in fields(sub)}
            unknown = set(values) - sub_valid
            if unknown:
                raise ValueError(f"unknown field(s) {sorted(unknown)} in {section}; valid: {sorted(sub_valid)}")
            top[section] = dataclasses.replace(sub, **values)
        unknown = set(top) - valid
        if unknown:
            raise ValueError(f"unknown config field(s) {sorted(unknown)}; valid: {sorted(valid)}")
        return dataclasses.replace(self, **top)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict`` (lists from JSON become tuples again)."""

        def tuplify(value: Any) -> Any:
            if isinstance(value, list):
                return tuple(tuplify(v) for v in value)
            return value

        sections = {
            "backbone": BackboneConfig,
            "feature_net": FeatureNetConfig,
            "head": HeadConfig,
            "anchors": AnchorConfig,
            "preprocess": PreprocessConfig,
            "postprocess": PostprocessConfig,
        }
        kwargs: dict[str, Any] = {"name": data["name"]}
        for key, sub_cls in sections.items():
            if key in data:
                sub_valid = {f.name for f in fields(sub_cls)}
                kwargs[key] = sub_cls(**{k: tuplify(v) for k, v in data[key].items() if k in sub_valid})
        return cls(**kwargs)
