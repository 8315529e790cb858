"""Does the input pipeline keep the model fed? Trainer images/s against the bare model's, and against the
reference pipeline (PIL decode + transforms per item every epoch, batch 32, no workers).

    python benchmarks/throughput.py --data UTKFACE_DIR [--backbone resnet18] [--sizes 64 96 128] [--n 1024]

For each input size: (a) the bare model's forward+backward images/s on synthetic tensors; (b) the trainer's
images/s with the decode cache (train_one_epoch over a real DataLoader; the cache is built first and not
timed); (c) the reference pipeline's images/s with the same model, size and loss. Epoch time is extrapolated
from (b) to the 15,154 training images of an 80% split of our UTKFace copy. Peak RSS is the process's
(and its loader workers') high-water mark.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

from agegender.data import records as D
from agegender.data.cache import build_cache
from agegender.model.config import ModelConfig, PresetConfig
from agegender.model.network import AgeGenderNet
from agegender.training.datasets import CachedFaceDataset, FaceDataset, loader_workers, make_loader
from agegender.training.engine import train_one_epoch
from agegender.training.losses import MultiTaskLoss
from agegender.training.transforms import decode_preset, train_preset

TRAIN_IMAGES = 15154


def bare(model: torch.nn.Module, loss_fn: MultiTaskLoss, size: int, batch: int, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.randn(batch, 3, size, size)
    t = {"age": torch.rand(batch) * 80, "gender": (torch.rand(batch) > 0.5).float()}
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps
            t0 = time.perf_counter()
        loss = loss_fn(model(x), t)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def through_loader(model: torch.nn.Module, loss_fn: MultiTaskLoss, loader) -> float:
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    t0 = time.perf_counter()
    train_one_epoch(model, loader, loss_fn, opt, torch.device("cpu"), 0, progress=False)
    n = len(loader) * loader.batch_size if loader.drop_last else len(loader.dataset)
    return n / (time.perf_counter() - t0)


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    ap.add_argument("--n", type=int, default=1024, help="images per timed pass")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=-1)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    records = D.scan_utkface(args.data).records[: args.n]
    workers = loader_workers(args.workers)
    rows = []
    for size in args.sizes:
        preset = PresetConfig(image_size=size, crop_pct=0.9)
        cfg = ModelConfig(backbone=args.backbone, image_size=size)
        model = AgeGenderNet(cfg).train()
        loss_fn = MultiTaskLoss(cfg.age_mean, cfg.age_std, "mse")
        bare_ips = bare(model, loss_fn, size, args.batch_size, max(3, args.n // args.batch_size // 2))
        pixels, ok = build_cache(args.data, records, decode_preset(preset), preset.resize_size, "memory",
                                 progress=False)
        ours = make_loader(CachedFaceDataset(pixels, ok, records, train_preset(preset, cached=True)),
                           args.batch_size, True, workers, torch.device("cpu"))
        ours_ips = through_loader(model, loss_fn, ours)
        ref = make_loader(FaceDataset(args.data, records, train_preset(preset)), 32, True, 0,
                          torch.device("cpu"))
        ref_ips = through_loader(model, loss_fn, ref)
        rows.append((size, bare_ips, ours_ips, ref_ips, TRAIN_IMAGES / ours_ips / 60, peak_rss_mb()))
    print(f"$ {' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}")
    print(f"{args.backbone}, batch {args.batch_size} (reference: batch 32, no workers), {workers} loader "
          f"worker(s), {torch.get_num_threads()} torch threads, {args.n} images per pass, CPU")
    print("| size | bare fwd+bwd img/s | trainer img/s | trainer / bare | reference img/s | ours / reference | "
          "epoch min (15,154 img) | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for size, b, o, r, epoch_min, rss in rows:
        print(f"| {size} | {b:.1f} | {o:.1f} | {o / b:.2f} | {r:.1f} | {o / r:.2f} | {epoch_min:.1f} | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
