"""``efficientdet browse DATA``: a grid of dataset images with their boxes and class names drawn.

DATA is anything ``train`` and ``eval`` accept (COCO .json, VOC folder, YOLO folder / data.yaml).
Without ``--augment`` the images are shown as loaded (boxes clipped to the image); with it, as
the model is fed them: after the training transforms of ``--preset`` / ``--config`` / ``--set KEY=VALUE``
overrides (scale jitter, crop, flip, and the ``augment.*`` options: AutoAugment, GridMask,
mosaic, mixup), on the padded training canvas. Look for wrong boxes, wrong classes and empty
images before training. Writes ``--out``/browse.png (or browse_augmented.png), atomically.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: ``efficientdet browse --help`` must not wait for torch
    import torch
    from PIL import Image

    from ..data.dataset import DetectionDataset
    from ..data.records import DatasetIndex
    from ..engine.config import TrainConfig

__all__ = ["add_parser", "run"]

CELL = 320  # longest side of one tile, pixels


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "browse",
        help="draw dataset images with their boxes (as loaded or augmented) to a PNG grid",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", metavar="DATA", help="COCO .json, VOC folder, or YOLO folder / data.yaml")
    p.add_argument(
        # default=[]: argparse counts a "*" positional without a default as required, and its
        # usage error then said "required: DATA, KEY=VALUE" when only DATA was missing
        "overrides", nargs="*", default=[], metavar="KEY=VALUE",
        help="training config overrides, as train takes them (same as --set)",
    )  # fmt: skip
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="training config override (with --augment), repeatable: --set augment.policy=v0",
    )  # fmt: skip
    p.add_argument("--augment", action="store_true", help="show the images after the training transforms")
    p.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--out", default="browse", help="output folder (default ./browse)")
    p.add_argument("--split", default=None, help="VOC/YOLO split (default: as train reads DATA)")
    p.add_argument("--config", help="YAML training config (with --augment)")
    p.add_argument("--preset", default=None, help="training preset (with --augment), e.g. finetune")
    p.add_argument("--seed", type=int, default=0, help="which images, and their augmentation (default 0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data.dataset import DetectionDataset
    from ..engine.config import load_train_config
    from .common import check_out_folder, read_split_arg
    from .notices import print_data_warnings

    if args.n < 1:
        raise ValueError(f"--n {args.n}: must be at least 1")
    check_out_folder(args.out, "browse", "browse.png or browse_augmented.png")
    args.data, positional = _data_and_overrides([args.data, *args.overrides])
    overrides = [*args.set, *positional]
    if not args.augment:
        ignored = [o for o in overrides if not o.startswith("data.allow_outside_root=")]
        ignored += [f"--{k} {v}" for k, v in (("preset", args.preset), ("config", args.config)) if v]
        if ignored:  # only the transforms use them: say so rather than draw as if they applied
            print(f"efficientdet browse: note: {', '.join(ignored)}: used only with --augment", file=sys.stderr)
    cfg = load_train_config(args.config, overrides, args.preset)
    if args.augment:
        from ..engine.setup import unused_settings

        for unused in unused_settings(cfg):  # as train warns before training
            print(f"efficientdet browse: note: {unused}", file=sys.stderr)
    with print_data_warnings("browse"):
        # without --split, the images train reads (a VOC folder's train list, not every XML)
        index, _ = read_split_arg(args.data, args.split, "train", "browse", cfg.data.allow_outside_root)
        if len(index) == 0:
            raise ValueError(f"{args.data}: no images")
        dataset = _augmented(cfg, index) if args.augment else DetectionDataset(index)
        gen = torch.Generator().manual_seed(args.seed)
        picks = torch.randperm(len(index), generator=gen)[: args.n].tolist()
        tiles = []
        for k, i in enumerate(picks):
            torch.manual_seed(args.seed * 1_000_003 + k)  # repeatable augmentation per tile
            sample = dataset[i]
            if sample is not None:
                tiles.append(_tile(sample, index.class_names))
    if not tiles:
        raise ValueError(f"{args.data}: none of the {len(picks)} chosen images could be read")
    out = Path(args.out) / ("browse_augmented.png" if args.augment else "browse.png")
    _write_grid(tiles, out)
    print(f"wrote {out} ({len(tiles)} images of {len(index)}, {len(index.class_names)} classes)")
    return 0


def _data_and_overrides(tokens: list[str]) -> tuple[str, list[str]]:
    """DATA and the KEY=VALUE overrides from the positionals, in any order, as train takes them
    (``browse augment.policy=v0 voc`` read the override as DATA and said "'voc' is not key=value")."""
    data = [t for t in tokens if "=" not in t or Path(t).exists()]  # a path may hold a "="
    if len(data) != 1:
        named = ", ".join(repr(t) for t in data) or "none"
        raise ValueError(f"DATA: give one dataset (got {named}); the other arguments are KEY=VALUE overrides")
    return data[0], [t for t in tokens if t is not data[0]]


def _augmented(cfg: TrainConfig, index: DatasetIndex) -> DetectionDataset:
    from ..engine.setup import build_train_dataset, build_train_transform
    from ..variants import get_config

    variant = get_config(cfg.model)
    size = cfg.image_size or max(variant.image_size)
    # as train builds it, its pixel limit included (None decoded images that train refuses)
    limit = variant.preprocess.max_input_pixels
    return build_train_dataset(cfg, index, build_train_transform(cfg, size), limit)


def _tile(sample: dict[str, Any], class_names: list[str]) -> Image.Image:
    """The sample scaled to fit CELL x CELL and drawn, with its file name and box count underneath."""
    import torch
    from PIL import ImageDraw

    from ..outputs.visualize import draw_detections

    boxes, labels = sample["boxes"], sample["labels"]
    image, scaled = _fit_cell(sample["image"], boxes)
    # drawn after the resize, so lines and names have the same size on every tile: drawn first,
    # a 9000 px photo's names shrank to specks and a 40 px image stayed a 40 px thumbnail
    dets = {"boxes": scaled, "labels": labels, "scores": torch.ones(len(boxes))}
    img = draw_detections(image, dets, class_names, show_scores=False)
    count = f"{len(boxes)} boxes" if len(boxes) else "NO boxes"
    caption = f"{Path(sample['path']).name} ({count})"
    from PIL import Image

    tile = Image.new("RGB", (CELL, CELL + 16), (255, 255, 255))
    tile.paste(img, (0, 0))
    # Right under its image: at the cell's foot, a wide image's caption sat nearer the next row's.
    ImageDraw.Draw(tile).text((2, img.height + 2), caption[:52], fill=(0, 0, 0))
    return tile


def _fit_cell(image: torch.Tensor, boxes: torch.Tensor) -> tuple[Image.Image, torch.Tensor]:
    """uint8 [3, H, W] resized (up or down, aspect kept) so its long side is CELL, and its
    boxes [M, 4] xyxy scaled with it. Enlarged with nearest neighbour: a small image's pixels stay visible."""
    from PIL import Image

    h, w = int(image.shape[-2]), int(image.shape[-1])
    nh, nw = max(1, round(h * CELL / max(h, w))), max(1, round(w * CELL / max(h, w)))
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    resample = Image.Resampling.NEAREST if nw >= w else Image.Resampling.LANCZOS
    scale = boxes.new_tensor([nw / w, nh / h, nw / w, nh / h])
    return pil.resize((nw, nh), resample), boxes * scale


def _write_grid(tiles: list[Image.Image], out: Path) -> None:
    from PIL import Image

    from ..fs import atomic_path

    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    w, h = tiles[0].size
    grid = Image.new("RGB", (cols * (w + 4), rows * (h + 4)), (255, 255, 255))
    for k, tile in enumerate(tiles):
        grid.paste(tile, ((k % cols) * (w + 4), (k // cols) * (h + 4)))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            grid.save(tmp, format="PNG")
    except OSError as err:  # read-only, a file on the path, a full disk: one line naming --out
        raise ValueError(f"--out {out.parent}: cannot write {out.name} there ({err.strerror or err})") from err
