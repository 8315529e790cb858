"""Reading images from disk, bytes or arrays into RGB, whatever their mode, orientation or container.

:func:`open_image` is the one gate every file and upload goes through (scan, cache, training, detection,
predict, evaluate, the service): whatever Pillow raises while it opens, checks, decodes, orients or converts an
image becomes an :class:`ImageReadError` with a one-line reason and a ``kind`` the callers map to their answer.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from agegender.errors import CORRUPT, EMPTY, TOO_LARGE, UNREADABLE, UNSUPPORTED, ImageReadError, describe

# What the predictor accepts as an image.
ImageInput = Image.Image | str | Path | bytes | np.ndarray

# A decompression bomb (a small file that claims a huge canvas) is refused before decoding.
MAX_PIXELS = 64_000_000

# The containers a face photo comes in. Pillow reads many more, but each is more decoder code facing hostile
# input, and some are unsafe here: ICO/CUR decode their largest frame inside Image.open, before any size can be
# checked; EPS runs Ghostscript; DDS and PSD reach rarely exercised decoders. MPO (phones' multi-picture JPEG)
# is opened through the JPEG entry.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF")
ACCEPTED_NAMES = "JPEG, PNG, WebP, AVIF, GIF, BMP, TIFF"

# The most pixels one byte of a valid file of these formats can describe, with a margin: Huffman-coded JPEG
# spends at least one bit per 8x8 block and component (measured worst case, a blank progressive JPEG: 170 px per
# byte), deflate (PNG) compresses at most 1032:1 (times 8 pixels per byte for 1-bit images), GIF's LZW codes
# at most 4096 pixels in 12 bits. A file claiming more is truncated or crafted, and decoding it would still
# allocate the whole canvas first. Formats with no such bound (WebP lossless, AVIF, TIFF, BMP with RLE deltas)
# are held by MAX_PIXELS alone.
MAX_PIXELS_PER_BYTE = {"JPEG": 1024, "MPO": 1024, "PNG": 16384, "GIF": 8192}
# Below this a false claim costs little memory, so small images are never refused for their compression.
PLAUSIBILITY_FLOOR = 4_000_000

# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose, which also
# rewrites the EXIF block of its output and raises on malformed blocks that need no rewriting here).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
ORIENTATION_TAG = 0x0112


def _source(source: str | Path | bytes | bytearray | memoryview, name: str) -> tuple[BinaryIO, int]:
    """A binary file object on ``source`` and its size in bytes; only regular files are opened."""
    if isinstance(source, bytes | bytearray | memoryview):
        if not len(source):
            # Bytes read from a named file (an object in storage) are reported as that file would be.
            raise ImageReadError("empty input (0 bytes)" if name == "<bytes>" else f"{name}: empty file (0 bytes)",
                                 EMPTY)
        return io.BytesIO(source), len(source)
    try:
        # O_NONBLOCK: a FIFO named like a photo must not hang the reader; only regular files get further.
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ImageReadError(f"{name}: {type(e).__name__}: {e.strerror or e}", UNREADABLE) from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ImageReadError(f"{name}: not a regular file", UNREADABLE)
    if info.st_size == 0:
        os.close(fd)
        raise ImageReadError(f"{name}: empty file (0 bytes)", EMPTY)
    return os.fdopen(fd, "rb"), info.st_size


def _recognises(accept, prefix: bytes) -> bool | str:
    """A Pillow plugin's signature test on ``prefix`` (some index past the end of a short one)."""
    try:
        return accept(prefix) if accept is not None else False
    except Exception:  # noqa: BLE001 - a signature test that fails is a signature that does not match
        return False


def _unidentified(fp: BinaryIO, name: str) -> ImageReadError:
    """Why Pillow could not open ``fp``: an accepted format that is broken (corrupt), a format that is not
    accepted (unsupported, named), or no image at all."""
    fp.seek(0)
    prefix = fp.read(16)
    Image.init()
    for fmt in ACCEPTED_FORMATS:
        factory, accept = Image.OPEN[fmt]
        found = _recognises(accept, prefix)
        if isinstance(found, str):  # e.g. "... because AVIF support not installed"
            return ImageReadError(f"{name}: {fmt} image, but {found}", UNSUPPORTED)
        if found:
            fp.seek(0)
            try:  # the format's own reader says what is wrong (Image.open swallows it)
                factory(fp, name).close()
                reason = "cannot be read"
            except Exception as e:  # noqa: BLE001 - any failure of a hostile header is the reason we report
                reason = describe(e)
            return ImageReadError(f"{name}: a broken {fmt} file: {reason}", CORRUPT)
    for fmt, (_factory, accept) in Image.OPEN.items():
        if fmt not in ACCEPTED_FORMATS and _recognises(accept, prefix):
            return ImageReadError(f"{name}: {fmt} image, not an accepted format ({ACCEPTED_NAMES})", UNSUPPORTED)
    return ImageReadError(f"{name}: not an image file (accepted formats: {ACCEPTED_NAMES})", UNSUPPORTED)


def _identify(fp: BinaryIO, name: str, max_pixels: int) -> Image.Image:
    """Open the header of ``fp`` as one of :data:`ACCEPTED_FORMATS` (no pixels are decoded)."""
    try:
        return Image.open(fp, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise _unidentified(fp, name) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own, process-wide limit (left as Pillow sets it) fired before ours could.
        raise ImageReadError(f"{name}: exceeds the limit of {max_pixels:,} pixels ({describe(e)})", TOO_LARGE) from e
    except Exception as e:  # noqa: BLE001 - a plugin may raise anything on a crafted header
        raise ImageReadError(f"{name}: {describe(e)}", CORRUPT) from e


def check_canvas(size: tuple[int, int], fmt: str | None, nbytes: int, name: str, max_pixels: int) -> None:
    """Refuse, before any decoding, a canvas over ``max_pixels`` or larger than ``nbytes`` of format ``fmt`` can
    hold (see :data:`MAX_PIXELS_PER_BYTE`).

    >>> check_canvas((8000, 8000), "JPEG", 631, "x.jpg", MAX_PIXELS)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    agegender.errors.ImageReadError: x.jpg: claims 8000x8000 pixels in 631 bytes, more than a JPEG file can hold ...
    """
    w, h = size
    if w < 1 or h < 1:
        raise ImageReadError(f"{name}: the header claims {w}x{h} pixels", CORRUPT)
    if w * h > max_pixels:
        raise ImageReadError(f"{name}: {w}x{h} exceeds the limit of {max_pixels:,} pixels", TOO_LARGE)
    ratio = MAX_PIXELS_PER_BYTE.get(fmt or "")
    if ratio and w * h > PLAUSIBILITY_FLOOR and w * h > nbytes * ratio:
        raise ImageReadError(f"{name}: claims {w}x{h} pixels in {nbytes:,} bytes, more than a {fmt} file can hold "
                             "(truncated or crafted)", TOO_LARGE)


def _upright(img: Image.Image, name: str) -> Image.Image:
    """``img`` turned as its EXIF orientation says (values outside 1-8 are reserved and ignored)."""
    try:
        orientation = img.getexif().get(ORIENTATION_TAG, 1)
    except Exception as e:  # noqa: BLE001 - a malformed EXIF block may raise anything
        raise ImageReadError(f"{name}: malformed EXIF block: {describe(e)}", CORRUPT) from e
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return img if method is None else img.transpose(method)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels have arbitrary colour underneath; composite on white like a viewer would.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping everything above 255 to white.
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def _decode(img: Image.Image, nbytes: int, name: str, max_pixels: int) -> Image.Image:
    """The checked, decoded, upright RGB image (a new image, independent of ``img``'s file)."""
    check_canvas(img.size, img.format, nbytes, name, max_pixels)
    try:
        img.load()
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, RuntimeError, struct.error, ...
        raise ImageReadError(f"{name}: {describe(e)}", CORRUPT) from e
    # A plugin may change its size on load (multi-resolution containers); what was decoded must still fit.
    check_canvas(img.size, None, nbytes, name, max_pixels)
    upright = _upright(img, name)
    try:
        return _to_rgb(upright)
    except Exception as e:  # noqa: BLE001 - unusual modes (F, LAB, ...) may have no conversion
        raise ImageReadError(f"{name}: cannot convert mode {upright.mode} to RGB: {describe(e)}", CORRUPT) from e


def open_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Decode ``source`` (a path or encoded bytes) into an RGB PIL image, upright as its EXIF says.

    Only :data:`ACCEPTED_FORMATS` are read, and the canvas size is checked before any pixel is decoded (see
    :func:`check_canvas`): explicit checks on every call, safe in any thread (no process-wide warning filters).
    Raises :class:`ImageReadError` with a one-line reason for anything that is not a usable image; the reason
    starts with ``name`` (default: the path, or ``<bytes>``), so bytes read from storage can be named as their
    file would be.
    """
    if name is None:
        name = "<bytes>" if isinstance(source, bytes | bytearray | memoryview) else str(source)
    fp, nbytes = _source(source, name)
    with fp:
        img = _identify(fp, name, max_pixels)
        try:
            return _decode(img, nbytes, name, max_pixels)
        finally:
            img.close()


def as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB from a PIL image of any mode, or from an ``(H, W)``, ``(H, W, 3)`` or
    ``(H, W, 4)`` uint8 array (greyscale is repeated, an alpha channel dropped).

    >>> as_rgb_array(np.zeros((2, 3, 4), np.uint8)).shape
    (2, 3, 3)
    """
    if isinstance(image, Image.Image):
        array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image array must be uint8, got {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"image array must have shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
        array = image[..., :3]
    else:
        raise ValueError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image is empty ({array.shape[1]}x{array.shape[0]})")
    return np.ascontiguousarray(array)


def as_pil(image: ImageInput) -> Image.Image:
    """An RGB PIL image from a PIL image, an array (see :func:`as_rgb_array`), a path or encoded bytes."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(as_rgb_array(image))
    return open_image(image)
