"""``--help`` is terminal text: no reST markup from the docstrings the descriptions come from."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from efficientdet.cli import COMMANDS, build_parser, main, plain_text


def command_names() -> list[str]:
    """Every sub-command name and alias, as the sub-command modules register them."""
    sub = argparse.ArgumentParser().add_subparsers()
    for module in COMMANDS:
        module.add_parser(sub)
    return sorted(sub.choices)


@pytest.mark.parametrize("command", [None, *command_names()])
def test_help_has_no_double_backticks(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"] if command is None else [command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: efficientdet")
    assert "``" not in out, out


def test_markup_is_removed_not_the_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert plain_text("run ``efficientdet predict SOURCE...`` first") == "run efficientdet predict SOURCE... first"
    with pytest.raises(SystemExit) as done:
        main(["predict", "--help"])
    assert done.value.code == 0
    assert "efficientdet predict SOURCE...: detect objects" in capsys.readouterr().out


def test_usage_errors_are_plain_too(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["predict"])  # SOURCE missing: usage + error on stderr
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "usage: efficientdet predict" in err and "``" not in err
    assert "efficientdet predict: error: the following arguments are required: SOURCE" in err


def test_version_is_the_packages_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """`efficientdet --version` was a usage error (exit 2: "the following arguments are required")."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"efficientdet {declared}\n"


@pytest.mark.parametrize("command", command_names())
def test_every_command_says_what_it_does_and_every_option_has_help(command: str) -> None:
    """`quickstart --help`, the README's first command, had no description and two options
    (--seed, --no-progress) without a word; `info`, `list` and `export` had no description."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    assert parser.description
    assert [a.dest for a in parser._actions if not a.help] == []


def test_eval_compare_help_says_where_each_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """``--compare`` said ".onnx files run in ONNX Runtime": an NNCF int8 file runs in OpenVINO, and
    a float checkpoint given next to it runs there too (the difference is then the weights')."""
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ".onnx files run in ONNX Runtime" not in text
    assert "a checkpoint next to an .onnx runs in that graph's runtime, an .onnx in the runtime it was exported for" in text
