"""Transform presets: the one place where input size, crop, mean and std live.

Training and inference read these from the model config saved in the checkpoint, so a model is always fed
exactly as it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def _to_tensor(cfg: PresetConfig) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(cfg.mean, cfg.std)]


def decode_preset(cfg: PresetConfig) -> T.Compose:
    """What the decode cache stores: a PIL image resized and centre-cropped to a ``resize_size`` square,
    as a uint8 tensor ``[3, R, R]``. Both presets below then start from exactly these pixels."""
    return T.Compose([T.Resize(cfg.resize_size, antialias=True), T.CenterCrop(cfg.resize_size), T.PILToTensor()])


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


def eval_preset(cfg: PresetConfig, cached: bool = False) -> T.Compose:
    """Resize then centre crop (only the crop with ``cached``); output float ``[3, image_size, image_size]``."""
    resize = [] if cached else [T.Resize(cfg.resize_size, antialias=True)]
    return T.Compose([*resize, T.CenterCrop(cfg.image_size), *_to_tensor(cfg)])
