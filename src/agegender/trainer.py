"""A training run: data, split, model, optimiser and schedule wired together, with checkpoints and resume.

Writes into the run folder: ``config.yaml`` (resolved), ``split.csv``, ``metrics.csv``, ``curves.png``,
``last.pt`` (every epoch, with optimiser state for ``--resume``) and ``best.pt`` (lowest validation age MAE).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from agegender import data as D
from agegender.cache import CachedFaceDataset, build_cache
from agegender.checkpoint import (
    atomic_write,
    interrupts_held,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from agegender.config import TrainConfig
from agegender.distributed import DistInfo, barrier, cleanup, gather_predictions, setup
from agegender.engine import predict_batches, resolve_device, train_one_epoch
from agegender.images import open_image
from agegender.losses import MultiTaskLoss, age_balance_weights
from agegender.metrics import (
    age_interval,
    expected_calibration_error,
    fit_age_map,
    fit_interval_scale,
    interval_coverage,
    summarize,
)
from agegender.model import AgeGenderNet, ModelConfig, map_age
from agegender.plots import training_curves
from agegender.predictor import resolve_model_path
from agegender.transforms import PresetConfig, decode_preset, eval_preset, train_preset

log = logging.getLogger(__name__)


def default_workers(requested: int) -> int:
    """``requested``, or for -1: none on machines of 1-2 cores (a loader process there only takes CPU from
    the model; measured in benchmarks/throughput.py), else one per core but one, at most 8."""
    if requested >= 0:
        return requested
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Per-step schedule: linear warm-up, then cosine decay (or one-cycle, or constant)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "none":
            return 1.0
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class RunPaths:
    """The files of one run folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.best, self.last = root / "best.pt", root / "last.pt"
        self.config, self.split = root / "config.yaml", root / "split.csv"
        self.metrics, self.curves = root / "metrics.csv", root / "curves.png"


def limit_records(records: list[D.Record], limit: int, seed: int) -> list[D.Record]:
    if not limit or limit >= len(records):
        return records
    # A seeded, name-keyed subset, so repeated quick runs see the same images.
    keyed = sorted(records, key=lambda r: D._hash01(seed + 1, r.file))
    return sorted(keyed[:limit], key=lambda r: r.file)


def split_from_checkpoint(ckpt: dict, root: str | Path) -> tuple[list[D.Record], dict[str, str], bool]:
    """Recreate a run's split of ``root`` from what its checkpoint recorded (fractions, seed, image limit).

    Returns ``(records, split, same_data)``; ``same_data`` is False when the folder's fingerprint differs
    from the training data's, in which case the subsets may differ from the ones used in training.
    """
    cfg = ckpt["training"]["config"]
    records = limit_records(scan(root, cfg.get("labels", "")).records, cfg["limit"], cfg["seed"])
    split = D.stratified_split(records, D.parse_split(cfg["split"]), cfg["seed"])
    return records, split, D.data_fingerprint(root, records) == ckpt["training"].get("data_fingerprint")


def _resume_config(cfg: TrainConfig, given: dict, saved: dict) -> TrainConfig:
    """The run's own config, with only ``epochs`` (and where the data lives) allowed to change on resume."""
    merged = dict(saved)
    for key, value in given.items():
        if value is None or key in ("data", "out", "epochs", "num_workers", "device"):
            continue
        if key in merged and merged[key] != value:
            raise ValueError(f"--resume: {key}={value!r} differs from the run being resumed ({merged[key]!r})")
    merged.update(data=cfg.data, out=cfg.out, num_workers=cfg.num_workers, device=cfg.device)
    if given.get("epochs") is not None:
        merged["epochs"] = given["epochs"]
    return TrainConfig(**merged).validate()


def image_loader(cfg: TrainConfig):
    """How a file becomes a face crop: decoded as it is, or (``detect``) detected and aligned."""
    if cfg.detect:
        from agegender.faces import AlignedFaceLoader

        return AlignedFaceLoader(cfg.face)
    return open_image


def scan(root: str | Path, labels: str = "") -> D.ScanResult:
    """The labelled images of a folder: from a labels file when given, else from UTKFace file names."""
    if labels:
        from agegender.labels import read_labels

        return read_labels(labels, root)
    return D.scan_utkface(root)


def _datasets(cfg: TrainConfig, preset: PresetConfig, train_recs: list[D.Record], val_recs: list[D.Record],
              info: DistInfo, progress: bool) -> tuple[Dataset, Dataset | None]:
    """Training and validation datasets: from the decode cache (rank 0 builds it, the others wait and
    reuse it), or decoding every image on every read (``cache: none``, the reference's pipeline)."""
    load = image_loader(cfg)
    if cfg.cache == "none":
        return (D.FaceDataset(cfg.data, train_recs, train_preset(preset, cfg.augment), load),
                D.FaceDataset(cfg.data, val_recs, eval_preset(preset), load) if val_recs else None)
    records = train_recs + val_recs
    mode = cfg.cache
    if mode == "disk" and info.enabled and not info.is_main:
        barrier(info)  # rank 0 is writing the cache file
    if mode == "memory" or info.is_main or not info.enabled:
        pixels, ok = build_cache(cfg.data, records, decode_preset(preset), preset.resize_size, mode, progress, load)
    if mode == "disk" and info.enabled and info.is_main:
        barrier(info)
    if mode == "disk" and info.enabled and not info.is_main:
        pixels, ok = build_cache(cfg.data, records, decode_preset(preset), preset.resize_size, mode, progress, load)
    n = len(train_recs)
    train = CachedFaceDataset(pixels[:n], ok[:n], train_recs, train_preset(preset, cfg.augment, cached=True))
    val = CachedFaceDataset(pixels[n:], ok[n:], val_recs, eval_preset(preset, cached=True)) if val_recs else None
    return train, val


def make_loader(dataset: Dataset, batch_size: int, train: bool, workers: int, device: torch.device,
                info: DistInfo | None = None, seed: int = 0) -> DataLoader:
    """Batches of :func:`data.collate`; shuffled (and sharded across ranks under DDP) when ``train``."""
    info = info or DistInfo()
    sampler = DistributedSampler(dataset, info.world_size, info.rank, shuffle=train, seed=seed,
                                 drop_last=train) if info.enabled else None
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler, num_workers=workers,
        collate_fn=D.collate, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        drop_last=train and len(dataset) > batch_size * info.world_size, generator=g,
    )


def _validate(model: torch.nn.Module, loader: DataLoader, records: list[D.Record], device: torch.device,
              cfg: TrainConfig, info: DistInfo, progress: bool, desc: str) -> dict:
    """Validation figures, identical on every rank (predictions are gathered before scoring)."""
    out = predict_batches(model, loader, device, cfg.amp and device.type == "cuda", cfg.flip_tta,
                          progress and info.is_main, desc=desc)
    out = gather_predictions(out, info)
    recs = [records[i] for i in out["index"]]
    m = summarize(out["age"], [r.age for r in recs], out["p_female"], [r.gender for r in recs])
    return {f"val_{k}": math.nan if m.get(k) is None else m[k]
            for k in ("age_mae", "cs5", "gender_accuracy", "gender_mae")}


def fit(cfg: TrainConfig, resume: bool = False, given: dict | None = None, progress: bool = True) -> dict:
    """Train according to ``cfg``; returns the final training summary (also saved in the checkpoints).

    Under ``torchrun`` every process trains a shard of each epoch (DistributedDataParallel); validation
    predictions are gathered so all ranks see the same figures, and only rank 0 writes files.
    """
    info, device = setup(resolve_device(cfg.device))
    try:
        return _fit(cfg, resume, given, progress, info, device)
    finally:
        cleanup()


def _fit(cfg: TrainConfig, resume: bool, given: dict | None, progress: bool, info: DistInfo,
         device: torch.device) -> dict:
    run = RunPaths(Path(cfg.out))
    main = info.is_main
    if main:
        run.root.mkdir(parents=True, exist_ok=True)
        # A process killed mid-write leaves its temporary file behind (never a torn checkpoint): tidy up.
        for stale in run.root.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    ckpt = None
    if resume:
        if not run.last.exists():
            raise FileNotFoundError(f"--resume: no {run.last} to resume from")
        ckpt = load_checkpoint(run.last)
        cfg = _resume_config(cfg, given or {}, ckpt["training"]["config"])
        log.info("resuming %s from epoch %d", run.root, ckpt["training"]["epoch"])
    if main:
        cfg.save(run.config)
    seed_everything(cfg.seed)

    records = limit_records(scan(cfg.data, cfg.labels).records, cfg.limit, cfg.seed)
    if resume and run.split.exists():
        split = D.read_split(run.split)
    else:
        split = D.stratified_split(records, D.parse_split(cfg.split), cfg.seed)
        if main:
            D.write_split(run.split, split)
    train_recs, val_recs = D.select(records, split, "train"), D.select(records, split, "val")
    if not train_recs:
        raise D.DataError("the training subset is empty: use more images or a larger train fraction")
    if not val_recs:
        log.warning("no validation subset (split %s): best.pt will be the last epoch's model", cfg.split)
    counts = {s: sum(1 for v in split.values() if v == s) for s in D.SUBSETS}
    log.info("split %s: %s; device %s; %d process(es)", cfg.split, counts, device, info.world_size)

    ages = np.array([r.age for r in train_recs], float)
    ages = ages[~np.isnan(ages)] if not np.isnan(ages).all() else np.array([33.0, 13.0, 53.0])
    mcfg = ModelConfig(
        backbone=cfg.backbone, head_hidden=cfg.head_hidden, dropout=cfg.dropout, image_size=cfg.image_size,
        crop_pct=cfg.crop_pct, age_mean=float(ages.mean()), age_std=float(max(ages.std(), 1.0)),
        age_head="dldl" if cfg.age_loss == "dldl" else "regression",
    )
    init = None
    if cfg.init and ckpt is None:
        init = load_checkpoint(resolve_model_path(None if cfg.init == "bundled" else cfg.init))
        # A fine-tune keeps the network it starts from: its size, head and age normalisation.
        mcfg = ModelConfig.from_dict(dict(init["model_config"]))
        # ...except its input framing: global pooling makes the input size free, so a fine-tune may move to a
        # higher resolution (FixRes-style) when --image-size / --crop-pct are given explicitly.
        framing = {k: (given or {})[k] for k in ("image_size", "crop_pct") if (given or {}).get(k) is not None}
        if framing:
            mcfg = dataclasses.replace(mcfg, **framing)
        # An age map belongs to the network it was fitted on; calibration fits a new one if asked.
        mcfg = dataclasses.replace(mcfg, age_map=None)
        if mcfg.age_head != ("dldl" if cfg.age_loss == "dldl" else "regression"):
            raise ValueError(f"--init model has a {mcfg.age_head} age head; use a matching --age-loss")
        log.info("fine-tuning from %s (%s, %d px)", cfg.init, mcfg.backbone, mcfg.image_size)
    if ckpt is not None:
        mcfg = ModelConfig.from_dict(dict(ckpt["model_config"]))
    # Every rank starts from the same weights: same seed, and DDP broadcasts rank 0's at wrap time anyway.
    pretrained = None if ckpt is not None or init is not None else cfg.pretrained
    model = AgeGenderNet(mcfg, pretrained=pretrained).to(device)
    if init is not None:
        model.load_state_dict(init["model_state"])
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    preset = mcfg.preset

    workers = default_workers(cfg.num_workers)
    train_ds, val_ds = _datasets(cfg, preset, train_recs, val_recs, info, progress)
    train_loader = make_loader(train_ds, cfg.batch_size, True, workers, device, info, cfg.seed)
    val_loader = make_loader(val_ds, cfg.batch_size * 2, False, workers, device, info, cfg.seed) if val_ds else None

    balance = None
    if cfg.age_balance > 0:
        balance = torch.from_numpy(age_balance_weights(ages, cfg.age_balance))
        log.info("age loss re-weighted (power %.2f): weight %.2f at 26, %.2f at 80", cfg.age_balance,
                 balance[26], balance[80])
    loss_fn = MultiTaskLoss(mcfg.age_mean, mcfg.age_std, cfg.age_loss, cfg.age_weight, cfg.gender_weight,
                            balance)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(train_loader))
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())

    ema = None
    if cfg.ema > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    # The model that is validated and saved: the weight average when there is one.
    eval_model = ema.module if ema is not None else model

    history: list[dict] = []
    start_epoch, best_mae = 1, math.inf
    if ckpt is not None:
        model.load_state_dict(ckpt.get("train_model_state", ckpt["model_state"]))
        if ema is not None:
            ema.load_state_dict(ckpt["ema_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        scheduler.load_state_dict(ckpt["scheduler_state"])
        if "scaler_state" in ckpt:
            scaler.load_state_dict(ckpt["scaler_state"])
        torch.set_rng_state(ckpt["rng_state"])
        history = list(ckpt["training"].get("history", []))
        start_epoch = int(ckpt["training"]["epoch"]) + 1
        best_mae = float(ckpt["training"].get("best_val_age_mae") or math.inf)

    train_model: torch.nn.Module = model
    if info.enabled:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    fingerprint = D.data_fingerprint(cfg.data, records)
    training: dict = {}
    # The last epoch whose last.pt is on disk. Ctrl-C may land anywhere (training, validation, a save, the
    # plot); what is reported and kept follows what was written, not where the signal fell.
    completed = start_epoch - 1
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            # Re-seeding per epoch makes a resumed run shuffle exactly as an uninterrupted one would.
            train_loader.generator.manual_seed(cfg.seed * 1000 + epoch)
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(epoch)
            # Heads only at first: large gradients from fresh heads would otherwise wreck the trained features.
            model.backbone.requires_grad_(epoch > cfg.freeze_backbone_epochs)
            t0 = time.time()
            losses = train_one_epoch(train_model, train_loader, loss_fn, optimizer, device, epoch, scheduler,
                                     scaler, use_amp, cfg.grad_clip, progress and main, ema)
            row = {"epoch": epoch, "train_loss": losses.get("loss", math.nan),
                   "train_age_loss": losses.get("age_loss", math.nan),
                   "train_gender_loss": losses.get("gender_loss", math.nan), "lr": optimizer.param_groups[0]["lr"]}
            if val_loader is not None:
                row |= _validate(eval_model, val_loader, val_recs, device, cfg, info, progress, f"epoch {epoch} val")
            row["seconds"] = round(time.time() - t0, 1)
            history.append(row)
            # Best by validation age MAE; by gender MAE where the validation images have no ages.
            score = row.get("val_age_mae", math.nan)
            if val_loader is not None and math.isnan(score):
                score = row.get("val_gender_mae", math.nan)
            is_best = val_loader is None or score < best_mae
            if val_loader is not None and not math.isnan(score):
                best_mae = min(best_mae, score)
            summary = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch" and isinstance(v, float))
            if info.enabled:
                log.warning("rank %d epoch %d/%d  %s", info.rank, epoch, cfg.epochs, summary)
            else:
                log.info("epoch %d/%d  %s", epoch, cfg.epochs, summary)

            training = {
                "epoch": epoch, "config": cfg.to_dict(), "data_fingerprint": fingerprint, "metrics": row,
                "best_val_age_mae": best_mae if math.isfinite(best_mae) else None, "history": history,
                "split": {"file": run.split.name, "fractions": cfg.split, "seed": cfg.seed, "counts": counts},
                "torch_version": str(torch.__version__), "world_size": info.world_size,
            }
            with interrupts_held():  # best.pt, last.pt and ``completed`` change together or not at all
                if main:
                    _save_checkpoints(run, eval_model, model, ema, optimizer, scheduler, scaler, training, is_best,
                                      cfg)
                completed = epoch
            if main:
                _save_reports(run, training)
            barrier(info)
    except KeyboardInterrupt:
        if main:
            _keep_interrupted(run, eval_model, completed + 1, training)
        raise
    if val_loader is not None and training:
        barrier(info)
        if main:
            # Rank 0 alone sees the whole validation subset here, so the loader is not sharded.
            loader = make_loader(val_ds, cfg.batch_size * 2, False, workers, device)
            try:
                calibrate(run.best, loader, val_recs, device, cfg.interval_coverage, progress, cfg.age_map)
            except KeyboardInterrupt:
                log.warning("interrupted while fitting the age interval: all %d epochs are saved, but %s has "
                            "no interval yet; fit it with: python scripts/recalibrate.py --model %s --data %s "
                            "--split-file %s %s%s", training["epoch"], run.best, run.best, cfg.data, run.split,
                            "--tta" if cfg.flip_tta else "--no-tta", " --age-map" if cfg.age_map else "")
                raise
        barrier(info)
    return training


def _save_checkpoints(run: RunPaths, eval_model: torch.nn.Module, model: torch.nn.Module, ema, optimizer,
                      scheduler, scaler, training: dict, is_best: bool, cfg: TrainConfig) -> None:
    inference = {"flip_tta": cfg.flip_tta}
    # best.pt first: a crash between the two writes then loses no improvement.
    if is_best:
        save_checkpoint(make_checkpoint(eval_model, training, inference=inference), run.best)
    resume_state = {"optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
                    "scaler_state": scaler.state_dict(), "rng_state": torch.get_rng_state()}
    if ema is not None:
        resume_state |= {"train_model_state": model.state_dict(), "ema_state": ema.state_dict()}
    save_checkpoint(make_checkpoint(eval_model, training, inference=inference, **resume_state), run.last)


def _write_metrics(run: RunPaths, history: list[dict]) -> pd.DataFrame:
    hist = pd.DataFrame(history)
    atomic_write(run.metrics, lambda f: f.write(hist.to_csv(index=False).encode()))
    return hist


def _save_reports(run: RunPaths, training: dict) -> None:
    training_curves(_write_metrics(run, training["history"]), run.curves)


def _keep_interrupted(run: RunPaths, eval_model: torch.nn.Module, epoch: int, training: dict) -> None:
    """After Ctrl-C in ``epoch``: last.pt stays the last complete epoch (what --resume continues from); the
    partial epoch's weights are kept beside it, and metrics.csv is brought in line with last.pt."""
    partial = make_checkpoint(eval_model, {**training, "interrupted_in_epoch": epoch})
    save_checkpoint(partial, run.root / "interrupted.pt")
    done = [h for h in training.get("history", []) if h["epoch"] < epoch]
    if done:
        _write_metrics(run, done)
    log.warning("interrupted in epoch %d: %s holds the last complete epoch (resume with --resume); "
                "the partial epoch's weights are in %s", epoch, run.last, run.root / "interrupted.pt")


def calibrate(path: Path, loader: DataLoader, records: list[D.Record], device: torch.device, coverage: float,
              progress: bool = True, age_map: bool = False) -> dict:
    """Fit the age interval on validation predictions of the checkpoint at ``path`` and store it there.

    ``age_map``: first fit a quantile map of the age estimates on the same predictions (see
    :func:`agegender.metrics.fit_age_map`) and store it in the model config; the interval is then fitted
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
        kx, ky = torch.tensor(knots["x"]), torch.tensor(knots["y"])
        age, sigma = torch.from_numpy(out["age"]).float(), torch.from_numpy(out["age_sigma"]).float()
        hi, lo = map_age(age + sigma, kx, ky), map_age(age - sigma, kx, ky)
        out["age"], out["age_sigma"] = map_age(age, kx, ky).numpy(), ((hi - lo) / 2).clamp_min(1e-6).numpy()
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
    ckpt["calibration"] = cal
    save_checkpoint(ckpt, path)
    return cal
