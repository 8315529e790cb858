"""Transform presets for training (torch): augmentation, and the decode and evaluation views built on the numpy
path of :mod:`agegender.inference.preprocess`; input size, crop, mean and std live in :class:`PresetConfig`.

Training and inference read these from the model config saved in the checkpoint, so a model is always fed
exactly as it was trained.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from agegender.evaluation.damage import old_print, random_old_print
from agegender.inference.preprocess import center_crop, normalise, resize_crop
from agegender.io.images import as_pil
from agegender.model.config import IMAGENET_MEAN, IMAGENET_STD, PresetConfig

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


class RandomDegrade:
    """Photo-quality damage that UTKFace's sharp colour web photos lack, for robustness to real photos.

    With probability ``p`` an image gets a random mix of: greyscale (an old print), down-and-up scaling to
    25-70% (a small face), Gaussian blur (focus, motion), sensor noise, exposure (gamma) and contrast changes,
    and JPEG re-compression at quality 15-70; each part with its own chance, in that order (as a camera and
    then a web upload would). Input and output: a uint8 image tensor ``[3, H, W]``.
    """

    # Chance of each kind of damage in a damaged image: greyscale, small, blur, noise, exposure, JPEG.
    CHANCES = (0.3, 0.5, 0.4, 0.3, 0.4, 0.5)

    def __init__(self, p: float = 0.5) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"degradation probability must be in [0, 1], got {p}")
        self.p = p

    @staticmethod
    def _uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand(()))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) >= self.p:
            return img
        todo = (torch.rand(6) < torch.tensor(self.CHANCES)).tolist()
        if not any(todo):  # a damaged image has at least one kind of damage
            todo[int(torch.randint(6, ()))] = True
        grey, small, blur, noise, exposure, jpeg = todo
        h, w = img.shape[-2:]
        if grey:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if small:
            f = self._uniform(0.25, 0.7)
            img = TF.resize(TF.resize(img, [max(8, round(h * f)), max(8, round(w * f))], antialias=True), [h, w])
        if blur:
            sigma = self._uniform(0.4, 1.8)
            img = TF.gaussian_blur(img, [2 * math.ceil(2 * sigma) + 1] * 2, [sigma, sigma])
        if noise:
            img = (img.float() + torch.randn(img.shape) * self._uniform(2.0, 10.0)).clamp(0, 255).to(torch.uint8)
        if exposure:
            img = TF.adjust_contrast(TF.adjust_gamma(img, math.exp(self._uniform(-0.5, 0.5))),
                                     self._uniform(0.6, 1.2))
        if jpeg:
            img = TF.jpeg(img, int(self._uniform(15, 70)))
        return img


class RandomOldPrint:
    """With probability ``p``, the damage of an old print scanned from a family album
    (:func:`agegender.evaluation.damage.random_old_print`: sepia or a colour cast, fading, grain, scan blur,
    halftone, vignetting, low resolution, each with its own chance). Input and output: a uint8 image tensor
    ``[3, H, W]``; drawn from torch's generator, so a seeded run repeats."""

    def __init__(self, p: float = 0.3) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"old-print probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) >= self.p:
            return img
        rng = np.random.default_rng(int(torch.randint(2**31 - 1, ())))
        aged = old_print(img.permute(1, 2, 0).numpy(), random_old_print(rng), rng)
        return torch.from_numpy(aged).permute(2, 0, 1).contiguous()


def decode_preset(cfg: PresetConfig) -> _DecodeView:
    """What the decode cache stores: a PIL image resized and centre-cropped to a ``resize_size`` square,
    as a uint8 tensor ``[3, R, R]``. Both presets below then start from exactly these pixels."""
    return _DecodeView(cfg)


def train_preset(cfg: PresetConfig, strength: float = 1.0, cached: bool = False, degrade: float = 0.0,
                 old_print: float = 0.0) -> T.Compose:
    """The reference augmentation (random crop, horizontal flip, colour jitter), scaled by ``strength``, then
    with probability ``old_print`` the damage of an old print (:class:`RandomOldPrint`) and with probability
    ``degrade`` photo-quality damage (:class:`RandomDegrade`).

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
            T.ToImage(),
            *([RandomOldPrint(old_print)] if old_print > 0 else []),
            *([RandomDegrade(degrade)] if degrade > 0 else []),
            *_to_tensor(cfg)[1:],
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
