"""One rule for a device name given by a user (the CLI's ``--device``, the training config's
``device``, ``Detector(device=...)``)."""

from __future__ import annotations

import torch

__all__ = ["parse_device"]


def parse_device(name: str | torch.device, field: str, choices: str, cpu_hint: str) -> torch.device:
    """``name`` as a torch device, or one ValueError naming ``field``: torch's own errors list some
    20 device types ("tpu") or say "Found no NVIDIA driver" mid-copy, and name no argument.

    ``choices`` and ``cpu_hint`` are the caller's spelling of the valid names and of the CPU
    (``--device cpu``, ``device=cpu``)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{field} {name}: not a device; use {choices}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{field} {name}: CUDA is not available on this machine; use {cpu_hint}")
    return device
