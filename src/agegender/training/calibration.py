"""Calibration after training: the age interval (split-conformal) and the optional quantile age map, both
fitted on validation predictions and stored in the checkpoint, so every consumer of the file gets them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from agegender.data.records import Record
from agegender.evaluation.metrics import (
    expected_calibration_error,
    fit_age_map,
    fit_interval_scale,
    interval_coverage,
)
from agegender.inference.results import age_interval
from agegender.model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from agegender.model.network import apply_age_map
from agegender.training.engine import predict_batches

log = logging.getLogger(__name__)


def calibrate(path: str | Path, loader: Iterable, records: Sequence[Record], device: torch.device, coverage: float,
              progress: bool = True, age_map: bool = False) -> dict:
    """Fit the age interval on validation predictions of the checkpoint at ``path`` and store it there.

    ``age_map``: first fit a quantile map of the age estimates on the same predictions (see
    :func:`agegender.evaluation.metrics.fit_age_map`) and store it in the model config; the interval is then fitted
    around the mapped ages. Without it any map the checkpoint had is removed.
    """
    ckpt = load_checkpoint(path)
    ckpt["model_config"] = {**ckpt["model_config"], "age_map": None}  # fit on the network's own estimates
    model = model_from_checkpoint(ckpt).to(device)
    out = predict_batches(model, loader, device, flip_tta=bool(ckpt.get("inference", {}).get("flip_tta")),
                          progress=progress, desc="calibrate")
    true_age = np.array([records[i].age for i in out["index"]], float)
    gender = np.array([records[i].gender for i in out["index"]], float)
    cal: dict = {}
    a, g = ~np.isnan(true_age), ~np.isnan(gender)
    if a.any() and age_map:
        knots = fit_age_map(out["age"][a], true_age[a])
        ckpt["model_config"]["age_map"] = knots
        raw_mae = float(np.mean(np.abs(out["age"][a] - true_age[a])))
        age, sigma = apply_age_map(torch.from_numpy(out["age"]).float(), torch.from_numpy(out["age_sigma"]).float(),
                                   torch.tensor(knots["x"]), torch.tensor(knots["y"]))
        out["age"], out["age_sigma"] = age.numpy(), sigma.numpy()
        cal["age_map"] = {"n": int(a.sum()), "knots": len(knots["x"]), "val_mae_raw": raw_mae,
                          "val_mae_mapped": float(np.mean(np.abs(out["age"][a] - true_age[a])))}
        log.info("age map fitted on %d validation images: val MAE %.3f -> %.3f", a.sum(), raw_mae,
                 cal["age_map"]["val_mae_mapped"])
    if a.any():
        scale = fit_interval_scale(out["age"][a], out["age_sigma"][a], true_age[a], coverage)
        low, high = age_interval(out["age"][a], out["age_sigma"][a], scale)
        cal["age_interval"] = {"coverage": coverage, "scale": scale, "n": int(a.sum()),
                               "val_coverage": interval_coverage(low, high, true_age[a]),
                               "val_mean_width": float(np.mean(high - low))}
        log.info("calibrated %s: %.0f%% age interval = age ± %.2f sigma (mean width %.1f y on validation)",
                 path, 100 * coverage, scale, cal["age_interval"]["val_mean_width"])
    if g.any():
        cal["gender_ece_val"] = expected_calibration_error(out["p_female"][g], gender[g])
    # Entries this function does not fit (a logit adjustment's record) are kept.
    kept = {k: v for k, v in ckpt.get("calibration", {}).items()
            if k not in ("age_map", "age_interval", "gender_ece_val")}
    ckpt["calibration"] = kept | cal
    save_checkpoint(ckpt, path)
    return cal
