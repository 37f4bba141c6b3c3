"""``efficientdet serve``'s options: what its help promises is what it does."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

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
    assert "(default <cache>/serve/onnx-cache; <cache>: $EFFICIENTDET_CACHE, else $XDG_CACHE_HOME/efficientdet, else ~/.cache/efficientdet)" in help_text


def test_batch_size_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["serve", "--weights", "w.safetensors", "--batch-size", "4"])
    assert done.value.code == 2
    assert "unrecognized arguments: --batch-size 4" in capsys.readouterr().err


def test_a_port_in_use_or_a_bad_host_is_one_line_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """They were uvicorn's "ERROR: [Errno -2] Name or service not known" (no flag named) or
    "[Errno 98] ... address already in use", exit 3, after the model had loaded in full (the
    shutdown waits for it). The weights here do not exist: loading them would say so."""
    weights = str(tmp_path / "missing.safetensors")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--weights", weights, "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert f"--host 127.0.0.1 --port {port}: cannot listen there (Address already in use)" in err
        assert err.count("\n") == 1 and "missing.safetensors" not in err
    assert main(["serve", "--weights", weights, "--host", "256.1.1.1"]) == 2
    err = capsys.readouterr().err
    assert "--host 256.1.1.1: not an address to listen on" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("blocked", "named"),
    [
        (["fastapi"], "fastapi"),  # was a ModuleNotFoundError traceback
        (["prometheus_client"], "prometheus-client"),
        # was a server that answered every form upload with 400 "bad_multipart"
        (["python_multipart", "multipart"], "python-multipart"),
    ],
)
def test_a_missing_serve_package_is_one_line_naming_the_extra(
    blocked: list[str], named: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for module in blocked:
        monkeypatch.setitem(sys.modules, module, None)  # find_spec then finds nothing, as when not installed
    assert main(["serve", "--weights", "w.safetensors", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err == f"efficientdet serve: error: serve needs {named}, not installed here: pip install 'efficientdet[serve]'\n"


def test_a_negative_graceful_timeout_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """-1 was accepted: asyncio's timeout then cut the requests in flight at the first signal."""
    assert main(["serve", "--weights", "w.safetensors", "--graceful-timeout", "-1"]) == 2
    assert "--graceful-timeout -1.0: must be >= 0 (seconds)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        # nan passed `< 0`: the batcher then waited for every other admitted request, as if unbounded
        ("--max-wait-ms", "nan", "--max-wait-ms nan: must be a number >= 0 (milliseconds)"),
        ("--max-wait-ms", "-1", "--max-wait-ms -1.0: must be a number >= 0 (milliseconds)"),
        # nan said "cannot convert float NaN to integer" (no flag named); inf was an OverflowError traceback
        ("--max-upload-mb", "nan", "--max-upload-mb nan: must be a positive, finite number of MB"),
        ("--max-upload-mb", "inf", "--max-upload-mb inf: must be a positive, finite number of MB"),
        ("--max-upload-mb", "0", "--max-upload-mb 0.0: must be a positive, finite number of MB"),
    ],
)
def test_bad_wait_and_upload_limits_are_one_line_naming_the_flag(
    flag: str, value: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--weights", "w.safetensors", flag, value]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err


def test_exported_graphs_go_under_the_efficientdet_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--backend onnxruntime on a checkpoint exports into <cache>/serve/onnx-cache, where <cache>
    is $EFFICIENTDET_CACHE as for downloaded weights and OpenVINO's compiled models: it was
    ~/.cache/efficientdet/serve whatever the variable said (a read-only home: a failed start)."""
    import argparse

    from efficientdet.cli import common
    from efficientdet.cli.serve import _loader

    seen: list[Path] = []

    def fake_build_runner(args: argparse.Namespace, out: Path) -> None:
        seen.append(out)
        raise RuntimeError("stop here")

    monkeypatch.setattr(common, "build_runner", fake_build_runner)
    monkeypatch.setenv("EFFICIENTDET_CACHE", str(tmp_path / "cache"))
    load = _loader(argparse.Namespace(max_batch=8))
    with pytest.raises(RuntimeError, match="stop here"):
        load()
    assert seen == [tmp_path / "cache" / "serve"]


@pytest.mark.parametrize(
    ("flags", "nms", "mixed"),
    [
        ({}, "hard", True),
        ({"tta": True, "tta_merge": "nms"}, "hard", True),
        ({"tta": True, "tta_merge": "wbf"}, "hard", False),
        ({"tile": 128, "tile_merge": "wbf"}, "hard", False),
        ({}, "soft", True),  # soft NMS decays a box only by higher-scoring ones: exact at the lowest
    ],
)
def test_box_fusion_serves_one_threshold_per_forward_pass(
    flags: dict[str, object], nms: str, mixed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under WBF, running a batch at its lowest threshold changed the answers of the
    requests above it (8 boxes alone, 14 batched with a request at 0.05)."""
    import argparse
    from types import SimpleNamespace

    from efficientdet.cli import common
    from efficientdet.cli.serve import _loader

    config = SimpleNamespace(name="m", image_size=(64, 64), num_classes=1, postprocess=SimpleNamespace(nms=nms))
    runner = SimpleNamespace(detector=SimpleNamespace(decode_size=None), config=config, class_names=["a"],
                             backend="torch", max_input_pixels=10**6, min_score_threshold=0.0)  # fmt: skip
    monkeypatch.setattr(common, "build_runner", lambda args, out: runner)
    args = argparse.Namespace(max_batch=8, tile=None, tta=False, tta_merge=None, tile_merge=None)
    for key, value in flags.items():
        setattr(args, key, value)
    assert _loader(args)().mixed_thresholds is mixed


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--tta-scales", "1.2"], "--tta-scales needs --tta: without it --tta-scales would be ignored"),
        (["--tile-merge", "wbf"], "--tile-merge needs --tile: without it --tile-merge would be ignored"),
        (["--tile", "100"], "--tile 100: must be a positive multiple of the model's stride (32)"),
        (["--device", "tpu"], "--device tpu: not a device; use cpu, cuda or cuda:N"),
        (["--image-size", "100"], "--image-size 100: must be a positive multiple of 32"),
        (["--max-input-pixels", "0"], "--max-input-pixels 0: must be at least 1"),
    ],
)
def test_model_flags_are_checked_before_the_server_starts(
    tmp_path: Path, flags: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """As predict and eval refuse them: they were found only when the started server loaded the
    model, "cannot load the model: --tta-scales needs --tta ..." among uvicorn's lines (one
    saying "Uvicorn running on http://..." after it). The weights do not exist: not reached."""
    weights = str(tmp_path / "missing.safetensors")
    assert main(["serve", "--weights", weights, "--port", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "missing.safetensors" not in err, err
