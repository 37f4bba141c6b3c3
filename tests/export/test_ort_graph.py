"""The ONNX Runtime layout rewrites of the export (``ort_graph.py``, ``onnx_passes.py``): each one
leaves the graph it targets without the nodes it removes, and outputs equal to PyTorch eager.

Models have random unit-scale weights and calibrated BNs (conftest), so a wrong rewrite shows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from efficientdet.export import OnnxDetector, export_onnx  # noqa: E402
from efficientdet.export.onnx_passes import ceil_pools_to_pads, fold_pads, reduce_means_to_pools  # noqa: E402
from efficientdet.export.ort_graph import (  # noqa: E402
    ConstantFusionNode,
    FlatHead,
    OrtFlatOutputs,
    bake_fusion_weights,
    export_network,
)
from efficientdet.export.tracing import inference_copy  # noqa: E402
from efficientdet.models.bifpn import FusionNode  # noqa: E402
from efficientdet.ops.outputs import flatten_outputs  # noqa: E402

TOL = 1e-4
SIZE = (256, 256)


def _ops(proto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def _run(path, x: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x.numpy()})


def _assert_matches_eager(model, outputs: list[np.ndarray], x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = flatten_outputs(*model(x), model.config.num_classes)
    for got, want in zip(outputs, ref):
        assert want.std().item() > 0.05  # non-trivial outputs
        assert got.shape == tuple(want.shape)
        assert np.abs(got - want.numpy()).max() < TOL


@pytest.fixture(scope="module")
def d0_graph(make_model, tmp_path_factory):
    """(model, TorchScript-exported raw D0 graph at 256): the exporter that leaves Pads."""
    model = make_model("efficientdet_d0", SIZE)
    path = export_onnx(model, tmp_path_factory.mktemp("d0") / "raw.onnx", dynamo=False)
    return model, path


def test_fusion_weights_are_constants(d0_graph):
    """No Div (57 in D0 before: relu(w) / (sum + eps) per input), no run-time-sized Resize."""
    model, path = d0_graph
    proto = onnx.load(str(path))
    ops = _ops(proto)
    assert "Div" not in ops and "ReduceSum" not in ops and "Relu" not in ops
    resizes = [n for n in proto.graph.node if n.op_type == "Resize"]
    assert len(resizes) == 12  # 4 top-down nodes x 3 cells, each by exactly 2
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node if n.op_type == "Constant"}
    for node in resizes:
        assert len(node.input) == 3 or not node.input[3]  # scales, no sizes
        scales = inits.get(node.input[2], consts.get(node.input[2]))
        assert scales is not None and scales.tolist() == [1.0, 1.0, 2.0, 2.0]
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    _assert_matches_eager(model, _run(path, x), x)


def test_pads_folded_into_convs(d0_graph):
    """The backbone's five stride-2 convs: Pad + Conv -> one Conv with TF's asymmetric "same"
    pads (k=3: 0 before, 1 after; k=5: 1 before, 2 after)."""
    _, path = d0_graph
    proto = onnx.load(str(path))
    assert "Pad" not in _ops(proto)
    pads = [list(a.ints) for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "pads"]
    asymmetric = sorted(p for p in pads if p[:2] != p[2:])
    assert asymmetric == [[0, 0, 1, 1]] * 3 + [[1, 1, 2, 2]] * 2


def test_pool_pads_of_odd_maps_fold_too(make_model, tmp_path):
    """Lite0 at 320: P5 10x10 -> P6 5x5 -> P7 3x3 and the BiFPN's down-samplings of P6 take -inf
    "same" pads computed from the maps' shapes (which shape inference cannot see through the
    Pads above them). Left in, ONNX Runtime's quantizer gave the -inf tensors infinite scales
    (int8 AP 0.151 against 0.201 float). They fold in rounds; the graph equals eager."""
    model = make_model("efficientdet_lite0", (320, 320))
    path = export_onnx(model, tmp_path / "lite0.onnx", dynamo=False)
    proto = onnx.load(str(path))
    assert "Pad" not in _ops(proto)
    pools = [list(a.ints) for n in proto.graph.node if n.op_type == "MaxPool" for a in n.attribute if a.name == "pads"]
    assert pools.count([1, 1, 1, 1]) == 4  # the odd 5x5 maps: one each side, like TF's "same"
    x = torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(4))  # a batch of 2: the pads do not depend on it
    _assert_matches_eager(model, _run(path, x), x)


def test_squeeze_excite_means_are_global_pools(d0_graph):
    """B0's 16 squeeze-excite means: ReduceMean -> GlobalAveragePool (a quantized kernel in ORT);
    the outputs of this graph equal eager in test_fusion_weights_are_constants."""
    ops = _ops(onnx.load(str(d0_graph[1])))
    assert "ReduceMean" not in ops and ops.count("GlobalAveragePool") == 16


def _reduce_mean_model(axes: list[int], keepdims: int, rank: int, opset: int) -> onnx.ModelProto:
    shape = [2, 3, 5, 7, 4][:rank]
    attrs = {"keepdims": keepdims}
    inputs = ["x"]
    nodes = []
    if opset >= 18:  # axes as an input, from a Constant node
        nodes.append(helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array(axes, np.int64))))
        inputs.append("axes")
    else:
        attrs["axes"] = axes
    nodes.append(helper.make_node("ReduceMean", inputs, ["y"], **attrs))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset, axes", [(17, [2, 3]), (18, [2, 3]), (18, [-1, -2])])
def test_reduce_mean_to_global_pool_exact(opset, axes):
    proto = _reduce_mean_model(axes, 1, 4, opset)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert reduce_means_to_pools(proto) == 1
    assert _ops(proto) == ["GlobalAveragePool"]
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == (2, 3, 1, 1) and np.abs(got - want).max() < 1e-6


@pytest.mark.parametrize("axes, keepdims, rank", [([2, 3], 0, 4), ([1, 2], 1, 4), ([2, 3], 1, 5), ([3], 1, 4)])
def test_other_reduce_means_are_left_alone(axes, keepdims, rank):
    """Not the spatial mean of a 4-D map with its dims kept: GlobalAveragePool would differ."""
    proto = _reduce_mean_model(axes, keepdims, rank, 17)
    assert reduce_means_to_pools(proto) == 0 and _ops(proto) == ["ReduceMean"]


def test_heads_flattened_by_one_matmul(d0_graph):
    """Each head's last 1x1 conv is one MatMul over all levels; no per-level output transposes."""
    proto = onnx.load(str(d0_graph[1]))
    ops = _ops(proto)
    assert ops.count("MatMul") == 2
    assert ops.count("Transpose") == 10  # the 64-channel inputs: 2 heads x 5 levels
    assert "BatchNormalization" not in ops


def _pad_conv_model(pad_value: float | None) -> onnx.ModelProto:
    """x [1, 2, 5, 6] -> Pad(pads from a Concat of constants) -> Conv 3x3 stride 2, pads [1, 0, 0, 0]."""
    g = np.random.default_rng(0)
    w = numpy_helper.from_array(g.standard_normal((3, 2, 3, 3)).astype(np.float32), "w")
    head = numpy_helper.from_array(np.array([0, 0, 0, 1], np.int64), "head")
    tail = numpy_helper.from_array(np.array([0, 0, 2, 1], np.int64), "tail")
    inits = [w, head, tail]
    pad_inputs = ["x", "pads"]
    if pad_value is not None:
        inits.append(numpy_helper.from_array(np.array(pad_value, np.float32), "value"))
        pad_inputs.append("value")
    nodes = [
        helper.make_node("Concat", ["head", "tail"], ["pads"], axis=0),
        helper.make_node("Pad", pad_inputs, ["padded"], mode="constant"),
        helper.make_node("Conv", ["padded", "w"], ["y"], strides=[2, 2], pads=[1, 0, 0, 0]),
    ]
    graph = helper.make_graph(
        nodes, "pad_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 3, 3])],
        inits,
    )  # fmt: skip
    # IR 10 (opset 18 needs >= 8): onnx 1.23 writes IR 14 by default, which onnxruntime 1.30 rejects
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.mark.parametrize("pad_value", [None, 0.0])
def test_fold_pads_exact(pad_value):
    proto = _pad_conv_model(pad_value)
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 6)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert fold_pads(proto) == 1
    onnx.checker.check_model(proto)
    assert _ops(proto) == ["Conv"]  # the pads' Concat went with the Pad
    (pads,) = [list(a.ints) for a in proto.graph.node[0].attribute if a.name == "pads"]
    assert pads == [1, 1, 2, 1]  # conv's own [1, 0, 0, 0] + the Pad's H/W (0, 1) before, (2, 1) after
    assert [i.name for i in proto.graph.initializer] == ["w"]
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == want.shape == (1, 3, 3, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_fold_pads_keeps_nonzero_padding():
    proto = _pad_conv_model(-1.0)  # a conv's own padding is zeros: not the same op
    assert fold_pads(proto) == 0
    assert _ops(proto) == ["Concat", "Pad", "Conv"]


def test_fold_minus_inf_pad_into_max_pool_exact():
    """The BiFPN's "same" max pool of an odd map: Pad(-inf) then MaxPool 3x3 stride 2."""
    fill = numpy_helper.from_array(np.array(-np.inf, np.float32), "fill")
    pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "pads")
    nodes = [
        helper.make_node("Pad", ["x", "pads", "fill"], ["padded"], mode="constant"),
        helper.make_node("MaxPool", ["padded"], ["y"], kernel_shape=[3, 3], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes, "pad_pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])],
        [fill, pads],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    x = -np.abs(np.random.default_rng(2).standard_normal((1, 2, 5, 5)).astype(np.float32))  # all < 0: a 0 fill would win
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert fold_pads(proto) == 1
    assert _ops(proto) == ["MaxPool"]
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fusion", ["fast_normalized", "softmax", "unbounded", "sum"])
def test_constant_fusion_nodes_equal_fusion_nodes(fusion):
    """All fusion modes, and Lite0 at 192 (P7 2x2 upsampled to P6 3x3: the size path)."""
    from efficientdet import create_model

    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", image_size=(192, 192), **{"feature_net.fusion": fusion}).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FusionNode) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape) * 2 - 0.5)  # some negative: relu matters
    feats = [torch.randn(1, c, s, s) for c, s in zip(model.backbone.feature_info.channels(), (24, 12, 6))]
    with torch.no_grad():
        want = model.feature_net(feats)
        baked = inference_copy(model, fuse=False)
        assert bake_fusion_weights(baked) == 8 * model.config.feature_net.repeats
        assert not any(type(m) is FusionNode for m in baked.modules())
        assert all(len(m.scales) == (0 if fusion == "sum" else len(m.inputs))
                   for m in baked.modules() if isinstance(m, ConstantFusionNode))  # fmt: skip
        got = baked.feature_net(feats)
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_flat_head_equals_flattened_head(make_model):
    model = make_model("efficientdet_d0", SIZE)
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        feats = model.feature_net(model.backbone(x))
        want = flatten_outputs(model.class_head(feats), model.box_head(feats), model.config.num_classes)
        got = (FlatHead(model.class_head, model.config.num_classes)(feats), FlatHead(model.box_head, 4)(feats))
        net = export_network(inference_copy(model, fuse=True), model.config.num_classes)
        assert isinstance(net, OrtFlatOutputs)
        whole = net(x)
    for g, h, w in zip(got, whole, want):
        assert w.std().item() > 0.05
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h, w, rtol=1e-5, atol=1e-5)


def test_onnx_detector_does_not_spin(d0_graph):
    session = OnnxDetector(d0_graph[1]).session
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize("kernel, stride", [(3, 2), (4, 3), (2, 2)])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8])
def test_ceil_pools_to_pads_exact(kernel: int, stride: int, size: int) -> None:
    """Ceil-mode pooling written as end pads: same output (shape and values) for every size,
    including maps smaller than the kernel (the BiFPN's P6 -> P7 on a 128 px input)."""
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride], ceil_mode=1)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, size, size + 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.random.default_rng(size).standard_normal((1, 2, size, size + 1)).astype(np.float32) - 3.0
    want = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    assert ceil_pools_to_pads(proto) == 1
    attrs = {a.name: helper.get_attribute_value(a) for a in proto.graph.node[0].attribute}
    assert attrs["ceil_mode"] == 0
    got = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_exported_pools_have_no_ceil_mode(d0_graph):
    proto = onnx.load(d0_graph[1])
    pools = [n for n in proto.graph.node if n.op_type == "MaxPool"]
    assert pools and all(
        helper.get_attribute_value(a) == 0 for n in pools for a in n.attribute if a.name == "ceil_mode"
    )
