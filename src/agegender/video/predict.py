"""One video file in; out: a row per face per analysed frame, a row per track, and optionally an annotated copy.

Frame rows stream into their file as frames are analysed (:class:`agegender.io.sinks.RowSink`), so a long clip
holds no rows in memory; the track rows and the annotated video are finished on the way out, and every output is
put in place after an interruption or a damaged frame too, with the rows of every frame before it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from agegender.errors import VideoError
from agegender.inference.batch import PHOTO_COLUMNS, face_row
from agegender.inference.predictor import Predictor
from agegender.inference.results import TrackedFrame, TrackEstimate, rounded
from agegender.io.sinks import RowSink, check_rows_path
from agegender.video.clips import VideoReader, VideoWriter, write_codec
from agegender.video.tracking import track

log = logging.getLogger(__name__)

# A photo row's face columns, with where in the clip and which person.
FRAME_COLUMNS = ["file", "frame", "time_s", "track", *PHOTO_COLUMNS[1:PHOTO_COLUMNS.index("status")]]
TRACK_COLUMNS = ["file", "track", "first_frame", "last_frame", "first_time_s", "last_time_s", "frames", "age",
                 "age_low", "age_high", "age_sigma", "gender", "p_female"]


def frame_rows(file: str, frame: TrackedFrame) -> list[dict]:
    """The rows of one analysed frame: one per face, with its track."""
    return [{**face_row(file, tracked.face), "frame": frame.index, "time_s": rounded("time_s", frame.time_s),
             "track": tracked.track} for tracked in frame.faces]


def track_rows(file: str, tracks: dict[int, TrackEstimate], fps: float) -> list[dict]:
    """One row per track: its frame range (and times), frames used and combined estimate."""
    return [{**estimate.to_dict(), "file": file, "first_time_s": rounded("first_time_s", estimate.first_frame / fps),
             "last_time_s": rounded("last_time_s", estimate.last_frame / fps)}
            for _, estimate in sorted(tracks.items())]


@dataclass
class VideoRun:
    """What :func:`predict_video` did: frames read and analysed, face rows, tracks, seconds, and the reason it
    stopped early (None when the video was read to its end)."""

    frames: int = 0
    analysed: int = 0
    faces: int = 0
    tracks: int = 0
    seconds: float = 0.0
    error: str | None = None


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
                  progress: bool = True) -> VideoRun:
    """Follow the faces of the video at ``path``: frame rows to ``out``, track rows to ``tracks_out`` (each a .csv
    or .json path, a row sink, or None for none), the video with each track's running estimate drawn to
    ``annotate`` (.mp4 or .webm, which browsers play, or .avi) if given. Faces are detected in every ``every``-th
    frame. A video that cannot be opened raises :class:`VideoError`; one that breaks off part-way returns with
    ``error`` set after writing everything up to the break."""
    # Every output name is checked before anything is opened, so a mistyped one leaves no half-written files.
    paths = [check_rows_path(p).resolve() for p in (out, tracks_out) if isinstance(p, str | Path)]
    if len(paths) == 2 and paths[0] == paths[1]:
        raise ValueError(f"the frame rows and the track rows would both go to {out}")
    if annotate is not None:
        write_codec(annotate)
    reader = VideoReader(path)
    info, file, run = reader.info, str(path), VideoRun()
    frames_out, tracks_writer, tracks = _rows(out, FRAME_COLUMNS), _rows(tracks_out, TRACK_COLUMNS), {}
    writer = VideoWriter(annotate, info.fps, (info.width, info.height)) if annotate else None
    start = time.perf_counter()
    bar = tqdm(total=info.frames or None, desc=Path(path).name, unit="frame", disable=None if progress else True,
               dynamic_ncols=True)
    # The frames being searched ahead are kept until their annotated copy is written.
    kept: dict[int, np.ndarray] = {}

    def frames() -> Iterator[np.ndarray]:
        for index, pixels in enumerate(reader):
            if writer is not None:
                kept[index] = pixels
            yield pixels

    try:
        for frame in track(predictor, frames(), every=every, fps=info.fps, ahead=video_ahead(predictor)):
            run.frames += 1
            tracks = frame.tracks
            if frame.analysed:
                run.analysed += 1
                rows = frame_rows(file, frame)
                run.faces += len(rows)
                frames_out.write(rows)
            if writer is not None:
                _write_annotated(writer, kept.pop(frame.index), frame)
            bar.update(1)
    except VideoError as e:
        run.error = str(e)
    finally:
        bar.close()
        reader.close()
        frames_out.close()
        if writer is not None:
            writer.close()
        tracks_writer.write(track_rows(file, tracks, info.fps))
        tracks_writer.close()
        run.tracks, run.seconds = len(tracks), time.perf_counter() - start
    return run


def _write_annotated(writer: VideoWriter, pixels: np.ndarray, frame: TrackedFrame) -> None:
    from PIL import Image

    from agegender.inference.annotate import draw_tracks

    writer.write(draw_tracks(Image.fromarray(pixels), frame.faces))
