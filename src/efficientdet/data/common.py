"""Shared helpers for the format readers: issue reporting, box checks, safe path resolution."""

from __future__ import annotations

import math
import os
import reprlib
import struct
import sys
import warnings
from collections import Counter
from pathlib import Path, PureWindowsPath

from .records import DataIssue

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

# Individual warnings per reader call; the rest are summarised in one warning (every line is
# still in DatasetIndex.skipped). A broken 100k-image dataset must not print 100k warnings.
MAX_WARNINGS = 50

# Boxes sticking out of the image by at most this many pixels are clipped without a warning
# (still counted): float round-off and 0-vs-1-based corner conventions produce such boxes.
CLIP_TOLERANCE = 1.0

# Image sides above this are refused as implausible (JPEG stops at 65535, WebP at 16383): it
# also keeps every clipped coordinate exactly representable in the float32 boxes.
MAX_SIDE = 2**24
# What the readers say when they skip an image path that is absolute or leaves the dataset's root.
OUTSIDE_ROOT_FLAGS = (
    "allow_outside_root=True reads it: --allow-outside-root for eval and anchors, "
    "data.allow_outside_root=true for train and browse"
)
OUTSIDE_ROOT_SKIPPED = f"image skipped ({OUTSIDE_ROOT_FLAGS})"

# Record and problem texts are cut to this many characters: a 5000-character file name or
# bbox from a broken file must not turn into a 5000-character warning.
MAX_TEXT = 300

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def warn_issue(message: str) -> None:
    """Warn with :class:`DataIssue`, attributed to the first caller outside this package."""
    level, frame = 2, sys._getframe(1)  # level 2 = our caller
    # Walk out of efficientdet.data so the warning points at the user's read_* call.
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, DataIssue, stacklevel=level)


class Issues:
    """Collects skipped/repaired records for one reader call and warns about them."""

    def __init__(self, max_warnings: int = MAX_WARNINGS) -> None:
        self.lines: list[str] = []
        self.counts: Counter[str] = Counter()
        self.max_warnings = max_warnings
        self._warned = 0

    def report(self, file: object, record: str, problem: str, action: str, kind: str) -> None:
        """One line ``"<file>: <record>: <problem>; <action>"``, counted under ``kind``."""
        line = f"{file}: {clip_text(record)}: {clip_text(problem)}; {action}"
        self.lines.append(line)
        self.counts[kind] += 1
        if self._warned < self.max_warnings:
            self._warned += 1
            warn_issue(line)

    def absorb(self, held: Issues) -> None:
        """Take over the lines and counts of ``held`` (made with ``max_warnings=0``, so that a
        reader could first decide whether to raise instead), warning as :meth:`report` does."""
        for line in held.lines:
            self.lines.append(line)
            if self._warned < self.max_warnings:
                self._warned += 1
                warn_issue(line)
        self.counts.update(held.counts)

    def count(self, kind: str, n: int = 1) -> None:
        """Count something that is not worth a warning (crowd boxes, tiny clips)."""
        self.counts[kind] += n

    def finish(self, source: object) -> None:
        """Summarise the warnings that were held back."""
        hidden = len(self.lines) - self._warned
        if hidden > 0:
            warn_issue(
                f"{source}: {hidden} more data issues not shown individually "
                f"({len(self.lines)} in all; see DatasetIndex.skipped)"
            )


def check_box(
    box: tuple[float, float, float, float],
    size: tuple[int, int] | None,
    issues: Issues,
    file: object,
    record: str,
) -> tuple[float, float, float, float] | None:
    """Validate an xyxy box; clip it to ``size`` = (width, height) if known.

    Returns the box rounded to float32 (what the index stores), or None (after reporting)
    for non-finite, inverted, zero-area boxes, boxes wholly outside the image and boxes
    that collapse or overflow in float32 (e.g. ``x1 = x0 + 1e-9``, or ``1e39``).
    """
    if not all(math.isfinite(v) for v in box):
        issues.report(file, record, f"non-finite box coordinates {list(box)}", "object dropped", "nonfinite_box")
        return None
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        what = "zero-area" if x1 == x0 or y1 == y0 else "inverted"
        issues.report(file, record, f"{what} box {_fmt(box)} (xyxy)", "object dropped", "degenerate_box")
        return None
    out = box
    if size is not None:
        w, h = size
        overshoot = max(-x0, -y0, x1 - w, y1 - h)
        if overshoot > 0:
            out = (min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h))
            if out[2] <= out[0] or out[3] <= out[1]:
                issues.report(
                    file, record, f"box {_fmt(box)} (xyxy) lies outside the {w}x{h} image", "object dropped", "outside_box"
                )
                return None
            issues.count("clipped")
            if overshoot > CLIP_TOLERANCE:
                issues.report(
                    file, record, f"box {_fmt(box)} (xyxy) extends outside the {w}x{h} image",
                    f"clipped to {_fmt(out)}", "clipped_box",
                )
    f32 = (to_f32(out[0]), to_f32(out[1]), to_f32(out[2]), to_f32(out[3]))
    if not all(math.isfinite(v) for v in f32):
        issues.report(file, record, f"box {_fmt(box)} (xyxy) is beyond float32 range", "object dropped", "nonfinite_box")
        return None
    if f32[2] <= f32[0] or f32[3] <= f32[1]:
        issues.report(
            file, record, f"box {_fmt(box)} (xyxy) has zero area in float32", "object dropped", "degenerate_box"
        )
        return None
    return f32


def to_f32(v: float) -> float:
    """``v`` rounded to float32 (the dtype of the index's boxes); +-inf beyond its range."""
    try:
        return struct.unpack("f", struct.pack("f", v))[0]
    except OverflowError:  # (older Pythons; 3.11 packs an overflow as inf)
        return math.inf if v > 0 else -math.inf


def to_float(v: int | float) -> float:
    """``float(v)``, but +-inf for ints too large for a float (JSON allows 1e400 as an int)."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def clip_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters, keeping its head and tail."""
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def yaml_error_text(err: Exception) -> str:
    """A PyYAML error as one line, ``"<context> at line L column C: <problem> at line L column C"``
    (its own text is several lines, quoting the source and naming "<unicode string>")."""
    problem, mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    if problem is None or mark is None:  # not a marked error (or one made with its own text)
        return " ".join(str(err).split())
    text = f"{problem} at line {mark.line + 1} column {mark.column + 1}"
    context, where = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context is None:
        return text
    at = f" at line {where.line + 1} column {where.column + 1}" if where is not None else ""
    return f"{context}{at}: {text}"


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters (for values quoted from broken files).

    Bounded work and depth: a value may be a million-element or 10000-deep JSON list.
    """
    r = reprlib.Repr()  # (keyword arguments only from Python 3.12)
    r.maxlevel, r.maxtuple, r.maxlist, r.maxdict = 3, 6, 6, 4
    r.maxstring, r.maxother, r.maxlong = limit, limit, 40
    try:
        return clip_text(r.repr(value), limit)
    except ValueError:  # an int with more digits than Python will print
        return f"<{type(value).__name__}>"


def _fmt(box: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def resolve_under(root: Path, name: str, allow_outside_root: bool) -> Path | None:
    """``root / name`` if ``name`` is a relative path that stays inside ``root``, else None.

    The check is lexical (``..`` and absolute paths), so symlinks placed inside the root
    by the dataset's owner keep working. Backslashes are read as separators: annotation
    files written on Windows use them. The result is normalised (no ``..`` or ``.`` parts):
    messages show ``data/images/a.jpg``, not ``runs/x/../../data/images/a.jpg``. An absolute
    path that lies inside ``root`` is accepted (Ultralytics and Colab exports write
    ``train: /content/data/images/train``): it reads nothing outside the root.
    """
    name = name.replace("\\", "/")
    if PureWindowsPath(name).drive or os.path.isabs(name):
        norm = os.path.normpath(name)
        return Path(norm) if allow_outside_root or _is_inside(norm, os.path.abspath(root)) else None
    norm = os.path.normpath(name)
    if (norm == ".." or norm.startswith("../")) and not allow_outside_root:
        return None
    return Path(os.path.normpath(os.path.join(root, norm)))


def _is_inside(path: str, folder: str) -> bool:
    """Whether the absolute, normalised ``path`` is ``folder`` or lies under it (lexically)."""
    try:
        return os.path.isabs(path) and os.path.commonpath([folder, path]) == folder
    except ValueError:  # different drives (Windows)
        return False


def is_file(path: Path) -> bool:
    """``path.is_file()`` that is False (not an exception) for names with NUL bytes etc."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def fmt_num(v: float) -> str:
    """Compact number text for writers: integers without a fraction, else 4 decimals."""
    text = f"{v:.4f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
