"""Metrics to CSV and TensorBoard, and a PNG of the loss and mAP curves."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

COLUMNS = ["kind", "epoch", "step", "loss", "class_loss", "box_loss", "lr", "images_per_s", "AP", "AP50", "AP75"]


class MetricsLogger:
    """Appends rows to ``metrics.csv`` (kept across resumes) and mirrors them to TensorBoard."""

    def __init__(self, output: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = output / "metrics.csv"
        self.writer = None
        if not enabled:
            return
        output.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(COLUMNS)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output / "tensorboard"))
        except ImportError:  # tensorboard is an optional extra
            self.writer = None

    def log(self, kind: str, epoch: int, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"kind": kind, "epoch": epoch, "step": step, **values}
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c)) for c in COLUMNS])
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
    ax1.set_xlabel("optimiser step")
    ax1.set_title("training loss")
    ax1.legend()
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
    fig.savefig(out_png)
    return out_png
