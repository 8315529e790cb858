"""The ``agegender`` argument parser: one sub-parser per command, built only for the command being run, so that
``agegender --help`` imports nothing heavy and ``agegender predict`` never imports torch.

``agegender serve`` also reads each option from the environment (``AGEGENDER_SERVE_<OPTION>``, e.g.
``AGEGENDER_SERVE_PORT=8080``), for containers; a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Iterable
from typing import NoReturn

from agegender._lazy import importable
from agegender.errors import MissingExtra

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143


COMMANDS = {
    "train": "train a model on a UTKFace folder",
    "evaluate": "evaluate a checkpoint on labelled images",
    "predict": "find faces in photos or a video and predict their age and gender",
    "export": "export a model to ONNX",
    "serve": "run the web service and page",
}


def plural(n: int, word: str, words: str | None = None) -> str:
    """``"1 file"``, ``"2 files"``; ``words``: the plural where it is not ``word + "s"``.

    >>> plural(1, "problem"), plural(0, "problem"), plural(2, "person", "people")
    ('1 problem', '0 problems', '2 people')
    """
    return f"{n} {word if n == 1 else words or word + 's'}"


def warn_problems(problems: Iterable[tuple[str, str]]) -> None:
    """One warning per input that could not be (fully) used, naming it once: most reasons start with the name."""
    for f, why in problems:
        logging.getLogger("agegender").warning("%s", why if why.startswith(f) else f"{f}: {why}")


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
    "old_print": "probability that a training image gets old-print damage: sepia or a colour cast, faded blacks "
                 "and low contrast, film grain, scan blur, halftone screen, vignetting, low resolution (each with "
                 "its own chance); 0 = off",
    "age_prior_tau": "balanced softmax (dldl): the loss sees the age logits plus TAU x log(training age prior / "
                     "a prior in which every age group is equally common), so the network answers as if every "
                     "age group were equally common; 0 = off, 1 = the whole correction",
    "select": "the pooled validation figure best.pt is chosen by: balanced_age_mae (the mean of the age groups' "
              "MAEs, every group counted the same) or age_mae (every image the same); age_mae where validation "
              "has no group of 20",
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

    from agegender.training.config import TrainConfig, option_type

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
    p.add_argument("--device", default=device,
                   help=f"cpu, cuda, cuda:N or auto: onnxruntime's CUDA provider (pip install 'agegender[gpu]') or "
                   f"the CPU; torch devices with --runtime torch (default {device})")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the mirrored image (default: as the checkpoint was calibrated)")
    p.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto",
                   help="auto (default): onnxruntime for the bundled model and .onnx files, torch for other .pt "
                   "checkpoints; onnx: export a .pt once (cached) and run it with onnxruntime; torch: the .pt in "
                   "torch")


def _add_run_options(p: argparse.ArgumentParser, batch_size: int, batch_help: str, workers_help: str,
                     device: str) -> None:
    """The options of a command that runs a model over many images: batch size, threads, model, logging."""
    p.add_argument("--batch-size", type=_number(int, 1), default=batch_size,
                   help=f"{batch_help} (default {batch_size})")
    # At most 64: each thread holds a group of decoded photos or a video frame being searched (600 held 1.8 GB).
    p.add_argument("--workers", type=_number(int, 0, 64), default=0,
                   help=f"{workers_help}, 0-64 (default 0 = one per core, at most 4)")
    _add_model_options(p, device)
    _add_common(p)


def _add_max_faces(p: argparse.ArgumentParser, what_then: str) -> None:
    from agegender.inference.predictor import DEFAULT_MAX_FACES

    p.add_argument("--max-faces", type=_number(int, 1), default=DEFAULT_MAX_FACES,
                   help=f"predict at most this many faces per photo, the largest (default {DEFAULT_MAX_FACES}); "
                   + what_then)


def _add_face_policy(p: argparse.ArgumentParser) -> None:
    from agegender.faces.loader import FACE_POLICIES

    p.add_argument("--face", choices=FACE_POLICIES, default=FACE_POLICIES[0],
                   help="with --detect: skip photos with several faces (default) or use the largest")


def needs(modules: tuple[str, ...], extra: str, command: str) -> None:
    """Raise :class:`MissingExtra` unless every module in ``modules`` can be imported."""
    missing = [m for m in modules if not importable(m)]
    if missing:
        raise MissingExtra(f"agegender {command} needs {', '.join(missing)}, not installed here: "
                           f"pip install 'agegender[{extra}]'")


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help=COMMANDS["train"],
                       description="Train on a UTKFace folder. Defaults come from the built-in config, then "
                       "--config YAML, then the flags given here. Writes best.pt, last.pt, config.yaml, "
                       "metrics.csv, split.csv and curves.png into --out.")
    needs(("torch", "torchvision", "yaml", "pandas", "matplotlib"), "train", "train")
    t.add_argument("--config", help="YAML file of options (keys as in a run's config.yaml)")
    _add_train_options(t)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt, with the "
                   "run's own config.yaml (flags may change only --epochs, --data, --num-workers, --device)")
    _add_common(t)


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    from agegender.data.sources import SUBSETS

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
    e.add_argument("--damage", choices=("degraded", "old_print"),
                   help="score a fixed damaged copy of each face: degraded (greyscale, a third of the size, blurred, "
                   "JPEG quality 30: a poor photo) or old_print (sepia, faded, grainy, small, dark corners: a scanned "
                   "family print); robustness to poor photos")
    e.add_argument("--split-file", help="a run's split.csv, to evaluate one subset")
    e.add_argument("--subset", default="test", choices=SUBSETS, help="subset (default test)")
    e.add_argument("--out", required=True, help="REPORT.json to write")
    e.add_argument("--predictions", help="PREDS.csv to write (default: beside REPORT.json)")
    _add_run_options(e, 128, "images read per step", "threads that read the images", "auto")


def _add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help=COMMANDS["predict"],
                       description="Detect faces (MTCNN), align each to UTKFace's framing and predict; with "
                       "--aligned, treat each image as a ready face crop. Inputs are files or folders (searched "
                       "recursively), or - for one image on standard input. Prints a table of the faces, or "
                       "writes CSV or JSON by the extension of --out: a row per face, and a row with status "
                       "no_face or error where there is none or the file cannot be read. A video (one, alone: "
                       ".mp4, .mov, .mkv, .webm, .avi, ...) gives a row per face per analysed frame with its "
                       "person (track), and a row per person (--tracks) combining that person's frames; without "
                       "--out, a table of the people.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders, a video, or - (standard input)")
    p.add_argument("--labels", help="predict the files listed in this CSV (column file, relative to --data)")
    p.add_argument("--data", help="folder the --labels file names are relative to")
    p.add_argument("--out", help="PREDS.csv or PREDS.json, or - for CSV on standard output (default: a table on "
                   "standard output); --engine ray: a folder or s3:// prefix")
    p.add_argument("--json", action="store_true", help="with no --out or --out -: JSON lines, one object per row")
    p.add_argument("--aligned", action="store_true", help="inputs are aligned face crops: skip detection")
    p.add_argument("--annotate", metavar="DIR", help="also write each photo, or the video, with boxes and labels "
                   "drawn into the folder DIR (a video as VIDEO_annotated.mp4, H.264, which browsers play); for a "
                   "video, a file name (.mp4, .webm or .avi) instead")
    p.add_argument("--every", type=int, default=1, metavar="K",
                   help="video: detect faces in every K-th frame (default 1, every frame)")
    p.add_argument("--tracks", metavar="PATH", help="video: the per-track rows (.csv or .json; default: beside "
                   "--out, named OUT_tracks)")
    p.add_argument("--min-face", type=_number(int, 1), default=20,
                   help="smallest face side to look for, pixels (default 20)")
    p.add_argument("--det-threshold", type=_number(float, 0, 1), default=0.7,
                   help="minimum detector score of the final stage (default 0.7)")
    _add_max_faces(p, "a photo with more gets a faces_dropped row")
    _add_run_options(p, 16, "images per network call", "threads that decode, detect and predict side by side; "
                     "with --engine ray, actors of one CPU each (0: one per CPU of the cluster)", "cpu")
    _add_engine_options(p)


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    """``predict --engine ray``: many photos over a Ray cluster into a Parquet dataset (docs/batch.md)."""
    g = p.add_argument_group("--engine ray (pip install 'agegender[ray]'; docs/batch.md)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local (default): this process; ray: Ray Data actors write --out as a Parquet dataset (a "
                   "folder or s3://bucket/prefix), resumable: a re-run skips the inputs already there. INPUTs may "
                   "also be .txt lists of paths or URIs, and s3:// prefixes")
    g.add_argument("--address", default=None, help="Ray cluster to run on (default: RAY_ADDRESS, else a local "
                   "Ray started for the run)")
    g.add_argument("--s3-endpoint", default=None, metavar="URL", help="S3-compatible endpoint, e.g. "
                   "http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL, else AWS); credentials and region from the "
                   "usual AWS variables")
    g.add_argument("--block-size", type=_number(int, 1), default=256,
                   help="inputs per Parquet part file, the most work a dead worker costs (default 256)")


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
                       description="Serve POST /v1/predict, GET /v1/model and a web page at / over HTTP. Every "
                       "option may also be set in the environment as AGEGENDER_SERVE_<OPTION> (e.g. "
                       "AGEGENDER_SERVE_MAX_FACES=10); a flag given here wins.")
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
    p.add_argument("--max-live", type=_number(int, 0, 10000), default=32,
                   help="live WebSocket connections (/v1/track) open at once; more are refused with 503 (default 32)")
    p.add_argument("--live-idle-timeout", type=_number(float, 0, low_open=True), default=30,
                   help="seconds a live connection may go without sending a frame before it is closed (default 30)")
    p.add_argument("--header-timeout", type=_number(float, 0, low_open=True), default=10,
                   help="seconds a client may take to send a request's headers before the connection is closed "
                   "(default 10)")
    p.add_argument("--allowed-hosts", default="auto",
                   help="comma-separated host names the Host header may carry, * for any; auto (default): "
                   "localhost, 127.0.0.1 and ::1 when --host is a loopback address, else any")
    p.add_argument("--docs", action=argparse.BooleanOptionalAction, default=True,
                   help="serve the API's documentation at /docs (Swagger UI, served by this service; nothing from "
                   "elsewhere); /openapi.json is always served (default on)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto: where the model and the "
                   "face detector run (onnxruntime's CUDA provider: pip install 'agegender[gpu]')")
    _add_common(p)
    _env_defaults(p, "AGEGENDER_SERVE_")


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _env_defaults(p: argparse.ArgumentParser, prefix: str) -> None:
    """Defaults of ``p``'s options from ``PREFIX<OPTION>`` environment variables (a container's settings); a value
    is checked like the flag's own (argparse converts a string default with the option's type)."""
    for action in p._actions:
        key = prefix + action.dest.upper()
        if not action.option_strings or action.dest == "help" or key not in os.environ:
            continue
        text = os.environ[key].strip()
        if action.nargs == 0:  # an on/off flag
            if text.lower() not in TRUE + FALSE:
                p.error(f"{key}={text!r}: expected one of {', '.join(TRUE + FALSE[:-1])}")
            action.default = text.lower() in TRUE
        elif action.choices is not None and text not in action.choices:
            p.error(f"{key}={text!r}: expected one of {', '.join(map(str, action.choices))}")
        else:
            action.default = text

def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` gets its options (all do when ``argv`` is None), so
    that ``agegender --help`` imports nothing and ``agegender predict`` never imports torch (the training
    options come from the training config)."""
    from agegender import __version__

    parser = _Parser(
        prog="agegender",
        description="Estimate age (years) and gender from face images: train, evaluate and predict.",
        epilog="Exit status: 0 ok, 1 some inputs skipped (rest done), 2 user error, 3 internal error (a bug), "
        "130 interrupted, 143 terminated (SIGTERM); outputs are finished with the work done.",
    )
    parser.add_argument("--version", action="version", version=f"agegender {__version__}")
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
