"""YOLO (darknet / ultralytics) text labels: reader and writer.

One ``.txt`` per image, found by replacing the last ``images`` folder of the image path (within the dataset) with
``labels`` (or, if there is none, next to the image). Each line is ``class cx cy w h``
normalised to 0..1 (a segmentation polygon ``class x1 y1 x2 y2 ...`` becomes its bounding
box); the image size needed to convert to pixels is read from the image header. Images
without a label file, or with an empty one, are background images (M=0).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from efficientdet.data.common import (
    MAX_SIDE,
    Issues,
    check_box,
    clip_text,
    short_repr,
    yaml_error_text,
)

from .images import ImageError, image_size_of
from .records import DatasetIndex, DetectionRecord
from .yolo_splits import dataset_root, split_images

__all__ = ["read_yolo", "write_yolo"]

_YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml")
# Class-name lists that darknet and labelImg (YOLO mode) write beside the labels.
NAMES_FILES = ("classes.txt", "obj.names", "classes.names")
# Class ids at or above this are refused: without a names list every id up to the largest
# one becomes a class, so one corrupt line ("1e300 ...") must not create a billion classes.
MAX_CLASS_ID = 100_000

_Obj = tuple[int, tuple[float, float, float, float], Path, str]  # (class id, xyxy box, label file, record text)
_Parsed = tuple[Path, int, int, list[_Obj]]  # (image file, width, height, objects)


def read_yolo(
    root: str | os.PathLike[str],
    split: str | os.PathLike[str] | None = "train",
    names: Sequence[str] | None = None,
    allow_outside_root: bool = False,
) -> DatasetIndex:
    """Read a YOLO dataset into a :class:`DatasetIndex`.

    ``root`` is the dataset folder (or its ``data.yaml``). ``split`` is a split name, looked
    up as ``data.yaml[split]`` (a folder or list file, or a list of them, relative to the yaml's
    ``path:`` when that folder exists inside the root, or anywhere with ``allow_outside_root``,
    else relative to the root), ``images/<split>/``, ``<split>/images/`` or ``<split>/``; or a
    ``.txt`` list of image paths (relative to the root); None (or a name with none of these
    when ``images/`` holds only files) reads every image under ``images/``. Class names:
    ``names``, else ``data.yaml``'s ``names`` (list or {id: name}), else ``classes.txt`` /
    ``obj.names``, else ``"0"``, ``"1"``, ... up to ``data.yaml``'s ``nc``, or to the largest id used.
    Image ids are positions in the index.

    Raises:
        FileNotFoundError: no such root, split or list file.
        ValueError: ``data.yaml`` is unreadable.
    """
    root_path = Path(os.path.abspath(root))  # absolute and without ".." parts, as messages show it
    yaml_file = root_path if root_path.is_file() else None
    if yaml_file is not None:
        root_path = root_path.parent
    elif not root_path.is_dir():
        raise FileNotFoundError(f"{root_path}: YOLO dataset folder not found")
    else:
        yaml_file = next((root_path / n for n in _YAML_NAMES if (root_path / n).is_file()), None)
    cfg = _load_yaml(yaml_file) if yaml_file is not None else {}
    issues = Issues()
    class_names = list(names) if names is not None else _class_names(cfg, root_path)
    root_path, hint = dataset_root(cfg, root_path, allow_outside_root)
    images, whole_folder = split_images(root_path, split, cfg, allow_outside_root, issues, hint)
    parsed, used_labels = _parse_images(root_path, images, issues, _pose_values(cfg))
    if parsed and issues.counts["no_label_file"] >= len(parsed):  # labels/ misnamed or moved: nothing to learn
        issues.report(
            root_path, f"split {split!r}" if split is not None else "images",
            f"none of the {len(parsed)} images has a label file (looked for {_label_path(root_path, parsed[0][0])}, ...)",
            "every image read as background (no objects)", "no_labels",
        )
    if whole_folder:
        _report_orphan_labels(images, used_labels, issues)
    if names is None and not class_names:
        top = max((o[0] for p in parsed for o in p[3]), default=-1)
        class_names = [str(i) for i in range(top + 1)]
    records: list[DetectionRecord] = []
    for image, w, h, objects in parsed:
        boxes: list[tuple[float, float, float, float]] = []
        labels: list[int] = []
        for cls, box, label_file, rec in objects:
            if cls >= len(class_names):
                issues.report(label_file, rec, f"class id {cls} not in the {len(class_names)} class names", "object dropped", "unknown_class")
                continue
            boxes.append(box)
            labels.append(cls)
        records.append(DetectionRecord(image, boxes, labels, image_id=len(records), width=w, height=h))
    issues.finish(root_path)
    return DatasetIndex(records, class_names, issues.lines, root_path, None, dict(issues.counts))


def _parse_images(
    root: Path, images: list[Path], issues: Issues, pose_values: int | None = None
) -> tuple[list[_Parsed], dict[Path, Path]]:
    """The usable images with their objects, and label file -> the image that used it."""
    parsed: list[_Parsed] = []
    used_labels: dict[Path, Path] = {}
    for image in images:
        label_file = _label_path(root, image)
        if label_file in used_labels:
            issues.report(
                image, "image", f"shares label file {label_file.name} with {used_labels[label_file].name}",
                "second image skipped", "duplicate_image",
            )
            continue
        used_labels[label_file] = image
        try:
            h, w = image_size_of(image)
        except ImageError as exc:
            kind = "missing_image" if "not found" in exc.problem else "bad_image"
            issues.report(label_file, f"image {image}", exc.problem, "image skipped", kind)
            continue
        if w > MAX_SIDE or h > MAX_SIDE:
            problem = f"header says {w}x{h} pixels (sides over {MAX_SIDE})"
            issues.report(label_file, f"image {image}", problem, "image skipped", "bad_image")
            continue
        objects = _read_labels(label_file, image, w, h, issues, pose_values)
        if objects is not None:
            parsed.append((image, w, h, objects))
    return parsed, used_labels


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: unreadable YAML ({clip_text(yaml_error_text(exc))})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"{path}: unreadable YAML ({clip_text(str(exc))})") from None
    except (RecursionError, ValueError) as exc:  # nested thousands deep; a 5000-digit number
        raise ValueError(f"{path}: unreadable YAML ({type(exc).__name__}: {clip_text(str(exc))})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _pose_values(cfg: dict[str, Any]) -> int | None:
    """The values after a label line's class id in a pose dataset (data.yaml ``kpt_shape: [K,
    D]``: the box, then K keypoints of D values), None for a detection dataset."""
    shape = cfg.get("kpt_shape")
    if (
        isinstance(shape, list) and len(shape) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
    ):  # fmt: skip
        return 4 + shape[0] * shape[1]
    return None


def _class_names(cfg: dict[str, Any], root: Path) -> list[str]:
    raw = cfg.get("names")
    if isinstance(raw, list):
        return [str(n) for n in raw]
    if isinstance(raw, dict):
        # {0: cat, 1: dog}; keys that are not ids in 0..MAX_CLASS_ID are ignored.
        ids = {int(k): str(v) for k, v in raw.items() if _is_class_id(k)}
        return [ids.get(i, str(i)) for i in range(max(ids, default=-1) + 1)]
    for folder in (root, root / "labels"):
        for n in NAMES_FILES:
            if (folder / n).is_file():
                text = (folder / n).read_text(encoding="utf-8-sig", errors="replace")
                return [line.strip() for line in text.splitlines() if line.strip()]
    nc = cfg.get("nc")  # data.yaml with nc but no names (Ultralytics numbers the classes)
    if isinstance(nc, int) and _is_class_id(nc):
        return [str(i) for i in range(nc)]
    return []


def _is_class_id(key: Any) -> bool:
    if isinstance(key, bool):
        return False
    if isinstance(key, str):
        key = key.strip()
        if not (key.isascii() and key.isdigit()):  # "²".isdigit() is True, int("²") fails
            return False
        key = int(key) if len(key) < 10 else MAX_CLASS_ID
    return isinstance(key, int) and 0 <= key < MAX_CLASS_ID


def _report_orphan_labels(images: list[Path], used: dict[Path, Path], issues: Issues) -> None:
    """Report label files in the split's labels/ folders that no image uses.

    Usually a renamed image or a different extension (``a.JPG`` vs ``a.jpeg.txt``): those
    objects would silently be missing. Only for whole folders (a list file may name a subset)
    and separate labels/ folders (next to the images, other .txt files are common).
    """
    folders = {lf.parent for lf, img in used.items() if lf.parent != img.parent}
    for folder in sorted(folders):
        for lf in sorted(folder.glob("*.txt")):
            if lf not in used and lf.name not in NAMES_FILES:
                issues.report(lf, "label file", "no image with this name", "ignored", "orphan_label")


def _label_path(root: Path, image: Path) -> Path:
    """``image``'s label file: its last ``images`` folder (the root's own name or below it)
    swapped for ``labels``, else beside it. Folders above the root do not count: a flat
    labelImg folder under ``~/images/`` keeps its labels beside the images."""
    parts = list(image.parts)
    first = len(root.parts) - 1 if image.is_relative_to(root) else 0
    for i in range(len(parts) - 2, first - 1, -1):  # the last "images" folder (not the file name)
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _read_labels(
    label_file: Path, image: Path, w: int, h: int, issues: Issues, pose_values: int | None = None
) -> list[_Obj] | None:
    """Objects of one label file (pixel xyxy); None (after reporting) if unreadable.

    ``pose_values``: the values after the class id of a pose dataset's line (``cx cy w h`` +
    keypoints): only the box is read from those."""
    if not label_file.exists():
        issues.count("no_label_file")  # a background image: legal, but worth a tally
        return []
    try:
        text = label_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        issues.report(label_file, f"image {image.name}", f"unreadable label file ({exc})", "image skipped", "malformed")
        return None
    objects: list[_Obj] = []
    for n, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        rec = f"line {n}"
        try:
            cls_f = float(tokens[0])
            values = [float(t) for t in tokens[1:]]
        except ValueError:
            issues.report(label_file, rec, f"non-numeric value in {short_repr(line.strip())}", "line skipped", "malformed")
            continue
        if pose_values is not None and len(values) == pose_values:
            values = values[:4]  # the box; a pose line's keypoints would read as a polygon
        polygon = len(values) >= 6 and len(values) % 2 == 0 and pose_values is None
        if len(values) != 4 and not polygon:
            expected = f"'class cx cy w h' + {pose_values - 4} keypoint values" if pose_values else "'class cx cy w h' (or a polygon)"
            issues.report(label_file, rec, f"expected {expected}, got {len(tokens)} values", "line skipped", "malformed")
            continue
        if not (math.isfinite(cls_f) and cls_f == int(cls_f) and 0 <= cls_f < MAX_CLASS_ID):
            issues.report(
                label_file, rec, f"invalid class id {short_repr(tokens[0])} (want a whole number 0..{MAX_CLASS_ID - 1})",
                "object dropped", "unknown_class",
            )
            continue
        if not all(math.isfinite(v) for v in values):  # min()/max() of a polygon would skip a NaN
            problem = f"non-finite coordinates in {short_repr(line.strip())}"
            issues.report(label_file, rec, problem, "object dropped", "nonfinite_box")
            continue
        if polygon:
            xs, ys = values[0::2], values[1::2]
            box = (min(xs) * w, min(ys) * h, max(xs) * w, max(ys) * h)
        else:
            cx, cy, bw, bh = values
            box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
        checked = check_box(box, (w, h), issues, label_file, rec)
        if checked is not None:
            objects.append((int(cls_f), checked, label_file, rec))
    return objects


def write_yolo(
    index: DatasetIndex, out_dir: str | os.PathLike[str], split: str = "train", link_images: bool = False
) -> Path:
    """Write ``index`` as ``out_dir/images/<split>/`` + ``labels/<split>/*.txt`` + ``data.yaml``.

    Images are copied (or symlinked with ``link_images``). An existing ``data.yaml`` is
    updated (its names must match). Background images get an empty label file.
    Returns the ``data.yaml`` path.
    """
    out = Path(out_dir)
    img_dir, lbl_dir = out / "images" / split, out / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for rec in index.records:
        name = rec.image_path.name
        if Path(name).stem in used:  # same file name from different folders: keep both
            name = f"{rec.image_id}_{name}"
        used.add(Path(name).stem)
        target = img_dir / name
        if link_images:
            target.unlink(missing_ok=True)
            target.symlink_to(rec.image_path.absolute())
        else:
            shutil.copyfile(rec.image_path, target)
        w, h = rec.width, rec.height
        if w is None or h is None:
            h, w = image_size_of(rec.image_path)
        lines = []
        for (x0, y0, x1, y1), label in zip(rec.boxes.tolist(), rec.labels.tolist()):
            vals = ((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h)
            # 8 decimals: sub-1e-3 px round trips even for 10k-pixel images
            lines.append(f"{label} " + " ".join(f"{v:.8f}".rstrip("0").rstrip(".") for v in vals))
        (lbl_dir / f"{Path(name).stem}.txt").write_text("".join(s + "\n" for s in lines), encoding="utf-8")

    yaml_file = out / "data.yaml"
    cfg = _load_yaml(yaml_file) if yaml_file.is_file() else {}
    if "names" in cfg and _class_names(cfg, out) != list(index.class_names):
        raise ValueError(f"{yaml_file}: existing class names differ from the index's")
    cfg["names"] = list(index.class_names)
    cfg[split] = f"images/{split}"
    yaml_file.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return yaml_file
