"""Video frames in and out through whichever optional backend is installed: OpenCV or PyAV.

torchvision 0.29 no longer ships video decoding, and neither backend is a dependency, so
:func:`video_backend` says which one is present and :func:`open_video` raises a clear
:class:`VideoError` when there is none. Writing falls back to a PNG frame sequence when no
backend can encode (e.g. OpenCV without an MP4 encoder). A video file is encoded into a hidden
temp file beside its target and renamed onto it by ``close()``; ``abort()`` removes it, so a run
that fails half-way never leaves a truncated video under the real name.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ..fs import commit_file

__all__ = [
    "VIDEO_EXTENSIONS",
    "FrameWriter",
    "VideoError",
    "VideoReader",
    "open_video",
    "open_video_writer",
    "video_backend",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
_INSTALL_HINT = "install opencv-python-headless or av (PyAV) to read and write videos"


class VideoError(ValueError):
    """A video that cannot be opened, decoded or written."""


class VideoReader(Protocol):
    """Frames of one video: ``fps`` and an iterator of uint8 RGB ``[H, W, 3]`` arrays."""

    fps: float

    def frames(self) -> Iterator[np.ndarray]: ...


class FrameWriter(Protocol):
    """Receives uint8 RGB ``[H, W, 3]`` frames; ``path`` is the video file or frame folder."""

    path: Path
    is_video: bool

    def write(self, frame: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def _partial(path: Path) -> Path:
    """The hidden name a video is encoded under (same suffix: encoders pick the container by it)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def video_backend() -> str | None:
    """``"cv2"`` or ``"av"`` (the first installed, in that order), or None."""
    for name in ("cv2", "av"):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


class _Cv2Reader:
    def __init__(self, path: str) -> None:
        self._cv2 = importlib.import_module("cv2")
        self._cap = self._cv2.VideoCapture(path)
        if not self._cap.isOpened():
            raise VideoError(f"{path}: cannot open video (OpenCV could not decode it)")
        self.fps = float(self._cap.get(self._cv2.CAP_PROP_FPS) or 0.0) or 25.0

    def frames(self) -> Iterator[np.ndarray]:
        try:
            while True:
                ok, bgr = self._cap.read()
                if not ok:
                    return
                yield np.ascontiguousarray(bgr[:, :, ::-1])  # OpenCV decodes to BGR
        finally:
            self._cap.release()


class _AvReader:
    def __init__(self, path: str) -> None:
        av = importlib.import_module("av")
        try:
            self._container = av.open(path)
            self._stream = self._container.streams.video[0]
        except Exception as exc:  # av raises its own error types per failure
            raise VideoError(f"{path}: cannot open video ({type(exc).__name__}: {exc})") from exc
        rate = self._stream.average_rate
        self.fps = float(rate) if rate else 25.0
        self._path = path

    def frames(self) -> Iterator[np.ndarray]:
        try:
            for frame in self._container.decode(self._stream):
                yield frame.to_ndarray(format="rgb24")
        except Exception as exc:
            raise VideoError(f"{self._path}: cannot decode video ({type(exc).__name__}: {exc})") from exc
        finally:
            self._container.close()


def open_video(path: str | os.PathLike[str]) -> VideoReader:
    """A reader over ``path``'s frames; :class:`VideoError` when it cannot be read."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoError(f"{path}: file not found")
    backend = video_backend()
    if backend is None:
        raise VideoError(f"{path}: cannot read video: no video backend is installed; {_INSTALL_HINT}")
    return _Cv2Reader(path) if backend == "cv2" else _AvReader(path)


class _PngFrames:
    """Frames as ``<folder>/000000.png, 000001.png, ...``."""

    is_video = False

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder
        self._n = 0

    def write(self, frame: np.ndarray) -> None:
        Image.fromarray(frame).save(self.path / f"{self._n:06d}.png")
        self._n += 1

    def close(self) -> None:
        pass

    def abort(self) -> None:
        for n in range(self._n):  # only the frames this writer wrote
            (self.path / f"{n:06d}.png").unlink(missing_ok=True)


class _Cv2Writer:
    is_video = True

    def __init__(self, path: Path, fps: float, size_wh: tuple[int, int]) -> None:
        self._cv2 = importlib.import_module("cv2")
        self.path, self._tmp = path, _partial(path)
        self._out = self._cv2.VideoWriter(str(self._tmp), self._cv2.VideoWriter_fourcc(*"mp4v"), fps, size_wh)
        if not self._out.isOpened():
            self._tmp.unlink(missing_ok=True)
            raise VideoError(f"{path}: OpenCV cannot encode MP4 here")

    def write(self, frame: np.ndarray) -> None:
        self._out.write(np.ascontiguousarray(frame[:, :, ::-1]))

    def close(self) -> None:
        self._out.release()
        commit_file(self._tmp, self.path)

    def abort(self) -> None:
        self._out.release()
        self._tmp.unlink(missing_ok=True)


class _AvWriter:
    is_video = True

    def __init__(self, path: Path, fps: float, size_wh: tuple[int, int]) -> None:
        av = importlib.import_module("av")
        self.path, self._tmp = path, _partial(path)
        self._av = av
        self._container = av.open(str(self._tmp), mode="w")
        for codec in ("libx264", "mpeg4"):  # H.264 where FFmpeg has it, else MPEG-4 part 2
            try:
                self._stream: Any = self._container.add_stream(codec, rate=max(1, round(fps)))
                break
            except Exception:
                continue
        else:
            self._container.close()
            self._tmp.unlink(missing_ok=True)
            raise VideoError(f"{path}: PyAV has no MP4 encoder here")
        # yuv420p needs even sides; frames are padded by one pixel where needed.
        self._stream.width, self._stream.height = size_wh[0] + size_wh[0] % 2, size_wh[1] + size_wh[1] % 2
        self._stream.pix_fmt = "yuv420p"

    def write(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if (w, h) != (self._stream.width, self._stream.height):
            frame = np.pad(frame, ((0, self._stream.height - h), (0, self._stream.width - w), (0, 0)), mode="edge")
        for packet in self._stream.encode(self._av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():  # flush
            self._container.mux(packet)
        self._container.close()
        commit_file(self._tmp, self.path)

    def abort(self) -> None:
        self._container.close()
        self._tmp.unlink(missing_ok=True)


def open_video_writer(path: Path, fps: float, size_wh: tuple[int, int]) -> FrameWriter:
    """An MP4 writer at ``path`` if a backend can encode, else PNG frames in ``<path stem>_frames/``
    (``writer.is_video`` says which)."""
    backend = video_backend()
    try:
        if backend == "cv2":
            return _Cv2Writer(path, fps, size_wh)
        if backend == "av":
            return _AvWriter(path, fps, size_wh)
    except VideoError:
        pass
    return _PngFrames(path.with_name(path.stem + "_frames"))
