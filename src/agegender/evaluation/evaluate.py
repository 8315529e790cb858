"""Evaluation: a predictor run over labelled records, scored overall and by group, and written as a report.

Used by ``agegender evaluate``, the benchmarks and training's validation, so that every figure of the project
comes from the same code. Prediction here needs no torch (see :mod:`agegender.inference.predictor`); the report needs
pandas, and its plots matplotlib.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agegender.data.records import Record
from agegender.errors import DataError
from agegender.evaluation.metrics import age_group_scores, expected_calibration_error, interval_coverage, report
from agegender.inference.results import age_interval
from agegender.io.outputs import atomic_write, csv_cell

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from agegender.inference.predictor import Predictor

log = logging.getLogger(__name__)


def predictions_frame(out: dict[str, np.ndarray], records: Sequence[Record],
                      interval_scale: float | None = None) -> pd.DataFrame:
    """One row per prediction: the output of :func:`agegender.training.engine.predict_batches` (``index`` into
    ``records``, ``age``, ``age_sigma``, ``p_female``, each ``[N]``) beside the records' labels;
    ``age_low``/``age_high`` when an interval ``scale`` is given.

    >>> recs = [Record("a.jpg", 30.0, 1.0, 2), Record("b.jpg", float("nan"), 0.0)]
    >>> out = {"index": np.array([1, 0]), "age": np.array([20.0, 33.0]), "age_sigma": np.array([2.0, 1.0]),
    ...        "p_female": np.array([0.2, 0.9])}
    >>> predictions_frame(out, recs, 1.5)[["file", "age_true", "age_pred", "age_low", "age_high"]].values.tolist()
    [['b.jpg', nan, 20.0, 17.0, 23.0], ['a.jpg', 30.0, 33.0, 31.5, 34.5]]
    """
    from agegender.data.frames import pd

    recs = [records[i] for i in out["index"]]
    df = pd.DataFrame({
        "file": [r.file for r in recs], "age_true": [r.age for r in recs], "gender_true": [r.gender for r in recs],
        "race": [r.race for r in recs], "age_pred": np.round(out["age"], 3), "p_female": np.round(out["p_female"], 5),
        "age_group_true": [f"{g[0]}-{g[1]}" if g else "" for g in (r.age_group for r in recs)],
    })
    if interval_scale is not None:
        low, high = age_interval(out["age"], out["age_sigma"], interval_scale)
        df["age_low"], df["age_high"] = low.round(3), high.round(3)
    return df


def score(df: pd.DataFrame, records: Sequence[Record], target_coverage: float | None = None) -> dict:
    """Every figure the labels of ``df`` (from :func:`predictions_frame`) allow: :func:`metrics.report`, the
    gender calibration error, age-group accuracy (``records``, in ``df``'s order, carry the groups) and the
    age interval's coverage."""
    rep = report(df)
    known_gender = df["gender_true"].notna()
    if known_gender.any():
        rep["gender_ece"] = expected_calibration_error(df["p_female"][known_gender], df["gender_true"][known_gender])
    rep |= age_group_scores(df["age_pred"].to_numpy(), [r.age_group for r in records])
    known_age = df["age_true"].notna()
    if "age_low" in df and known_age.any():
        k = df[known_age]
        rep["age_interval"] = {
            "target_coverage": target_coverage,
            "coverage": interval_coverage(k["age_low"], k["age_high"], k["age_true"]),
            "mean_width": float((df["age_high"] - df["age_low"]).mean()),
        }
    return rep


def predict_records(predictor: Predictor, root: str | Path, records: Sequence[Record], load: Callable,
                    workers: int = 0, progress: bool = True, chunk: int = 256) -> dict[str, np.ndarray]:
    """Predict every record under ``root``: ``{"index", "age", "age_sigma", "p_female"}`` (as
    :func:`agegender.training.engine.predict_batches` returns them; unreadable images and photos without a usable
    face absent).
    ``load`` turns a path into a PIL image (and raises :class:`agegender.errors.ImageReadError` for what it cannot use);
    it runs on ``workers`` threads (0: the predictor's), the network on the predictor's.
    """
    from tqdm.auto import tqdm

    from agegender.compute.pools import parallel_map
    from agegender.errors import ImageReadError

    def crop(i: int) -> np.ndarray | None:
        try:
            return predictor.prepare(load(Path(root) / records[i].file))
        except ImageReadError as e:
            log.warning("skipping unreadable image %s: %s", records[i].file, e)
            return None

    threads = workers or predictor.workers
    parts: list[dict[str, np.ndarray]] = []
    with tqdm(total=len(records), desc="evaluate", unit="img", leave=False,
              disable=None if progress else True, dynamic_ncols=True) as bar:
        for start in range(0, len(records), chunk):
            index = range(start, min(start + chunk, len(records)))
            crops = parallel_map(crop, index, threads)
            ok = [i for i, c in zip(index, crops, strict=True) if c is not None]
            if ok:
                out = predictor.predict_crops(np.stack([c for c in crops if c is not None]))
                parts.append({"index": np.asarray(ok), **out})
            bar.update(len(index))
    if not parts:
        return {"index": np.zeros(0, int), "age": np.zeros(0), "age_sigma": np.zeros(0), "p_female": np.zeros(0)}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def evaluate(predictor: Predictor, root: str | Path, records: Sequence[Record], *, detect: bool = False,
             face: str = "single", min_face: int = 20, damage: str | None = None, batch_size: int = 128,
             workers: int = 0, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Predict every record under ``root`` (face crops, or with ``detect`` photos detected and aligned first)
    and score the predictions: ``(predictions frame, report)``. ``damage`` scores the fixed damaged copy of each
    face instead (a name of :data:`agegender.evaluation.damage.DAMAGES`: ``"degraded"`` or ``"old_print"``).
    Unreadable images and photos without a usable face are skipped and counted in ``report["meta"]``.
    ``batch_size``: images read per step; ``workers``: threads that read them (0: the predictor's)."""
    from agegender.evaluation.damage import DAMAGES
    from agegender.faces.loader import image_loader

    if damage is not None and damage not in DAMAGES:
        raise ValueError(f"damage must be one of {', '.join(DAMAGES)}, got {damage!r}")
    read = image_loader(detect, face, min_face)

    def read_damaged(path: Path) -> Image.Image:
        return DAMAGES[damage](read(path))

    out = predict_records(predictor, root, records, read_damaged if damage else read, workers, progress,
                          chunk=max(batch_size, 1))
    df = predictions_frame(out, records, predictor.interval_scale)
    if df.empty:
        raise DataError(f"none of the {len(records)} images under {root} could be read")
    rep = score(df, [records[i] for i in out["index"]], predictor.interval_coverage)
    rep["meta"] = {"tta": predictor.flip_tta, "age_map": predictor.model.config.age_map is not None,
                   "damage": damage, "skipped_unreadable_or_no_face": len(records) - len(df)}
    return df, rep


def predictions_path(out: str | Path, predictions: str | Path | None = None) -> Path:
    """Where :func:`write_report` writes the predictions: ``predictions``, else ``<out stem>_preds.csv``."""
    out = Path(out)
    return Path(predictions) if predictions else out.with_name(out.stem + "_preds.csv")


def write_report(df: pd.DataFrame, rep: dict, out: str | Path, predictions: str | Path | None = None,
                 title: str = "") -> Path:
    """``out`` (REPORT.json), the predictions CSV (default ``<out stem>_preds.csv`` beside it) and, where there
    are ages, a scatter plot and the error by age bucket. Returns the predictions path."""
    from agegender.evaluation.plots import age_scatter, mae_by_bucket
    from agegender.io.outputs import write_json

    out = Path(out)
    preds_path = predictions_path(out, predictions)
    write_csv(df, preds_path)
    write_json(rep, out)
    known_age = df["age_true"].notna()
    if "age_mae" in rep:
        age_scatter(df[known_age], out.with_name(out.stem + "_age_scatter.png"),
                    f"{title}: MAE {rep['age_mae']:.2f} y, n={int(known_age.sum())}")
        mae_by_bucket(rep, out.with_name(out.stem + "_mae_by_age.png"))
    return preds_path


def headline(rep: dict) -> str:
    """The report's main figures on one line, those the labels allowed.

    >>> headline({"n": 3, "age_mae": 4.5, "gender_accuracy": 0.9})
    'n=3  age MAE 4.500  gender acc 0.900'
    """
    figures = {"age MAE": rep.get("age_mae"), "CS@5 %": rep.get("cs5"), "gender acc": rep.get("gender_accuracy"),
               "gender MAE": rep.get("gender_mae"), "gender AUC": rep.get("gender_auc"),
               "age-group acc": rep.get("age_group_accuracy"), "one-off": rep.get("age_group_one_off")}
    return f"n={rep['n']}  " + "  ".join(f"{k} {v:.3f}" for k, v in figures.items() if v is not None)


def csv_bytes(df: pd.DataFrame) -> bytes:
    """``df`` as CSV bytes: text cells made formula-safe (:func:`csv_cell`), and file names that are not valid
    UTF-8 written back as the bytes they were on disk (Python holds them as surrogate escapes)."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    safe = df.copy()
    for column in safe.columns:
        if is_object_dtype(safe[column]) or is_string_dtype(safe[column]):
            safe[column] = safe[column].map(csv_cell)
    return safe.to_csv(index=False).encode("utf-8", "surrogateescape")


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` to ``path`` atomically as :func:`csv_bytes`."""
    data = csv_bytes(df)
    atomic_write(path, lambda f: f.write(data))
