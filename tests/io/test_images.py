"""open_image: every mode and container becomes RGB; unusable input raises a one-line ImageReadError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender.errors import ImageReadError
from agegender.io.images import open_image


def _noise_jpeg(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format="JPEG")
    return path


def _read_error(source, match: str, **kwargs) -> str:
    with pytest.raises(ImageReadError, match=match) as info:
        open_image(source, **kwargs)
    msg = str(info.value)
    assert msg
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- readable images


def test_rgb_jpeg(tmp_path):
    path = _noise_jpeg(tmp_path / "a.jpg")
    img = open_image(path)
    assert img.mode == "RGB"
    assert img.size == (64, 48)


def test_str_path_and_bytes(tmp_path):
    path = _noise_jpeg(tmp_path / "a.jpg")
    from_str = open_image(str(path))
    from_bytes = open_image(path.read_bytes())
    assert from_bytes.mode == "RGB"
    assert np.array_equal(np.asarray(from_str), np.asarray(from_bytes))


def test_rgba_png_composited_on_white(tmp_path):
    img = Image.new("RGBA", (3, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    img.putpixel((1, 0), (255, 0, 0, 255))  # opaque red
    img.putpixel((2, 0), (0, 0, 255, 128))  # half-transparent blue
    path = tmp_path / "a.png"
    img.save(path)
    out = open_image(path)
    assert out.mode == "RGB"
    px = np.asarray(out)[0]
    assert tuple(px[0]) == (255, 255, 255)
    assert tuple(px[1]) == (255, 0, 0)
    assert np.allclose(px[2], (127, 127, 255), atol=2)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * (254 * 3))
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    path = tmp_path / "p.png"
    img.save(path, transparency=0)
    px = np.asarray(open_image(path))[0]
    assert tuple(px[0]) == (255, 255, 255)
    assert tuple(px[1]) == (0, 200, 0)


def test_grayscale_l(tmp_path):
    path = tmp_path / "g.png"
    Image.new("L", (5, 4), 77).save(path)
    out = open_image(path)
    assert out.mode == "RGB"
    assert out.size == (5, 4)
    assert np.all(np.asarray(out) == 77)


def test_16_bit_png_scaled_not_clipped(tmp_path):
    arr = np.zeros((4, 5), np.uint16)
    arr[0, 0] = 65535
    arr[0, 1] = 32768
    arr[0, 2] = 1000  # 8-bit clipping would turn this into white
    path = tmp_path / "d.png"
    src = Image.fromarray(arr)
    assert src.mode.startswith("I;16")
    src.save(path)
    out = open_image(path)
    assert out.mode == "RGB"
    assert out.size == (5, 4)
    px = np.asarray(out).astype(int)
    assert np.all(px[0, 0] >= 254)
    assert np.all(np.abs(px[0, 1] - 128) <= 1)
    assert np.all(np.abs(px[0, 2] - 1000 / 256) <= 1)
    assert np.all(px[1:] == 0)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "c.jpg"
    Image.new("CMYK", (6, 4), (0, 255, 0, 0)).save(path, format="JPEG", quality=95)
    assert Image.open(path).mode == "CMYK"
    out = open_image(path)
    assert out.mode == "RGB"
    assert out.size == (6, 4)
    assert np.allclose(np.asarray(out)[1, 2], (255, 0, 255), atol=10)  # magenta ink


def test_exif_rotated_jpeg_is_transposed(tmp_path):
    img = Image.new("RGB", (30, 10), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "r.jpg"
    img.save(path, exif=exif.tobytes())
    assert Image.open(path).size == (30, 10)
    out = open_image(path)
    assert out.mode == "RGB"
    assert out.size == (10, 30)


def test_one_pixel_image(tmp_path):
    path = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(path)
    out = open_image(path)
    assert out.size == (1, 1)
    assert tuple(np.asarray(out)[0, 0]) == (1, 2, 3)


# --------------------------------------------------------------------------- errors


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    _read_error(path, r"empty\.jpg: empty file \(0 bytes\)$")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "text.jpg"
    path.write_text("this is not an image\nat all\n")
    _read_error(path, r"text\.jpg: not an image file \(accepted formats: JPEG, PNG, WebP, AVIF, GIF, BMP, TIFF\)$")


def test_truncated_jpeg(tmp_path):
    data = _noise_jpeg(tmp_path / "full.jpg").read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    _read_error(path, r"half\.jpg: OSError: image file is truncated")


def test_truncated_jpeg_bytes(tmp_path):
    data = _noise_jpeg(tmp_path / "full.jpg").read_bytes()
    _read_error(data[: len(data) // 2], "^<bytes>: OSError: image file is truncated")


def test_empty_bytes():
    _read_error(b"", r"^empty input \(0 bytes\)$")


def test_garbage_bytes():
    _read_error(b"not a jpeg", r"^<bytes>: not an image file \(accepted formats: .*\)$")


def test_missing_file(tmp_path):
    _read_error(tmp_path / "missing.jpg", r"missing\.jpg: FileNotFoundError: .*No such file")


def test_too_many_pixels_refused(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 20)).save(path)
    _read_error(path, r"big\.png: 20x20 exceeds the limit of 100 pixels$", max_pixels=100)
    assert open_image(path, max_pixels=400).size == (20, 20)  # at the limit is fine


def test_too_many_pixels_refused_from_bytes():
    buf = io.BytesIO()
    Image.new("L", (20, 20)).save(buf, format="PNG")
    _read_error(buf.getvalue(), "^<bytes>: 20x20 exceeds the limit of 100 pixels$", max_pixels=100)

