"""The ``efficientdet`` command line: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import anchors, benchmark, browse, evaluate, export, info, predict, quickstart, serve, train

# Each sub-command module has ``add_parser(subparsers)`` and ``run(args) -> int``.
COMMANDS = [info, train, predict, evaluate, export, quickstart, benchmark, serve, anchors, browse]


def plain_text(text: str) -> str:
    """Terminal text from reST: ````code```` loses its double backticks (the sub-commands'
    descriptions are their module docstrings, written for the API docs too)."""
    return text.replace("``", "")


class CliParser(argparse.ArgumentParser):
    """``ArgumentParser`` whose help and usage are plain text; sub-parsers are of this class
    too (``add_subparsers`` creates them with the parent's class)."""

    def format_help(self) -> str:
        return plain_text(super().format_help())

    def format_usage(self) -> str:
        return plain_text(super().format_usage())


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="efficientdet", description="EfficientDet object detectors: inspect, train, evaluate, predict, export, serve."
    )
    # the installed version, for bug reports (`efficientdet --version` was "the following arguments are required")
    parser.add_argument("--version", action="version", version=f"efficientdet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and isinstance(getattr(args, "overrides", None), list) and not any(e.startswith("-") for e in extras):
        # argparse takes a command's KEY=VALUE positionals in one run: those after a flag
        # (`train --output runs/x --resume optim.lr=0.01`) come back here
        args.overrides.extend(extras)
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Expected user errors (bad names, bad files): one clear line, no traceback.
        print(f"efficientdet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        # An optional package is missing (OpenVINO for --backend openvino, NNCF for --int8):
        # the message names what to install; a traceback added nothing to it
        print(f"efficientdet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C outside training's own handler (loading, evaluating, predicting): files are
        # written atomically, so what was written is whole; no traceback
        print(f"efficientdet {args.command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT
    except BrokenPipeError:
        # The reader went away (`efficientdet info ... | head`): no traceback; stdout goes to
        # /dev/null so the interpreter's final flush does not fail again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as the shell reports a command killed by it


if __name__ == "__main__":
    raise SystemExit(main())
