"""Data warnings on the terminal: one line each, ``efficientdet COMMAND: warning: FILE: problem``.

The library warns about skipped or repaired records with :class:`DataIssue` (Python warnings,
so notebooks and callers can filter or record them). A command prints them the way
``predict`` prints its problems instead: one line without a source line under it, each text
once, written past any progress bar.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from ..data.records import DataIssue

__all__ = ["print_data_warnings"]


def _write_line(line: str) -> None:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(line, file=sys.stderr)
        return
    tqdm.write(line, file=sys.stderr)  # keeps an active bar intact


@contextmanager
def print_data_warnings(command: str) -> Iterator[set[str]]:
    """Within the block, print each distinct :class:`DataIssue` text once as
    ``efficientdet {command}: warning: {text}`` on stderr; other warnings show as usual.
    Yields the set of texts printed so far."""
    printed: set[str] = set()
    with warnings.catch_warnings():
        original = warnings.showwarning

        def show(
            message: Warning | str, category: type[Warning], filename: str, lineno: int,
            file: TextIO | None = None, line: str | None = None,
        ) -> Any:  # fmt: skip
            if not issubclass(category, DataIssue):
                return original(message, category, filename, lineno, file, line)
            text = str(message)
            if text not in printed:
                printed.add(text)
                _write_line(f"efficientdet {command}: warning: {text}")
            return None

        warnings.simplefilter("always", DataIssue)  # shown once by ``printed``, not by location
        warnings.showwarning = show
        yield printed

