"""The benchmark table's footnotes: what its columns and rows measure."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import INT8_BACKENDS

if TYPE_CHECKING:
    from .result import BenchmarkResult

__all__ = ["result_notes"]


def result_notes(result: BenchmarkResult, compare_effdet: bool, exporter: str) -> list[str]:
    """The footnotes printed under the table: what the columns and each kind of row measure."""
    notes = [
        "MACs = multiply-adds, the paper's and `efficientdet info`'s \"FLOPs\"; achieved GFLOP/s counts "
        "2 FLOPs per multiply-add (2 x MACs x images/s / 1e9), also for end-to-end rows.",
        "end-to-end = image files (synthetic JPEGs, or --images) -> detections: decode (as `predict`: a JPEG "
        "at least 3x the input is decoded at 1/2-1/8 scale), preprocess (resize, normalise, pad), network, "
        "postprocess (top-k, decode, NMS, rescale, copy to CPU); times are per batch.",
        "peak memory: resident-set high-water mark above the level before the backend's first call "
        "(GPU: allocated memory), cumulative over its rows.",
        (
            "heap: steady (glibc keeps freed memory in the process: no timing depends on page faults, "
            "faults/img ~0); `--malloc default` measures glibc's own policy, under which torch pipelines "
            "can take tens of thousands of page faults per image (see faults/img)."
            if result.heap == "steady"
            else f"heap: {result.heap} (glibc's own policy: torch pipelines may page-fault on reused memory; "
            "faults/img shows how much)."
        ),
    ]
    if any(r.backend.startswith(("onnxruntime", "openvino")) for r in result.rows):
        notes.append(
            f"ONNX graphs: exported with the {exporter} exporter (int8: torchscript), dynamic batch, BatchNorm "
            "folded; the onnxruntime and openvino graphs also select the max_candidates anchors with the highest "
            "class logit (as --backend onnxruntime/openvino; their network rows include that); onnxruntime-nms "
            "has NMS in the graph (its net stage includes it; no network-only rows). openvino runs the same "
            "float graph as onnxruntime in OpenVINO, float32."
        )
    if "random" in result.weights:
        notes.append(
            "random weights, BatchNorm statistics calibrated on the benchmark images: the top max_candidates "
            "(5000) scores all pass the 0.001 threshold, so NMS gets the full load of COCO evaluation settings."
        )
    if set(INT8_BACKENDS) & {r.backend for r in result.rows}:
        notes.append(
            "int8 rows: the file `export --int8` writes (QDQ, int8 per-channel weights, heads' last layers "
            "float; openvino-int8: raw outputs up to 16 classes, candidates above), calibrated on the benchmark's images unless "
            "--calibration is given: openvino-int8 by NNCF (`--quantizer nncf`, the default) run in OpenVINO; "
            "onnxruntime-int8 by ONNX Runtime (`--quantizer onnxruntime`, uint8 activations) run in ONNX Runtime."
        )
    if result.matmul_gflops:
        notes.append(
            f"x floor = latency / (FLOPs of the batch at this machine's float32 matmul rate, "
            f"{result.matmul_gflops:.0f} GFLOP/s): how far a row is from the fastest any float backend could be; "
            "only int8 can go below 1."
        )
    if compare_effdet:
        notes.append(
            "effdet end-to-end = its predict path: Pillow decode, transforms_coco_eval (ResizePad + "
            "ImageToNumpy), normalise, DetBenchPredict (raw model, top-5000, per-image NMS, no score "
            "threshold); effdet network = its raw EfficientDet. ratio = images/s / effdet's."
        )
    return notes
