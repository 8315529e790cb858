"""Losses for the two heads. Targets may be NaN where a label is unknown: those items are masked out."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from agegender.data.records import AGE_BUCKETS

AGE_LOSSES = ("mse", "l1", "smooth_l1", "dldl")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    if not mask.any():
        return values.sum() * 0.0  # keeps the graph (and DDP) happy when a batch has no such label
    if weights is not None:
        values = values * weights
    return values[mask].mean()


def age_density(ages: np.ndarray, n_ages: int = 121, sigma: float = 2.0) -> np.ndarray:
    """The share of ``ages`` at each whole year ``0..n_ages-1``, smoothed by a Gaussian of ``sigma`` years
    (label-distribution smoothing, Yang et al. 2021) and floored at a thousandth of its peak (a year nobody has
    keeps a finite logarithm); sums to 1.

    >>> d = age_density(np.array([1.0, 1, 1, 3]), n_ages=5, sigma=0.01)
    >>> [round(float(x), 3) for x in d[[1, 3]]]
    [0.748, 0.249]
    """
    ages = np.asarray(ages, float)
    ages = ages[~np.isnan(ages)]
    if ages.size == 0:
        return np.full(n_ages, 1.0 / n_ages)
    idx = np.clip(np.rint(ages), 0, n_ages - 1).astype(int)
    hist = np.bincount(idx, minlength=n_ages).astype(float)
    grid = np.arange(n_ages)
    density = np.exp(-((grid[:, None] - grid[None, :]) ** 2) / (2 * sigma**2)) @ hist
    density = np.maximum(density, 1e-3 * density.max())
    return density / density.sum()


def balanced_age_prior(n_ages: int) -> np.ndarray:
    """The age distribution in which every age group (:data:`agegender.data.records.AGE_BUCKETS`) is equally
    common, uniform within each group: what "balanced MAE" scores against. Sums to 1.

    >>> p = balanced_age_prior(101)
    >>> round(float(p[0:3].sum()), 4), round(float(p[70:].sum()), 4), round(float(p[1] / p[25]), 3)
    (0.1111, 0.1111, 3.333)
    """
    groups = [(lo, min(hi, n_ages - 1)) for lo, hi in AGE_BUCKETS if lo < n_ages]
    prior = np.zeros(n_ages)
    for lo, hi in groups:
        prior[lo : hi + 1] = 1.0 / (len(groups) * (hi - lo + 1))
    return prior / prior.sum()


def prior_logit_shift(train_ages: np.ndarray, n_ages: int, tau: float) -> np.ndarray:
    """``tau * log(training prior / balanced prior)`` per age bin ``[n_ages]``: added to the age logits while
    training (balanced softmax), it makes the network's own logits answer as if every age group were equally
    common; subtracted from a trained network's logits (logit adjustment, Menon et al. 2021) it does the same after
    the fact. ``tau`` 0 = no change, 1 = the whole correction.

    >>> shift = prior_logit_shift(np.array([25.0] * 99 + [75.0]), 101, 1.0)
    >>> bool(shift[25] > 0 > shift[75])
    True
    """
    return tau * (np.log(age_density(train_ages, n_ages)) - np.log(balanced_age_prior(n_ages)))


def age_balance_weights(ages: np.ndarray, power: float, n_ages: int = 121, sigma: float = 2.0) -> np.ndarray:
    """Per-year loss weights ``[n_ages]`` against age imbalance: ``density(age) ** -power``, where the density is
    the histogram of ``ages`` smoothed by a Gaussian of ``sigma`` years (label-distribution smoothing, Yang et
    al. 2021), scaled so that the weights average 1 over ``ages``. ``power`` 0 = all ones, 0.5 = square-root
    inverse frequency, 1 = inverse frequency.

    >>> w = age_balance_weights(np.array([1.0, 1, 1, 3]), power=1.0, n_ages=5, sigma=0.01)
    >>> [round(float(x), 3) for x in w[[1, 3]]], round(float((w[[1, 1, 1, 3]]).mean()), 3)
    ([0.667, 2.0], 1.0)
    """
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    ages = np.asarray(ages, float)
    ages = ages[~np.isnan(ages)]
    if ages.size == 0:
        return np.ones(n_ages)
    w = age_density(ages, n_ages, sigma) ** -power
    return w / w[np.clip(np.rint(ages), 0, n_ages - 1).astype(int)].mean()


def age_loss(pred_norm: torch.Tensor, age: torch.Tensor, mean: float, std: float, kind: str = "mse",
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Loss between the normalised prediction ``[B]`` and ages in years ``[B]`` (NaN = unknown).

    >>> age_loss(torch.tensor([0.0, 1.0]), torch.tensor([10.0, 10.0]), mean=10.0, std=2.0, kind="l1")
    tensor(0.5000)
    """
    if kind not in ("mse", "l1", "smooth_l1"):
        raise ValueError(f"regression age loss must be mse, l1 or smooth_l1, got {kind!r}")
    mask = ~torch.isnan(age)
    target = torch.where(mask, (age - mean) / std, torch.zeros_like(age))
    fn = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}[kind]
    return _masked_mean(fn(pred_norm, target, reduction="none"), mask, weights)


def gaussian_label_distribution(age: torch.Tensor, n_bins: int, sigma: float = 2.0) -> torch.Tensor:
    """``[B]`` ages -> ``[B, n_bins]`` discretised Gaussians centred on each age (rows sum to 1).

    >>> gaussian_label_distribution(torch.tensor([1.0]), 3, sigma=1.0).round(decimals=4)
    tensor([[0.2741, 0.4519, 0.2741]])
    """
    bins = torch.arange(n_bins, dtype=torch.float32, device=age.device)
    logits = -((bins - age.clamp(0, n_bins - 1).unsqueeze(-1)) ** 2) / (2 * sigma**2)
    return torch.softmax(logits, dim=-1)


def dldl_loss(logits: torch.Tensor, age: torch.Tensor, std: float, sigma: float = 2.0,
              l1_weight: float = 1.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Label-distribution learning (DLDL-v2): KL(label distribution || softmax(logits)) plus the L1 error
    of the expectation (in units of ``std`` years). ``logits``: ``[B, K]``; ``age``: ``[B]`` (NaN = unknown).
    """
    mask = ~torch.isnan(age)
    a = torch.where(mask, age, torch.zeros_like(age))
    target = gaussian_label_distribution(a, logits.shape[-1], sigma)
    logp = torch.log_softmax(logits, dim=-1)
    kl = (target * (torch.log(target.clamp_min(1e-12)) - logp)).sum(-1)
    expected = (logp.exp() * torch.arange(logits.shape[-1], device=logits.device)).sum(-1)
    return _masked_mean(kl + l1_weight * (expected - a).abs() / std, mask, weights)


def gender_loss(logit: torch.Tensor, gender: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits ``[B]`` against 0 = male / 1 = female (NaN = unknown)."""
    mask = ~torch.isnan(gender)
    target = torch.where(mask, gender, torch.zeros_like(gender))
    return _masked_mean(F.binary_cross_entropy_with_logits(logit, target, reduction="none"), mask)


class MultiTaskLoss(torch.nn.Module):
    """``age_weight * age_loss + gender_weight * gender_loss``; returns the total and each part.

    ``age_balance``: optional per-year weights ``[K]`` (see :func:`age_balance_weights`); each image's age loss
    is multiplied by the weight of its (rounded) age. ``age_logit_shift``: optional ``[max_age + 1]`` added to the
    dldl head's logits before the loss (balanced softmax, see :func:`prior_logit_shift`).
    """

    def __init__(self, age_mean: float, age_std: float, age_kind: str = "mse", age_weight: float = 1.0,
                 gender_weight: float = 1.0, age_balance: torch.Tensor | None = None,
                 age_logit_shift: torch.Tensor | None = None) -> None:
        super().__init__()
        if age_kind not in AGE_LOSSES:
            raise ValueError(f"age loss must be one of {AGE_LOSSES}, got {age_kind!r}")
        if age_weight < 0 or gender_weight < 0:
            raise ValueError("loss weights must be >= 0")
        self.age_mean, self.age_std, self.age_kind = age_mean, age_std, age_kind
        self.age_weight, self.gender_weight = age_weight, gender_weight
        if age_logit_shift is not None and age_kind != "dldl":
            raise ValueError("a prior logit shift (balanced softmax) needs the dldl age loss")
        self.register_buffer("age_balance", None if age_balance is None else torch.as_tensor(age_balance).float())
        self.register_buffer("age_logit_shift", None if age_logit_shift is None
                             else torch.as_tensor(age_logit_shift).float())

    def _sample_weights(self, age: torch.Tensor) -> torch.Tensor | None:
        if self.age_balance is None:
            return None
        idx = torch.nan_to_num(age, nan=0.0).round().clamp(0, len(self.age_balance) - 1).long()
        return self.age_balance.to(age.device)[idx]

    def forward(self, out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.age_kind == "dldl":
            if "age_logits" not in out:
                raise ValueError("the dldl age loss needs a model with age_head='dldl'")
            logits = out["age_logits"].float()
            if self.age_logit_shift is not None:
                logits = logits + self.age_logit_shift.to(logits.device)
            la = dldl_loss(logits, targets["age"], self.age_std, weights=self._sample_weights(targets["age"]))
        else:
            if "age_norm" not in out:
                raise ValueError(f"the {self.age_kind} age loss needs a model with age_head='regression'")
            la = age_loss(out["age_norm"].float(), targets["age"], self.age_mean, self.age_std, self.age_kind,
                          self._sample_weights(targets["age"]))
        lg = gender_loss(out["gender_logit"].float(), targets["gender"])
        return {"loss": self.age_weight * la + self.gender_weight * lg, "age_loss": la, "gender_loss": lg}


def distillation_loss(out: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], std: float) -> torch.Tensor:
    """How far the student's outputs are from :func:`agegender.training.engine.teacher_targets`: KL(teacher || student)
    over the age bins plus the L1 gap of the expected ages in units of ``std`` (dldl), or the squared gap of the
    normalised ages (regression); plus binary cross-entropy against the teacher's p_female. A student equal to its
    teacher scores the teacher's own entropy, which has no gradient.

    >>> t = {"gender_logit": torch.zeros(1), "age_norm": torch.tensor([0.5])}
    >>> round(float(distillation_loss({"gender_logit": torch.zeros(1), "age_norm": torch.tensor([1.5])}, t, 10.0)), 4)
    1.6931
    """
    gender = F.binary_cross_entropy_with_logits(out["gender_logit"].float(), torch.sigmoid(teacher["gender_logit"]))
    if "age_prob" in teacher:
        if "age_logits" not in out:
            raise ValueError("a dldl teacher needs a student with age_head='dldl'")
        logp = torch.log_softmax(out["age_logits"].float(), dim=-1)
        q = teacher["age_prob"]
        kl = (q * (torch.log(q.clamp_min(1e-12)) - logp)).sum(-1)
        bins = torch.arange(q.shape[-1], device=q.device, dtype=q.dtype)
        gap = ((logp.exp() * bins).sum(-1) - (q * bins).sum(-1)).abs() / std
        return (kl + gap).mean() + gender
    if "age_norm" not in out:
        raise ValueError("a regression teacher needs a student with age_head='regression'")
    return F.mse_loss(out["age_norm"].float(), teacher["age_norm"]) + gender


class DistillLoss(torch.nn.Module):
    """``(1 - weight) * base(out, targets) + weight * distillation_loss(out, teacher)``; the parts are returned
    as ``base``'s plus ``"distill_loss"``."""

    def __init__(self, base: MultiTaskLoss, weight: float) -> None:
        super().__init__()
        if not 0 <= weight <= 1:
            raise ValueError(f"distillation weight must be in [0, 1], got {weight}")
        self.base, self.weight = base, weight

    def forward(self, out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        parts = self.base(out, targets)
        kd = distillation_loss(out, teacher, self.base.age_std)
        return parts | {"loss": (1 - self.weight) * parts["loss"] + self.weight * kd, "distill_loss": kd}
