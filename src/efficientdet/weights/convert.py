"""Conversion of the reference (effdet) checkpoint key scheme to this package's module names.

effdet's TF-ported COCO weights are plain state dicts. The backbone keys (timm) are the same
here; the feature network and heads are renamed by explicit rules, one per key family.
"""

from __future__ import annotations

import re

import torch

# (pattern, replacement) applied in order; the first match wins.
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        # P6 (and P8) made from the level below: fpn.resample.{i}.conv.{conv|bn}
        (r"^fpn\.resample\.(\d+)\.conv\.conv\.", r"feature_net.extra_levels.{extra}.proj.conv."),
        (r"^fpn\.resample\.(\d+)\.conv\.bn\.", r"feature_net.extra_levels.{extra}.proj.bn."),
        (r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.edge_weights$", r"feature_net.cells.\1.nodes.\2.weight"),
        (
            r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.conv\.",
            r"feature_net.cells.\1.nodes.\2.proj.\3.conv.",
        ),
        (
            r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.bn\.",
            r"feature_net.cells.\1.nodes.\2.proj.\3.bn.",
        ),
        (r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.conv_dw\.", r"feature_net.cells.\1.nodes.\2.conv.dw."),
        (r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.conv_pw\.", r"feature_net.cells.\1.nodes.\2.conv.pw."),
        (r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.bn\.", r"feature_net.cells.\1.nodes.\2.conv.bn."),
        # non-separable variants: after_combine.conv.{conv|bn}
        (r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.conv\.", r"feature_net.cells.\1.nodes.\2.conv.conv."),
        (r"^(class|box)_net\.conv_rep\.(\d+)\.conv_dw\.", r"\1_head.convs.\2.dw."),
        (r"^(class|box)_net\.conv_rep\.(\d+)\.conv_pw\.", r"\1_head.convs.\2.pw."),
        (r"^(class|box)_net\.conv_rep\.(\d+)\.conv\.", r"\1_head.convs.\2.conv."),
        (r"^(class|box)_net\.bn_rep\.(\d+)\.(\d+)\.bn\.", r"\1_head.norms.\2.\3."),
        (r"^(class|box)_net\.predict\.conv_dw\.", r"\1_head.predict.dw."),
        (r"^(class|box)_net\.predict\.conv_pw\.", r"\1_head.predict.pw."),
        (r"^(class|box)_net\.predict\.conv\.", r"\1_head.predict.conv."),
        (r"^backbone\.", r"backbone."),
    ]
]


def is_effdet_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when the keys follow effdet's scheme (``fpn.*``, ``class_net.*``)."""
    return any(k.startswith(("fpn.", "class_net.", "box_net.")) for k in state_dict)


def effdet_to_native(state_dict: dict[str, torch.Tensor], num_backbone_levels: int = 3) -> dict[str, torch.Tensor]:
    """Rename an effdet state dict's keys to this package's names.

    effdet numbers the extra-level resamplers by pyramid index (3 = P6 when the backbone gives
    P3-P5); here they are numbered from 0. Keys matching no rule raise ``KeyError`` naming them
    (a file of some other model should not half-load).
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        for pattern, repl in _RULES:
            m = pattern.match(key)
            if m:
                if "{extra}" in repl:
                    repl = repl.replace("{extra}", str(int(m.group(1)) - num_backbone_levels))
                out[pattern.sub(repl, key, count=1)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"{len(unknown)} key(s) are not in effdet's EfficientDet scheme, e.g. {unknown[:5]}")
    return out
