"""Training configuration: dataclass defaults, then a YAML file, then command-line flags."""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from agegender.data.cache import CACHE_MODES
from agegender.data.sources import Source, parse_source, parse_split
from agegender.faces.loader import FACE_POLICIES
from agegender.model.config import BACKBONES, MAX_HEAD_HIDDEN, MAX_IMAGE_SIZE
from agegender.training.losses import AGE_LOSSES

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("none", "cosine", "onecycle")


def _coerce(key: str, value: object, kind: type) -> object:
    """YAML reads ``1e-4`` as a string and users write ``epochs: "5"``: convert to the option's type."""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is list:
        raise ValueError(f"option {key}: expected a list, got {value!r}")
    try:
        if kind is bool:
            raise TypeError
        if kind is int:
            f = float(value)
            if not f.is_integer():
                raise TypeError
            return int(f)
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {key}: expected {kind.__name__}, got {value!r}") from None


def option_type(name: str) -> type:
    """The type of option ``name`` (for ``int | None`` fields: int).

    >>> option_type("epochs"), option_type("image_size")
    (<class 'int'>, <class 'int'>)
    """
    hint = typing.get_type_hints(TrainConfig)[name]
    if isinstance(hint, types.UnionType):
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


# What best.pt may be chosen by: every age group weighing the same, or every image.
SELECT_METRICS = ("balanced_age_mae", "age_mae")


@dataclass
class TrainConfig:
    data: str = ""
    out: str = ""
    backbone: str = "resnet18"
    pretrained: str = "imagenet"  # none | imagenet | path to a torchvision state dict
    # None: the network's own value (the --init model's, else ModelConfig's default), as timm does.
    image_size: int | None = None
    crop_pct: float | None = None
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
    ema: float = 0.0  # decay of an exponential moving average of the weights (e.g. 0.999); 0 = off
    flip_tta: bool = False  # validate (and predict by default) on the image and its mirror image
    interval_coverage: float = 0.8  # share of true ages the predicted age interval should hold
    age_balance: float = 0.0  # re-weight the age loss by (smoothed frequency of the age) ** -age_balance
    age_map: bool = False  # fit a quantile map on validation against the regression to the mean
    labels: str = ""  # CSV of file,age,gender,age_group for folders not named the UTKFace way
    detect: bool = False  # images are uncropped photos: detect and align each face first
    face: str = "single"  # with detect: skip photos with several faces (single) or take the largest
    # Several training sources at once (each split on its own); replaces data/labels/detect/face. Items are
    # mappings with the keys of sources.Source, or "DIR,key=value,..." strings.
    sources: list | None = None
    degrade: float = 0.0  # probability of a photo-quality degradation per training image (0 = off)
    old_print: float = 0.0  # probability of old-print damage per training image (0 = off)
    # Balanced softmax: the dldl loss sees the age logits plus age_prior_tau x log(training prior / group-balanced
    # prior), so the network learns to answer as if every age group were equally common (0 = off).
    age_prior_tau: float = 0.0
    select: str = "balanced_age_mae"  # the validation figure best.pt is chosen by (pooled over the sources)
    init: str = ""  # start from a trained checkpoint (a path, or "bundled") instead of ImageNet / random
    freeze_backbone_epochs: int = 0  # with init: train only the heads for this many epochs first
    distill: str = ""  # a teacher checkpoint (a path, or "bundled"): learn its mirror-averaged outputs too
    distill_weight: float = 0.5  # share of the distillation term in the loss (with distill)
    cache: str = "disk"  # decoded-image cache: none | memory | disk (memory-mapped, reused across runs)
    channels_last: bool = True  # on CUDA only
    compile: bool = False  # torch.compile the model (CUDA; slow to start)

    def validate(self) -> TrainConfig:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(bool(self.data) or bool(self.sources), "--data (or sources) is required")
        need(not (self.sources and (self.labels or self.detect)),
             "give --labels/--detect inside each source, not beside sources")
        need(0 <= self.degrade <= 1, "degrade must be a probability in [0, 1]")
        need(0 <= self.old_print <= 1, "old_print must be a probability in [0, 1]")
        need(self.age_prior_tau >= 0, "age_prior_tau must be >= 0 (0 = off)")
        need(self.age_prior_tau == 0 or self.age_loss == "dldl", "age_prior_tau needs --age-loss dldl")
        need(self.select in SELECT_METRICS, f"select must be one of {', '.join(SELECT_METRICS)}")
        if self.sources:
            # Written out in full, so config.yaml says exactly how each folder was read.
            self.sources = [s.to_dict() for s in self.source_list()]
        keys = [s.key for s in self.source_list()]
        need(len(set(keys)) == len(keys), f"sources need distinct names, got {keys}: add name=... to each")
        need(bool(self.out), "--out is required")
        need(self.backbone in BACKBONES, f"--backbone must be one of {', '.join(BACKBONES)}")
        need(self.age_loss in AGE_LOSSES, f"--age-loss must be one of {', '.join(AGE_LOSSES)}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}")
        need(self.epochs >= 1, "--epochs must be >= 1")
        need(self.batch_size >= 1, "--batch-size must be >= 1")
        need(self.lr > 0, "--lr must be > 0")
        need(self.image_size is None or 16 <= self.image_size <= MAX_IMAGE_SIZE,
             f"--image-size must be 16-{MAX_IMAGE_SIZE}")
        need(1 <= self.head_hidden <= MAX_HEAD_HIDDEN, f"--head-hidden must be 1-{MAX_HEAD_HIDDEN}")
        need(0 <= self.dropout < 1, "--dropout must be in [0, 1)")
        need(self.num_workers >= -1, "--num-workers must be >= -1 (-1 = automatic)")
        need(self.crop_pct is None or 0 < self.crop_pct <= 1, "crop_pct must be in (0, 1]")
        need(self.limit >= 0, "--limit must be >= 0")
        need(0 <= self.ema < 1, "ema must be in [0, 1)")
        need(self.cache in CACHE_MODES, f"--cache must be one of {', '.join(CACHE_MODES)}")
        need(self.face in FACE_POLICIES, f"--face must be one of {', '.join(FACE_POLICIES)}")
        need(self.freeze_backbone_epochs >= 0, "--freeze-backbone-epochs must be >= 0")
        need(self.age_balance >= 0, "age_balance must be >= 0 (0 = off)")
        need(0 <= self.distill_weight <= 1, "--distill-weight must be in [0, 1]")
        need(0 < self.interval_coverage < 1, "interval_coverage must be in (0, 1)")
        parse_split(self.split)
        return self

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
        """Defaults, updated by the YAML file, updated by ``overrides`` (flags the user actually gave)."""
        values: dict = {}
        if yaml_path:
            try:
                with open(yaml_path) as f:
                    loaded = yaml.safe_load(f) or {}
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
                # safe_load refuses tags such as !!python/object; say so in one line, without yaml's context.
                reason = " ".join(str(getattr(e, "problem", None) or getattr(e, "strerror", None) or e).split())
                raise ValueError(f"{yaml_path}: not a readable YAML file of options: {reason}") from None
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
        return cls(**{k: _coerce(k, v, option_type(k)) for k, v in values.items() if v is not None}).validate()

    def source_list(self) -> list[Source]:
        """The training sources: ``sources``, or the one given by data/labels/detect/face."""
        if self.sources:
            return [parse_source(s) for s in self.sources]
        return [Source(self.data, self.labels, self.detect, self.face)] if self.data else []

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        from agegender.io.outputs import atomic_write

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        atomic_write(path, lambda f: f.write(text.encode()))
