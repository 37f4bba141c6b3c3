"""Suite-wide: nothing a test runs writes into the user's own efficientdet cache."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``$EFFICIENTDET_CACHE`` (downloads, OpenVINO's compiled executables) in a session folder."""
    saved = os.environ.get("EFFICIENTDET_CACHE")
    os.environ["EFFICIENTDET_CACHE"] = str(tmp_path_factory.mktemp("efficientdet-cache"))
    yield
    if saved is None:
        os.environ.pop("EFFICIENTDET_CACHE", None)
    else:
        os.environ["EFFICIENTDET_CACHE"] = saved
