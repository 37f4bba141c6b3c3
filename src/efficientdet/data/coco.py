"""COCO JSON detection annotations: reader and writer.

Categories are sorted by id and mapped to contiguous 0-based labels (``index.category_ids``
maps back, for writing COCO results). ``bbox`` is ``[x, y, w, h]`` in pixels, converted to
xyxy. ``iscrowd=1`` annotations are skipped (counted under ``counts["crowd"]``, no warning).
Annotation ids are not used for training, but a repeated id is reported: an exact copy
(same image, category and bbox) is dropped, a different annotation under a used id is kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeGuard

from efficientdet.data.common import (
    MAX_SIDE,
    OUTSIDE_ROOT_SKIPPED,
    Issues,
    check_box,
    is_file,
    resolve_under,
    short_repr,
    to_float,
)

from .records import DatasetIndex, DetectionRecord

__all__ = ["read_coco", "write_coco"]


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_json(path: Path) -> Any:
    """Parse a JSON file; a wholly unreadable file is a ValueError naming it."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a BOM (Windows editors)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: annotation file not found") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:  # a folder, no permission, I/O error
        raise ValueError(f"{path}: cannot read annotation file ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # [[[[... thousands deep: no annotation file looks like that
        raise ValueError(f"{path}: malformed JSON (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ValueError(f"{path}: malformed JSON ({exc})") from None


def read_coco(
    annotation_file: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    allow_outside_root: bool = False,
) -> DatasetIndex:
    """Read a COCO detection JSON into a :class:`DatasetIndex`.

    ``image_root`` is where ``file_name`` paths are resolved; by default the first of the
    annotation file's folder, its ``images/`` or ``data/`` (FiftyOne), and (for
    ``<any folder>/[instances_]<split>.json``) ``../<split>``, ``../images/<split>``, ``../images``, ``..`` that holds the images.
    Paths that are absolute or escape the root are refused unless ``allow_outside_root``.
    Images without annotations are kept as background records (M=0).

    Raises:
        FileNotFoundError: no such annotation file.
        ValueError: the file is not valid JSON or has no ``images`` list.
    """
    path = Path(os.path.normpath(annotation_file))  # messages show it without ".." parts
    data = load_json(path)
    images, annotations, categories = _top_level_lists(path, data)
    root = Path(image_root) if image_root is not None else _guess_root(path, images)
    root = Path(os.path.abspath(root))  # absolute and without ".." parts, as messages show it
    issues = Issues()
    if "annotations" not in data and images:
        # Legal for an image-info (test-dev) file, but training on it would learn nothing.
        issues.report(path, "file", "no 'annotations' list", "every image read as background (no objects)", "no_annotations")

    # Categories: sorted by id -> contiguous labels.
    cats = _read_categories(categories or [], path, issues)
    category_ids = sorted(cats)
    label_of = {cid: label for label, cid in enumerate(category_ids)}

    # Images: id -> (path, width, height); boxes appended in annotation order.
    seen_ids: set[int] = set()  # includes images skipped for a missing file
    held = Issues(max_warnings=0)  # no warning per missing image before the error below
    info = _read_images(images, path, root, allow_outside_root, seen_ids, held)
    if images and not info and held.counts["missing_image"] == len(images):
        raise FileNotFoundError(_no_images_message(path, images, root, image_root is None))
    issues.absorb(held)
    order = list(info)
    boxes: dict[int, list[tuple[float, float, float, float]]] = {k: [] for k in order}
    labels: dict[int, list[int]] = {k: [] for k in order}
    ann_ids: dict[Any, tuple[Any, ...]] = {}  # id -> (image_id, category_id, bbox) of its first use
    for i, ann in enumerate(annotations):
        obj = _read_annotation(ann, i, path, info, seen_ids, label_of, ann_ids, issues)
        if obj is not None:
            image_id, box, label = obj
            boxes[image_id].append(box)
            labels[image_id].append(label)

    records = [
        DetectionRecord(info[k][0], boxes[k], labels[k], image_id=k, width=info[k][1], height=info[k][2])
        for k in order
    ]
    if issues.counts["crowd"] and not any(r.num_objects for r in records):  # a few are normal (COCO: ~1%)
        issues.report(
            path, "annotations", f"no objects but {issues.counts['crowd']} iscrowd=1 annotations (crowd regions, not trained on)",
            "every image read as background (set iscrowd to 0 for single objects)", "all_crowd",
        )
    issues.finish(path)
    return DatasetIndex(
        records, [cats[c] for c in category_ids], issues.lines, root, category_ids, dict(issues.counts)
    )


def _read_images(
    images: list[Any], path: Path, root: Path, allow_outside_root: bool, seen_ids: set[int], issues: Issues
) -> dict[int, tuple[Path, int | None, int | None]]:
    """Image id -> (file, width, height) of the usable ``images`` entries, in file order."""
    info: dict[int, tuple[Path, int | None, int | None]] = {}
    first_id: dict[Path, int] = {}  # image file -> the first image id that names it
    for i, img in enumerate(images):
        entry = _read_image_entry(img, i, path, root, allow_outside_root, seen_ids, issues)
        if entry is not None:
            image_id, image_path, w, h = entry
            if first_id.setdefault(image_path, image_id) != image_id:  # e.g. two merged exports
                issues.report(
                    path, f"image id={image_id}", f"same file {image_path.name!r} as image id={first_id[image_path]}",
                    "kept, but its objects are not merged: the image is trained with each id's boxes alone",
                    "duplicate_file",
                )
            info[image_id] = (image_path, w, h)
    return info


def _top_level_lists(path: Path, data: Any) -> tuple[list[Any], list[Any], list[Any] | None]:
    """``(images, annotations, categories)`` of a parsed COCO file; ValueError if malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        what = f"a JSON {type(data).__name__}" if not isinstance(data, dict) else "no top-level 'images' list"
        raise ValueError(f"{path}: not a COCO annotation file ({what}; want an object with an 'images' list)")
    annotations = data.get("annotations", [])
    categories = data.get("categories")
    if not isinstance(annotations, list):
        raise ValueError(f"{path}: 'annotations' must be a list, got {type(annotations).__name__}")
    if categories is None and annotations:
        raise ValueError(f"{path}: has annotations but no 'categories' list")
    if not isinstance(categories, (list, type(None))):
        raise ValueError(f"{path}: 'categories' must be a list, got {type(categories).__name__}")
    return data["images"], annotations, categories


def _read_categories(categories: list[Any], path: Path, issues: Issues) -> dict[int, str]:
    """Category id -> name (the id as text when it has none), bad entries reported and skipped."""
    cats: dict[int, str] = {}
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            issues.report(path, f"category #{i}", "missing or non-integer 'id'", "category skipped", "bad_category")
            continue
        if cat["id"] in cats:
            issues.report(path, f"category id={cat['id']}", "duplicate category id", "second one skipped", "duplicate_category")
            continue
        name = cat.get("name")
        if name is not None and not isinstance(name, (str, int, float)):
            issues.report(
                path, f"category id={cat['id']}", f"name {short_repr(name)} is not text", "id used as its name", "bad_category"
            )
            name = None
        cats[cat["id"]] = str(name) if name is not None else str(cat["id"])
    ids_of: dict[str, list[int]] = {}
    for cid, name in sorted(cats.items()):
        ids_of.setdefault(name, []).append(cid)
    for name, ids in ids_of.items():
        if len(ids) > 1:  # merged exports: one concept split in two classes, and names that mislead
            issues.report(
                path, f"categories {', '.join(f'id={i}' for i in ids)}", f"same name {short_repr(name)}",
                f"read as {len(ids)} separate classes (give them one id, or distinct names)", "duplicate_category",
            )
    return cats


def _read_annotation(
    ann: Any,
    i: int,
    path: Path,
    info: dict[int, tuple[Path, int | None, int | None]],
    seen_ids: set[int],
    label_of: dict[int, int],
    ann_ids: dict[Any, tuple[Any, ...]],
    issues: Issues,
) -> tuple[int, tuple[float, float, float, float], int] | None:
    """``annotations[i]`` as ``(image id, checked xyxy box, label)``; None (after reporting or
    counting) if it is skipped."""
    if not isinstance(ann, dict):
        issues.report(path, f"annotation #{i}", f"not an object ({type(ann).__name__})", "annotation skipped", "malformed")
        return None
    ann_id = ann.get("id")
    rec = f"annotation id={short_repr(ann_id)}" if _is_int(ann_id) or isinstance(ann_id, str) else f"annotation #{i}"
    image_id = ann.get("image_id")
    if ann.get("iscrowd", 0) in (1, True):
        issues.count("crowd")
        return None
    if not _is_int(image_id) or image_id not in seen_ids:
        issues.report(path, rec, f"unknown image_id {short_repr(image_id)}", "annotation skipped", "unknown_image")
        return None
    if image_id not in info:
        return None  # its image was skipped (already reported)
    rec = f"{rec} (image id={image_id})"
    if (_is_int(ann_id) or isinstance(ann_id, str)) and _duplicate_id(ann, ann_id, ann_ids, issues, path, rec):
        return None
    cid = ann.get("category_id")
    if not _is_int(cid) or cid not in label_of:
        issues.report(path, rec, f"unknown category_id {short_repr(cid)}", "object dropped", "unknown_class")
        return None
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_num(v) for v in bbox):
        issues.report(
            path, rec, f"malformed bbox {short_repr(bbox)} (want [x, y, w, h] numbers)", "object dropped", "malformed"
        )
        return None
    x, y, bw, bh = (to_float(v) for v in bbox)
    _, w, h = info[image_id]
    size = (w, h) if w is not None and h is not None else None
    box = check_box((x, y, x + bw, y + bh), size, issues, path, rec)
    return (image_id, box, label_of[cid]) if box is not None else None


def _duplicate_id(
    ann: dict[str, Any], ann_id: Any, seen: dict[Any, tuple[Any, ...]], issues: Issues, path: Path, rec: str
) -> bool:
    """Report a repeated annotation id; True if this annotation is an exact copy (to drop)."""
    bbox = ann.get("bbox")
    box_key = tuple(bbox) if isinstance(bbox, list) and all(_is_num(v) for v in bbox) else object()
    key = (ann.get("image_id"), ann.get("category_id"), box_key)
    first = seen.setdefault(ann_id, key)
    if first is key:
        return False
    if first == key:
        issues.report(
            path, rec, "duplicate annotation (same id, image, category and bbox)", "copy dropped", "duplicate_annotation"
        )
        return True
    issues.report(path, rec, "duplicate annotation id", "kept (annotation ids are not used for training)", "duplicate_annotation")
    return False


def _read_image_entry(
    img: Any, i: int, path: Path, root: Path, allow_outside_root: bool, seen: set[int], issues: Issues
) -> tuple[int, Path, int | None, int | None] | None:
    """Validate one ``images[i]`` entry; None (after reporting) if it cannot be used."""
    if not isinstance(img, dict) or not _is_int(img.get("id")):
        issues.report(path, f"image #{i}", "missing or non-integer 'id'", "image skipped", "malformed")
        return None
    image_id = img["id"]
    rec = f"image id={image_id}"
    if image_id in seen:
        issues.report(path, rec, "duplicate image id", "second one skipped", "duplicate_image")
        return None
    seen.add(image_id)
    name = img.get("file_name")
    if not isinstance(name, str) or not name:
        issues.report(path, rec, f"missing or invalid file_name {short_repr(name)}", "image skipped", "malformed")
        return None
    image_path = resolve_under(root, name, allow_outside_root)
    if image_path is None:
        issues.report(
            path, rec, f"file_name {short_repr(name)} is absolute or escapes the image root {root}",
            OUTSIDE_ROOT_SKIPPED, "outside_root",
        )
        return None
    if not is_file(image_path):
        issues.report(path, rec, f"image file {image_path} not found", "image skipped", "missing_image")
        return None
    w, h = img.get("width"), img.get("height")
    if w is None and h is None:
        return image_id, image_path, None, None
    # Some exporters write 640.0: accept whole numbers of either type (inf // 1 is NaN: refused).
    if _is_num(w) and _is_num(h) and 0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE and w == w // 1 and h == h // 1:
        return image_id, image_path, int(w), int(h)
    issues.report(
        path, rec, f"invalid width/height {short_repr(w, 30)}x{short_repr(h, 30)} (want whole numbers 1..{MAX_SIDE})",
        "size ignored (boxes not clipped)", "bad_size",
    )
    return image_id, image_path, None, None


def _root_candidates(path: Path) -> list[Path]:
    """The folders where a COCO file's ``file_name`` paths may start, the json's own first."""
    folder = path.parent
    candidates = [folder, folder / "images", folder / "data"]  # data/: FiftyOne's export beside labels.json
    # COCO's annotations/instances_val2017.json beside val2017/, and the same shape under any
    # folder name (labels/train.json beside images/train/, as many converters write)
    split = path.stem.rsplit("_", 1)[-1]  # instances_val2017 -> val2017
    up = folder.parent
    candidates += [up / split, up / "images" / split, up / "images", up]
    return candidates


def _guess_root(path: Path, images: list[Any]) -> Path:
    """The candidate folder holding most of the first few images (default: the json's)."""
    folder, candidates = path.parent, _root_candidates(path)
    names = [img["file_name"] for img in images[:8] if isinstance(img, dict) and isinstance(img.get("file_name"), str)]
    best, best_hits = folder, 0
    for cand in candidates:
        hits = 0
        for n in names:
            p = resolve_under(cand, n, allow_outside_root=False)
            hits += p is not None and is_file(p)
        if hits > best_hits:
            best, best_hits = cand, hits
    return best


def _no_images_message(path: Path, images: list[Any], root: Path, guessed: bool) -> str:
    """Why a COCO file gave no image, and what to do: where ``file_name`` was looked for."""
    first = images[0].get("file_name") if isinstance(images[0], dict) else None
    where = f"under {root}"
    if guessed:
        tried = ", ".join(str(Path(os.path.abspath(c))) for c in _root_candidates(path))
        where = f"under any of {tried}"
    return (
        f"{path}: none of its {len(images)} images was found (file_name {first!r} looked for {where}); "
        "put the JSON in the folder its file_name paths start from, or pass that folder as "
        "read_coco(..., image_root=...)"
    )


def write_coco(
    index: DatasetIndex,
    annotation_file: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``index`` as a COCO detection JSON; ``file_name`` is relative to ``image_root``.

    ``image_root`` defaults to the annotation file's folder (so :func:`read_coco` finds the
    images under it without arguments). Images outside ``image_root`` get ``../`` paths:
    reading them back then needs ``allow_outside_root=True`` (or write the JSON into a folder
    above the images). Category ids are ``index.category_ids`` or 1..K; image ids are the
    records' ``image_id`` (ValueError if one repeats).
    Returns the annotation file's path.
    """
    from .images import image_size_of  # local: only needed when a record lacks its size

    out = Path(annotation_file)
    root = Path(image_root) if image_root is not None else out.parent
    cat_ids = index.category_ids or list(range(1, index.num_classes + 1))
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    file_of: dict[int, Path] = {}
    for rec in index.records:
        # A repeated id (records merged from two indices, each numbered from 0): read back, the
        # second image would be dropped and its boxes given to the first
        if rec.image_id in file_of:
            raise ValueError(
                f"{out}: image id {rec.image_id} is used by both {file_of[rec.image_id]} and {rec.image_path}; "
                "give the records unique image_id values"
            )
        file_of[rec.image_id] = rec.image_path
        w, h = rec.width, rec.height
        if w is None or h is None:
            h, w = image_size_of(rec.image_path)
        rel = os.path.relpath(os.path.abspath(rec.image_path), os.path.abspath(root)).replace(os.sep, "/")
        images.append({"id": rec.image_id, "file_name": rel, "width": w, "height": h})
        for box, label in zip(rec.boxes.tolist(), rec.labels.tolist()):
            x0, y0, x1, y1 = box
            bw, bh = x1 - x0, y1 - y0
            anns.append({
                "id": len(anns) + 1, "image_id": rec.image_id, "category_id": cat_ids[label],
                "bbox": [round(v, 4) for v in (x0, y0, bw, bh)], "area": round(bw * bh, 4), "iscrowd": 0,
            })
    categories = [{"id": c, "name": n, "supercategory": "object"} for c, n in zip(cat_ids, index.class_names)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}), encoding="utf-8")
    return out
