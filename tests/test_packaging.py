"""What a wheel carries besides Python files: every resource file under src/efficientdet is
named by ``[tool.setuptools.package-data]`` (an editable install reads the tree and would hide
a forgotten one), and the PEP 561 marker is among them."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "efficientdet"


def _resources() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    )  # fmt: skip


def test_every_resource_file_is_package_data() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    unlisted = []
    for path in _resources():
        rel = path.relative_to(PACKAGE.parent)
        matched = False
        for package, patterns in data.items():
            base = Path(*package.split("."))
            if base in rel.parents:
                inner = rel.relative_to(base).as_posix()
                matched |= any(fnmatch.fnmatch(inner, pattern) for pattern in patterns)
        if not matched:
            unlisted.append(rel.as_posix())
    assert unlisted == []
    resources = [p.relative_to(PACKAGE).as_posix() for p in _resources()]
    assert "py.typed" in resources and "serve/static/index.html" in resources
