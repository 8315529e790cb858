"""Measure accuracy levers on a short proxy run each: one row per change, validation and test figures, time.

    python benchmarks/levers.py --data UTKFACE_DIR --out runs/levers [--limit 5000 --epochs 3 --image-size 96]

Runs already finished in --out are reused, so the script can be stopped and started again. ImageNet weights
come from torch's cache (TORCH_HOME); nothing is downloaded where the file is already there.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from agegender.cli import main as cli

_ROW6 = ["--backbone", "mobilenet_v2", "--pretrained", "imagenet", "--age-loss", "dldl", "--optimizer", "adamw",
         "--weight-decay", "0.05", "--warmup-epochs", "0.5"]
LEVERS: list[tuple[str, list[str]]] = [
    ("reference: resnet18 from scratch, MSE, Adam, constant lr",
     ["--backbone", "resnet18", "--pretrained", "none", "--age-loss", "mse", "--schedule", "none"]),
    ("mobilenet_v2 ImageNet, MSE, cosine", ["--backbone", "mobilenet_v2", "--pretrained", "imagenet",
                                            "--age-loss", "mse"]),
    ("mobilenet_v2 ImageNet, L1, cosine", ["--backbone", "mobilenet_v2", "--pretrained", "imagenet",
                                           "--age-loss", "l1"]),
    ("mobilenet_v2 ImageNet, DLDL, cosine", ["--backbone", "mobilenet_v2", "--pretrained", "imagenet",
                                             "--age-loss", "dldl"]),
    ("mobilenet_v2 ImageNet, DLDL, cosine, EMA 0.99", ["--backbone", "mobilenet_v2", "--pretrained", "imagenet",
                                                       "--age-loss", "dldl", "--ema", "0.99"]),
    ("mobilenet_v2 ImageNet, DLDL, cosine, AdamW wd 0.05, warm-up 0.5", _ROW6),
    ("row 6 without colour jitter (--augment 0)", [*_ROW6, "--augment", "0"]),
    ("row 6 with doubled colour jitter (--augment 2)", [*_ROW6, "--augment", "2"]),
    ("row 6 with the gender loss weighted 2x (--gender-weight 2)", [*_ROW6, "--gender-weight", "2"]),
]


def _evaluate(run: Path, data: str, subset: str, tta: bool) -> dict:
    name = f"{subset}{'_tta' if tta else ''}"
    report = run / f"{name}.json"
    if not report.exists():
        rc = cli(["evaluate", "--model", str(run / "best.pt"), "--data", data, "--split-file",
                  str(run / "split.csv"), "--subset", subset, "--out", str(report), "--tta" if tta else "--no-tta",
                  "-q"])
        if rc != 0:
            raise SystemExit(f"evaluate failed for {run}")
    return json.loads(report.read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="runs/levers")
    ap.add_argument("--limit", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--only", type=int, nargs="*", help="run only these lever numbers (1-based)")
    args = ap.parse_args(argv)
    common = ["--data", args.data, "--limit", str(args.limit), "--epochs", str(args.epochs), "--image-size",
              str(args.image_size), "--seed", "0", "-q"]
    rows = []
    for i, (label, extra) in enumerate(LEVERS, 1):
        if args.only and i not in args.only:
            continue
        run = Path(args.out) / f"lever{i}"
        t0 = time.time()
        needs_training = not (run / "best.pt").exists() or not (run / "test.json").exists()
        if needs_training and cli(["train", "--out", str(run), *common, *extra]) != 0:
            raise SystemExit(f"training failed for lever {i}")
        minutes = (time.time() - t0) / 60
        timing = run / "minutes.txt"
        if not timing.exists():
            timing.write_text(f"{minutes:.1f}")
        for tta in (False, True) if "dldl" in extra else (False,):
            val, test = _evaluate(run, args.data, "val", tta), _evaluate(run, args.data, "test", tta)
            rows.append((i, label + (" + flip TTA" if tta else ""), val, test, timing.read_text(),
                         "train " + " ".join(shlex.quote(a) for a in extra)))
    print(f"# {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"# proxy: {args.limit} images, {args.epochs} epochs, {args.image_size} px, seed 0, split 0.8/0.1/0.1")
    print("| # | change | val age MAE | val gender acc | test age MAE | test CS@5 | test gender acc | "
          "test gender MAE | train min |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, label, val, test, minutes, _ in rows:
        print(f"| {i} | {label} | {val['age_mae']:.2f} | {100 * val['gender_accuracy']:.1f}% | {test['age_mae']:.2f} "
              f"| {test['cs5']:.1f}% | {100 * test['gender_accuracy']:.1f}% | {test['gender_mae']:.3f} | {minutes} |")


if __name__ == "__main__":
    main()
