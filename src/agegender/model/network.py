"""The multi-task network: a torchvision backbone with an age head and a gender head.

``forward`` returns named outputs, never positions::

    {"age": years [B], "age_sigma": spread of the age estimate [B], "gender_logit": [B],
     "age_norm": normalised age [B]         (regression head)
     "age_logits": one logit per year [B, max_age + 1]  (label-distribution head)}
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from agegender.errors import PretrainedWeightsError
from agegender.model.config import AGE_HEADS, BACKBONES, ModelConfig

log = logging.getLogger(__name__)

__all__ = ["AGE_HEADS", "BACKBONES", "AgeGenderNet", "ModelConfig", "PretrainedWeightsError", "apply_age_map",
           "create_backbone", "map_age"]


def _hub_checkpoint_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _check_hash_prefix(path: Path) -> None:
    """torchvision file names embed a sha256 prefix (``name-<prefix>.pth``); torch.hub checks it only at
    download time, so a cached file that was damaged or replaced later would load silently."""
    m = re.search(r"-([0-9a-f]{6,})\.pth$", path.name)
    if m is None:
        return
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if not h.hexdigest().startswith(m[1]):
        raise PretrainedWeightsError(
            f"cached weights {path} fail their checksum (sha256 {h.hexdigest()[:16]}..., expected prefix {m[1]}). "
            f"The file is damaged or not the official one: delete it and run again online to download it afresh, "
            f"or put the genuine file there."
        )


def imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights (IMAGENET1K_V1, which every supported backbone has) for ``name``:
    the cached file after a checksum check, else a download."""
    weights = torchvision.models.get_model_weights(name)["IMAGENET1K_V1"]
    cached = _hub_checkpoint_path(weights.url)
    if cached.exists():
        _check_hash_prefix(cached)
        log.info("loading ImageNet weights from %s", cached)
        return torch.load(cached, map_location="cpu", weights_only=True)
    log.info("downloading ImageNet weights %s to %s", weights.url, cached.parent)
    try:
        return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", check_hash=True, progress=True)
    except Exception as e:  # noqa: BLE001 - any network failure gets the same advice
        raise PretrainedWeightsError(
            f"could not download ImageNet weights for {name} from {weights.url} ({e}). Offline, place the file at "
            f"{cached} or use --pretrained none / --pretrained PATH."
        ) from e


def create_backbone(name: str, pretrained: str | None = None) -> tuple[nn.Module, int]:
    """A torchvision classifier with its classification layer removed.

    ``pretrained``: ``None``/``"none"`` (random init), ``"imagenet"``, or a path to a state dict of the
    torchvision model. Returns ``(module, num_features)``; the module maps ``[B, 3, H, W]`` to ``[B, F]``.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    net = torchvision.models.get_model(name, weights=None)
    if pretrained not in (None, "none"):
        if pretrained == "imagenet":
            state = imagenet_state_dict(name)
        else:
            path = Path(pretrained)
            if not path.is_file():
                raise PretrainedWeightsError(f"--pretrained {pretrained}: no such file (use none, imagenet or a path)")
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise PretrainedWeightsError(f"weights {pretrained} do not fit {name}: {str(e)[:500]}") from e
    if name.startswith("resnet"):
        num_features = net.fc.in_features
        net.fc = nn.Identity()
    else:
        # mobilenet_v2 / efficientnet_b0: Dropout + Linear; mobilenet_v3_large: Linear-Hardswish-Dropout-Linear.
        # The pooled feature vector is what enters the classifier.
        first = next(m for m in net.classifier.modules() if isinstance(m, nn.Linear))
        num_features = first.in_features
        net.classifier = nn.Identity()
    return net, num_features


def map_age(age: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear monotone map through the knots ``(x, y)``, slope 1 beyond the end knots.

    ``age`` any shape; knots ``[K]`` with ``x`` increasing. Written with clamps instead of a search so that it
    exports to ONNX as plain Min/Max arithmetic.

    >>> map_age(torch.tensor([-1.0, 0.0, 5.0, 10.0, 30.0]), torch.tensor([0.0, 10.0, 20.0]),
    ...         torch.tensor([0.0, 20.0, 25.0]))
    tensor([-1.,  0., 10., 20., 35.])
    """
    x0, x1 = knots_x[:-1], knots_x[1:]
    slope = (knots_y[1:] - knots_y[:-1]) / (x1 - x0)
    a = age.unsqueeze(-1)
    inside = torch.minimum(torch.maximum(a, x0), x1) - x0  # how far along each segment, [..., K-1]
    return knots_y[0] + (age - knots_x[0]) + ((slope - 1) * inside).sum(-1)


def apply_age_map(age: torch.Tensor, sigma: torch.Tensor, knots_x: torch.Tensor,
                  knots_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mapped age, mapped spread)``: the spread goes through the same map (half the distance between the
    images of ``age ± sigma``), so ages the map stretches get wider spreads.

    >>> apply_age_map(torch.tensor([5.0]), torch.tensor([1.0]), torch.tensor([0.0, 10.0]), torch.tensor([0.0, 20.0]))
    (tensor([10.]), tensor([2.]))
    """
    hi, lo = map_age(age + sigma, knots_x, knots_y), map_age(age - sigma, knots_x, knots_y)
    return map_age(age, knots_x, knots_y), ((hi - lo) / 2).clamp_min(1e-6)


def _head(in_features: int, hidden: int, dropout: float, out: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, out)
    )


class AgeGenderNet(nn.Module):
    """Backbone + age head + gender head (one logit, p_female = sigmoid).

    >>> net = AgeGenderNet(ModelConfig(backbone="resnet18", image_size=32)).eval()
    >>> out = net(torch.zeros(2, 3, 32, 32))
    >>> sorted(out), tuple(out["age"].shape)
    (['age', 'age_norm', 'age_sigma', 'gender_logit'], (2,))
    """

    def __init__(self, config: ModelConfig, pretrained: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone, nf = create_backbone(config.backbone, pretrained)
        n_age = config.max_age + 1 if config.age_head == "dldl" else 1
        self.age_head = _head(nf, config.head_hidden, config.dropout, n_age)
        self.gender_head = _head(nf, config.head_hidden, config.dropout)
        self.register_buffer("age_mean", torch.tensor(float(config.age_mean)), persistent=False)
        self.register_buffer("age_std", torch.tensor(float(config.age_std)), persistent=False)
        self.register_buffer("ages", torch.arange(n_age, dtype=torch.float32), persistent=False)
        amap = config.age_map or {"x": [0.0, 1.0], "y": [0.0, 1.0]}
        self.register_buffer("age_map_x", torch.tensor(amap["x"], dtype=torch.float32), persistent=False)
        self.register_buffer("age_map_y", torch.tensor(amap["y"], dtype=torch.float32), persistent=False)

    def _mapped(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.config.age_map is None:
            return out
        age, sigma = apply_age_map(out["age"], out["age_sigma"], self.age_map_x, self.age_map_y)
        return out | {"age": age, "age_sigma": sigma}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: ``[B, 3, H, W]`` normalised images -> dict of named outputs (see the module docstring)."""
        feats = self.backbone(x)
        gender_logit = self.gender_head(feats).squeeze(-1)
        if self.config.age_head == "dldl":
            logits = self.age_head(feats).float()
            p = torch.softmax(logits, dim=-1)
            age = (p * self.ages).sum(-1)
            var = (p * (self.ages - age.unsqueeze(-1)) ** 2).sum(-1)
            return self._mapped({"age": age, "age_sigma": var.clamp_min(1e-6).sqrt(), "age_logits": logits,
                                 "gender_logit": gender_logit})
        age_norm = self.age_head(feats).squeeze(-1)
        return self._mapped({"age": age_norm * self.age_std + self.age_mean, "age_sigma": torch.ones_like(age_norm),
                             "age_norm": age_norm, "gender_logit": gender_logit})


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """The device ``name`` (auto: CUDA, else MPS, else the CPU); ValueError, with what to use instead, for a
    name torch does not know or a device this machine does not have."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA GPU is available here; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"device {name!r}: MPS is not available here; use --device cpu (or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device


class TorchRunner:
    """A torch network called the way :class:`agegender.model.onnx.OnnxModel` is: a float32 numpy batch
    ``[N, 3, S, S]`` in, ``{"age", "age_sigma", "gender_logit"}`` numpy ``[N]`` out (on ``device``, in eval mode).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.config = model.config

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self.model(torch.as_tensor(np.asarray(batch, dtype=np.float32)).to(self.device))
        return {k: out[k].float().cpu().numpy() for k in ("age", "age_sigma", "gender_logit")}
