"""One video file in; out: a row per face per analysed frame, a row per track, and optionally an annotated copy.

Frame rows stream into their file as frames are analysed (:class:`agegender.io.sinks.RowSink`), so a long clip
holds no rows in memory; the track rows and the annotated video are finished on the way out, and every output is
put in place after an interruption or a damaged frame too, with the rows of every frame before it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from agegender.errors import OutputError, VideoError
from agegender.inference.batch import PHOTO_COLUMNS, face_row
from agegender.inference.predictor import DEFAULT_MAX_FACES, Predictor
from agegender.inference.results import TrackedFrame, TrackEstimate, rounded
from agegender.io.outputs import check_not_inputs, check_writable, interrupts_held
from agegender.io.sinks import RowSink, check_rows_path
from agegender.video.clips import VideoInfo, VideoReader, VideoWriter, write_codec
from agegender.video.tracking import track

log = logging.getLogger(__name__)

# A photo row's face columns, with where in the clip and which person.
FRAME_COLUMNS = ["file", "frame", "time_s", "track", *PHOTO_COLUMNS[1:PHOTO_COLUMNS.index("status")]]
TRACK_COLUMNS = ["file", "track", "first_frame", "last_frame", "first_time_s", "last_time_s", "frames", "age",
                 "age_low", "age_high", "age_sigma", "gender", "p_female"]


def frame_rows(file: str, frame: TrackedFrame, time_s: float | None = None) -> list[dict]:
    """The rows of one analysed frame: one per face, with its track; ``time_s`` (default the frame's own)."""
    time_s = frame.time_s if time_s is None else time_s
    return [{**face_row(file, tracked.face), "frame": frame.index, "time_s": rounded("time_s", time_s),
             "track": tracked.track} for tracked in frame.faces]


def track_rows(file: str, tracks: dict[int, TrackEstimate], time_of: Callable[[int], float]) -> list[dict]:
    """One row per track: its frame range (and their times, ``time_of(frame)``), frames used and combined
    estimate."""
    return [{**estimate.to_dict(), "file": file, "first_time_s": rounded("first_time_s", time_of(estimate.first_frame)),
             "last_time_s": rounded("last_time_s", time_of(estimate.last_frame))}
            for _, estimate in sorted(tracks.items())]


@dataclass
class VideoRun:
    """What :func:`predict_video` did: frames read and analysed, face rows, tracks, seconds, the reason it
    stopped early (None when the video was read to its end), and what else went wrong (an annotated copy that did
    not reach the disk whole), one line each."""

    frames: int = 0
    analysed: int = 0
    faces: int = 0
    tracks: int = 0
    seconds: float = 0.0
    error: str | None = None
    problems: list[str] = field(default_factory=list)
    crowded: int = 0  # analysed frames with more faces than max_faces (the largest were followed)


def video_ahead(predictor: Predictor) -> int:
    """Analysed frames searched for faces at once: one per prediction thread, and at least two (the torch runtime
    predicts on one thread, but its face detection runs on onnxruntime like the other's)."""
    return max(2, predictor.workers)


class _Discard:
    """A row sink that keeps nothing (rows nobody asked for)."""

    def write(self, rows: object) -> None:
        pass

    def close(self) -> None:
        pass


def _rows(target: str | Path | Any | None, columns: list[str]) -> Any:
    """A row sink for ``target``: a .csv/.json path (a :class:`RowSink`), a sink already made (anything with
    ``write(rows)`` and ``close()``, e.g. :class:`agegender.io.sinks.StreamSink`), or None (nothing kept)."""
    if target is None:
        return _Discard()
    return RowSink(target, columns) if isinstance(target, str | Path) else target


def predict_video(predictor: Predictor, path: str | Path, out: str | Path | Any | None,
                  tracks_out: str | Path | Any | None, annotate: str | Path | None = None, every: int = 1,
                  progress: bool = True, max_faces: int | None = DEFAULT_MAX_FACES) -> VideoRun:
    """Follow the faces of the video at ``path``: frame rows to ``out``, track rows to ``tracks_out`` (each a .csv
    or .json path, a row sink, or None for none), the video with each track's running estimate drawn to
    ``annotate`` (.mp4 or .webm, which browsers play, or .avi) if given. Faces are detected in every ``every``-th
    frame, at most ``max_faces`` per frame (the largest; ``crowded`` counts the frames that had more). Each frame's
    time is its own timestamp. A video that cannot be opened raises :class:`VideoError`; one that breaks off
    part-way returns with ``error`` set after writing everything up to the break; an annotated copy the disk does
    not take is one of ``problems``, and the rows go on."""
    _check_outputs(path, out, tracks_out, annotate)
    reader = VideoReader(path)
    info, file, run, tracks = reader.info, str(path), VideoRun(), {}
    try:
        writer, frames_out, tracks_writer = _open_outputs(info, out, tracks_out, annotate)
    except BaseException:
        reader.close()
        raise
    start = time.perf_counter()
    bar = tqdm(total=info.frames or None, desc=Path(path).name, unit="frame", disable=None if progress else True,
               dynamic_ncols=True)
    # The frames being searched ahead are kept until their annotated copy is written (as many as track() holds).
    kept: dict[int, np.ndarray] = {}

    def frames() -> Iterator[np.ndarray]:
        for index, pixels in enumerate(reader):
            if writer is not None:
                kept[index] = pixels
            yield pixels

    try:
        for frame in track(predictor, frames(), every=every, ahead=video_ahead(predictor), max_faces=max_faces):
            run.frames += 1
            tracks = frame.tracks
            if frame.analysed:
                run.analysed += 1
                run.crowded += frame.dropped > 0
                rows = frame_rows(file, frame, reader.times[frame.index])
                run.faces += len(rows)
                frames_out.write(rows)
            if writer is not None:
                writer = _write_annotated(writer, kept.pop(frame.index), frame, run)
            else:
                kept.clear()
            bar.update(1)
    except VideoError as e:
        run.error = str(e)
    finally:
        with interrupts_held():  # a second Ctrl-C or SIGTERM waits until every file is finished
            bar.close()
            reader.close()
            frames_out.close()
            if writer is not None:
                try:
                    writer.close()
                    if problem := writer.incomplete():
                        run.problems.append(problem)
                except OutputError as e:
                    run.problems.append(str(e))
            tracks_writer.write(track_rows(file, tracks, reader.times.__getitem__))
            tracks_writer.close()
            run.tracks, run.seconds = len(tracks), time.perf_counter() - start
    return run


def _check_outputs(video: str | Path, out: Any, tracks_out: Any, annotate: str | Path | None) -> None:
    """Every output name checked before anything is opened, so that a mistyped one leaves no half-written files:
    kinds (rows to .csv/.json, a video the writer can make), folders that can be written, no two outputs the same
    file, and none of them the video itself (an annotated copy over its input replaced the clip with a stub).
    Outputs given as sinks (or None) are the caller's."""
    outputs = {what: check_rows_path(target) for what, target in (("--out", out), ("--tracks", tracks_out))
               if isinstance(target, str | Path)}
    if len(outputs) == 2 and outputs["--out"].resolve() == outputs["--tracks"].resolve():
        raise ValueError(f"the frame rows and the track rows would both go to {out}")
    if annotate is not None:
        write_codec(annotate)
        outputs["--annotate"] = Path(annotate)
    for what, target in outputs.items():
        check_writable(target, what)
    check_not_inputs(outputs, [video])


def _open_outputs(info: VideoInfo, out: Any, tracks_out: Any, annotate: str | Path | None) -> tuple[Any, Any, Any]:
    """The annotated video's writer (opened first: the encoder may still refuse it) and the two row sinks;
    whatever was opened is removed again if a later one fails, so a refused output leaves no header-only files."""
    writer = VideoWriter(annotate, info.fps, (info.width, info.height)) if annotate else None
    sinks: list[Any] = []
    try:
        sinks.append(_rows(out, FRAME_COLUMNS))
        sinks.append(_rows(tracks_out, TRACK_COLUMNS))
    except BaseException:
        for sink in sinks:
            if isinstance(sink, RowSink):
                sink.discard()
        if writer is not None:
            with contextlib.suppress(OutputError):
                writer.close()
            Path(annotate).unlink(missing_ok=True)
        raise
    return writer, sinks[0], sinks[1]


def _write_annotated(writer: VideoWriter, pixels: np.ndarray, frame: TrackedFrame, run: VideoRun) -> VideoWriter | None:
    """Draw ``frame`` on ``pixels`` into ``writer``; the writer, or None once a write has failed (a full disk):
    that is one of the run's problems, the copy stops there and the rows go on."""
    from PIL import Image

    from agegender.inference.annotate import draw_tracks

    try:
        writer.write(draw_tracks(Image.fromarray(pixels), frame.faces))
    except OutputError as e:
        run.problems.append(f"{e}; the annotated video stops there, the rows go on")
        with contextlib.suppress(OutputError):
            writer.close()
        return None
    return writer
