"""Fine-tuning on your own data, shown with a real example: one age group only.

    python benchmarks/finetune.py --data UTKFACE_DIR [--model CKPT] [--min-age 60 --max-age 120] [--epochs 4]

Takes the group (min-age <= age <= max-age) from the model's own held-out test subset (images it never trained
on), writes it as a labels file (file,age,gender), fine-tunes the model on it with `agegender train --init`
(its own 60/20/20 split of the group, heads only for the first epoch), and reports, before and after: the
group's validation and test subsets, and the rest of the model's test subset, to show what the fine-tune costs
elsewhere.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from agegender.cli import main as cli
from agegender.data.sources import read_split, scan, select, split_from_checkpoint
from agegender.evaluation.evaluate import evaluate, write_report
from agegender.inference.predictor import Predictor
from agegender.model.checkpoint import load_checkpoint, resolve_model_path


def _evaluate(model: Path, data: str, labels: Path, out: Path, split: Path | None = None, subset: str = "") -> dict:
    records = scan(data, str(labels)).records
    if split:
        records = select(records, read_split(split), subset)
    df, rep = evaluate(Predictor.from_checkpoint(model), data, records, progress=False)
    write_report(df, rep, out)
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the UTKFace folder the model was trained on")
    ap.add_argument("--model", help="starting checkpoint (default: the bundled model)")
    ap.add_argument("--out", default="runs/finetune")
    ap.add_argument("--min-age", type=int, default=60)
    ap.add_argument("--max-age", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args(argv)
    t0 = time.time()
    model = resolve_model_path(args.model)
    records, split, _ = split_from_checkpoint(load_checkpoint(model), args.data)
    test = [r for r in records if split[r.file] == "test"]
    group = [r for r in test if args.min_age <= r.age <= args.max_age]
    others = [r for r in test if not args.min_age <= r.age <= args.max_age]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, recs in (("group", group), ("rest", others)):
        pd.DataFrame({"file": [r.file for r in recs], "age": [r.age for r in recs],
                      "gender": [["male", "female"][int(r.gender)] for r in recs]}).to_csv(
            out / f"{name}.csv", index=False)
    run = out / "run"
    train = ["train", "--data", args.data, "--labels", str(out / "group.csv"), "--out", str(run), "--init",
             str(model), "--age-loss", load_checkpoint(model)["training"]["config"]["age_loss"], "--epochs",
             str(args.epochs), "--freeze-backbone-epochs", "1", "--lr", str(args.lr), "--split", "0.6,0.2,0.2",
             "--batch-size", "32", "--cache", "memory", "-q"]
    # Predict the same way as the starting model (mirror averaging or not), so before and after compare.
    if load_checkpoint(model).get("inference", {}).get("flip_tta"):
        train.append("--flip-tta")
    if not (run / "best.pt").exists() and cli(train) != 0:
        raise SystemExit("fine-tune failed")
    rows = []
    for label, ckpt in (("before (starting model)", model), ("after fine-tune", run / "best.pt")):
        tag = "before" if ckpt == model else "after"
        kv = _evaluate(ckpt, args.data, out / "group.csv", out / f"{tag}_group_val.json", run / "split.csv", "val")
        kt = _evaluate(ckpt, args.data, out / "group.csv", out / f"{tag}_group_test.json", run / "split.csv",
                       "test")
        rest = _evaluate(ckpt, args.data, out / "rest.csv", out / f"{tag}_rest.json")
        rows.append((label, kv, kt, rest))
    print(f"$ {' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}")
    print(f"fine-tune command: agegender {' '.join(shlex.quote(a) for a in train)}")
    print(f"{len(group)} images aged {args.min_age}-{args.max_age} from the starting model's test subset, split "
          f"60/20/20; {len(others)} other test images for the 'rest' column")
    print("| model | group val MAE | group test MAE | group test bias | group test gender acc | rest MAE | "
          "rest gender acc |")
    print("|---|---|---|---|---|---|---|")
    for label, kv, kt, rest in rows:
        print(f"| {label} | {kv['age_mae']:.2f} (n={kv['n']}) | {kt['age_mae']:.2f} (n={kt['n']}) | "
              f"{kt['age_bias']:+.2f} | {100 * kt['gender_accuracy']:.1f}% | {rest['age_mae']:.2f} (n={rest['n']}) | "
              f"{100 * rest['gender_accuracy']:.1f}% |")
    print(f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
