"""Hostile clips and faults around ``agegender predict VIDEO`` (issue 27): an annotated copy that would overwrite
its input, SIGTERM, frames over the pixel limit, frames held in flight, truncated containers, variable frame rates,
a crowd over ``--max-faces``, outputs that cannot be opened or written."""

from __future__ import annotations

import io
import json
import logging
import os
import resource
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("cv2", reason="the video extras are not installed (pip install 'agegender[video]')")
pytest.importorskip("norfair", reason="the video extras are not installed (pip install 'agegender[video]')")

from agegender.cli import main  # noqa: E402
from agegender.errors import VideoError  # noqa: E402
from agegender.video.clips import VideoReader, VideoWriter  # noqa: E402
from agegender.video.synthetic import Walker, render, sprite  # noqa: E402
from agegender.video.tracking import CONFIRM_FRAMES  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"
ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"
SIZE, FPS = (160, 120), 10
FIRST = CONFIRM_FRAMES - 1  # a face is a person, with rows, from its third analysed frame


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}


def _walking_face(frames: int, path: Path, size: tuple[int, int] = SIZE) -> Path:
    """A clip of one face (70 px high) walking left to right."""
    face = sprite(ASTRONAUT, (150, 25, 300, 205), 70)
    with VideoWriter(path, FPS, size) as writer:
        for frame in render([Walker(face, (0, 20), (size[0] - 60, 30))], frames, size):
            writer.write(frame)
    return path


@pytest.mark.slow
def test_sigterm_during_a_video_finishes_every_file_and_exits_143(tmp_path: Path) -> None:
    clip = _walking_face(400, tmp_path / "long.avi")
    out, annotated = tmp_path / "frames.json", tmp_path / "annotated.avi"
    proc = subprocess.Popen([sys.executable, "-m", "agegender", "predict", str(clip), "--out", str(out),
                             "--annotate", str(annotated), "--min-face", "40", "-q"], env=_env(),
                            stderr=subprocess.PIPE, text=True)
    partial = out.with_name(out.name + ".partial")
    deadline = time.monotonic() + 240
    # The JSON rows are flushed frame by frame (each face row is 30-odd lines of indented JSON).
    while not (partial.exists() and partial.read_text().count('"frame"') >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "no rows were written in time"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) >= 3 and [r["frame"] for r in rows] == list(range(FIRST, FIRST + len(rows)))
    tracks = json.loads((tmp_path / "frames_tracks.json").read_text())
    assert len(tracks) == 1 and tracks[0]["frames"] >= len(rows)
    with VideoReader(annotated) as reader:  # finished: its index written, every frame drawn so far readable
        assert sum(1 for _ in reader) >= len(rows) - 1
    assert not partial.exists()


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _walking_face(12, tmp_path_factory.mktemp("short") / "short.avi")


def test_an_output_naming_the_input_video_is_refused_before_anything_opens(short_clip: Path, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    clip = tmp_path / "long.avi"
    clip.write_bytes(short_clip.read_bytes())
    before = clip.read_bytes()
    link = tmp_path / "link.avi"
    link.symlink_to(clip)
    hard = tmp_path / "hard.avi"
    os.link(clip, hard)
    out = tmp_path / "f.csv"
    for annotate in (clip, Path(os.path.relpath(clip)), link, hard):
        caplog.clear()
        assert main(["predict", str(clip), "--out", str(out), "--every", "100", "--annotate", str(annotate),
                     "-q"]) == 2
        (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert f"--annotate {annotate} is the input {clip}" in error and "\n" not in error
    assert clip.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.avi", "link.avi", "long.avi"]  # nothing written


def test_an_output_that_cannot_be_opened_leaves_no_other_file(short_clip: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = tmp_path / "f.csv"
    for option in (["--annotate", str(blocker / "ann.avi")], ["--tracks", str(blocker / "t.csv")],
                   ["--annotate", str(tmp_path / "a.gif")]):
        caplog.clear()
        assert main(["predict", str(short_clip), "--out", str(out), *option, "-q"]) == 2, option
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"], option  # no header-only CSVs


@pytest.mark.slow
@pytest.mark.parametrize("suffix, limit", [(".avi", 100_000), (".mp4", 12_000)])
def test_an_annotated_video_that_does_not_reach_the_disk_is_reported(tmp_path: Path, suffix: str,
                                                                     limit: int) -> None:
    """A file size limit stands in for a full disk: the annotated copy's writes fail once it has ``limit`` bytes
    (MJPEG takes 2.7 kB a frame here, MPEG-4 0.3), while the rows (7 kB) are written whole."""
    clip = _walking_face(60, tmp_path / "clip.avi")
    out, annotated = tmp_path / "f.csv", tmp_path / f"annotated{suffix}"

    def size_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    proc = subprocess.run([sys.executable, "-m", "agegender", "predict", str(clip), "--out", str(out), "--annotate",
                           str(annotated), "--every", "3", "--min-face", "40", "-q"], env=_env(), capture_output=True,
                          text=True, timeout=600, preexec_fn=size_limit)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, lines[:20]  # one line, not one per frame
    assert f"{annotated}: cannot write the video (File too large)" in lines[0] and "incomplete" in lines[0]
    assert pd.read_csv(out)["frame"].tolist() == list(range(3 * FIRST, 60, 3))  # the rows are whole


# --------------------------------------------------------------------------- clips written byte by byte


def _chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def _jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def mjpeg_avi(payloads: list[bytes | None], size: tuple[int, int], fps: int = FPS) -> bytes:
    """A Motion-JPEG AVI of ``payloads`` (JPEG bytes each; None: an empty chunk, which AVI uses for a dropped
    frame, so the frames after it are that much later: a variable frame rate) whose headers declare ``size``."""
    w, h = size
    n = len(payloads)
    avih = struct.pack("<10I4I", round(1e6 / fps), 0, 0, 0x10, n, 0, 1, 0, w, h, 0, 0, 0, 0)
    strh = b"vidsMJPG" + struct.pack("<IHHIIIIIIIIhhhh", 0, 0, 0, 0, 1, fps, 0, n, 0, 0xFFFFFFFF, 0, 0, 0,
                                     min(w, 32767), min(h, 32767))
    strf = struct.pack("<IiiHH4sIiiII", 40, w, h, 1, 24, b"MJPG", 0, 0, 0, 0, 0)
    strl = _chunk(b"LIST", b"strl" + _chunk(b"strh", strh) + _chunk(b"strf", strf))
    hdrl = _chunk(b"LIST", b"hdrl" + _chunk(b"avih", avih) + strl)
    movi, index, offset = b"", b"", 4
    for data in payloads:
        index += b"00dc" + struct.pack("<III", 0x10 if data else 0, offset, len(data or b""))
        movi += _chunk(b"00dc", data or b"")
        offset += 8 + len(data or b"") + len(data or b"") % 2
    body = b"AVI " + hdrl + _chunk(b"LIST", b"movi" + movi) + _chunk(b"idx1", index)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _jpeg_claiming(width: int, height: int) -> bytes:
    """An 8x8 JPEG (about 630 bytes) whose frame header claims ``width`` x ``height``."""
    data = bytearray(_jpeg(np.full((8, 8, 3), 90, np.uint8)))
    struct.pack_into(">HH", data, data.index(b"\xff\xc0") + 5, height, width)
    return bytes(data)


def test_frames_over_the_pixel_limit_are_refused_before_they_are_decoded(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    bomb = tmp_path / "bomb.avi"  # 2 kB: three 14000x14000 frames of 630 bytes each
    bomb.write_bytes(mjpeg_avi([_jpeg_claiming(14000, 14000)] * 3, (14000, 14000)))
    out = tmp_path / "f.csv"
    assert main(["predict", str(bomb), "--out", str(out), "-q"]) == 2
    assert "its frames are 14000x14000 pixels, over the limit of 64,000,000" in caplog.text
    assert not out.exists()
    # A clip whose frames grow part-way is held to the size of its first: OpenCV scales every frame to it.
    small, large = np.full((120, 160, 3), 100, np.uint8), np.full((240, 320, 3), 100, np.uint8)
    growing = tmp_path / "growing.avi"
    growing.write_bytes(mjpeg_avi([_jpeg(small)] * 3 + [_jpeg(large)], (160, 120)))
    with VideoReader(growing, max_pixels=20_000) as reader:
        assert [frame.shape for frame in reader] == [(120, 160, 3)] * 4
    with pytest.raises(VideoError, match="its frames are 160x120 pixels, over the limit of 10,000"):
        VideoReader(growing, max_pixels=10_000)


def test_a_variable_frame_rate_gives_each_frame_its_own_time(tmp_path: Path) -> None:
    """Ten frames, five dropped (empty chunks), ten more: frame 10 is at 1.5 s, not at 10 / 10 fps."""
    face = sprite(ASTRONAUT, (150, 25, 300, 205), 70)
    frames = [_jpeg(f) for f in render([Walker(face, (0, 20), (90, 30))], 20, SIZE)]
    clip = tmp_path / "vfr.avi"
    clip.write_bytes(mjpeg_avi(frames[:10] + [None] * 5 + frames[10:], SIZE))
    out = tmp_path / "f.csv"
    assert main(["predict", str(clip), "--out", str(out), "--min-face", "40", "-q"]) == 0
    rows = pd.read_csv(out)
    expected = [i / FPS for i in range(FIRST, 10)] + [(i + 5) / FPS for i in range(10, 20)]
    assert rows["frame"].tolist() == list(range(FIRST, 20))
    assert rows["time_s"].tolist() == pytest.approx(expected)
    tracks = pd.read_csv(tmp_path / "f_tracks.csv")
    assert (tracks["first_time_s"].iloc[0], tracks["last_time_s"].iloc[0]) == pytest.approx((FIRST / FPS, 2.4))


@pytest.mark.parametrize("suffix, codec", [(".ts", "mp4v"), (".wmv", "WMV2"), (".mkv", "MJPG")])
def test_a_truncated_container_is_found_whatever_its_frame_count_says(tmp_path: Path, suffix: str, codec: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Cut at 60%: the .ts then reports a frame count that fits the cut, the .wmv none; the .mkv keeps its
    duration. Each is found short by its container's own lengths or by its last timestamp."""
    import cv2

    face = sprite(ASTRONAUT, (150, 25, 300, 205), 70)
    clip = tmp_path / f"clip{suffix}"
    writer = cv2.VideoWriter(str(clip), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*codec), FPS, SIZE)
    if not writer.isOpened():
        pytest.skip(f"this OpenCV cannot write {codec} into {suffix}")
    for frame in render([Walker(face, (0, 20), (90, 30))], 20, SIZE):
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    out = tmp_path / "f.csv"
    assert main(["predict", str(clip), "--out", str(out), "--min-face", "40", "-q"]) == 0
    assert len(pd.read_csv(out)) == 20 - FIRST
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size * 6 // 10])
    caplog.clear()
    assert main(["predict", str(cut), "--out", str(out), "--min-face", "40", "-q"]) == 1
    assert "truncated" in caplog.text, caplog.text
    frames = pd.read_csv(out)["frame"].tolist()
    assert 0 < len(frames) < 16 - FIRST and frames == list(range(FIRST, FIRST + len(frames)))


def test_a_video_of_a_crowd_keeps_to_max_faces(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Eight faces of eight sizes, so that the three largest are the same three in every frame.
    walkers = [Walker(sprite(ASTRONAUT, (150, 25, 300, 205), 44 + 4 * i), (8 + 78 * (i % 4), 6 + 116 * (i // 4)),
                      (10 + 78 * (i % 4), 8 + 116 * (i // 4))) for i in range(8)]
    clip = tmp_path / "crowd.avi"
    with VideoWriter(clip, FPS, (320, 240)) as writer:
        for frame in render(walkers, 6, (320, 240)):
            writer.write(frame)
    out = tmp_path / "f.csv"
    assert main(["predict", str(clip), "--out", str(out), "--min-face", "30", "-q"]) == 0
    assert pd.read_csv(out).groupby("frame").size().tolist() == [8] * (6 - FIRST)
    caplog.clear()
    assert main(["predict", str(clip), "--out", str(out), "--min-face", "30", "--max-faces", "3", "-q"]) == 1
    assert pd.read_csv(out).groupby("frame").size().tolist() == [3] * (6 - FIRST)
    assert "6 of 6 analysed frames had more than --max-faces 3 faces; the 3 largest of each were followed" \
        in caplog.text


def test_frames_held_in_flight_are_bounded_whatever_every_and_workers_ask(caplog: pytest.LogCaptureFixture) -> None:
    """--every 600 held the 1,200 frames between two analysed ones, --workers 600 600 frames being searched."""
    from agegender.inference.predictor import Predictor
    from agegender.video.tracking import FRAMES_AHEAD_BYTES, track

    frame = np.zeros((720, 1280, 3), np.uint8)  # one array, given again and again: no memory of its own
    state = {"read": 0, "answered": 0, "most": 0}

    def frames():
        for _ in range(1300):
            state["read"] += 1
            state["most"] = max(state["most"], state["read"] - state["answered"])
            yield frame

    predictor = Predictor.default()
    for ahead in (2, 64):
        state.update(read=0, answered=0, most=0)
        for answer in track(predictor, frames(), every=600, ahead=ahead):
            state["answered"] += 1
            assert answer.index == state["answered"] - 1
        assert state["answered"] == 1300
        assert state["most"] <= FRAMES_AHEAD_BYTES // frame.nbytes + 1, ahead  # 48 of 720p, not 1,200
    with pytest.raises(SystemExit, match="^2$"):  # a one-line usage error
        main(["predict", "clip.mp4", "--out", "f.csv", "--workers", "600"])
