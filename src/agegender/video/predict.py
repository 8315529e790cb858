"""One video file in; out: a row per face per analysed frame, a row per track, and optionally an annotated copy.

Frame rows are written as they come (CSV: flushed after every frame), so an interrupted or failing run keeps
every row of the frames before it; the track rows and the annotated video are finished on the way out, after an
interruption or a damaged frame too.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from agegender.outputs import csv_row
from agegender.predictor import Predictor
from agegender.tracking import TrackedFrame, TrackEstimate
from agegender.video import VideoError, VideoReader, VideoWriter, write_codec

log = logging.getLogger(__name__)

FRAME_COLUMNS = ["file", "frame", "time_s", "track", "face", "box_x1", "box_y1", "box_x2", "box_y2", "det_score",
                 "age", "age_low", "age_high", "age_sigma", "gender", "p_female"]
TRACK_COLUMNS = ["file", "track", "first_frame", "last_frame", "first_time_s", "last_time_s", "frames", "age",
                 "age_low", "age_high", "age_sigma", "gender", "p_female"]
# Digits kept in the output, for reading; the library's objects keep full precision.
DIGITS = {"time_s": 3, "first_time_s": 3, "last_time_s": 3, "age": 2, "age_low": 2, "age_high": 2,
          "age_sigma": 3, "p_female": 5, "det_score": 4}


def check_rows_path(path: str | Path) -> Path:
    """``path`` if rows can be written there (.csv or .json), else ValueError."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"{path.name}: rows are written to .csv or .json files")
    return path


class RowWriter:
    """Rows (dicts) to ``path``: a ``.csv`` is written and flushed as rows come; a ``.json`` list on close."""

    def __init__(self, path: str | Path, columns: list[str]) -> None:
        self.path, self.columns, self.rows = check_rows_path(path), columns, 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._json: list[dict] | None = [] if self.path.suffix.lower() == ".json" else None
        self._file = None
        if self._json is None:
            # Names that are not valid UTF-8 are written back as the bytes they were, as outputs.write_rows does.
            self._file = open(self.path, "w", newline="", encoding="utf-8",  # noqa: SIM115 - closed in close()
                              errors="surrogateescape")
            self._csv = csv.DictWriter(self._file, columns, extrasaction="ignore")
            self._csv.writeheader()

    def write(self, rows: list[dict]) -> None:
        rows = [{k: round(v, DIGITS[k]) if k in DIGITS and v is not None else v for k, v in r.items()
                 if k in self.columns} for r in rows]
        self.rows += len(rows)
        if self._json is not None:
            self._json.extend({k: v for k, v in r.items() if v is not None} for r in rows)
            return
        self._csv.writerows(csv_row(r) for r in rows)
        self._file.flush()

    def close(self) -> None:
        if self._json is not None:
            self.path.write_text(json.dumps(self._json, indent=2))
        elif self._file is not None:
            self._file.close()


def frame_rows(file: str, frame: TrackedFrame) -> list[dict]:
    """The rows of one analysed frame: one per face, with its track."""
    rows = []
    for tracked in frame.faces:
        face = tracked.face.to_dict()
        x1, y1, x2, y2 = face.pop("box")
        rows.append({**face, "file": file, "frame": frame.index, "time_s": frame.time_s, "track": tracked.track,
                     "box_x1": x1, "box_y1": y1, "box_x2": x2, "box_y2": y2})
    return rows


def track_rows(file: str, tracks: dict[int, TrackEstimate], fps: float) -> list[dict]:
    """One row per track: its frame range (and times), frames used and combined estimate."""
    return [{**estimate.to_dict(), "file": file, "first_time_s": estimate.first_frame / fps,
             "last_time_s": estimate.last_frame / fps} for _, estimate in sorted(tracks.items())]


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


def predict_video(predictor: Predictor, path: str | Path, out: str | Path, tracks_out: str | Path,
                  annotate: str | Path | None = None, every: int = 1, progress: bool = True) -> VideoRun:
    """Follow the faces of the video at ``path``: frame rows to ``out``, track rows to ``tracks_out`` (.csv or
    .json), the video with each track's running estimate drawn to ``annotate`` (.mp4 or .avi) if given. Faces are
    detected in every ``every``-th frame. A video that cannot be opened raises :class:`VideoError`; one that
    breaks off part-way returns with ``error`` set after writing everything up to the break."""
    # Every output name is checked before anything is opened, so a mistyped one leaves no half-written files.
    if check_rows_path(out).resolve() == check_rows_path(tracks_out).resolve():
        raise ValueError(f"the frame rows and the track rows would both go to {out}")
    if annotate is not None:
        write_codec(annotate)
    reader = VideoReader(path)
    info, file, run = reader.info, str(path), VideoRun()
    frames_out, tracks_writer, tracks = RowWriter(out, FRAME_COLUMNS), RowWriter(tracks_out, TRACK_COLUMNS), {}
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
        for frame in predictor.track(frames(), every=every, fps=info.fps, ahead=video_ahead(predictor)):
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

    from agegender.annotate import draw_tracks

    writer.write(draw_tracks(Image.fromarray(pixels), frame.faces))
