"""A training run: data, split, model, optimiser and schedule wired together, with checkpoints and resume.

:func:`fit` reads top-down: it calls one named step after another on a :class:`TrainState`, the small object
that carries what the steps share. Writes into the run folder: ``config.yaml`` (resolved), ``split.csv``,
``metrics.csv``, ``curves.png``, ``last.pt`` (every epoch, with optimiser state for ``--resume``) and ``best.pt``
(lowest validation age MAE; gender MAE where the validation images have no ages).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from agegender.data import sources as S
from agegender.data.cache import build_cache
from agegender.data.records import Record, data_fingerprint
from agegender.errors import CheckpointError, DataError
from agegender.evaluation.evaluate import predictions_frame
from agegender.evaluation.metrics import summarize
from agegender.evaluation.plots import training_curves
from agegender.io.outputs import atomic_write, interrupts_held
from agegender.model.checkpoint import (
    check_resumable,
    load_checkpoint,
    load_model,
    make_checkpoint,
    resolve_model_path,
    save_checkpoint,
)
from agegender.model.config import ModelConfig
from agegender.model.network import AgeGenderNet, resolve_device
from agegender.training.calibration import calibrate
from agegender.training.config import TrainConfig
from agegender.training.datasets import CachedFaceDataset, FaceDataset, concat_datasets, loader_workers, make_loader
from agegender.training.distributed import DistInfo, barrier, cleanup, gather_predictions, setup
from agegender.training.engine import predict_batches, train_one_epoch
from agegender.training.losses import DistillLoss, MultiTaskLoss, age_balance_weights, prior_logit_shift
from agegender.training.transforms import decode_preset, eval_preset, train_preset

log = logging.getLogger(__name__)

# What --resume may change; every other option must match the run being resumed.
RESUMABLE = ("data", "out", "epochs", "num_workers", "device")


class RunPaths:
    """The files of one run folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.best, self.last = root / "best.pt", root / "last.pt"
        self.config, self.split = root / "config.yaml", root / "split.csv"
        self.metrics, self.curves = root / "metrics.csv", root / "curves.png"


@dataclass
class SourcePart:
    """One training source's records and split; ``val_span`` is where its images sit in the pooled
    validation subset."""

    source: S.Source
    records: list[Record]
    train: list[Record]
    val: list[Record]
    counts: dict[str, int]
    fingerprint: str
    split_file: str
    val_span: tuple[int, int] = (0, 0)


@dataclass
class TrainState:
    """What the steps of one run share; each step fills in its part."""

    cfg: TrainConfig
    run: RunPaths
    info: DistInfo
    device: torch.device
    progress: bool
    resumed: dict | None = None  # last.pt of the run being resumed
    parts: list[SourcePart] = field(default_factory=list)  # one per training source
    train_recs: list[Record] = field(default_factory=list)  # all sources', in order
    val_recs: list[Record] = field(default_factory=list)
    train_ages: np.ndarray | None = None
    model: AgeGenderNet | None = None
    eval_model: torch.nn.Module | None = None  # the weight average when there is one, else the model
    train_model: torch.nn.Module | None = None  # the model as trained: wrapped by DDP / compile
    ema: torch.optim.swa_utils.AveragedModel | None = None
    train_loader: DataLoader | None = None
    val_ds: Dataset | None = None
    val_loader: DataLoader | None = None
    loss_fn: MultiTaskLoss | DistillLoss | None = None
    teacher: AgeGenderNet | None = None  # with --distill: frozen, in eval mode
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 1
    best_score: float = math.inf
    # The last epoch whose last.pt is on disk. Ctrl-C may land anywhere (training, validation, a save, the
    # plot); what is reported and kept follows what was written, not where the signal fell.
    completed: int = 0
    training: dict = field(default_factory=dict)
    unreadable: int = 0  # images the decode cache could not use (left out of every epoch)


def fit(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train according to ``cfg``; returns the final training summary (also saved in the checkpoints).

    Under ``torchrun`` every process trains a shard of each epoch (DistributedDataParallel); validation
    predictions are gathered so all ranks see the same figures, and only rank 0 writes files.
    """
    info, device = setup(resolve_device(cfg.device))
    try:
        st = TrainState(cfg, RunPaths(Path(cfg.out)), info, device, progress)
        open_run_folder(st, resume)
        split_data(st)
        build_model(st)
        build_loaders(st)
        build_optimisation(st)
        restore_training_state(st)
        train_epochs(st)
        calibrate_best(st)
        return st.training
    finally:
        cleanup()


def open_run_folder(st: TrainState, resume: bool) -> None:
    """Create (or tidy) the run folder; on resume, read last.pt and the run's own config."""
    if st.info.is_main:
        st.run.root.mkdir(parents=True, exist_ok=True)
        # A process killed mid-write leaves its temporary file behind (never a torn checkpoint): tidy up.
        for stale in st.run.root.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    if resume:
        if not st.run.last.exists():
            raise FileNotFoundError(f"--resume: no {st.run.last} to resume from")
        st.resumed = load_checkpoint(st.run.last)
        check_resumable(st.resumed, st.run.last)
        st.cfg = resume_config(st.cfg, st.resumed["training"]["config"])
        log.info("resuming %s from epoch %d", st.run.root, st.resumed["training"]["epoch"])
    seed_everything(st.cfg.seed)


def resume_config(cfg: TrainConfig, saved: dict) -> TrainConfig:
    """The run's own config ``saved``, with only :data:`RESUMABLE` options taken from ``cfg``; any other option
    of ``cfg`` that is set and differs is an error (a resumed run must continue the same recipe)."""
    merged = dict(saved)
    for key, value in cfg.to_dict().items():
        if key in RESUMABLE:
            merged[key] = value
        elif value is not None and key in merged and merged[key] != value:
            raise ValueError(f"--resume: {key}={value!r} differs from the run being resumed ({merged[key]!r})")
    try:
        return TrainConfig(**merged).validate()
    except TypeError as e:  # keys this version does not know
        raise CheckpointError(f"--resume: the run's saved config cannot be used: {e}") from None


def split_data(st: TrainState) -> None:
    """Scan each source and split it on its own (or read the splits of the run being resumed); training and
    validation pool the sources."""
    st.parts = [split_source(st, i, source) for i, source in enumerate(st.cfg.source_list())]
    for part in st.parts:
        start = len(st.val_recs)
        st.train_recs += part.train
        st.val_recs += part.val
        part.val_span = (start, len(st.val_recs))
    if not st.train_recs:
        raise DataError("the training subset is empty: use more images or a larger train fraction")
    if not st.val_recs:
        log.warning("no validation subset (split %s): best.pt will be the last epoch's model", st.cfg.split)
    log.info("split %s: %s; device %s; %d process(es)", st.cfg.split,
             "; ".join(f"{p.source.key} {p.counts}" for p in st.parts), st.device, st.info.world_size)
    ages = np.array([r.age for r in st.train_recs], float)
    st.train_ages = ages[~np.isnan(ages)] if not np.isnan(ages).all() else np.array([33.0, 13.0, 53.0])


def split_source(st: TrainState, index: int, source: S.Source) -> SourcePart:
    cfg = st.cfg
    records = S.limit_records(S.scan(source.data, source.labels).records, cfg.limit, cfg.seed)
    split_file = st.run.root / S.split_file_name(index, source)
    if st.resumed is not None and split_file.exists():
        split = S.read_split(split_file)
    else:
        split = S.stratified_split(records, S.parse_split(cfg.split), cfg.seed)
        if st.info.is_main:
            S.write_split(split_file, split)
    counts = {s: sum(1 for v in split.values() if v == s) for s in S.SUBSETS}
    return SourcePart(source, records, S.select(records, split, "train"), S.select(records, split, "val"), counts,
                      data_fingerprint(source.data, records), split_file.name)


def build_model(st: TrainState) -> None:
    """The network: resumed, fine-tuned from ``--init``, or new (ImageNet or random backbone); then the
    resolved config (with the network's input size) is written to the run folder."""
    cfg = st.cfg
    init = None
    if st.resumed is not None:
        mcfg = ModelConfig.from_dict(dict(st.resumed["model_config"]))
    elif cfg.init:
        init = load_checkpoint(resolve_model_path(cfg.init))
        mcfg = init_model_config(init, cfg)
        log.info("fine-tuning from %s (%s, %d px)", cfg.init, mcfg.backbone, mcfg.image_size)
    else:
        framing = {k: v for k, v in (("image_size", cfg.image_size), ("crop_pct", cfg.crop_pct)) if v is not None}
        mcfg = ModelConfig(backbone=cfg.backbone, head_hidden=cfg.head_hidden, dropout=cfg.dropout,
                           age_mean=float(st.train_ages.mean()), age_std=float(max(st.train_ages.std(), 1.0)),
                           age_head=_age_head(cfg), **framing)
    if cfg.distill:  # before the decode cache is built: a teacher that cannot teach fails in seconds
        st.teacher = load_teacher(cfg.distill, mcfg, st.device)
    # Every rank starts from the same weights: same seed, and DDP broadcasts rank 0's at wrap time anyway.
    pretrained = cfg.pretrained if st.resumed is None and init is None else None
    model = AgeGenderNet(mcfg, pretrained=pretrained).to(st.device)
    if init is not None:
        model.load_state_dict(init["model_state"])
    if st.device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    st.model = model
    st.cfg = dataclasses.replace(cfg, image_size=mcfg.image_size, crop_pct=mcfg.crop_pct)
    if st.info.is_main:
        st.cfg.save(st.run.config)


def _age_head(cfg: TrainConfig) -> str:
    return "dldl" if cfg.age_loss == "dldl" else "regression"


def init_model_config(init: dict, cfg: TrainConfig) -> ModelConfig:
    """A fine-tune keeps the network it starts from (its size, head and age normalisation), except its input
    framing where ``cfg`` sets one: global pooling makes the input size free, so a fine-tune may move to a
    higher resolution (FixRes-style). An age map belongs to the network it was fitted on: it is dropped."""
    mcfg = ModelConfig.from_dict(dict(init["model_config"]))
    framing = {k: v for k, v in (("image_size", cfg.image_size), ("crop_pct", cfg.crop_pct)) if v is not None}
    mcfg = dataclasses.replace(mcfg, age_map=None, **framing)
    if mcfg.age_head != _age_head(cfg):
        raise ValueError(f"--init model has a {mcfg.age_head} age head; use a matching --age-loss")
    return mcfg


def build_loaders(st: TrainState) -> None:
    cfg, device = st.cfg, st.device
    workers = loader_workers(cfg.num_workers)
    preset = st.model.config.preset
    pairs = [make_datasets(cfg, p.source, preset, p.train, p.val, st.info, st.progress) for p in st.parts]
    st.unreadable = sum(int((~ds.readable).sum()) for pair in pairs for ds in pair if isinstance(ds, CachedFaceDataset))
    # Item indices then count through the pooled record lists (train_recs / val_recs), source after source.
    train_ds = concat_datasets([t for t, _ in pairs])
    st.val_ds = concat_datasets([v for _, v in pairs if v is not None]) if st.val_recs else None
    st.train_loader = make_loader(train_ds, cfg.batch_size, True, workers, device, st.info, cfg.seed)
    if st.val_ds is not None:
        st.val_loader = make_loader(st.val_ds, cfg.batch_size * 2, False, workers, device, st.info, cfg.seed)


def make_datasets(cfg: TrainConfig, source: S.Source, preset, train_recs: list[Record], val_recs: list[Record],
                  info: DistInfo, progress: bool) -> tuple[Dataset, Dataset | None]:
    """Training and validation datasets of one source: from the decode cache (rank 0 builds it, the others
    wait and reuse it), or decoding every image on every read (``cache: none``, the reference's pipeline)."""
    load = source.loader()
    train_tf = train_preset(preset, cfg.augment, cached=cfg.cache != "none", degrade=cfg.degrade,
                            old_print=cfg.old_print)
    if cfg.cache == "none":
        return (FaceDataset(source.data, train_recs, train_tf, load),
                FaceDataset(source.data, val_recs, eval_preset(preset), load) if val_recs else None)
    records = train_recs + val_recs
    shared_file = cfg.cache == "disk" and info.enabled
    if shared_file and not info.is_main:
        barrier(info)  # rank 0 writes the cache file first
    pixels, ok = build_cache(source.data, records, decode_preset(preset), preset.resize_size, cfg.cache, progress,
                             load)
    if shared_file and info.is_main:
        barrier(info)
    n = len(train_recs)
    train = CachedFaceDataset(pixels[:n], ok[:n], train_recs, train_tf)
    val = CachedFaceDataset(pixels[n:], ok[n:], val_recs, eval_preset(preset, cached=True)) if val_recs else None
    return train, val


def build_optimisation(st: TrainState) -> None:
    """Loss, optimiser, schedule, gradient scaler, the weight average and the model as trained."""
    cfg, model = st.cfg, st.model
    mcfg = model.config
    balance = None
    if cfg.age_balance > 0:
        balance = torch.from_numpy(age_balance_weights(st.train_ages, cfg.age_balance))
        log.info("age loss re-weighted (power %.2f): weight %.2f at 26, %.2f at 80", cfg.age_balance,
                 balance[26], balance[80])
    shift = None
    if cfg.age_prior_tau > 0:
        shift = torch.from_numpy(prior_logit_shift(st.train_ages, mcfg.max_age + 1, cfg.age_prior_tau))
        log.info("balanced softmax (tau %.2f): age logits shifted by %+.2f at 26, %+.2f at 1, %+.2f at 80 while "
                 "training", cfg.age_prior_tau, shift[26], shift[1], shift[80])
    st.loss_fn = MultiTaskLoss(mcfg.age_mean, mcfg.age_std, cfg.age_loss, cfg.age_weight, cfg.gender_weight,
                               balance, shift)
    if st.teacher is not None:
        st.loss_fn = DistillLoss(st.loss_fn, cfg.distill_weight)
    st.optimizer = make_optimizer(model, cfg)
    st.scheduler = make_scheduler(st.optimizer, cfg, len(st.train_loader))
    st.scaler = torch.amp.GradScaler("cuda", enabled=_use_amp(st) and not torch.cuda.is_bf16_supported())
    if cfg.ema > 0:
        st.ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    st.eval_model = st.ema.module if st.ema is not None else model
    st.train_model = model
    if st.info.enabled:
        st.train_model = DistributedDataParallel(
            model, device_ids=[st.device.index] if st.device.type == "cuda" else None)
    if cfg.compile:
        st.train_model = torch.compile(st.train_model)


def load_teacher(path: str, student: ModelConfig, device: torch.device) -> AgeGenderNet:
    """The frozen teacher of ``--distill``; ValueError where it cannot teach ``student`` (another crop, age head
    or age range: its targets would be for other pixels or another output). The input size may differ."""
    teacher, _ = load_model(resolve_model_path(path))
    for key in ("crop_pct", "age_head", "max_age"):
        if getattr(teacher.config, key) != getattr(student, key):
            raise ValueError(f"--distill teacher has {key}={getattr(teacher.config, key)!r}, the model trained "
                             f"{getattr(student, key)!r}: they must match")
    log.info("distilling from %s (mirror-averaged outputs)", path)
    return teacher.to(device).requires_grad_(False)  # load_model gives it in eval mode


def _use_amp(st: TrainState) -> bool:
    return st.cfg.amp and st.device.type == "cuda"


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


def restore_training_state(st: TrainState) -> None:
    """On resume: weights, optimiser, schedule, scaler, RNG, history and the best score so far."""
    ckpt = st.resumed
    st.completed = st.start_epoch - 1
    if ckpt is None:
        return
    try:
        st.model.load_state_dict(ckpt.get("train_model_state", ckpt["model_state"]))
        if st.ema is not None:
            st.ema.load_state_dict(ckpt["ema_state"])
        st.optimizer.load_state_dict(ckpt["optimizer_state"])
        st.scheduler.load_state_dict(ckpt["scheduler_state"])
        if "scaler_state" in ckpt:
            st.scaler.load_state_dict(ckpt["scaler_state"])
        torch.set_rng_state(ckpt["rng_state"])
        training = ckpt["training"]
        st.history = list(training.get("history", []))
        best = training.get("best", {}).get("value", training.get("best_val_age_mae"))
        st.best_score = math.inf if best is None else float(best)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{st.run.last}: its training state does not fit this run: {e}") from None
    st.start_epoch = training["epoch"] + 1
    st.completed = st.start_epoch - 1
    # The summary of the last saved epoch: what calibration and the final report need if no epoch is left.
    st.training = training
    if st.info.is_main and st.history:
        # A run killed between writing last.pt and metrics.csv left the table an epoch short.
        training_curves(write_metrics(st.run, st.history), st.run.curves)


def train_epochs(st: TrainState) -> None:
    """Train, validate and save each epoch; Ctrl-C keeps what is on disk consistent (see
    :func:`keep_interrupted`)."""
    try:
        for epoch in range(st.start_epoch, st.cfg.epochs + 1):
            row = train_and_validate(st, epoch)
            is_best = select_best(st, row)
            log_epoch(st, epoch, row)
            st.training = training_summary(st, epoch, row)
            with interrupts_held():  # best.pt, last.pt and ``completed`` change together or not at all
                if st.info.is_main:
                    save_checkpoints(st, is_best)
                st.completed = epoch
            if st.info.is_main:
                training_curves(write_metrics(st.run, st.history), st.run.curves)
            barrier(st.info)
    except KeyboardInterrupt:
        if st.info.is_main:
            keep_interrupted(st.run, st.eval_model, st.completed + 1, st.training)
        raise


def train_and_validate(st: TrainState, epoch: int) -> dict:
    """One epoch of training and, where there is a validation subset, its figures; appended to the history."""
    cfg, loader = st.cfg, st.train_loader
    # Re-seeding per epoch makes a resumed run shuffle exactly as an uninterrupted one would.
    loader.generator.manual_seed(cfg.seed * 1000 + epoch)
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    # Heads only at first: large gradients from fresh heads would otherwise wreck the trained features.
    st.model.backbone.requires_grad_(epoch > cfg.freeze_backbone_epochs)
    t0 = time.time()
    losses = train_one_epoch(st.train_model, loader, st.loss_fn, st.optimizer, st.device, epoch, st.scheduler,
                             st.scaler, _use_amp(st), cfg.grad_clip, st.progress and st.info.is_main, st.ema,
                             st.teacher)
    row = {"epoch": epoch, "train_loss": losses.get("loss", math.nan),
           "train_age_loss": losses.get("age_loss", math.nan),
           "train_gender_loss": losses.get("gender_loss", math.nan),
           "lr": st.optimizer.param_groups[0]["lr"]}
    if "distill_loss" in losses:
        row["train_distill_loss"] = losses["distill_loss"]
    if st.val_loader is not None:
        row |= validate(st, f"epoch {epoch} val")
    row["seconds"] = round(time.time() - t0, 1)
    st.history.append(row)
    return row


def validate(st: TrainState, desc: str) -> dict:
    """Validation figures, identical on every rank (predictions are gathered before scoring)."""
    out = predict_batches(st.eval_model, st.val_loader, st.device, _use_amp(st), st.cfg.flip_tta,
                          st.progress and st.info.is_main, desc=desc)
    out = gather_predictions(out, st.info)
    row = _val_figures(predictions_frame(out, st.val_recs), "val")
    if len(st.parts) > 1:
        for part in st.parts:
            inside = (out["index"] >= part.val_span[0]) & (out["index"] < part.val_span[1])
            some = {k: v[inside] for k, v in out.items()}
            row |= _val_figures(predictions_frame(some, st.val_recs), f"val_{part.source.key}")
    return row


def _val_figures(df: pd.DataFrame, prefix: str) -> dict:
    m = summarize(df["age_pred"], df["age_true"], df["p_female"], df["gender_true"])
    return {f"{prefix}_{k}": math.nan if m.get(k) is None else m[k]
            for k in ("age_mae", "balanced_age_mae", "worst_age_bias", "cs5", "gender_accuracy", "gender_mae")}


def selection_metric(row: dict, select: str = "balanced_age_mae") -> str:
    """The pooled validation figure best.pt is chosen by: ``select`` (balanced or plain age MAE), plain age MAE
    where validation has no age group large enough for the balanced figure, gender MAE where it has no ages.

    >>> selection_metric({"val_age_mae": 5.0, "val_balanced_age_mae": float("nan")})
    'val_age_mae'
    """
    for name in (f"val_{select}", "val_age_mae"):
        if not math.isnan(row.get(name, math.nan)):
            return name
    return "val_gender_mae"


def select_best(st: TrainState, row: dict) -> bool:
    """Whether this epoch's model is the best so far (always, without a validation subset)."""
    if st.val_loader is None:
        return True
    score = row.get(selection_metric(row, st.cfg.select), math.nan)
    if math.isnan(score) or score >= st.best_score:
        return False
    st.best_score = score
    return True


def log_epoch(st: TrainState, epoch: int, row: dict) -> None:
    summary = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch" and isinstance(v, float))
    if st.info.enabled:
        log.warning("rank %d epoch %d/%d  %s", st.info.rank, epoch, st.cfg.epochs, summary)
    else:
        log.info("epoch %d/%d  %s", epoch, st.cfg.epochs, summary)


def training_summary(st: TrainState, epoch: int, row: dict) -> dict:
    """What every checkpoint records about the run so far."""
    best = st.best_score if math.isfinite(st.best_score) else None
    metric = selection_metric(row, st.cfg.select)
    first = st.parts[0]
    return {
        "epoch": epoch, "config": st.cfg.to_dict(),
        "data_fingerprint": first.fingerprint, "metrics": row,
        "best": {"metric": metric, "value": best},
        "best_val_age_mae": best if metric == "val_age_mae" else None, "history": st.history,
        "split": {"file": first.split_file, "fractions": st.cfg.split, "seed": st.cfg.seed, "counts": first.counts},
        "sources": [{**p.source.to_dict(), "key": p.source.key, "fingerprint": p.fingerprint, "counts": p.counts,
                     "split_file": p.split_file} for p in st.parts],
        "torch_version": str(torch.__version__), "world_size": st.info.world_size,
        "unreadable_images": st.unreadable,
    }


def save_checkpoints(st: TrainState, is_best: bool) -> None:
    inference = {"flip_tta": st.cfg.flip_tta}
    # best.pt first: a crash between the two writes then loses no improvement.
    if is_best:
        save_checkpoint(make_checkpoint(st.eval_model, st.training, inference=inference), st.run.best)
    resume_state = {"optimizer_state": st.optimizer.state_dict(), "scheduler_state": st.scheduler.state_dict(),
                    "scaler_state": st.scaler.state_dict(), "rng_state": torch.get_rng_state()}
    if st.ema is not None:
        resume_state |= {"train_model_state": st.model.state_dict(), "ema_state": st.ema.state_dict()}
    save_checkpoint(make_checkpoint(st.eval_model, st.training, inference=inference, **resume_state), st.run.last)


def write_metrics(run: RunPaths, history: list[dict]) -> pd.DataFrame:
    hist = pd.DataFrame(history)
    atomic_write(run.metrics, lambda f: f.write(hist.to_csv(index=False).encode()))
    return hist


def keep_interrupted(run: RunPaths, eval_model: torch.nn.Module, epoch: int, training: dict) -> None:
    """After Ctrl-C in ``epoch``: last.pt stays the last complete epoch (what --resume continues from); the
    partial epoch's weights are kept beside it, and metrics.csv is brought in line with last.pt."""
    partial = make_checkpoint(eval_model, {**training, "interrupted_in_epoch": epoch})
    save_checkpoint(partial, run.root / "interrupted.pt")
    done = [h for h in training.get("history", []) if h["epoch"] < epoch]
    if done:
        write_metrics(run, done)
    log.warning("interrupted in epoch %d: %s holds the last complete epoch (resume with --resume); "
                "the partial epoch's weights are in %s", epoch, run.last, run.root / "interrupted.pt")


def calibrate_best(st: TrainState) -> None:
    """Fit best.pt's age interval (and age map, if asked) on the whole validation subset, on rank 0."""
    cfg, run = st.cfg, st.run
    if st.val_loader is None or not st.training:
        return
    if st.resumed is not None and st.start_epoch > cfg.epochs:
        if "calibration" in load_checkpoint(run.best):
            log.info("all %d epochs were done and %s is calibrated: nothing to do", cfg.epochs, run.best)
            return
        # Killed after the last epoch but before (or during) calibration: finish the run now.
        log.warning("%s was never calibrated (the run stopped after its last epoch): calibrating it now", run.best)
    barrier(st.info)
    if st.info.is_main:
        # Rank 0 alone sees the whole validation subset here, so the loader is not sharded.
        loader = make_loader(st.val_ds, cfg.batch_size * 2, False, loader_workers(cfg.num_workers), st.device)
        try:
            calibrate(run.best, loader, st.val_recs, st.device, cfg.interval_coverage, st.progress, cfg.age_map)
        except KeyboardInterrupt:
            log.warning("interrupted while fitting the age interval: all %d epochs are saved, but %s has "
                        "no interval yet; fit it with: python scripts/recalibrate.py --model %s --data %s "
                        "--split-file %s %s%s", st.training["epoch"], run.best, run.best, st.parts[0].source.data,
                        run.split, "--tta" if cfg.flip_tta else "--no-tta", " --age-map" if cfg.age_map else "")
            raise
    barrier(st.info)
