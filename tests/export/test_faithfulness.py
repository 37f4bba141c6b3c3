"""int8-vs-float output errors: hand-computed values, the scores that count, the shapes checked."""

from __future__ import annotations

import math

import numpy as np
import pytest

from efficientdet.export.faithfulness import Faithfulness, compare_outputs


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_errors_are_counted_only_where_float_scores() -> None:
    """One image, 3 anchors, 2 classes. Float scores 0.5 and 0.8 at anchor 0, nothing at anchors
    1-2; int8 moves them to 0.6 and 0.7 (error 0.1 each) and also moves anchor 2's near-zero
    score and box, which must not count."""
    f_cls = np.array([[[0.0, _logit(0.8)], [-20.0, -20.0], [-20.0, -20.0]]], np.float32)
    q_cls = np.array([[[_logit(0.6), _logit(0.7)], [-20.0, -20.0], [_logit(0.05), -20.0]]], np.float32)
    f_box = np.array([[[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 1.0, -1.0]]], np.float32)
    q_box = f_box.copy()
    q_box[0, 0] += [0.2, -0.2, 0.0, 0.0]  # anchor 0 (scored): mean |diff| 0.1
    q_box[0, 2] += 5.0  # anchor 2 (not scored)
    got = compare_outputs([(f_cls, f_box)], [(q_cls, q_box)], held_out=True)
    assert got.images == 1 and got.pairs == 2 and got.held_out
    assert got.score_error == pytest.approx(0.1, abs=1e-6)
    spread = float(f_box.std())  # over all anchors' codes: sqrt(8/12)
    assert spread == pytest.approx(math.sqrt(8 / 12), rel=1e-6)
    assert got.box_error == pytest.approx(0.1 / spread, rel=1e-6)


def test_batches_pool_and_identical_outputs_have_no_error() -> None:
    rng = np.random.default_rng(0)
    batches = [(rng.normal(0, 3, (2, 50, 4)).astype(np.float32), rng.normal(0, 1, (2, 50, 4)).astype(np.float32))
               for _ in range(3)]  # fmt: skip
    got = compare_outputs(batches, batches, held_out=False)
    assert got.images == 6 and got.pairs > 0
    assert got.score_error == 0.0 and got.box_error == 0.0


def test_nothing_scored_and_bad_shapes() -> None:
    cls = np.full((1, 4, 2), -20.0, np.float32)
    box = np.zeros((1, 4, 4), np.float32)
    none = compare_outputs([(cls, box)], [(cls, box)], held_out=True)
    assert none.pairs == 0 and "no score >= 0.1" in none.summary()
    with pytest.raises(ValueError, match="output shapes differ"):
        compare_outputs([(cls, box)], [(cls[:, :3], box)], held_out=True)
    with pytest.raises(ValueError, match="non-zero number"):
        compare_outputs([], [], held_out=True)


def test_summary_and_metadata_round_trip() -> None:
    f = Faithfulness(images=32, held_out=True, score_error=0.01734, box_error=0.012, pairs=915)
    assert f.summary() == ("int8 vs float on 32 held-out images: score error 0.017 (mean over 915 scores >= 0.1), "
                           "box error 0.012 of the codes' spread")  # fmt: skip
    assert Faithfulness(**f.as_dict()) == f
    assert "no others were left to hold out" in Faithfulness(3, False, 0.1, 0.1, 5).summary()
