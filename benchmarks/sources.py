"""A model's figures on each training source's validation (or test) subset, clean and degraded, by age group.

    python benchmarks/sources.py --utk UTKFACE_DIR --aaf AAF_DIR [--model CKPT] [--subset val] [--out runs/sources]

Each source's split is recreated from the checkpoint (agegender.data.sources.folder_split: as training split it, or for
a folder the model never trained on its own seeded split 0.8,0.1,0.1, so every model is scored on the same
images). UTKFace crops are read as they are; AAF photos (AAF_DIR holds images/ and labels.csv) are detected and
aligned first (largest face, faces >= 60 px). "Degraded" scores the fixed damaged copy of each face (greyscale,
a third of the size, blurred, JPEG quality 30; agegender.evaluation.damage.degrade_fixed). Prints, per source, the
headline figures and the mean signed error of each age group, and the largest |bias| over the groups with at
least 50 images.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from agegender.data.sources import Source, folder_split, select
from agegender.evaluation.evaluate import evaluate, write_report
from agegender.inference.predictor import Predictor
from agegender.model.checkpoint import load_checkpoint, resolve_model_path

MIN_GROUP = 50  # groups smaller than this are shown but not counted in the largest bias


def figures(rep: dict) -> dict:
    groups = {k: g for k, g in rep["groups"]["age"].items() if g.get("age_bias") is not None}
    counted = [abs(g["age_bias"]) for g in groups.values() if g["n"] >= MIN_GROUP]
    return {"n": rep["n"], "mae": rep["age_mae"], "bias": rep["age_bias"], "cs5": rep["cs5"],
            "gender": 100 * rep["gender_accuracy"], "max_bias": max(counted) if counted else float("nan"),
            "groups": {k: (g["n"], g["age_mae"], g["age_bias"], 100 * g["gender_accuracy"]) for k, g in groups.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utk", help="UTKFace folder")
    ap.add_argument("--aaf", help="All-Age-Faces folder (images/ and labels.csv)")
    ap.add_argument("--model", help="checkpoint (default: the bundled model)")
    ap.add_argument("--subset", default="val", choices=["val", "test"])
    ap.add_argument("--out", default="runs/sources")
    args = ap.parse_args(argv)
    t0 = time.time()
    model = resolve_model_path(args.model)
    ckpt = load_checkpoint(model)
    predictor = Predictor.from_checkpoint(model, device="auto")
    sources = []
    if args.utk:
        sources.append(Source(args.utk, name="UTKFace"))
    if args.aaf:
        sources.append(Source(str(Path(args.aaf) / "images"), str(Path(args.aaf) / "labels.csv"), True, "largest",
                              60, "AAF"))
    out = Path(args.out)
    results = {}
    for source in sources:
        records, split, _ = folder_split(ckpt, source.data, source.labels)
        records = select(records, split, args.subset)
        for degraded in (False, True):
            df, rep = evaluate(predictor, source.data, records, detect=source.detect, face=source.face,
                               min_face=source.min_face, degrade=degraded, progress=False)
            name = f"{source.key}_{args.subset}{'_degraded' if degraded else ''}"
            write_report(df, rep, out / f"{name}.json", title=name)
            results[name] = figures(rep)
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    print(f"$ {' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}")
    print(f"model {model}; {args.subset} subsets; flip TTA {predictor.flip_tta}")
    print("| source | n | age MAE | bias | CS@5 | gender acc | degraded MAE | degraded gender acc | "
          f"largest group |bias| (n >= {MIN_GROUP}) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for source in sources:
        clean, bad = results[f"{source.key}_{args.subset}"], results[f"{source.key}_{args.subset}_degraded"]
        print(f"| {source.key} | {clean['n']} | {clean['mae']:.2f} | {clean['bias']:+.2f} | {clean['cs5']:.1f}% | "
              f"{clean['gender']:.2f}% | {bad['mae']:.2f} ({bad['mae'] - clean['mae']:+.2f}) | {bad['gender']:.2f}% | "
              f"{clean['max_bias']:.2f} |")
    for source in sources:
        groups = results[f"{source.key}_{args.subset}"]["groups"]
        print(f"\n{source.key} {args.subset} by age group: | group | n | age MAE | bias | gender acc |")
        for name, (n, mae, bias, gender) in groups.items():
            print(f"| {name} | {n} | {mae:.2f} | {bias:+.2f} | {gender:.1f}% |")
    print(f"({time.time() - t0:.0f} s; reports in {out}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
