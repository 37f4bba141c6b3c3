"""efficientdet.fs: atomic replacement, cleanup after failures, fsync of data and folder."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

import efficientdet.fs as fs
from efficientdet.fs import atomic_open, atomic_path, atomic_write, describe_write_error, remove_stale_temp_files


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("as_str", [False, True])
def test_atomic_write_replaces_content(tmp_path: Path, as_str: bool) -> None:
    target = tmp_path / "sub" / "out.json"
    path: str | Path = str(target) if as_str else target
    assert atomic_write(path, "first\n") == target  # creates the missing folder
    assert target.read_bytes() == b"first\n"
    atomic_write(path, b"\x00second")
    assert target.read_bytes() == b"\x00second"
    assert entries(target.parent) == ["out.json"]  # no temp file left


def test_open_readers_keep_the_old_content(tmp_path: Path) -> None:
    """The new file is a new inode renamed over the old one: a reader holding the old file
    open still sees the complete old content."""
    target = tmp_path / "a.txt"
    atomic_write(target, "old")
    with open(target, "rb") as reader:
        atomic_write(target, "new")
        assert reader.read() == b"old"
    assert target.read_text() == "new"


def test_failure_mid_write_keeps_previous_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    atomic_write(target, "header\nrow1\n")
    with pytest.raises(RuntimeError, match="boom"), atomic_open(target, "w", newline="") as f:
        f.write("header\n")
        f.flush()
        assert len(entries(tmp_path)) == 2  # the temp file really exists mid-write
        raise RuntimeError("boom")
    assert target.read_text() == "header\nrow1\n"
    assert entries(tmp_path) == ["metrics.csv"]


def test_atomic_path_failure_and_success(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(OSError), atomic_path(str(target)) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.") and tmp.suffix == ".tmp"
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"previous" and entries(tmp_path) == ["model.onnx"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"previous"  # not visible before the block ends
    assert target.read_bytes() == b"new" and entries(tmp_path) == ["model.onnx"]


def test_fsyncs_file_then_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[str, Any]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        synced.append(("replace", os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(fs.os, "fsync", fsync)
    monkeypatch.setattr(fs.os, "replace", replace)
    for write in (lambda p: atomic_write(p, "x"), lambda p: _via_path(p)):
        synced.clear()
        target = tmp_path / "f.bin"
        write(target)
        kinds = [k for k, _ in synced]
        assert kinds == ["fsync", "replace", "fsync"], synced
        assert Path(synced[0][1]).name.startswith(".f.bin.")  # the temp file's data first
        assert synced[1][1] == str(target)
        assert synced[2][1] == str(tmp_path.resolve())  # then the folder, for the rename


def _via_path(target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text("x")


def test_atomic_open_refuses_read_modes(tmp_path: Path) -> None:
    for mode in ("r", "rb", "a", "w+"):
        message = f"atomic_open writes a new file: mode must be 'w'/'wb', got {mode!r}"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"), atomic_open(tmp_path / "x", mode):
            pass
    assert entries(tmp_path) == []


def test_remove_stale_temp_files(tmp_path: Path) -> None:
    stale = [tmp_path / ".last.ckpt.abc123.tmp", tmp_path / ".best.safetensors.x.tmp"]
    keep = [tmp_path / "last.ckpt", tmp_path / ".notes.txt.y.tmp", tmp_path / "x.tmp"]
    for p in stale + keep:
        p.write_text("")
    removed = remove_stale_temp_files(tmp_path, ("*.ckpt", "*.safetensors"))
    assert sorted(removed) == sorted(stale)
    assert entries(tmp_path) == sorted(p.name for p in keep)


def test_safetensors_own_temp_files_are_removed_on_request(tmp_path: Path) -> None:
    """safetensors writes through ``.tmpXXXXXX`` beside its target; a kill leaves it behind."""
    for name in (".tmpAb12Cd", ".tmp_keeps_longer_names", "tmpAb12Cd"):
        (tmp_path / name).write_text("")
    assert remove_stale_temp_files(tmp_path, ("*.ckpt",)) == []
    assert remove_stale_temp_files(tmp_path, ("*.ckpt",), writer_temps=True) == [tmp_path / ".tmpAb12Cd"]
    assert entries(tmp_path) == [".tmp_keeps_longer_names", "tmpAb12Cd"]


def test_describe_write_error_full_disk() -> None:
    message = describe_write_error("/out/last.ckpt", OSError(28, os.strerror(28)), "the checkpoint")
    assert message == (
        f"/out/last.ckpt: could not write the checkpoint: the disk is full ({os.strerror(28)}); "
        "the previous file, if any, is intact. Free disk space or choose another output folder, then resume."
    )
    rust = describe_write_error("/o/w.safetensors", RuntimeError("I/O error (os error 28)"))
    assert "the disk is full" in rust and rust.startswith("/o/w.safetensors: could not write the file")


def test_written_files_get_the_permissions_open_would_give(tmp_path: Path) -> None:
    # mkstemp's 0o600 used to reach every checkpoint, .safetensors and plot: unreadable to the group
    from efficientdet.factory import create_model, save_model

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
        save_model(create_model("efficientdet_lite0", pretrained_backbone=False), tmp_path / "w.safetensors")
        os.umask(0o027)
        atomic_write(tmp_path / "c.txt", "x")
        (tmp_path / "a.txt").chmod(0o640)
        atomic_write(tmp_path / "a.txt", "replaced")  # an existing file keeps its own
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.txt": 0o640, "b.bin": 0o644, "w.safetensors": 0o644, "c.txt": 0o640}


def test_committed_files_get_the_umask_mode_not_the_temp_files_0600(tmp_path: Path) -> None:
    """mkstemp's 0600 used to stay on every written file: an exported model or predictions
    could not be read by another user (a server in a container, a shared group)."""
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.json", "{}")
        with atomic_open(tmp_path / "b.csv", "w") as f:
            f.write("x\n")
        with atomic_path(tmp_path / "c.onnx") as tmp:
            tmp.unlink()  # a writer that renames its own (0600) temp file onto ours
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
        assert modes == {"a.json": 0o644, "b.csv": 0o644, "c.onnx": 0o644}
        os.umask(0o077)
        atomic_write(tmp_path / "d.json", "{}")
        assert (tmp_path / "d.json").stat().st_mode & 0o777 == 0o600  # a strict umask is kept
    finally:
        os.umask(old)
