"""Reading and writing video files, frame by frame: reading with OpenCV (its bundled FFmpeg reads mp4, mov, mkv,
webm, avi and more), writing with PyAV (FFmpeg's encoders in its wheels): H.264 in .mp4, .m4v and .mov and VP9 in
.webm, which every current browser plays, Motion JPEG in .avi.

Frames are ``(H, W, 3)`` uint8 RGB arrays, the order the rest of agegender uses; OpenCV's BGR stays inside this
module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
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

from agegender.errors import VideoError
from agegender.io.images import as_rgb_array  # noqa: E402

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
# Frames a container may over-declare without the file being damaged (counts estimated from the duration).
COUNT_SLACK = 2


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
    """The frames of a video file, in order: ``for frame in VideoReader(path)`` gives ``(H, W, 3)`` uint8 RGB.

    Raises :class:`VideoError` at once when the file cannot be opened, and after the last whole frame when the
    file ends before the frames its container declares: everything before the damage is yielded first.
    """

    def __init__(self, path: str | Path) -> None:
        _need_opencv()
        self.path = Path(path)
        if not self.path.is_file():
            raise VideoError(f"{self.path}: no such file")
        # OpenCV warns on stderr when it cannot open a file; the VideoError below says it in one line instead.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not self._cap.isOpened():
            self._cap.release()
            raise VideoError(f"{self.path}: not a video OpenCV can open (damaged, truncated before its index, "
                             "or an unknown format)")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.info = VideoInfo(fps=fps if fps > 0 and np.isfinite(fps) else 25.0,
                              width=int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                              height=int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                              frames=max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))))
        self.frames_read = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        # One frame is read ahead: the frame read last before a break is often decoded from half its data (grey
        # or smeared below the cut) and is left out, so every frame yielded is whole.
        decoded, ahead = 0, None
        while True:
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                break
            decoded += 1
            if ahead is not None:
                yield self._yield(ahead)
            ahead = bgr
        broken = self.info.frames and decoded < self.info.frames - COUNT_SLACK
        if ahead is not None and not broken:
            yield self._yield(ahead)
        if broken:
            raise VideoError(f"{self.path}: unreadable after frame {decoded} of the {self.info.frames} its "
                             f"container declares (truncated or damaged; frame {decoded} itself, at the break, "
                             "is left out)")
        if decoded == 0:
            raise VideoError(f"{self.path}: no frame could be decoded")

    def _yield(self, bgr: np.ndarray) -> np.ndarray:
        self.frames_read += 1
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
        for packet in self._stream.encode(self._av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._out.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        if self._out is None:
            return
        try:
            for packet in self._stream.encode():  # the frames the encoder still holds
                self._out.mux(packet)
        finally:
            self._out.close()
            self._out = None


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
