"""Losses for the two heads. Targets may be NaN where a label is unknown: those items are masked out."""

from __future__ import annotations

import torch
import torch.nn.functional as F

AGE_LOSSES = ("mse", "l1", "smooth_l1", "dldl")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if not mask.any():
        return values.sum() * 0.0  # keeps the graph (and DDP) happy when a batch has no such label
    return values[mask].mean()


def age_loss(pred_norm: torch.Tensor, age: torch.Tensor, mean: float, std: float, kind: str = "mse") -> torch.Tensor:
    """Loss between the normalised prediction ``[B]`` and ages in years ``[B]`` (NaN = unknown).

    >>> age_loss(torch.tensor([0.0, 1.0]), torch.tensor([10.0, 10.0]), mean=10.0, std=2.0, kind="l1")
    tensor(0.5000)
    """
    if kind not in ("mse", "l1", "smooth_l1"):
        raise ValueError(f"regression age loss must be mse, l1 or smooth_l1, got {kind!r}")
    mask = ~torch.isnan(age)
    target = torch.where(mask, (age - mean) / std, torch.zeros_like(age))
    fn = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}[kind]
    return _masked_mean(fn(pred_norm, target, reduction="none"), mask)


def gaussian_label_distribution(age: torch.Tensor, n_bins: int, sigma: float = 2.0) -> torch.Tensor:
    """``[B]`` ages -> ``[B, n_bins]`` discretised Gaussians centred on each age (rows sum to 1).

    >>> gaussian_label_distribution(torch.tensor([1.0]), 3, sigma=1.0).round(decimals=4)
    tensor([[0.2741, 0.4519, 0.2741]])
    """
    bins = torch.arange(n_bins, dtype=torch.float32, device=age.device)
    logits = -((bins - age.clamp(0, n_bins - 1).unsqueeze(-1)) ** 2) / (2 * sigma**2)
    return torch.softmax(logits, dim=-1)


def dldl_loss(logits: torch.Tensor, age: torch.Tensor, std: float, sigma: float = 2.0,
              l1_weight: float = 1.0) -> torch.Tensor:
    """Label-distribution learning (DLDL-v2): KL(label distribution || softmax(logits)) plus the L1 error
    of the expectation (in units of ``std`` years). ``logits``: ``[B, K]``; ``age``: ``[B]`` (NaN = unknown).
    """
    mask = ~torch.isnan(age)
    a = torch.where(mask, age, torch.zeros_like(age))
    target = gaussian_label_distribution(a, logits.shape[-1], sigma)
    logp = torch.log_softmax(logits, dim=-1)
    kl = (target * (torch.log(target.clamp_min(1e-12)) - logp)).sum(-1)
    expected = (logp.exp() * torch.arange(logits.shape[-1], device=logits.device)).sum(-1)
    return _masked_mean(kl + l1_weight * (expected - a).abs() / std, mask)


def gender_loss(logit: torch.Tensor, gender: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits ``[B]`` against 0 = male / 1 = female (NaN = unknown)."""
    mask = ~torch.isnan(gender)
    target = torch.where(mask, gender, torch.zeros_like(gender))
    return _masked_mean(F.binary_cross_entropy_with_logits(logit, target, reduction="none"), mask)


class MultiTaskLoss(torch.nn.Module):
    """``age_weight * age_loss + gender_weight * gender_loss``; returns the total and each part."""

    def __init__(self, age_mean: float, age_std: float, age_kind: str = "mse", age_weight: float = 1.0,
                 gender_weight: float = 1.0) -> None:
        super().__init__()
        if age_kind not in AGE_LOSSES:
            raise ValueError(f"age loss must be one of {AGE_LOSSES}, got {age_kind!r}")
        if age_weight < 0 or gender_weight < 0:
            raise ValueError("loss weights must be >= 0")
        self.age_mean, self.age_std, self.age_kind = age_mean, age_std, age_kind
        self.age_weight, self.gender_weight = age_weight, gender_weight

    def forward(self, out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.age_kind == "dldl":
            if "age_logits" not in out:
                raise ValueError("the dldl age loss needs a model with age_head='dldl'")
            la = dldl_loss(out["age_logits"].float(), targets["age"], self.age_std)
        else:
            if "age_norm" not in out:
                raise ValueError(f"the {self.age_kind} age loss needs a model with age_head='regression'")
            la = age_loss(out["age_norm"].float(), targets["age"], self.age_mean, self.age_std, self.age_kind)
        lg = gender_loss(out["gender_logit"].float(), targets["gender"])
        return {"loss": self.age_weight * la + self.gender_weight * lg, "age_loss": la, "gender_loss": lg}
