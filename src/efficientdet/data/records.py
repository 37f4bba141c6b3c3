"""Detection records and dataset indices: what the format readers produce.

Boxes are always xyxy float32 pixels (continuous coordinates: a box covering pixel columns
0..9 is ``x0=0, x1=10``); labels are contiguous 0-based class indices into ``class_names``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["DataIssue", "DatasetIndex", "DetectionRecord", "data_issues_shown"]


class DataIssue(UserWarning):
    """A problem in a dataset (bad record, box, image) that was skipped or repaired."""


@dataclass(init=False)
class DetectionRecord:
    """One image and its objects.

    Attributes:
        image_path: the image file.
        boxes: ``[M, 4]`` float32 xyxy pixels (M may be 0: a background image).
        labels: ``[M]`` int64 0-based class indices.
        image_id: integer id (COCO's id; the position in the index for VOC and YOLO).
        width, height: image size in pixels if known (from the annotation or the header).
        difficult: ``[M]`` bool, Pascal VOC's ``<difficult>`` flags (all False for other
            formats). Training uses these objects like any other; the VOC AP50 of
            evaluation leaves them out, as the VOC devkit does.
    """

    image_path: Path
    boxes: torch.Tensor
    labels: torch.Tensor
    image_id: int
    width: int | None = None
    height: int | None = None
    difficult: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    def __init__(
        self,
        image_path: str | os.PathLike[str],
        boxes: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
        labels: torch.Tensor | np.ndarray | Sequence[int],
        image_id: int,
        width: int | None = None,
        height: int | None = None,
        difficult: torch.Tensor | np.ndarray | Sequence[bool] | None = None,
    ) -> None:
        # Written out (not generated) because it takes what the fields are made from (a str
        # path, lists, arrays) and normalises it once here, so every consumer can rely on
        # dtype and shape.
        self.image_path = Path(image_path)
        self.boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        self.image_id = image_id
        self.width = width
        self.height = height
        m = self.boxes.shape[0]
        self.difficult = (
            torch.zeros(m, dtype=torch.bool) if difficult is None else torch.as_tensor(difficult, dtype=torch.bool).reshape(-1)
        )
        if self.difficult.shape[0] != m:
            raise ValueError(f"{self.image_path}: {m} boxes but {self.difficult.shape[0]} difficult flags")
        if self.boxes.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"{self.image_path}: {self.boxes.shape[0]} boxes but {self.labels.shape[0]} labels"
            )

    @property
    def num_objects(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class DatasetIndex:
    """All records of a dataset split, plus what was skipped or repaired while reading.

    Attributes:
        records: the usable images, in annotation-file order.
        class_names: ``class_names[label]``.
        skipped: one human-readable line per skipped or repaired record or object, naming
            the file and the record (also emitted as :class:`DataIssue` warnings).
        root: the folder image paths were resolved under.
        category_ids: ``category_ids[label]`` is the source category id (COCO); None when
            the format has no ids of its own.
        counts: tallies of what was dropped or repaired (``"crowd"``, ``"clipped"``,
            ``"missing_image"``, ...), including things that are not warned about.
    """

    records: list[DetectionRecord]
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)
    root: Path = field(default_factory=Path)
    category_ids: list[int] | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_objects(self) -> int:
        return sum(r.num_objects for r in self.records)


@contextmanager
def data_issues_shown(shown: bool) -> Iterator[None]:
    """Within the block, :class:`DataIssue` warnings are dropped unless ``shown``. Under
    torchrun every rank reads the same dataset and finds the same problems: rank 0 alone
    says them (each line came once per rank)."""
    with warnings.catch_warnings():
        if not shown:
            warnings.simplefilter("ignore", DataIssue)
        yield
