"""A full disk while saving: the previous checkpoint stays intact, and training stops clearly.

Three ways to fill the disk: a simulated one (``os.fdopen``/``os.fsync``/``mkstemp`` of the
atomic writer raising ``ENOSPC`` after writing part of the data, the safetensors writer
failing the way the real one does), and a real one (a 64 MiB tmpfs in a private mount
namespace, skipped where the system does not allow creating one).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch

import efficientdet.fs as fs_mod
import efficientdet.weights.io as wio
from efficientdet.cli import main
from efficientdet.engine.checkpoint import CheckpointError, load_checkpoint
from efficientdet.weights.io import read_weights

os.environ.setdefault("HF_HUB_OFFLINE", "1")
NOSPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from efficientdet.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("disk_data")
    return make_synthetic_dataset(root, num_images=4, image_size=(128, 128), seed=5, max_objects=2)


def overrides(data: Path, output: Path, max_steps: int) -> dict[str, Any]:
    return {
        "model": "efficientdet_lite0", "pretrained_backbone": False, "image_size": 128,
        "device": "cpu", "data.train": str(data), "data.workers": 0, "batch_size": 2,
        "epochs": 5, "max_steps": max_steps, "eval_every": 0, "log_every": 1,
        "checkpoint_every_steps": 1, "output": str(output), "optim.lr": 0.01,
    }  # fmt: skip


class _FullFile:
    """A binary file on a disk with ``disk.free`` bytes left: a write past that writes what
    fits and raises ENOSPC, as ``write(2)`` does on a full filesystem."""

    def __init__(self, handle: Any, disk: FullDisk) -> None:
        self.handle, self.disk = handle, disk

    def write(self, data: bytes) -> int:
        if len(data) > self.disk.free:
            self.handle.write(bytes(data)[: self.disk.free])  # a half-written temp file
            self.disk.free = 0
            raise OSError(errno.ENOSPC, NOSPACE)
        self.disk.free -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


class FullDisk:
    """Stands in for ``os`` in ``efficientdet.fs`` (the atomic writer of checkpoints): the ``fail_from``-th checkpoint write
    (1-based) and every later one find ``free`` bytes left; ``at="fsync"`` fails at fsync."""

    def __init__(self, fail_from: int, free: int = 1 << 20, at: str = "write") -> None:
        self.fail_from, self.free, self.at, self.opened = fail_from, free, at, 0

    def fdopen(self, fd: int, mode: str) -> Any:
        self.opened += 1
        handle = os.fdopen(fd, mode)
        return _FullFile(handle, self) if self.at == "write" and self.opened >= self.fail_from else handle

    def fsync(self, fd: int) -> None:
        if self.at == "fsync" and self.opened >= self.fail_from:
            raise OSError(errno.ENOSPC, NOSPACE)  # delayed allocation reports it here
        os.fsync(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def assert_no_temp_files(folder: Path) -> None:
    left = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert left == [], left


def test_cli_full_disk_on_second_save_keeps_previous_checkpoint(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # writes: config.yaml (at the start), the first checkpoint (fits), the second (does not)
    disk = FullDisk(fail_from=3)
    monkeypatch.setattr(fs_mod, "os", disk)
    args = [f"{k}={v}" for k, v in overrides(dataset, tmp_path, max_steps=3).items()]
    rc = main(["train", "--no-progress", *args])
    monkeypatch.undo()

    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err  # one clear line, no traceback
    assert err[0].startswith(f"efficientdet train: error: {tmp_path / 'last.ckpt'}: could not write the checkpoint")
    assert f"the disk is full ({NOSPACE})" in err[0] and "previous file, if any, is intact" in err[0]
    assert disk.opened == 3 and disk.free == 0  # the second checkpoint's write really ran out of space
    state = load_checkpoint(tmp_path / "last.ckpt")  # the first checkpoint, intact
    assert state["step"] == 1
    tensors, meta = read_weights(tmp_path / "last.safetensors")
    assert meta is not None and torch.equal(tensors["class_head.predict.pw.bias"],
                                            state["ema"]["module"]["class_head.predict.pw.bias"])  # fmt: skip
    assert_no_temp_files(tmp_path)
    # the run is resumable from there once space is back
    from efficientdet.engine.config import load_train_config
    from efficientdet.engine.trainer import Trainer

    cfg = load_train_config(None, {**overrides(dataset, tmp_path, max_steps=3), "resume": "auto"})
    resumed = Trainer(cfg, progress=False)
    assert resumed.step == 1
    assert resumed.fit() == "max_steps" and load_checkpoint(tmp_path / "last.ckpt")["step"] == 3
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[2] for r in rows[1:]] == ["1", "2", "3"]  # step 2's first row replaced


def test_full_disk_at_fsync_mkstemp_and_ema_write(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from efficientdet.engine.config import load_train_config
    from efficientdet.engine.trainer import Trainer

    trainer = Trainer(load_train_config(None, overrides(dataset, tmp_path, max_steps=1)), progress=False)
    assert trainer.fit() == "max_steps"
    ckpt_before = (tmp_path / "last.ckpt").read_bytes()
    ema_before = (tmp_path / "last.safetensors").read_bytes()
    trainer.step += 1  # pretend training went on, so a successful save would change the files

    # 1. the data fit, fsync reports ENOSPC (delayed allocation, NFS, quotas)
    monkeypatch.setattr(fs_mod, "os", FullDisk(fail_from=1, at="fsync"))
    with pytest.raises(CheckpointError, match=re.escape("last.ckpt: could not write the checkpoint: the disk is full")):
        trainer.save("last")
    monkeypatch.undo()

    # 2. not even the temp file can be created
    def no_inode(*_a: Any, **_k: Any) -> Any:
        raise OSError(errno.ENOSPC, NOSPACE)

    monkeypatch.setattr(fs_mod.tempfile, "mkstemp", no_inode)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'last.ckpt'}: could not write .* disk is full"):
        trainer.save("last")
    monkeypatch.undo()
    assert (tmp_path / "last.ckpt").read_bytes() == ckpt_before
    assert_no_temp_files(tmp_path)

    # 3. the checkpoint fits, the EMA .safetensors does not: what safetensors' Rust writer
    # raises on a real full disk (not an OSError), after writing part of the file
    def full_save_file(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"\x00" * 1000)
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(wio.safetensors.torch, "save_file", full_save_file)
    with pytest.raises(CheckpointError) as info:
        trainer.save("last")
    monkeypatch.undo()
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'last.safetensors'}: could not write the EMA weights")
    assert f"the disk is full ({NOSPACE})" in message
    assert (tmp_path / "last.safetensors").read_bytes() == ema_before  # atomic: old file intact
    assert load_checkpoint(tmp_path / "last.ckpt")["step"] == 2  # written before the EMA file
    assert read_weights(tmp_path / "last.safetensors")[1] is not None
    assert_no_temp_files(tmp_path)


# --- a real full disk -----------------------------------------------------------------------
RUN_ON_TMPFS = textwrap.dedent(
    """\
    set -u
    mount -t tmpfs -o size=64m tmpfs "$MNT" || exit 97
    "$@" 2>"$COPY/stderr.txt"
    rc=$?
    df -k "$MNT" > "$COPY/df.txt"
    cp -a "$MNT"/. "$COPY"/out/
    exit $rc
    """
)


def _namespace_prefix() -> list[str] | None:
    """``unshare`` arguments that give a private mount namespace here, or None."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "-rm"], ["unshare", "-m"]):
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


def test_cli_real_full_disk_tmpfs(dataset: Path, tmp_path: Path) -> None:
    prefix = _namespace_prefix()
    if prefix is None:
        pytest.skip("cannot mount a tmpfs in a private namespace here (no user namespaces / privileges)")
    mnt, copy = tmp_path / "mnt", tmp_path / "copy"
    mnt.mkdir()
    (copy / "out").mkdir(parents=True)
    script = tmp_path / "run.sh"
    script.write_text(RUN_ON_TMPFS)
    # lite0: last.ckpt ~39 MB + last.safetensors ~13 MB fit in 64 MiB; a second checkpoint's
    # temp file next to them does not
    args = [f"{k}={v}" for k, v in overrides(dataset, mnt, max_steps=3).items()]
    env = {**os.environ, "MNT": str(mnt), "COPY": str(copy), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [*prefix, "sh", str(script), sys.executable, "-m", "efficientdet", "train", "--no-progress", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 97, proc.stderr
    stderr = (copy / "stderr.txt").read_text().strip().splitlines()
    assert proc.returncode == 2, stderr
    assert stderr[-1] == (
        f"efficientdet train: error: {mnt / 'last.ckpt'}: could not write the checkpoint: the disk is full "
        f"({NOSPACE}); the previous file, if any, is intact. Free disk space or choose another output "
        "folder, then resume."
    )
    assert not any("Traceback" in line for line in stderr)
    out = copy / "out"
    assert load_checkpoint(out / "last.ckpt")["step"] == 1
    assert read_weights(out / "last.safetensors")[1] is not None
    assert_no_temp_files(out)
    assert int((copy / "df.txt").read_text().splitlines()[1].split()[3]) < 40_000  # it was full
