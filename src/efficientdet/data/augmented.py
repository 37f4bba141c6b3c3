"""A training dataset with the optional augmentations: mosaic -> GridMask -> AutoAugment ->
``TrainTransform`` (scale jitter, crop, flip) -> mixup.

GridMask and AutoAugment see the decoded image at its original resolution, as in the official
input pipeline (google/automl ``dataloader.py``). Mosaic and mixup need other samples, hence a
dataset rather than a transform; ``close_mosaic`` turns both off for the last epochs
(:meth:`AugmentedDataset.set_epoch`, called by the training loader each epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .autoaugment import AutoAugment
from .crops import CropTransform
from .dataset import DetectionDataset, Sample
from .gridmask import GridMask
from .mosaic import mixup, mosaic4
from .records import DatasetIndex
from .transforms import TrainTransform

__all__ = ["AugmentedDataset", "build_pre_ops", "check_probability"]

PreOp = Callable[[Tensor, Tensor, Tensor], "tuple[Tensor, Tensor, Tensor]"]


def check_probability(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: {value!r} is not a probability in [0, 1]")
    return float(value)


def build_pre_ops(policy: str = "none", grid_mask: bool = False) -> list[PreOp]:
    """The per-image ops before resizing, in the official order (GridMask, then AutoAugment)."""
    ops: list[PreOp] = []
    if grid_mask:
        ops.append(GridMask())
    if policy != "none":
        ops.append(AutoAugment(policy))
    return ops


class AugmentedDataset(DetectionDataset):
    """:class:`DetectionDataset` whose samples go through the extra augmentations.

    Samples are dicts as ``DetectionDataset``'s, with ``content_size``; a mosaic sample keeps the
    first image's ``image_id`` and ``path``. Randomness comes from torch's global generator
    (``SeededDataset`` seeds it per sample).
    """

    def __init__(
        self,
        index: DatasetIndex,
        transform: TrainTransform | CropTransform,
        max_pixels: int | None,
        pre_ops: Sequence[PreOp] = (),
        mosaic: float = 0.0,
        mixup: float = 0.0,
        close_mosaic: int = 0,
        epochs: int = 0,
    ) -> None:
        super().__init__(index, transform=None, max_pixels=max_pixels)  # raw samples from the base
        self.final = transform
        self.pre_ops = list(pre_ops)
        self.mosaic = check_probability("augment.mosaic", mosaic)
        self.mixup = check_probability("augment.mixup", mixup)
        if self.mosaic > 0 and len(index) < 4:
            raise ValueError(f"augment.mosaic: a mosaic needs at least 4 training images, the dataset has {len(index)}")
        if self.mixup > 0 and len(index) < 2:
            raise ValueError(f"augment.mixup: mixup needs at least 2 training images, the dataset has {len(index)}")
        self.close_at = epochs - close_mosaic if close_mosaic > 0 else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def mixing(self) -> bool:
        """Whether mosaic / mixup are on this epoch (off from epoch ``epochs - close_mosaic``)."""
        return self.close_at is None or self.epoch < self.close_at

    def _raw(self, i: int) -> Sample | None:
        return super().__getitem__(i)

    def _one(self, i: int) -> tuple[Sample, tuple[Tensor, Tensor, Tensor, tuple[int, int]]] | None:
        """Sample i (or a mosaic around it) through the pre-ops and the train transform."""
        sample = self._raw(i)
        if sample is None:
            return None
        image, boxes, labels = sample["image"], sample["boxes"], sample["labels"]
        if self.mixing and self.mosaic > 0 and float(torch.rand(())) < self.mosaic:
            others = [self._raw(int(j)) for j in torch.randint(len(self), (3,))]
            if all(o is not None for o in others):
                rest = [(o["image"], o["boxes"], o["labels"]) for o in others]  # type: ignore[index]
                parts = [(image, boxes, labels), *rest]
                if isinstance(self.final, CropTransform):
                    # full-resolution tiles: whole images shrunk to the mosaic would teach
                    # objects at a fraction of the crops' scale (a 17 px median box became 4 px)
                    cut = [self.final.cut(*part) for part in parts]
                    image, boxes, labels = mosaic4(cut, self.final.crop_size, resize=False)
                else:
                    image, boxes, labels = mosaic4(parts, max(self.final.image_size))
        for op in self.pre_ops:
            image, boxes, labels = op(image, boxes, labels)
        return sample, self.final(image, boxes, labels)

    def __getitem__(self, i: int) -> Sample | None:
        first = self._one(i)
        if first is None:
            return None
        sample, out = first
        if self.mixing and self.mixup > 0 and float(torch.rand(())) < self.mixup:
            second = self._one(int(torch.randint(len(self), ())))
            if second is not None:
                out = mixup(out, second[1])
        image, boxes, labels, content = out
        extra: dict[str, Any] = {"content_size": (int(content[0]), int(content[1]))}
        return {**sample, "image": image, "boxes": boxes, "labels": labels, **extra}
