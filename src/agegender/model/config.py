"""What a network is and how it is fed: :class:`ModelConfig`, saved in every checkpoint and ONNX export, and its
:class:`PresetConfig`, the one place where input size, crop, mean and std live.

Torch-free, so that inference with onnxruntime can read an exported model's config without PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

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


AGE_HEADS = ("regression", "dldl")
# Largest input side, hidden head width and age range a model may declare.
MAX_IMAGE_SIZE, MAX_HEAD_HIDDEN, MAX_AGE_BINS = 1024, 8192, 200
BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0")


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network; saved inside every checkpoint."""

    backbone: str = "resnet18"
    head_hidden: int = 256
    dropout: float = 0.2
    # "regression": one neuron (the reference). "dldl": a softmax over ages 0..max_age whose expectation is
    # the estimate (label-distribution learning); its spread gives each estimate its own uncertainty.
    age_head: str = "regression"
    max_age: int = 100
    image_size: int = 112
    crop_pct: float = 0.9
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # The age head predicts (age - age_mean) / age_std; the network returns years as well.
    age_mean: float = 33.0
    age_std: float = 20.0
    # Optional monotone map of the network's age estimate, fitted on validation (see ``fit_age_map``):
    # {"x": raw estimates, "y": years} knots. None = the raw estimate.
    age_map: dict | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.age_head not in AGE_HEADS:
            raise ValueError(f"unknown age head {self.age_head!r}; choose one of {', '.join(AGE_HEADS)}")
        # Bounds, not only types: a checkpoint is input too, and a crafted size would otherwise be allocated.
        for name, ok, allowed in (("max_age", 1 <= self.max_age <= MAX_AGE_BINS, f"1-{MAX_AGE_BINS}"),
                                  ("image_size", 16 <= self.image_size <= MAX_IMAGE_SIZE, f"16-{MAX_IMAGE_SIZE}"),
                                  ("head_hidden", 1 <= self.head_hidden <= MAX_HEAD_HIDDEN, f"1-{MAX_HEAD_HIDDEN}"),
                                  ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
                                  ("crop_pct", 0 < self.crop_pct <= 1, "in (0, 1]"),
                                  ("age_mean", math.isfinite(self.age_mean), "finite"),
                                  ("age_std", 0 < self.age_std < math.inf, "> 0 and finite")):
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (R, G, B), got {self.mean!r} and {self.std!r}")
        if self.age_map is not None:
            x, y = self.age_map.get("x"), self.age_map.get("y")
            if x is None or y is None or len(x) != len(y) or len(x) < 2:
                raise ValueError("age_map needs lists 'x' and 'y' of the same length >= 2")
            steps_x = [b - a for a, b in zip(x[:-1], x[1:], strict=True)]
            steps_y = [b - a for a, b in zip(y[:-1], y[1:], strict=True)]
            if not all(math.isfinite(float(v)) for v in [*x, *y]):
                raise ValueError("age_map knots must be finite numbers")
            if min(steps_x) <= 0 or min(steps_y) < 0:
                raise ValueError("age_map must be increasing: x strictly, y not decreasing")
            self.age_map = {"x": [float(v) for v in x], "y": [float(v) for v in y]}
        self.mean = tuple(float(x) for x in self.mean)
        self.std = tuple(float(x) for x in self.std)
        if not all(math.isfinite(m) and 0 < s < math.inf for m, s in zip(self.mean, self.std, strict=True)):
            raise ValueError(f"mean must be finite and std > 0, got {self.mean!r} and {self.std!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def preset(self) -> PresetConfig:
        """The input geometry and normalisation this network was trained with."""
        return PresetConfig(self.image_size, self.crop_pct, self.mean, self.std)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"model config has unknown keys {sorted(unknown)} (written by a newer agegender?)")
        return cls(**d)
