"""The web page in a real browser (Debian's chromium driven by Playwright) against the real server.

Needs ``/usr/bin/chromium`` (apt-get install chromium) and ``pip install playwright`` (no ``playwright install``:
the system browser is used). The screenshot goes to $AGEGENDER_ARTIFACTS or the test's tmp_path; its path is
printed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"

if not CHROMIUM.is_file():
    pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extras (uvicorn) are not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(trained_run: Path):
    """The app under uvicorn on a loopback port, in a background thread of this process."""
    from agegender.inference.predictor import Predictor
    from agegender.serving.app import create_app

    app = create_app(Predictor.from_checkpoint(trained_run / "best.pt"), model_name="best.pt")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture()
def page(server_url: str):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.errors, page.foreign = [], []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        # Anything fetched from the network other than our server (a CDN, fonts...); blob: and data: are local.
        page.on("request", lambda r: page.foreign.append(r.url)
                if r.url.split(":")[0] not in ("blob", "data") and not r.url.startswith(server_url) else None)
        yield page
        browser.close()


def api_label(server_url: str, data: bytes) -> str:
    """The label agegender.inference.annotate.label gives the face the API finds in ``data``."""
    from agegender.inference.annotate import label
    from agegender.inference.results import FacePrediction, Prediction

    request = urllib.request.Request(f"{server_url}/v1/predict", data=data, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=60) as r:
        (face,) = json.load(r)["faces"]
    pred = Prediction(face["age"], face["gender"], face["p_female"], face["age_low"], face["age_high"])
    return label(FacePrediction(0, tuple(face["box"]), face["det_score"], tuple(face["landmarks"]), pred))


def test_page_labels_the_face_in_a_photo(page, server_url: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    page.goto(f"{server_url}/")
    assert page.title().startswith("agegender")
    page.set_input_files("#file-input", str(ASTRONAUT))
    label = page.locator(".face-label").first
    label.wait_for(timeout=60_000)
    text = label.inner_text()
    # The tiny test model is calibrated (it has a ± interval); a confident gender may round to 1.00.
    assert re.fullmatch(r"\d+ ±\d+, (male|female) (0\.\d\d|1\.00)", text), text
    assert text == api_label(server_url, ASTRONAUT.read_bytes())
    rows = page.locator("tr.face-row")
    assert rows.count() == 1
    assert rows.first.locator("td").nth(3).inner_text() in ("male", "female")
    assert page.locator("#no-face").is_hidden() and page.locator("#error").is_hidden()
    assert "detect + predict" in page.locator("#timing").inner_text()
    assert page.locator("#model-info").inner_text() == "model: resnet18-32px:best.pt · age interval covers 80% " \
        "of true ages"
    # The canvas shows the photo at its size, with something drawn on it (not blank).
    size = page.evaluate("() => [document.querySelector('#canvas').width, document.querySelector('#canvas').height]")
    assert size == [512, 512]
    artifacts = Path(os.environ.get("AGEGENDER_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "browser.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\nscreenshot: {shot}")  # noqa: T201 - the path belongs in the test output
    assert page.errors == [] and page.foreign == []


def test_page_says_no_face_and_shows_api_errors(page, server_url: str) -> None:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (200, 150), (128, 128, 128)).save(buf, format="PNG")
    page.goto(f"{server_url}/")
    page.set_input_files("#file-input", {"name": "grey.png", "mimeType": "image/png", "buffer": buf.getvalue()})
    page.locator("#no-face").wait_for(state="visible", timeout=60_000)
    assert page.locator("#no-face").inner_text() == "No face found."
    assert page.locator("tr.face-row").count() == 0 and page.locator(".face-label").count() == 0
    page.set_input_files("#file-input", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo " * 9})
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=60_000)
    assert "HTTP 415" in error.inner_text() and "not an image" in error.inner_text()
    assert page.locator("#result").is_hidden()
    assert page.errors == [] and page.foreign == []


LIVE_INTERVAL_MS = 300  # as in static/app.js


def test_live_mode_follows_the_fake_camera_one_frame_in_flight(server_url: str, tmp_path: Path) -> None:
    """Chromium's fake camera plays a generated clip (one face swaying 40 px right and back, so the loop is
    seamless and, however slowly a loaded server answers, it never moves far between two frames sent); live mode
    sends a frame at a time over the WebSocket and shows one person, whose box and label are drawn over the video
    and stay inside it, and whose frame count grows."""
    pytest.importorskip("websockets", reason="uvicorn needs the websockets package for /v1/track (serve extras)")
    pytest.importorskip("norfair", reason="the video extras are not installed (pip install 'agegender[video]')")
    from agegender.video.clips import write_y4m
    from agegender.video.synthetic import Walker, render, sprite

    # The face near the right edge, so that a label drawn from the box's left would run off the video.
    face = sprite(ASTRONAUT, (150, 25, 300, 205), 110)
    there = list(render([Walker(face, (175, 50), (215, 60))], 20, (320, 240)))
    camera = write_y4m(tmp_path / "camera.y4m", there + there[::-1], fps=10)
    args = [*CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{server_url}/")
        page.click("#camera-button")
        page.wait_for_function("() => document.querySelector('#video').videoWidth > 0", timeout=30_000)
        assert page.locator("#live-button").is_enabled()  # /v1/model says live tracking is available here
        page.click("#live-button")
        page.wait_for_function("() => window.agegenderLive && window.agegenderLive.received >= 10", timeout=180_000)
        stats = page.evaluate("() => { const s = window.agegenderLive; return {maxInFlight: s.maxInFlight, "
                              "sent: s.sent, received: s.received, log: s.log, drawn: s.drawn}; }")
        labels = page.locator(".track-label").all_inner_texts()
        timing = page.locator("#timing").inner_text()
        video_box = page.locator("#video").bounding_box()
        overlay_box = page.locator("#overlay").bounding_box()
        video_size = page.evaluate("() => [document.querySelector('#video').videoWidth, "
                                   "document.querySelector('#video').videoHeight]")
        result_canvas_hidden = page.locator("#canvas").is_hidden()
        artifacts = Path(os.environ.get("AGEGENDER_ARTIFACTS") or tmp_path)
        artifacts.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(artifacts / "browser_live.png"), full_page=True)
        page.click("#live-button")
        assert page.locator("#live-button").inner_text() == "Start live"
        browser.close()
    assert errors == [] and stats["maxInFlight"] == 1
    log = [entry for entry in stats["log"] if entry["received"] is not None]
    assert len(log) >= 10
    for before, after in zip(log, log[1:], strict=False):
        assert after["sent"] >= before["received"], "a frame was sent before the previous one was answered"
        # Steady pace: every interval, or at once after a slower answer; never stalled (the slack covers the
        # capture and JPEG encoding of the next frame on a loaded machine).
        assert after["sent"] - before["sent"] >= LIVE_INTERVAL_MS - 5
        assert after["sent"] - max(before["received"], before["sent"] + LIVE_INTERVAL_MS) < 500
    # One person: one label, track 1, counted once.
    (text,) = labels
    match = re.fullmatch(r"#1 \d+ ±\d+, (male|female) (0\.\d\d|1\.00) · (\d+) frames", text)
    assert match, text
    assert int(match.group(3)) >= 8, "one track should hold every answered frame after its first two"
    assert re.match(r"live · \d+\.\d frames/s · round trip \d+ ms", timing), timing
    assert timing.endswith("· 1 person so far"), timing
    # Drawn over the video, not in a second panel: the overlay covers exactly the video's box, at its pixel size,
    # and every label lies inside it.
    assert result_canvas_hidden
    for key in ("x", "y", "width", "height"):
        assert overlay_box[key] == pytest.approx(video_box[key], abs=1), (overlay_box, video_box)
    drawn = stats["drawn"]
    assert [drawn["width"], drawn["height"]] == video_size == [320, 240]
    (label_box,) = drawn["labels"]
    x, y, w, h = label_box
    assert x >= 0 and y >= 0 and x + w <= drawn["width"] + 0.5 and y + h <= drawn["height"] + 0.5, label_box


def test_annotated_videos_play_in_chromium(tmp_path: Path) -> None:
    """The annotated copies agegender writes (H.264 in .mp4, VP9 in .webm) load and play in the browser."""
    pytest.importorskip("av", reason="the video extras are not installed (pip install 'agegender[video]')")
    from agegender.video.clips import VideoWriter
    from agegender.video.synthetic import Walker, render, sprite

    face = sprite(ASTRONAUT, (150, 25, 300, 205), 90)
    frames = list(render([Walker(face, (10, 20), (200, 40))], 15, (320, 240)))
    for name in ("clip.mp4", "clip.webm"):
        with VideoWriter(tmp_path / name, 10, (320, 240)) as writer:
            for frame in frames:
                writer.write(frame)
    (tmp_path / "play.html").write_text('<video id="mp4" muted src="clip.mp4"></video>'
                                        '<video id="webm" muted src="clip.webm"></video>')
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.goto(f"file://{tmp_path}/play.html")
        page.wait_for_function("() => ['mp4', 'webm'].every(id => document.getElementById(id).readyState >= 2 "
                               "|| document.getElementById(id).error)", timeout=30_000)
        states = page.evaluate("() => ['mp4', 'webm'].map(id => { const v = document.getElementById(id); "
                               "return [v.error && v.error.message, v.videoWidth, v.videoHeight, v.duration]; })")
        browser.close()
    for error, width, height, duration in states:
        assert error is None and (width, height) == (320, 240) and duration == pytest.approx(1.5, abs=0.15)
