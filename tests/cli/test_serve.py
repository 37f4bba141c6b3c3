"""``efficientdet serve``'s options: what its help promises is what it does."""

from __future__ import annotations

import pytest

from efficientdet.cli import main


def test_help_names_serves_own_onnx_cache_and_no_batch_size(capsys: pytest.CaptureFixture[str]) -> None:
    """--batch-size was accepted and silently replaced by --max-batch; --onnx-cache's help said
    "<out>/onnx-cache", but serve has no --out (it caches under ~/.cache/efficientdet/serve)."""
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size" not in help_text and "--max-batch MAX_BATCH" in help_text
    assert "<out>" not in help_text
    assert "(default ~/.cache/efficientdet/serve/onnx-cache)" in help_text


def test_batch_size_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["serve", "--weights", "w.safetensors", "--batch-size", "4"])
    assert done.value.code == 2
    assert "unrecognized arguments: --batch-size 4" in capsys.readouterr().err
