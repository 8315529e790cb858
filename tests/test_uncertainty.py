"""Label-distribution age head, weight averaging, age intervals and gender calibration."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from agegender.checkpoint import load_checkpoint
from agegender.cli import main
from agegender.losses import MultiTaskLoss, dldl_loss, gaussian_label_distribution
from agegender.metrics import age_interval, expected_calibration_error, fit_interval_scale, interval_coverage
from agegender.predictor import Predictor


def test_gaussian_label_distribution_by_hand() -> None:
    d = gaussian_label_distribution(torch.tensor([2.0]), 5, sigma=1.0)[0]
    w = torch.tensor([math.exp(-2), math.exp(-0.5), 1.0, math.exp(-0.5), math.exp(-2)])
    torch.testing.assert_close(d, w / w.sum())
    assert d.sum().item() == pytest.approx(1.0)


def test_dldl_loss_by_hand_and_masking() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, -1.0]])
    age = torch.tensor([1.0, float("nan")])
    target = gaussian_label_distribution(torch.tensor([1.0]), 3, sigma=2.0)[0]
    logp = torch.log_softmax(logits[0], -1)
    kl = (target * (target.log() - logp)).sum()
    expected_age = (logp.exp() * torch.arange(3.0)).sum()  # uniform -> 1.0, so the L1 part is 0
    want = kl + (expected_age - 1.0).abs() / 10.0
    got = dldl_loss(logits, age, std=10.0)
    torch.testing.assert_close(got, want)


def test_dldl_needs_the_matching_head() -> None:
    loss = MultiTaskLoss(30.0, 10.0, "dldl")
    with pytest.raises(ValueError, match="age_head='dldl'"):
        loss({"age_norm": torch.zeros(2), "gender_logit": torch.zeros(2)},
             {"age": torch.ones(2), "gender": torch.ones(2)})


def test_interval_scale_hits_the_coverage_on_exchangeable_data() -> None:
    rng = np.random.default_rng(0)
    sigma = rng.uniform(1, 6, 4000)
    true = rng.uniform(0, 90, 4000)
    pred = true + rng.normal(0, sigma)  # errors proportional to the model's own spread
    s = fit_interval_scale(pred[:2000], sigma[:2000], true[:2000], 0.8)
    assert s == pytest.approx(1.2816, rel=0.08)  # the normal 80% two-sided quantile
    low, high = age_interval(pred[2000:], sigma[2000:], s)
    assert interval_coverage(low, high, true[2000:]) == pytest.approx(0.8, abs=0.03)
    assert (low >= 0).all()
    with pytest.raises(ValueError):
        fit_interval_scale(pred, sigma, true, 1.5)


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    # 10 predictions at p=0.8 of which 8 are right: confidence 0.8, accuracy 0.8
    p = np.full(10, 0.8)
    y = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(p, y) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(10, 0.99), y) == pytest.approx(0.19)


def test_dldl_ema_tta_run_calibrates_and_predicts_intervals(face_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    rc = main(["train", "--data", str(face_dir), "--out", str(run), "--pretrained", "none", "--image-size", "32",
               "--epochs", "2", "--batch-size", "8", "--num-workers", "0", "--split", "0.6,0.2,0.2",
               "--age-loss", "dldl", "--ema", "0.9", "--flip-tta", "--backbone", "mobilenet_v2", "-q"])
    assert rc == 0
    best = load_checkpoint(run / "best.pt")
    assert best["model_config"]["age_head"] == "dldl" and best["inference"]["flip_tta"] is True
    cal = best["calibration"]["age_interval"]
    assert cal["coverage"] == 0.8 and cal["scale"] > 0 and cal["val_coverage"] >= 0.8
    last = load_checkpoint(run / "last.pt")
    assert {"ema_state", "train_model_state"} <= set(last)
    # the saved model is the weight average, not the raw weights
    assert any(not torch.equal(last["model_state"][k], last["train_model_state"][k])
               for k in last["model_state"] if last["model_state"][k].is_floating_point())
    predictor = Predictor.from_checkpoint(run / "best.pt")
    assert predictor.flip_tta and predictor.interval_scale == pytest.approx(cal["scale"])
    (pred,) = predictor.predict([sorted(face_dir.glob("*.jpg"))[0]])
    assert pred.age_low <= pred.age <= pred.age_high
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(run / "best.pt"), str(face_dir), "--out", str(out), "--aligned", "-q"]) == 0
    df = pd.read_csv(out)
    assert (df["age_low"] <= df["age"]).all() and (df["age"] <= df["age_high"]).all()
