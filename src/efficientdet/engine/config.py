"""Training configuration: frozen dataclasses, a YAML file, and ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml


@dataclass(frozen=True)
class DataConfig:
    """Where the images and annotations are (any format ``read_dataset`` accepts)."""

    train: str = ""
    val: str | None = None
    workers: int = 2
    scale_range: tuple[float, float] = (0.1, 2.0)  # the official scale jitter
    hflip: float = 0.5
    photometric: bool = False
    allow_outside_root: bool = False
    # Sliced training: crop_size x crop_size crops at (near) full resolution, resized to the
    # model's input, instead of the whole image (data/crops.py). None: whole-image resize.
    crop_size: int | None = None
    crop_scale_range: tuple[float, float] = (0.8, 1.25)

    def __post_init__(self) -> None:
        _check_rules("data.", self, {
            "workers": _at_least(0), "scale_range": _ORDERED_POSITIVE, "hflip": _within(0, 1),
            "crop_size": _optional(_at_least(16)), "crop_scale_range": _ORDERED_POSITIVE,
        })  # fmt: skip


POLICIES = ("none", "v0", "v1", "v2", "v3")


@dataclass(frozen=True)
class AugmentConfig:
    """Extra training augmentations (data/augmented.py); all off by default (the official default)."""

    policy: str = "none"  # detection AutoAugment policy: none | v0 | v1 | v2 | v3
    grid_mask: bool = False  # GridMask (official: prob 0.5, ratio 0.6, rotate 10)
    mosaic: float = 0.0  # probability of a 4-image mosaic (Ultralytics default 1.0)
    mixup: float = 0.0  # probability of mixing in a second sample (YOLOv5 hyp.scratch-high: 0.1)
    close_mosaic: int = 0  # turn mosaic and mixup off for the last N epochs (Ultralytics: 10)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"augment.policy: unknown policy {self.policy!r}; valid: {', '.join(POLICIES)}")
        for key in ("mosaic", "mixup"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{key}: {value!r} is not a probability in [0, 1]")
        if isinstance(self.close_mosaic, bool) or not isinstance(self.close_mosaic, int) or self.close_mosaic < 0:
            raise ValueError(f"augment.close_mosaic: {self.close_mosaic!r} must be a whole number of epochs >= 0")


@dataclass(frozen=True)
class OptimConfig:
    """The official recipe by default: SGD 0.9, lr 0.08 per 64 images, warmup, cosine."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float | None = None  # None: 0.08 * batch / 64 (SGD) or 1e-3 * batch / 16 (AdamW)
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_epochs: float = 1.0
    warmup_start_factor: float = 0.1  # official: from 0.008 to 0.08
    min_lr_factor: float = 0.0
    clip_grad_norm: float = 10.0
    ema_decay: float = 0.9998
    ema_warmup_steps: int = 2000  # decay ramps up so the EMA tracks early training

    def __post_init__(self) -> None:
        _check_rules("optim.", self, {
            "optimizer": _one_of("sgd", "adamw"), "lr": _optional(_above(0)), "momentum": _within(0, 1),
            "weight_decay": _at_least(0), "warmup_epochs": _at_least(0), "warmup_start_factor": _within(0, 1),
            "min_lr_factor": _within(0, 1), "clip_grad_norm": _at_least(0), "ema_decay": _within(0, 1),
            "ema_warmup_steps": _at_least(0),
        })  # fmt: skip


IOU_LOSSES = ("none", "iou", "giou", "diou", "ciou")


@dataclass(frozen=True)
class LossConfig:
    """Focal + Huber as the official default; ``iou_loss_type`` adds the official optional
    IoU-family term on the decoded boxes (google/automl ``iou_loss_type`` / ``iou_loss_weight``)."""

    alpha: float = 0.25
    gamma: float = 1.5
    delta: float = 0.1
    box_loss_weight: float = 50.0
    label_smoothing: float = 0.0
    iou_loss_type: str = "none"  # none | iou | giou | diou | ciou
    iou_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.iou_loss_type not in IOU_LOSSES:
            raise ValueError(f"loss.iou_loss_type: unknown {self.iou_loss_type!r}; valid: {', '.join(IOU_LOSSES)}")
        if not self.iou_loss_weight >= 0:
            raise ValueError(f"loss.iou_loss_weight: {self.iou_loss_weight!r} must be >= 0")
        _check_rules("loss.", self, {
            "alpha": _within(0, 1), "gamma": _at_least(0), "delta": _above(0), "box_loss_weight": _at_least(0),
            "label_smoothing": _within(0, 1),
        })  # fmt: skip


@dataclass(frozen=True)
class AnchorsConfig:
    """Anchor-shape overrides of the model (None: the variant's) and the training-start check
    (warn when fewer than ``min_recall`` of the boxes can be matched; see engine/anchor_check.py)."""

    anchor_scale: float | None = None
    num_scales: int | None = None
    aspect_ratios: tuple[tuple[float, float], ...] | None = None
    check: bool = True
    min_recall: float = 0.95

    def __post_init__(self) -> None:
        _check_rules("anchors.", self, {
            "anchor_scale": _optional(_above(0)), "num_scales": _optional(_at_least(1)), "min_recall": _within(0, 1),
        })  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    model: str = "efficientdet_d0"
    weights: str | None = None  # checkpoint to start from (our format, effdet .pth, registry name)
    pretrained_backbone: bool = True
    image_size: int | tuple[int, int] | None = None  # None: the variant's native size; (height, width)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    anchors: AnchorsConfig = field(default_factory=AnchorsConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: int = 300
    max_steps: int | None = None  # stop after this many optimiser steps (tests, budgets)
    time_budget_minutes: float | None = None  # stop (with a checkpoint) after this long
    batch_size: int = 8  # per process
    grad_accum: int = 1
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    freeze_backbone: bool = False
    # BN running-statistics momentum while training (PyTorch convention). None keeps the
    # official 0.01 (TF decay 0.99), right for long runs; short fine-tunes need a faster one,
    # or eval-mode statistics still mostly reflect the pretraining data after a few hundred steps.
    bn_momentum: float | None = None
    # NHWC activations: faster convolutions with oneDNN on CPU and tensor cores on GPU
    channels_last: bool = True
    # CPU only, one process: split each batch over this many single-threaded workers (threads
    # of this process sharing one copy of the weights; engine/threads.py). "auto": as many as
    # PyTorch's threads; 1: off (operator-level threads only). BN normalises over each share.
    data_parallel_threads: int | Literal["auto"] = "auto"
    sync_bn: bool = True  # under DDP on GPUs
    # recompute backbone stages and BiFPN cells in backward instead of keeping their
    # activations (models/checkpointing.py): less memory for D4+, a slower step, same gradients
    grad_checkpointing: bool = False
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    output: str = "runs/train"
    # True or "auto": continue from output/last.ckpt when it exists, else start a new run (safe
    # to put in a config that is re-run after crashes); a path: that file. Workers restarted by
    # torchrun --max-restarts always resume from output/last.ckpt when there is one.
    resume: bool | str = False
    eval_every: int = 1  # epochs between validations (0: never)
    checkpoint_every_steps: int = 0  # extra checkpoints inside an epoch (0: epoch ends only)
    # epoch-end checkpoints at most this often (tiny epochs would otherwise spend their time
    # writing files); the last epoch, stops and signals always write one
    checkpoint_min_interval_s: float = 60.0
    max_consecutive_nonfinite: int = 5
    log_every: int = 10

    def __post_init__(self) -> None:
        whole = _at_least(1)
        _check_rules("", self, {
            "image_size": _optional((lambda v: min(v if isinstance(v, tuple) else (v,)) >= 1, "must be >= 1")),
            "epochs": whole, "max_steps": _optional(whole),
            "time_budget_minutes": _optional(_above(0)), "batch_size": whole, "grad_accum": whole,
            "amp": _one_of("auto", "off", "bf16", "fp16"), "bn_momentum": _optional(_within(0, 1)),
            "data_parallel_threads": (lambda v: v == "auto" or v >= 1, "must be auto or a whole number >= 1"),
            "eval_every": _at_least(0), "checkpoint_every_steps": _at_least(0),
            "checkpoint_min_interval_s": _at_least(0), "max_consecutive_nonfinite": whole, "log_every": whole,
        })  # fmt: skip
        aug = self.augment
        if (aug.mosaic or aug.mixup) and aug.close_mosaic >= self.epochs:  # else silently never on
            raise ValueError(
                f"augment.close_mosaic: {aug.close_mosaic} turns mosaic and mixup off for all {self.epochs} "
                "epochs; lower it or raise epochs"
            )

    def replace(self, **overrides: Any) -> TrainConfig:
        """Copy with overrides; dotted keys reach sections (``optim.lr``, ``data.train``)."""
        return _replace(self, overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """Every setting as a ``--config`` file that repeats this run (``resume`` left out: a
        copy of the run starts anew)."""
        settings = {k: v for k, v in self.to_dict().items() if k != "resume"}
        header = "# every setting of this run; `efficientdet train --config THIS_FILE output=NEW_FOLDER` repeats it\n"
        return header + yaml.safe_dump(settings, sort_keys=False)


# A preset for small datasets with a pretrained backbone: AdamW converges in far fewer steps
# than the COCO recipe, and the shorter EMA horizon suits runs of a few thousand steps.
PRESETS: dict[str, dict[str, Any]] = {
    "official": {},
    "finetune": {
        "optim.optimizer": "adamw",
        # measured at batch 8 with the frozen backbone below: 4e-3 beat 2e-3 on 3 of 3 raccoon
        # seeds, 6e-3 beat 4e-3 on 3 of 4 and on the mean (docs/augmentation.md); with the whole network
        # training, 2e-3 scored higher
        "optim.lr": 6e-3,
        "optim.weight_decay": 1e-4,
        "optim.warmup_epochs": 1.0,
        "optim.ema_decay": 0.999,
        "optim.ema_warmup_steps": 200,
        # the official 0.1-2.0 scored lower on raccoon in 4 of 4 seeds (docs/augmentation.md)
        "data.scale_range": (0.5, 1.5),
        # No extra augmentation: on raccoon (Lite0, 20 min) none of AutoAugment v0/v3, GridMask,
        # mixup, mosaic or photometric jitter raised AP beyond the seeds' spread; v0 was here
        # until 7 paired runs put it below no policy in 6 (docs/augmentation.md)
        "bn_momentum": 0.1,
        "epochs": 50,
        "pretrained_backbone": True,
        # Train BiFPN and heads on a frozen ImageNet backbone (BN statistics too), as TFLite Model
        # Maker fine-tunes EfficientDet-Lite by default: ~2.8x the steps per minute on a CPU, and
        # on raccoon higher AP in 3 of 3 paired seeds (docs/augmentation.md). Small data rarely
        # improves ImageNet features; `freeze_backbone=false` trains the whole network.
        "freeze_backbone": True,
    },
}


# -- checks: every field's type (against its annotation) and range, named in the error --------
Rule = tuple[Callable[[Any], bool], str]  # (accepts the value?, what it must be)


def _at_least(low: float) -> Rule:
    return (lambda v: v >= low, f"must be >= {low:g}")


def _above(low: float) -> Rule:
    return (lambda v: v > low, f"must be > {low:g}")


def _within(low: float, high: float) -> Rule:
    return (lambda v: low <= v <= high, f"must be in [{low:g}, {high:g}]")


def _one_of(*values: str) -> Rule:
    return (lambda v: v in values, f"must be one of {', '.join(values)}")


def _optional(rule: Rule) -> Rule:
    return (lambda v: v is None or rule[0](v), rule[1] + " (or null)")


_ORDERED_POSITIVE: Rule = (lambda v: 0 < v[0] <= v[1] < math.inf, "must be [low, high] with 0 < low <= high < inf")


def _check_rules(section: str, obj: Any, rules: dict[str, Rule]) -> None:
    """Raise ``ValueError`` naming the first field of ``obj`` (in ``section``) outside its range."""
    for name, (accepts, want) in rules.items():
        value = getattr(obj, name)
        if not accepts(value):  # written so that NaN fails too
            raise ValueError(f"{section}{name}: {value!r} {want}")


_MISMATCH = object()


def _conform(value: Any, hint: Any) -> Any:
    """``value`` as the annotation ``hint`` wants it (an int for a float field, a whole float for
    an int, a number for a text field, a list for a tuple), or ``_MISMATCH``."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return next((out for out in (_conform(value, a) for a in args) if out is not _MISMATCH), _MISMATCH)
    if origin is Literal:
        return value if any(type(value) is type(a) and value == a for a in args) else _MISMATCH
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _MISMATCH
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            return _MISMATCH
        out = tuple(_conform(v, a) for v, a in zip(value, items))
        return _MISMATCH if any(o is _MISMATCH for o in out) else out
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is float:  # "2e-3" too, also in a list: YAML 1.1 (PyYAML) reads it as text
        text = isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip())
        return float(value) if number or text else _MISMATCH
    if hint is int:
        whole = number and (isinstance(value, int) or float(value).is_integer())
        return int(value) if whole else _MISMATCH
    if hint is str:
        return str(value) if number or isinstance(value, str) else _MISMATCH
    if hint is type(None):
        return value if value is None else _MISMATCH
    return value if isinstance(value, hint) else _MISMATCH  # bool, the sections


def _describe(hint: Any) -> str:
    """What ``hint`` accepts, in the words of a YAML file."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0])}" if args[-1] is Ellipsis else f"[{', '.join(map(_describe, args))}]"
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "text", type(None): "null"}
    return words.get(hint, "a section of KEY: VALUE fields")


# PyYAML follows YAML 1.1, where "2e-3" (no dot) is a string, not a float.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _did_you_mean(given: str) -> str:
    """``"; did you mean augment.mosaic?"`` for ``mosaic``, ``data.mosaic`` (another section's) or a near spelling."""
    paths: list[str] = []
    for name, hint in get_type_hints(TrainConfig).items():
        paths += [f"{name}.{f.name}" for f in fields(hint)] if dataclasses.is_dataclass(hint) else [name]
    leaf = given.rsplit(".", 1)[-1]
    near = [p for p in paths if p.rsplit(".", 1)[-1] == leaf] or difflib.get_close_matches(given, paths, 1, 0.8)
    return f"; did you mean {' or '.join(near)}?" if near else ""


def _replace(obj: Any, overrides: dict[str, Any], prefix: str = "") -> Any:
    """``obj`` (a dataclass) with ``overrides`` (dotted keys) applied; ``prefix``: the keys' section, for errors."""
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    valid = {f.name: f for f in fields(obj)}
    for key in list(direct) + list(nested):
        if key not in valid:
            hint = _did_you_mean(prefix + key + "".join(f".{rest}" for rest in list(nested.get(key, {}))[:1]))
            raise ValueError(f"unknown training config field {prefix + key!r}; valid: {', '.join(sorted(valid))}{hint}")
    for key, sub in nested.items():
        current = getattr(obj, key)
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"{prefix + key!r} has no sub-fields")
        direct[key] = _replace(current, sub, f"{prefix}{key}.")
    for key, value in list(direct.items()):
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            direct[key] = _replace(current, value, f"{prefix}{key}.")
        else:
            hint = get_type_hints(type(obj))[key]
            direct[key] = _conform(value, hint)
            if direct[key] is _MISMATCH:
                raise ValueError(f"{prefix + key}: {value!r} is not {_describe(hint)}")
    return dataclasses.replace(obj, **direct)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` refusing a key given twice (PyYAML kept the last: a 2nd ``augment:`` dropped the 1st)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`, whose keys the next ones may override
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                where = f"line {key_node.start_mark.line + 1}"  # not the mark: 3 lines, naming "<unicode string>"
                raise yaml.constructor.ConstructorError(None, None, f"{where}: {key!r} given twice at the same level")
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as YAML (``optim.lr=0.01``, ``data.hflip=0``)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not key=value")
    key, _, raw = text.partition("=")
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:  # `optim.lr=[0.1`: was a ParserError traceback from the CLI
        from ..data.common import yaml_error_text  # here: the data package imports torch (CLI help must not)
        raise ValueError(f"override {text!r}: the value is not YAML ({yaml_error_text(err)})") from None


def load_train_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    preset: str | None = None,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Defaults (or ``base``, e.g. a resumed run's settings) <- preset <- YAML file <- overrides (later wins)."""
    config = base if base is not None else TrainConfig()
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
        config = config.replace(**PRESETS[preset])
    if path is not None:
        try:
            data = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader) or {}
        except (OSError, yaml.YAMLError) as err:
            from ..data.common import yaml_error_text
            raise ValueError(f"{path}: cannot read the training config: {yaml_error_text(err)}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training config must be a mapping of fields")
        try:  # a bad field or value: name the file it is in (the overrides name themselves)
            file_preset = data.pop("preset", None)
            if file_preset and not preset:
                config = load_train_config(None, None, file_preset)
            config = config.replace(**data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
    if overrides:
        items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
        config = config.replace(**dict(items))
    return config
