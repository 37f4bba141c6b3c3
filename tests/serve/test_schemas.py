"""``parse_options``: the detect options, checked."""

from __future__ import annotations

import pytest

from efficientdet.serve.schemas import ApiError, parse_options

NAMES = ["cat", "dog", "cup"]


def test_classes_by_name_or_index() -> None:
    assert parse_options({"classes": "cup, 0"}, NAMES, 3, 0.3).classes == frozenset({2, 0})
    assert parse_options({"classes": ""}, NAMES, 3, 0.3).classes is None  # an empty form field: all classes


@pytest.mark.parametrize("text", [",", " , ", " "])
def test_classes_naming_no_class_is_422(text: str) -> None:
    """``classes=,`` filtered every detection away: a 200 with none, while ``classes=`` kept all."""
    with pytest.raises(ApiError) as err:
        parse_options({"classes": text}, NAMES, 3, 0.3)
    assert (err.value.status, err.value.code) == (422, "bad_classes")
    assert err.value.message == f"classes {text!r}: names no class; leave it out for all classes (see GET /v1/model)"
