"""Evaluation figures: age MAE/RMSE/CS@5, gender accuracy/MAE/AUC, and the same per group.

Importing it does not import pandas (prediction uses :func:`age_interval`); the reports that need it import it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from agegender.data.records import AGE_BUCKET_NAMES, GENDERS, RACES, age_bucket

if TYPE_CHECKING:
    import pandas as pd


def age_mae(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute error in years.

    >>> age_mae(np.array([10.0, 20.0]), np.array([12.0, 17.0]))
    2.5
    """
    return float(np.mean(np.abs(np.asarray(pred, float) - np.asarray(true, float))))


def age_rmse(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, float) - np.asarray(true, float)) ** 2)))


def cumulative_score(pred: np.ndarray, true: np.ndarray, years: float = 5.0) -> float:
    """Percentage of predictions within ``years`` of the truth (CS@5 by default).

    >>> cumulative_score(np.array([10, 20, 30, 40.0]), np.array([15, 26, 30, 44.9]))
    75.0
    """
    return float(100.0 * np.mean(np.abs(np.asarray(pred, float) - np.asarray(true, float)) <= years))


def gender_accuracy(p_female: np.ndarray, gender: np.ndarray) -> float:
    """Share (0-1) of correct decisions at threshold 0.5."""
    return float(np.mean((np.asarray(p_female) >= 0.5).astype(int) == np.asarray(gender).astype(int)))


def gender_mae(p_female: np.ndarray, gender: np.ndarray) -> float:
    """The reference's metric: mean |p_female - label|.

    >>> gender_mae(np.array([0.9, 0.2]), np.array([1, 1]))
    0.45
    """
    return float(np.mean(np.abs(np.asarray(p_female, float) - np.asarray(gender, float))))


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic (ties count half); NaN with one class only.

    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    import pandas as pd

    score, label = np.asarray(score, float), np.asarray(label).astype(int)
    n_pos, n_neg = int(label.sum()), int((1 - label).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(score).rank(method="average").to_numpy()
    return float((ranks[label == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# An age group counts towards the balanced figures with at least this many images (fewer: too noisy to weigh the
# same as the others).
MIN_GROUP = 20


def balanced_age_figures(age_pred: np.ndarray, age_true: np.ndarray, min_group: int = MIN_GROUP) -> dict:
    """Every age group a first-class citizen: ``balanced_age_mae``, the mean of the age groups' MAEs
    (:data:`agegender.data.records.AGE_BUCKETS`, groups of at least ``min_group`` images), and the group whose
    mean signed error is furthest from zero (``worst_age_bias``, signed, and ``worst_bias_group``). NaN and None
    where no group is that large. Ages must be known (no NaN).

    >>> pred = np.array([1.0, 2.0, 30.0, 30.0, 30.0])
    >>> true = np.array([0.0, 0.0, 30.0, 31.0, 29.0])
    >>> f = balanced_age_figures(pred, true, min_group=2)
    >>> round(f["balanced_age_mae"], 4), f["worst_age_bias"], f["worst_bias_group"], f["age_groups_counted"]
    (1.0, 1.5, '0-2', 2)
    """
    err = np.asarray(age_pred, float) - np.asarray(age_true, float)
    groups = np.array([age_bucket(a) for a in np.asarray(age_true, float)]) if len(err) else np.array([])
    maes, biases = {}, {}
    for name in AGE_BUCKET_NAMES:
        inside = groups == name
        if inside.sum() >= min_group:
            maes[name], biases[name] = float(np.abs(err[inside]).mean()), float(err[inside].mean())
    if not maes:
        return {"balanced_age_mae": math.nan, "worst_age_bias": math.nan, "worst_bias_group": None,
                "age_groups_counted": 0}
    worst = max(biases, key=lambda k: abs(biases[k]))
    return {"balanced_age_mae": float(np.mean(list(maes.values()))), "worst_age_bias": biases[worst],
            "worst_bias_group": worst, "age_groups_counted": len(maes)}


def summarize(age_pred: np.ndarray, age_true: np.ndarray, p_female: np.ndarray, gender_true: np.ndarray) -> dict:
    """All headline figures for one set of predictions; age or gender entries may be NaN (unknown labels)."""
    age_pred, age_true = np.asarray(age_pred, float), np.asarray(age_true, float)
    p_female, gender_true = np.asarray(p_female, float), np.asarray(gender_true, float)
    out: dict = {"n": int(len(age_pred))}
    a = ~np.isnan(age_true)
    if a.any():
        err = age_pred[a] - age_true[a]
        out |= {
            "age_mae": age_mae(age_pred[a], age_true[a]),
            "age_rmse": age_rmse(age_pred[a], age_true[a]),
            "age_bias": float(np.mean(err)),  # mean signed error: > 0 means the model guesses too old
            "cs5": cumulative_score(age_pred[a], age_true[a], 5.0),
            **balanced_age_figures(age_pred[a], age_true[a]),
        }
    g = ~np.isnan(gender_true)
    if g.any():
        out |= {
            "gender_accuracy": gender_accuracy(p_female[g], gender_true[g]),
            "gender_mae": gender_mae(p_female[g], gender_true[g]),
            "gender_auc": roc_auc(p_female[g], gender_true[g]),
        }
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def report(df: pd.DataFrame) -> dict:
    """Headline figures plus ``groups`` by age bucket, gender and race.

    ``df`` columns: ``age_true, gender_true, race, age_pred, p_female`` (race may be missing or NaN).
    """
    import pandas as pd

    def fig(part: pd.DataFrame) -> dict:
        return summarize(part["age_pred"], part["age_true"], part["p_female"], part["gender_true"])

    out = fig(df)
    groups: dict[str, dict] = {"age": {}, "gender": {}, "race": {}}
    buckets = df["age_true"].map(lambda a: age_bucket(a) if not pd.isna(a) else None)
    for name in AGE_BUCKET_NAMES:
        part = df[buckets == name]
        if len(part):
            groups["age"][name] = fig(part)
    for code, name in enumerate(GENDERS):
        part = df[df["gender_true"] == code]
        if len(part):
            groups["gender"][name] = fig(part)
    if "race" in df:
        for code, name in enumerate(RACES):
            part = df[df["race"] == code]
            if len(part):
                groups["race"][name] = fig(part)
    out["groups"] = groups
    return out


def fit_interval_scale(age_pred: np.ndarray, age_sigma: np.ndarray, age_true: np.ndarray,
                       coverage: float = 0.8) -> float:
    """Split-conformal scale ``s`` so that ``age ± s * sigma`` holds ``coverage`` of held-out true ages.

    ``sigma`` is the model's own spread per image (1 for a plain regression head), so hard faces get wide
    intervals and easy ones narrow. Uses the ``ceil((n + 1) * coverage)``-th smallest normalised error
    (the finite-sample rule).

    >>> fit_interval_scale(np.array([10.0, 20, 30, 40]), np.ones(4), np.array([11.0, 22, 33, 44]), 0.5)
    3.0
    """
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    r = np.abs(np.asarray(age_pred, float) - np.asarray(age_true, float)) / np.asarray(age_sigma, float)
    if r.size == 0:
        raise ValueError("need at least one held-out prediction to fit an interval")
    k = min(r.size, math.ceil((r.size + 1) * coverage))  # the k-th smallest normalised error
    return float(np.sort(r)[k - 1])


def fit_age_map(age_pred: np.ndarray, age_true: np.ndarray, knots: int = 101) -> dict[str, list[float]]:
    """Knots of a monotone map that gives the estimates the distribution of the true ages (quantile mapping).

    An estimator trained to be close on average pulls every face towards the typical age: the elderly come
    out too young and children too old, bucket by bucket. Mapping the ``q``-quantile of held-out estimates to
    the ``q``-quantile of their true ages undoes that shrinkage; the price is a slightly higher MAE. Returns
    ``{"x": estimates, "y": years}`` for :class:`agegender.model.config.ModelConfig`'s ``age_map``.

    >>> fit_age_map(np.array([20.0, 25, 30, 35, 40]), np.array([10.0, 20, 30, 40, 50]), knots=3)
    {'x': [20.0, 30.0, 40.0], 'y': [10.0, 30.0, 50.0]}
    """
    pred, true = np.asarray(age_pred, float), np.asarray(age_true, float)
    if pred.shape != true.shape or pred.ndim != 1:
        raise ValueError(f"need two 1-d arrays of the same length, got {pred.shape} and {true.shape}")
    if knots < 2:
        raise ValueError(f"knots must be >= 2, got {knots}")
    if np.unique(pred).size < 2:
        raise ValueError("need at least two different held-out estimates to fit an age map")
    q = np.linspace(0, 1, knots)
    xs, ys = np.round(np.quantile(pred, q), 4), np.round(np.quantile(true, q), 4)
    xs, first = np.unique(xs, return_index=True)  # tied estimates: keep one knot
    return {"x": [float(v) for v in xs], "y": [float(v) for v in ys[first]]}


def interval_coverage(low: np.ndarray, high: np.ndarray, true: np.ndarray) -> float:
    """Share (0-1) of true ages inside ``[low, high]``."""
    true = np.asarray(true, float)
    return float(np.mean((true >= low) & (true <= high)))


def expected_calibration_error(p_female: np.ndarray, gender: np.ndarray, bins: int = 10) -> float:
    """ECE of the gender decision: confidence max(p, 1-p) vs accuracy, in equal-width bins, weighted by count.

    >>> round(expected_calibration_error(np.array([0.9, 0.9, 0.1, 0.1]), np.array([1, 0, 0, 0])), 3)
    0.15
    """
    p, y = np.asarray(p_female, float), np.asarray(gender, float)
    conf = np.maximum(p, 1 - p)
    correct = ((p >= 0.5) == (y == 1)).astype(float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(conf[sel].mean() - correct[sel].mean())
    return float(ece)


def age_group_scores(age_pred: np.ndarray, groups: list[tuple[int, int] | None]) -> dict:
    """Accuracy of predicted ages against labelled age ranges (inclusive; a prediction counts when it rounds
    into the range), and one-off accuracy: inside the true range or one of its neighbours among the distinct
    ranges of the data, sorted (the usual Adience-style "1-off"). Items without a group are ignored.

    >>> age_group_scores(np.array([27.0, 40.0, 5.0, 40.0]), [(25, 32), (25, 32), (0, 2), (38, 43)])
    {'n_age_group': 4, 'age_group_accuracy': 0.5, 'age_group_one_off': 0.75}
    """
    pairs = [(round(float(a)), g) for a, g in zip(age_pred, groups, strict=True) if g is not None]
    if not pairs:
        return {}
    distinct = sorted({g for _, g in pairs})

    def inside(age: int, g: tuple[int, int]) -> bool:
        return g[0] <= age <= g[1]

    exact = one_off = 0
    for age, g in pairs:
        i = distinct.index(g)
        near = distinct[max(0, i - 1) : i + 2]
        exact += inside(age, g)
        one_off += any(inside(age, h) for h in near)
    return {"n_age_group": len(pairs), "age_group_accuracy": exact / len(pairs),
            "age_group_one_off": one_off / len(pairs)}
