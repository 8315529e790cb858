"""Training configuration: dataclass defaults, then a YAML file, then command-line flags."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from agegender.data import parse_split
from agegender.losses import AGE_LOSSES
from agegender.model import BACKBONES

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("none", "cosine", "onecycle")


@dataclass
class TrainConfig:
    data: str = ""
    out: str = ""
    backbone: str = "resnet18"
    pretrained: str = "imagenet"  # none | imagenet | path to a torchvision state dict
    image_size: int = 112
    crop_pct: float = 0.9
    head_hidden: int = 256
    dropout: float = 0.2
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    age_loss: str = "mse"
    age_weight: float = 1.0
    gender_weight: float = 1.0
    augment: float = 1.0  # colour-jitter strength; 0 keeps only crop and flip
    split: str = "0.8,0.1,0.1"
    seed: int = 0
    limit: int = 0  # use at most this many images (0 = all), for quick trials
    num_workers: int = -1  # -1 = automatic
    device: str = "auto"
    amp: bool = True  # mixed precision, on CUDA only
    grad_clip: float = 0.0

    def validate(self) -> TrainConfig:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(bool(self.data), "--data is required")
        need(bool(self.out), "--out is required")
        need(self.backbone in BACKBONES, f"--backbone must be one of {', '.join(BACKBONES)}")
        need(self.age_loss in AGE_LOSSES, f"--age-loss must be one of {', '.join(AGE_LOSSES)}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}")
        need(self.epochs >= 1, "--epochs must be >= 1")
        need(self.batch_size >= 1, "--batch-size must be >= 1")
        need(self.lr > 0, "--lr must be > 0")
        need(self.image_size >= 16, "--image-size must be >= 16")
        need(0 < self.crop_pct <= 1, "crop_pct must be in (0, 1]")
        need(self.limit >= 0, "--limit must be >= 0")
        parse_split(self.split)
        return self

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
        """Defaults, updated by the YAML file, updated by ``overrides`` (flags the user actually gave)."""
        values: dict = {}
        if yaml_path:
            with open(yaml_path) as f:
                loaded = yaml.safe_load(f) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{yaml_path}: expected a mapping of option: value")
            values.update(loaded)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {', '.join(sorted(known))}")
        if isinstance(values.get("split"), list | tuple):
            values["split"] = ",".join(str(x) for x in values["split"])
        return cls(**values).validate()

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)
