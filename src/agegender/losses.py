"""Losses for the two heads. Targets may be NaN where a label is unknown: those items are masked out."""

from __future__ import annotations

import torch
import torch.nn.functional as F

AGE_LOSSES = ("mse", "l1", "smooth_l1")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if not mask.any():
        return values.sum() * 0.0  # keeps the graph (and DDP) happy when a batch has no such label
    return values[mask].mean()


def age_loss(pred_norm: torch.Tensor, age: torch.Tensor, mean: float, std: float, kind: str = "mse") -> torch.Tensor:
    """Loss between the normalised prediction ``[B]`` and ages in years ``[B]`` (NaN = unknown).

    >>> age_loss(torch.tensor([0.0, 1.0]), torch.tensor([10.0, 10.0]), mean=10.0, std=2.0, kind="l1")
    tensor(0.5000)
    """
    if kind not in AGE_LOSSES:
        raise ValueError(f"age loss must be one of {AGE_LOSSES}, got {kind!r}")
    mask = ~torch.isnan(age)
    target = torch.where(mask, (age - mean) / std, torch.zeros_like(age))
    fn = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}[kind]
    return _masked_mean(fn(pred_norm, target, reduction="none"), mask)


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
        la = age_loss(out["age_norm"].float(), targets["age"], self.age_mean, self.age_std, self.age_kind)
        lg = gender_loss(out["gender_logit"].float(), targets["gender"])
        return {"loss": self.age_weight * la + self.gender_weight * lg, "age_loss": la, "gender_loss": lg}
