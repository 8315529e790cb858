"""Hostile clips and faults around ``agegender predict VIDEO`` (issue 27): an annotated copy that would overwrite
its input, SIGTERM, frames over the pixel limit, frames held in flight, truncated containers, variable frame rates,
a crowd over ``--max-faces``, outputs that cannot be opened or written."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("cv2", reason="the video extras are not installed (pip install 'agegender[video]')")
pytest.importorskip("norfair", reason="the video extras are not installed (pip install 'agegender[video]')")

from agegender.cli import main  # noqa: E402
from agegender.video.clips import VideoReader, VideoWriter  # noqa: E402
from agegender.video.synthetic import Walker, render, sprite  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"
ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"
SIZE, FPS = (160, 120), 10


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
    assert len(rows) >= 3 and [r["frame"] for r in rows] == list(range(len(rows)))
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
                   ["--annotate", str(tmp_path)]):
        caplog.clear()
        assert main(["predict", str(short_clip), "--out", str(out), *option, "-q"]) == 2, option
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"], option  # no header-only CSVs


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
    assert f"{annotated}: the annotated video is incomplete, 60 frames were written to it but" in lines[0]
    assert pd.read_csv(out)["frame"].tolist() == list(range(0, 60, 3))  # the rows are whole
