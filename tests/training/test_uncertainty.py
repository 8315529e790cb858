"""Label-distribution age head, weight averaging, age intervals and gender calibration."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")

import torch

from agegender.cli import main
from agegender.evaluation.metrics import (
    expected_calibration_error,
    fit_age_map,
    fit_interval_scale,
    interval_coverage,
)
from agegender.inference.predictor import Predictor
from agegender.inference.results import age_interval
from agegender.model.checkpoint import load_checkpoint
from agegender.model.config import ModelConfig
from agegender.model.network import AgeGenderNet, map_age
from agegender.training.losses import MultiTaskLoss, dldl_loss, gaussian_label_distribution


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
    with pytest.raises(ValueError, match=r"coverage must be in \(0, 1\), got 1\.5"):
        fit_interval_scale(pred, sigma, true, 1.5)


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    # 10 predictions at p=0.8 of which 8 are right: confidence 0.8, accuracy 0.8
    p = np.full(10, 0.8)
    y = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(p, y) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(10, 0.99), y) == pytest.approx(0.19)


def test_dldl_ema_tta_run_calibrates_and_predicts_intervals(face_dir: Path, tmp_path: Path,
                                                            tiny_train_argv) -> None:
    run = tmp_path / "run"
    rc = main(tiny_train_argv(face_dir, run, "--epochs", "2", "--age-loss", "dldl", "--ema", "0.9", "--flip-tta",
                              "--backbone", "mobilenet_v2"))
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


def _bucket_bias(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    buckets = np.digitize(true, [10, 20, 30, 40, 50, 60, 70])
    return np.array([np.mean(pred[buckets == b] - true[buckets == b]) for b in range(8)])


def test_age_map_undoes_the_pull_to_the_typical_age() -> None:
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 90, 6000)
    # A shrunk estimator like a trained one: halfway-ish to 35, plus noise.
    pred = 35 + 0.7 * (true - 35) + rng.normal(0, 3, true.size)
    before = _bucket_bias(pred[3000:], true[3000:])
    assert before[0] > 8 and before[-1] < -8  # children too old, the elderly too young
    knots = fit_age_map(pred[:3000], true[:3000])
    mapped = map_age(torch.from_numpy(pred[3000:]), torch.tensor(knots["x"]), torch.tensor(knots["y"])).numpy()
    after = _bucket_bias(mapped, true[3000:])
    assert np.abs(after).max() < 2.0, after
    # ...at some cost in MAE here, where the noise is the same for all ages
    assert np.abs(mapped - true[3000:]).mean() < np.abs(pred[3000:] - true[3000:]).mean() + 1.0


def test_fit_age_map_handles_ties_and_refuses_bad_input() -> None:
    knots = fit_age_map(np.array([30.0, 30, 30, 50]), np.array([10.0, 20, 40, 80]), knots=5)
    assert knots["x"] == sorted(set(knots["x"])) and len(knots["x"]) >= 2
    ModelConfig(age_map=knots)  # valid for the model config
    with pytest.raises(ValueError, match="two different"):
        fit_age_map(np.full(4, 30.0), np.arange(4.0))
    with pytest.raises(ValueError, match="same length"):
        fit_age_map(np.arange(3.0), np.arange(4.0))
    with pytest.raises(ValueError, match="increasing"):
        ModelConfig(age_map={"x": [1.0, 1.0], "y": [0.0, 1.0]})
    with pytest.raises(ValueError, match="same length"):
        ModelConfig(age_map={"x": [1.0, 2.0], "y": [0.0]})


def test_model_applies_its_age_map_to_age_and_spread() -> None:
    torch.manual_seed(0)
    plain = AgeGenderNet(ModelConfig(backbone="resnet18", image_size=32, age_head="dldl")).eval()
    amap = {"x": [0.0, 40.0, 60.0], "y": [0.0, 60.0, 70.0]}
    mapped = AgeGenderNet(ModelConfig(backbone="resnet18", image_size=32, age_head="dldl", age_map=amap)).eval()
    mapped.load_state_dict(plain.state_dict())  # the map is config, not weights: old checkpoints still load
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b = plain(x), mapped(x)
    raw = a["age"]
    # by hand: slope 1.5 up to 40, 0.5 from 40 to 60, 1 beyond
    want = torch.where(raw <= 40, 1.5 * raw, torch.where(raw <= 60, 60 + 0.5 * (raw - 40), 70 + (raw - 60)))
    torch.testing.assert_close(b["age"], want)
    assert torch.equal(a["gender_logit"], b["gender_logit"])
    assert torch.isfinite(b["age_sigma"]).all() and (b["age_sigma"] > 0).all()


@pytest.mark.slow
def test_training_with_age_map_stores_it_and_calibrates_around_it(face_dir: Path, tmp_path: Path,
                                                                  tiny_train_argv) -> None:
    run = tmp_path / "run"
    rc = main(tiny_train_argv(face_dir, run, "--split", "0.5,0.5,0", "--age-loss", "dldl", "--backbone", "resnet18",
                              "--age-map", "--age-balance", "0.5"))
    assert rc == 0
    best = load_checkpoint(run / "best.pt")
    assert best["training"]["config"]["age_balance"] == 0.5
    amap = best["model_config"]["age_map"]
    assert amap is not None and len(amap["x"]) >= 2
    cal = best["calibration"]
    assert cal["age_map"]["n"] == cal["age_interval"]["n"] > 0
    assert cal["age_interval"]["val_coverage"] >= 0.8
    # a fine-tune starts without the map (it belonged to the old network) and fits none unless asked; it keeps
    # the network but may move to another input size
    tuned = tmp_path / "tuned"
    assert main(["train", "--data", str(face_dir), "--out", str(tuned), "--init", str(run / "best.pt"),
                 "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--split", "0.5,0.5,0",
                 "--age-loss", "dldl", "--image-size", "40", "-q"]) == 0
    tuned_cfg = load_checkpoint(tuned / "best.pt")["model_config"]
    assert tuned_cfg["age_map"] is None and tuned_cfg["image_size"] == 40
    assert tuned_cfg["backbone"] == "resnet18" and tuned_cfg["crop_pct"] == best["model_config"]["crop_pct"]
