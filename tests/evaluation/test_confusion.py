"""Confusion matrix against a hand-counted case, and its place in metrics.json / the per-class table."""

import json

import numpy as np
import torch

from efficientdet.evaluation.confusion import confusion_matrix, plot_confusion


def _hand_case():
    # Image 1: cat at (0,0,10,10), dog at (20,20,30,30), dog at (40,40,50,50).
    # Image 2: cat at (0,0,10,10), no detection for it.
    gts = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]), "labels": torch.tensor([0, 1, 1])},
        {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])},
    ]
    dets = [
        {
            "boxes": torch.tensor([
                [0.0, 0, 10, 10],     # cat -> cat (IoU 1)
                [0.0, 0, 10, 9],      # a duplicate dog on the cat: cat taken -> background FP "dog"
                [20.0, 20, 30, 30],   # dog predicted as cat -> confusion dog/cat
                [60.0, 60, 70, 70],   # cat on nothing -> background FP "cat"
                [40.0, 40, 50, 50],   # dog, but score 0.1 < 0.25: ignored -> that dog is missed
            ]),
            "scores": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.1]),
            "labels": torch.tensor([0, 1, 0, 0, 1]),
        },
        {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return gts, dets


def test_confusion_matrix_equals_hand_count() -> None:
    gts, dets = _hand_case()
    res = confusion_matrix(gts, dets, ["cat", "dog"], iou_threshold=0.5, score_threshold=0.25)
    #        pred: cat dog bg
    expected = [[1, 0, 1],  # true cat: one found, one missed (image 2)
                [1, 0, 1],  # true dog: one called cat, one missed (low score)
                [1, 1, 0]]  # background: a cat and a dog detection on nothing
    assert res.matrix.tolist() == expected
    assert res.false_positives == {"cat": 2, "dog": 1}
    assert res.missed == {"cat": 1, "dog": 2}


def test_difficult_objects_count_as_neither_found_nor_missed() -> None:
    # VOC's rule, as eval --voc applies it: the cat of image 2 and the dog called cat are
    # difficult now; they used to count as a miss and a dog/cat confusion
    gts, dets = _hand_case()
    gts[0]["difficult"] = torch.tensor([False, True, False])
    gts[1]["difficult"] = torch.tensor([True])
    res = confusion_matrix(gts, dets, ["cat", "dog"], iou_threshold=0.5, score_threshold=0.25)
    expected = [[1, 0, 0],  # true cat: one found; the difficult one unmatched is not missed
                [0, 0, 1],  # true dog: the difficult one's "cat" detection counts nowhere
                [1, 1, 0]]  # background: the same false positives as without flags
    assert res.matrix.tolist() == expected


def test_score_threshold_zero_counts_the_low_score_dog() -> None:
    gts, dets = _hand_case()
    res = confusion_matrix(gts, dets, ["cat", "dog"], iou_threshold=0.5, score_threshold=0.0)
    assert res.matrix[1].tolist() == [1, 1, 0]


def test_json_and_png(tmp_path) -> None:
    gts, dets = _hand_case()
    res = confusion_matrix(gts, dets, ["cat", "dog"])
    doc = json.loads(json.dumps(res.to_json()))
    assert doc["labels"] == ["cat", "dog", "background"] and np.array(doc["matrix"]).shape == (3, 3)
    out = plot_confusion(res, tmp_path / "c.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_eval_refuses_a_bad_confusion_threshold(tmp_path, capsys) -> None:
    from efficientdet.cli import main

    assert main(["eval", str(tmp_path / "x.json"), "--weights", "w", "--confusion-iou", "1.5", "--out", str(tmp_path / "o")]) == 2
    assert "efficientdet eval: error: --confusion-iou 1.5: must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_plot_leaves_the_callers_matplotlib_backend_alone(tmp_path) -> None:
    """plot_confusion called matplotlib.use("Agg"): evaluate(..., confusion=...) in a notebook
    switched its backend, and plt.show() showed nothing afterwards."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        gts, dets = _hand_case()
        plot_confusion(confusion_matrix(gts, dets, ["cat", "dog"]), tmp_path / "c.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
