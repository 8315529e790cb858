"""Reproduce a model's test-split figures from the checkpoint alone (the bundled model by default).

    python benchmarks/accuracy.py --data UTKFACE_DIR [--model CKPT] [--out runs/accuracy]

The checkpoint records its split (fractions, seed, image limit) and the fingerprint of the data it was trained
on; the split is recomputed from those, checked against the fingerprint, and the test subset evaluated with the
same code as `agegender evaluate` (agegender.evaluation.evaluate.evaluate). Prints the headline figures, the per-bucket
error and bias, the interval coverage and the gender calibration error.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from agegender.data.sources import select, split_from_checkpoint, write_split
from agegender.evaluation.evaluate import evaluate, write_report
from agegender.inference.predictor import Predictor
from agegender.model.checkpoint import load_checkpoint, resolve_model_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the UTKFace folder the model was trained on")
    ap.add_argument("--model", help="checkpoint (default: the bundled model)")
    ap.add_argument("--out", default="runs/accuracy")
    args = ap.parse_args(argv)
    t0 = time.time()
    model = resolve_model_path(args.model)
    ckpt = load_checkpoint(model)
    all_records, split, same_data = split_from_checkpoint(ckpt, args.data)
    if not same_data:
        print("warning: this folder's fingerprint differs from the training data's: the test subset may not be "
              "the one held out in training")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_split(out / "split.csv", split)
    records = select(all_records, split, "test")
    df, r = evaluate(Predictor.from_checkpoint(model, device="auto"), args.data, records, progress=False)
    write_report(df, r, out / "REPORT.json", out / "PREDS.csv", "test subset")
    print(f"$ {' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}")
    print(f"model {model} ({ckpt['model_config']['backbone']}, {ckpt['model_config']['image_size']} px), "
          f"test subset n={r['n']}")
    print(f"age MAE {r['age_mae']:.2f}  RMSE {r['age_rmse']:.2f}  bias {r['age_bias']:+.2f}  CS@5 {r['cs5']:.1f}%  "
          f"gender accuracy {100 * r['gender_accuracy']:.2f}%  gender MAE {r['gender_mae']:.3f}  "
          f"AUC {r['gender_auc']:.4f}  gender ECE {r['gender_ece']:.3f}")
    if "age_interval" in r:
        iv = r["age_interval"]
        print(f"{100 * iv['target_coverage']:.0f}% age interval: coverage {100 * iv['coverage']:.1f}%, "
              f"mean width {iv['mean_width']:.1f} years")
    print("| group | n | age MAE | bias (mean signed error) | CS@5 | gender acc |")
    print("|---|---|---|---|---|---|")
    for kind in ("age", "gender", "race"):
        for name, g in r["groups"][kind].items():
            print(f"| {kind} {name} | {g['n']} | {g['age_mae']:.2f} | {g['age_bias']:+.2f} | {g['cs5']:.1f}% | "
                  f"{100 * g['gender_accuracy']:.1f}% |")
    print(f"({time.time() - t0:.0f} s; report, predictions and plots in {out}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
