"""``agegender predict``: photos, crops or one video in, rows out. A thin layer over
:func:`agegender.inference.batch.predict_files` and :func:`agegender.video.predict.predict_video`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from agegender.cli.options import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, needs
from agegender.io.outputs import check_folder, check_writable

log = logging.getLogger("agegender")


def _predict_files(args: argparse.Namespace) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files to predict (inputs, and those of --labels) and the inputs that are not there."""
    from agegender.inference.batch import expand_inputs

    if not args.inputs and not args.labels:
        raise ValueError("give image files or folders, or --data DIR --labels labels.csv")
    files, missing = expand_inputs(args.inputs)
    if args.labels:
        needs(("pandas",), "eval", "predict --labels")
        from agegender.data.sources import scan

        if not args.data:
            raise ValueError("--labels needs --data, the folder its file names are relative to")
        files += [Path(args.data) / r.file for r in scan(args.data, args.labels).records]
    return files, missing


def cmd_predict(args: argparse.Namespace) -> int:
    from agegender.inference.predictor import Predictor
    from agegender.model.checkpoint import resolve_model_path

    if args.engine == "ray":
        from agegender.cli.cluster import cmd_predict_ray

        return cmd_predict_ray(args)
    out_path = Path(args.out)
    if out_path.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--out must end in .csv or .json, got {out_path.name}")
    check_writable(out_path, "--out")  # now, not after every photo is done
    video = _video_input(args)
    annotate_dir = check_folder(args.annotate, "--annotate") if args.annotate and video is None else None
    detector = None
    if not args.aligned:
        from agegender.faces.detect import FaceDetector

        detector = FaceDetector(min_face_size=args.min_face, thresholds=(0.6, 0.7, args.det_threshold))
    predictor = Predictor.from_checkpoint(resolve_model_path(args.model), device=args.device, flip_tta=args.tta,
                                          detector=detector, runtime=args.runtime, workers=args.workers or None)
    if video is not None:
        return _predict_video(predictor, video, args)
    return _predict_photos(predictor, args, out_path, annotate_dir)


def _predict_photos(predictor, args: argparse.Namespace, out_path: Path, annotate_dir: Path | None) -> int:
    from agegender.inference.annotate import AnnotatedCopies
    from agegender.inference.batch import PHOTO_COLUMNS, RunSummary, predict_files, problem_row
    from agegender.io.sinks import row_sink

    files, missing = _predict_files(args)
    summary = RunSummary(len(files), problems=list(missing))
    try:
        # Whatever stops the run (Ctrl-C included), the rows already made are in place when the sink closes.
        with row_sink(out_path, PHOTO_COLUMNS) as sink:
            sink.write(problem_row(f, why) for f, why in missing)
            predict_files(predictor, files, sink, aligned=args.aligned, batch_size=args.batch_size,
                          max_faces=args.max_faces, annotate=AnnotatedCopies(annotate_dir) if annotate_dir else None,
                          progress=not args.quiet, summary=summary)
    finally:
        if summary.done < len(files):
            log.warning("stopped after %d of %d files; their rows are in %s", summary.done, len(files), out_path)
    for f, why in summary.problems:
        log.warning("%s", why if why.startswith(f) else f"{f}: {why}")
    log.info("%d files: %d faces, %d without a face, %d problems -> %s", len(files), summary.faces, summary.no_face,
             len(summary.problems), out_path)
    return EXIT_PARTIAL if summary.problems else EXIT_OK


def _video_input(args: argparse.Namespace) -> Path | None:
    """The video to predict when the inputs name one (it must be the only input), else None."""
    from agegender.video.clips import is_video

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
        from agegender.video.predict import predict_video

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
