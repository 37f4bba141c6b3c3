"""Shared helpers for the format readers: issue reporting, box checks, safe path resolution."""

from __future__ import annotations

import math
import os
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
        line = f"{file}: {record}: {problem}; {action}"
        self.lines.append(line)
        self.counts[kind] += 1
        if self._warned < self.max_warnings:
            self._warned += 1
            warn_issue(line)

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

    Returns None (after reporting) for non-finite, inverted, zero-area boxes and boxes
    wholly outside the image.
    """
    if not all(math.isfinite(v) for v in box):
        issues.report(file, record, f"non-finite box coordinates {list(box)}", "object dropped", "nonfinite_box")
        return None
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        what = "zero-area" if x1 == x0 or y1 == y0 else "inverted"
        issues.report(file, record, f"{what} box {_fmt(box)} (xyxy)", "object dropped", "degenerate_box")
        return None
    if size is None:
        return box
    w, h = size
    overshoot = max(-x0, -y0, x1 - w, y1 - h)
    if overshoot <= 0:
        return box
    clipped = (min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        issues.report(
            file, record, f"box {_fmt(box)} (xyxy) lies outside the {w}x{h} image", "object dropped", "outside_box"
        )
        return None
    issues.count("clipped")
    if overshoot > CLIP_TOLERANCE:
        issues.report(
            file, record, f"box {_fmt(box)} (xyxy) extends outside the {w}x{h} image",
            f"clipped to {_fmt(clipped)}", "clipped_box",
        )
    return clipped


def _fmt(box: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def resolve_under(root: Path, name: str, allow_outside_root: bool) -> Path | None:
    """``root / name`` if ``name`` is a relative path that stays inside ``root``, else None.

    The check is lexical (``..`` and absolute paths), so symlinks placed inside the root
    by the dataset's owner keep working. Backslashes are read as separators: annotation
    files written on Windows use them.
    """
    name = name.replace("\\", "/")
    if PureWindowsPath(name).drive or os.path.isabs(name):
        return Path(name) if allow_outside_root else None
    norm = os.path.normpath(name)
    if norm == ".." or norm.startswith("../"):
        return Path(root, norm) if allow_outside_root else None
    return Path(root, norm)


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
