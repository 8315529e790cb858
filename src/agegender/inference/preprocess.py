"""Model input in numpy: each image resized and centre-cropped to uint8, the batch stacked and normalised once.

The one preprocessing path of predict, evaluate, serve and the decode cache's evaluation view (torch-free)::

    resize_crop(image, cfg)   PIL image -> uint8 [S, S, 3]: shorter side to R = cfg.resize_size (PIL's
                              antialiased bilinear, as torchvision's Resize on PIL images), centre crop S
    normalise(batch, cfg)     uint8 [N, S, S, 3] -> float32 [N, 3, S, S]: / 255, minus mean, over std

Sizes and rounding follow torchvision's ``Resize(R)`` + ``CenterCrop(S)`` exactly, so a model sees the pixels
it was trained on; :mod:`agegender.transforms` builds the training presets on the same :class:`PresetConfig`.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import numpy as np
from PIL import Image, ImageFilter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class PresetConfig:
    """Input geometry and normalisation. ``crop_pct`` is the share of the resized image kept by the crop."""

    image_size: int
    crop_pct: float
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def resize_size(self) -> int:
        """Side of the resized image before the crop.

        >>> PresetConfig(image_size=90, crop_pct=0.9).resize_size
        100
        """
        return int(round(self.image_size / self.crop_pct))


def resized_size(width: int, height: int, side: int) -> tuple[int, int]:
    """``(width, height)`` after scaling the shorter side to ``side``, the longer one truncated as torchvision
    does.

    >>> resized_size(200, 100, 50), resized_size(30, 90, 24)
    ((100, 50), (24, 72))
    """
    if width <= height:
        return side, int(side * height / width)
    return int(side * width / height), side


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` of ``pixels`` ``[H, W, C]`` (torchvision's rounding; zero padding where the
    image is smaller, as torchvision pads).

    >>> center_crop(np.arange(16).reshape(4, 4, 1), 2)[..., 0].tolist()
    [[5, 6], [9, 10]]
    """
    h, w = pixels.shape[:2]
    if size > h or size > w:
        top, left = max(0, (size - h) // 2), max(0, (size - w) // 2)
        bottom, right = max(0, (size - h + 1) // 2), max(0, (size - w + 1) // 2)
        pixels = np.pad(pixels, ((top, bottom), (left, right), (0, 0)))
        h, w = pixels.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return pixels[top : top + size, left : left + size]


def resize_crop(image: Image.Image, cfg: PresetConfig, crop: int | None = None) -> np.ndarray:
    """``image`` (RGB) -> uint8 ``[C, C, 3]`` with ``C = crop`` (default ``cfg.image_size``): the shorter side
    resized to ``cfg.resize_size``, then the centre crop."""
    size = resized_size(image.width, image.height, cfg.resize_size)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.array(center_crop(np.asarray(image), cfg.image_size if crop is None else crop), order="C")


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


def normalise(batch: np.ndarray, cfg: PresetConfig) -> np.ndarray:
    """uint8 ``[N, S, S, 3]`` -> float32 ``[N, 3, S, S]``: scaled to [0, 1], minus ``cfg.mean``, over ``cfg.std``
    (one fused multiply-add over the whole batch).

    >>> cfg = PresetConfig(2, 1.0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    >>> normalise(np.full((1, 2, 2, 3), 255, np.uint8), cfg)[0, :, 0, 0].tolist()
    [1.0, 1.0, 1.0]
    """
    if batch.ndim != 4 or batch.shape[3] != 3:
        raise ValueError(f"expected a uint8 batch [N, S, S, 3], got shape {batch.shape}")
    std = np.asarray(cfg.std, np.float32)
    scale = (1.0 / (255.0 * std))[:, None, None]
    shift = (-np.asarray(cfg.mean, np.float32) / std)[:, None, None]
    # Channels first while still uint8 (a quarter of the bytes), then one multiply and one add into the output.
    out = np.empty((batch.shape[0], 3, *batch.shape[1:3]), np.float32)
    np.multiply(batch.transpose(0, 3, 1, 2), scale, out=out)
    out += shift
    return out


def default_workers() -> int:
    """Threads for decoding and inference: one per core, at most 4 (beyond that the GIL-held glue dominates)."""
    return max(1, min(4, os.cpu_count() or 1))


@lru_cache(maxsize=4)
def thread_pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` threads (one long-lived pool per size: thread start-up is paid once per
    process, not per batch). Work that runs on it and calls :func:`parallel_map` runs that inline."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agegender-pool")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]``, in order, on up to ``workers`` threads (default :func:`default_workers`).

    Threads pay where ``fn`` spends its time in code that releases the GIL (PIL decoding and resizing,
    onnxruntime, large numpy operations); with one item or one worker it runs in the calling thread.
    """
    items = list(items)
    workers = default_workers() if workers is None else workers
    # A pool thread waiting on its own pool could deadlock: nested calls run inline.
    nested = threading.current_thread().name.startswith("agegender-pool")
    if workers <= 1 or len(items) <= 1 or nested:
        return [fn(x) for x in items]
    return list(thread_pool(workers).map(fn, items))


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into consecutive slices of at most ``size``.

    >>> chunks([1, 2, 3, 4, 5], 2)
    [[1, 2], [3, 4], [5]]
    """
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]
