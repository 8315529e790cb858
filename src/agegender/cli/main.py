"""``agegender`` command line: train, evaluate, predict. A thin layer over the library.

Exit status: 0 success; 1 finished, but some input files could not be read (they are listed, the rest is
written); 2 a user error (bad arguments, data, checkpoint or weights: one line says what to do); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from agegender.outputs import check_folder, check_writable

log = logging.getLogger("agegender")

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

COMMANDS = {
    "train": "train a model on a UTKFace folder",
    "evaluate": "evaluate a checkpoint on labelled images",
    "predict": "find faces in photos or a video and predict their age and gender",
    "export": "export a model to ONNX",
    "serve": "run the web service and page",
}


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type: a finite ``kind`` (int or float) within ``low``..``high`` (``low`` excluded if
    ``low_open``); anything else is a one-line usage error."""
    bounds = (f"> {low}" if low_open else f">= {low}") if high is None else f"{low}-{high}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__} {bounds}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) or (
                high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {kind.__name__} {bounds}, got {text!r}")
        return value

    return parse


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")


TRAIN_HELP = {
    "data": "UTKFace folder (flat, or Kaggle's nested utkcropped/utkcropped)",
    "out": "run folder to write",
    "backbone": "resnet18 (the reference), resnet34, resnet50, mobilenet_v2, mobilenet_v3_large, efficientnet_b0",
    "pretrained": "none | imagenet (torchvision's weights: downloaded once, then read from torch's cache) | PATH",
    "image_size": "input side in pixels (default: the --init model's, else 112)",
    "crop_pct": "share of the resized image kept by the crop (default: the --init model's, else 0.9)",
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
    "sources": "train on several folders at once, each split on its own and validated on its own and pooled; "
               "repeat for each: DIR or DIR,labels=CSV,detect=true,face=largest,min_face=60,name=NAME "
               "(replaces --data/--labels/--detect/--face; in YAML a 'sources:' list of such mappings)",
    "degrade": "probability that a training image gets photo-quality damage: greyscale, blur, down-and-up "
               "scaling, JPEG re-compression, noise, exposure/contrast (each with its own chance); 0 = off",
    "init": "start from a trained checkpoint (PATH, or 'bundled' for the packaged model): fine-tuning; it keeps "
            "that model's network and input size unless --image-size / --crop-pct are given",
    "freeze_backbone_epochs": "with --init: train only the two heads for this many epochs, then everything",
    "distill": "a teacher checkpoint (PATH, or 'bundled'): the loss also pulls the model towards the teacher's "
               "outputs averaged over each image and its mirror image, so that one pass (--no-flip-tta) does "
               "what the teacher does in two; same crop and age head as the model trained (the input size may differ)",
    "distill_weight": "with --distill: share of the teacher's term in the loss (0-1)",
    "cache": "decode each image once: memory, or disk (memory-mapped under $AGEGENDER_CACHE or "
    "~/.cache/agegender, reused by later runs and rebuilt when files change); none decodes on every read",
    "channels_last": "channels-last memory format on CUDA",
    "compile": "torch.compile the model (CUDA; slow to start, faster per step)",
}


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; a flag's default is None so that only flags given override the YAML."""
    from dataclasses import fields

    from agegender.config import TrainConfig, option_type

    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        shown = f" (default {f.default})" if f.default not in ("", None) else ""
        if f.name == "sources":
            p.add_argument("--source", dest="sources", action="append", default=None, metavar="SPEC",
                           help=TRAIN_HELP[f.name])
        elif option_type(f.name) is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=TRAIN_HELP[f.name] + shown)
        else:
            p.add_argument(flag, type=option_type(f.name), default=None, metavar=f.name.upper(),
                           help=TRAIN_HELP[f.name] + shown)


def _add_model_options(p: argparse.ArgumentParser, device: str) -> None:
    """The options of every command that runs a trained model."""
    p.add_argument("--model", help="checkpoint or exported .onnx (default: the bundled model)")
    p.add_argument("--device", default=device, help=f"auto, cpu, cuda, ... (default {device})")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the mirrored image (default: as the checkpoint was calibrated)")
    p.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto",
                   help="auto (default): onnxruntime for the bundled model and .onnx files, torch for other .pt "
                   "checkpoints; onnx: export a .pt once (cached) and run it with onnxruntime; torch: the .pt in "
                   "torch")


def _add_max_faces(p: argparse.ArgumentParser, what_then: str) -> None:
    from agegender.predictor import DEFAULT_MAX_FACES

    p.add_argument("--max-faces", type=_number(int, 1), default=DEFAULT_MAX_FACES,
                   help=f"predict at most this many faces per photo, the largest (default {DEFAULT_MAX_FACES}); "
                   + what_then)


def _add_face_policy(p: argparse.ArgumentParser) -> None:
    from agegender.sources import FACE_POLICIES

    p.add_argument("--face", choices=FACE_POLICIES, default=FACE_POLICIES[0],
                   help="with --detect: skip photos with several faces (default) or use the largest")


class MissingExtra(Exception):
    """A command needs packages this installation lacks (the message says which extra to install)."""


def _importable(module: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules, i.e. blocked
        return False


def _needs(modules: tuple[str, ...], extra: str, command: str) -> None:
    """Raise :class:`MissingExtra` unless every module in ``modules`` can be imported."""
    missing = [m for m in modules if not _importable(m)]
    if missing:
        raise MissingExtra(f"agegender {command} needs {', '.join(missing)}, not installed here: "
                           f"pip install 'agegender[{extra}]'")


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help=COMMANDS["train"],
                       description="Train on a UTKFace folder. Defaults come from the built-in config, then "
                       "--config YAML, then the flags given here. Writes best.pt, last.pt, config.yaml, "
                       "metrics.csv, split.csv and curves.png into --out.")
    _needs(("torch", "torchvision", "yaml", "pandas", "matplotlib"), "train", "train")
    t.add_argument("--config", help="YAML file of options (keys as in a run's config.yaml)")
    _add_train_options(t)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt, with the "
                   "run's own config.yaml (flags may change only --epochs, --data, --num-workers, --device)")
    _add_common(t)


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    from agegender.sources import SUBSETS

    e = sub.add_parser("evaluate", help=COMMANDS["evaluate"],
                       description="Evaluate on a UTKFace folder (all valid images, or one subset of a split "
                       "file). Writes REPORT.json, PREDS.csv and two plots beside REPORT.json.")
    e.add_argument("--data", required=True, help="UTKFace folder")
    e.add_argument("--labels", help="CSV of file,age,gender,age_group (any subset of the label columns) for a "
                   "folder not named the UTKFace way; only the figures its labels allow are reported")
    e.add_argument("--detect", action="store_true", help="images are uncropped photos: detect and align faces")
    _add_face_policy(e)
    e.add_argument("--min-face", type=_number(int, 1), default=20,
                   help="with --detect: smallest face side to look for, pixels (default 20; loose face crops can use "
                   "a larger value, which is faster)")
    e.add_argument("--degrade", action="store_true", help="score a fixed degraded copy of each face (greyscale, "
                   "a third of the size, blurred, JPEG quality 30): robustness to poor photos")
    e.add_argument("--split-file", help="a run's split.csv, to evaluate one subset")
    e.add_argument("--subset", default="test", choices=SUBSETS, help="subset (default test)")
    e.add_argument("--out", required=True, help="REPORT.json to write")
    e.add_argument("--predictions", help="PREDS.csv to write (default: beside REPORT.json)")
    e.add_argument("--batch-size", type=_number(int, 1), default=128, help="images read per step (default 128)")
    e.add_argument("--num-workers", type=_number(int, -1), default=-1,
                   help="threads that read the images, -1 = one per core (default)")
    _add_model_options(e, "auto")
    _add_common(e)


def _add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help=COMMANDS["predict"],
                       description="Detect faces (MTCNN), align each to UTKFace's framing and predict; with "
                       "--aligned, treat each image as a ready face crop. Inputs are files or folders (searched "
                       "recursively). Writes CSV or JSON by the extension of --out: a row per face, and a row "
                       "with status no_face or error where there is none or the file cannot be read. A video "
                       "(one, alone: .mp4, .mov, .mkv, .webm, .avi, ...) gives a row per face per analysed frame "
                       "with its track, and a row per track (--tracks) combining that person's frames.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders")
    p.add_argument("--labels", help="predict the files listed in this CSV (column file, relative to --data)")
    p.add_argument("--data", help="folder the --labels file names are relative to")
    p.add_argument("--out", required=True, help="PREDS.csv or PREDS.json")
    p.add_argument("--aligned", action="store_true", help="inputs are aligned face crops: skip detection")
    p.add_argument("--annotate", metavar="DIR", help="also write each photo with boxes and labels drawn into DIR; "
                   "for a video, the annotated copy to write (.mp4 or .avi)")
    p.add_argument("--every", type=int, default=1, metavar="K",
                   help="video: detect faces in every K-th frame (default 1, every frame)")
    p.add_argument("--tracks", metavar="PATH", help="video: the per-track rows (.csv or .json; default: beside "
                   "--out, named OUT_tracks)")
    p.add_argument("--min-face", type=_number(int, 1), default=20,
                   help="smallest face side to look for, pixels (default 20)")
    p.add_argument("--det-threshold", type=_number(float, 0, 1), default=0.7,
                   help="minimum detector score of the final stage (default 0.7)")
    _add_max_faces(p, "a photo with more gets a faces_dropped row")
    p.add_argument("--batch-size", type=_number(int, 1), default=16, help="images per network call (default 16)")
    p.add_argument("--workers", type=_number(int, 0), default=0,
                   help="threads that decode, detect and predict side by side (default 0 = one per core, at most 4)")
    _add_model_options(p, "cpu")
    _add_common(p)


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("export", help=COMMANDS["export"],
                       description="Export to ONNX: input 'image' float32 [N, 3, S, S] (normalised as the "
                       "model's eval preset; N dynamic), outputs 'age', 'age_sigma', 'p_female', "
                       "'gender_logit' [N]. Model config, preprocessing and calibration travel in the file's "
                       "metadata. Opset 17 by default (onnxruntime >= 1.14).")
    x.add_argument("--model", help="checkpoint (default: the bundled model)")
    x.add_argument("--out", required=True, help="model.onnx to write")
    x.add_argument("--opset", type=_number(int, 9, 20), default=17, help="ONNX opset, 9-20 (default 17)")
    _add_common(x)


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help=COMMANDS["serve"],
                       description="Serve POST /v1/predict, GET /v1/model and a web page at / over HTTP "
                       "(needs the serve extras: pip install 'agegender[serve]').")
    p.add_argument("--model", help="checkpoint or exported .onnx (default: the bundled model)")
    p.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto",
                   help="as for predict (default auto: onnxruntime for the bundled model and .onnx files)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_number(int, 0, 65535), default=8000, help="port, 0 = any free one (default 8000)")
    p.add_argument("--workers", type=_number(int, 0, 256), default=0,
                   help="requests (or batches) predicted at the same time, each on one thread (default 0: one per "
                   "core, at most 4)")
    p.add_argument("--max-queue", type=_number(int, 0), default=8,
                   help="requests that may wait for a worker (default 8)")
    p.add_argument("--max-batch", type=_number(int, 1, 256), default=1,
                   help="requests a worker takes and predicts together (default 1: on CPU, where detection costs "
                   "most, batches of photos measured slower; larger batches pay where the network dominates)")
    p.add_argument("--batch-window-ms", type=_number(float, 0), default=5,
                   help="how long a batch waits for more requests once one has arrived (default 5 ms)")
    p.add_argument("--max-upload-mb", type=_number(float, 0, low_open=True), default=10,
                   help="largest upload in MiB (default 10)")
    p.add_argument("--timeout", type=_number(float, 0, low_open=True), default=30,
                   help="seconds before a request fails with 504; its work stops at the next step (default 30)")
    _add_max_faces(p, "the answer says how many were found")
    p.add_argument("--header-timeout", type=_number(float, 0, low_open=True), default=10,
                   help="seconds a client may take to send a request's headers before the connection is closed "
                   "(default 10)")
    p.add_argument("--allowed-hosts", default="auto",
                   help="comma-separated host names the Host header may carry, * for any; auto (default): "
                   "localhost, 127.0.0.1 and ::1 when --host is a loopback address, else any")
    p.add_argument("--docs", action="store_true",
                   help="serve /docs and /redoc (Swagger UI and ReDoc, which load their scripts from a CDN); "
                   "/openapi.json is always served")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    _add_common(p)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` gets its options (all do when ``argv`` is None), so
    that ``agegender --help`` imports nothing and ``agegender predict`` never imports torch (the training
    options come from the training config)."""
    parser = _Parser(
        prog="agegender",
        description="Estimate age (years) and gender from face images: train, evaluate and predict.",
        epilog="Exit status: 0 ok, 1 some inputs skipped (rest done), 2 user error, 3 internal error (a bug), "
        "130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    builders = {"train": _add_train_parser, "evaluate": _add_evaluate_parser, "predict": _add_predict_parser,
                "export": _add_export_parser, "serve": _add_serve_parser}
    for name, add in builders.items():
        if command is None or command == name:
            add(sub)
        else:  # listed in the overview only: its options (and what they import) are built when it is the command
            sub.add_parser(name, help=COMMANDS[name])
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that are a user's error (exit 2, one line). The training errors are looked up only
    where their modules were loaded: an error of a module never imported cannot have been raised, and
    importing it would load torch."""
    from agegender.checkpoint import CheckpointError
    from agegender.data import DataError
    from agegender.images import ImageReadError

    errors: list[type[BaseException]] = [DataError, CheckpointError, ImageReadError, MissingExtra,
                                         FileNotFoundError, ValueError]
    for module, name in (("agegender.engine", "NonFiniteLossError"), ("agegender.model", "PretrainedWeightsError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(argv).parse_args(argv)
    except MissingExtra as e:
        _setup_logging(0)
        log.error("%s", e)
        return EXIT_USAGE
    _setup_logging(-1 if args.quiet else args.verbose)
    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export,
                "serve": cmd_serve}
    # Pillow warns about every odd EXIF tag of a hostile file; the gate (images.open_image) already reports
    # what matters in one line per file. Set once for the process, never toggled (toggling is not thread-safe).
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")  # refused by the gate
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - sorted below: the user's error, the machine's, or a bug
        # OSError: the machine said no (permissions, a full disk, a missing device).
        if isinstance(e, (*_user_errors(), OSError)):
            log.error("%s", _one_line(e))
            return EXIT_USAGE
        # A bug: one line, the traceback with -v, and a code of its own.
        log.error("internal error, please report it: %s: %s (run with -v for the traceback)", type(e).__name__,
                  _one_line(e))
        log.debug("traceback", exc_info=True)
        return EXIT_BUG


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from agegender.config import TrainConfig
    from agegender.trainer import fit

    flags = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    config = args.config
    run_config = Path(args.out) / "config.yaml" if args.out else None
    if args.resume and run_config is not None and run_config.exists():
        # A resumed run continues its own recipe: the flags given are checked against it, not another YAML.
        if config:
            log.info("--resume: using %s, not --config %s", run_config, config)
        config = str(run_config)
    cfg = TrainConfig.from_sources(config, flags)
    check_folder(cfg.out, "--out")  # now, not after the first epoch
    summary = fit(cfg, resume=args.resume, progress=not args.quiet)
    best = summary.get("best", {})
    log.info("done: %s (best %s %s)", Path(cfg.out) / "best.pt", best.get("metric", "validation score"),
             best.get("value"))
    if summary.get("unreadable_images"):
        log.warning("%d images could not be read and were left out (each is named above)",
                    summary["unreadable_images"])
        return EXIT_PARTIAL
    return EXIT_OK


def _evaluation_records(args: argparse.Namespace) -> tuple[list, str, int]:
    """The records to evaluate (all, or one subset of a split file), a description of them, and how many
    files were skipped for their labels."""
    from agegender import sources as S

    scanned = S.scan(args.data, args.labels)
    records, scope = scanned.records, "all labelled images"
    if args.split_file:
        split = S.read_split(args.split_file)
        records = S.select(records, split, args.subset)
        missing = sum(1 for v in split.values() if v == args.subset) - len(records)
        if missing:
            log.warning("%d files of subset %s in %s are not in %s", missing, args.subset, args.split_file, args.data)
        scope = f"subset {args.subset} of {args.split_file}"
        if not records:
            from agegender.data import DataError

            raise DataError(f"no image of {scope} found in {args.data}")
    return records, scope, len(scanned.skipped)


def cmd_evaluate(args: argparse.Namespace) -> int:
    _needs(("pandas", "matplotlib"), "eval", "evaluate")
    from agegender.checkpoint import resolve_model_path
    from agegender.evaluate import evaluate, headline, predictions_path, write_report
    from agegender.predictor import Predictor

    check_writable(args.out, "--out")
    check_writable(predictions_path(args.out, args.predictions), "--predictions")
    model_path = resolve_model_path(args.model)
    predictor = Predictor.from_checkpoint(model_path, device=args.device, flip_tta=args.tta, runtime=args.runtime)
    records, scope, skipped_labels = _evaluation_records(args)
    df, rep = evaluate(predictor, args.data, records, detect=args.detect, face=args.face, min_face=args.min_face,
                       degrade=args.degrade, batch_size=args.batch_size, workers=args.num_workers,
                       progress=not args.quiet)
    rep["meta"] |= {"model": str(model_path), "data": str(args.data), "labels": args.labels, "scope": scope,
                    "skipped_labels": skipped_labels}
    write_report(df, rep, args.out, args.predictions, scope)
    log.info("%s -> %s", headline(rep), args.out)
    skipped = rep["meta"]["skipped_unreadable_or_no_face"]
    if skipped:
        log.warning("%d of %d images were left out: unreadable, or without a usable face (each is named above)",
                    skipped, len(records))
        return EXIT_PARTIAL
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    _needs(("torch", "torchvision", "onnx"), "train", "export")
    from agegender.checkpoint import resolve_model_path
    from agegender.export import export_checkpoint

    check_writable(args.out, "--out")
    out = export_checkpoint(resolve_model_path(args.model), args.out, args.opset)
    log.info("wrote %s", out)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from agegender.serve import create_app
        from agegender.serve_http import allowed_hosts, listen, serve
    except ImportError:
        log.error("agegender serve needs the serve extras: pip install 'agegender[serve]'")
        return EXIT_USAGE
    from agegender.allocator import limit_arenas
    from agegender.checkpoint import resolve_model_path
    from agegender.predictor import Predictor

    # One malloc arena for the whole service, set before any worker thread allocates (agegender.allocator).
    limit_arenas(1)
    hosts = allowed_hosts(args.allowed_hosts, args.host)
    sock = listen(args.host, args.port)  # a taken port or a bad address is said now, before the model loads
    try:
        path = resolve_model_path(args.model)
        predictor = Predictor.from_checkpoint(path, device=args.device, runtime=args.runtime)
        app = create_app(predictor, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), timeout_s=args.timeout,
                         max_queue=args.max_queue, workers=args.workers, model_name=path.name,
                         max_faces=args.max_faces, allowed_hosts=hosts, docs=args.docs,
                         max_batch=args.max_batch, batch_window_s=args.batch_window_ms / 1000)
        port = sock.getsockname()[1]
        log.info("model %s (%s); http://%s:%d/ (Host names answered: %s)", path, predictor.model.config.backbone,
                 args.host, port, ", ".join(hosts) if hosts else "any")
        started = serve(app, sock, args.header_timeout, args.quiet)
    finally:
        sock.close()
    return EXIT_OK if started else EXIT_USAGE


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


PREDICT_COLUMNS = ["file", "face", "box_x1", "box_y1", "box_x2", "box_y2", "det_score", "landmarks", "age",
                   "age_low", "age_high", "gender", "p_female", "status", "error"]


def _row(file: Path | str, prediction: dict) -> dict:
    """A flat output row from ``Prediction.to_dict()`` or ``FacePrediction.to_dict()``: the box in four
    columns, the estimates rounded for reading."""
    row = {"file": str(file), "face": 0, **prediction, "status": "ok"}
    if "box" in row:
        row["box_x1"], row["box_y1"], row["box_x2"], row["box_y2"] = row.pop("box")
    for key, digits in (("age", 2), ("age_low", 2), ("age_high", 2), ("p_female", 5)):
        if row.get(key) is not None:
            row[key] = round(row[key], digits)
    return row


def _predict_files(args: argparse.Namespace) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files to predict (inputs, and those of --labels) and the inputs that are not there."""
    if not args.inputs and not args.labels:
        raise ValueError("give image files or folders, or --data DIR --labels labels.csv")
    files, errors = _expand_inputs(args.inputs)
    if args.labels:
        _needs(("pandas",), "eval", "predict --labels")
        from agegender.sources import scan

        if not args.data:
            raise ValueError("--labels needs --data, the folder its file names are relative to")
        files += [Path(args.data) / r.file for r in scan(args.data, args.labels).records]
    return files, errors


def _open(file: Path) -> object:
    """The decoded image, or the :class:`ImageReadError` that says why it cannot be."""
    from agegender.images import ImageReadError, open_image

    try:
        return open_image(file)
    except ImageReadError as e:
        return e


@dataclass
class _Results:
    """What predict has so far: its output rows, the inputs it could not (fully) use, annotated names taken."""

    rows: list[dict] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    annotated: set[str] = field(default_factory=set)

    def problem(self, file: Path | str, why: str, status: str = "error") -> None:
        self.problems.append((str(file), why))
        self.rows.append({"file": str(file), "status": status, "error": why})


def _predict_batch(predictor, files: list[Path], args: argparse.Namespace, annotate_dir: Path | None,
                   res: _Results) -> None:
    """Predict one batch of ``files``, adding a row per face (or per problem) to ``res``. A file the model
    cannot take costs only its own rows: the batch is retried one file at a time. Files are decoded side by
    side."""
    from agegender.images import ImageReadError
    from agegender.preprocess import parallel_map

    chunk, images = [], []
    for f, decoded in zip(files, parallel_map(_open, files, predictor.workers), strict=True):
        if isinstance(decoded, ImageReadError):
            res.problem(f, str(decoded))
        else:
            images.append(decoded)
            chunk.append(f)
    try:
        _predict_images(predictor, chunk, images, args, annotate_dir, res)
    except Exception as e:  # noqa: BLE001 - isolate the input that broke the batch; the others keep their rows
        if len(chunk) == 1:
            log.debug("prediction failed for %s", chunk[0], exc_info=True)
            res.problem(chunk[0], f"prediction failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
            return
        for f, image in zip(chunk, images, strict=True):
            try:
                _predict_images(predictor, [f], [image], args, annotate_dir, res)
            except Exception as e1:  # noqa: BLE001 - as above
                log.debug("prediction failed for %s", f, exc_info=True)
                res.problem(f, f"prediction failed: {type(e1).__name__}: {' '.join(str(e1).split())[:300]}")


def _predict_images(predictor, files: list[Path], images: list, args: argparse.Namespace,
                    annotate_dir: Path | None, res: _Results) -> None:
    """Rows for decoded ``images``; added to ``res`` only once the whole batch is predicted."""
    if not images:
        return
    if args.aligned:
        preds = predictor.predict(images, args.batch_size)
        res.rows.extend(_row(f, p.to_dict()) for f, p in zip(files, preds, strict=True))
        return
    photos = predictor.predict_photos(images, args.batch_size, max_faces=args.max_faces)
    for f, img, photo in zip(files, images, photos, strict=True):
        res.rows.extend(_row(f, face.to_dict()) for face in photo.faces)
        if not photo.found:
            res.rows.append({"file": str(f), "status": "no_face"})
        if photo.dropped:
            res.problem(f, f"{photo.found} faces found; the {len(photo.faces)} largest were predicted "
                        f"(--max-faces {args.max_faces})", status="faces_dropped")
        if annotate_dir:
            _annotate(img, photo.faces, f, annotate_dir, res)


def _annotate(image, faces: list, file: Path, folder: Path, res: _Results) -> None:
    """Write ``image`` with ``faces`` drawn into ``folder``, under a name no other input of this run has."""
    from agegender.annotate import draw_faces
    from agegender.outputs import atomic_write, unique_name

    target = folder / unique_name(Path(file).stem, "_annotated.jpg", res.annotated)
    try:
        drawn = draw_faces(image, faces)
        atomic_write(target, lambda f: drawn.save(f, "JPEG", quality=92))
    except OSError as e:
        res.problems.append((str(file), f"annotated copy {target} not written: {e.strerror or e}"))


def _write_predictions(rows: list[dict], out_path: Path) -> None:
    import json

    from agegender.outputs import write_json, write_rows

    if out_path.suffix.lower() == ".json":
        write_json([{k: v for k, v in r.items() if v is not None} for r in rows], out_path)
        return
    write_rows([{**r, "landmarks": json.dumps(r["landmarks"])} if isinstance(r.get("landmarks"), list) else r
                for r in rows], PREDICT_COLUMNS, out_path)


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from agegender.checkpoint import resolve_model_path
    from agegender.predictor import Predictor

    out_path = Path(args.out)
    if out_path.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--out must end in .csv or .json, got {out_path.name}")
    check_writable(out_path, "--out")  # now, not after every photo is done
    video = _video_input(args)
    annotate_dir = check_folder(args.annotate, "--annotate") if args.annotate and video is None else None
    detector = None
    if not args.aligned:
        from agegender.faces import FaceDetector

        detector = FaceDetector(min_face_size=args.min_face, thresholds=(0.6, 0.7, args.det_threshold))
    predictor = Predictor.from_checkpoint(resolve_model_path(args.model), device=args.device, flip_tta=args.tta,
                                          detector=detector, runtime=args.runtime, workers=args.workers or None)
    if video is not None:
        return _predict_video(predictor, video, args)
    files, missing = _predict_files(args)
    res = _Results()
    for f, why in missing:
        res.problem(f, why)
    done = 0
    # Files are read in groups that keep every worker busy; photos in smaller ones (a decoded photo is large).
    group = args.batch_size * predictor.workers * (4 if args.aligned else 1)
    try:
        with tqdm(total=len(files), desc="predict", unit="img", disable=True if args.quiet else None,
                  dynamic_ncols=True) as bar:
            for start in range(0, len(files), group):
                batch = files[start : start + group]
                _predict_batch(predictor, batch, args, annotate_dir, res)
                done += len(batch)
                bar.update(len(batch))
    finally:
        # Whatever stops the run (Ctrl-C included), the rows already computed are written.
        _write_predictions(res.rows, out_path)
        if done < len(files):
            log.warning("stopped after %d of %d files; their rows are in %s", done, len(files), out_path)
    for f, why in res.problems:
        log.warning("%s", why if why.startswith(f) else f"{f}: {why}")
    n_faces = sum(r["status"] == "ok" for r in res.rows)
    n_no_face = sum(r["status"] == "no_face" for r in res.rows)
    log.info("%d files: %d faces, %d without a face, %d problems -> %s", len(files), n_faces, n_no_face,
             len(res.problems), out_path)
    return EXIT_PARTIAL if res.problems else EXIT_OK


def _video_input(args: argparse.Namespace) -> Path | None:
    """The video to predict when the inputs name one (it must be the only input), else None."""
    from agegender.video import is_video

    if not any(is_video(i) for i in args.inputs):
        return None
    if len(args.inputs) != 1 or args.labels:
        raise ValueError("give one video alone (photos and other videos in separate runs)")
    if args.aligned:
        raise ValueError("--aligned is for face crops, not videos")
    if args.every < 1:
        raise ValueError(f"--every must be 1 or more, got {args.every}")
    return Path(args.inputs[0])


def _predict_video(predictor, video: Path, args: argparse.Namespace) -> int:
    try:
        from agegender.video_predict import predict_video

        out = Path(args.out)
        tracks = Path(args.tracks) if args.tracks else out.with_name(f"{out.stem}_tracks{out.suffix}")
        run = predict_video(predictor, video, out, tracks, args.annotate, args.every, progress=not args.quiet)
    except ImportError as e:
        log.error("%s", e)
        return EXIT_USAGE
    log.info("%s: %d frames (%d analysed) in %.1f s, %.1f frames/s: %d face rows -> %s, %d tracks -> %s%s", video,
             run.frames, run.analysed, run.seconds, run.frames / max(run.seconds, 1e-9), run.faces, out, run.tracks,
             tracks, f", annotated -> {args.annotate}" if args.annotate else "")
    if run.error:
        log.warning("%s (the rows of the frames before it are written)", run.error)
        return EXIT_PARTIAL
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
