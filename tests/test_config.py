"""Config dataclasses: post-processing values are checked where they are made."""

from __future__ import annotations

import dataclasses

import pytest

from efficientdet import PostprocessConfig, get_config


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("score_threshold", 30.0, r"score_threshold 30.0: must be in 0..1"),  # gave no detections, silently
        ("score_threshold", float("nan"), r"score_threshold nan: must be in 0..1"),
        ("iou_threshold", 5.0, r"iou_threshold 5.0: must be in 0..1"),  # suppressed nothing, silently
        ("max_detections", 0, r"max_detections 0: must be an integer of at least 1"),  # no detections, silently
        ("max_candidates", -1, r"max_candidates -1: must be an integer of at least 1"),
        ("nms", "sof", r"unknown nms mode 'sof'; expected 'hard' or 'soft'"),
        ("soft_nms_sigma", 0.0, r"soft_nms_sigma 0.0: must be positive"),
    ],
)
def test_postprocess_values_out_of_range_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PostprocessConfig(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):  # the same through replace, as Detector's callers make them
        dataclasses.replace(PostprocessConfig(), **{field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        get_config("efficientdet_lite0").replace(**{f"postprocess.{field}": value})


def test_in_range_values_are_kept() -> None:
    config = PostprocessConfig(score_threshold=1.0, iou_threshold=0.0, max_detections=1, nms="soft")
    assert (config.score_threshold, config.iou_threshold, config.max_detections, config.nms) == (1.0, 0.0, 1, "soft")
    assert get_config("efficientdet_d0").postprocess == PostprocessConfig()
