"""Reading and writing video files, frame by frame: reading with OpenCV (its bundled FFmpeg reads mp4, mov, mkv,
webm, avi and more), writing with PyAV (FFmpeg's encoders in its wheels): H.264 in .mp4, .m4v and .mov and VP9 in
.webm, which every current browser plays, Motion JPEG in .avi.

Frames are ``(H, W, 3)`` uint8 RGB arrays, the order the rest of agegender uses; OpenCV's BGR stays inside this
module.
"""

from __future__ import annotations

import logging
import os
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

# FFmpeg's own messages (a missing moov atom, a broken packet) would reach the terminal besides the one-line error
# this module raises; keep them to fatal ones unless the user asked for another level.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")

import numpy as np  # noqa: E402

try:  # the video extra; an inference-only install has none, and says so when a video is opened
    import cv2  # noqa: E402 - after the log level above, which FFmpeg reads when OpenCV first uses it
except ImportError:
    cv2 = None

from agegender.errors import OutputError, VideoError, one_line  # noqa: E402
from agegender.io.images import MAX_PIXELS, as_rgb_array  # noqa: E402
from agegender.video.containers import declared_size  # noqa: E402

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv",
                            ".flv", ".3gp", ".y4m", ".mjpeg"})
# The codec written for each output suffix. OpenCV's own writer has only MPEG-4 Part 2 for .mp4, which Chrome and
# Firefox do not play.
WRITE_CODECS = {".mp4": "h264", ".m4v": "h264", ".mov": "h264", ".webm": "vp9", ".avi": "mjpeg"}
# PyAV's encoder and settings for each codec, and the pixel format browsers take (4:2:0). H.264: x264's "veryfast"
# preset at its default quality (crf 23); VP9: libvpx in real-time mode, its fastest. On 640x480 frames of a moving
# face (2 shared cores) they wrote 45 and 54 frames/s in 46 and 59 KiB per 100 frames, where OpenCV's mp4v took
# 333 KiB and its VP9 (libvpx's slowest mode, the only one it sets) 2.6 frames/s.
ENCODERS = {"h264": ("libx264", {"preset": "veryfast", "crf": "23"}, "yuv420p"),
            "vp9": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"}, "yuv420p"),
            "mjpeg": ("mjpeg", {"q:v": "3"}, "yuvj420p")}
# Frames a container may over-declare without the file being damaged (durations are often rounded up).
COUNT_SLACK = 2


@contextmanager
def _opencv_errors_only() -> Iterator[None]:
    """OpenCV's own warnings held back for the block: it warns on stderr for a file it cannot open and for every
    frame it fails to write (5,925 lines on a full disk); this module says each in one line instead."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def _need_opencv() -> None:
    if cv2 is None:
        raise ImportError("reading and writing video needs OpenCV and norfair-enough: pip install 'agegender[video]'")


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video by its suffix.

    >>> is_video("clip.MP4"), is_video("photo.jpg")
    (True, False)
    """
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    """What the container says: frames per second, frame size, and how many frames (0 when it does not say)."""

    fps: float
    width: int
    height: int
    frames: int


class _Closing:
    """``with`` closes it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
                 ) -> None:
        self.close()


class VideoReader(_Closing):
    """The frames of a video file, in order: ``for frame in VideoReader(path)`` gives ``(H, W, 3)`` uint8 RGB, and
    ``times[i]`` the time of frame ``i`` in seconds, from its own timestamp (a clip of variable frame rate put
    frame 20 at 8.0 s by its index over the average rate, where its timestamp said 11.0 s).

    Raises :class:`VideoError` at once when the file cannot be opened or its frames are over ``max_pixels`` (the
    decoding gate's limit for photos: a 2.4 MB MJPEG clip of 14000x14000 frames took 6.4 GB; OpenCV scales every
    frame to the stream's size, so a frame that grows part-way is held to it too), and after the last whole frame
    when the file ends before its container says it does:
    its last frame is earlier than the duration the container declares, or the file is shorter than the bytes its
    container states (:mod:`agegender.video.containers`; a truncated .ts or .wmv reports a frame count that fits
    the cut, or none). Everything before the damage is yielded first.
    """

    def __init__(self, path: str | Path, max_pixels: int = MAX_PIXELS) -> None:
        _need_opencv()
        self.path, self.max_pixels = Path(path), max_pixels
        if not self.path.is_file():
            raise VideoError(f"{self.path}: no such file")
        with _opencv_errors_only():  # the VideoError below says it in one line
            self._cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            self._cap.release()
            raise VideoError(f"{self.path}: not a video OpenCV can open (damaged, truncated before its index, "
                             "or an unknown format)")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.info = VideoInfo(fps=fps if fps > 0 and np.isfinite(fps) else 25.0,
                              width=int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                              height=int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                              frames=max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))))
        if self.info.width * self.info.height > max_pixels:
            self._cap.release()
            raise VideoError(f"{self.path}: its frames are {self.info.width}x{self.info.height} pixels, over the "
                             f"limit of {max_pixels:,} (a decompression bomb, or far larger than faces need)")
        self.frames_read = 0
        self.times = array("d")
        self._last_time: float | None = None  # of the frame read last (read ahead of the one yielded)

    def __iter__(self) -> Iterator[np.ndarray]:
        # One frame is read ahead: the frame read last before a break is often decoded from half its data (grey
        # or smeared below the cut) and is left out, so every frame yielded is whole.
        decoded, ahead, problem = 0, None, None
        while True:
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                problem = self._cut_short(decoded)
                break
            time_s = self._timestamp()
            decoded += 1
            if ahead is not None:
                yield self._yield(ahead)
            ahead = (bgr, time_s)
        if ahead is not None and problem is None:
            yield self._yield(ahead)
        if problem:
            raise VideoError(problem)
        if decoded == 0:
            raise VideoError(f"{self.path}: no frame could be decoded")

    def _timestamp(self) -> float:
        """The time of the frame just read: its timestamp, or one frame after the last where it has none that
        comes later (a decoder's flushed last frame reads 0)."""
        time_s = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000
        last = self._last_time
        if not np.isfinite(time_s) or time_s < 0 or (last is not None and time_s <= last):
            time_s = 0.0 if last is None else last + 1 / self.info.fps
        self._last_time = time_s
        return time_s

    def _cut_short(self, decoded: int) -> str | None:
        """Why the file ended early (one line), or None when it ended where its container says."""
        declared, fps, last = self.info.frames, self.info.fps, self._last_time
        if declared and last is not None and last + (1 + COUNT_SLACK) / fps < declared / fps:
            return (f"{self.path}: unreadable after frame {decoded} ({last:.2f} s) of the {declared / fps:.2f} s its "
                    f"container declares (truncated or damaged; frame {decoded} itself, at the break, is left out)")
        try:
            size, expected = self.path.stat().st_size, declared_size(self.path)
        except OSError:
            return None
        if expected is not None and size < expected:
            return (f"{self.path}: the file ends at byte {size:,} of the {expected:,} its container declares "
                    f"(truncated; frame {decoded}, at the cut, is left out)")
        return None

    def _yield(self, frame: tuple[np.ndarray, float]) -> np.ndarray:
        bgr, time_s = frame
        self.frames_read += 1
        self.times.append(time_s)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._cap.release()


def write_codec(path: str | Path) -> str:
    """The codec :class:`VideoWriter` uses for ``path``, by its suffix; :class:`VideoError` for one it cannot write.

    >>> write_codec("out.mp4"), write_codec("out.webm")
    ('h264', 'vp9')
    """
    suffix = Path(path).suffix.lower()
    if suffix not in WRITE_CODECS:
        kinds = ", ".join(sorted(WRITE_CODECS))
        raise VideoError(f"{path}: can write {kinds} videos, not {suffix or 'a file without a suffix'}")
    return WRITE_CODECS[suffix]


def _need_pyav():
    try:
        import av
    except ImportError:
        raise ImportError("writing video needs PyAV: pip install 'agegender[video]'") from None
    return av


class VideoWriter(_Closing):
    """Writes ``(H, W, 3)`` uint8 RGB frames of one size to ``path`` (.mp4, .m4v, .mov, .webm or .avi; see
    :data:`WRITE_CODECS`) at ``fps``, with PyAV. Close it (or use it as a context manager) to finish the file; a file
    closed early holds the frames so far. ``faststart``: an MP4's index goes before the frames, so that a browser
    starts playing before the whole file has arrived. An odd frame side is padded by one pixel (4:2:0 needs even
    sides)."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], faststart: bool = True) -> None:
        av = _need_pyav()
        from fractions import Fraction

        self.path = Path(path)
        self.codec = write_codec(self.path)
        self.size = (int(size[0]), int(size[1]))
        encoder, options, pixel_format = ENCODERS[self.codec]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mp4 = self.path.suffix.lower() in (".mp4", ".m4v", ".mov")
        try:
            self._out = av.open(str(self.path), "w", options={"movflags": "+faststart"} if mp4 and faststart else {})
            self._stream = self._out.add_stream(encoder, rate=Fraction(float(fps)).limit_denominator(1001),
                                                options=options)
        except (av.FFmpegError, ValueError) as e:  # ValueError: an encoder this PyAV build lacks
            raise VideoError(f"{self.path}: cannot write {self.codec} video here ({e})") from None
        self._stream.width, self._stream.height = (self.size[0] + 1) // 2 * 2, (self.size[1] + 1) // 2 * 2
        self._stream.pix_fmt = pixel_format
        self._av, self.frames_written = av, 0

    def write(self, frame: np.ndarray) -> None:
        """Append one frame (``(H, W, 3)`` uint8 RGB of the writer's size)."""
        frame = as_rgb_array(frame)
        if (frame.shape[1], frame.shape[0]) != self.size:
            raise ValueError(f"frame is {frame.shape[1]}x{frame.shape[0]}, the video {self.size[0]}x{self.size[1]}")
        pad = (self._stream.height - frame.shape[0], self._stream.width - frame.shape[1])
        if any(pad):
            frame = np.pad(frame, ((0, pad[0]), (0, pad[1]), (0, 0)), mode="edge")
        with self._writing():
            for packet in self._stream.encode(self._av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._out.mux(packet)
        self.frames_written += 1

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write (a full disk) as :class:`OutputError` naming the file and the frames it got."""
        try:
            yield
        except (OSError, self._av.FFmpegError) as e:
            reason = getattr(e, "strerror", None) or one_line(e)
            raise OutputError(f"{self.path}: cannot write the video ({reason}); {self.frames_written} frames were "
                              "given to it before, the copy is incomplete") from None

    def close(self) -> None:
        if self._out is None:
            return
        out, self._out = self._out, None
        with self._writing():
            try:
                for packet in self._stream.encode():  # the frames the encoder still holds
                    out.mux(packet)
            finally:
                out.close()

    def incomplete(self) -> str | None:
        """After :meth:`close`: None when the file reads back with every frame written, else one line that says
        what is missing: the count its container declares, then its last frame, read back (a full disk under a
        6,000-frame copy once left 18 frames and reported success). Costs one seek, not a decode."""
        n = self.frames_written
        if n == 0 or cv2 is None:
            return None
        lost = f"{self.path}: the annotated video is incomplete, {n} frames were written to it but"
        with _opencv_errors_only():
            cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
            try:
                if not cap.isOpened():
                    return f"{lost} it cannot be read back (a full disk or a file size limit?)"
                declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
                cap.set(cv2.CAP_PROP_POS_FRAMES, n - 1)
                last = cap.grab() and int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == n
            finally:
                cap.release()
        if not last:
            return f"{lost} only {declared} can be read back (a full disk or a file size limit?)"
        return f"{lost} it declares {declared}" if declared != n else None


def write_y4m(path: str | Path, frames: Iterator[np.ndarray] | list[np.ndarray], fps: int) -> Path:
    """Write ``frames`` (``(H, W, 3)`` uint8 RGB, even sides) as uncompressed YUV4MPEG2 4:2:0, the format a
    browser's fake camera plays (Chromium's ``--use-file-for-fake-video-capture``); returns ``path``."""
    _need_opencv()
    path = Path(path)
    with open(path, "wb") as out:
        for i, frame in enumerate(frames):
            frame = as_rgb_array(frame)
            h, w = frame.shape[:2]
            if i == 0:
                if h % 2 or w % 2:
                    raise ValueError(f"4:2:0 needs even frame sides, got {w}x{h}")
                out.write(f"YUV4MPEG2 W{w} H{h} F{int(fps)}:1 Ip A1:1 C420jpeg\n".encode())
            out.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path
