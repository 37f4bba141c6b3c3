"""``create_model``: a named variant, optionally with weights from a file, a name or a URL."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .config import ModelConfig
from .models.efficientdet import EfficientDet, build_model, check_model_sizes
from .variants import get_config
from .weights.coco import coco90_class_names
from .weights.convert import effdet_to_native, is_effdet_state_dict
from .weights.io import WeightsError, read_weights
from .weights.loading import checkpoint_num_classes, load_into_model, reorder_class_head
from .weights.registry import OfficialWeights, resolve_weights


def _normalise(name: str) -> str:
    return get_config(name).name


def _config_and_names(
    name: str | None, meta: dict[str, Any] | None, official: OfficialWeights | None, source: str
) -> tuple[ModelConfig, list[str] | None]:
    """The config (our checkpoint's own, else ``name``'s or the official weights' variant) and the
    checkpoint's class names; refuses a ``name`` the weights contradict."""
    if meta is not None and "config" in meta:
        config = ModelConfig.from_dict(meta["config"])
        if name is not None and _normalise(name) != config.name:
            raise WeightsError(f"{source}: the checkpoint holds {config.name!r} weights, not {name!r}")
        return config, meta.get("class_names")
    if name is None:
        if official is None:
            raise ValueError("name is required unless the weights say which model they are")
        name = official.model_name
    config = get_config(name)
    if official is not None and official.model_name != config.name:
        raise WeightsError(f"weights {official.name!r} are for {official.model_name!r}, not {config.name!r}")
    return config, None


def _native_state_dict(state_dict: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """``state_dict`` with this package's key names (an effdet one's renamed)."""
    if not is_effdet_state_dict(state_dict):
        return state_dict
    try:
        return effdet_to_native(state_dict)
    except KeyError as err:
        raise WeightsError(f"{source}: {err.args[0]}") from None


def _class_names(from_weights: list[str] | None, given: Sequence[str] | None, num_classes: int) -> list[str] | None:
    """``given`` (one per class), else the weights' names when they still describe ``num_classes`` classes."""
    if given is not None:
        if len(given) != num_classes:
            raise ValueError(f"{len(given)} class names given for {num_classes} classes")
        return list(given)
    if from_weights is not None and len(from_weights) != num_classes:
        return None  # the checkpoint's names describe classes this model no longer predicts
    return from_weights


def create_model(
    name: str | None = None,
    num_classes: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    pretrained_backbone: bool = False,
    class_names: Sequence[str] | None = None,
    **overrides: Any,
) -> EfficientDet:
    """Build an EfficientDet.

    Args:
        name: a variant from ``list_models()`` (``efficientdet_d0`` ...). May be omitted when
            ``weights`` names its architecture (our checkpoints, registered official weights).
        num_classes: classes to predict; default: as many as ``class_names``, else the
            checkpoint's, else 90 (COCO). When it
            differs from the checkpoint's, only the class head's last layer is re-initialised.
            The checkpoint's classes in another order (``class_names``) are reordered to match.
        weights: a local effdet ``.pth`` state dict, one of our ``.safetensors`` checkpoints,
            a registered name (``efficientdet_d0.coco``, see ``weights.registry``) or a URL.
        pretrained_backbone: ImageNet backbone weights (timm download; offline for Lite0).
        class_names: names of the classes (stored in checkpoints written from this model).
        overrides: config fields, dotted for sub-configs (``feature_net.fusion="softmax"``,
            ``image_size=640``, ``backbone.name="resnet50"``).
    """
    state_dict = None
    meta = None
    official = None
    source = ""
    if weights is not None:
        path, official = resolve_weights(weights)
        source = str(path)
        state_dict, meta = read_weights(path)
    config, names = _config_and_names(name, meta, official, source)
    if overrides:
        config = config.replace(**overrides)

    ckpt_classes = None
    if state_dict is not None:
        state_dict = _native_state_dict(state_dict, source)
        ckpt_classes = checkpoint_num_classes(state_dict, config.anchors.num_anchors)
        if names is None and ckpt_classes == 90 and (official is not None or meta is None):
            names = coco90_class_names()  # effdet / official weights are COCO-trained
    # `is not None`, not `or`: num_classes=0 gave the checkpoint's (or COCO's 90) classes, silently
    if num_classes is not None:
        target = num_classes
    elif class_names is not None:  # one name per class: the names say how many
        target = len(class_names)
    else:
        target = ckpt_classes or config.num_classes
    config = config.replace(num_classes=target)
    check_model_sizes(config)  # before the class names are matched to the count
    if state_dict is not None and names is not None and class_names is not None:
        # the same classes listed in another order (another format's export): each keeps its rows
        state_dict = reorder_class_head(state_dict, names, class_names, config.anchors.num_anchors)
    names = _class_names(names, class_names, target)

    model = build_model(config, pretrained_backbone=pretrained_backbone and state_dict is None)
    if state_dict is not None:
        load_into_model(model, state_dict, source)
    model.class_names = names
    return model


def save_model(model: EfficientDet, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> None:
    """Write ``model`` as our own checkpoint: safetensors tensors + the JSON config and class
    names in the file's metadata, atomically (a crash never leaves a half-written file). ``path``
    must end in ``.safetensors``: ``create_model`` knows the format by that name."""
    from .weights.io import write_weights

    # a DDP / DataParallel / EMA wrapper (was "'DataParallel' has no attribute 'config'"), torch.compile's
    while not isinstance(model, EfficientDet):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    if not isinstance(model, EfficientDet):
        raise TypeError(f"save_model takes an EfficientDet (from create_model), not {type(model).__name__}")
    if model.config is None:
        raise ValueError("the model has no config; build it with create_model")
    write_weights(path, model.state_dict(), model.config.to_dict(), model.class_names, extra)
