"""evaluate(): the Python entry point's argument checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from efficientdet import create_model
from efficientdet.data.formats import read_dataset
from efficientdet.data.synthetic import make_synthetic_dataset
from efficientdet.evaluation.run import evaluate


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, r"batch_size 0: must be an integer of at least 1"),  # was ZeroDivisionError
        ({"max_detections": 0}, r"max_detections 0: must be an integer of at least 1"),
        ({"score_threshold": 5.0}, r"score_threshold 5.0: must be in 0..1"),  # was AP 0.0, silently
    ],
)
def test_bad_arguments_are_a_value_error_naming_them(tmp_path: Path, kwargs: dict[str, float], message: str) -> None:
    data = make_synthetic_dataset(tmp_path / "d", num_images=2, image_size=(64, 64), seed=0)
    index = read_dataset(data)
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=3, class_names=list(index.class_names), image_size=128)
    with pytest.raises(ValueError, match=message):
        evaluate(model, index, progress=False, **kwargs)  # type: ignore[arg-type]
    run = evaluate(model, index, progress=False, batch_size=1)  # the same call with good arguments scores
    assert set(run.stats) >= {"AP", "AP50"} and 0.0 <= run.stats["AP"] <= 1.0
