"""``OpenVinoDetector``: an exported ONNX graph (float or int8) run by OpenVINO on the CPU.

The same file, metadata and pre-/post-processing as :class:`~efficientdet.export.OnnxDetector`;
only the engine that runs the graph differs. OpenVINO compiles one executable per batch size
(its CPU kernels are fastest with static shapes), on first use of that size.

Precision: a float graph runs in float32 (``INFERENCE_PRECISION_HINT=f32``), so its results
equal ONNX Runtime's to float rounding. OpenVINO's own default on CPUs with bfloat16 units
(AVX512-BF16, AMX) would silently run a float graph in bfloat16; ``precision="bf16"`` asks for
that explicitly. An int8 graph runs with OpenVINO's default: its quantized layers are int8
either way, and the layers kept in float follow the CPU's fastest float type.

Compiling is most of a short ``predict``'s start (docs/quantization.md), so compiled
executables are kept in OpenVINO's own model cache (``CACHE_DIR``; by default
``<efficientdet cache>/openvino``, i.e. ``$EFFICIENTDET_CACHE``, ``$XDG_CACHE_HOME/efficientdet``
or ``~/.cache/efficientdet``), keyed by OpenVINO on the graph's content (weights and
quantization scales included), the batch size and the compile options. Where the folder cannot
be created, graphs are compiled every time.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PostprocessConfig
from .runtime import OnnxDetector, physical_cores

__all__ = ["PRECISIONS", "OpenVinoDetector", "default_compile_cache", "require_openvino", "usable_folder"]

PRECISIONS: tuple[str, ...] = ("auto", "f32", "bf16")


def default_compile_cache() -> Path:
    """Where compiled OpenVINO executables are kept by default: ``<efficientdet cache>/openvino``."""
    from ..weights.registry import weights_cache_dir

    return weights_cache_dir() / "openvino"


def usable_folder(folder: str | os.PathLike[str] | None) -> Path | None:
    """``folder`` created if needed, or None where it cannot be (read-only home, a file in the
    way): a cache that cannot be written only costs time, never the run."""
    if folder is None:
        return None
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


def require_openvino() -> None:
    """A clear error when OpenVINO is not installed."""
    if importlib.util.find_spec("openvino") is None:
        raise ImportError("the openvino backend needs OpenVINO: pip install 'efficientdet[openvino]'")


class OpenVinoDetector(OnnxDetector):
    """Runs an ONNX graph written by ``export_onnx`` / ``export --int8`` with OpenVINO (CPU).

    Same interface and results layout as :class:`OnnxDetector` (see there).

    Args:
        path: the ``.onnx`` file.
        providers: accepted for ``OnnxDetector``'s signature; only the CPU is supported.
        intra_op_threads: inference threads; default the physical cores.
        postprocess_config: for graphs without NMS; default the exported model's.
        batch_size: images per run (graphs exported with a fixed batch use theirs, padding).
        precision: ``auto`` (float32 for float graphs, OpenVINO's default for int8 graphs),
            ``f32`` or ``bf16`` (see the module docs).
        compile_cache: a folder for compiled executables, ``True`` (default) for
            :func:`default_compile_cache`, ``False`` to compile every time.
    """

    runtime_name = "OpenVINO"  # in errors

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        postprocess_config: PostprocessConfig | None = None,
        batch_size: int = 8,
        precision: str = "auto",
        compile_cache: bool | str | os.PathLike[str] = True,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown OpenVINO precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self.precision = precision
        if compile_cache is True:
            self.compile_cache = usable_folder(default_compile_cache())
        else:
            self.compile_cache = usable_folder(compile_cache) if compile_cache is not False else None
        super().__init__(path, providers, intra_op_threads, postprocess_config, batch_size)

    def open_graph(self, providers: Sequence[str] | None, intra_op_threads: int | None, session_options: Any) -> int | None:
        """Read ``self.path`` into OpenVINO (compiled per batch size in :meth:`infer`)."""
        require_openvino()
        import openvino as ov

        if providers and list(providers) != ["CPUExecutionProvider"]:
            raise ValueError("the openvino backend runs on the CPU only; use --backend onnxruntime for other devices")
        self.core = ov.Core()
        if self.compile_cache is not None:
            self.core.set_property({"CACHE_DIR": os.fspath(self.compile_cache)})
        self.graph = self.core.read_model(self.path)
        self.threads = intra_op_threads or physical_cores()
        precision = self.precision
        if precision == "auto":
            precision = "" if self.metadata.int8 else "f32"
        # LATENCY: one request at a time, all threads on it (what predict and serve do).
        self.compile_config: dict[str, Any] = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY"}
        if precision:
            self.compile_config["INFERENCE_PRECISION_HINT"] = precision
        self._requests: dict[int, Any] = {}
        first = self.graph.input(0).partial_shape[0]
        return first.get_length() if first.is_static else None

    def infer(self, array: np.ndarray) -> list[np.ndarray]:
        """One run on a float32 [n, 3, h, w] array; compiles the graph for batch n on first use."""
        n = int(array.shape[0])
        request = self._requests.get(n)
        if request is None:
            request = self._requests[n] = self._compile(n)
        results = request.infer({0: np.ascontiguousarray(array)})
        return [np.asarray(results[output]) for output in request.model_outputs]

    def compiled_batches(self) -> list[int]:
        """The batch sizes compiled so far."""
        return list(self._requests)

    def _compile(self, batch: int) -> Any:
        graph = self.graph.clone()
        shape = graph.input(0).partial_shape
        if not shape[0].is_static:
            dims = [batch] + [shape[i].get_length() for i in range(1, shape.rank.get_length())]
            graph.reshape({graph.input(0): dims})
        return self.core.compile_model(graph, "CPU", self.compile_config).create_infer_request()
