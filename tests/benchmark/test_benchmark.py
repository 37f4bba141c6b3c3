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
    assert main(["benchmark", MODEL, "--backends", backends, "--onnx-exporter", "dynamo"]) == 2
    assert capsys.readouterr().err == f"efficientdet benchmark: error: {message}: pip install 'efficientdet[export]'\n"


def test_the_torchscript_exporter_needs_no_onnxscript(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)

    def reached(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the run started")

    monkeypatch.setattr("efficientdet.benchmark.run_benchmark", reached)
    for exporter in (["--onnx-exporter", "torchscript"], []):  # torchscript is the default
        assert main(["benchmark", MODEL, "--backends", "onnxruntime", *exporter]) == 2
        assert capsys.readouterr().err == "efficientdet benchmark: error: the run started\n"


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
        (["--json", "{tmp}/a.txt/out.json"], "--json {tmp}/a.txt/out.json: cannot create a folder under {tmp}/a.txt, "
         "which is a file"),
        (["--score-threshold", "2"], "--score-threshold 2.0: must be in 0..1"),
        (["--score-threshold", "-1"], "--score-threshold -1.0: must be in 0..1"),
        (["--calibration", "{tmp}"], "--calibration is for the int8 backends (onnxruntime-int8, openvino-int8), "
         "and --backends torch has none"),
        (["--device", "foo"], "--device foo: not a device; use cpu, cuda or cuda:N"),
        # said "an exported .onnx runs with --backend onnxruntime or openvino", which was given
        (["--backends", "onnxruntime", "--weights", "{tmp}/m.onnx"], "--weights {tmp}/m.onnx: an exported graph; "
         "the benchmark takes the weights"),
        # were accepted and ignored: nothing here compiles or exports
        (["--backends", "onnxruntime", "--compile"], "--compile is for the torch backend, and --backends "
         "onnxruntime has none"),
        (["--onnx-exporter", "torchscript"], "--onnx-exporter is for the backends that export a float graph "
         "(onnxruntime, onnxruntime-nms, openvino; the int8 ones use torchscript), and --backends torch has none"),
        (["--image-size", "100"], "--image-size 100: must be a positive multiple of 32"),
    ],
)  # fmt: skip
def test_options_that_would_be_ignored_or_fail_late_are_refused_first(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --json folder ended the finished run in an IsADirectoryError traceback (results lost),
    a --json under a file in a FileExistsError one;
    the other options were accepted and ignored (a threshold of 2 or -1, --calibration without
    an int8 backend) or a 20-device-type torch message. Each is one line before any work."""

    def no_run(*_a: object, **_k: object) -> None:
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr("efficientdet.benchmark.run_benchmark", no_run)
    (tmp_path / "a.txt").write_text("a file")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["benchmark", MODEL, "--backends", "torch", *argv]) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err and err.count("\n") == 1


@pytest.mark.parametrize("compare_effdet", [False, True])
def test_random_weights_calibrate_on_a_single_image(tmp_path: Path, compare_effdet: bool) -> None:
    """``--images`` a folder of one photo (the README's own benchmark command) with random
    weights at 128 px ended in torch's "Expected more than 1 value per channel when training":
    Lite0's P7 is 1x1 there, and BatchNorm statistics were taken on a batch of one."""
    if compare_effdet:
        pytest.importorskip("effdet")
    [photo] = synthetic_images(tmp_path / "images", 1)
    ours, ref, described = build_models(MODEL, (SIZE, SIZE), None, compare_effdet, tmp_path, [photo])
    assert (ref is not None) == compare_effdet and "random" in described
    for model in [ours] + ([ref] if ref is not None else []):
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert bns and all(bool(torch.isfinite(m.running_var).all()) for m in bns)
        assert not model.training
    [result] = Detector(ours)([photo])
    assert len(result["scores"]) > 0


def test_cli_runs_on_a_folder_of_one_photo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synthetic_images(tmp_path / "one", 1)
    assert main(["benchmark", MODEL, *TINY, "--batch-sizes", "1,2", "--backends", "torch", "--images",
                 str(tmp_path / "one"), "--quiet"]) == 0  # fmt: skip
    assert f"images: {tmp_path / 'one'}: the first 1 of its 1 image files by name" in capsys.readouterr().out


def test_report_says_how_many_of_the_folder_s_images_are_timed(tmp_path: Path) -> None:
    """``images:`` was the folder alone: a folder of 5 photos benchmarked at batch 1 and 2 read
    as if all 5 were measured; only the first 2 are."""
    from efficientdet.benchmark.inputs import benchmark_images

    synthetic_images(tmp_path / "five", 5)
    files, described = benchmark_images(tmp_path / "five", tmp_path, [1, 2])
    assert len(files) == 5
    assert described == (f"{tmp_path / 'five'}: the first 2 of its 5 image files by name (a batch of N: the first "
                         "N, repeated where the folder has fewer)")  # fmt: skip


def test_score_threshold_reaches_the_graph_with_nms_inside(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--backends torch,onnxruntime-nms --score-threshold 0.3`` measured torch, then stopped
    with "onnxruntime-nms: the graph's score threshold is fixed at export" (torch's rows lost):
    the benchmark exports that graph itself, so the threshold goes into it, as ``export --nms
    --score-threshold 0.3`` does."""
    pytest.importorskip("onnxruntime")
    from efficientdet.benchmark.pipelines import make_pipeline
    from efficientdet.export.metadata import read_onnx_metadata

    files = synthetic_images(tmp_path / "images", 2)
    model, _, _ = build_models(MODEL, (SIZE, SIZE), None, False, tmp_path, files)
    pipe = make_pipeline("onnxruntime-nms", model, torch.device("cpu"), 1, tmp_path, onnx_exporter="torchscript",
                         score_threshold=0.3)  # fmt: skip
    assert read_onnx_metadata(tmp_path / "model.nms.onnx").postprocess["score_threshold"] == pytest.approx(0.3)
    with torch.inference_mode():
        inputs, info = pipe.preprocess(pipe.decode(files))
        results = pipe.postprocess(pipe.network(inputs), info)
    assert all(bool((r["scores"] >= 0.3).all()) for r in results)

    out = tmp_path / "bench.json"
    argv = ["benchmark", MODEL, *TINY, "--batch-sizes", "1", "--backends", "torch,onnxruntime-nms",
            "--onnx-exporter", "torchscript", "--score-threshold", "0.3", "--json", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    backends = {r["backend"] for r in json.loads(out.read_text())["rows"]}
    assert backends == {"torch", "onnxruntime-nms"}


def test_int8_calibration_takes_at_most_100_of_thebenchmark_images(tmp_path: Path) -> None:
    """Without --calibration the int8 backends calibrated on every file of --images, all decoded
    and kept in memory (a folder of 5000 photos: gigabytes); ``export --int8`` takes 100,
    evenly spaced, as --calibration here does."""
    from efficientdet.benchmark.inputs import calibration_images

    files = [tmp_path / f"{i:04d}.jpg" for i in range(250)]
    picked = calibration_images(["torch", "openvino-int8"], None, files)
    assert len(picked) == 100 and picked[0] == files[0] and picked[1] == files[2] and picked[-1] == files[247]
    assert calibration_images(["onnxruntime-int8"], None, files[:7]) == files[:7]
    assert calibration_images(["torch"], None, files) == []


def test_a_corrupt_image_among_those_timed_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated third photo in --images stopped the run at batch 4, after the model was built
    and the first backend measured (minutes with D0 and --rounds)."""
    folder = tmp_path / "photos"
    synthetic_images(folder, 2)
    data = (folder / "synthetic_000.jpg").read_bytes()
    (folder / "z_cut.jpg").write_bytes(data[: len(data) // 3])

    def no_build(*_a: object, **_k: object) -> None:
        raise AssertionError("the model was built")

    monkeypatch.setattr("efficientdet.benchmark.models.build_models", no_build)
    argv = ["benchmark", MODEL, *TINY, "--batch-sizes", "1,4", "--backends", "torch", "--images", str(folder)]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'z_cut.jpg'}: corrupt, truncated or unsupported JPEG image" in err and err.count("\n") == 1


def test_unreadable_calibration_images_are_named_not_skipped_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The int8 backends dropped calibration images that could not be decoded without a word
    (``export --int8`` names them)."""
    from efficientdet.benchmark.pipelines import make_pipeline
    from efficientdet.data.records import DataIssue

    good = synthetic_images(tmp_path / "calib", 2)
    bad = tmp_path / "calib" / "text.jpg"
    bad.write_text("not a JPEG")
    seen: list[int] = []

    def export_int8(_model: object, _path: object, images: list, *_a: object, **_k: object) -> None:
        seen.append(len(images))
        raise RuntimeError("stop after loading the calibration images")

    monkeypatch.setattr("efficientdet.export.quantize.export_int8", export_int8)
    model = create_model(MODEL, image_size=(SIZE, SIZE)).eval()
    skipped = r"skipped 1 unreadable calibration image\(s\), e.g. .*text.jpg"
    with pytest.warns(DataIssue, match=skipped), pytest.raises(RuntimeError, match="stop after"):
        make_pipeline("onnxruntime-int8", model, torch.device("cpu"), 1, tmp_path, calibration=[*good, bad])
    assert seen == [2]


def test_onnxruntime_backend_measures_the_graph_predict_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``predict --backend onnxruntime`` runs the cached graph of ``cached_onnx``'s default
    (TorchScript) exporter; the benchmark's onnxruntime row, said to be that graph, defaulted to
    the dynamo exporter's."""
    pytest.importorskip("onnxruntime")
    import efficientdet.export.cache as cache
    from efficientdet import save_model
    from efficientdet.benchmark.pipelines import make_pipeline
    from efficientdet.export.runtime import OnnxDetector

    calls: list[bool] = []

    def recorded(*_a: object, dynamo: bool = False, **_k: object) -> None:
        calls.append(dynamo)
        raise RuntimeError("stop before exporting")

    monkeypatch.setattr(cache, "cached_onnx", recorded)
    model = create_model(MODEL, image_size=(SIZE, SIZE)).eval()
    save_model(model, tmp_path / "w.safetensors")
    for start in (
        lambda: OnnxDetector.from_weights(tmp_path / "w.safetensors", tmp_path / "cache"),  # what predict builds
        lambda: make_pipeline("onnxruntime", model, torch.device("cpu"), 1, tmp_path),
        lambda: run_benchmark(MODEL, image_size=SIZE, batch_sizes=[1], backends=["onnxruntime"], iterations=1),
    ):
        with pytest.raises(RuntimeError, match="stop before exporting"):
            start()
    assert main(["benchmark", MODEL, *TINY, "--backends", "onnxruntime", "--quiet"]) == 2
    assert "stop before exporting" in capsys.readouterr().err
    assert calls == [False, False, False, False]


def test_openvino_on_a_gpu_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--device cuda --backends torch,openvino`` measured torch on the GPU, then stopped at
    openvino's setup ("run on the CPU only"), torch's rows lost."""

    def no_build(*_a: object, **_k: object) -> None:
        raise AssertionError("the model was built")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("efficientdet.benchmark.models.build_models", no_build)
    with pytest.raises(ValueError, match=r"device cuda: the openvino, openvino-int8 backend\(s\) run on the CPU only"):
        run_benchmark(MODEL, backends=["torch", "openvino", "openvino-int8"], device="cuda")


def test_onnxruntime_without_cuda_on_a_gpu_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for an onnxruntime without the CUDA provider: refused after its export."""
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")

    def no_build(*_a: object, **_k: object) -> None:
        raise AssertionError("the model was built")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("efficientdet.benchmark.models.build_models", no_build)
    with pytest.raises(ValueError, match="this onnxruntime has no CUDA support"):
        run_benchmark(MODEL, backends=["torch", "onnxruntime"], device="cuda")


def test_ctrl_c_keeps_the_rows_measured_so_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C printed "interrupted" and lost every row already measured (a D0 run with
    --rounds 3 is many minutes); now they are printed (and written to --json), exit 130."""
    import efficientdet.benchmark.runner as runner

    real_measure, calls = runner._measure, []

    def measure(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:  # the second round
            raise KeyboardInterrupt
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(runner, "_measure", measure)
    out = tmp_path / "bench.json"
    argv = ["benchmark", MODEL, *TINY, "--backends", "torch", "--rounds", "2", "--json", str(out)]
    assert main([*argv, "--quiet"]) == 130
    captured = capsys.readouterr()
    assert "efficientdet benchmark: interrupted; the 4 rows measured so far are above" in captured.err
    assert sum(line.startswith("torch ") for line in captured.out.splitlines()) == 4
    assert "interrupted (Ctrl-C): only the rows measured before it" in captured.out
    doc = json.loads(out.read_text())
    assert {(r["mode"], r["batch_size"]) for r in doc["rows"]} == {(m, n) for m in ("network", "end-to-end") for n in (1, 2)}

    calls.clear()
    calls.append(1)  # the next call is "the second": nothing measured yet
    assert main([*argv[:-2], "--quiet"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "efficientdet benchmark: interrupted\n" and captured.out == ""
