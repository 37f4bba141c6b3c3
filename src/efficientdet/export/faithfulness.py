"""How closely an int8 graph follows its float graph: their raw outputs on the same images.

``export --int8`` measures this on images of the calibration set that were *not* used to
calibrate (held out), so the numbers say how the file will behave on new images like them,
and records them in the file's ``efficientdet.int8`` metadata. Two numbers, both on the raw
network outputs (before decoding and NMS, which are the same float code for both graphs):

* ``score_error``: mean |sigmoid(int8 logit) - sigmoid(float logit)| over the (anchor, class)
  pairs the float model scores >= ``min_score``: the scores that can become detections. The
  many near-zero scores would otherwise hide the error in the mean.
* ``box_error``: mean |int8 box code - float box code| at the anchors holding such a pair,
  divided by the spread (standard deviation) of the float codes over all anchors: a fraction
  of the codes' natural scale, comparable between models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Faithfulness", "MIN_SCORE", "compare_outputs", "measure_faithfulness"]

# Scores below this rarely reach a detection (predict keeps >= 0.3, eval >= 0.001 but ranks).
MIN_SCORE = 0.1


@dataclass(frozen=True)
class Faithfulness:
    """int8-vs-float output errors on ``images`` images (``held_out``: none of them calibrated
    the ranges); ``pairs``: the (anchor, class) pairs scoring >= ``min_score`` in float."""

    images: int
    held_out: bool
    score_error: float
    box_error: float
    pairs: int
    min_score: float = MIN_SCORE

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (for the file's metadata)."""
        return {k: round(v, 5) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def summary(self) -> str:
        """One line for the CLI."""
        plural = "s" if self.images != 1 else ""
        where = f"held-out image{plural}" if self.held_out else f"calibration image{plural} (no others were left to hold out)"
        if not self.pairs:
            return f"int8 vs float on {self.images} {where}: no score >= {self.min_score} to compare"
        return (
            f"int8 vs float on {self.images} {where}: score error {self.score_error:.3f} "
            f"(mean over {self.pairs} scores >= {self.min_score}), box error {self.box_error:.3f} of the codes' spread"
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))  # no overflow for large |x|


def compare_outputs(
    float_outputs: Sequence[tuple[np.ndarray, np.ndarray]],
    int8_outputs: Sequence[tuple[np.ndarray, np.ndarray]],
    held_out: bool,
    min_score: float = MIN_SCORE,
) -> Faithfulness:
    """Errors of ``int8_outputs`` against ``float_outputs``: per batch, class logits
    ``[N, T, K]`` and box codes ``[N, T, 4]`` (the raw layout of ``export_onnx``)."""
    if len(float_outputs) != len(int8_outputs) or not float_outputs:
        raise ValueError("need the same, non-zero number of float and int8 output batches")
    score_sum, pairs, box_sum, boxes_at, images = 0.0, 0, 0.0, 0, 0
    all_codes = []
    for (f_cls, f_box), (q_cls, q_box) in zip(float_outputs, int8_outputs):
        if f_cls.shape != q_cls.shape or f_box.shape != q_box.shape:
            raise ValueError(f"output shapes differ: float {f_cls.shape}/{f_box.shape}, int8 {q_cls.shape}/{q_box.shape}")
        f_score, q_score = _sigmoid(f_cls), _sigmoid(q_cls)
        scored = f_score >= min_score  # [N, T, K]
        score_sum += float(np.abs(f_score - q_score)[scored].sum())
        pairs += int(scored.sum())
        anchors = scored.any(axis=-1)  # [N, T]
        box_sum += float(np.abs(f_box.astype(np.float64) - q_box)[anchors].sum())
        boxes_at += int(anchors.sum()) * f_box.shape[-1]
        all_codes.append(f_box.reshape(-1).astype(np.float64))
        images += f_cls.shape[0]
    spread = float(np.concatenate(all_codes).std()) or 1.0
    return Faithfulness(
        images=images,
        held_out=held_out,
        score_error=score_sum / pairs if pairs else 0.0,
        box_error=box_sum / boxes_at / spread if boxes_at else 0.0,
        pairs=pairs,
        min_score=min_score,
    )


def measure_faithfulness(float_runtime: Any, int8_runtime: Any, batches: Sequence[np.ndarray], held_out: bool) -> Faithfulness:
    """Run both raw graphs (``OnnxDetector``s or ``OpenVinoDetector``s, through their ``infer``
    stage) on the preprocessed float32 ``[n, 3, H, W]`` ``batches`` and compare their outputs."""
    float_outputs = [tuple(float_runtime.infer(batch)[:2]) for batch in batches]
    int8_outputs = [tuple(int8_runtime.infer(batch)[:2]) for batch in batches]
    return compare_outputs(float_outputs, int8_outputs, held_out)  # type: ignore[arg-type]
