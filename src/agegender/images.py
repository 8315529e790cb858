"""Reading images from disk, bytes or arrays into RGB, whatever their mode, orientation or container."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# What the predictor accepts as an image.
ImageInput = Image.Image | str | Path | bytes | np.ndarray

# A decompression bomb (a small file that claims a huge canvas) is refused before decoding.
MAX_PIXELS = 64_000_000


class ImageReadError(ValueError):
    """The file is not a readable image (empty, truncated, not an image, too large)."""


def _to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels have arbitrary colour underneath; composite on white like a viewer would.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping everything above 255 to white.
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def open_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``source`` (a path or encoded bytes) into an RGB PIL image.

    Raises :class:`ImageReadError` with a one-line reason for anything that is not a usable image.
    """
    name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    try:
        if isinstance(source, bytes | bytearray):
            if not source:
                raise ImageReadError("empty input (0 bytes)")
            fp = io.BytesIO(source)
        else:
            if Path(source).stat().st_size == 0:
                raise ImageReadError(f"{name}: empty file (0 bytes)")
            fp = open(source, "rb")  # noqa: SIM115 - closed below
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp)
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageReadError(f"{name}: {w}x{h} exceeds the limit of {max_pixels:,} pixels")
                img.load()
            return _to_rgb(img)
        finally:
            fp.close()
    except ImageReadError:
        raise
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{name}: not an image file PIL can read") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"{name}: {type(e).__name__}: {e}") from e



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
