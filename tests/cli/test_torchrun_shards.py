"""``torchrun --nproc_per_node 2 -m efficientdet eval|predict`` (gloo, CPU) against one process.

5 images (an odd count: shares of 3 and 2), one of them unreadable; a random-init Lite0 at 128
(its detections at score 0.001 are plenty to compare). Each torchrun start costs seconds, so
the tests are few: eval, predict, too many processes, a rank that dies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from efficientdet import create_model, save_model
from efficientdet.cli import main
from efficientdet.data.synthetic import make_synthetic_dataset

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
COMMON = ["--device", "cpu", "--batch-size", "2", "--quiet", "--dist-timeout", "60"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shards")
    dataset = make_synthetic_dataset(root / "data", num_images=5, image_size=(128, 128), seed=1, max_objects=3)
    (dataset.parent / "images" / "000003.jpg").write_bytes(b"not a jpeg")  # one unreadable image
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=3, class_names=["circle", "square", "triangle"],
                         image_size=128)  # fmt: skip
    weights = root / "tiny.safetensors"
    save_model(model, weights)
    return dataset, weights


def torchrun(nproc: int, *args: str, script: Path | None = None) -> subprocess.CompletedProcess[str]:
    target = [str(script)] if script else ["-m", "efficientdet"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--monitor-interval=0.5", *target, *args]  # fmt: skip
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def coco_results(path: Path) -> list[tuple]:
    """The results as a sorted list of (image, category, x, y, w, h, score)."""
    return sorted((d["image_id"], d["category_id"], *d["bbox"], d["score"]) for d in json.loads(path.read_text()))


def same_results(a: list[tuple], b: list[tuple]) -> bool:
    """Equal as sets up to float32 noise: one process and two run different batches, whose
    kernels round differently in the last bits (~1e-5 px); rounding both to 4 decimals is not
    a tolerance, a value at x.xxxx5 rounds either way."""
    if len(a) != len(b):
        return False
    unused = list(b)
    for x in a:
        match = next((y for y in unused if x[:2] == y[:2] and all(abs(u - v) <= 1e-3 for u, v in zip(x[2:], y[2:]))), None)
        if match is None:
            return False
        unused.remove(match)
    return True


def test_eval_two_processes_equals_one(setup: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, weights = setup
    assert main(["eval", str(dataset), "--weights", str(weights), "--out", str(tmp_path / "one"), *COMMON]) == 0
    proc = torchrun(2, "eval", str(dataset), "--weights", str(weights), "--out", str(tmp_path / "two"), *COMMON)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert len(two["stats"]) == 12
    for key, value in one["stats"].items():
        assert (value is None and two["stats"][key] is None) or abs(two["stats"][key] - value) <= 1e-6, key
    assert two["num_images"] == one["num_images"] == 4 and two["num_skipped"] == 1
    assert two["skipped_images"] == one["skipped_images"]
    assert two["per_class"] == one["per_class"]
    results = coco_results(tmp_path / "two" / "detections_coco.json")
    assert results and same_results(results, coco_results(tmp_path / "one" / "detections_coco.json"))
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports (and writes)


def test_predict_two_processes_write_one_merged_file(setup: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, weights = setup
    images = dataset.parent / "images"
    missing = tmp_path / "missing.jpg"  # a source that is not there: warned about once, not once per rank
    one_args = ["predict", str(images), str(missing), "--weights", str(weights), "--score-threshold", "0.05",
                *(a for a in COMMON if a != "--quiet")]  # fmt: skip
    assert main([*one_args, "--out", str(tmp_path / "one")]) == 1  # two inputs failed
    proc = torchrun(2, *one_args, "--out", str(tmp_path / "two"))
    assert proc.returncode != 0  # the unreadable image: exit status 1, as alone
    assert "4 of 6 inputs done" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.count(f"warning: {missing}: no such file") == 1, proc.stderr[-3000:]
    assert proc.stderr.count("000003.jpg") == 1  # the unreadable image: by the rank that met it
    one = json.loads((tmp_path / "one" / "detections.json").read_text())
    two = json.loads((tmp_path / "two" / "detections.json").read_text())
    assert [e["file"] for e in two] == [e["file"] for e in one]  # input order, every readable image
    assert two == one
    drawn = lambda d: sorted(p.name for p in d.glob("*.jpg"))  # noqa: E731
    assert drawn(tmp_path / "two") == drawn(tmp_path / "one")  # each rank drew its share


def test_more_processes_than_images_is_a_clear_error(setup: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, weights = setup
    out = tmp_path / "out"
    proc = torchrun(3, "eval", str(dataset), "--weights", str(weights), "--out", str(out), "--max-images", "2", *COMMON)
    assert proc.returncode != 0
    assert "efficientdet eval: error: 3 processes (torchrun --nproc_per_node) but only 2 images" in proc.stderr
    assert not (out / "metrics.json").exists()


DYING = textwrap.dedent(
    """\
    import os, sys
    import efficientdet.evaluation.run as run

    original = run.detection_batches

    def dying(*args, **kwargs):
        for k, batch in enumerate(original(*args, **kwargs)):
            if os.environ["RANK"] == "1":  # after its first batch of detections
                os._exit(1)  # like an OOM kill: no cleanup
            yield batch

    run.detection_batches = dying
    from efficientdet.cli import main
    raise SystemExit(main(sys.argv[1:]))
    """
)


def test_a_rank_dying_mid_eval_fails_without_writing(setup: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, weights = setup
    script, out = tmp_path / "dying.py", tmp_path / "out"
    script.write_text(DYING)
    args = ["eval", str(dataset), "--weights", str(weights), "--out", str(out), *COMMON]
    args[args.index("--batch-size") + 1] = "1"  # rank 1 dies after its first image
    start = time.monotonic()
    proc = torchrun(2, *args, script=script)
    assert proc.returncode != 0
    assert time.monotonic() - start < 120  # no hang: torchrun stops the group, the timeout bounds the rest
    assert "exitcode" in proc.stderr and "rank" in proc.stderr  # torchrun names the failed rank
    assert not (out / "metrics.json").exists() and not (out / "detections_coco.json").exists()


def test_weights_rank_0_cannot_load_are_one_error_not_a_gloo_error_too(tmp_path: Path) -> None:
    """Rank 0 builds the detector first; the others waited on it and, when it failed, printed
    gloo's "Connection closed by peer ... GLHF" as a second error."""
    dataset = make_synthetic_dataset(tmp_path / "data", num_images=2, image_size=(128, 128), seed=1, max_objects=1)
    missing = tmp_path / "missing.safetensors"
    proc = torchrun(2, "eval", str(dataset), "--weights", str(missing), "--out", str(tmp_path / "out"), *COMMON)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("efficientdet eval: error:")]
    assert len(errors) == 1 and "missing.safetensors" in errors[0], proc.stderr[-3000:]
    assert "Connection closed" not in proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_dataset_warnings_come_once_not_once_per_rank(tmp_path: Path) -> None:
    """Every rank reads the dataset and met the same bad record: its warning came twice."""
    dataset = make_synthetic_dataset(tmp_path / "data", num_images=3, image_size=(128, 128), seed=1, max_objects=1)
    coco = json.loads(dataset.read_text())
    coco["annotations"].append({**coco["annotations"][0], "id": 999, "category_id": 42})
    dataset.write_text(json.dumps(coco))
    weights = tmp_path / "w.safetensors"
    save_model(create_model("efficientdet_lite0", num_classes=3, image_size=128), weights)
    proc = torchrun(2, "eval", str(dataset), "--weights", str(weights), "--out", str(tmp_path / "out"), *COMMON)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("unknown category_id 42") == 1, proc.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["num_images"] == 3
