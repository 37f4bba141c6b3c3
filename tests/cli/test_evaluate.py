"""``efficientdet eval`` and ``evaluation.run.evaluate``: outputs, perfect detections, NMS modes."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from efficientdet import Detector, create_model
from efficientdet.cli import main
from efficientdet.data.formats import read_dataset
from efficientdet.data.records import DataIssue, DatasetIndex, DetectionRecord
from efficientdet.data.synthetic import make_synthetic_dataset
from efficientdet.evaluation import STAT_NAMES
from efficientdet.evaluation.run import evaluate, label_mapping
from efficientdet.inference.protocol import StagedDetector
from efficientdet.models.efficientdet import EfficientDet
from efficientdet.weights.coco import coco90_class_names

NAMES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_images=6, image_size=(128, 128), seed=0)


@pytest.fixture(scope="module")
def index(dataset: Path) -> DatasetIndex:
    return read_dataset(dataset)


@pytest.fixture(scope="module")
def model() -> EfficientDet:
    torch.manual_seed(0)
    return create_model("efficientdet_lite0", num_classes=3, class_names=NAMES)


def _perfect_forward(
    records: list[Any], model: EfficientDet, fake_heads: Callable, duplicates: bool = False
) -> Callable[..., Any]:
    """A fake forward returning the ground truth of ``records``, batch after batch, in order
    (boxes moved into model-input pixels the way EvalTransform / Detector letterbox them)."""
    queue = list(records)
    h_in, w_in = model.config.image_size

    def forward(images: Tensor) -> Any:
        batch = [queue.pop(0) for _ in range(images.shape[0])]
        targets = []
        for r in batch:
            scale = min(h_in / r.height, w_in / r.width)
            targets.append((r.boxes * scale, r.labels))
        return fake_heads(targets, model.config, (images.shape[-2], images.shape[-1]), duplicates=duplicates)

    return forward


def test_cli_end_to_end(dataset: Path, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval"
    args = ["eval", str(dataset), "--weights", str(tiny_weights), "--out", str(out), "--voc", "--quiet", "--max-images", "4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in printed
    assert "circle" in printed and "Pascal VOC" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["stats"]) == list(STAT_NAMES)
    assert metrics["num_images"] == 4 and metrics["model"] == "efficientdet_lite0" and "mAP" in metrics["voc"]
    assert set(metrics["per_class"]) == set(NAMES)
    results = json.loads((out / "detections_coco.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 2, 3}
    assert {r["image_id"] for r in results} <= {1, 2, 3, 4}
    assert all(len(r["bbox"]) == 4 and 0.001 <= r["score"] <= 1 for r in results)
    assert (out / "pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # confusion matrix: classes + background; the table lists FP and missed per class
    conf = metrics["confusion"]
    assert conf["labels"][-1] == "background" and len(conf["matrix"]) == len(NAMES) + 1
    gt_total = sum(v["num_gt"] for v in metrics["per_class"].values())
    assert sum(sum(row) for row in conf["matrix"][:-1]) == gt_total  # every object counted once
    assert all({"fp", "missed"} <= set(v) for v in metrics["per_class"].values())
    assert "FP  missed" in printed and (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_on_voc_writes_the_ground_truth_its_detections_are_scored_against(
    dataset: Path, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """detections_coco.json of a VOC / YOLO set used internal image ids that nothing mapped to
    files or boxes: ground_truth_coco.json is that ground truth, and pycocotools re-scores from
    the two files exactly what eval printed. A COCO dataset is its own ground truth (none written)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from efficientdet.data.voc import write_voc

    voc = write_voc(read_dataset(str(dataset)), tmp_path / "voc").parent
    out = tmp_path / "eval"
    assert main(["eval", str(voc), "--weights", str(tiny_weights), "--out", str(out), "--quiet", "--max-images", "6"]) == 0
    assert f"{out / 'ground_truth_coco.json'}" in capsys.readouterr().out
    truth = json.loads((out / "ground_truth_coco.json").read_text())
    assert len(truth["images"]) == 6 and all(Path(i["file_name"]).is_file() for i in truth["images"])
    gt = COCO(str(out / "ground_truth_coco.json"))
    evaluator = COCOeval(gt, gt.loadRes(str(out / "detections_coco.json")), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = json.loads((out / "metrics.json").read_text())["stats"]
    assert evaluator.stats[0] == pytest.approx(stats["AP"]) and evaluator.stats[1] == pytest.approx(stats["AP50"])
    coco_out = tmp_path / "eval_coco"
    assert main(["eval", str(dataset), "--weights", str(tiny_weights), "--out", str(coco_out), "--quiet", "--max-images", "2"]) == 0
    assert not (coco_out / "ground_truth_coco.json").exists()


def test_cli_out_that_is_a_file_exits_2_before_any_work(
    dataset: Path, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert main(["eval", str(dataset), "--weights", str(tiny_weights), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"efficientdet eval: error: --out {out}: is a file; eval writes into a folder (metrics.json, detections, plots)"
    ]
    assert out.read_text() == "mine"


def test_cli_class_count_mismatch_exits_2(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from efficientdet import save_model

    weights = tmp_path / "five.safetensors"
    save_model(create_model("efficientdet_lite0", num_classes=5), weights)
    assert main(["eval", str(dataset), "--weights", str(weights), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "5 classes" in err and "has 3" in err


def test_perfect_detections_score_1(
    index: DatasetIndex, model: EfficientDet, fake_heads: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model, "forward", _perfect_forward(index.records, model, fake_heads))
    model.train()
    run = evaluate(model, index, batch_size=4, voc=True, progress=False, num_workers=0)
    assert run.stats["AP"] == pytest.approx(1.0) and run.stats["AP50"] == pytest.approx(1.0)
    assert run.voc is not None and run.voc["mAP"] == pytest.approx(1.0)
    assert run.num_images == 6 and run.skipped_images == []
    assert model.training  # switched back after evaluating


def test_wrapped_model_and_detector_like_callable(
    index: DatasetIndex, model: EfficientDet, fake_heads: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Ema(torch.nn.Module):  # like timm's ModelEmaV2 / torch AveragedModel: the model in .module
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    monkeypatch.setattr(model, "forward", _perfect_forward(index.records, model, fake_heads))
    assert evaluate(Ema(model), index, progress=False).stats["AP"] == pytest.approx(1.0)

    # Any detector (TTADetector, OnnxDetector, a user's own) is run through its public stages,
    # on the decoded images at their own sizes.
    class PerfectDetector(StagedDetector):
        class_names = NAMES
        num_classes = model.config.num_classes
        preprocess_config = model.config.preprocess
        postprocess_config = model.config.postprocess

        def __init__(self) -> None:
            self.queue = list(index.records)

        def prepare(self, decoded: Sequence[Tensor]) -> list[Tensor]:
            return list(decoded)

        def forward(self, prepared: list[Tensor]) -> list[Any]:
            recs = [self.queue.pop(0) for _ in prepared]
            for r, im in zip(recs, prepared):
                assert tuple(im.shape[1:]) == (r.height, r.width)
            return recs

        def postprocess(self, outputs: list[Any], prepared: Any, config: Any = None) -> list[dict[str, Any]]:
            return [{"boxes": r.boxes, "scores": torch.ones(len(r.labels)), "labels": r.labels} for r in outputs]

    assert evaluate(PerfectDetector(), index, batch_size=4, progress=False).stats["AP"] == pytest.approx(1.0)


def test_unreadable_image_is_skipped_and_counted(
    index: DatasetIndex, model: EfficientDet, fake_heads: Callable, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_text("not a jpeg")
    records = list(index.records)
    broken = type(records[2])(bad, records[2].boxes, records[2].labels, records[2].image_id, 128, 128)
    damaged = DatasetIndex([*records[:2], broken, *records[3:]], index.class_names, category_ids=index.category_ids)
    good = [r for r in damaged.records if r is not broken]
    monkeypatch.setattr(model, "forward", _perfect_forward(good, model, fake_heads))
    with pytest.warns(UserWarning, match="broken.jpg"):
        run = evaluate(model, damaged, batch_size=4, progress=False)
    assert run.skipped_images == [str(bad)] and run.num_images == 5
    assert run.stats["AP"] == pytest.approx(1.0)  # the unreadable image is left out, not counted as missed


def test_soft_and_hard_nms_differ_on_the_same_outputs(
    index: DatasetIndex, model: EfficientDet, fake_heads: Callable, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    results = {}
    for nms in ("hard", "soft"):
        monkeypatch.setattr(model, "forward", _perfect_forward(index.records, model, fake_heads, duplicates=True))
        run = evaluate(model, index, batch_size=6, nms=nms, out_dir=tmp_path / nms, progress=False)
        results[nms] = json.loads((tmp_path / nms / "detections_coco.json").read_text())
        assert run.nms == nms and 0.0 <= run.stats["AP"] <= 1.0
        for r in results[nms]:  # valid COCO results on the dataset's images and categories
            x, y, w, h = r["bbox"]
            assert r["image_id"] in range(1, 7) and r["category_id"] in (1, 2, 3)
            assert 0.001 <= r["score"] <= 1 and x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 128 and y + h <= 128
    num_gt = index.num_objects
    # Hard NMS drops every shifted duplicate; soft-NMS keeps them with decayed scores.
    assert len(results["hard"]) == num_gt and len(results["soft"]) == 2 * num_gt
    soft_scores = sorted(r["score"] for r in results["soft"])
    assert soft_scores[num_gt - 1] < 0.73 * 0.5  # the duplicates' sigmoid(1) = 0.73, decayed
    assert sorted(r["score"] for r in results["hard"]) == pytest.approx(soft_scores[num_gt:])


def test_detector_input_uses_its_model(
    index: DatasetIndex, model: EfficientDet, fake_heads: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model, "forward", _perfect_forward(index.records, model, fake_heads))
    assert evaluate(Detector(model), index, progress=False).stats["AP"] == pytest.approx(1.0)


def test_label_mapping_coco90_layout() -> None:
    idx = DatasetIndex([], ["person", "car", "dog"], category_ids=[1, 3, 18])
    cats, to_dataset = label_mapping(90, coco90_class_names(), idx)
    assert cats == list(range(1, 91))
    assert to_dataset[[0, 2, 17]].tolist() == [0, 1, 2] and (np.delete(to_dataset, [0, 2, 17]) == -1).all()
    assert label_mapping(3, None, idx)[0] == [1, 3, 18]
    with pytest.raises(ValueError, match=r"90 classes \(x, x, x, x, x, ...\) but the dataset has 3"):
        label_mapping(90, ["x"] * 90, idx)


def test_label_mapping_by_class_name() -> None:
    """The same classes in another order (another format's export) or a split without one of
    them (VOC names the classes its split holds) map by name; before, the first scored with
    swapped labels (AP ~0, silently) and the second was refused."""
    swapped = DatasetIndex([], ["sign", "raccoon"])
    cats, to_dataset = label_mapping(2, ["raccoon", "sign"], swapped)
    assert to_dataset.tolist() == [1, 0] and cats == [2, 1]
    voc_val = DatasetIndex([], ["cat", "person"])  # the train split also had "dog"
    cats, to_dataset = label_mapping(3, ["cat", "dog", "person"], voc_val)
    assert to_dataset.tolist() == [0, -1, 1] and cats[0] == 1 and cats[2] == 2 and cats[1] not in (1, 2)
    coco = DatasetIndex([], ["person", "dog"], category_ids=[1, 18])
    assert label_mapping(3, ["dog", "kite", "person"], coco) == ([18, 19, 1], pytest.approx([1, -1, 0]))
    with pytest.warns(DataIssue, match=r"class names differ from the dataset's; scored label to label: 'a' as 'sign', 'b' as 'raccoon'"):
        assert label_mapping(2, ["a", "b"], swapped)[1].tolist() == [0, 1]  # other names: label to label, said
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unnamed classes ("0", "1": a YOLO set without names) map silently
        assert label_mapping(2, ["0", "1"], swapped)[1].tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"3 classes \(cat, dog, bird\) but the dataset has 2 \(cat, person\)"):
        label_mapping(3, ["cat", "dog", "bird"], voc_val)


def test_permuted_classes_score_as_the_same_dataset(
    index: DatasetIndex, model: EfficientDet, fake_heads: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Perfect detections still score 1.0 on the same dataset with its classes listed in reverse."""
    k = index.num_classes
    reverse = [
        DetectionRecord(r.image_path, r.boxes, k - 1 - r.labels, r.image_id, r.width, r.height) for r in index.records
    ]
    permuted = dataclasses.replace(index, records=reverse, class_names=index.class_names[::-1], category_ids=None)
    monkeypatch.setattr(model, "forward", _perfect_forward(index.records, model, fake_heads))
    run = evaluate(model, permuted, voc=True, progress=False, num_workers=0)
    assert run.stats["AP"] == pytest.approx(1.0) and run.voc is not None and run.voc["mAP"] == pytest.approx(1.0)


def test_cli_image_over_max_input_pixels_is_skipped_with_a_hint(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image

    root = make_synthetic_dataset(tmp_path / "synth", num_images=3, image_size=(128, 128), seed=1)
    first = sorted((root.parent / "images").iterdir())[0]
    Image.new("RGB", (300, 300), (90, 90, 90)).save(first, format="JPEG")  # 90,000 pixels
    out = tmp_path / "eval"
    args = ["eval", str(root), "--weights", str(tiny_weights), "--out", str(out), "--quiet", "--max-input-pixels", "20000"]
    assert main(args) == 0
    err = capsys.readouterr().err
    # One plain line per skipped image (as predict prints them), not a Python warning.
    assert f"efficientdet eval: warning: {first}" in err
    assert f"{first}: image has 90,000 pixels (300x300), over the limit of 20,000" in err
    assert "--max-input-pixels 90000" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["skipped_images"] == [str(first)]


def test_cli_images_outside_the_json_folder_need_the_flag(
    dataset: Path, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A COCO file kept apart from its images ("../images/x.jpg" from a splits/ folder, as
    # benchmarks/finetune_raccoon.py writes them): skipped by default, each one named.
    moved = json.loads(dataset.read_text())
    for img in moved["images"]:
        img["file_name"] = str(Path("..") / dataset.parent.name / img["file_name"])
    split = dataset.parent.parent / "elsewhere" / "val.json"
    split.parent.mkdir(exist_ok=True)
    split.write_text(json.dumps(moved))
    out = tmp_path / "eval"
    assert main(["eval", str(split), "--weights", str(tiny_weights), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("escapes the image root") == len(moved["images"]) and "--allow-outside-root for eval" in err
    assert f"{split}: no images to evaluate" in err
    args = ["eval", str(split), "--weights", str(tiny_weights), "--out", str(out), "--quiet", "--allow-outside-root"]
    assert main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["num_images"] == len(moved["images"]) == 6


def test_voc_ap50_leaves_difficult_objects_out(
    index: DatasetIndex, model: EfficientDet, fake_heads: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pascal VOC's difficult objects are neither hits nor misses in VOC AP50 (the devkit's rule):
    a model that finds every other object scores 1.0. They counted as missed before."""
    hard = [
        DetectionRecord(r.image_path, r.boxes, r.labels, r.image_id, r.width, r.height, torch.arange(r.num_objects) == 0)
        for r in index.records
    ]
    easy = [
        DetectionRecord(r.image_path, r.boxes[1:], r.labels[1:], r.image_id, r.width, r.height) for r in index.records
    ]
    assert sum(r.num_objects for r in easy) == index.num_objects - len(index) > 0
    monkeypatch.setattr(model, "forward", _perfect_forward(easy, model, fake_heads))
    run = evaluate(model, dataclasses.replace(index, records=hard), voc=True, progress=False, num_workers=0)
    assert run.voc is not None and run.voc["mAP"] == pytest.approx(1.0)
    assert run.stats["AR100"] < 1.0  # COCO metrics keep them as ordinary objects, as the official tools do


def test_compare_is_checked_before_the_first_evaluation(
    dataset: Path, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--compare`` with a graph that has NMS inside ran and printed a difference, though the
    same graph as --weights is refused; a missing --compare file failed after the first run."""
    pytest.importorskip("onnx")
    graph = tmp_path / "nms.onnx"
    assert main(["export", "--weights", str(tiny_weights), "--out", str(graph), "--image-size", "128", "--nms",
                 "--onnx-exporter", "torchscript"]) == 0  # fmt: skip
    capsys.readouterr()
    base = ["eval", str(dataset), "--weights", str(tiny_weights), "--quiet", "--max-images", "2"]
    out = tmp_path / "a"
    assert main([*base, "--out", str(out), "--compare", str(graph)]) == 2
    err = capsys.readouterr().err
    assert f"--compare {graph} has NMS inside" in err and not (out / "metrics.json").exists()
    out = tmp_path / "b"
    assert main([*base, "--out", str(out), "--compare", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "--compare " + str(tmp_path / "missing.safetensors") + ": no such file" in err
    assert not (out / "metrics.json").exists()


def test_negative_workers_is_one_line_naming_the_flag(
    dataset: Path, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """It was DataLoader's "num_workers option should be non-negative", naming no flag."""
    args = ["eval", str(dataset), "--weights", str(tiny_weights), "--out", str(tmp_path / "e"), "--workers", "-1"]
    assert main(args) == 2
    assert "--workers -1: must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
def test_compare_folder_says_what_it_evaluated(
    dataset: Path, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``out/compare/metrics.json`` held bare numbers (no weights, model or backend), and the
    "wrote" line did not mention the folder. With ``--voc`` the second run had no VOC AP50 and
    no confusion matrix, and the table no VOC column."""
    out = tmp_path / "e"
    assert main(["eval", str(dataset), "--weights", str(tiny_weights), "--out", str(out), "--quiet", "--voc",
                 "--max-images", "2", "--compare", str(tiny_weights)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith(f"{out / 'confusion_matrix.png'}, {out / 'compare'}")
    doc = json.loads((out / "compare" / "metrics.json").read_text())
    main_doc = json.loads((out / "metrics.json").read_text())
    assert doc["weights"] == str(tiny_weights) and doc["backend"] == "torch" and doc["model"] == "efficientdet_lite0"
    assert doc["stats"] == main_doc["compare"]["stats"]
    assert doc["voc"]["mAP"] == main_doc["voc"]["mAP"]  # the same weights: the same VOC mAP
    assert (out / "compare" / "confusion_matrix.png").is_file()
    header = next(line for line in printed.splitlines() if line.startswith("weights"))
    assert header.split()[-1] == "VOC"
    difference = next(line for line in printed.splitlines() if line.startswith("difference"))
    assert difference.split()[-1] == "+0.000" and len(difference.split()) == 4 + 7  # label, 7 columns


def test_compare_runs_the_checkpoint_at_the_graphs_input_size(
    dataset: Path, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``eval --weights m.onnx --compare ckpt`` (and the reverse) evaluated the checkpoint at its own
    input size (Lite0: 320) next to a graph exported at another (128): the difference, read as the
    quantization's for an int8 file, was the input size's too. Both now run at the graph's."""
    pytest.importorskip("onnxruntime")
    graph = tmp_path / "m128.onnx"
    assert main(["export", "--weights", str(tiny_weights), "--out", str(graph), "--image-size", "128",
                 "--onnx-exporter", "torchscript"]) == 0  # fmt: skip
    for first, second, name in ((graph, tiny_weights, "a"), (tiny_weights, graph, "b")):
        out = tmp_path / name
        assert main(["eval", str(dataset), "--weights", str(first), "--compare", str(second), "--out", str(out),
                     "--quiet", "--max-images", "2"]) == 0  # fmt: skip
        doc = json.loads((out / "metrics.json").read_text())
        other = json.loads((out / "compare" / "metrics.json").read_text())
        assert doc["image_size"] == [128, 128] and other["image_size"] == [128, 128], name
    assert main(["eval", str(dataset), "--weights", str(tiny_weights), "--out", str(tmp_path / "c"), "--quiet",
                 "--max-images", "1"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["image_size"] == [320, 320]  # no graph: its own
