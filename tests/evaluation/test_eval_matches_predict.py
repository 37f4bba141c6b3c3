"""``eval`` scores exactly what ``predict`` outputs: same model input, same detections."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
from pathlib import Path

import pytest
import torch

from efficientdet import Detector, create_model, save_model
from efficientdet.cli import main
from efficientdet.data.formats import read_dataset
from efficientdet.data.images import load_image
from efficientdet.data.synthetic import make_synthetic_dataset
from efficientdet.evaluation.run import detection_batches
from efficientdet.inference.protocol import Prepared

NAMES = ["circle", "square", "triangle"]
FAMILIES = ["efficientdet_d0", "efficientdet_lite0"]  # ImageNet mean/std; mean 127 / std 128


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Sizes vary per image, so every image is letterboxed differently (and the border shows).
    root = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(root, num_images=5, image_size=((90, 200), (90, 200)), seed=3)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, class_names=NAMES, image_size=128)
    # Random BN statistics, so the raw outputs (and the detections) depend on every input pixel.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", FAMILIES)
def test_evaluation_builds_the_detector_input(dataset: Path, name: str) -> None:
    detector = Detector(_model(name))
    seen: list[Prepared] = []
    prepare = detector.prepare

    def spy(decoded: list[torch.Tensor]) -> Prepared:
        seen.append(prepare(decoded))
        return seen[-1]

    detector.prepare = spy  # type: ignore[method-assign]
    index = read_dataset(dataset)
    paths = [p for ps, _, _ in detection_batches(detector, index, detector.postprocess_config, 2, 0) for p in ps]
    inputs = torch.cat([p.inputs for p in seen])
    assert inputs.shape[0] == len(paths) == len(index)
    for i, path in enumerate(paths):
        ref = prepare([load_image(path)])
        assert torch.allclose(inputs[i], ref.inputs[0], atol=1e-5, rtol=0)
        h, w = ref.image_sizes[0]
        scale = float(ref.scales[0])
        # The border is 0 (the mean colour after normalising), for both families.
        assert (inputs[i][:, round(h * scale) :, :] == 0).all() and (inputs[i][:, :, round(w * scale) :] == 0).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_eval_results_equal_predict_detections(dataset: Path, tmp_path: Path, name: str) -> None:
    weights = tmp_path / "w.safetensors"
    save_model(_model(name), weights)
    assert main(["eval", str(dataset), "--weights", str(weights), "--out", str(tmp_path / "eval"),
                 "--batch-size", "2"]) == 0  # fmt: skip
    images = dataset.parent / "images"
    assert main(["predict", str(images), "--weights", str(weights), "--out", str(tmp_path / "pred"),
                 "--score-threshold", "0.001", "--no-draw", "--batch-size", "3"]) == 0  # fmt: skip

    gt = json.loads(dataset.read_text())
    file_of = {im["id"]: Path(im["file_name"]).name for im in gt["images"]}
    from_eval: dict[str, list[tuple[int, list[float], float]]] = {f: [] for f in file_of.values()}
    for r in json.loads((tmp_path / "eval" / "detections_coco.json").read_text()):
        x, y, w, h = r["bbox"]
        from_eval[file_of[r["image_id"]]].append((r["category_id"] - 1, [x, y, x + w, y + h], r["score"]))
    predicted = json.loads(next((tmp_path / "pred").glob("detections.json")).read_text())
    assert {Path(e["file"]).name for e in predicted} == set(from_eval)
    total = 0
    for entry in predicted:
        ours = from_eval[Path(entry["file"]).name]
        theirs = [(d["label"], d["box"], d["score"]) for d in entry["detections"]]
        assert len(ours) == len(theirs) > 0
        total += len(ours)
        unmatched = list(ours)
        for label, box, score in theirs:  # one-to-one (ties in score may come in either order)
            match = next(
                (o for o in unmatched if o[0] == label and abs(o[2] - score) < 1e-3
                 and max(abs(a - b) for a, b in zip(o[1], box)) < 0.02),
                None,
            )  # fmt: skip
            assert match is not None, (entry["file"], label, box, score)
            unmatched.remove(match)
    assert total >= len(predicted)


def test_loader_workers_outlive_a_sigterm_to_the_process_group(dataset: Path) -> None:
    """A training run's SIGTERM to its process group (``timeout``, systemd, Slurm) reaches the
    validation loader's workers too: they keep loading, and the run stops when it decides.
    torch's worker handler died of it, failing the validation ("worker ... killed by signal")."""
    index = read_dataset(dataset)
    detector = Detector(_model("efficientdet_lite0"))
    batches = detection_batches(detector, index, detector.postprocess_config, 1, 1)
    paths = next(batches)[0]
    [worker] = multiprocessing.active_children()
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # not from its parent
    worker.join(1.0)  # a worker that dies of it is gone by now
    assert worker.is_alive()
    paths += [p for batch in batches for p in batch[0]]
    assert len(paths) == len(index) == 5
