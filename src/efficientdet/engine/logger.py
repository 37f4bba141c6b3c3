"""Metrics to CSV and TensorBoard, and a PNG of the loss and mAP curves."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..fs import atomic_open, atomic_path

COLUMNS = ["kind", "epoch", "step", "loss", "class_loss", "box_loss", "lr", "images_per_s", "AP", "AP50", "AP75"]


class MetricsError(RuntimeError):
    """``metrics.csv`` could not be written; the message names the file."""


class MetricsLogger:
    """Appends rows to ``metrics.csv`` and mirrors them to TensorBoard.

    The file always describes the run that ``last.ckpt`` holds: on start-up, rows written
    after the checkpoint being resumed (train rows with ``step > resume_step``, validation
    rows with ``epoch > resume_epoch``) are dropped, because the resumed run replays those
    steps; a new run (step 0) starts an empty file. An incomplete last line (a process killed
    while appending) is dropped too. TensorBoard events after ``resume_step`` are purged.
    """

    def __init__(self, output: Path, enabled: bool = True, resume_step: int = 0, resume_epoch: int = 0) -> None:
        self.enabled = enabled
        self.path = output / "metrics.csv"
        self.writer = None
        self.dropped_rows = 0
        if not enabled:
            return
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file of that name, no permission: one line naming the folder
            raise MetricsError(f"{output}: cannot create the output folder ({err.strerror or err})") from err
        self.dropped_rows = _rewrite_until(self.path, resume_step, resume_epoch)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:  # tensorboard is an optional extra
            self.writer = None

    def log(self, kind: str, epoch: int, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"kind": kind, "epoch": epoch, "step": step, **values}
        try:
            with self.path.open("a", newline="") as f:
                csv.writer(f).writerow([_fmt(row.get(c)) for c in COLUMNS])
        except OSError as err:  # e.g. a full disk: stop with one clear line, not a traceback
            raise MetricsError(f"{self.path}: could not append training metrics ({err.strerror or err})") from err
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _rewrite_until(path: Path, step: int, epoch: int) -> int:
    """Keep the header and the rows up to (``step``, ``epoch``), verbatim; atomic rewrite.

    Returns how many rows were dropped (a new file with the header when none exists).
    """
    lines = []
    if path.exists():
        with path.open(newline="", errors="replace") as f:  # keep csv's "\r\n" line ends as they are
            lines = f.read().splitlines(keepends=True)
    if not lines:
        # a new file that rows are appended to from now on: nothing to keep intact
        with path.open("w", newline="") as f:
            csv.writer(f).writerow(COLUMNS)
        return 0
    kept, dropped = [lines[0]], 0
    for line in lines[1:]:
        fields = next(csv.reader([line]), [])
        try:
            # a killed append leaves a line without its newline: incomplete, dropped
            kind, row_epoch, row_step = fields[0], int(fields[1]), int(fields[2])
            keep = line.endswith("\n") and (row_step <= step if kind == "train" else row_epoch <= epoch)
        except (IndexError, ValueError):  # a damaged row: drop it rather than fail the run
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        with atomic_open(path, "w", newline="") as f:
            f.writelines(kept)
    return dropped


def read_metrics(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def plot_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Loss per step and validation AP / AP50 per epoch, side by side (matplotlib, no pyplot)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    rows = read_metrics(metrics_csv)
    train = [r for r in rows if r["kind"] == "train" and r["loss"]]
    val = [r for r in rows if r["kind"] == "val" and r["AP"]]
    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    if train:
        steps = [int(r["step"]) for r in train]
        for key in ("loss", "class_loss", "box_loss"):
            ax1.plot(steps, [float(r[key]) for r in train], label=key)
        ax1.set_yscale("log")
        ax1.legend()  # without lines matplotlib warns "No artists with labels found"
    ax1.set_xlabel("optimiser step")
    ax1.set_title("training loss")
    ax1.grid(alpha=0.3)
    if val:
        epochs = [int(r["epoch"]) for r in val]
        ax2.plot(epochs, [float(r["AP"]) for r in val], marker="o", label="AP@[.5:.95]")
        ax2.plot(epochs, [float(r["AP50"]) for r in val], marker="o", label="AP50")
        ax2.legend()
    ax2.set_xlabel("epoch")
    ax2.set_title("validation mAP (EMA weights)")
    ax2.set_ylim(0, 1)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return out_png
