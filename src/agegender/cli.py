"""``agegender`` command line: train, evaluate, predict. A thin layer over the library.

Exit status: 0 success; 1 finished, but some input files could not be read (they are listed, the rest is
written); 2 a user error (bad arguments, data, checkpoint or weights: one line says what to do); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("agegender")

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")


TRAIN_HELP = {
    "data": "UTKFace folder (flat, or Kaggle's nested utkcropped/utkcropped)",
    "out": "run folder to write",
    "backbone": "resnet18 (the reference), resnet34, resnet50, mobilenet_v2, mobilenet_v3_large, efficientnet_b0",
    "pretrained": "none | imagenet (torchvision's weights: downloaded once, then read from torch's cache) | PATH",
    "image_size": "input side in pixels",
    "crop_pct": "share of the resized image kept by the crop",
    "head_hidden": "hidden units of each head",
    "dropout": "dropout in each head",
    "epochs": "number of epochs",
    "batch_size": "mini-batch size",
    "lr": "peak learning rate",
    "weight_decay": "weight decay",
    "optimizer": "adam (the reference) or adamw",
    "schedule": "learning-rate schedule per step: none, cosine or onecycle",
    "warmup_epochs": "linear warm-up length in epochs (cosine and none)",
    "age_loss": "mse (the reference), l1, smooth_l1, or dldl (a softmax over ages 0-100, label-distribution "
    "learning)",
    "age_weight": "weight of the age loss",
    "gender_weight": "weight of the gender loss",
    "augment": "colour-jitter strength (0 keeps only random crop and flip)",
    "split": "train,val,test fractions; the reference used 0.8,0,0.2",
    "seed": "seed of the split, initialisation and shuffling",
    "limit": "use at most N images, 0 = all (quick trials)",
    "num_workers": "data-loading processes, -1 = cores - 1",
    "device": "auto, cpu, cuda, cuda:1, mps",
    "amp": "mixed precision on CUDA",
    "grad_clip": "clip the gradient norm to this, 0 = off",
    "ema": "decay of an exponential moving average of the weights (e.g. 0.999), 0 = off",
    "flip_tta": "validate, calibrate and predict on the image and its mirror image",
    "interval_coverage": "share of true ages the predicted age interval should hold",
    "age_balance": "re-weight each image's age loss by (smoothed share of training images of its age) to the "
                   "power -P: 0 = off, 0.5 = square-root inverse frequency, 1 = inverse frequency; rare ages "
                   "(the elderly, teenagers) then weigh more",
    "age_map": "after training, fit a monotone map on validation that gives the age estimates the "
               "distribution of the true ages: undoes the pull towards the typical age (elderly too young, "
               "young adults too old) at a small cost in MAE",
    "labels": "CSV with columns file (relative to --data) and any of age, gender (male/female or 0/1, 0 = male), "
    "age_group (25-32, 70+); for folders not named the UTKFace way",
    "detect": "images are uncropped photos: detect each face (MTCNN) and align it to UTKFace's framing first",
    "face": "with --detect: skip photos with several faces (single) or use the largest (largest)",
    "init": "start from a trained checkpoint (PATH, or 'bundled' for the packaged model): fine-tuning; it keeps "
            "that model's network and input size unless --image-size / --crop-pct are given",
    "freeze_backbone_epochs": "with --init: train only the two heads for this many epochs, then everything",
    "cache": "decode each image once: none, memory, or disk (memory-mapped under $AGEGENDER_CACHE or "
    "~/.cache/agegender, reused by later runs and rebuilt when files change)",
    "channels_last": "channels-last memory format on CUDA",
    "compile": "torch.compile the model (CUDA; slow to start, faster per step)",
}


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; a flag's default is None so that only flags given override the YAML."""
    from dataclasses import MISSING, fields

    from agegender.config import TrainConfig

    for f in fields(TrainConfig):
        default = f.default if f.default is not MISSING else None
        flag = "--" + f.name.replace("_", "-")
        shown = f" (default {default})" if default not in ("", None) else ""
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=TRAIN_HELP[f.name] + shown)
        else:
            p.add_argument(flag, type=type(default), default=None, metavar=f.name.upper(),
                           help=TRAIN_HELP[f.name] + shown)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agegender",
        description="Estimate age (years) and gender from face images: train, evaluate and predict.",
        epilog="Exit status: 0 ok, 1 some inputs unreadable (rest done), 2 user error, 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model on a UTKFace folder",
                       description="Train on a UTKFace folder. Defaults come from the built-in config, then "
                       "--config YAML, then the flags given here. Writes best.pt, last.pt, config.yaml, "
                       "metrics.csv, split.csv and curves.png into --out.")
    t.add_argument("--config", help="YAML file of options (keys as in a run's config.yaml)")
    _add_train_options(t)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    _add_common(t)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on labelled images",
                       description="Evaluate on a UTKFace folder (all valid images, or one subset of a split "
                       "file). Writes REPORT.json, PREDS.csv and two plots beside REPORT.json.")
    e.add_argument("--model", help="checkpoint (default: the bundled model)")
    e.add_argument("--data", required=True, help="UTKFace folder")
    e.add_argument("--labels", help="CSV of file,age,gender,age_group (any subset of the label columns) for a "
                   "folder not named the UTKFace way; only the figures its labels allow are reported")
    e.add_argument("--detect", action="store_true", help="images are uncropped photos: detect and align faces")
    e.add_argument("--face", choices=["single", "largest"], default="single",
                   help="with --detect: skip photos with several faces (default) or use the largest")
    e.add_argument("--split-file", help="a run's split.csv, to evaluate one subset")
    e.add_argument("--subset", default="test", choices=["train", "val", "test"], help="subset (default test)")
    e.add_argument("--out", required=True, help="REPORT.json to write")
    e.add_argument("--predictions", help="PREDS.csv to write (default: beside REPORT.json)")
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--num-workers", type=int, default=-1)
    e.add_argument("--device", default="auto")
    e.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the mirrored image (default: as the checkpoint was calibrated)")
    e.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="run the network with torch (default) or onnxruntime (a .onnx --model implies onnx)")
    _add_common(e)

    p = sub.add_parser("predict", help="find faces in photos and predict their age and gender",
                       description="Detect faces (MTCNN), align each to UTKFace's framing and predict; with "
                       "--aligned, treat each image as a ready face crop. Inputs are files or folders (searched "
                       "recursively). Writes CSV or JSON by the extension of --out: a row per face, and a row "
                       "with status no_face or error where there is none or the file cannot be read.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders")
    p.add_argument("--labels", help="predict the files listed in this CSV (column file, relative to --data)")
    p.add_argument("--data", help="folder the --labels file names are relative to")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--out", required=True, help="PREDS.csv or PREDS.json")
    p.add_argument("--aligned", action="store_true", help="inputs are aligned face crops: skip detection")
    p.add_argument("--annotate", metavar="DIR", help="also write each photo with boxes and labels drawn into DIR")
    p.add_argument("--min-face", type=int, default=20, help="smallest face side to look for, pixels (default 20)")
    p.add_argument("--det-threshold", type=float, default=0.7,
                   help="minimum detector score of the final stage (default 0.7)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the mirrored image (default: as the checkpoint was calibrated)")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="run the network with torch (default) or onnxruntime (a .onnx --model implies onnx)")
    _add_common(p)

    x = sub.add_parser("export", help="export a model to ONNX",
                       description="Export to ONNX: input 'image' float32 [N, 3, S, S] (normalised as the "
                       "model's eval preset; N dynamic), outputs 'age', 'age_sigma', 'p_female', "
                       "'gender_logit' [N]. Model config, preprocessing and calibration travel in the file's "
                       "metadata. Opset 17 by default (onnxruntime >= 1.14).")
    x.add_argument("--model", help="checkpoint (default: the bundled model)")
    x.add_argument("--out", required=True, help="model.onnx to write")
    x.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    _add_common(x)

    from agegender.serve import add_serve_parser

    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(-1 if args.quiet else args.verbose)
    from agegender.checkpoint import CheckpointError
    from agegender.data import DataError
    from agegender.engine import NonFiniteLossError
    from agegender.images import ImageReadError
    from agegender.model import PretrainedWeightsError
    from agegender.serve import cmd_serve

    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export,
                "serve": cmd_serve}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except (DataError, CheckpointError, PretrainedWeightsError, ImageReadError, NonFiniteLossError,
            FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return EXIT_USAGE


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from agegender.config import TrainConfig
    from agegender.trainer import fit

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    if args.resume and args.out and not args.config and (Path(args.out) / "config.yaml").exists():
        args.config = str(Path(args.out) / "config.yaml")
    cfg = TrainConfig.from_sources(args.config, given)
    summary = fit(cfg, resume=args.resume, given=given, progress=not args.quiet)
    log.info("done: %s (best validation age MAE %s)", Path(cfg.out) / "best.pt", summary.get("best_val_age_mae"))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from agegender import data as D
    from agegender.cache import CachedFaceDataset, build_cache
    from agegender.engine import predict_batches
    from agegender.metrics import (
        age_group_scores,
        age_interval,
        expected_calibration_error,
        interval_coverage,
        report,
    )
    from agegender.plots import age_scatter, mae_by_bucket
    from agegender.predictor import Predictor, resolve_model_path
    from agegender.trainer import default_workers, make_loader, scan
    from agegender.transforms import decode_preset, eval_preset

    model_path = resolve_model_path(args.model)
    predictor = Predictor.from_checkpoint(model_path, device=args.device, flip_tta=args.tta, runtime=args.runtime)
    scanned = scan(args.data, args.labels)
    records = scanned.records
    scope = "all labelled images"
    if args.split_file:
        split = D.read_split(args.split_file)
        records = D.select(records, split, args.subset)
        missing = sum(1 for v in split.values() if v == args.subset) - len(records)
        if missing:
            log.warning("%d files of subset %s in %s are not in %s", missing, args.subset, args.split_file, args.data)
        scope = f"subset {args.subset} of {args.split_file}"
        if not records:
            raise D.DataError(f"no image of {scope} found in {args.data}")
    workers = default_workers(args.num_workers)
    if args.detect:
        # Detect once, up front, so every skipped photo is counted with its reason.
        from agegender.faces import AlignedFaceLoader

        preset = predictor.model.config.preset
        pixels, ok = build_cache(args.data, records, decode_preset(preset), preset.resize_size, "memory",
                                 not args.quiet, AlignedFaceLoader(args.face))
        ds = CachedFaceDataset(pixels, ok, records, eval_preset(preset, cached=True))
        workers = 0  # the pixels are already in this process's memory
    else:
        ds = D.FaceDataset(args.data, records, predictor.transform)
    loader = make_loader(ds, args.batch_size, False, workers, predictor.device)
    out = predict_batches(predictor.model, loader, predictor.device, flip_tta=predictor.flip_tta,
                          progress=not args.quiet, desc="evaluate")
    recs = [records[i] for i in out["index"]]
    df = pd.DataFrame({
        "file": [r.file for r in recs], "age_true": [r.age for r in recs], "gender_true": [r.gender for r in recs],
        "race": [r.race for r in recs], "age_pred": out["age"].round(3), "p_female": out["p_female"].round(5),
        "age_group_true": [f"{g[0]}-{g[1]}" if g else "" for g in (r.age_group for r in recs)],
    })
    if df.empty:
        raise D.DataError(f"none of the {len(records)} images of {scope} could be read")
    if predictor.interval_scale is not None:
        low, high = age_interval(out["age"], out["age_sigma"], predictor.interval_scale)
        df["age_low"], df["age_high"] = low.round(3), high.round(3)
    rep = report(df)
    known_gender = df["gender_true"].notna()
    if known_gender.any():
        rep["gender_ece"] = expected_calibration_error(df["p_female"][known_gender], df["gender_true"][known_gender])
    rep |= age_group_scores(df["age_pred"].to_numpy(), [r.age_group for r in recs])
    known_age = df["age_true"].notna()
    if "age_low" in df and known_age.any():
        k = df[known_age]
        rep["age_interval"] = {
            "target_coverage": predictor.interval_coverage,
            "coverage": interval_coverage(k["age_low"], k["age_high"], k["age_true"]),
            "mean_width": float((df["age_high"] - df["age_low"]).mean()),
        }
    rep["meta"] = {"model": str(model_path), "data": str(args.data), "labels": args.labels, "scope": scope,
                   "tta": predictor.flip_tta, "age_map": predictor.model.config.age_map is not None,
                   "skipped_labels": len(scanned.skipped),
                   "skipped_unreadable_or_no_face": len(records) - len(df)}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    preds_path = Path(args.predictions) if args.predictions else out_path.with_name(out_path.stem + "_preds.csv")
    preds_path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(preds_path, index=False)
    out_path.write_text(json.dumps(rep, indent=2))
    if "age_mae" in rep:
        age_scatter(df[known_age], out_path.with_name(out_path.stem + "_age_scatter.png"),
                    f"{scope}: MAE {rep['age_mae']:.2f} y, n={int(known_age.sum())}")
        mae_by_bucket(rep, out_path.with_name(out_path.stem + "_mae_by_age.png"))
    figures = {"age MAE": rep.get("age_mae"), "CS@5 %": rep.get("cs5"), "gender acc": rep.get("gender_accuracy"),
               "gender MAE": rep.get("gender_mae"), "gender AUC": rep.get("gender_auc"),
               "age-group acc": rep.get("age_group_accuracy"), "one-off": rep.get("age_group_one_off")}
    log.info("n=%d  %s -> %s", rep["n"], "  ".join(f"{k} {v:.3f}" for k, v in figures.items() if v is not None),
             out_path)
    return EXIT_OK


def _expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    from agegender.data import iter_image_files

    files: list[Path] = []
    errors: list[tuple[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = iter_image_files(p)
            if not found:
                errors.append((item, "folder holds no image files"))
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            errors.append((item, "no such file or folder"))
    return files, errors


def cmd_export(args: argparse.Namespace) -> int:
    from agegender.export import export_checkpoint
    from agegender.predictor import resolve_model_path

    out = export_checkpoint(resolve_model_path(args.model), args.out, args.opset)
    log.info("wrote %s", out)
    return EXIT_OK


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


PREDICT_COLUMNS = ["file", "face", "box_x1", "box_y1", "box_x2", "box_y2", "det_score", "landmarks", "age",
                   "age_low", "age_high", "gender", "p_female", "status", "error"]


def _prediction_fields(pred) -> dict:
    return {"age": round(pred.age, 2), "age_low": _round(pred.age_low), "age_high": _round(pred.age_high),
            "gender": pred.gender, "p_female": round(pred.p_female, 5)}


def cmd_predict(args: argparse.Namespace) -> int:
    import pandas as pd
    from tqdm.auto import tqdm

    from agegender.images import ImageReadError, open_image
    from agegender.predictor import Predictor, resolve_model_path

    out_path = Path(args.out)
    if out_path.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--out must end in .csv or .json, got {out_path.name}")
    detector = None
    if not args.aligned:
        from agegender.faces import FaceDetector

        detector = FaceDetector(min_face_size=args.min_face, thresholds=(0.6, 0.7, args.det_threshold),
                                device=args.device)
    predictor = Predictor.from_checkpoint(resolve_model_path(args.model), device=args.device, flip_tta=args.tta,
                                          detector=detector, runtime=args.runtime)
    annotate_dir = Path(args.annotate) if args.annotate else None
    if annotate_dir:
        from agegender.annotate import draw_faces

        annotate_dir.mkdir(parents=True, exist_ok=True)
    if not args.inputs and not args.labels:
        raise ValueError("give image files or folders, or --data DIR --labels labels.csv")
    files, errors = _expand_inputs(args.inputs)
    if args.labels:
        from agegender.trainer import scan

        if not args.data:
            raise ValueError("--labels needs --data, the folder its file names are relative to")
        files += [Path(args.data) / r.file for r in scan(args.data, args.labels).records]
    rows: list[dict] = [{"file": f, "status": "error", "error": why} for f, why in errors]
    n_faces = n_no_face = 0
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=True if args.quiet else None,
               dynamic_ncols=True)
    for start in range(0, len(files), args.batch_size):
        chunk, images = [], []
        for f in files[start : start + args.batch_size]:
            try:
                images.append(open_image(f))
                chunk.append(f)
            except ImageReadError as e:
                errors.append((str(f), str(e)))
                rows.append({"file": str(f), "status": "error", "error": str(e)})
        if args.aligned:
            for f, pred in zip(chunk, predictor.predict(images, args.batch_size) if images else [], strict=True):
                rows.append({"file": str(f), "face": 0, **_prediction_fields(pred), "status": "ok"})
                n_faces += 1
        else:
            for f, img, faces in zip(chunk, images, predictor.predict_faces(images, args.batch_size), strict=True):
                if not faces:
                    n_no_face += 1
                    rows.append({"file": str(f), "status": "no_face"})
                for face in faces:
                    x1, y1, x2, y2 = (round(v, 1) for v in face.box)
                    rows.append({"file": str(f), "face": face.index, "box_x1": x1, "box_y1": y1, "box_x2": x2,
                                 "box_y2": y2, "det_score": round(face.det_score, 4),
                                 "landmarks": face.to_dict()["landmarks"], **_prediction_fields(face.prediction),
                                 "status": "ok"})
                n_faces += len(faces)
                if annotate_dir:
                    draw_faces(img, faces).save(annotate_dir / f"{Path(f).stem}_annotated.jpg", quality=92)
        bar.update(len(files[start : start + args.batch_size]))
    bar.close()
    for f, why in errors:
        log.warning("could not read %s: %s", f, why)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix.lower() == ".json":
        out_path.write_text(json.dumps([{k: v for k, v in r.items() if v is not None} for r in rows], indent=2))
    else:
        df = pd.DataFrame(rows, columns=PREDICT_COLUMNS)
        df["landmarks"] = df["landmarks"].map(lambda v: json.dumps(v) if isinstance(v, list) else "")
        df["face"] = df["face"].astype("Int64")
        df.to_csv(out_path, index=False)
    log.info("%d files: %d faces, %d without a face, %d errors -> %s", len(files), n_faces, n_no_face, len(errors),
             out_path)
    return EXIT_PARTIAL if errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
