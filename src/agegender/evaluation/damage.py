"""Photo damage: the fixed damaged copies of the robustness figures (the same copy of each image for every model),
and the old-print damage that training draws at random from the same code.

Two kinds are scored: "degraded" (a small, blurred, over-compressed greyscale photo: a poor camera and upload) and
"old print" (what a scanned family album has: sepia or a colour cast, faded blacks and low contrast, film grain,
scan blur, halftone screen, vignetting, low resolution).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

# The sepia toning matrix of the common image editors (rows: output R, G, B from input R, G, B).
SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)
GREY = np.array([[0.299, 0.587, 0.114]] * 3, np.float32)


def degrade_fixed(image: Image.Image) -> Image.Image:
    """The fixed damage of the "degraded validation" figure: greyscale, a third of the size and back up,
    blurred (radius 1) and re-compressed as JPEG quality 30. Deterministic, so every model sees the same
    degraded copy."""
    w, h = image.size
    small = image.convert("L").resize((max(8, w // 3), max(8, h // 3)), Image.BILINEAR)
    blurred = small.resize((w, h), Image.BILINEAR).filter(ImageFilter.GaussianBlur(1)).convert("RGB")
    buf = io.BytesIO()
    blurred.save(buf, "JPEG", quality=30)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@dataclass(frozen=True)
class OldPrint:
    """One old print's damage, in the order a print ages and is scanned: ``scale`` (the face's share of the
    scan's resolution, 1 = none), ``blur`` (scan blur, Gaussian sigma in pixels of the image), ``tone`` (0 colour
    ... 1 fully toned) towards ``sepia`` or grey, ``cast`` (a multiplier per channel: faded dyes), ``lift`` and
    ``white`` (the grey levels black and white fade to), ``halftone`` (amplitude of a printed screen; its
    ``period`` in pixels), ``vignette`` (darkening of the corners, 0-1) and ``grain`` (film grain, grey levels)."""

    scale: float = 1.0
    blur: float = 0.0
    tone: float = 0.0
    sepia: bool = True
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    lift: float = 0.0
    white: float = 255.0
    halftone: float = 0.0
    period: float = 3.0
    vignette: float = 0.0
    grain: float = 0.0


# The fixed "old print" copy of the figures: a small, faded, sepia-toned, grainy scan with dark corners.
OLD_PRINT = OldPrint(scale=0.45, blur=0.8, tone=0.85, sepia=True, cast=(1.05, 0.97, 0.9), lift=45.0, white=225.0,
                     halftone=0.0, vignette=0.35, grain=7.0)


def old_print(pixels: np.ndarray, damage: OldPrint, rng: np.random.Generator) -> np.ndarray:
    """``pixels`` uint8 ``[H, W, 3]`` aged by ``damage`` (the grain drawn from ``rng``) -> uint8 ``[H, W, 3]``.

    >>> out = old_print(np.full((8, 8, 3), 255, np.uint8), OldPrint(lift=40.0, white=200.0), np.random.default_rng(0))
    >>> int(out.max()), int(old_print(np.zeros((8, 8, 3), np.uint8), OldPrint(lift=40.0), None).min())
    (200, 40)
    """
    h, w = pixels.shape[:2]
    image = Image.fromarray(pixels)
    if damage.scale < 1.0:
        small = (max(8, round(w * damage.scale)), max(8, round(h * damage.scale)))
        image = image.resize(small, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)
    if damage.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(damage.blur))
    x = np.asarray(image, np.float32)
    if damage.tone > 0:
        toned = x @ (SEPIA if damage.sepia else GREY).T
        x = (1 - damage.tone) * x + damage.tone * toned
    x = x * np.asarray(damage.cast, np.float32)
    x = damage.lift + (damage.white - damage.lift) * np.clip(x, 0, 255) / 255.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if damage.halftone > 0:
        screen = np.cos(2 * np.pi * xx / damage.period) * np.cos(2 * np.pi * yy / damage.period)
        x = x * (1 + damage.halftone * screen)[..., None]
    if damage.vignette > 0:
        r2 = ((xx - (w - 1) / 2) / (w / 2)) ** 2 + ((yy - (h - 1) / 2) / (h / 2)) ** 2
        x = x * (1 - damage.vignette * np.clip(r2 / 2, 0, 1))[..., None]
    if damage.grain > 0:
        x = x + (rng.standard_normal((h, w)) * damage.grain).astype(np.float32)[..., None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def random_old_print(rng: np.random.Generator) -> OldPrint:
    """A random old print: each kind of damage with its own chance, sized from mild to strong."""

    def maybe(chance: float, lo: float, hi: float, off: float = 0.0) -> float:
        return float(rng.uniform(lo, hi)) if rng.random() < chance else off

    lift = maybe(0.7, 10.0, 60.0)
    return OldPrint(scale=maybe(0.5, 0.3, 0.8, 1.0), blur=maybe(0.5, 0.3, 1.5), tone=maybe(0.8, 0.4, 1.0),
                    sepia=bool(rng.random() < 0.6), cast=tuple(rng.uniform(0.85, 1.12, 3)) if rng.random() < 0.5
                    else (1.0, 1.0, 1.0), lift=lift, white=255.0 - maybe(0.6, 0.0, 45.0),
                    halftone=maybe(0.2, 0.04, 0.15), period=float(rng.uniform(2.2, 4.0)),
                    vignette=maybe(0.5, 0.1, 0.5), grain=maybe(0.6, 2.0, 12.0))


def old_print_fixed(image: Image.Image) -> Image.Image:
    """The fixed "old print" copy of the figures (:data:`OLD_PRINT`; the grain from a fixed seed, so every model
    sees the same copy)."""
    pixels = np.asarray(image.convert("RGB"))
    return Image.fromarray(old_print(pixels, OLD_PRINT, np.random.default_rng(0)))


# The fixed damaged copies the figures are given for, by name.
DAMAGES: dict[str, Callable[[Image.Image], Image.Image]] = {"degraded": degrade_fixed, "old_print": old_print_fixed}
