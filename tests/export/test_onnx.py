"""ONNX export: ONNX Runtime vs PyTorch eager, with and without NMS in the graph, dynamic batch,
metadata, ``OnnxDetector`` vs ``Detector``, the torch formats and the dispatcher.

Models have random unit-scale weights and calibrated BNs (conftest), so outputs are O(1) and a
wrong op shows. Default runs use 256x256 inputs; the native sizes are ``slow``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from efficientdet import Detector, create_model  # noqa: E402
from efficientdet.export import (  # noqa: E402
    EXPORT_FORMATS,
    ExportError,
    OnnxDetector,
    OnnxMetadata,
    attach_candidates,
    attach_postprocess,
    check_onnx,
    export,
    export_onnx,
    read_onnx_metadata,
)
from efficientdet.export.graph import DetectionGraph, PostprocessGraph  # noqa: E402
from efficientdet.export.runtime import physical_cores  # noqa: E402
from efficientdet.inference.postprocess import postprocess, postprocess_candidates  # noqa: E402
from efficientdet.ops.anchors import anchors_for_config  # noqa: E402
from efficientdet.ops.outputs import flatten_outputs  # noqa: E402

TOL = 1e-4
SIZE = (256, 256)
MODELS = ["efficientdet_lite0", "efficientdet_d0"]
NATIVE = [("efficientdet_lite0", (320, 320)), ("efficientdet_d0", (512, 512))]
# A dynamo export takes ~5x longer than a TorchScript one (about a minute here): the default
# run uses the TorchScript exporter; the slow run covers every model with both.
DEFAULT_EXPORTER = {"efficientdet_lite0": False, "efficientdet_d0": False}


@pytest.fixture(scope="module")
def exported(make_model, tmp_path_factory):
    """``get(name, size, dynamo)`` -> (model, raw graph path, NMS graph path), exported once per
    module with a dynamic batch; the NMS graph is the raw one plus attached post-processing."""
    cache = {}

    def get(name: str, size: tuple[int, int] = SIZE, dynamo: bool | None = None):
        dynamo = DEFAULT_EXPORTER[name] if dynamo is None else dynamo
        key = (name, size, dynamo)
        if key not in cache:
            model = make_model(name, size)
            folder = tmp_path_factory.mktemp(f"{name}_{size[0]}x{size[1]}_{'dynamo' if dynamo else 'ts'}")
            raw = export_onnx(model, folder / "raw.onnx", dynamo=dynamo)
            nms = attach_postprocess(raw, folder / "nms.onnx", dynamo=dynamo)
            cache[key] = (model, raw, nms)
        return cache[key]

    return get


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _images(batch: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _check_raw(model, raw_path, size):
    session = _session(raw_path)
    assert session.get_inputs()[0].shape[0] == "batch"
    for batch in (1, 2):  # one graph, both batch sizes
        x = _images(batch, size, seed=batch)
        cls, box = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            ref_cls, ref_box = flatten_outputs(*model(x), model.config.num_classes)
        assert min(ref_cls.std().item(), ref_box.std().item()) > 0.05  # non-trivial outputs
        assert cls.shape == tuple(ref_cls.shape) and box.shape == tuple(ref_box.shape)
        assert np.abs(cls - ref_cls.numpy()).max() < TOL
        assert np.abs(box - ref_box.numpy()).max() < TOL


def _check_nms(model, nms_path, size, assert_same_detections):
    session = _session(nms_path)
    cfg = model.config
    anchors = anchors_for_config(cfg.anchors, size)
    d = cfg.postprocess.max_detections
    x = _images(2, size, seed=7)
    with torch.no_grad():
        cls_out, box_out = model(x)
    # The graph clips to the whole input, i.e. postprocess with the input as the image size.
    ref = postprocess(cls_out, box_out, anchors, cfg.postprocess, cfg.num_classes, image_sizes=[size] * 2)
    runs = {2: session.run(None, {"images": x.numpy()}), 1: session.run(None, {"images": x[:1].numpy()})}
    for batch, (boxes, scores, labels, counts) in runs.items():
        assert boxes.shape == (batch, d, 4) and scores.shape == (batch, d) and labels.shape == (batch, d)
        assert labels.dtype == np.int64 and counts.dtype == np.int64
        for i in range(batch):
            n = int(counts[i])
            assert n > 10  # the comparison is not vacuous
            assert (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all() and (boxes[i, n:] == 0).all()
            assert (np.diff(scores[i, :n]) <= 0).all()  # sorted, best first
            got = {"boxes": torch.from_numpy(boxes[i, :n]), "scores": torch.from_numpy(scores[i, :n]),
                   "labels": torch.from_numpy(labels[i, :n])}
            assert_same_detections(got, ref[i], max_detections=d)
    # The eager twin of the graph (our NMS op's PyTorch implementation) agrees as well.
    post = PostprocessGraph(anchors, cfg.num_classes, size, cfg.postprocess.max_candidates,
                            cfg.postprocess.score_threshold, cfg.postprocess.iou_threshold, d)
    with torch.no_grad():
        boxes, scores, labels, counts = DetectionGraph(model, post).eval()(x)
    for i in range(2):
        n = int(counts[i])
        assert_same_detections({"boxes": boxes[i, :n], "scores": scores[i, :n], "labels": labels[i, :n]}, ref[i], d)


@pytest.mark.parametrize("name", MODELS)
def test_raw_outputs_match_eager(exported, name):
    model, raw, _ = exported(name)
    _check_raw(model, raw, SIZE)


@pytest.mark.parametrize("name", MODELS)
def test_nms_graph_matches_postprocess(exported, name, assert_same_detections):
    model, _, nms = exported(name)
    _check_nms(model, nms, SIZE, assert_same_detections)


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name,size", NATIVE + [(name, SIZE) for name in MODELS])
def test_all_exporters_and_sizes(exported, name, size, dynamo, assert_same_detections):
    model, raw, nms = exported(name, size, dynamo)
    _check_raw(model, raw, size)
    _check_nms(model, nms, size, assert_same_detections)


def _photos(sizes, seed):
    g = np.random.default_rng(seed)
    return [g.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("name", MODELS)
def test_onnx_detector_matches_detector(exported, name, assert_same_detections):
    model, raw, nms = exported(name)
    detector = Detector(model)
    d = model.config.postprocess.max_detections
    # Letterboxed images (padding inside the input): the raw graph + postprocess is Detector's pipeline.
    photos = _photos([(300, 200), (180, 400), (256, 256)], seed=1)
    want = detector(photos)
    got = OnnxDetector(raw, batch_size=2)(photos)
    assert len(got) == len(want) == 3 and min(len(w["scores"]) for w in want) > 10  # the comparison is not vacuous
    for g, w in zip(got, want):
        assert g["names"] == [model.class_names[i] for i in g["labels"].tolist()]
        assert_same_detections(g, w, max_detections=d)
    # Graph with NMS: same results where the image fills the input (see DetectionGraph docs).
    photos = _photos([(300, 300), (128, 128)], seed=2)
    onnx_nms = OnnxDetector(nms)
    for g, w in zip(onnx_nms(photos), detector(photos), strict=True):
        assert g["names"] == [model.class_names[i] for i in g["labels"].tolist()]
        assert_same_detections(g, w, max_detections=d)
    # A stricter score threshold is applied after the graph, exactly.
    for g, w in zip(onnx_nms(photos, score_threshold=0.6), detector(photos, score_threshold=0.6), strict=True):
        assert len(w["scores"]) > 10 and (g["scores"] >= 0.6).all()  # not vacuous: 100 of them here
        assert_same_detections(g, w, max_detections=d)
    with pytest.raises(ValueError, match="below"):
        onnx_nms(photos, score_threshold=0.0001)


@pytest.mark.parametrize("name", MODELS)
def test_candidate_graph_gives_the_same_detections(exported, name, assert_same_detections, tmp_path):
    model, raw, _ = exported(name)
    cfg = model.config
    c = cfg.postprocess.max_candidates  # 5000 of 12276 anchors at 256
    path = attach_candidates(raw, tmp_path / "cand.onnx")
    meta = read_onnx_metadata(path)
    assert meta.candidates and meta.postprocess == {"max_candidates": c} and not meta.nms_inside
    x = _images(2, SIZE, seed=5)
    logits, codes, rows = _session(path).run(None, {"images": x.numpy()})
    assert logits.shape == (2, c, cfg.num_classes) and codes.shape == (2, c, 4) and rows.dtype == np.int64
    with torch.no_grad():
        cls, box = flatten_outputs(*model(x), cfg.num_classes)
    for i in range(2):  # the rows are the c anchors with the largest class logit
        best = cls[i].amax(1)
        assert set(rows[i].tolist()) == set(best.topk(c).indices.tolist())
        assert np.abs(logits[i] - cls[i, rows[i]].numpy()).max() < TOL
        assert np.abs(codes[i] - box[i, rows[i]].numpy()).max() < TOL
    anchors = anchors_for_config(cfg.anchors, SIZE)
    # exact: the same as postprocess on the full outputs (also for a smaller top-k than c)
    for nms, k in (("hard", c), ("soft", c), ("hard", 2000)):
        post = dataclasses.replace(cfg.postprocess, nms=nms, max_candidates=k)
        want = postprocess([cls.transpose(1, 2).unsqueeze(-1)], [box.transpose(1, 2).unsqueeze(-1)], anchors, post,
                           cfg.num_classes)  # fmt: skip
        got = postprocess_candidates(cls.gather(1, torch.from_numpy(rows)[..., None].expand(-1, -1, cfg.num_classes)),
                                     box.gather(1, torch.from_numpy(rows)[..., None].expand(-1, -1, 4)),
                                     torch.from_numpy(rows), anchors, post)  # fmt: skip
        for g, w in zip(got, want):
            assert len(w["scores"]) > 10
            assert torch.equal(g["labels"], w["labels"]) and torch.equal(g["scores"], w["scores"])
            assert torch.equal(g["boxes"], w["boxes"])
    # OnnxDetector on it: Detector's detections (letterboxed images)
    photos = _photos([(300, 200), (180, 400)], seed=1)
    for g, w in zip(OnnxDetector(path)(photos), Detector(model)(photos)):
        assert_same_detections(g, w, max_detections=cfg.postprocess.max_detections)
    too_many = OnnxDetector(path, postprocess_config=dataclasses.replace(cfg.postprocess, max_candidates=c + 1))
    with pytest.raises(ValueError, match=f"max_candidates >= {c + 1}"):
        too_many(photos)
    with pytest.raises(ValueError, match="already has post-processing"):
        attach_postprocess(path)


def test_metadata_round_trip(exported):
    model, raw, nms = exported("efficientdet_lite0")
    cfg = model.config
    for path, inside in ((raw, False), (nms, True)):
        meta = read_onnx_metadata(path)
        assert meta.model_name == cfg.name and meta.image_size == SIZE
        assert meta.mean == tuple(cfg.preprocess.mean) and meta.std == tuple(cfg.preprocess.std)
        assert meta.class_names == model.class_names and meta.num_classes == cfg.num_classes
        assert meta.nms_inside is inside
        assert meta.outputs == tuple(o.name for o in _session(path).get_outputs())
        assert meta.config == cfg.replace(image_size=SIZE)
        assert OnnxMetadata.from_props(meta.to_props()) == meta
    post = read_onnx_metadata(nms).postprocess
    assert post["score_threshold"] == cfg.postprocess.score_threshold
    assert post["iou_threshold"] == cfg.postprocess.iou_threshold
    assert post["max_detections"] == cfg.postprocess.max_detections
    assert read_onnx_metadata(raw).postprocess is None
    with pytest.raises(ValueError, match=r"nms\.onnx already has post-processing inside$"):
        attach_postprocess(nms)


def test_nms_graph_without_its_threshold_in_the_metadata(exported, tmp_path):
    """A graph with NMS inside whose metadata lacks its score threshold (written by hand or by
    another tool) takes any score_threshold, as check_graph_options does (not a TypeError)."""
    import onnx

    _, _, nms = exported("efficientdet_lite0")
    proto = onnx.load(str(nms))
    dataclasses.replace(read_onnx_metadata(proto), postprocess=None).write_to(proto)
    path = tmp_path / "no_threshold.onnx"
    onnx.save(proto, str(path))
    assert OnnxDetector(path).config_with_threshold(0.0001).score_threshold == 0.0001


def test_metadata_is_read_without_onnx_and_damage_is_named(exported, tmp_path):
    """The wire-format reader gives onnx.load's metadata; a truncated, garbled or internally
    damaged file is a one-line error naming it."""
    import onnx

    from efficientdet.export.metadata import metadata_props

    _, raw, nms = exported("efficientdet_lite0")
    for path in (raw, nms):
        want = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        assert metadata_props(path) == want and "efficientdet.format_version" in want
    data = raw.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.onnx: not a readable ONNX graph \(ValueError: field 7 runs past the end"):
        read_onnx_metadata(cut)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x0f" + bytes(range(200)))  # wire type 7 does not exist
    with pytest.raises(ValueError, match=r"junk\.onnx: not a readable ONNX graph .*bad protobuf tag"):
        read_onnx_metadata(junk)
    # Damage inside the graph passes the metadata (which is intact) and is named when loading.
    damaged = tmp_path / "damaged.onnx"
    flipped = bytearray(data)
    flipped[1000:1400] = bytes(b ^ 0xFF for b in flipped[1000:1400])
    damaged.write_bytes(bytes(flipped))
    assert read_onnx_metadata(damaged) == read_onnx_metadata(raw)
    with pytest.raises(ValueError, match=r"damaged\.onnx: ONNX Runtime cannot load this graph"):
        OnnxDetector(damaged)


def test_onnx_detector_threads(exported):
    _, raw, _ = exported("efficientdet_lite0")
    detector = OnnxDetector(raw)
    assert detector.session.get_session_options().intra_op_num_threads == physical_cores()
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def test_onnx_detector_host_stages_use_one_torch_thread(exported, monkeypatch):
    """Decoding, preprocessing and post-processing run on one torch thread (the runtime has its
    own threads; torch's spinning OpenMP workers would compete with them), restored after."""
    import efficientdet.data.decode as decode_module
    import efficientdet.export.runtime as runtime_module

    _, raw, _ = exported("efficientdet_lite0")
    detector = OnnxDetector(raw)
    seen: dict[str, int] = {}

    def spy(name, real):
        def wrapped(*args, **kwargs):
            seen[name] = torch.get_num_threads()
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(runtime_module, "preprocess_batch", spy("prepare", runtime_module.preprocess_batch))
    monkeypatch.setattr(runtime_module, "postprocess", spy("postprocess", runtime_module.postprocess))
    monkeypatch.setattr(decode_module, "load_images", spy("decode", decode_module.load_images))
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        detector([torch.zeros(3, 50, 60, dtype=torch.uint8)])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
    assert seen == {"prepare": 1, "postprocess": 1, "decode": 1}


def test_torchscript_exporter_fixed_batch_custom_thresholds(make_model, tmp_path, assert_same_detections):
    """The other exporter (TorchScript-based), NMS in the graph from the start, fixed batch 2."""
    model = make_model("efficientdet_lite0", SIZE)
    post = dataclasses.replace(model.config.postprocess, score_threshold=0.3, iou_threshold=0.6, max_detections=20)
    path = export_onnx(
        model, tmp_path / "ts.onnx", include_postprocess=True, dynamo=False, dynamic_batch=False, batch_size=2,
        opset=17, score_threshold=0.3, iou_threshold=0.6, max_detections=20,
    )
    session = _session(path)
    assert session.get_inputs()[0].shape == [2, 3, *SIZE]
    x = _images(2, SIZE, seed=11)
    boxes, scores, labels, counts = session.run(None, {"images": x.numpy()})
    assert boxes.shape == (2, 20, 4)
    with torch.no_grad():
        ref = postprocess(*model(x), anchors_for_config(model.config.anchors, SIZE), post,
                          model.config.num_classes, image_sizes=[SIZE] * 2)
    for i in range(2):
        n = int(counts[i])
        got = {"boxes": torch.from_numpy(boxes[i, :n]), "scores": torch.from_numpy(scores[i, :n]),
               "labels": torch.from_numpy(labels[i, :n])}
        assert_same_detections(got, ref[i], max_detections=20)
    assert read_onnx_metadata(path).postprocess["score_threshold"] == 0.3
    # a fixed-batch graph still serves any number of images (padded runs)
    assert len(OnnxDetector(path)(_photos([(100, 120)] * 3, seed=3))) == 3


def test_torchscript_exporter_odd_level_sizes():
    """Odd pyramid sides take max_pool_same's explicit-padding branch, whose shape arithmetic the
    TorchScript exporter records (and, unpatched, exports with truncating division)."""
    from efficientdet.export.tracing import to_proto
    from efficientdet.models.layers import max_pool_same

    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return max_pool_same(x, 2)

    x = torch.randn(1, 2, 5, 7)
    proto = to_proto(Pool(), (x,), ["x"], ["y"], opset=17, dynamic_batch=True, dynamo=False)
    (y,) = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x.numpy()})
    assert y.shape == (1, 2, 3, 4)
    assert np.array_equal(y, Pool()(x).numpy())


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("program", marks=pytest.mark.slow)])
def test_torch_formats(make_model, tmp_path, fmt):
    model = make_model("efficientdet_lite0", SIZE)
    path = export(model, tmp_path / f"model.{fmt}", fmt)
    loaded = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
    for batch in (1, 3):
        x = _images(batch, SIZE, seed=20 + batch)
        with torch.no_grad():
            cls, box = loaded(x)
            ref_cls, ref_box = model(x)
        assert len(cls) == len(ref_cls) == 5
        for a, b in zip(list(cls) + list(box), list(ref_cls) + list(ref_box)):
            assert (a - b).abs().max() < TOL


def test_export_dispatch_errors(make_model, tmp_path):
    model = make_model("efficientdet_lite0", SIZE)
    with pytest.raises(ValueError) as err:
        export(model, tmp_path / "m.tflite", "tflite")
    assert all(fmt in str(err.value) for fmt in EXPORT_FORMATS)
    with pytest.raises(ValueError, match="is a folder; give the file to write"):
        export(model, tmp_path, "torchscript")  # was IsADirectoryError from the final rename
    # Names the program would read as the wrong kind of file (a graph is known by .onnx alone).
    with pytest.raises(ValueError, match=r"m\.pt: an ONNX graph must be named \*\.onnx .* e\.g\. .*m\.onnx"):
        export(model, tmp_path / "m.pt", "onnx")
    with pytest.raises(ValueError, match=r"m\.ONNX: a \.onnx name is for --format onnx; .* e\.g\. .*m\.pt2"):
        export(model, tmp_path / "m.ONNX", "program")
    assert sorted(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="multiples of 32"):
        export_onnx(model, tmp_path / "m.onnx", image_size=250)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ExportError, match=r"bad\.onnx: onnx\.checker rejected the exported model: "):
        check_onnx(bad)


@pytest.mark.parametrize(
    ("score", "iou", "max_det", "message"),
    [(2.0, 0.5, 100, "score_threshold 2.0: must be in 0..1"), (-0.1, 0.5, 100, "score_threshold -0.1"),
     (0.3, 0.0, 100, "iou_threshold 0.0"), (0.3, 0.5, 0, "max_detections 0")],
)  # fmt: skip
def test_postprocess_graph_refuses_options_that_answer_nothing(score, iou, max_det, message):
    """A threshold of 2 (or no detections) used to make a graph that never detects anything."""
    anchors = torch.rand(10, 4)
    with pytest.raises(ValueError, match=message):
        PostprocessGraph(anchors, 3, (64, 64), 100, score, iou, max_det)


def test_program_export_saves_without_torch_archive_warnings(tmp_path, caplog):
    """torch.export.save/load on the ``.tmp`` name logged "Expect archive file to be a file
    ending in .pt2" and "Unable to load package" on every export; the file loads and runs."""
    import logging

    model = create_model("efficientdet_lite0", image_size=(128, 128), pretrained_backbone=False).eval()
    with caplog.at_level(logging.WARNING):
        path = export(model, tmp_path / "model.pt2", "exported-program", batch_size=1, dynamic_batch=False)
    assert not [r.getMessage() for r in caplog.records if "pt2" in r.getMessage() or "package" in r.getMessage()]
    cls, box = torch.export.load(str(path)).module()(torch.zeros(1, 3, 128, 128))
    assert len(cls) == len(box) == 5 and cls[0].shape == (1, 9 * 90, 16, 16)


def test_loading_a_graph_with_unused_initializers_prints_nothing(exported, tmp_path, capfd):
    """ONNX Runtime's int8 (QDQ) graphs of Lite0 carry ~170 initializers no node uses: every
    OnnxDetector (predict, eval, serve) and the export's own check printed a warning for each."""
    import onnx
    from onnx import numpy_helper

    _, raw, _ = exported("efficientdet_lite0")
    proto = onnx.load(str(raw))
    proto.graph.initializer.extend(numpy_helper.from_array(np.ones(2, np.float32), f"unused_{i}") for i in range(3))
    path = tmp_path / "unused.onnx"
    onnx.save(proto, str(path))
    capfd.readouterr()
    check_onnx(path)
    detector = OnnxDetector(path)
    assert len(detector.infer(np.zeros((1, 3, *SIZE), np.float32))) == 2
    err = capfd.readouterr().err
    assert "unused_" not in err, err
