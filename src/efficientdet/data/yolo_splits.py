"""Where a YOLO split's images are: data.yaml entries (Ultralytics, Roboflow), the usual
folder layouts, image lists, and darknet's ``.data`` files (CVAT's "YOLO 1.1" export)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from efficientdet.data.common import (
    IMAGE_EXTENSIONS,
    OUTSIDE_ROOT_FLAGS,
    OUTSIDE_ROOT_SKIPPED,
    Issues,
    resolve_under,
    short_repr,
)

__all__ = ["dataset_root", "images_in", "split_images"]


def dataset_root(cfg: dict[str, Any], yaml_dir: Path, allow: bool) -> tuple[Path, str]:
    """The folder split entries are relative to, and a hint for "no images" errors.

    data.yaml's ``path:`` (Ultralytics' dataset root; relative to the yaml's folder) when it is
    an existing folder inside the yaml's folder, or anywhere with ``allow``; else the yaml's
    folder (a stale ``path:`` from another machine, as Colab exports carry, is ignored).
    """
    raw = cfg.get("path")
    if not isinstance(raw, str) or not raw.strip():
        return yaml_dir, ""
    target = resolve_under(yaml_dir, raw.strip(), allow_outside_root=True)
    if target is None or target == yaml_dir or not target.is_dir():
        return yaml_dir, ""
    if allow or resolve_under(yaml_dir, raw.strip(), allow_outside_root=False) is not None:
        return target, ""
    return yaml_dir, f"; data.yaml's path: {target} lies outside {yaml_dir} and is not followed ({OUTSIDE_ROOT_FLAGS})"


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def split_images(
    root: Path, split: str | os.PathLike[str] | None, cfg: dict[str, Any], allow: bool, issues: Issues, hint: str = ""
) -> tuple[list[Path], bool]:
    """Image files of the split, in order, and whether they are a whole folder (not a list)."""
    flat = root / "images" if (root / "images").is_dir() else root
    if split is None:
        return images_in(flat), True
    split_str = os.fspath(split)
    as_file = Path(split_str) if os.path.isabs(split_str) else root / split_str
    if split_str.endswith(".txt") and as_file.is_file():
        return _read_list(as_file, root, allow, issues), False
    entries = cfg.get(split_str)
    named = _yaml_entries(root, split_str, entries, allow, issues)
    found = [p for p in named if p.exists()]
    if found:  # every listed folder and list file, as Ultralytics reads "train: [a, b]"
        for p in named:
            if p not in found:
                issues.report(root, f"data.yaml {split_str}: {p}", "not found", "entry ignored", "missing_split")
        images = [img for p in found for img in (_read_list(p, root, allow, issues) if p.is_file() else images_in(p))]
        return list(dict.fromkeys(images)), all(p.is_dir() for p in found)
    darknet = _darknet_list(root, split_str) if entries is None else None
    if darknet is not None:  # CVAT's "YOLO 1.1" / darknet export: obj.data, train.txt
        return _read_list(darknet, root, allow, issues), False
    tried = [*named, root / "images" / split_str, root / split_str / "images", root / split_str]
    for folder in tried:
        if folder.is_dir():
            for p in named:  # data.yaml's own entry is not there: say which folder stands in for it
                issues.report(root, f"data.yaml {split_str}: {p}", "not found", f"read {folder} instead", "missing_split")
            return images_in(folder), True
    if split_str.endswith(".txt"):
        raise FileNotFoundError(f"{as_file}: YOLO image list not found")
    own = sorted(p for p in flat.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()) if flat.is_dir() else []
    if entries is None and own:
        # flat layout (images beside their labels, or images/ + labels/): there are no splits;
        # its sub-folders (a run's --output, predictions) are not part of it
        return own, True
    # A split data.yaml names but that is not there is an error, never every image of the folder.
    shown = ', '.join(map(str, dict.fromkeys(tried)))
    raise FileNotFoundError(f"{root}: no images for split {split_str!r} (tried {shown}){hint}")


def _yaml_entries(root: Path, split: str, entries: Any, allow: bool, issues: Issues) -> list[Path]:
    """The paths data.yaml gives for ``split`` (one or a list), those that are not paths or
    escape the root reported and left out."""
    paths: list[Path] = []
    for entry in entries if isinstance(entries, list) else [entries] if isinstance(entries, str) else []:
        p = resolve_under(root, entry, allow) if isinstance(entry, str) else None
        if isinstance(entry, str) and entry.startswith("../") and (p is None or not p.exists()):
            # Roboflow writes "train: ../train/images" beside train/; Ultralytics then reads
            # "train/images" under the yaml's folder when the first does not exist, and so do we.
            stripped = resolve_under(root, entry[3:], allow)
            p = stripped if stripped is not None and stripped.exists() else p
        if p is None:
            problem = "escapes the dataset root" if isinstance(entry, str) else "is not a path"
            issues.report(root, f"data.yaml {split}: {short_repr(entry)}", problem, "entry ignored", "outside_root")
            continue
        paths.append(p)
    return paths


# darknet's .data keys of each split name (darknet itself reads "valid")
_DARKNET_KEYS = {"val": ("valid", "val"), "valid": ("valid", "val")}


def _darknet_list(root: Path, split: str) -> Path | None:
    """The image list a darknet ``.data`` file in ``root`` names for ``split`` (``train =
    data/train.txt``: CVAT's "YOLO 1.1" export, AlexeyAB darknet), else ``<split>.txt`` beside
    it; None when there is neither."""
    data_files = [root / "obj.data"] if (root / "obj.data").is_file() else sorted(root.glob("*.data"))
    if data_files:
        values: dict[str, str] = {}
        for line in data_files[0].read_text(encoding="utf-8-sig", errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip().lower()] = value.strip()
        for key in _DARKNET_KEYS.get(split, (split,)):
            listed = _darknet_path(root, values[key], False) if values.get(key) else None
            if listed is not None and listed.is_file():
                return listed
    plain = root / f"{split}.txt"
    if any(plain.with_suffix(ext).is_file() for ext in IMAGE_EXTENSIONS):
        return None  # the label file of an image named like the split (a flat darknet folder)
    return plain if plain.is_file() else None


def _darknet_path(root: Path, entry: str, allow: bool) -> Path | None:
    """``entry`` under ``root``; darknet paths start from darknet's own folder, where the
    dataset is ``data/`` (``data/obj_train_data/a.jpg``): without that prefix when only that exists."""
    p = resolve_under(root, entry, allow)
    if (p is None or not p.exists()) and entry.startswith("data/"):
        stripped = resolve_under(root, entry[len("data/"):], allow)
        p = stripped if stripped is not None and stripped.exists() else p
    return p


def _read_list(list_file: Path, root: Path, allow: bool, issues: Issues) -> list[Path]:
    images, seen = [], set()
    for n, line in enumerate(list_file.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = _darknet_path(root, entry, allow)
        if p is None:
            issues.report(
                list_file, f"line {n}", f"image path {short_repr(entry)} is absolute or escapes the dataset root {root}",
                OUTSIDE_ROOT_SKIPPED, "outside_root",
            )
        elif p in seen:
            issues.report(list_file, f"line {n}", f"duplicate image {short_repr(entry)}", "second one skipped", "duplicate_image")
        else:
            seen.add(p)
            images.append(p)
    return images
