"""Sliced inference: tile layout, exact mapping back (objects in tile corners and on seams found
once), merging with the whole-image pass, torch and ONNX Runtime backends, bad input."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from efficientdet import create_model, save_model
from efficientdet.config import PostprocessConfig, PreprocessConfig
from efficientdet.inference.detector import Detector
from efficientdet.inference.preprocess import preprocess_batch
from efficientdet.inference.protocol import Prepared, StagedDetector, finish_detections
from efficientdet.inference.sliced import SlicedDetector, tile_origins
from efficientdet.ops.boxes import box_iou

COLOURS = torch.tensor(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255], [255, 255, 255]],
    dtype=torch.float32,
)


class ColourOracle(StagedDetector):
    """Finds each pure colour of COLOURS as one object (label = colour index) in the model input
    (tile-sized, so tiles run at scale 1); score = the input's scale (tiles beat the whole pass)."""

    def __init__(self, tile: int) -> None:
        self.preprocess_config = PreprocessConfig(image_size=(tile, tile), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        self.postprocess_config = PostprocessConfig()
        self.class_names = None
        self.batch_size = 4

    @property
    def num_classes(self) -> int:
        return len(COLOURS)

    def prepare(self, decoded: Sequence[torch.Tensor]) -> Prepared:
        return Prepared(*preprocess_batch(list(decoded), self.preprocess_config))

    def forward(self, prepared: Prepared) -> torch.Tensor:
        return prepared.inputs

    def postprocess(self, outputs: torch.Tensor, prepared: Prepared, config: PostprocessConfig | None = None) -> list:
        dets = []
        for image, scale in zip(outputs, prepared.scales.tolist()):
            boxes, labels = [], []
            for k, colour in enumerate(COLOURS):
                mask = ((image - colour[:, None, None]).abs().amax(0) < 60)
                rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
                if rows.numel():
                    boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
                    labels.append(k)
            b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) / scale
            dets.append({"boxes": b, "scores": torch.full((len(labels),), min(1.0, scale)), "labels": torch.tensor(labels, dtype=torch.int64)})
        return finish_detections(dets, None)


# (x0, y0, x1, y1) in a 256 x 320 image; tiles of 128, overlap 0.25: x origins 0, 96, 192; y 0, 96, 128.
OBJECTS = [
    (0, 0, 20, 20),  # image corner = corner of tile (0, 0)
    (300, 236, 320, 256),  # bottom-right image corner
    (110, 40, 130, 60),  # on the seam x = 128: cut in tile x=0, whole in tile x=96
    (200, 104, 224, 122),  # ends on tile x=96's right edge: whole in tile x=192 only
    (88, 88, 108, 108),  # near the corner where four tiles overlap
    (2, 200, 22, 220),  # left image border, on the y seams
]
LARGE = (60, 140, 200, 230)  # wider than any tile: only the whole-image pass sees it whole


def _image(objects: Sequence[tuple[int, int, int, int]]) -> torch.Tensor:
    image = torch.zeros(3, 256, 320, dtype=torch.uint8)
    for k, (x0, y0, x1, y1) in enumerate(objects):
        image[:, y0:y1, x0:x1] = COLOURS[k].to(torch.uint8)[:, None, None]
    return image


def test_tile_origins_cover_the_image_and_end_at_the_border() -> None:
    assert tile_origins(320, 128, 0.25) == [0, 96, 192]
    assert tile_origins(256, 128, 0.25) == [0, 96, 128]
    assert tile_origins(128, 128, 0.5) == [0]
    assert tile_origins(1920, 512, 0.0) == [0, 512, 1024, 1408]


def test_objects_in_corners_and_on_seams_are_found_once_with_exact_boxes() -> None:
    sliced = SlicedDetector(ColourOracle(128), tile=128, overlap=0.25, whole_image=False)
    det = sliced.detect([_image(OBJECTS)])[0]
    assert sorted(det["labels"].tolist()) == list(range(len(OBJECTS)))
    for box, label in zip(det["boxes"], det["labels"].tolist()):
        assert box.tolist() == list(map(float, OBJECTS[label]))


def test_whole_image_pass_adds_large_objects_without_duplicates() -> None:
    objects = [*OBJECTS, LARGE]
    sliced = SlicedDetector(ColourOracle(128), tile=128, overlap=0.25)
    det = sliced(_image(objects))[0]  # __call__ path (decode, chunks) as predict uses it
    assert sorted(det["labels"].tolist()) == list(range(len(objects)))
    for box, label in zip(det["boxes"], det["labels"].tolist()):
        if label < len(OBJECTS):  # the tile's exact box wins over the whole pass's (score 1 > 0.4)
            assert box.tolist() == list(map(float, OBJECTS[label]))
        else:
            assert box_iou(box[None], torch.tensor([LARGE], dtype=torch.float32)).item() > 0.9
    # the staged path (prepare / forward / postprocess) gives the same
    prepared = sliced.prepare([_image(objects)])
    staged = sliced.postprocess(sliced.forward(prepared), prepared)[0]
    assert torch.equal(staged["boxes"], det["boxes"]) and torch.equal(staged["labels"], det["labels"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": 100}, "multiple of the model's stride"),
        ({"tile": 128, "overlap": 1.0}, r"\[0, 1\)"),
        ({"tile": 128, "overlap": -0.1}, r"\[0, 1\)"),
    ],
)
def test_bad_tile_options_are_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SlicedDetector(ColourOracle(128), **kwargs)


def test_tile_larger_than_the_image_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"--tile 512: larger than image #0 \(320x256 pixels, WxH\)"):
        SlicedDetector(ColourOracle(128), tile=512).detect([_image(OBJECTS)])


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("efficientdet_lite0", num_classes=3, image_size=128, class_names=["a", "b", "c"])


def test_sliced_torch_equals_the_tiles_run_by_hand(tiny_model: torch.nn.Module) -> None:
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 200, 300), dtype=torch.uint8)
    detector = Detector(tiny_model, device="cpu", batch_size=4)
    post = PostprocessConfig(score_threshold=0.0, max_detections=50)
    sliced = SlicedDetector(detector, tile=128, overlap=0.2, whole_image=False, edge_margin=-1e9)
    got = sliced.detect([image], post)[0]
    # reference: each tile through the plain detector, shifted, one class-wise NMS
    boxes, scores, labels = [], [], []
    for y in tile_origins(200, 128, 0.2):
        for x in tile_origins(300, 128, 0.2):
            d = detector.detect([image[:, y : y + 128, x : x + 128]], post)[0]
            boxes.append(d["boxes"] + torch.tensor([x, y, x, y]))
            scores.append(d["scores"])
            labels.append(d["labels"])
    b, s, lab = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    from torchvision.ops import batched_nms

    keep = batched_nms(b, s, lab, post.iou_threshold)[:50]
    torch.testing.assert_close(got["boxes"], b[keep])
    assert torch.equal(got["labels"], lab[keep]) and got["names"][0] in ("a", "b", "c")


def test_sliced_runs_with_onnxruntime(tiny_model: torch.nn.Module, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from efficientdet.export.runtime import OnnxDetector

    weights = tmp_path / "tiny.safetensors"
    save_model(tiny_model, weights)
    onnx = OnnxDetector.from_weights(weights, tmp_path / "cache", batch_size=4)
    torch.manual_seed(2)
    image = torch.randint(0, 256, (3, 200, 300), dtype=torch.uint8)
    post = PostprocessConfig(score_threshold=0.0, max_detections=20)
    got = SlicedDetector(onnx, tile=128, overlap=0.2).detect([image], post)[0]
    want = SlicedDetector(Detector(tiny_model, device="cpu"), tile=128, overlap=0.2).detect([image], post)[0]
    assert got["boxes"].shape == (20, 4) and want["boxes"].shape == (20, 4)
    assert float(got["boxes"][:, 2].max()) <= 300 and float(got["boxes"][:, 3].max()) <= 200
    torch.testing.assert_close(got["scores"], want["scores"], atol=2e-3, rtol=0)


def test_wrapping_the_model_itself_says_what_to_wrap() -> None:
    # was an AttributeError ('EfficientDet' object has no attribute ...) at the first call
    from efficientdet import create_model
    from efficientdet.inference.tta import TTADetector

    model = create_model("efficientdet_lite0", pretrained_backbone=False, image_size=128)
    with pytest.raises(TypeError, match=r"SlicedDetector wraps a detector, got EfficientDet: SlicedDetector\(Detector\(model\), tile\)"):
        SlicedDetector(model, tile=128)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"TTADetector wraps a Detector, got EfficientDet: TTADetector\(Detector\(model\)\)"):
        TTADetector(model)  # type: ignore[arg-type]
