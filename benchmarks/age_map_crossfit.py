"""The quantile age map (``--age-map``), judged honestly on validation by balanced MAE: fitted on one half of the
pooled validation predictions and scored on the other half, then the other way round (cross-fitting), so no image
is scored by a map fitted on it.

    python benchmarks/age_map_crossfit.py RUN_DIR   # RUN_DIR: what benchmarks/sources.py --subset val wrote

Reads ``*_val_clean_preds.csv`` of each source from RUN_DIR (benchmarks/sources.py's predictions), prints, per
source and pooled: MAE, balanced MAE (mean of the age groups' MAEs over groups of >= 20) and the largest |group
bias| (groups of >= 50), without and with the cross-fitted map; and the command that made it.
"""

from __future__ import annotations

import hashlib
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from agegender.evaluation.metrics import balanced_age_figures, fit_age_map


def apply_map(age: np.ndarray, knots: dict) -> np.ndarray:
    """The piecewise-linear map through ``knots`` with slope 1 beyond the end knots (as the model applies it)."""
    x, y = np.asarray(knots["x"]), np.asarray(knots["y"])
    inside = np.interp(age, x, y)
    return np.where(age < x[0], y[0] + age - x[0], np.where(age > x[-1], y[-1] + age - x[-1], inside))


def half(name: str) -> int:
    return hashlib.sha256(name.encode()).digest()[0] % 2


def figures(pred: np.ndarray, true: np.ndarray) -> str:
    wide = balanced_age_figures(pred, true, min_group=50)
    return (f"{np.abs(pred - true).mean():.2f} | {balanced_age_figures(pred, true)['balanced_age_mae']:.2f} | "
            f"{wide['worst_age_bias']:+.2f} ({wide['worst_bias_group']})")


def main(argv: list[str]) -> int:
    run = Path(argv[0])
    paths = sorted(run.glob("*_val_clean_preds.csv"))
    frames = [pd.read_csv(p).assign(source=p.name.split("_val_")[0]) for p in paths]
    df = pd.concat(frames, ignore_index=True).dropna(subset=["age_true", "age_pred"])
    df["half"] = [half(f"{s}/{f}") for s, f in zip(df["source"], df["file"], strict=True)]
    mapped = df["age_pred"].to_numpy(float).copy()
    for h in (0, 1):
        fit = df[df["half"] != h]
        knots = fit_age_map(fit["age_pred"].to_numpy(float), fit["age_true"].to_numpy(float))
        mapped[df["half"] == h] = apply_map(df.loc[df["half"] == h, "age_pred"].to_numpy(float), knots)
    df["mapped"] = mapped
    print("$ " + shlex.join(["python", "benchmarks/age_map_crossfit.py", *argv]))
    print("| set | n | MAE | balanced MAE | largest group bias | MAE, map | balanced MAE, map | "
          "largest group bias, map |")
    print("|---|---|---|---|---|---|---|---|")
    for name, part in [*df.groupby("source"), ("pooled", df)]:
        true = part["age_true"].to_numpy(float)
        print(f"| {name} | {len(part)} | {figures(part['age_pred'].to_numpy(float), true)} | "
              f"{figures(part['mapped'].to_numpy(float), true)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
