"""Small ONNX graph passes applied to exported graphs: constant ``Pad`` -> ``Conv`` / ``MaxPool`` folding.

The backbone's stride-2 convs use TF "same" padding, asymmetric (0 before, 1 after), which a
PyTorch conv cannot express: the model pads explicitly (``F.pad``) and convolves unpadded. An
ONNX ``Conv`` takes asymmetric ``pads``, so the two fold into one node. The dynamo exporter's
optimiser does this itself; the TorchScript exporter leaves ``Pad`` nodes whose ``pads`` come
from a chain of shape ops that ONNX Runtime folds too late for its own Pad fusion: a separate
full copy of the padded map per stride-2 conv (~5% of D0's time) and a layout change for
ONNX Runtime's blocked convs around each.

The BiFPN's "same" max pooling of an odd-sized map pads with -inf the same way; ``MaxPool``'s
own ``pads`` never win the max, so that ``Pad`` folds into the pool. Besides the copy this
removes a tensor holding -inf, which int8 calibration would otherwise turn into an infinite
quantization scale.

Squeeze-and-excitation takes the spatial mean of a map (``x.mean((2, 3), keepdim=True)``), which
exports as ``ReduceMean``. ONNX Runtime has no quantized ``ReduceMean``, so an int8 graph runs it
in float between a dequantize and a quantize; ``GlobalAveragePool`` computes the same and has a
quantized kernel (``QLinearGlobalAveragePool``): ``reduce_means_to_pools`` swaps them.

The same pooling of an even-sized map is ``MaxPool`` with ``ceil_mode=1`` and no padding; on a
map smaller than the kernel (2x2 at P6 of a 128 px input) the window overhangs the map, which
OpenVINO's ONNX reader rejects ("kernel larger than the data shape after padding").
``ceil_pools_to_pads`` writes the overhang as explicit end ``pads`` (never winning the max):
the same windows, the same output size.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

import numpy as np

__all__ = ["ceil_pools_to_pads", "fold_pads", "reduce_means_to_pools", "remove_unused_nodes", "static_shapes"]

# Ops whose output is a function of their inputs' values only (no shapes of run-time tensors).
_FOLDABLE = {"Constant", "Cast", "Concat", "ConstantOfShape", "Reshape", "Slice", "Transpose", "Unsqueeze",
             "Squeeze", "Gather", "Add", "Sub", "Mul", "Div", "Neg", "Floor", "Ceil", "Max", "Min",
             "Identity"}  # fmt: skip

Shapes = dict[str, list[int | None]]  # tensor -> its dims (None: a dynamic one, the batch)


def static_shapes(proto: Any) -> Shapes:
    """The dims ONNX shape inference finds for each tensor (a named, dynamic dim as None)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto).graph
    shapes: Shapes = {}
    for v in [*inferred.value_info, *inferred.input, *inferred.output]:
        if v.type.tensor_type.HasField("shape"):
            dims = v.type.tensor_type.shape.dim
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _constant_value(
    name: str, producers: dict[str, Any], inits: dict[str, Any], cache: dict[str, Any], shapes: Shapes | None = None,
    batch: int = 1,
) -> Any:
    """The value of tensor ``name`` when it is computed from constants only, else None.

    With ``shapes``, a ``Shape`` of a tensor is a constant too, its dynamic dims read as
    ``batch`` (the TorchScript exporter computes "same" padding from the maps' shapes): a caller
    compares two batch values to know that a result does not depend on it."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    if name in cache:
        return cache[name]
    value = None
    node = producers.get(name)
    if name in inits:
        value = numpy_helper.to_array(inits[name])
    elif node is not None and node.op_type == "Shape" and shapes is not None and node.input[0] in shapes:
        full = np.array([batch if d is None else d for d in shapes[node.input[0]]], dtype=np.int64)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        value = full[attrs.get("start", 0) : attrs.get("end", len(full))]
    elif node is not None and node.op_type in _FOLDABLE:
        args = [_constant_value(i, producers, inits, cache, shapes, batch) if i else None for i in node.input]
        if all(a is not None for a, i in zip(args, node.input) if i):
            feeds = {i: a for i, a in zip(node.input, args) if i}
            # run() gives a dict only with intermediate=True; here the outputs, in order.
            outputs = cast(list[Any], ReferenceEvaluator(node).run(None, feeds))
            value = outputs[list(node.output).index(name)]
    cache[name] = value
    return value


# Consumer op -> the only fill value its own ``pads`` are equivalent to.
_FOLD_FILL = {"Conv": 0.0, "MaxPool": -np.inf}


def fold_pads(proto: Any) -> int:
    """Fold each constant ``Pad`` of the spatial dims that feeds only a ``Conv`` (fill 0) or a
    ``MaxPool`` (fill -inf) into that node's ``pads`` (in place); returns the number folded.
    Exact: a conv's own padding is zeros, a max pool's never wins the max.

    In rounds: a pad computed from the shape of a map below an unfolded ``Pad`` becomes
    constant once shape inference sees through that one (the BiFPN's pools after P6)."""
    total = 0
    while (folded := _fold_pads_once(proto)) > 0:
        total += folded
    return total


def _fold_pads_once(proto: Any) -> int:
    """One round of :func:`fold_pads`: the pads constant under the current shape inference."""
    from onnx import helper

    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for i in node.input:
            users.setdefault(i, []).append(node)
    outputs = {o.name for o in graph.output}
    shapes = static_shapes(proto)
    caches: dict[int, dict[str, Any]] = {1: {}, 2: {}}  # one per batch size tried
    folded = []
    for pad in graph.node:
        if pad.op_type != "Pad" or pad.output[0] in outputs or len(users.get(pad.output[0], [])) != 1:
            continue
        conv = users[pad.output[0]][0]
        if conv.op_type not in _FOLD_FILL or conv.input[0] != pad.output[0]:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
        if attrs.get("mode", b"constant") not in (b"constant", "constant") or (len(pad.input) > 3 and pad.input[3]):
            continue  # other modes, or an ``axes`` input
        # the same pads for batches of 1 and 2: they do not depend on the (dynamic) batch
        pads, other = (
            _constant_value(pad.input[1], producers, inits, caches[b], shapes, b) if len(pad.input) > 1 else None
            for b in (1, 2)
        )
        fill = _constant_value(pad.input[2], producers, inits, caches[1]) if len(pad.input) > 2 and pad.input[2] else 0
        if pads is None or other is None or not np.array_equal(pads, other):
            continue
        if fill is None or np.any(np.asarray(fill) != _FOLD_FILL[conv.op_type]):
            continue
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        if len(pads) != 8 or any(p < 0 for p in pads) or pads[0] or pads[1] or pads[4] or pads[5]:
            continue  # only non-negative spatial padding of a 4-D map
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if conv_attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        old = list(conv_attrs.get("pads", [0, 0, 0, 0]))
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        keep = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend(keep)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    if folded:
        remove_unused_nodes(proto)
    return len(folded)


def reduce_means_to_pools(proto: Any) -> int:
    """Replace (in place) each ``ReduceMean`` over the spatial axes of a 4-D map with
    ``keepdims=1`` by ``GlobalAveragePool``; returns the number replaced. Exact: both are the mean
    over H and W, shape [N, C, 1, 1]."""
    import onnx
    from onnx import helper

    graph = proto.graph
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.value_info, *inferred.input]
             if v.type.tensor_type.HasField("shape")}  # fmt: skip
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    replaced = 0
    for index, node in enumerate(graph.node):
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes")  # opset < 18: an attribute; from 18: the second input
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = _constant_value(node.input[1], producers, inits, {})
        if axes is None or attrs.get("keepdims", 1) != 1:
            continue
        if sorted(int(a) % 4 for a in np.asarray(axes).reshape(-1)) != [2, 3]:
            continue
        pool = helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name)
        graph.node.remove(node)
        graph.node.insert(index, pool)
        replaced += 1
    if replaced:
        remove_unused_nodes(proto)  # the axes constants
    return replaced


def ceil_pools_to_pads(proto: Any) -> int:
    """Rewrite (in place) each ``MaxPool`` with ``ceil_mode=1`` over a map of known size as
    ``ceil_mode=0`` with the end ``pads`` that give the same windows; returns the number rewritten.

    Per spatial side of size H (begin/end pads b, e, kernel k, stride s, no dilation): ceil mode
    gives ``out = ceil((H + b + e - k) / s) + 1`` windows, less one if the last would start in the
    end padding; end padding ``(out - 1) * s + k - H - b`` gives the same ``out`` in floor mode.
    """
    import onnx
    from onnx import helper

    inferred = onnx.shape_inference.infer_shapes(proto).graph
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in [*inferred.value_info, *inferred.input] if v.type.tensor_type.HasField("shape")
    }  # fmt: skip
    rewritten = 0
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(node.input[0]) if node.op_type == "MaxPool" else None
        if not shape or len(shape) != 4 or attrs.get("ceil_mode", 0) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1])):
            continue
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or None in shape[2:]:
            continue
        kernel, strides = attrs["kernel_shape"], attrs.get("strides", [1, 1])
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        for axis, size in enumerate(shape[2:]):
            k, st, begin, end = kernel[axis], strides[axis], pads[axis], pads[axis + 2]
            out = -(-(size + begin + end - k) // st) + 1
            if (out - 1) * st >= size + begin:
                out -= 1
            pads[axis + 2] = (out - 1) * st + k - size - begin
        keep = [a for a in node.attribute if a.name not in ("ceil_mode", "pads")]
        del node.attribute[:]
        node.attribute.extend(keep)
        node.attribute.extend([helper.make_attribute("ceil_mode", 0), helper.make_attribute("pads", pads)])
        rewritten += 1
    return rewritten


def remove_unused_nodes(proto: Any) -> int:
    """Drop nodes (in place) whose outputs nothing uses, and then unused initializers; returns
    the number of nodes removed."""
    graph = proto.graph
    removed = 0
    while True:
        used = Counter(i for n in graph.node for i in n.input)
        used.update(o.name for o in graph.output)
        dead = [n for n in graph.node if not any(used[o] for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
        removed += len(dead)
    used = Counter(i for n in graph.node for i in n.input)
    unused = [i for i in graph.initializer if not used[i.name]]
    for init in unused:
        graph.initializer.remove(init)
    return removed
