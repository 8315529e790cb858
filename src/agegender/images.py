"""Reading images from disk or bytes into RGB, whatever their mode, orientation or container."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

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

