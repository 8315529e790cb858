"""Figures people would rather look at than read: training curves, predicted-vs-true age, MAE by bucket."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def training_curves(history: pd.DataFrame, path: str | Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(history["epoch"], history["train_loss"], marker="o", label="train loss")
    axes[0].set_title("training loss")
    if "val_age_mae" in history and history["val_age_mae"].notna().any():
        axes[1].plot(history["epoch"], history["val_age_mae"], marker="o", color="C1")
        axes[2].plot(history["epoch"], 100 * history["val_gender_accuracy"], marker="o", color="C2")
    axes[1].set_title("validation age MAE (years)")
    axes[2].set_title("validation gender accuracy (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def age_scatter(preds: pd.DataFrame, path: str | Path, title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.scatter(preds["age_true"], preds["age_pred"], s=4, alpha=0.35)
    hi = max(float(preds["age_true"].max()), float(preds["age_pred"].max()), 1.0) + 2
    ax.plot([0, hi], [0, hi], color="k", lw=1, ls="--", label="perfect")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("true age (years)")
    ax.set_ylabel("predicted age (years)")
    ax.set_title(title or "predicted vs true age")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mae_by_bucket(report: dict, path: str | Path) -> None:
    groups = report["groups"]["age"]
    names = list(groups)
    maes = [groups[n].get("age_mae") or 0.0 for n in names]
    bias = [groups[n].get("age_bias") or 0.0 for n in names]
    counts = [groups[n]["n"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    x = range(len(names))
    ax.bar(x, maes, color="C0", label="MAE")
    ax.bar(x, bias, width=0.35, color="C3", alpha=0.8, label="mean signed error (bias)")
    for i, (m, c) in enumerate(zip(maes, counts, strict=True)):
        ax.text(i, m, f"{m:.1f}\nn={c}", ha="center", va="bottom", fontsize=8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(list(x), names)
    ax.set_xlabel("true age bucket")
    ax.set_ylabel("years")
    ax.set_title(f"age error by bucket (overall MAE {report.get('age_mae', float('nan')):.2f})")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_ylim(min(0, min(bias)) * 1.2 - 0.5, max(maes) * 1.3 + 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
