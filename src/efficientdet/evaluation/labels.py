"""How a model's labels meet a dataset's: by class name, the COCO 90-id layout, or label to
label (with a warning when the names differ), for every evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.common import warn_issue
from ..data.records import DatasetIndex

__all__ = ["label_mapping"]


def label_mapping(
    num_classes: int, model_names: Sequence[str] | None, index: DatasetIndex
) -> tuple[list[int], np.ndarray]:
    """How model labels relate to the dataset: ``(category_ids, to_dataset)``.

    ``category_ids[l]``: the COCO category id of model label ``l``; ``to_dataset[l]``: the
    dataset label of model label ``l`` (-1: a class the dataset lacks). When the model's class
    names include every dataset class name, labels map by name (a VOC split without one of the
    classes, the classes in another order in another format); else equal class counts map label
    to label. A model with more classes is also accepted when its names at the dataset's
    category ids (label = id - 1, the 90-class COCO layout) are the dataset's class names, as
    for the official COCO weights on COCO's 80 categories; anything else is a ValueError.
    """
    k = index.num_classes
    dataset_ids = list(index.category_ids) if index.category_ids is not None else list(range(1, k + 1))
    by_name = _map_by_name(num_classes, model_names, index.class_names)
    if num_classes == k and (by_name is None or (by_name == np.arange(k)).all()):
        _warn_unmatched_names(model_names, index.class_names)
        return dataset_ids, np.arange(k, dtype=np.int64)
    if (
        model_names is not None
        and index.category_ids is not None
        and all(1 <= c <= num_classes for c in dataset_ids)
        and all(model_names[c - 1] == n for c, n in zip(dataset_ids, index.class_names))
    ):
        to_dataset = np.full(num_classes, -1, dtype=np.int64)
        to_dataset[np.asarray(dataset_ids) - 1] = np.arange(k)
        return list(range(1, num_classes + 1)), to_dataset
    if by_name is not None:
        # Classes the dataset lacks get ids it does not use: COCOeval ignores their detections.
        spare = iter(range(max(dataset_ids, default=0) + 1, max(dataset_ids, default=0) + 1 + num_classes))
        return [dataset_ids[d] if d >= 0 else next(spare) for d in by_name.tolist()], by_name
    shown = ", ".join(list(model_names)[:5]) + (", ..." if len(model_names) > 5 else "") if model_names else "unnamed"
    raise ValueError(
        f"the model predicts {num_classes} classes ({shown}) but the dataset has {k} "
        f"({', '.join(index.class_names[:5])}{', ...' if k > 5 else ''}); evaluate a model trained on this dataset"
    )


def _warn_unmatched_names(model_names: Sequence[str] | None, names: Sequence[str]) -> None:
    """Say so when equal class counts map label to label although the names differ (a model
    trained on other classes, or the classes renamed): the AP is then of mismatched classes.
    Models without real names (``"0"``, ``"1"``, ... from an unnamed YOLO set) map silently."""
    if model_names is None or list(model_names) == list(names):
        return
    if all(str(n) == str(i) for i, n in enumerate(model_names)):
        return
    pairs = [f"{m!r} as {d!r}" for m, d in zip(model_names, names) if m != d]
    shown = ", ".join(pairs[:4]) + (f", ... ({len(pairs)} in all)" if len(pairs) > 4 else "")
    warn_issue(f"the model's class names differ from the dataset's; scored label to label: {shown}")


def _map_by_name(num_classes: int, model_names: Sequence[str] | None, names: Sequence[str]) -> np.ndarray | None:
    """``[num_classes]`` dataset label of each model label by class name (-1: not in the
    dataset), or None when names cannot decide (no model names, repeated dataset names, or a
    dataset class the model does not name)."""
    if model_names is None or len(model_names) != num_classes or len(set(names)) != len(names):
        return None
    label_of = {n: i for i, n in enumerate(names)}
    if not set(label_of) <= set(model_names):
        return None
    return np.asarray([label_of.get(n, -1) for n in model_names], dtype=np.int64)
