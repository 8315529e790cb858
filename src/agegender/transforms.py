"""Transform presets for training (torch): augmentation, and the decode and evaluation views built on the numpy
path of :mod:`agegender.preprocess`, where input size, crop, mean and std live (:class:`PresetConfig`).

Training and inference read these from the model config saved in the checkpoint, so a model is always fed
exactly as it was trained.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from agegender.images import as_pil
from agegender.preprocess import IMAGENET_MEAN, IMAGENET_STD, PresetConfig, center_crop, normalise, resize_crop

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PresetConfig", "decode_preset", "eval_preset", "train_preset"]


def _to_tensor(cfg: PresetConfig) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(cfg.mean, cfg.std)]


class _DecodeView:
    """PIL image -> uint8 tensor ``[3, R, R]``: :func:`preprocess.resize_crop` to the resize side (a class, not a
    closure, so that loader worker processes can pickle it)."""

    def __init__(self, cfg: PresetConfig) -> None:
        self.cfg = cfg

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(resize_crop(as_pil(image), self.cfg, self.cfg.resize_size)).permute(2, 0, 1)


def decode_preset(cfg: PresetConfig) -> _DecodeView:
    """What the decode cache stores: a PIL image resized and centre-cropped to a ``resize_size`` square,
    as a uint8 tensor ``[3, R, R]``. Both presets below then start from exactly these pixels."""
    return _DecodeView(cfg)


def train_preset(cfg: PresetConfig, strength: float = 1.0, cached: bool = False) -> T.Compose:
    """The reference augmentation (random crop, horizontal flip, colour jitter), scaled by ``strength``.

    Input: a PIL image, or with ``cached`` a uint8 tensor from :func:`decode_preset` (augmentation then runs
    on uint8 tensors, with no decoding or resizing). Output: float tensor ``[3, image_size, image_size]``,
    normalised.
    """
    if strength < 0:
        raise ValueError(f"augmentation strength must be >= 0, got {strength}")
    j = 0.2 * strength
    return T.Compose(
        [
            *([] if cached else [T.Resize(cfg.resize_size, antialias=True)]),
            T.RandomCrop(cfg.image_size),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, 0.05 * strength)),
            *_to_tensor(cfg),
        ]
    )


class _EvalView:
    """The evaluation input as a tensor ``[3, S, S]``, made by the numpy path every runtime uses
    (:func:`preprocess.resize_crop` and :func:`preprocess.normalise`)."""

    def __init__(self, cfg: PresetConfig, cached: bool) -> None:
        self.cfg, self.cached = cfg, cached

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if self.cached:  # a uint8 tensor [3, R, R] from decode_preset
            pixels = center_crop(np.asarray(image.permute(1, 2, 0)), self.cfg.image_size)
        else:
            pixels = resize_crop(as_pil(image), self.cfg)
        return torch.from_numpy(normalise(pixels[None], self.cfg)[0])


def eval_preset(cfg: PresetConfig, cached: bool = False) -> _EvalView:
    """Resize then centre crop (only the crop with ``cached``, whose input is :func:`decode_preset`'s uint8
    tensor); output float ``[3, image_size, image_size]``, normalised."""
    return _EvalView(cfg, cached)
