"""Evaluation metrics by hand: MAE, cumulative score, gender accuracy and MAE, ROC AUC, summaries, the per-group
report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from agegender.evaluation.metrics import (
    age_mae,
    age_rmse,
    cumulative_score,
    gender_accuracy,
    gender_mae,
    report,
    roc_auc,
    summarize,
)

NAN = float("nan")


def test_age_mae_rmse():
    pred, true = np.array([10.0, 20.0, 30.0]), np.array([12.0, 17.0, 30.0])
    assert age_mae(pred, true) == pytest.approx(5 / 3)
    assert age_rmse(pred, true) == pytest.approx(math.sqrt((4 + 9 + 0) / 3))


def test_cumulative_score_boundary_counts():
    pred = np.array([10.0, 10.0, 10.0, 10.0])
    true = np.array([15.0, 5.0, 15.001, 10.0])  # exactly 5 either way counts, 5.001 does not
    assert cumulative_score(pred, true) == pytest.approx(75.0)
    assert cumulative_score(pred, true, years=0.0) == pytest.approx(25.0)


def test_gender_accuracy_threshold():
    p = np.array([0.5, 0.49, 0.9, 0.1, 0.51])
    y = np.array([1, 0, 0, 0, 1])  # 0.5 counts as female
    assert gender_accuracy(p, y) == pytest.approx(4 / 5)
    assert gender_accuracy(p, 1 - y) == pytest.approx(1 / 5)


def test_gender_mae():
    assert gender_mae(np.array([0.9, 0.2, 0.0]), np.array([1, 1, 0])) == pytest.approx((0.1 + 0.8 + 0.0) / 3)


def test_roc_auc_with_tie():
    # positives {0.5, 0.8}, negatives {0.5, 0.2}: pairs 0.5/0.5 tie (1/2), the other three won -> 3.5 / 4
    score = np.array([0.5, 0.5, 0.2, 0.8])
    label = np.array([1, 0, 0, 1])
    assert roc_auc(score, label) == pytest.approx(0.875)


def test_roc_auc_perfect_and_reversed():
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == pytest.approx(0.0)


def test_roc_auc_single_class_nan():
    assert math.isnan(roc_auc(np.array([0.1, 0.9]), np.array([1, 1])))
    assert math.isnan(roc_auc(np.array([0.1, 0.9]), np.array([0, 0])))


SUMMARY_KEYS = {"n", "age_mae", "age_rmse", "age_bias", "cs5", "gender_accuracy", "gender_mae", "gender_auc",
                "balanced_age_mae", "worst_age_bias", "worst_bias_group", "age_groups_counted"}


def test_summarize_keys_and_values():
    age_pred, age_true = np.array([12.0, 20.0, 40.0, 30.0]), np.array([10.0, 26.0, 40.0, 31.0])
    p, g = np.array([0.9, 0.2, 0.6, 0.4]), np.array([1.0, 0.0, 0.0, 1.0])
    out = summarize(age_pred, age_true, p, g)
    assert set(out) == SUMMARY_KEYS
    assert out["n"] == 4
    assert out["age_mae"] == pytest.approx((2 + 6 + 0 + 1) / 4)
    assert out["age_rmse"] == pytest.approx(math.sqrt((4 + 36 + 0 + 1) / 4))
    assert out["age_bias"] == pytest.approx((2 - 6 + 0 - 1) / 4)
    assert out["cs5"] == pytest.approx(75.0)
    assert out["gender_accuracy"] == pytest.approx(0.5)
    assert out["gender_mae"] == pytest.approx((0.1 + 0.2 + 0.6 + 0.6) / 4)
    assert out["gender_auc"] == pytest.approx(0.75)  # positives {0.9, 0.4} vs negatives {0.2, 0.6}: 3 of 4


def test_summarize_nan_labels():
    age_pred, age_true = np.array([12.0, 99.0, 40.0]), np.array([10.0, NAN, 41.0])
    p, g = np.array([0.9, 0.2, 0.7]), np.array([1.0, 0.0, NAN])
    out = summarize(age_pred, age_true, p, g)
    assert out["n"] == 3
    assert out["age_mae"] == pytest.approx(1.5)
    assert out["gender_accuracy"] == pytest.approx(1.0)
    assert out["gender_auc"] == pytest.approx(1.0)


def test_summarize_all_nan_and_single_class():
    out = summarize(np.array([1.0, 2.0]), np.array([NAN, NAN]), np.array([0.9, 0.8]), np.array([1.0, 1.0]))
    assert out["n"] == 2
    assert not {"age_mae", "age_rmse", "age_bias", "cs5"} & set(out)
    assert out["gender_accuracy"] == pytest.approx(1.0)
    assert out["gender_auc"] is None  # NaN becomes None (JSON-friendly)
    only_age = summarize(np.array([1.0]), np.array([2.0]), np.array([0.5]), np.array([NAN]))
    assert set(only_age) == {"n", "age_mae", "age_rmse", "age_bias", "cs5", "balanced_age_mae", "worst_age_bias",
                             "worst_bias_group", "age_groups_counted"}


def test_report_groups():
    df = pd.DataFrame(
        {
            "age_true": [1.0, 5.0, 25.0, 27.0, 75.0, 30.0, NAN],
            "gender_true": [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0],
            "race": [0.0, 1.0, 0.0, 2.0, NAN, 4.0, 1.0],
            "age_pred": [2.0, 5.0, 20.0, 27.0, 60.0, 33.0, 50.0],
            "p_female": [0.1, 0.8, 0.3, 0.4, 0.9, 0.2, 0.6],
        }
    )
    out = report(df)
    assert out["n"] == 7
    assert out["age_mae"] == pytest.approx((1 + 0 + 5 + 0 + 15 + 3) / 6)
    groups = out["groups"]
    assert set(groups) == {"age", "gender", "race"}
    assert {k: v["n"] for k, v in groups["age"].items()} == {"0-2": 1, "3-9": 1, "20-29": 2, "30-39": 1, "70+": 1}
    assert list(groups["age"]) == ["0-2", "3-9", "20-29", "30-39", "70+"]
    assert groups["age"]["20-29"]["age_mae"] == pytest.approx(2.5)
    assert groups["age"]["70+"]["age_bias"] == pytest.approx(-15.0)
    assert {k: v["n"] for k, v in groups["gender"].items()} == {"male": 3, "female": 4}
    assert groups["gender"]["female"]["gender_accuracy"] == pytest.approx(3 / 4)
    assert groups["gender"]["female"]["gender_auc"] is None  # one class only
    assert {k: v["n"] for k, v in groups["race"].items()} == {"White": 2, "Black": 2, "Asian": 1, "Others": 1}


def test_report_without_race_column():
    df = pd.DataFrame({"age_true": [20.0, 40.0], "gender_true": [0.0, 1.0], "age_pred": [22.0, 40.0],
                       "p_female": [0.2, 0.7]})
    out = report(df)
    assert out["groups"]["race"] == {}
    assert out["gender_accuracy"] == pytest.approx(1.0)


def test_balanced_figures_weigh_every_age_group_the_same():
    # 30 images in their twenties off by 1 year (too old), 20 over 70 off by 6 (too young), 5 babies (too few).
    true = np.array([25.0] * 30 + [75.0] * 20 + [1.0] * 5)
    pred = np.array([26.0] * 30 + [69.0] * 20 + [9.0] * 5)
    out = summarize(pred, true, np.full(55, 0.5), np.full(55, NAN))
    assert out["age_mae"] == pytest.approx((30 * 1 + 20 * 6 + 5 * 8) / 55)
    assert out["balanced_age_mae"] == pytest.approx((1 + 6) / 2)  # the babies' group has fewer than 20
    assert (out["worst_age_bias"], out["worst_bias_group"], out["age_groups_counted"]) == (-6.0, "70+", 2)
    none = summarize(pred[:5], true[:5], np.full(5, 0.5), np.full(5, NAN))
    assert none["balanced_age_mae"] is None and none["age_groups_counted"] == 0
