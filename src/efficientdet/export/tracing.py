"""Helpers shared by the exporters: model copies, the ONNX exporter call and its workarounds."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from efficientdet.models.fuse import fuse_batchnorm

from ..config import ModelConfig
from .graph import dynamo_translations, register_torchscript_symbolic

__all__ = ["ExportError", "image_size_for", "inference_copy", "set_output_shapes", "to_proto"]

# Exporter chatter that says nothing about our graphs: the TorchScript exporter's notes on
# Slice folding and on index (we index with non-negative indices only), the dynamo
# exporter's note that input and output batch axes share one name.
_EXPECTED_WARNINGS = (
    r"Constant folding - Only steps=1",
    r"Exporting aten::index operator",
    r".*The axis name: .* will not be used",
)


class ExportError(RuntimeError):
    """An export that failed, or whose result failed validation (checker, loading, a run)."""


def image_size_for(model: nn.Module, config: ModelConfig, image_size: int | tuple[int, int] | None) -> tuple[int, int]:
    """The export input size (h, w): ``image_size`` (a side or a pair) or the config's, checked
    against the model's size divisor (the backbone's static "same" padding needs multiples)."""
    if image_size is None:
        size = tuple(config.image_size)
    elif isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(image_size)
    divisor = int(getattr(model, "size_divisor", 32))
    if len(size) != 2 or any(s <= 0 or s % divisor for s in size):
        raise ValueError(f"image_size must be (h, w) with positive multiples of {divisor}, got {image_size}")
    return int(size[0]), int(size[1])


def inference_copy(model: nn.Module, fuse: bool) -> nn.Module:
    """A CPU float32 eval copy of ``model`` to trace (BNs folded when ``fuse``)."""
    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    return fuse_batchnorm(model, inplace=True) if fuse else model


@contextlib.contextmanager
def _quiet_onnx_ir() -> Iterator[None]:
    """onnx_ir logs a harmless "Attribute type is ambiguous" warning for an empty attribute
    in one of torchlib's translations; keep it out of the user's logs during our exports."""
    logger = logging.getLogger("onnx_ir")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def set_output_shapes(proto: Any, shapes: dict[str, tuple[int | str, ...]]) -> None:
    """Write the known output shapes into the graph (the TorchScript exporter leaves symbolic
    names such as ``Concatcls_logits_dim_1`` for dimensions that are in fact fixed)."""
    for output in proto.graph.output:
        if output.name not in shapes:
            continue
        shape = output.type.tensor_type.shape
        del shape.dim[:]
        for size in shapes[output.name]:
            dim = shape.dim.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size


def to_proto(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    opset: int,
    dynamic_batch: bool,
    dynamo: bool,
) -> Any:
    """Export ``module`` called on ``args`` to an in-memory ``onnx.ModelProto``."""
    import onnx

    with warnings.catch_warnings(), _quiet_onnx_ir():
        # Tracer warnings about Python bools on shapes are expected (the sizes are fixed), and
        # the TorchScript exporter's deprecation is a documented choice of the caller.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        for message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        try:
            if dynamo:
                shapes = tuple({0: torch.export.Dim("batch")} for _ in args) if dynamic_batch else None
                program = torch.onnx.export(
                    module,
                    args,
                    dynamo=True,
                    input_names=input_names,
                    output_names=output_names,
                    opset_version=opset,
                    dynamic_shapes=shapes,
                    custom_translation_table=dynamo_translations(),
                    verbose=False,
                )
                assert program is not None
                return program.model_proto
            register_torchscript_symbolic(opset)
            axes = {name: {0: "batch"} for name in input_names + output_names} if dynamic_batch else None
            buffer = io.BytesIO()
            torch.onnx.export(
                module,
                args,
                # The TorchScript exporter writes to file objects too; torch annotates ``f`` as a path.
                buffer,  # type: ignore[arg-type]
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                dynamic_axes=axes,
            )
            return onnx.load_from_string(buffer.getvalue())
        except Exception as err:
            kind = "dynamo" if dynamo else "TorchScript"
            raise ExportError(f"torch.onnx.export ({kind}) of {type(module).__name__} failed: {err}") from err
