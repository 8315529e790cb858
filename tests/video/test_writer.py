"""Annotated videos browsers play: H.264 in .mp4 (4:2:0, index first) and VP9 in .webm, written with PyAV; and
--annotate DIR for a video as for photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av", reason="the video extras are not installed (pip install 'agegender[video]')")
pytest.importorskip("norfair", reason="the video extras are not installed (pip install 'agegender[video]')")

from agegender.cli import main  # noqa: E402
from agegender.video.clips import VideoReader, VideoWriter  # noqa: E402
from agegender.video.synthetic import Walker, render, sprite  # noqa: E402

ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"


def frames(n: int = 12, size: tuple[int, int] = (321, 241)) -> list[np.ndarray]:
    face = sprite(ASTRONAUT, (150, 25, 300, 205), 100)
    return list(render([Walker(face, (20, 40), (180, 60))], n, size))


def stream_of(path: Path) -> tuple[str, str, int, int, int, bytes]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return (stream.codec_context.name, stream.codec_context.pix_fmt, stream.width, stream.height, count,
                path.read_bytes()[:64])


@pytest.mark.parametrize(("suffix", "codec", "pixels"), [(".mp4", "h264", "yuv420p"), (".webm", "vp9", "yuv420p"),
                                                          (".avi", "mjpeg", "yuvj420p")])
def test_each_suffix_writes_the_codec_it_claims_and_decodes(tmp_path: Path, suffix: str, codec: str,
                                                            pixels: str) -> None:
    path = tmp_path / f"clip{suffix}"
    with VideoWriter(path, 10, (321, 241)) as writer:
        for frame in frames():
            writer.write(frame)
    name, fmt, width, height, count, head = stream_of(path)
    # Odd sides are padded by one pixel: 4:2:0 (what browsers decode) needs even ones.
    assert (name, fmt, width, height, count) == (codec, pixels, 322, 242, 12)
    if suffix == ".mp4":
        assert b"moov" in head or b"moov" in path.read_bytes()[:4096]  # index first: plays while it downloads
    with VideoReader(path) as reader:  # and OpenCV reads it back
        assert sum(1 for _ in reader) == 12


def test_annotate_a_folder_for_a_video(tmp_path: Path) -> None:
    clip = tmp_path / "walk.avi"
    with VideoWriter(clip, 10, (320, 240)) as writer:
        for frame in frames(8, (320, 240)):
            writer.write(frame)
    folder = tmp_path / "annotated"
    assert main(["predict", str(clip), "--out", str(tmp_path / "f.csv"), "--annotate", str(folder),
                 "--min-face", "40", "-q"]) == 0
    name, fmt, width, height, count, _ = stream_of(folder / "walk_annotated.mp4")
    assert (name, fmt, width, height, count) == ("h264", "yuv420p", 320, 240, 8)
