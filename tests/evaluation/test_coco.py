"""COCO / VOC evaluation against pycocotools run directly, and hand-computed VOC AP."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from efficientdet.evaluation import (
    STAT_NAMES,
    CocoEvaluator,
    EvalResult,
    plot_precision_recall,
    voc_ap50,
)
from efficientdet.evaluation.coco import stat_text

T = torch.tensor
CLASSES = ["cat", "dog", "bird"]  # labels 0, 1, 2 -> category ids 1, 2, 3
H, W = 480, 640

# image id -> GT rows (xyxy, label, iscrowd). Areas: small < 32^2 < medium < 96^2 < large.
GT: dict[int, list[tuple[list[float], int, int]]] = {
    1: [([10, 10, 210, 210], 0, 0), ([300, 300, 350, 350], 1, 0), ([400, 50, 420, 70], 2, 0)],
    2: [([50, 50, 110, 100], 0, 0), ([200, 100, 500, 400], 0, 1), ([600, 10, 625, 30], 1, 0)],
    3: [([100, 100, 300, 250], 2, 0), ([400, 300, 460, 350], 1, 0), ([10, 400, 30, 425], 0, 0)],
    4: [],  # no ground truth at all
    5: [([100, 100, 120, 120], 0, 0), ([130, 100, 150, 118], 0, 0)],
}
# image id -> detections (xyxy, score, label).
DETS: dict[int, list[tuple[list[float], float, int]]] = {
    1: [
        ([12, 8, 208, 212], 0.95, 0),  # TP
        ([15, 15, 200, 200], 0.60, 0),  # duplicate -> FP
        ([305, 298, 352, 355], 0.85, 1),  # TP
        ([402, 52, 424, 74], 0.40, 2),  # IoU .579: TP at .50/.55 only
        ([500, 400, 560, 460], 0.30, 1),  # FP
    ],
    2: [
        ([52, 48, 112, 98], 0.88, 0),  # TP
        ([250, 150, 350, 250], 0.70, 0),  # inside the crowd box -> ignored
        ([598, 12, 626, 31], 0.50, 1),  # TP
        ([50, 50, 110, 100], 0.45, 2),  # right box, wrong class -> FP
    ],
    3: [
        ([110, 90, 290, 260], 0.90, 2),  # IoU .80
        ([400, 300, 460, 350], 0.35, 1),  # exact
        ([5, 395, 35, 430], 0.20, 0),  # IoU .476 -> FP
    ],
    4: [([0, 0, 50, 50], 0.80, 0)],  # on the image without GT -> FP
    5: [([100, 100, 120, 121], 0.75, 0)],  # second cat missed
}


def xywh(b: list[float]) -> list[float]:
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def coco_gt_dict() -> dict[str, Any]:
    """The GT in COCO format, written independently of the library."""
    anns = []
    for image_id, rows in GT.items():
        for box, label, crowd in rows:
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": label + 1,
                         "bbox": xywh(box), "area": float(w * h), "iscrowd": crowd})  # fmt: skip
    return {
        "images": [{"id": i, "height": H, "width": W} for i in GT],
        "annotations": anns,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)],
    }


def gt_list() -> list[dict[str, Any]]:
    """The GT as the library's per-image dicts (xyxy tensors, 0-based labels)."""
    out = []
    for image_id, rows in GT.items():
        out.append({
            "image_id": image_id, "height": H, "width": W,
            "boxes": torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([r[1] for r in rows], dtype=torch.int64),
            "iscrowd": torch.tensor([r[2] for r in rows], dtype=torch.int64),
        })  # fmt: skip
    return out


def det_dicts(dets: dict[int, list]) -> tuple[list[int], list[dict[str, torch.Tensor]]]:
    """Detector-format outputs for every GT image (empty where ``dets`` has none)."""
    ids, out = [], []
    for image_id in GT:
        rows = dets.get(image_id, [])
        ids.append(image_id)
        out.append({
            "boxes": torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor([r[1] for r in rows], dtype=torch.float32),
            "labels": torch.tensor([r[2] for r in rows], dtype=torch.int64),
        })  # fmt: skip
    return ids, out


def results_list(dets: dict[int, list]) -> list[dict[str, Any]]:
    """COCO results written independently of the library."""
    return [{"image_id": i, "category_id": lab + 1, "bbox": xywh(b), "score": s}
            for i, rows in dets.items() for b, s, lab in rows]  # fmt: skip


def direct_cocoeval(
    tmp_path: Path,
    dets: dict[int, list],
    cat_ids: list[int] | None = None,
    img_ids: list[int] | None = None,
) -> np.ndarray:
    """pycocotools straight: COCO(file), loadRes, COCOeval evaluate/accumulate/summarize."""
    gt_file = tmp_path / "direct_gt.json"
    gt_file.write_text(json.dumps({**coco_gt_dict(), "info": {}}))  # pycocotools 2.0.10's loadRes needs "info"
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_dt = coco_gt.loadRes(results_list(dets))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def stats_array(result: EvalResult) -> np.ndarray:
    return np.array([result.stats[k] for k in STAT_NAMES])


def empty_det() -> dict[str, torch.Tensor]:
    return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0).long()}


def evaluate(dets: dict[int, list], gt: Any = None) -> EvalResult:
    """CocoEvaluator over ``dets``; GT as the library's list unless ``gt`` is given."""
    evaluator = CocoEvaluator(gt_list(), CLASSES) if gt is None else CocoEvaluator(gt)
    evaluator.update(*det_dicts(dets))
    return evaluator.compute()


def perfect_dets() -> dict[int, list]:
    return {i: [(b, 1.0, lab) for b, lab, crowd in rows if not crowd] for i, rows in GT.items()}


@pytest.mark.parametrize("gt_form", ["list", "dict", "file"])
def test_stats_match_pycocotools(
    tmp_path: Path, gt_form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if gt_form == "list":
        result = evaluate(DETS)
    elif gt_form == "dict":
        result = evaluate(DETS, gt=coco_gt_dict())
    else:
        path = tmp_path / "gt.json"
        path.write_text(json.dumps(coco_gt_dict()))
        result = evaluate(DETS, gt=str(path))
    assert capsys.readouterr().out == ""  # pycocotools' prints suppressed
    expected = direct_cocoeval(tmp_path, DETS)
    assert list(result.stats) == list(STAT_NAMES)
    np.testing.assert_allclose(stats_array(result), expected, atol=1e-6, rtol=0)
    # The set is not trivially scored: AP strictly between 0 and 1.
    assert 0.1 < result.stats["AP"] < 0.9
    assert result.precision.shape == (10, 101, 3, 4, 3)


def test_perfect_detections_give_one() -> None:
    result = evaluate(perfect_dets())
    for name in STAT_NAMES:
        if name != "AR1":
            assert result.stats[name] == pytest.approx(1.0, abs=1e-9), name
    # AR1 keeps one detection per image and class: image 5 has two cats -> cat recall 4/5.
    assert result.stats["AR1"] == pytest.approx((4 / 5 + 1 + 1) / 3)
    assert all(v == pytest.approx(1.0) for v in result.per_class_ap.values())


def test_no_detections_give_zero() -> None:
    # Every image updated with nothing, and no update at all: pycocotools' loadRes would crash.
    result = evaluate({})
    never_updated = CocoEvaluator(gt_list(), class_names=CLASSES).compute()
    for res in (result, never_updated):
        assert all(res.stats[k] == 0.0 for k in STAT_NAMES)  # GT in every area range: 0, not -1
        assert all(v == 0.0 for v in res.per_class_ap.values())


def test_detection_on_image_without_gt_is_false_positive(tmp_path: Path) -> None:
    top = perfect_dets()
    top[4] = [([0, 0, 50, 50], 2.0, 0)]  # outranks all 5 cats: precision 1/2, 2/3, ... 5/6
    result = evaluate(top)
    np.testing.assert_allclose(stats_array(result), direct_cocoeval(tmp_path, top), atol=1e-6)
    # Envelope of 0, 1/2, ..., 5/6 is 5/6 at every recall; dog and bird stay perfect.
    assert result.per_class_ap["cat"] == pytest.approx(5 / 6)
    assert result.stats["AP"] == pytest.approx((5 / 6 + 1 + 1) / 3)
    # Ranked last, the false positive comes after full recall and costs nothing (COCO's rule).
    last = perfect_dets()
    last[4] = [([0, 0, 50, 50], 0.01, 0)]
    assert evaluate(last).stats["AP"] == pytest.approx(1.0)


def test_results_json_roundtrip(tmp_path: Path) -> None:
    evaluator = CocoEvaluator(gt_list(), class_names=CLASSES)
    evaluator.update(*det_dicts(DETS))
    path = evaluator.save_results(tmp_path / "out" / "results.json")
    loaded = json.loads(path.read_text())
    assert loaded == evaluator.results_json()
    key = lambda r: (r["image_id"], -r["score"])  # noqa: E731
    expected = sorted(results_list(DETS), key=key)
    got = sorted(loaded, key=key)
    assert len(got) == len(expected) == sum(len(v) for v in DETS.values())
    for g, e in zip(got, expected):
        assert g["image_id"] == e["image_id"] and g["category_id"] == e["category_id"]
        assert g["bbox"] == pytest.approx(e["bbox"]) and g["score"] == pytest.approx(e["score"])
    assert got[0]["bbox"] == pytest.approx([12, 8, 196, 204])  # xyxy [12, 8, 208, 212] -> xywh
    # The saved file is a valid loadRes input and scores the same.
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(evaluator.coco_gt, evaluator.coco_gt.loadRes(str(path)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    result = evaluator.compute()
    np.testing.assert_allclose(stats_array(result), ev.stats, atol=1e-6)


def test_per_class_ap_matches_single_category_cocoeval(tmp_path: Path) -> None:
    result = evaluate(DETS)
    assert result.class_names == CLASSES and result.category_ids == [1, 2, 3]
    for k, name in enumerate(CLASSES):
        alone = direct_cocoeval(tmp_path, DETS, cat_ids=[k + 1])
        assert result.per_class_ap[name] == pytest.approx(alone[0], abs=1e-6)
        assert result.per_class_ap50[name] == pytest.approx(alone[1], abs=1e-6)
    # COCO's AP is the mean of the per-class APs (each class has all T x R entries).
    mean_ap = np.mean(list(result.per_class_ap.values()))
    assert mean_ap == pytest.approx(result.stats["AP"], abs=1e-9)
    assert result.num_gt == {"cat": 5, "dog": 3, "bird": 2}  # crowd box not counted
    table = result.table()
    assert all(name in table for name in CLASSES) and "AP50" in table


def test_category_id_mapping_and_class_without_gt() -> None:
    names = [*CLASSES, "fish"]
    evaluator = CocoEvaluator(gt_list(), class_names=names, category_ids=[10, 20, 30, 40])
    evaluator.update(*det_dicts(DETS))
    assert {r["category_id"] for r in evaluator.results_json()} == {10, 20, 30}
    result = evaluator.compute()
    assert math.isnan(result.per_class_ap["fish"]) and math.isnan(result.per_class_ap50["fish"])
    assert result.table().count("fish") == 1
    reference = evaluate(DETS)
    for k in STAT_NAMES:
        assert result.stats[k] == pytest.approx(reference.stats[k], abs=1e-9)
    assert np.nanmean(list(result.per_class_ap.values())) == pytest.approx(result.stats["AP"])


def test_subset_of_images_and_coco_object_gt(tmp_path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = coco_gt_dict()
        coco.createIndex()
    evaluator = CocoEvaluator(coco)
    evaluator.update(*det_dicts(DETS))
    np.testing.assert_allclose(
        stats_array(evaluator.compute(image_ids=[1, 3])),
        direct_cocoeval(tmp_path, DETS, img_ids=[1, 3]),
        atol=1e-6,
    )
    assert "ignore" not in coco.dataset["annotations"][0]  # the caller's GT is not mutated


def test_bad_image_ids_are_named() -> None:
    evaluator = CocoEvaluator(gt_list(), class_names=CLASSES)
    empty = empty_det()
    with pytest.raises(ValueError, match=r"not in the ground truth: \[77, 999\]"):
        evaluator.update([1, 999, 77], [empty] * 3)
    assert evaluator.image_ids == []  # nothing half-added
    evaluator.update([1], [empty])
    with pytest.raises(ValueError, match=r"already updated: \[1\]"):
        evaluator.update([1], [empty])
    with pytest.raises(ValueError, match=r"^class_names is only for list GT; COCO GT names its own categories$"):
        CocoEvaluator(coco_gt_dict(), class_names=CLASSES)


def test_voc_ap50_hand_computed() -> None:
    # One image, 2 "cat" GT. In score order: TP, FP (duplicate of GT 0), TP.
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1. All-point: envelope 1 on (0, 1/2],
    # 2/3 on (1/2, 1] -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    # 11-point: recall >= 0 .. .5 (6 points) max precision 1, .6 .. 1 (5 points) 2/3
    # -> (6 + 5 * 2/3) / 11 = 28/33.
    gts = [{"boxes": T([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": T([0, 0])}]
    dets = [{
        "boxes": T([[20.0, 20, 30, 30], [1, 1, 11, 11], [0, 0, 10, 10]]),
        "scores": T([0.7, 0.8, 0.9]),  # given out of order on purpose
        "labels": T([0, 0, 0]),
    }]  # fmt: skip
    # By score: [0,0,10,10] .9 TP; [1,1,11,11] .8 best GT 0 (IoU .68) already taken -> FP;
    # [20,20,30,30] .7 TP.
    res = voc_ap50(gts, dets, ["cat", "dog"])
    assert res["per_class"]["cat"] == pytest.approx(5 / 6)
    assert math.isnan(res["per_class"]["dog"])  # no GT: NaN, left out of the mean
    assert res["mAP"] == pytest.approx(5 / 6)
    assert res["num_gt"] == {"cat": 2, "dog": 0}
    assert voc_ap50(gts, dets, ["cat", "dog"], use_07_metric=True)["mAP"] == pytest.approx(28 / 33)


def test_voc_ap50_difficult_and_misses() -> None:
    # GT 1 is difficult: the detection on it counts neither way, and it is not a positive.
    gts = [
        {"boxes": T([[0.0, 0, 10, 10], [50, 50, 60, 60]]), "labels": T([0, 0]),
         "difficult": T([False, True])},
        {"boxes": T([[0.0, 0, 10, 10]]), "labels": T([0])},
    ]  # fmt: skip
    dets = [
        {"boxes": T([[50.0, 50, 60, 60], [0, 0, 10, 10]]), "scores": T([0.9, 0.8]),
         "labels": T([0, 0])},
        empty_det(),
    ]  # fmt: skip
    # Counted: one TP over 2 positives -> precision 1 up to recall 1/2 -> AP 1/2.
    assert voc_ap50(gts, dets, ["cat"])["per_class"]["cat"] == pytest.approx(0.5)
    no_dets = [dets[1], dets[1]]
    assert voc_ap50(gts, no_dets, ["cat"])["mAP"] == 0.0


def test_plot_precision_recall(tmp_path: Path) -> None:
    result = evaluate(DETS)
    path = plot_precision_recall(result, tmp_path / "pr.png", iou=0.5)
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"^iou 0\.52 is not one of \[0\.5, 0\.55, "):
        plot_precision_recall(result, tmp_path / "bad.png", iou=0.52)
    # Many classes: only the top 20 get a legend entry; still one PNG.
    many = copy.copy(result)
    many.precision = np.repeat(result.precision, 10, axis=2)  # K = 30
    many.class_names = [f"c{i}" for i in range(30)]
    assert plot_precision_recall(many, tmp_path / "many.png", iou=0.75).stat().st_size > 1000


def test_gt_without_info_works_with_pycocotools_that_needs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """pycocotools 2.0.10's loadRes reads gt.dataset["info"] (KeyError without it); COCO JSONs
    often have none. Emulate that version's check: every evaluation path must still work."""
    original = COCO.loadRes

    def strict_load_res(self: COCO, res: Any) -> COCO:
        if "info" not in self.dataset:
            raise KeyError("info")
        return original(self, res)

    monkeypatch.setattr(COCO, "loadRes", strict_load_res)
    gt = coco_gt_dict()
    assert "info" not in gt
    for source in (gt, gt_list()):
        result = evaluate(perfect_dets(), gt=source) if source is gt else evaluate(perfect_dets())
        assert result.stats["AP"] == pytest.approx(1.0)


def test_absent_stats_print_as_a_dash_not_minus_one() -> None:
    """COCO's -1 (no ground truth in a range) printed as "all  -1.000  -1.000", a column wider
    than the rest, and eval --compare printed its "difference" as +0.000."""
    gt = [{"image_id": 1, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "height": H, "width": W}]
    evaluator = CocoEvaluator(gt, class_names=["cat"])
    evaluator.update([1], [{"boxes": T([[10.0, 10, 50, 50]]), "scores": T([0.9]), "labels": T([0])}])
    result = evaluator.compute()
    assert all(result.stats[k] == -1.0 for k in STAT_NAMES)
    lines = result.table().split("\n")
    assert lines[2] == "cat        -      -      0" and lines[4] == "all        -      -      0"
    assert {len(line) for line in lines[:5]} == {len(lines[0])}  # the columns line up
    assert [stat_text(v) for v in (0.6014, -1.0, math.nan)] == ["0.601", "-", "-"]
    assert [stat_text(v, difference=True) for v in (0.0172, -0.03, 0.0, math.nan)] == ["+0.017", "-0.030", "+0.000", "-"]


@pytest.mark.parametrize(
    "bad", [{"segmentation": [[1, 1, 9, 1, 9, 9]]}, {"bbox": None}, {"bbox": ["1", 2, 3, 4]}, {"category_id": None}]
)
def test_ground_truth_annotation_without_a_box_is_left_out(tmp_path: Path, bad: dict[str, Any]) -> None:
    """A COCO file with a segmentation-only annotation (read_coco drops it with a warning):
    eval on the file ended in KeyError: 'bbox' from the evaluator ('category_id' without one)."""
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 30]},
            {"id": 2, "image_id": 1, "category_id": 1, **bad},
        ],
        "categories": [{"id": 1, "name": "cat"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(doc))
    evaluator = CocoEvaluator(tmp_path / "gt.json", category_ids=[1])
    evaluator.update([1], [{"boxes": T([[10.0, 10.0, 50.0, 40.0]]), "scores": T([0.9]), "labels": T([0])}])
    result = evaluator.compute()
    assert result.stats["AP50"] == pytest.approx(1.0) and result.num_gt == {"cat": 1}


@pytest.mark.parametrize("ids", [(0, 1), (7, 7), (None, None), ("a", "b")])
def test_ground_truth_annotation_ids_do_not_change_the_score(tmp_path: Path, ids: tuple[Any, Any]) -> None:
    """Two boxes found exactly: AP50 1. Annotation id 0 (Roboflow's exports start there) is
    COCOeval's 'unmatched' mark, so its box was never found (AP50 0.5); a repeated id scored one
    box twice (0.25); missing or text ids failed (KeyError 'id', ValueError)."""
    anns: list[dict[str, Any]] = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 30]},
        {"image_id": 1, "category_id": 1, "bbox": [60, 40, 20, 20]},
    ]
    for ann, i in zip(anns, ids):
        if i is not None:
            ann["id"] = i
    doc = {"images": [{"id": 1, "width": 100, "height": 80}], "annotations": anns, "categories": [{"id": 1, "name": "cat"}]}
    evaluator = CocoEvaluator(doc, category_ids=[1])
    boxes = T([[10.0, 10.0, 50.0, 40.0], [60.0, 40.0, 80.0, 60.0]])
    evaluator.update([1], [{"boxes": boxes, "scores": T([0.9, 0.8]), "labels": T([0, 0])}])
    assert evaluator.compute().stats["AP50"] == pytest.approx(1.0) and doc["annotations"][0].get("id") == ids[0]
