"""The web service, through FastAPI's TestClient, on a real (tiny) trained checkpoint and real photos."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extras (fastapi, python-multipart) are not installed")
pytest.importorskip("python_multipart", reason="the serve extras (fastapi, python-multipart) are not installed")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from agegender.inference.predictor import Predictor  # noqa: E402
from agegender.io.images import open_image  # noqa: E402
from agegender.serving.app import create_app  # noqa: E402

ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"
FACE_FIELDS = {"box", "landmarks", "det_score", "age", "age_low", "age_high", "gender", "p_female"}


@pytest.fixture(scope="module")
def predictor(trained_run: Path) -> Predictor:
    return Predictor.from_checkpoint(trained_run / "best.pt")


@pytest.fixture(scope="module")
def client(predictor: Predictor):
    with TestClient(create_app(predictor, model_name="best.pt")) as c:
        yield c


@pytest.fixture(scope="module")
def photo() -> bytes:
    return ASTRONAUT.read_bytes()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code
    assert isinstance(body["detail"], str) and len(body["detail"]) > 10


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# --------------------------------------------------------------------------- predictions


def test_photo_as_multipart_and_raw_bytes(client: TestClient, photo: bytes, predictor: Predictor) -> None:
    multipart = client.post("/v1/predict", files={"file": ("astronaut.png", photo, "image/png")})
    raw = client.post("/v1/predict", content=photo, headers={"Content-Type": "image/png"})
    octet = client.post("/v1/predict", content=photo, headers={"Content-Type": "application/octet-stream"})
    for r in (multipart, raw, octet):
        assert r.status_code == 200, r.text
    body = multipart.json()
    assert (body["width"], body["height"]) == Image.open(ASTRONAUT).size
    assert body["model"] == "resnet18-32px:best.pt"
    assert set(body["timing_ms"]) == {"decode", "detect_predict", "total"}
    assert all(v >= 0 for v in body["timing_ms"].values())
    assert body["timing_ms"]["total"] >= body["timing_ms"]["detect_predict"]
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    assert set(face) >= FACE_FIELDS
    x1, y1, x2, y2 = face["box"]
    assert 0 <= x1 < x2 <= body["width"] and 0 <= y1 < y2 <= body["height"]
    assert len(face["landmarks"]) == 5
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face["landmarks"])
    assert 0.9 <= face["det_score"] <= 1.0
    assert face["age_low"] <= face["age"] <= face["age_high"]  # the tiny run is calibrated on its val split
    assert 0.0 <= face["p_female"] <= 1.0
    assert face["gender"] == ("female" if face["p_female"] >= 0.5 else "male")
    # The same bytes give the same answer whichever way they come, and the one the library gives.
    assert raw.json()["faces"] == octet.json()["faces"] == body["faces"]
    # Numbers as every output writes them (agegender.inference.results.DIGITS).
    assert face == predictor.predict_faces([open_image(photo)])[0][0].to_dict()


def test_multipart_as_browsers_send_it(client: TestClient, photo: bytes) -> None:
    """A mixed-case boundary (Chromium's ----WebKitFormBoundary...), an extra field before the file, CRLFs."""
    boundary = "----WebKitFormBoundaryAbC123xYz"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    r = client.post("/v1/predict", content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 200, r.text
    assert len(r.json()["faces"]) == 1


def test_no_face_gives_empty_list(client: TestClient) -> None:
    r = client.post("/v1/predict", files={"file": ("grey.png", png(Image.new("RGB", (320, 240), (128,) * 3)))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["faces"] == []
    assert (body["width"], body["height"]) == (320, 240)


# --------------------------------------------------------------------------- bad input


def test_not_an_image_is_415(client: TestClient) -> None:
    assert_error(client.post("/v1/predict", content=b"%PDF-1.4 not an image at all",
                             headers={"Content-Type": "image/jpeg"}), 415, "unsupported_image")
    assert_error(client.post("/v1/predict", files={"file": ("notes.txt", b"hello world" * 50, "text/plain")}),
                 415, "unsupported_image")
    assert_error(client.post("/v1/predict", json={"image": "x"}), 415, "unsupported_media_type")


def test_malformed_requests_are_400(client: TestClient, photo: bytes) -> None:
    assert_error(client.post("/v1/predict", files={"other": ("a.png", photo, "image/png")}), 400, "missing_file")
    assert_error(client.post("/v1/predict", content=b"", headers={"Content-Type": "image/png"}), 400, "empty_upload")
    assert_error(client.post("/v1/predict", content=b"--x\r\ngarbage",
                             headers={"Content-Type": "multipart/form-data"}), 400, "bad_multipart")


def test_truncated_image_is_422(client: TestClient, photo: bytes) -> None:
    assert_error(client.post("/v1/predict", content=photo[:5000], headers={"Content-Type": "image/png"}),
                 422, "corrupt_image")


def test_upload_over_the_limit_is_413(predictor: Predictor, photo: bytes) -> None:
    limit = 100_000
    assert len(photo) > limit + 16 * 1024
    with TestClient(create_app(predictor, max_upload_bytes=limit)) as c:
        # Declared by Content-Length, as multipart, and streamed chunked with no length at all.
        assert_error(c.post("/v1/predict", content=photo, headers={"Content-Type": "image/png"}),
                     413, "upload_too_large")
        assert_error(c.post("/v1/predict", files={"file": ("a.png", photo, "image/png")}), 413, "upload_too_large")
        chunks = (photo[i : i + 8192] for i in range(0, len(photo), 8192))
        r = c.post("/v1/predict", content=chunks, headers={"Content-Type": "image/png"})
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert_error(r, 413, "upload_too_large")
        # A file just under the limit still passes, multipart overhead included.
        small = png(Image.new("RGB", (64, 64), (90, 90, 90)))
        assert c.post("/v1/predict", files={"file": ("s.png", small, "image/png")}).status_code == 200


@pytest.mark.parametrize("length_header", [None, b"1000"], ids=["chunked", "lying-content-length"])
def test_endless_upload_is_cut_off_while_reading(predictor: Predictor, length_header: bytes | None) -> None:
    """Called as plain ASGI, so that we see how much of the body the app pulls before it answers 413."""
    app = create_app(predictor, max_upload_bytes=100_000)
    pulled, sent = 0, []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        if pulled > 1000:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"\0" * 10_000, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"content-type", b"image/png")]
    headers.append((b"content-length", length_header) if length_header else (b"transfer-encoding", b"chunked"))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert pulled <= 11  # stopped at the first chunk past 100 kB


def crafted_png(width: int, height: int) -> bytes:
    """A few dozen bytes whose header claims ``width`` x ``height`` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_pixel_limit_is_422(client: TestClient, predictor: Predictor, photo: bytes) -> None:
    bomb = crafted_png(20_000, 20_000)
    assert len(bomb) < 100
    assert_error(client.post("/v1/predict", content=bomb, headers={"Content-Type": "image/png"}),
                 422, "too_many_pixels")
    with TestClient(create_app(predictor, max_pixels=1000)) as c:
        r = c.post("/v1/predict", content=photo, headers={"Content-Type": "image/png"})
        assert_error(r, 422, "too_many_pixels")
        assert "512x512" in r.json()["detail"]


# --------------------------------------------------------------------------- other routes


def test_health_model_docs_and_page(client: TestClient, predictor: Predictor) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    head = client.head("/healthz")
    assert head.status_code == 200 and head.content == b""
    card = client.get("/v1/model").json()
    assert card["backbone"] == "resnet18" and card["image_size"] == 32 and card["age_head"] == "regression"
    assert card["labels"]["gender"] == ["male", "female"]
    assert set(card["training"]["split"]["counts"]) == {"train", "val", "test"}
    assert len(card["training"]["data_fingerprint"]) >= 8
    assert 0 < card["calibration"]["age_interval"]["coverage"] < 1
    assert card["limits"]["max_upload_bytes"] == 10 * 1024 * 1024
    assert card["live"] == {"available": True, "detail": None}  # norfair is installed here
    # /docs is on by default and served from the service's own files; ReDoc (a CDN's script) is not offered.
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "/docs-assets/swagger-ui-bundle.js" in docs.text and "/docs-assets/swagger-ui.css" in docs.text
    assert "https://" not in docs.text and "http://" not in docs.text and '"validatorUrl": null' in docs.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert client.get(f"/docs-assets/{asset}").status_code == 200
    assert_error(client.get("/redoc"), 404, "not_found")
    with TestClient(create_app(predictor, docs=False)) as c:
        assert_error(c.get("/docs"), 404, "not_found")
    favicon = client.get("/favicon.ico")
    assert favicon.status_code == 200 and favicon.headers["content-type"] == "image/x-icon"
    assert Image.open(io.BytesIO(favicon.content)).format == "ICO"
    spec = client.get("/openapi.json").json()
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids)), ids  # one operation per route and method: no duplicate ids
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/static/app.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and "//cdn" not in r.text and "https://" not in r.text


def test_framework_errors_use_the_json_error_shape(client: TestClient) -> None:
    assert_error(client.get("/no/such/route"), 404, "not_found")
    assert_error(client.get("/static/missing.js"), 404, "not_found")
    r = client.get("/v1/predict")
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]


# --------------------------------------------------------------------------- queue and timeout


def test_full_queue_is_503_with_retry_after(predictor: Predictor, photo: bytes) -> None:
    app = create_app(predictor, workers=1, max_queue=1)
    gate = threading.Event()
    with TestClient(app) as c:
        jobs = app.state.jobs
        try:
            held = [jobs.submit(gate.wait, 30), jobs.submit(gate.wait, 30)]  # one running, one waiting
            r = c.post("/v1/predict", content=photo, headers={"Content-Type": "image/png"})
            assert_error(r, 503, "busy")
            assert int(r.headers["Retry-After"]) >= 1
        finally:
            gate.set()
        for f in held:
            f.result(timeout=10)
        wait_until(lambda: jobs.in_flight == 0)
        assert c.post("/v1/predict", content=photo, headers={"Content-Type": "image/png"}).status_code == 200


def test_request_waits_in_the_queue_then_runs(predictor: Predictor, photo: bytes) -> None:
    app = create_app(predictor, workers=1, max_queue=1)
    gate = threading.Event()
    result: dict = {}
    with TestClient(app) as c:
        jobs = app.state.jobs
        blocker = jobs.submit(gate.wait, 30)
        worker = threading.Thread(target=lambda: result.update(r=c.post(
            "/v1/predict", content=photo, headers={"Content-Type": "image/png"})))
        worker.start()
        try:
            wait_until(lambda: jobs.in_flight == 2)  # the request's job is queued behind the blocker
            assert "r" not in result
        finally:
            gate.set()
        worker.join(30)
        blocker.result(timeout=10)
    assert result["r"].status_code == 200 and len(result["r"].json()["faces"]) == 1


def test_timeout_is_504_and_frees_the_queued_slot(predictor: Predictor, photo: bytes) -> None:
    app = create_app(predictor, workers=1, max_queue=4, timeout_s=0.5)
    gate = threading.Event()
    with TestClient(app) as c:
        jobs = app.state.jobs
        try:
            blocker = jobs.submit(gate.wait, 30)
            t0 = time.monotonic()
            r = c.post("/v1/predict", content=photo, headers={"Content-Type": "image/png"})
            assert_error(r, 504, "timeout")
            assert 0.4 < time.monotonic() - t0 < 10
            wait_until(lambda: jobs.in_flight == 1)  # the request's job never started and was cancelled
        finally:
            gate.set()
        blocker.result(timeout=10)


# --------------------------------------------------------------------------- nothing touches the disk

_written: list | None = None


def _audit(event: str, args: tuple) -> None:
    if _written is None or event != "open":
        return
    path, mode, flags = args
    writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    if writes and not str(path).endswith(".pyc"):
        _written.append((path, mode, flags))


def test_uploads_are_not_written_to_disk(client: TestClient, photo: bytes, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Starlette's own form parsing spools uploads over 1 MB to a temporary file; ours must not."""
    global _written
    big = photo + b"\0" * (2 * 1024 * 1024 - len(photo))  # PNG readers ignore bytes after IEND
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert client.post("/v1/predict", files={"file": ("big.png", big, "image/png")}).status_code == 200  # warm up
    sys.addaudithook(_audit)  # audit hooks cannot be removed; it records nothing once _written is None
    _written = []
    try:
        r = client.post("/v1/predict", files={"file": ("big.png", big, "image/png")})
        written, _written = _written, None
    finally:
        _written = None
    assert r.status_code == 200 and len(r.json()["faces"]) == 1
    assert written == []
    assert list(scratch.iterdir()) == []


def test_live_tracking_is_said_unavailable_where_norfair_is_missing(predictor: Predictor,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The inference-only install: the page asks /v1/model and disables "Start live" with this hint.
    monkeypatch.setitem(sys.modules, "norfair", None)
    with TestClient(create_app(predictor)) as c:
        live = c.get("/v1/model").json()["live"]
    assert live["available"] is False and "pip install 'agegender[video]'" in live["detail"]


def test_answers_write_numbers_as_the_csv_does(client: TestClient) -> None:
    from agegender.serving.app import PlainJSONResponse

    body = PlainJSONResponse({"p_female": 6e-05, "file": "a_1e-05.jpg", "age": 31.25}).body
    assert body == b'{"p_female":0.00006,"file":"a_1e-05.jpg","age":31.25}'
    # Every JSON route of the app answers through it.
    from fastapi.routing import APIRoute

    for route in client.app.routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            cls = getattr(route.response_class, "value", route.response_class)  # FastAPI's Default() wrapper
            assert cls is PlainJSONResponse, route.path
