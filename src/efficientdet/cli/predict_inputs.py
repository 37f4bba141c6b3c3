"""``predict``'s inputs and where their annotated copies go: SOURCE arguments expanded to
images and videos, checked against ``--tile`` and ``--out`` before any work."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from efficientdet.outputs.video import VIDEO_EXTENSIONS

__all__ = ["PredictInput", "check_no_overwrite", "check_tile_fits", "collect_inputs", "output_paths"]


@dataclass
class PredictInput:
    path: Path
    kind: str  # "image" or "video"
    rel: Path  # output name relative to --out (extension replaced later)


def collect_inputs(sources: Sequence[str], exclude: Path | None = None) -> tuple[list[PredictInput], list[str]]:
    """Expand SOURCE arguments; return (inputs in order, one problem line per SOURCE that matched nothing).

    A file is an input whatever its extension (a bad one fails to load and is reported); a
    folder contributes its images and videos recursively (sorted, sub-folders mirrored in the
    outputs); anything else is tried as a glob (images and videos it matches). A folder (or a
    glob's fixed leading folder) with ``exclude`` (the output folder) strictly inside it leaves
    out what lies there: each run would otherwise read the annotated copies of the run before.
    (``--out`` the input folder itself excludes nothing: ``check_no_overwrite`` refuses drawing
    over the inputs, and ``--no-draw`` may write its detections beside them.)
    """
    from efficientdet.data.common import IMAGE_EXTENSIONS  # here: its package imports torch, --help must not

    wanted = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    inputs: list[PredictInput] = []
    problems: list[str] = []
    seen: set[Path] = set()
    skip = exclude.resolve() if exclude is not None else None

    def add(path: Path, rel: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            kind = "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image"
            inputs.append(PredictInput(path, kind, rel))

    def media(paths: list[Path], source: str, none: str, base: Path) -> list[Path]:
        found = [p for p in paths if p.is_file() and p.suffix.lower() in wanted]
        root = base.resolve()
        out_dir = skip if skip is not None and skip != root and skip.is_relative_to(root) else None
        kept = [p for p in found if out_dir is None or not p.resolve().is_relative_to(out_dir)]
        if found and not kept:
            problems.append(f"{source}: all its images and videos are in the output folder --out {exclude}, which "
                            "predict writes its annotated copies into; choose another --out")  # fmt: skip
        elif not found:
            problems.append(f"{source}: {none}")
        return kept

    for source in sources:
        path = Path(source)
        if path.is_dir():
            none = f"folder has no image or video files ({', '.join(wanted)})"
            for f in media(sorted(path.rglob("*")), source, none, path):
                add(f, f.relative_to(path))
        elif path.is_file() or path.is_symlink():
            add(path, Path(path.name))
        else:
            none = "no such file or folder, and no images or videos match it as a glob"
            fixed = Path(*path.parts[: _fixed_parts(path)])  # Path() is "."
            for m in media(sorted(Path(m) for m in glob.glob(source, recursive=True)), source, none, fixed):
                add(m, Path(m.name))
    return inputs, problems


def _fixed_parts(pattern: Path) -> int:
    """How many leading parts of a glob ``pattern`` have no wildcard."""
    return next((i for i, part in enumerate(pattern.parts) if any(c in part for c in "*?[")), len(pattern.parts))


def check_tile_fits(tile: int | None, inputs: Sequence[PredictInput]) -> None:
    """A --tile larger than an image or a video's frames is an error (sliced inference needs
    whole tiles), found from the headers before any work (``cli.common.check_tile_fits``)."""
    from .common import check_tile_fits as check_sizes

    if tile is None:
        return
    sized: list[tuple[Path, tuple[int, int] | None]] = []
    for inp in inputs:
        if inp.kind == "video":
            size = _frame_size(inp.path)  # videos too: one used to fail after the images were done
            if size is not None:  # else reported and skipped when it is read
                sized.append((inp.path, size))
        else:
            sized.append((inp.path, None))  # the image's header is read there
    check_sizes(tile, sized)


def _frame_size(path: Path) -> tuple[int, int] | None:
    """(H, W) of a video's first frame; None when it cannot be read."""
    from efficientdet.outputs.video import VideoError, open_video

    try:
        frames = open_video(path).frames()
        first = next(frames, None)
    except VideoError:
        return None
    getattr(frames, "close", lambda: None)()  # a generator: closing it releases the decoder
    return None if first is None else (int(first.shape[0]), int(first.shape[1]))


def output_paths(inputs: Sequence[PredictInput], out: Path) -> list[Path]:
    """Annotated-output path per input: ``.jpg`` for JPEG, ``.mp4`` for video, else ``.png``;
    a name already taken (same stem from two folders) gets ``_2``, ``_3``..."""
    taken: set[Path] = set()
    paths: list[Path] = []
    for inp in inputs:
        suffix = inp.path.suffix.lower()
        ext = ".mp4" if inp.kind == "video" else ".jpg" if suffix in (".jpg", ".jpeg") else ".png"
        base = out / inp.rel.with_suffix("")
        candidate, n = base.with_name(base.name + ext), 1
        while candidate in taken:
            n += 1
            candidate = base.with_name(f"{base.name}_{n}{ext}")
        taken.add(candidate)
        paths.append(candidate)
    return paths


def check_no_overwrite(inputs: Sequence[PredictInput], targets: Sequence[Path], out: str) -> None:
    """Refuse, before any work, a run whose annotated copy would replace an input file
    (``predict photo.jpg --out .``): it used to overwrite the user's photo with the drawing."""
    sources = {inp.path.resolve() for inp in inputs}
    for inp, target in zip(inputs, targets):
        if target.resolve() in sources:
            raise ValueError(f"--out {out}: the annotated copy of {inp.path} would overwrite the input {target}; "
                             "choose another --out (or pass --no-draw)")  # fmt: skip
