"""``efficientdet benchmark`` and ``efficientdet.benchmark``: tiny runs, every field checked."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from efficientdet import Detector, create_model
from efficientdet.benchmark import BACKENDS, render_table, run_benchmark
from efficientdet.benchmark.measure import MemoryProbe, synthetic_images
from efficientdet.benchmark.models import build_models
from efficientdet.benchmark.pipelines import torch_pipeline
from efficientdet.cli import main
from efficientdet.data.images import load_image
from efficientdet.models.flops import count_macs

MODEL, SIZE = "efficientdet_lite0", 128
# glibc's own heap policy: the steady one (the CLI's default) is process-wide and permanent, so
# it is tested in a subprocess (test_steady_heap_stops_page_faults), not in the test process.
TINY = [
    "--image-size", str(SIZE), "--batch-sizes", "1,2", "--iterations", "2", "--warmup", "1", "--threads", "1",
    "--malloc", "default",
]  # fmt: skip
ROW_KEYS = {
    "backend", "mode", "batch_size", "latency_ms", "p90_ms", "images_per_s", "gflops_per_s", "decode_ms",
    "preprocess_ms", "network_ms", "postprocess_ms", "postprocess_share", "peak_memory_mb", "faults_per_image",
    "ratio_vs_effdet", "vs_float_floor",
}  # fmt: skip


@pytest.fixture(scope="module")
def expected() -> dict[str, int]:
    config = create_model(MODEL, image_size=(SIZE, SIZE)).config
    model = create_model(MODEL, image_size=(SIZE, SIZE))
    return {"parameters": sum(p.numel() for p in model.parameters()), "macs": count_macs(config, (SIZE, SIZE))}


def _check_rows(doc: dict, backends: list[str], with_ratio: bool) -> None:
    rows = doc["rows"]
    for backend in backends:
        modes = ["end-to-end"] if backend == "onnxruntime-nms" else ["network", "end-to-end"]
        for mode in modes:
            for n in (1, 2):
                [row] = [r for r in rows if (r["backend"], r["mode"], r["batch_size"]) == (backend, mode, n)]
                assert set(row) == ROW_KEYS
                floor_ms = doc["flops_per_image"] * n / (doc["matmul_gflops"] * 1e9) * 1000
                assert row["vs_float_floor"] == pytest.approx(row["latency_ms"] / floor_ms)
                assert 0 < row["latency_ms"] <= row["p90_ms"] + 1e-9
                assert row["images_per_s"] == pytest.approx(n / (row["latency_ms"] / 1000))
                assert row["gflops_per_s"] == pytest.approx(doc["flops_per_image"] * row["images_per_s"] / 1e9)
                assert row["peak_memory_mb"] is not None and row["peak_memory_mb"] >= 0
                assert row["faults_per_image"] is not None and row["faults_per_image"] >= 0
                if mode == "end-to-end":
                    stages = [row[k] for k in ("decode_ms", "preprocess_ms", "network_ms", "postprocess_ms")]
                    assert all(s > 0 for s in stages)
                    # medians of parts vs median of sums: close, not equal
                    assert sum(stages) == pytest.approx(row["latency_ms"], rel=0.5)
                    assert 0 < row["postprocess_share"] < 1
                else:
                    assert row["decode_ms"] is None and row["postprocess_share"] is None
                if with_ratio:
                    assert row["ratio_vs_effdet"] > 0
                else:
                    assert row["ratio_vs_effdet"] is None


def test_cli_torch_and_onnxruntime(tmp_path: Path, capsys: pytest.CaptureFixture[str], expected: dict) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    backends = ["torch", "onnxruntime", "onnxruntime-nms", "onnxruntime-int8"]
    args = ["benchmark", MODEL, *TINY, "--backends", ",".join(backends), "--onnx-exporter", "torchscript"]
    assert main([*args, "--json", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert doc["model"] == MODEL and doc["image_size"] == [SIZE, SIZE] and doc["threads"] == 1
    assert doc["parameters"] == expected["parameters"]
    assert doc["macs"] == expected["macs"] and doc["flops_per_image"] == 2 * expected["macs"]
    assert doc["batch_sizes"] == [1, 2] and doc["iterations"] == 2 and doc["warmup"] == 1
    assert doc["heap"] == "default"
    assert "onnxruntime" in doc["versions"] and "effdet" not in doc["versions"]
    assert len(doc["rows"]) == 2 * 2 + 2 * 2 + 2 + 2 * 2
    assert doc["matmul_gflops"] > 0
    _check_rows(doc, backends, with_ratio=False)
    text = capsys.readouterr().out
    assert f"{MODEL} at {SIZE}x{SIZE}" in text and "parameters" in text and "MACs" in text
    assert "faults/img" in text and "heap: default" in text and "float32 matmul peak here" in text
    assert text.count("end-to-end") >= 6 and "onnxruntime-nms" in text


def test_compare_effdet_gives_ratios(tmp_path: Path) -> None:
    pytest.importorskip("effdet")
    result = run_benchmark(
        MODEL, image_size=SIZE, batch_sizes=[1, 2], backends=["torch"], iterations=2, warmup=1, threads=1,
        compare_effdet=True,
    )  # fmt: skip
    doc = json.loads(json.dumps(result.to_dict()))
    _check_rows(doc, ["torch", "effdet"], with_ratio=True)
    for mode in ("network", "end-to-end"):
        for n in (1, 2):
            ours, ref = result.row("torch", mode, n), result.row("effdet", mode, n)
            assert ref.ratio_vs_effdet == 1.0
            assert ours.ratio_vs_effdet == pytest.approx(ours.images_per_s / ref.images_per_s)
    assert "effdet" in result.versions and "effdet init" in result.weights
    table = render_table(result)
    assert "vs effdet" in table and "effdet end-to-end = its predict path" in table


def test_unknown_backend_and_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", MODEL, "--backends", "torch,tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "unknown backend 'tensorrt'" in err and all(b in err for b in BACKENDS)
    with pytest.raises(ValueError, match="unknown backend"):
        run_benchmark(MODEL, backends=["tensorrt"])
    for option in ("--iterations", "--rounds"):
        assert main(["benchmark", MODEL, option, "0"]) == 2
        assert "--iterations and --rounds must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["benchmark", MODEL, "--batch-sizes", "0,2"])
    assert usage.value.code == 2  # argparse's usage error, before any model is built
    assert "argument --batch-sizes: expected positive integers, got '0,2'" in capsys.readouterr().err


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "effdet" else real(name, *a))
    assert main(["benchmark", MODEL, "--backends", "torch", "--compare-effdet"]) == 2
    assert "--compare-effdet needs the effdet package, which is not installed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        # the export failed after the torch rows: "torch.onnx.export (dynamo) of ... failed: No module named 'onnxscript'"
        ("torch,onnxruntime", "--backends onnxruntime (--onnx-exporter dynamo) needs onnxscript, not installed here"),
        ("openvino", "--backends openvino (--onnx-exporter dynamo) needs onnxscript, not installed here"),
    ],
)
def test_missing_onnxscript_is_named_before_any_work(
    backends: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # find_spec then finds nothing, as when not installed
    monkeypatch.setattr("efficientdet.benchmark.run_benchmark", lambda *a, **k: pytest.fail("ran"))
    assert main(["benchmark", MODEL, "--backends", backends]) == 2
    assert capsys.readouterr().err == f"efficientdet benchmark: error: {message}: pip install 'efficientdet[export]'\n"


def test_the_torchscript_exporter_needs_no_onnxscript(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)

    def reached(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the run started")

    monkeypatch.setattr("efficientdet.benchmark.run_benchmark", reached)
    assert main(["benchmark", MODEL, "--backends", "onnxruntime", "--onnx-exporter", "torchscript"]) == 2
    assert capsys.readouterr().err == "efficientdet benchmark: error: the run started\n"


@pytest.mark.parametrize("compare_effdet", [False, True])
def test_random_weights_from_one_image_at_a_1x1_top_level(compare_effdet: bool, tmp_path: Path) -> None:
    """`benchmark efficientdet_lite0 --image-size 128 --images DIR_WITH_ONE_JPEG` (the README's
    one-photo run, at a small size) failed calibrating BatchNorm: "Expected more than 1 value
    per channel when training, got input size torch.Size([1, 64, 1, 1])"."""
    if compare_effdet:
        pytest.importorskip("effdet")
    files = synthetic_images(tmp_path / "images", 1)
    ours, ref, _ = build_models(MODEL, (SIZE, SIZE), None, compare_effdet, tmp_path, files)
    assert not ours.training and (ref is None) != compare_effdet
    with torch.no_grad():
        class_out, _ = ours(torch.zeros(1, 3, SIZE, SIZE))
    assert class_out[-1].shape[-2:] == (1, 1) and all(bool(torch.isfinite(c).all()) for c in class_out)


def test_pipelines_match_the_public_entry_points(tmp_path: Path) -> None:
    """The timed stages compute what Detector(paths) and effdet's DetBenchPredict compute."""
    pytest.importorskip("effdet")
    files = synthetic_images(tmp_path / "images", 2)
    ours, ref, _ = build_models(MODEL, (SIZE, SIZE), None, True, tmp_path, files)
    pipe = torch_pipeline(ours, torch.device("cpu"))
    with torch.inference_mode():
        inputs, info = pipe.preprocess(pipe.decode(files))
        staged = pipe.postprocess(pipe.network(inputs), info)
    direct = Detector(pipe.detector.model)(files)
    assert len(staged) == 2 and len(staged[0]["scores"]) > 0
    for a, b in zip(staged, direct):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])

    # --score-threshold: the predict setting, a threshold before NMS, same as Detector's
    pipe.set_score_threshold(0.5)
    with torch.inference_mode():
        thresholded = pipe.postprocess(pipe.network(inputs), info)
    direct_thr = Detector(pipe.detector.model)(files, score_threshold=0.5)
    for a, b in zip(thresholded, direct_thr):
        assert bool((a["scores"] >= 0.5).all())
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])

    from efficientdet.benchmark.pipelines import EffdetPipeline

    eff = EffdetPipeline(ref, torch.device("cpu"))
    with torch.inference_mode():
        x, img_info = eff.preprocess(eff.decode(files))
        staged_ref = eff.postprocess(eff.network(x), img_info)
        direct_ref = eff.bench(x, img_info)
    assert torch.equal(staged_ref, direct_ref)
    # same weights, same images: the top detection agrees (different resizers, so not exactly).
    # Compared on full decodes: ours decodes these 640x480 JPEGs at 1/2 for a 128 px input
    # (docs/usage.md), effdet's path in full, and this random model's top labels are near-ties.
    [full] = Detector(pipe.detector.model)([load_image(files[0])])
    best = staged_ref[0, 0]
    assert int(best[5]) - 1 == int(full["labels"][0])


def test_memory_probe_sees_an_allocation() -> None:
    probe = MemoryProbe(torch.device("cpu"))
    probe.start()
    block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
    peak = probe.peak_mb()
    del block
    assert 48 <= peak <= 256


def test_rounds_interleave_backends_and_pool_their_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Round r starts with backend r (rotating); each pipeline is built once; memory comes from
    round 0; the rows' medians are over every round's samples."""
    import efficientdet.benchmark.runner as runner
    from efficientdet.benchmark.measure import Timing

    calls: list[tuple[str, bool]] = []
    built: list[str] = []
    real_make, real_measure = runner.make_pipeline, runner._measure

    def make(backend, *args, **kwargs):  # type: ignore[no-untyped-def]
        built.append(backend)
        return real_make(backend, *args, **kwargs)

    def measure(pipeline, files, sizes, iterations, warmup, device, say, memory=True):  # type: ignore[no-untyped-def]
        calls.append((pipeline.name, memory))
        real = real_measure(pipeline, files, sizes, iterations, warmup, device, say, memory)
        # a known latency per round: 10 ms in round 0, 30 ms in round 1, 50 ms in round 2
        ms = 10.0 + 20.0 * (sum(1 for name, _ in calls if name == pipeline.name) - 1)
        return {key: (Timing({s: [ms / 1000 / len(t.stages)] * iterations for s in t.stages}), mem)
                for key, (t, mem) in real.items()}  # fmt: skip

    monkeypatch.setattr(runner, "make_pipeline", make)
    monkeypatch.setattr(runner, "_measure", measure)
    result = run_benchmark(
        MODEL, image_size=SIZE, batch_sizes=[1], backends=["torch"], iterations=2, warmup=0, threads=1,
        compare_effdet=True, rounds=3,
    )  # fmt: skip
    assert built == ["torch", "effdet"]
    assert calls == [("torch", True), ("effdet", True), ("effdet", False), ("torch", False), ("torch", False),
                     ("effdet", False)]  # fmt: skip
    assert result.rounds == 3 and "3 interleaved rounds" in render_table(result)
    assert [(r.backend, r.mode) for r in result.rows] == [
        ("torch", "network"), ("torch", "end-to-end"), ("effdet", "network"), ("effdet", "end-to-end"),
    ]  # fmt: skip
    for row in result.rows:
        assert row.latency_ms == pytest.approx(30.0)  # the median of 10, 10, 30, 30, 50, 50
        assert row.peak_memory_mb is not None  # from round 0


def test_timing_counts_faults_per_call_and_joins_rounds() -> None:
    from efficientdet.benchmark.measure import Timing, time_calls
    from efficientdet.benchmark.runner import _row

    calls = []
    timing = time_calls(lambda: calls.append(1) or {"network": 0.01}, warmup=2, iterations=3)
    assert len(calls) == 5 and timing.calls == 3 and timing.faults is not None and timing.faults >= 0
    joined = Timing({"network": [0.01] * 3}, faults=30) + Timing({"network": [0.02]}, faults=10)
    assert joined.calls == 4 and joined.faults == 40
    assert (Timing({"network": [0.01]}, faults=None) + Timing({"network": [0.01]}, faults=5)).faults is None
    row = _row("torch", "network", 2, joined, 10**9, None)
    assert row.faults_per_image == 40 / (4 * 2)  # per image: calls x batch size


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--json", "{tmp}"], "--json {tmp}: is a folder; give the JSON file to write"),
        (["--score-threshold", "2"], "--score-threshold 2.0: must be in 0..1"),
        (["--score-threshold", "-1"], "--score-threshold -1.0: must be in 0..1"),
        (["--calibration", "{tmp}"], "--calibration is for the int8 backends (onnxruntime-int8, openvino-int8), "
         "and --backends torch has none"),
        (["--device", "foo"], "--device foo: not a device; use cpu, cuda or cuda:N"),
        (["--image-size", "100"], "--image-size 100: must be a positive multiple of 32"),
    ],
)  # fmt: skip
def test_options_that_would_be_ignored_or_fail_late_are_refused_first(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --json folder ended the finished run in an IsADirectoryError traceback (results lost);
    the other options were accepted and ignored (a threshold of 2 or -1, --calibration without
    an int8 backend) or a 20-device-type torch message. Each is one line before any work."""

    def no_run(*_a: object, **_k: object) -> None:
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr("efficientdet.benchmark.run_benchmark", no_run)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["benchmark", MODEL, "--backends", "torch", *argv]) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err and err.count("\n") == 1
