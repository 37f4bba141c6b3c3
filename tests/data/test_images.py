"""Tests for efficientdet.data.images: every source kind, decoder quirks and error messages."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from efficientdet.data.images import ImageError, image_size_of, is_dense, load_image


def _pattern(h: int = 24, w: int = 32) -> np.ndarray:
    """A smooth uint8 HWC image (JPEG-friendly) with distinct channels."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 90)], -1).astype(np.uint8)


def _hwc(t: torch.Tensor) -> np.ndarray:
    assert t.dtype == torch.uint8 and t.ndim == 3 and t.shape[0] == 3 and is_dense(t)
    return t.permute(1, 2, 0).numpy()


def _png(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A minimal PNG written by hand: lets tests make files Pillow will not write."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _png_rgb16(path: Path, array: np.ndarray) -> None:
    """Write a 16-bit RGB PNG (Pillow cannot write one)."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(_png(w, h, 16, 2, raw))


# --------------------------------------------------------------------------- files


def test_png_round_trip_is_exact(tmp_path: Path) -> None:
    array = _pattern()
    path = tmp_path / "a.png"
    Image.fromarray(array).save(path)
    out = load_image(path)
    np.testing.assert_array_equal(_hwc(out), array)
    assert load_image(str(path)).shape == (3, 24, 32)
    assert image_size_of(path) == (24, 32)


def test_jpeg_round_trip_is_close(tmp_path: Path) -> None:
    array = _pattern()
    path = tmp_path / "a.jpg"
    Image.fromarray(array).save(path, quality=95)
    out = _hwc(load_image(path)).astype(int)
    assert np.abs(out - array).mean() < 3


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "1"])
def test_png_modes_match_pillow_rgb(tmp_path: Path, mode: str) -> None:
    image = Image.fromarray(_pattern()).convert(mode)
    path = tmp_path / f"{mode}.png"
    image.save(path)
    expected = np.asarray(image.convert("RGBA").convert("RGB"))
    np.testing.assert_array_equal(_hwc(load_image(path)), expected)


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    image = Image.fromarray(_pattern()).convert("P")
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    np.testing.assert_array_equal(_hwc(load_image(path)), np.asarray(image.convert("RGB")))


def test_16bit_gray_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[65535, 32768, 0, 257]], dtype=np.uint16)).save(path)
    out = load_image(path)
    assert out[:, 0, :].tolist() == [[255, 128, 0, 1]] * 3


def test_16bit_rgb_png(tmp_path: Path) -> None:
    array = np.zeros((2, 3, 3), np.uint16)
    array[0, 0] = [65535, 32768, 0]
    path = tmp_path / "rgb16.png"
    _png_rgb16(path, array)
    out = load_image(path)
    assert out[:, 0, 0].tolist() == [255, 128, 0]
    assert out.shape == (3, 2, 3)


def test_bmp_and_tiff_go_through_pillow(tmp_path: Path) -> None:
    array = _pattern()
    for ext in ("bmp", "tiff"):
        path = tmp_path / f"a.{ext}"
        Image.fromarray(array).save(path)
        np.testing.assert_array_equal(_hwc(load_image(path)), array)
    path = tmp_path / "g16.tiff"
    Image.fromarray(np.full((3, 4), 65535, np.uint16)).save(path)
    assert int(load_image(path).min()) == 255


def _exif_rotated(tmp_path: Path, fmt: str) -> Path:
    """Stored 20x40 (HxW) with a red top-left corner, tagged orientation 6 (display rotated
    90 degrees clockwise): displayed 40x20 with the red corner at the top-right."""
    array = np.zeros((20, 40, 3), np.uint8)
    array[:5, :5] = [255, 0, 0]
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"rot.{fmt.lower()}"
    Image.fromarray(array).save(path, fmt, exif=exif)
    return path


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(tmp_path: Path, fmt: str) -> None:
    path = _exif_rotated(tmp_path, fmt)
    out = load_image(path)
    assert out.shape == (3, 40, 20)
    assert out[0, 2, -3] > 180 and out[1, 2, -3] < 60  # red at top-right
    assert out[0, 2, 2] < 60  # not at top-left any more
    assert image_size_of(path) == (40, 20)
    # A PIL image opened by the caller gets the same treatment.
    with Image.open(path) as im:
        assert load_image(im).shape == (3, 40, 20)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((6, 8, 3), v, np.uint8)) for v in (0, 255)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    out = load_image(path)
    assert out.shape == (3, 6, 8) and int(out.max()) == 0


# --------------------------------------------------------------------------- file errors


def _error(path: Path, **kwargs: object) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(path, **kwargs)  # type: ignore[arg-type]
    assert str(path) in str(info.value)
    return info.value


@pytest.mark.parametrize("cut", [0.5, -2])
def test_truncated_jpeg_raises(tmp_path: Path, cut: float) -> None:
    full = tmp_path / "full.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(full, quality=90)
    data = full.read_bytes()
    path = tmp_path / "trunc.jpg"
    path.write_bytes(data[: int(len(data) * cut)] if cut > 0 else data[: int(cut)])
    assert "truncated" in _error(path).problem


def test_truncated_jpeg_raises_even_if_pillow_allows_truncation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = tmp_path / "trunc.jpg"
    Image.fromarray(_pattern(64, 64)).save(tmp_path / "full.jpg")
    path.write_bytes((tmp_path / "full.jpg").read_bytes()[:-200])
    # the decoder's own reason in brackets varies with its version: the wording before it does not
    assert _error(path).problem.startswith("corrupt or truncated JPEG file (")


def test_truncated_png_raises(tmp_path: Path) -> None:
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(full)
    path = tmp_path / "trunc.png"
    path.write_bytes(full.read_bytes()[:3000])
    problem = _error(path).problem
    assert problem.startswith("corrupt, truncated or unsupported PNG image (") and "truncated" in problem.split("(", 1)[1]


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not an image\n")
    assert "not an image" in _error(path).problem


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert "empty" in _error(path).problem
    with pytest.raises(ImageError, match="empty"):
        image_size_of(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert "not found" in _error(tmp_path / "nope.jpg").problem
    assert "directory" in _error(tmp_path).problem
    with pytest.raises(ImageError, match="not found"):
        image_size_of(tmp_path / "nope.jpg")


def test_max_pixels_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(_pattern(100, 100)).save(path)
    err = _error(path, max_pixels=9_999)
    assert "10,000 pixels" in err.problem and "max_pixels" in err.problem
    assert load_image(path, max_pixels=10_000).shape == (3, 100, 100)
    assert load_image(path, max_pixels=None).shape == (3, 100, 100)


def test_bomb_header_is_refused_without_decoding(tmp_path: Path) -> None:
    # Huge grayscale PNG headers with a few bytes of (wrong) data: only the header is read.
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(30000, 30000, 8, 0, b"\0" * 100))  # over Pillow's own limit too
    assert "max_pixels" in _error(path).problem
    path = tmp_path / "medium.png"
    path.write_bytes(_png(10000, 12000, 8, 0, b"\0" * 100))  # 120 MP: under Pillow's limit
    assert "120,000,000 pixels" in _error(path).problem


# --------------------------------------------------------------------------- in memory


def test_pil_images_of_all_modes() -> None:
    base = Image.fromarray(_pattern())
    for mode in ["L", "LA", "P", "RGBA", "CMYK", "YCbCr", "1"]:
        out = load_image(base.convert(mode), name=f"pil {mode}")
        assert out.shape == (3, 24, 32), mode
    np.testing.assert_array_equal(_hwc(load_image(base.convert("L")))[..., 0], np.asarray(base.convert("L")))
    i16 = Image.fromarray(np.array([[65535, 32768]], np.uint16))
    assert i16.mode == "I;16"
    assert load_image(i16)[0, 0].tolist() == [255, 128]
    assert load_image(Image.fromarray(np.array([[65535, 32768]], np.int32)))[0, 0].tolist() == [255, 128]
    assert load_image(Image.fromarray(np.array([[1.0, 0.5]], np.float32)))[0, 0].tolist() == [255, 128]


def test_numpy_arrays() -> None:
    array = _pattern()
    np.testing.assert_array_equal(_hwc(load_image(array)), array)
    np.testing.assert_array_equal(_hwc(load_image(array[::-1])), array[::-1])  # negative strides
    rgba = np.concatenate([array, np.full((*array.shape[:2], 1), 7, np.uint8)], -1)
    np.testing.assert_array_equal(_hwc(load_image(rgba)), array)
    gray = array[..., 0]
    for g in (gray, gray[..., None]):
        out = load_image(g)
        assert all(torch.equal(out[c], torch.from_numpy(gray)) for c in range(3))
    assert load_image(np.array([[65535, 32768]], np.uint16))[:, 0].tolist() == [[255, 128]] * 3
    assert load_image(np.array([[65535, 32768]], ">u2"))[:, 0].tolist() == [[255, 128]] * 3
    assert load_image(np.array([[1.0, 0.5, 0.0]], np.float64))[:, 0].tolist() == [[255, 128, 0]] * 3
    assert load_image(np.array([[1.01, -0.01]], np.float32))[0, 0].tolist() == [255, 0]  # clipped


def test_tensors() -> None:
    chw = torch.from_numpy(_pattern()).permute(2, 0, 1).contiguous()
    assert load_image(chw) is chw  # already uint8 RGB CHW: no copy
    assert torch.equal(load_image(chw.float() / 255), chw)
    assert torch.equal(load_image(chw.double() / 255), chw)
    assert torch.equal(load_image(torch.cat([chw, chw[:1]])), chw)
    assert torch.equal(load_image(chw[0]), chw[0].expand(3, -1, -1))
    assert torch.equal(load_image(chw[:1].float() / 255), chw[0].expand(3, -1, -1))


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        (np.zeros((0, 5, 3), np.uint8), "zero-size"),
        (np.zeros((5, 0), np.uint8), "zero-size"),
        (np.zeros((4, 5, 2), np.uint8), "shape"),
        (np.zeros((3, 4, 5), np.uint8), ".transpose(1, 2, 0)"),
        (np.zeros((2, 4, 5, 3), np.uint8), "shape"),
        (np.zeros((4, 5, 3), np.int64), "dtype int64"),
        (np.zeros((4, 5, 3), bool), "dtype bool"),
        (np.full((4, 5), 200.0, np.float32), "0..1"),
        (np.full((4, 5), np.nan, np.float32), "NaN"),
        (torch.zeros(6, 5, 3), ".permute(2, 0, 1)"),
        (torch.zeros(1, 3, 4, 5), "shape"),
        (torch.zeros(3, 4, 5, dtype=torch.int32), "dtype int32"),
        (torch.zeros(3, 0, 5, dtype=torch.uint8), "zero-size"),
        (Image.new("RGB", (0, 5)), "zero-size"),
        (b"\xff\xd8", "unsupported image source type bytes"),
    ],
)
def test_in_memory_errors_name_the_image(source: object, fragment: str) -> None:
    with pytest.raises(ImageError, match=r"^image #3: ") as info:
        load_image(source, name="image #3")  # type: ignore[arg-type]
    assert fragment in info.value.problem
    assert isinstance(info.value, ValueError)


def test_in_memory_max_pixels() -> None:
    with pytest.raises(ImageError, match="max_pixels=99"):
        load_image(np.zeros((10, 10, 3), np.uint8), max_pixels=99)
    with pytest.raises(ImageError, match=r"image has 100 pixels \(10x10\), more than max_pixels=99;"):
        load_image(Image.new("RGB", (10, 10)), max_pixels=99)


def test_image_size_of_in_memory() -> None:
    assert image_size_of(np.zeros((4, 5, 3), np.uint8)) == (4, 5)
    assert image_size_of(torch.zeros(3, 4, 5)) == (4, 5)
    assert image_size_of(Image.new("RGB", (5, 4))) == (4, 5)


def test_files_and_arrays_come_back_channels_last_and_owned(tmp_path: Path) -> None:
    """The decoders write HWC memory and load_image keeps it (no transposing copy); arrays are
    copied once in HWC order, so the caller's array is never shared."""
    array = _pattern()
    Image.fromarray(array).save(tmp_path / "a.png")
    Image.fromarray(array).save(tmp_path / "a.jpg", quality=95)
    for source in (tmp_path / "a.png", tmp_path / "a.jpg", Image.fromarray(array), array):
        image = load_image(source)
        assert image.permute(1, 2, 0).is_contiguous() and image.stride() == (1, 3 * array.shape[1], 3), source
    image = load_image(array)
    image[0, 0, 0] = 255 - int(array[0, 0, 0])
    assert image[0, 0, 0] != array[0, 0, 0]  # our own copy
    # Layouts that are neither CHW nor HWC dense are copied into HWC order.
    strided = torch.from_numpy(array).permute(2, 0, 1)[:, ::2, :]
    out = load_image(strided)
    assert is_dense(out) and torch.equal(out, strided)


@pytest.mark.parametrize(
    "batch", [torch.zeros(2, 3, 8, 10, dtype=torch.uint8), np.zeros((2, 8, 10, 3), np.uint8)], ids=["NCHW", "NHWC"]
)
def test_a_batch_in_one_array_says_to_pass_a_list(batch: object) -> None:
    """Detectors take a list of images; one [N, 3, H, W] tensor (torchvision's habit) was
    refused without saying why ("expected [H, W] or [C, H, W]")."""
    with pytest.raises(ImageError, match=r"a batch of 2 images\? pass a list of them, e\.g\. list\(batch\)"):
        load_image(batch)  # type: ignore[arg-type]
