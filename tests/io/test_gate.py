"""The decoding gate (images.open_image) against hostile files: every outcome is an RGB image or one
ImageReadError of a known kind, checked before decoding, in any thread, without growing memory."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from agegender.errors import ImageReadError
from agegender.io.images import ACCEPTED_FORMATS, MAX_PIXELS, open_image

KINDS = {"empty", "unreadable", "unsupported", "too_large", "corrupt"}


def _outcome(source) -> tuple[str, str]:
    try:
        image = open_image(source)
    except ImageReadError as e:
        return e.kind, str(e)
    assert image.mode == "RGB" and image.width * image.height <= MAX_PIXELS
    return "ok", ""


def test_every_hostile_case_is_decoded_or_refused_with_its_kind(hostile_cases: dict, tmp_path: Path) -> None:
    for case, (data, expected) in hostile_cases.items():
        path = tmp_path / "photo.jpg"
        path.write_bytes(data)
        t0 = time.perf_counter()
        for source in (data, path):
            kind, message = _outcome(source)
            assert kind == expected, (case, source if isinstance(source, Path) else "<bytes>", message)
            assert "\n" not in message and len(message) < 600, (case, message)
        assert time.perf_counter() - t0 < 5, case  # nothing is decoded at length


def test_refusals_say_why_in_one_line(hostile_cases: dict) -> None:
    def message(case: str) -> str:
        with pytest.raises(ImageReadError) as info:
            open_image(hostile_cases[case][0])
        return str(info.value)

    assert message("ICO holding a 13000x13000 PNG") == (
        "<bytes>: ICO image, not an accepted format (JPEG, PNG, WebP, AVIF, GIF, BMP, TIFF)")
    assert message("PNG with a bad CRC").startswith("<bytes>: a broken PNG file: SyntaxError: broken PNG file")
    assert message("631-byte JPEG claiming 8000x8000").endswith(
        "claims 8000x8000 pixels in 630 bytes, more than a JPEG file can hold (truncated or crafted)")
    assert message("header-only PNG 10000x10000") == "<bytes>: 10000x10000 exceeds the limit of 64,000,000 pixels"
    assert message("TIFF claiming 30000x30000").startswith("<bytes>: exceeds the limit of 64,000,000 pixels (")
    assert set(ACCEPTED_FORMATS) == {"JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF"}


def test_exif_orientations_match_pillow(hostile_cases: dict) -> None:
    for orientation in range(1, 9):
        data = hostile_cases[f"EXIF orientation {orientation}"][0]
        expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        assert np.array_equal(np.asarray(open_image(data)), np.asarray(expected)), orientation
        assert open_image(data).size == ((40, 48) if orientation >= 5 else (48, 40))


@pytest.mark.parametrize("case, pillow_error", [("EXIF that breaks exif_transpose (struct.error)", struct.error),
                                                ("EXIF that breaks exif_transpose (TypeError)", TypeError)])
def test_an_exif_block_pillow_cannot_rewrite_is_still_read_upright(hostile_cases: dict, case: str,
                                                                   pillow_error: type) -> None:
    data = hostile_cases[case][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's own complaints about the block; single-threaded here
        with pytest.raises(pillow_error, match=r"integer|bad operand"):
            ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert open_image(data).size == (8, 16)  # stored 16x8, orientation 6: turned upright


def test_a_fifo_named_like_a_photo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    with pytest.raises(ImageReadError, match=r"photo\.jpg: not a regular file$"):
        open_image(fifo)
    assert time.perf_counter() - t0 < 2
    with pytest.raises(ImageReadError, match=r"not a regular file$"):
        open_image(tmp_path)


def _png(width: int, height: int, colour: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (colour,) * 3).save(buf, "PNG")
    return buf.getvalue()


def test_the_pixel_limit_holds_in_every_thread_and_leaves_warning_filters_alone(hostile_cases: dict) -> None:
    """The former guard toggled warnings.catch_warnings, which is not thread-safe: after concurrent large
    decodes a bomb could escape as a DecompressionBombWarning. Explicit checks have no shared state."""
    big, bomb = _png(3000, 3000), hostile_cases["header-only PNG 10000x10000"][0]
    filters = list(warnings.filters)
    outcomes: list[str] = []

    def work(i: int) -> None:
        for _ in range(3):
            outcomes.append(_outcome(bomb if i % 2 else big)[0])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(set(outcomes)) == ["ok", "too_large"] and len(outcomes) == 24
    assert outcomes.count("too_large") == 12
    assert warnings.filters == filters
    with warnings.catch_warnings():  # a caller who turned Pillow's warning into an error gets the same answer
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageReadError, match="exceeds limit|exceeds the limit") as info:
            open_image(_png_header(12000, 12000))
        assert info.value.kind == "too_large"


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


BOMB_SCRIPT = """
import sys
from agegender.errors import ImageReadError
from agegender.io.images import open_image

def peak_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])

paths = sys.argv[1:]
open_image(paths[0])  # warm up the decoders once
before = peak_kb()
for path in paths[1:]:
    try:
        open_image(path)
        print("decoded", path)
    except ImageReadError as e:
        pass
print((peak_kb() - before) / 1024)
"""


def test_bombs_are_refused_before_any_pixel_is_allocated(hostile_cases: dict, tmp_path: Path) -> None:
    """Peak memory (VmHWM) of a fresh process barely moves while it refuses every bomb case."""
    cases = ["header-only PNG 10000x10000", "631-byte JPEG claiming 8000x8000", "TIFF claiming 30000x30000",
             "ICO holding a 13000x13000 PNG"]
    paths = [tmp_path / "warm.png"]
    paths[0].write_bytes(_png(64, 64))
    for i, case in enumerate(cases):
        paths.append(tmp_path / f"bomb{i}.jpg")
        paths[-1].write_bytes(hostile_cases[case][0])
    res = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, *map(str, paths)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "decoded" not in res.stdout
    assert float(res.stdout.split()[-1]) < 5  # MB; decoding any one of them would take 64 MB to 2 GB


def test_mutated_headers_are_decoded_or_refused_never_anything_else(mutated_headers) -> None:
    t0 = time.perf_counter()
    kinds: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's complaints about mangled metadata; single-threaded here
        for fmt, data in mutated_headers(400):
            kind, message = _outcome(data)  # anything but an image or an ImageReadError fails the test
            assert kind == "ok" or (kind in KINDS and "\n" not in message), (fmt, kind, message)
            kinds[kind] = kinds.get(kind, 0) + 1
    assert time.perf_counter() - t0 < 60
    assert kinds.get("ok", 0) > 20 and kinds.get("corrupt", 0) > 20, kinds  # the fuzz reached both sides
