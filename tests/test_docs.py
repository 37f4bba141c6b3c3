"""The Python snippets in README.md and docs/*.md name functions and modules that exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[tuple[str, str]]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [(f.name, block) for f in files for block in re.findall(r"```python\n(.*?)```", f.read_text(encoding="utf-8"), re.S)]


def test_python_snippets_in_the_docs_name_what_exists() -> None:
    """usage.md's `efficientdet.visualize.draw_detections(...)` was an AttributeError: the module
    moved to efficientdet.outputs.visualize and the snippet stayed."""
    import efficientdet

    missing = []
    for doc, block in _python_blocks():
        for module, names in re.findall(r"^\s*from (efficientdet[\w.]*) import ([\w, ]+)", block, re.M):
            found = importlib.import_module(module)
            missing += [f"{doc}: {module}.{n.strip()}" for n in names.split(",") if not hasattr(found, n.strip())]
        if not re.search(r"^import efficientdet$", block, re.M):
            continue
        for line in block.splitlines():
            if line.lstrip().startswith(("from ", "import ")):
                continue
            for chain in re.findall(r"(?<![\w.])efficientdet(?:\.\w+)+", line):
                obj: object = efficientdet
                for part in chain.split(".")[1:]:
                    if not hasattr(obj, part):
                        missing.append(f"{doc}: {chain}")
                        break
                    obj = getattr(obj, part)
    assert not missing, "the docs name what does not exist:\n" + "\n".join(missing)
