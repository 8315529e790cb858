"""Transform presets: the one place where input size, crop, mean and std live.

Training and inference read these from the model config saved in the checkpoint, so a model is always fed
exactly as it was trained.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

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


def decode_preset(cfg: PresetConfig) -> T.Compose:
    """What the decode cache stores: a PIL image resized and centre-cropped to a ``resize_size`` square,
    as a uint8 tensor ``[3, R, R]``. Both presets below then start from exactly these pixels."""
    return T.Compose([T.Resize(cfg.resize_size, antialias=True), T.CenterCrop(cfg.resize_size), T.PILToTensor()])


def train_preset(cfg: PresetConfig, strength: float = 1.0, cached: bool = False, degrade: float = 0.0) -> T.Compose:
    """The reference augmentation (random crop, horizontal flip, colour jitter), scaled by ``strength``, then
    with probability ``degrade`` photo-quality damage (:class:`RandomDegrade`).

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
            *([RandomDegrade(degrade)] if degrade > 0 else []),
            *_to_tensor(cfg)[1:],
        ]
    )


def eval_preset(cfg: PresetConfig, cached: bool = False) -> T.Compose:
    """Resize then centre crop (only the crop with ``cached``); output float ``[3, image_size, image_size]``."""
    resize = [] if cached else [T.Resize(cfg.resize_size, antialias=True)]
    return T.Compose([*resize, T.CenterCrop(cfg.image_size), *_to_tensor(cfg)])
