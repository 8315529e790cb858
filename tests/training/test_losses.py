"""Losses, hand-computed, with NaN masking, weighting and the multi-task combination."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")

import torch

from agegender.data.records import AGE_BUCKETS
from agegender.training.losses import (
    MultiTaskLoss,
    age_balance_weights,
    age_density,
    age_loss,
    balanced_age_prior,
    dldl_loss,
    gender_loss,
    prior_logit_shift,
)

NAN = float("nan")


def _bce(logit: float, y: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


# --------------------------------------------------------------------------- age_loss

# pred_norm [0.5, 1, -1], ages [10, 14, 4] with mean 10, std 2 -> targets [0, 2, -3] -> errors [0.5, -1, 2]
PRED = [0.5, 1.0, -1.0]
AGES = [10.0, 14.0, 4.0]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("mse", (0.25 + 1 + 4) / 3),
        ("l1", (0.5 + 1 + 2) / 3),
        ("smooth_l1", (0.5 * 0.25 + (1 - 0.5) + (2 - 0.5)) / 3),  # beta 1: 0.5 x^2 below 1, |x| - 0.5 above
    ],
)
def test_age_loss_hand_computed(kind, expected):
    loss = age_loss(torch.tensor(PRED), torch.tensor(AGES), mean=10.0, std=2.0, kind=kind)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["mse", "l1", "smooth_l1"])
def test_age_loss_nan_targets_masked(kind):
    pred = torch.tensor([0.5, 3.0, 1.0, -1.0, 7.0], requires_grad=True)
    ages = torch.tensor([10.0, NAN, 14.0, 4.0, NAN])
    loss = age_loss(pred, ages, mean=10.0, std=2.0, kind=kind)
    expected = age_loss(torch.tensor(PRED), torch.tensor(AGES), mean=10.0, std=2.0, kind=kind)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.all(torch.isfinite(pred.grad))
    assert pred.grad[1].item() == 0.0
    assert pred.grad[4].item() == 0.0
    assert pred.grad[0].item() != 0.0


def test_age_loss_all_nan_is_zero_with_grad():
    pred = torch.tensor([0.3, -0.2], requires_grad=True)
    loss = age_loss(pred, torch.tensor([NAN, NAN]), mean=30.0, std=10.0)
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros(2))


def test_age_loss_unknown_kind():
    with pytest.raises(ValueError, match="huber"):
        age_loss(torch.zeros(2), torch.zeros(2), 0.0, 1.0, kind="huber")


# --------------------------------------------------------------------------- gender_loss


def test_gender_loss_hand_computed():
    logits, labels = [0.0, 2.0, -1.0, 3.0], [1.0, 0.0, 0.0, 1.0]
    expected = sum(_bce(x, y) for x, y in zip(logits, labels, strict=True)) / 4
    loss = gender_loss(torch.tensor(logits), torch.tensor(labels))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx((math.log(2) + math.log(1 + math.e**2) + math.log(1 + math.e**-1)
                                         + math.log(1 + math.e**-3)) / 4, rel=1e-6)


def test_gender_loss_nan_masked_and_all_nan():
    logit = torch.tensor([0.0, 5.0, 2.0], requires_grad=True)
    loss = gender_loss(logit, torch.tensor([1.0, NAN, 0.0]))
    assert loss.item() == pytest.approx((_bce(0.0, 1.0) + _bce(2.0, 0.0)) / 2, rel=1e-6)
    loss.backward()
    assert logit.grad[1].item() == 0.0
    none = gender_loss(torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([NAN, NAN]))
    assert none.item() == 0.0
    assert none.grad_fn is not None


# --------------------------------------------------------------------------- MultiTaskLoss


def test_multitask_combines_weighted_parts():
    out = {"age_norm": torch.tensor(PRED), "gender_logit": torch.tensor([0.0, 2.0, -1.0])}
    targets = {"age": torch.tensor(AGES), "gender": torch.tensor([1.0, 0.0, 0.0])}
    crit = MultiTaskLoss(age_mean=10.0, age_std=2.0, age_kind="l1", age_weight=2.0, gender_weight=0.5)
    parts = crit(out, targets)
    la = (0.5 + 1 + 2) / 3
    lg = (_bce(0.0, 1.0) + _bce(2.0, 0.0) + _bce(-1.0, 0.0)) / 3
    assert parts["age_loss"].item() == pytest.approx(la, rel=1e-6)
    assert parts["gender_loss"].item() == pytest.approx(lg, rel=1e-6)
    assert parts["loss"].item() == pytest.approx(2.0 * la + 0.5 * lg, rel=1e-6)


def test_multitask_zero_weight_drops_part():
    out = {"age_norm": torch.tensor(PRED), "gender_logit": torch.tensor([0.0, 2.0, -1.0])}
    targets = {"age": torch.tensor(AGES), "gender": torch.tensor([1.0, 0.0, 0.0])}
    parts = MultiTaskLoss(10.0, 2.0, gender_weight=0.0)(out, targets)
    assert parts["loss"].item() == pytest.approx(parts["age_loss"].item(), rel=1e-6)
    assert parts["gender_loss"].item() > 0


def test_multitask_half_precision_inputs():
    out = {"age_norm": torch.tensor(PRED, dtype=torch.float16), "gender_logit": torch.zeros(3, dtype=torch.float16)}
    targets = {"age": torch.tensor(AGES), "gender": torch.tensor([1.0, 0.0, 0.0])}
    parts = MultiTaskLoss(10.0, 2.0)(out, targets)
    assert parts["loss"].dtype == torch.float32
    assert parts["gender_loss"].item() == pytest.approx(math.log(2), rel=1e-5)


def test_multitask_age_balance_weights_each_image_by_its_age():
    out = {"age_norm": torch.tensor(PRED), "gender_logit": torch.zeros(3)}
    targets = {"age": torch.tensor(AGES), "gender": torch.tensor([1.0, 0.0, 0.0])}
    table = torch.ones(121)
    table[round(AGES[2])] = 4.0  # the third image's age counts four times
    parts = MultiTaskLoss(10.0, 2.0, "l1", age_balance=table)(out, targets)
    assert parts["age_loss"].item() == pytest.approx((0.5 + 1 + 4 * 2) / 3, rel=1e-6)
    # an unknown age has no weight to look up and stays masked
    targets["age"] = torch.tensor([AGES[0], NAN, AGES[2]])
    parts = MultiTaskLoss(10.0, 2.0, "l1", age_balance=table)(out, targets)
    assert parts["age_loss"].item() == pytest.approx((0.5 + 4 * 2) / 2, rel=1e-6)


def test_age_balance_weights_favour_rare_ages():
    rng = np.random.default_rng(0)
    ages = np.concatenate([rng.normal(26, 4, 900), rng.uniform(60, 90, 100)])
    w = age_balance_weights(ages, power=0.5)
    idx = np.clip(np.rint(ages), 0, 120).astype(int)
    assert w[idx].mean() == pytest.approx(1.0)
    assert w[80] > 2 * w[26]
    # power 0 is no re-weighting; the square root sits between none and full inverse frequency
    np.testing.assert_allclose(age_balance_weights(ages, power=0.0), np.ones(121))
    assert 1 < w[80] / w[26] < age_balance_weights(ages, power=1.0)[80] / age_balance_weights(ages, power=1.0)[26]
    with pytest.raises(ValueError, match="power must be >= 0, got -1"):
        age_balance_weights(ages, power=-1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"age_kind": "huber"}, r"age loss must be one of \(.*'dldl'\), got 'huber'"),
        ({"age_weight": -1.0}, "loss weights must be >= 0"),
        ({"gender_weight": -0.1}, "loss weights must be >= 0"),
    ],
)
def test_multitask_invalid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiTaskLoss(age_mean=30.0, age_std=10.0, **kwargs)


# --------------------------------------------------------------------------- metrics


def test_balanced_prior_gives_every_age_group_the_same_share():
    prior = balanced_age_prior(101)
    assert prior.sum() == pytest.approx(1.0)
    shares = [prior[lo : min(hi, 100) + 1].sum() for lo, hi in AGE_BUCKETS]
    assert shares == pytest.approx([1 / 9] * 9)
    assert prior[0] == pytest.approx(1 / 27) and prior[75] == pytest.approx(1 / (9 * 31))


def test_prior_logit_shift_by_hand():
    # Ages 25 and 75 only: the training density at 25 and 75 is half each (before smoothing and the floor).
    ages = np.array([25.0] * 50 + [75.0] * 50)
    density = age_density(ages, 101)
    shift = prior_logit_shift(ages, 101, 0.5)
    expected = 0.5 * (np.log(density[25]) - np.log(1 / 90))  # 20-29: a ninth spread over 10 years
    assert shift[25] == pytest.approx(expected)
    assert prior_logit_shift(ages, 101, 0.0) == pytest.approx(np.zeros(101))


def test_balanced_softmax_is_the_dldl_loss_on_shifted_logits():
    logits = torch.randn(4, 101)
    ages = torch.tensor([3.0, 25.0, 70.0, NAN])
    shift = torch.linspace(-1, 1, 101)
    plain = MultiTaskLoss(30.0, 15.0, "dldl")
    balanced = MultiTaskLoss(30.0, 15.0, "dldl", age_logit_shift=shift)
    out, targets = {"age_logits": logits, "gender_logit": torch.zeros(4)}, {"age": ages, "gender": torch.zeros(4)}
    assert balanced(out, targets)["age_loss"] == pytest.approx(float(dldl_loss(logits + shift, ages, 15.0)))
    assert balanced(out, targets)["age_loss"] != pytest.approx(float(plain(out, targets)["age_loss"]))
    with pytest.raises(ValueError, match="needs the dldl age loss"):
        MultiTaskLoss(30.0, 15.0, "mse", age_logit_shift=shift)
