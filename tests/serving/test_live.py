"""The live WebSocket ``/v1/track``, through FastAPI's TestClient, on the tiny trained checkpoint and a generated
clip: tracks kept per connection, running estimates, and bad frames answered without ending the connection."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extras (fastapi, python-multipart) are not installed")
pytest.importorskip("python_multipart", reason="the serve extras (fastapi, python-multipart) are not installed")
pytest.importorskip("norfair", reason="the video extras are not installed (pip install 'agegender[video]')")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from agegender.inference.predictor import Predictor  # noqa: E402
from agegender.serving.app import create_app  # noqa: E402
from agegender.video.synthetic import Walker, render, sprite  # noqa: E402
from agegender.video.tracking import CONFIRM_FRAMES, combine  # noqa: E402

ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"


@pytest.fixture(scope="module")
def predictor(trained_run: Path) -> Predictor:
    return Predictor.from_checkpoint(trained_run / "best.pt")


@pytest.fixture(scope="module")
def client(predictor: Predictor):
    with TestClient(create_app(predictor, model_name="best.pt", max_upload_bytes=200_000)) as c:
        yield c


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    """Six frames, 320x240, of one face walking right."""
    face = sprite(ASTRONAUT, (150, 25, 300, 205), 100)
    out = []
    for frame in render([Walker(face, (10, 40), (150, 60))], 6, (320, 240)):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def test_one_person_keeps_one_track_whose_estimate_combines_the_frames(client, predictor, jpegs) -> None:
    with client.websocket_connect("/v1/track") as ws:
        answers = []
        for data in jpegs:
            ws.send_bytes(data)
            answers.append(ws.receive_json())
    assert [a["frame"] for a in answers] == list(range(6))
    assert all((a["width"], a["height"]) == (320, 240) for a in answers)
    # A face is a person from the third frame it is found in: nothing before, one track after.
    later = CONFIRM_FRAMES - 1
    assert [len(a["faces"]) for a in answers] == [0] * later + [1] * (6 - later)
    faces = [a["faces"][0] for a in answers[later:]]
    assert {f["track"] for f in faces} == {1} and [a["tracks"] for a in answers] == [0] * later + [1] * (6 - later)
    assert [f["track_estimate"]["frames"] for f in faces] == list(range(1, 7 - later))
    last = faces[-1]["track_estimate"]
    expected = combine([f["age"] for f in faces], [f["age_sigma"] for f in faces], [f["p_female"] for f in faces],
                       interval_scale=predictor.interval_scale)
    assert (last["first_frame"], last["last_frame"]) == (later, 5)
    # The answers are rounded as outputs are (ages to 0.01, sigma to 0.001, p_female to 1e-5); the server combines
    # the unrounded frames.
    for key, within in (("age", 0.011), ("age_sigma", 0.0011), ("age_low", 0.011), ("age_high", 0.011),
                        ("p_female", 2e-5)):
        assert last[key] == pytest.approx(getattr(expected, key), abs=within), key
    assert last["gender"] == expected.gender
    assert "detect_predict_track" in answers[0]["timing_ms"]


def test_tracks_belong_to_their_connection(client, jpegs) -> None:
    with client.websocket_connect("/v1/track") as first, client.websocket_connect("/v1/track") as second:
        for data in jpegs[:3]:
            first.send_bytes(data)
            first.receive_json()
        for data in jpegs[3:6]:  # the second connection's person starts afresh: confirmed on its third frame
            second.send_bytes(data)
            answer = second.receive_json()
    assert answer["frame"] == 2 and answer["faces"][0]["track_estimate"]["frames"] == 1


def test_bad_frames_are_answered_and_the_connection_goes_on(client, jpegs) -> None:
    grey = io.BytesIO()
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(grey, "PNG")
    with client.websocket_connect("/v1/track") as ws:
        ws.send_text("hello")
        assert ws.receive_json()["error"] == "bad_message"
        ws.send_bytes(b"not an image at all")
        assert ws.receive_json()["error"] == "unsupported_image"
        ws.send_bytes(b"\xff" * 200_001)
        too_large = ws.receive_json()
        assert too_large["error"] == "upload_too_large" and "200,000 bytes" in too_large["detail"]
        ws.send_bytes(grey.getvalue())
        empty = ws.receive_json()
        assert (empty["frame"], empty["faces"], empty["tracks"]) == (0, [], 0)
        for data in jpegs[:CONFIRM_FRAMES]:
            ws.send_bytes(data)
            answer = ws.receive_json()
    # Refused messages use no frame number; a frame without faces does.
    assert answer["frame"] == CONFIRM_FRAMES and answer["faces"][0]["track"] == 1
