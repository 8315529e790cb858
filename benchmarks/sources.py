"""A model's figures on each training source's validation (or test) subset: clean, degraded and old-print copies,
every age group counted the same.

    python benchmarks/sources.py --utk UTKFACE_DIR --aaf AAF_DIR [--model CKPT] [--subset val] [--out runs/sources]
                                 [--damages degraded,old_print]

Each source's split is recreated from the checkpoint (agegender.data.sources.folder_split: as training split it, or
for a folder the model never trained on its own seeded split 0.8,0.1,0.1, so every model is scored on the same
images). UTKFace crops are read as they are; AAF photos (AAF_DIR holds images/ and labels.csv) are detected and
aligned first (largest face, faces >= 60 px). "Degraded" and "old print" score the fixed damaged copy of each face
(agegender.evaluation.damage: greyscale, a third of the size, blurred, JPEG quality 30; or sepia, faded, grainy,
small, dark corners). Prints, per source and copy: age MAE, balanced MAE (the mean of the age groups' MAEs over
groups of at least 20 images), the mean signed error, the largest |group bias| over groups of at least 50 images,
gender accuracy overall and for children 0-9; then each age group's MAE and bias per copy.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from agegender.data.sources import Source, folder_split, select
from agegender.evaluation.evaluate import evaluate, write_report
from agegender.evaluation.metrics import balanced_age_figures
from agegender.inference.predictor import Predictor
from agegender.model.checkpoint import load_checkpoint, resolve_model_path

MIN_GROUP = 50  # groups smaller than this are shown but not counted in the largest bias
CHILDREN = ("0-2", "3-9")


def figures(df, rep: dict) -> dict:
    groups = {k: g for k, g in rep["groups"]["age"].items() if g.get("age_bias") is not None}
    counted = {k: g["age_bias"] for k, g in groups.items() if g["n"] >= MIN_GROUP}
    worst = max(counted, key=lambda k: abs(counted[k])) if counted else None
    kids = df[df["age_true"] < 10]
    kids_gender = 100 * float(((kids["p_female"] >= 0.5) == (kids["gender_true"] == 1)).mean()) if len(kids) else None
    return {"n": rep["n"], "mae": rep["age_mae"], "balanced": rep["balanced_age_mae"], "bias": rep["age_bias"],
            "gender": 100 * rep["gender_accuracy"], "children_gender": kids_gender,
            "worst_group": worst, "worst_bias": counted[worst] if worst else None,
            "groups": {k: (g["n"], g["age_mae"], g["age_bias"], 100 * g["gender_accuracy"]) for k, g in groups.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utk", help="UTKFace folder")
    ap.add_argument("--aaf", help="All-Age-Faces folder (images/ and labels.csv)")
    ap.add_argument("--model", help="checkpoint or .onnx (default: the bundled model)")
    ap.add_argument("--subset", default="val", choices=["val", "test"])
    ap.add_argument("--damages", default="degraded,old_print", help="damaged copies to score besides the clean one")
    ap.add_argument("--out", default="runs/sources")
    args = ap.parse_args(argv)
    t0 = time.time()
    model = resolve_model_path(args.model)
    ckpt = load_checkpoint(model) if model.suffix != ".onnx" else {}
    predictor = Predictor.from_checkpoint(model, device="auto")
    ckpt = ckpt or predictor.checkpoint_info
    sources = []
    if args.utk:
        sources.append(Source(args.utk, name="UTKFace"))
    if args.aaf:
        sources.append(Source(str(Path(args.aaf) / "images"), str(Path(args.aaf) / "labels.csv"), True, "largest",
                              60, "AAF"))
    copies = ["clean", *[d for d in args.damages.split(",") if d]]
    out = Path(args.out)
    results, clean_frames = {}, []
    for source in sources:
        records, split, _ = folder_split(ckpt, source.data, source.labels)
        records = select(records, split, args.subset)
        for copy in copies:
            df, rep = evaluate(predictor, source.data, records, detect=source.detect, face=source.face,
                               min_face=source.min_face, damage=None if copy == "clean" else copy, progress=False)
            name = f"{source.key}_{args.subset}_{copy}"
            write_report(df, rep, out / f"{name}.json", title=name)
            results[name] = figures(df, rep)
            if copy == "clean":
                clean_frames.append(df)
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    print(f"$ {' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}")
    print(f"model {model}; {args.subset} subsets; flip TTA {predictor.flip_tta}")
    print(f"| source | copy | n | age MAE | balanced MAE | bias | largest group bias (n >= {MIN_GROUP}) | gender acc | "
          "gender acc 0-9 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for source in sources:
        clean = results[f"{source.key}_{args.subset}_clean"]
        for copy in copies:
            r = results[f"{source.key}_{args.subset}_{copy}"]
            delta = "" if copy == "clean" else f" ({r['mae'] - clean['mae']:+.2f})"
            kids = "-" if r["children_gender"] is None else f"{r['children_gender']:.1f}%"
            print(f"| {source.key} | {copy} | {r['n']} | {r['mae']:.2f}{delta} | {r['balanced']:.2f} | "
                  f"{r['bias']:+.2f} | {r['worst_bias']:+.2f} ({r['worst_group']}) | {r['gender']:.2f}% | {kids} |")
    if len(clean_frames) > 1:  # what training selects by: every source's images together, every age group the same
        pooled = pd.concat(clean_frames)
        f = balanced_age_figures(pooled["age_pred"].to_numpy(), pooled["age_true"].to_numpy())
        mae = (pooled["age_pred"] - pooled["age_true"]).abs().mean()
        print(f"\npooled clean ({len(pooled)} images): age MAE {mae:.3f}, "
              f"balanced MAE {f['balanced_age_mae']:.3f}, largest group bias {f['worst_age_bias']:+.2f} "
              f"({f['worst_bias_group']})")
    for source in sources:
        key = f"{source.key}_{args.subset}"
        print(f"\n{source.key} {args.subset} by age group (age MAE / bias, per copy):")
        print("| group | n | " + " | ".join(copies) + " | gender acc |")
        print("|---|---|" + "---|" * len(copies) + "---|")
        for name, (n, _, _, gender) in results[f"{key}_clean"]["groups"].items():
            cells = [f"{results[f'{key}_{c}']['groups'][name][1]:.2f} / {results[f'{key}_{c}']['groups'][name][2]:+.2f}"
                     for c in copies]
            print(f"| {name} | {n} | " + " | ".join(cells) + f" | {gender:.1f}% |")
    print(f"({time.time() - t0:.0f} s; reports in {out}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
