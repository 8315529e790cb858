"""One epoch of training and one pass of inference, with every object passed in explicitly."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from agegender.errors import NonFiniteLossError


def autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def train_one_epoch(
    model: torch.nn.Module,
    loader: Iterable,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    grad_clip: float = 0.0,
    progress: bool = True,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    teacher: torch.nn.Module | None = None,
) -> dict[str, float]:
    """Train for one pass over ``loader``; ``scheduler`` (if any) steps once per batch.

    Batches are ``(images [B,3,H,W], {"age": [B], "gender": [B]}, index [B])`` or ``None`` (all unreadable).
    ``ema`` (if any) is updated after every optimiser step. With a ``teacher`` (distillation), ``loss_fn`` is
    called as ``loss_fn(out, targets, teacher_targets(teacher, images))``. Returns the mean of each loss term.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()  # a frozen layer keeps its running statistics too, or a small fine-tune set would shift them
    totals: dict[str, float] = {}
    seen = 0
    bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=None if progress else True, dynamic_ncols=True)
    for batch in bar:
        # BatchNorm cannot train on one image: a batch that unreadable files left with one (or none) is skipped.
        if batch is None or len(batch[0]) < 2:
            continue
        images, targets, _ = batch
        images = images.to(device, non_blocking=True)
        targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
        with autocast(device, amp):
            out = model(images)
            taught = None if teacher is None else teacher_targets(teacher, images)
        losses = loss_fn(out, targets) if taught is None else loss_fn(out, targets, taught)
        loss = losses["loss"]
        if not math.isfinite(loss.item()):
            raise NonFiniteLossError(
                f"loss became {loss.item()} in epoch {epoch}; lower --lr or check the data. "
                "The last good checkpoint is kept."
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            if grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        if scheduler is not None:
            scheduler.step()
        n = images.shape[0]
        seen += n
        for k, v in losses.items():
            totals[k] = totals.get(k, 0.0) + v.item() * n
        bar.set_postfix(loss=f"{totals['loss'] / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    return {k: v / max(seen, 1) for k, v in totals.items()}


def forward_tta(model: torch.nn.Module, images: torch.Tensor, flip_tta: bool = False) -> dict[str, torch.Tensor]:
    """``{"age", "age_sigma", "gender_logit"}``, each ``[B]`` float32, for ``images`` ``[B, 3, H, W]``; with
    ``flip_tta`` each is the mean over the image and its mirror image (the gender logit is averaged before
    the sigmoid)."""
    keys = ("age", "age_sigma", "gender_logit")
    out = model(images)
    out = {k: out[k].float() for k in keys}
    if flip_tta:
        mirrored = model(torch.flip(images, dims=[3]))
        out = {k: (out[k] + mirrored[k].float()) / 2 for k in keys}
    return out


def teacher_targets(teacher: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a student learns from ``teacher`` on ``images`` ``[B, 3, H, W]``: the teacher's outputs averaged
    over each image and its mirror image, so one pass of the student can stand in for two of the teacher. A
    teacher whose ``config.image_size`` differs sees the batch resized to it (the same crop, so a smaller, cheaper
    student can learn from a larger teacher).

    Returns ``{"age_prob": [B, K]}`` (a dldl teacher: the mean of the two softmaxes) or ``{"age_norm": [B]}``
    (a regression teacher), and ``{"gender_logit": [B]}`` (the mean of the two logits, as predicted).
    """
    size = getattr(getattr(teacher, "config", None), "image_size", images.shape[-1])
    with torch.no_grad():
        if images.shape[-1] != size:  # a teacher at another input size sees the same crop, resampled
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        a, b = teacher(images), teacher(torch.flip(images, dims=[3]))
    out = {"gender_logit": (a["gender_logit"].float() + b["gender_logit"].float()) / 2}
    if "age_logits" in a:
        out["age_prob"] = (torch.softmax(a["age_logits"].float(), -1) + torch.softmax(b["age_logits"].float(), -1)) / 2
    else:
        out["age_norm"] = (a["age_norm"].float() + b["age_norm"].float()) / 2
    return out


@torch.inference_mode()
def predict_batches(
    model: torch.nn.Module,
    loader: Iterable,
    device: torch.device,
    amp: bool = False,
    flip_tta: bool = False,
    progress: bool = True,
    desc: str = "predict",
) -> dict[str, np.ndarray]:
    """Run the model over ``loader``; returns ``{"index", "age", "age_sigma", "p_female"}`` arrays
    (unreadable items absent).

    ``flip_tta`` averages the outputs for the image and its mirror image.
    """
    model.eval()
    idx, ages, sigmas, probs = [], [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if progress else True, dynamic_ncols=True):
        if batch is None:
            continue
        images, _, index = batch
        images = images.to(device, non_blocking=True)
        with autocast(device, amp):
            out = forward_tta(model, images, flip_tta)
        idx.append(index.numpy())
        ages.append(out["age"].cpu().numpy())
        sigmas.append(out["age_sigma"].cpu().numpy())
        probs.append(torch.sigmoid(out["gender_logit"]).cpu().numpy())
    if not idx:
        return {"index": np.zeros(0, int), "age": np.zeros(0), "age_sigma": np.zeros(0), "p_female": np.zeros(0)}
    return {"index": np.concatenate(idx), "age": np.concatenate(ages), "age_sigma": np.concatenate(sigmas),
            "p_female": np.concatenate(probs)}


