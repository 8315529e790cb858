"""``agegender predict``: photos, crops or one video in, rows out. A thin layer over
:func:`agegender.inference.batch.predict_files` and :func:`agegender.video.predict.predict_video`.

Rows go to ``--out`` (a .csv or .json file), to standard output with ``--out -`` (CSV, or JSON lines with
``--json``), or, with no ``--out``, to the terminal as a table (JSON lines with ``--json``). ``-`` as the input
reads one image from standard input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from agegender.cli.options import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, needs, plural, warn_problems
from agegender.io.outputs import check_folder, check_writable

log = logging.getLogger("agegender")

STDIN = "-"
STDIN_NAME = "<stdin>"  # the file column of an image read from standard input


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


def _out_path(args: argparse.Namespace) -> Path | None:
    """``--out`` checked now, not after every photo is done; None when the rows go to standard output."""
    if args.out is None or args.out == STDIN:
        return None
    out_path = Path(args.out)
    if out_path.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--out must end in .csv or .json (or be - for standard output), got {out_path.name}")
    return check_writable(out_path, "--out")


def _stdout_sink(args: argparse.Namespace, columns: list[str], table: list, file_width: int = 20):
    """Rows to standard output: CSV (--out -) or JSON lines (--json), else a table for the terminal."""
    from agegender.io.sinks import StreamSink

    if args.out == STDIN or args.json:
        return StreamSink(sys.stdout, columns, json_lines=args.json)
    from agegender.cli.table import TableSink

    return TableSink(sys.stdout, table, file_width)


def _sink(args: argparse.Namespace, out_path: Path | None, columns: list[str], table: list,
          file_width: int = 20) -> AbstractContextManager:
    """Where the rows go: the --out file (put in place however the run ends), else standard output."""
    from agegender.io.sinks import row_sink

    if out_path is not None:
        return row_sink(out_path, columns)
    return nullcontext(_stdout_sink(args, columns, table, file_width))


def cmd_predict(args: argparse.Namespace) -> int:
    from agegender.inference.predictor import Predictor
    from agegender.model.checkpoint import resolve_model_path

    if args.engine == "ray":
        from agegender.cli.cluster import cmd_predict_ray

        return cmd_predict_ray(args)
    out_path = _out_path(args)
    video = _video_input(args)
    annotate_dir = check_folder(args.annotate, "--annotate") if args.annotate and video is None else None
    # The device is checked first (an unknown or missing one is a one-line error, exit 2), then the model loads.
    predictor = Predictor.from_checkpoint(resolve_model_path(args.model), device=args.device, flip_tta=args.tta,
                                          runtime=args.runtime, workers=args.workers or None)
    if not args.aligned:
        from agegender.faces.detect import FaceDetector

        predictor.detector = FaceDetector(min_face_size=args.min_face, thresholds=(0.6, 0.7, args.det_threshold),
                                          providers=predictor.providers)
    if video is not None:
        return _predict_video(predictor, video, args)
    return _predict_photos(predictor, args, out_path, annotate_dir)


def _progress(args: argparse.Namespace, out_path: Path | None) -> bool:
    # Rows on the terminal show the progress themselves; a bar on the same terminal would tear them.
    return not args.quiet and (out_path is not None or not sys.stdout.isatty())


def _predict_photos(predictor, args: argparse.Namespace, out_path: Path | None, annotate_dir: Path | None) -> int:
    from agegender.cli.table import photo_table
    from agegender.inference.annotate import AnnotatedCopies
    from agegender.inference.batch import PHOTO_COLUMNS, RunSummary, predict_files, problem_row
    from agegender.io.outputs import check_not_inputs

    stdin = STDIN in args.inputs
    if stdin and (len(args.inputs) != 1 or args.labels):
        raise ValueError("- (one image on standard input) must be the only input")
    files, missing = ([], []) if stdin else _predict_files(args)
    check_not_inputs({"--out": out_path}, files)
    summary = RunSummary(1 if stdin else len(files), problems=list(missing))
    annotate = AnnotatedCopies(annotate_dir, files) if annotate_dir else None
    width = max((len(str(f)) for f in [*files, *(m for m, _ in missing), STDIN_NAME]), default=20)
    sink = None
    try:
        # Whatever stops the run (Ctrl-C, SIGTERM), the rows already made are in place when the sink closes.
        with _sink(args, out_path, PHOTO_COLUMNS, photo_table(predictor.interval_coverage), width) as sink:
            sink.write(problem_row(f, why) for f, why in missing)
            if stdin:
                _predict_stdin(predictor, args, sink, annotate, summary)
            else:
                predict_files(predictor, files, sink, aligned=args.aligned, batch_size=args.batch_size,
                              max_faces=args.max_faces, annotate=annotate, progress=_progress(args, out_path),
                              summary=summary)
    finally:
        # A failed write said in its own line where its rows are.
        if summary.done < summary.files and getattr(sink, "failed", None) is None:
            log.warning("stopped after %d of %s; their rows are in %s", summary.done,
                        plural(summary.files, "file"), getattr(sink, "where", None) or out_path or "the output above")
    warn_problems(summary.problems)
    log.info("%s: %s, %d without a face, %s%s", plural(summary.files, "file"), plural(summary.faces, "face"),
             summary.no_face, plural(len(summary.problems), "problem"), f" -> {out_path}" if out_path else "")
    return EXIT_PARTIAL if summary.problems else EXIT_OK


def _predict_stdin(predictor, args: argparse.Namespace, sink, annotate, summary) -> None:
    """One image read from standard input, its rows written to ``sink`` and counted in ``summary``."""
    from agegender.inference.batch import predict_items

    if sys.stdin is None or sys.stdin.isatty():
        raise ValueError("- reads an image from standard input; pipe one in (agegender predict - < photo.jpg)")
    result = predict_items(predictor, [(STDIN_NAME, sys.stdin.buffer.read())], aligned=args.aligned,
                           batch_size=args.batch_size, max_faces=args.max_faces, annotate=annotate)
    sink.write(result.rows)
    summary.add(result, 1)


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


def _annotated_video(args: argparse.Namespace, video: Path) -> Path | None:
    """The annotated copy to write: VIDEO_annotated.mp4 in the folder --annotate names (as photos' copies go into
    a folder), or --annotate itself when it is a file name (one with a suffix, not an existing folder)."""
    if not args.annotate:
        return None
    target = Path(args.annotate)
    if target.suffix and not target.is_dir():
        return target  # its suffix picks the codec; predict_video refuses one it cannot write
    return check_folder(target, "--annotate") / f"{video.stem}_annotated.mp4"


def _predict_video(predictor, video: Path, args: argparse.Namespace) -> int:
    from agegender.cli.table import track_table

    out = _out_path(args)
    # Frame rows to --out (or standard output with --out -); track rows to --tracks, else beside --out, else (no
    # --out) to the terminal: one line per person.
    tracks = Path(args.tracks) if args.tracks else out.with_name(f"{out.stem}_tracks{out.suffix}") if out else None
    annotate = _annotated_video(args, video)
    try:
        from agegender.video.predict import FRAME_COLUMNS, TRACK_COLUMNS, predict_video

        frames = out or (_stdout_sink(args, FRAME_COLUMNS, []) if args.out == STDIN else None)
        people = tracks or (None if args.out == STDIN else _stdout_sink(args, TRACK_COLUMNS,
                                                                          track_table(predictor.interval_coverage)))
        run = predict_video(predictor, video, frames, people, annotate, args.every, progress=_progress(args, out),
                            max_faces=args.max_faces)
    except ImportError as e:
        log.error("%s", e)
        return EXIT_USAGE
    log.info("%s: %d frames (%d analysed) in %.1f s, %.1f frames/s: %s%s, %s%s%s", video, run.frames, run.analysed,
             run.seconds, run.frames / max(run.seconds, 1e-9), plural(run.faces, "face row"),
             f" -> {out}" if out else "", plural(run.tracks, "person", "people"), f" -> {tracks}" if tracks else "",
             f", annotated -> {annotate}" if annotate else "")
    if run.error:
        log.warning("%s (the rows of the frames before it are written)", run.error)
    if run.crowded:
        run.problems.append(f"{video}: {run.crowded} of {run.analysed} analysed frames had more than --max-faces "
                            f"{args.max_faces} faces; the {args.max_faces} largest of each were followed")
    for problem in run.problems:
        log.warning("%s", problem)
    return EXIT_PARTIAL if run.error or run.problems else EXIT_OK
