"""Atomic file writes: every file a user keeps is written through here.

A temp file in the target's folder (``.NAME.XXXXXXXX.tmp``: hidden, never matching the
target's own pattern) is written, flushed and fsynced, renamed over the target with
``os.replace`` and the folder fsynced, so a crash, SIGKILL or full disk leaves either the
previous file or the complete new one. On any failure the temp file is removed.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Persist a rename in ``directory``; best effort (not possible on every OS/filesystem)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_file(path: Path) -> tuple[int, Path]:
    """Create the temp file beside ``path`` (same filesystem, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    return fd, Path(tmp)


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the process's umask (which
    ``os.umask`` can only read by setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def commit_file(tmp: Path, path: Path) -> None:
    """Rename a finished temp file (beside ``path``) onto ``path``, durably.

    Temp files are 0600 (``mkstemp``, and writers' own such as safetensors'); the committed
    file gets the mode of any other file the user writes, so a model or a prediction written
    here is as readable as one written by ``open`` (by a server running as another user, say).
    """
    os.chmod(tmp, new_file_mode())
    os.replace(tmp, path)
    fsync_dir(path.parent)  # the rename itself survives a power loss


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Yield a file object (``open`` ``mode``/``kwargs``, e.g. ``"w", newline=""``) whose
    content replaces ``path`` atomically when the block ends without an exception."""
    if not any(c in mode for c in "wx") or "+" in mode:
        raise ValueError(f"atomic_open writes a new file: mode must be 'w'/'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = _temp_file(path)
    try:
        with os.fdopen(fd, mode.replace("x", "w"), **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # some filesystems report a full disk only here
        commit_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path`` for writers that want a file name (``torch.jit.save``,
    safetensors, ONNX, ``savefig``); it replaces ``path`` atomically when the block ends.

    The temp name ends in ``.tmp``: give writers that infer the format from the extension
    the format explicitly (``savefig(..., format="png")``).
    """
    path = Path(path)
    fd, tmp = _temp_file(path)
    os.close(fd)  # created empty; the writer rewrites it (commit_file sets the mode)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data on disk before the rename makes it visible
        finally:
            os.close(fd)
        commit_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``data`` atomically (``str`` is encoded, no newline translation)."""
    payload = data.encode(encoding) if isinstance(data, str) else data
    with atomic_open(path, "wb") as f:
        f.write(payload)
    return Path(path)


# safetensors (0.8) writes through a temp file of its own beside the target (Rust's tempfile
# crate: ".tmp" and 6 random characters) and renames it onto our temp path: a kill in that
# write leaves one of these in the folder.
WRITER_TEMP_GLOB = ".tmp??????"


def remove_stale_temp_files(
    folder: str | os.PathLike[str], patterns: tuple[str, ...], writer_temps: bool = False
) -> list[Path]:
    """Delete the temp files a killed writer left for targets matching ``patterns`` (globs of
    the target name, e.g. ``"*.ckpt"``) in ``folder``, and with ``writer_temps`` safetensors'
    own (:data:`WRITER_TEMP_GLOB`); returns what was removed.

    Only call this where no other process writes to ``folder`` at the same time.
    """
    folder = Path(folder)
    removed = []
    globs = [f".{pattern}.*{TEMP_SUFFIX}" for pattern in patterns] + ([WRITER_TEMP_GLOB] if writer_temps else [])
    for glob in globs:
        for stale in folder.glob(glob):
            try:
                stale.unlink()
                removed.append(stale)
            except OSError:
                pass  # e.g. removed concurrently: nothing to do
    return removed


def os_errno(err: BaseException) -> int | None:
    """The OS error number behind ``err``: an ``OSError``'s, or "(os error 28)" in the text of
    errors from Rust writers (safetensors) that do not subclass ``OSError``."""
    if isinstance(err, OSError):
        return err.errno
    match = re.search(r"os error (\d+)", str(err))
    return int(match.group(1)) if match else None


def describe_write_error(path: str | os.PathLike[str], err: BaseException, what: str = "the file") -> str:
    """One line naming the file and the cause, a full disk spelt out as such."""
    code = os_errno(err)
    reason = os.strerror(code) if code is not None else str(err)
    if code in (errno.ENOSPC, errno.EDQUOT):
        cause = f"the disk is full ({reason})"
    elif code == errno.EFBIG:
        cause = f"the file is larger than this system allows ({reason})"
    else:
        cause = reason
    hint = " Free disk space or choose another output folder, then resume." if code is not None else ""
    return f"{path}: could not write {what}: {cause}; the previous file, if any, is intact.{hint}"
