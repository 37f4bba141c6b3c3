"""The run folder's training curves (engine/logger.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

from efficientdet.engine.logger import plot_curves


def test_curves_of_a_run_with_no_train_row_plot_without_a_warning(tmp_path: Path) -> None:
    """A short resumed run logs no train row (its steps fall between ``log_every``), only its
    validation: matplotlib's "No artists with labels found to put in legend" was printed."""
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "kind,epoch,step,loss,class_loss,box_loss,lr,images_per_s,AP,AP50,AP75\n"
        "val,2,9,,,,,,0.00891089,0.0375592,0.00279811\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = plot_curves(csv, tmp_path / "training_curves.png")
    assert out is not None and Image.open(out).size == (1100, 400)
