"""Training configuration files and values (engine/config.py): mistakes are one clear error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from efficientdet.engine.config import load_train_config


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        # the second section replaced the first: close_mosaic silently back to 0
        ("augment: {close_mosaic: 5}\nepochs: 20\naugment: {mosaic: 0.5}\n", 3, "augment"),
        ("data:\n  scale_range: [0.5, 1.5]\n  hflip: 0\n  hflip: 1\n", 4, "hflip"),
    ],
)
def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path: Path, text: str, line: int, key: str) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    message = f"{path}: cannot read the training config: line {line}: '{key}' given twice at the same level"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_train_config(path)


def test_a_config_file_with_a_yaml_syntax_error_is_one_line(tmp_path: Path) -> None:
    """PyYAML's message is 6 lines naming "<unicode string>"; the CLI printed them all."""
    path = tmp_path / "train.yaml"
    path.write_text("optim:\n  lr: [0.1\n")
    message = (
        f"{path}: cannot read the training config: while parsing a flow sequence at line 2 column 7: "
        "expected ',' or ']', but got '<stream end>' at line 3 column 1"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_train_config(path)


def test_an_override_that_is_not_yaml_is_one_line() -> None:
    """``optim.lr=[0.1`` (a bracket left open) was a yaml.parser.ParserError traceback from the CLI."""
    message = "override 'optim.lr=[0.1': the value is not YAML (while parsing a flow sequence at line 1 column 1: "
    with pytest.raises(ValueError, match=f"^{re.escape(message)}.* at line 1 column 5\\)$"):
        load_train_config(None, ["optim.lr=[0.1"])


def test_the_same_key_in_different_sections_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("augment: {mosaic: 0.5, close_mosaic: 5}\nepochs: 20\ndata: {hflip: 0.0}\noptim: {lr: 0.01}\n")
    cfg = load_train_config(path)
    assert (cfg.augment.mosaic, cfg.augment.close_mosaic, cfg.data.hflip, cfg.optim.lr) == (0.5, 5, 0.0, 0.01)
    # a YAML merge key, then a key it brought given again: YAML's override, not a duplicate
    path.write_text("optim: &o {lr: 0.01, momentum: 0.8}\nloss:\n  alpha: 0.3\n")
    assert load_train_config(path).optim.momentum == 0.8
    path.write_text("anchors: {aspect_ratios: [[1.0, 1.0]], check: &c false}\noptim:\n  <<: {lr: 0.01, momentum: 0.8}\n  lr: 0.02\n")
    cfg = load_train_config(path)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.anchors.check) == (0.02, 0.8, False)


@pytest.mark.parametrize("key", ["data.scale_range", "data.crop_scale_range"])
@pytest.mark.parametrize("value", ["[0.5, .inf]", "[.inf, .inf]"])
def test_an_infinite_scale_range_is_refused(key: str, value: str) -> None:
    """``data.scale_range=[0.5, .inf]`` was accepted, then failed in the transform with an
    OverflowError traceback (``cannot convert float infinity to integer``)."""
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}: \(.*inf\) must be \[low, high\] with 0 < low <= high < inf$"):
        load_train_config(None, [f"{key}={value}"])
    cfg = load_train_config(None, [f"{key}=[0.5, 3]"])
    assert getattr(cfg.data, key.removeprefix("data.")) == (0.5, 3.0)


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("mosaic=0.5", "augment.mosaic"),  # the section left out: the top-level list cannot show it
        ("data.mosaic=0.5", "augment.mosaic"),  # in the wrong section
        ("hflip=0", "data.hflip"),
        ("augmnt.mosaic=0.5", "augment.mosaic"),  # a typo in the section
        ("augment.mosiac=0.5", "augment.mosaic"),  # a typo in the field
        ("optim.lrr=1", "optim.lr"),
    ],
)
def test_an_unknown_key_suggests_the_field_meant(override: str, suggestion: str) -> None:
    with pytest.raises(ValueError, match=rf"^unknown training config field .*; valid: .*; did you mean {re.escape(suggestion)}\?$"):
        load_train_config(None, [override])


def test_an_unknown_key_without_a_near_field_suggests_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^unknown training config field 'foo'; valid: amp, .*, weights$"):
        load_train_config(None, ["foo=1"])
    path = tmp_path / "train.yaml"
    path.write_text("augment:\n  mosiac: 0.5\n")  # from a file too, which the message names
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: .*'augment\.mosiac'.*; did you mean augment\.mosaic\?$"):
        load_train_config(path)


def test_exponent_numbers_in_lists_are_numbers(tmp_path: Path) -> None:
    """YAML 1.1 reads ``5e-1`` as text; a float field took it (``optim.lr=2e-3``) but a list of
    floats did not: ``data.scale_range=[5e-1, 2]`` was "('5e-1', 2) is not [a number, a number]"."""
    cfg = load_train_config(None, ["data.scale_range=[5e-1, 2]", "data.crop_scale_range=[8e-1, 1.25]"])
    assert cfg.data.scale_range == (0.5, 2.0) and cfg.data.crop_scale_range == (0.8, 1.25)
    assert load_train_config(None, ["anchors.aspect_ratios=[[1e0, 2e0]]"]).anchors.aspect_ratios == ((1.0, 2.0),)
    path = tmp_path / "train.yaml"
    path.write_text("data:\n  scale_range: [5e-1, 1.5]\n")
    assert load_train_config(path).data.scale_range == (0.5, 1.5)
    # text stays text where the field is text, and a whole-number field still wants a whole number
    assert load_train_config(None, ["data.val=1e3", "output=2e-3"]).data.val == "1e3"
    with pytest.raises(ValueError, match=r"^data\.scale_range: \['nan', 1\] is not \[a number, a number\]$"):
        load_train_config(None, ["data.scale_range=[nan, 1]"])
    with pytest.raises(ValueError, match=r"^epochs: '1e1' is not a whole number$"):
        load_train_config(None, ["epochs=1e1"])
