"""Model input in numpy: each image resized and centre-cropped to uint8, the batch stacked and normalised once.

The one preprocessing path of predict, evaluate, serve and the decode cache's evaluation view (torch-free)::

    resize_crop(image, cfg)   PIL image -> uint8 [S, S, 3]: shorter side to R = cfg.resize_size (PIL's
                              antialiased bilinear, as torchvision's Resize on PIL images), centre crop S
    normalise(batch, cfg)     uint8 [N, S, S, 3] -> float32 [N, 3, S, S]: / 255, minus mean, over std

Sizes and rounding follow torchvision's ``Resize(R)`` + ``CenterCrop(S)`` exactly, so a model sees the pixels
it was trained on; :mod:`agegender.training.transforms` builds the training presets on the same
:class:`~agegender.model.config.PresetConfig`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from agegender.model.config import PresetConfig


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


