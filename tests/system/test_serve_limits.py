"""What one client of the service can cost others (issue 27): live sockets capped and closed when idle, Host and
Origin checked on the WebSocket handshake as on every request, live frames held to --max-faces and stopped at the
timeout without taking every worker, a crowd photo never sinking its batch, and text that is not UTF-8 closed in
one log line. The bundled model; a real server where the socket layer matters."""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extras (fastapi, python-multipart) are not installed")
pytest.importorskip("norfair", reason="the video extras are not installed (pip install 'agegender[video]')")

from fastapi.testclient import TestClient  # noqa: E402
from starlette.testclient import WebSocketDenialResponse  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from agegender.inference.predictor import Predictor  # noqa: E402
from agegender.serving.app import create_app  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"
ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.default()


@pytest.fixture(scope="module")
def portrait() -> bytes:
    buf = io.BytesIO()
    Image.open(ASTRONAUT).convert("RGB").resize((256, 256)).save(buf, "JPEG")
    return buf.getvalue()


def _post(client, data: bytes, headers: dict | None = None):
    return client.post("/v1/predict", content=data, headers={"Content-Type": "image/jpeg", **(headers or {})})


# --------------------------------------------------------------------------- Host and Origin


LIVE = "ws://127.0.0.1:8000/v1/track"


def _denied(client, headers: dict | None = None, url: str = LIVE) -> WebSocketDenialResponse:
    """The answer refusing a live connection's handshake (fails if it is accepted)."""
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect(url, headers=headers or {}):
        pass
    return denied.value


def test_the_live_socket_checks_host_and_origin_as_every_request(predictor: Predictor, portrait: bytes) -> None:
    app = create_app(predictor, allowed_hosts=["localhost", "127.0.0.1", "::1"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        foreign_host = _denied(client, {"Host": "evil.example"})
        assert foreign_host.status_code == 400 and foreign_host.json()["error"] == "bad_host"
        foreign_page = _denied(client, {"Origin": "http://evil.example"})
        assert foreign_page.status_code == 403 and foreign_page.json()["error"] == "bad_origin"
        for origin in ("null", "http://evil.example:8000", "http://127.0.0.1.evil.example:8000", "file://"):
            assert _denied(client, {"Origin": origin}).status_code == 403, origin
        for headers in ({}, {"Origin": "http://127.0.0.1:8000"}, {"Origin": "http://localhost:3000"}):
            with client.websocket_connect(LIVE, headers=headers) as ws:  # no browser, its page, a listed host
                ws.send_bytes(portrait)
                assert ws.receive_json()["faces_found"] == 1
        assert _post(client, portrait, {"Origin": "http://evil.example"}).status_code == 403
        assert _post(client, portrait, {"Origin": "http://127.0.0.1:8000"}).status_code == 200
    with TestClient(create_app(predictor)) as client:  # any Host name answered: still no other site's pages
        assert _denied(client, {"Origin": "http://evil.example"}, "/v1/track").status_code == 403


def test_other_websocket_paths_go_through_the_app_as_before(predictor: Predictor) -> None:
    # The live socket skips FastAPI's middleware and router (Service.__call__); nothing else may.
    app = create_app(predictor, allowed_hosts=["127.0.0.1"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("ws://127.0.0.1:8000/v1/track/x"):
            pass  # no such route: the router closes the handshake (a server answers that with 403)
        foreign_host = _denied(client, {"Host": "evil.example"}, "ws://127.0.0.1:8000/v1/nothing")
        assert foreign_host.status_code == 400 and foreign_host.json()["error"] == "bad_host"
        assert client.get("/healthz").status_code == 200


# --------------------------------------------------------------------------- live connections


def test_live_connections_are_capped_and_closed_when_idle(predictor: Predictor, portrait: bytes) -> None:
    app = create_app(predictor, max_live=2, live_idle_s=0.5)
    with TestClient(app) as client:
        with client.websocket_connect("/v1/track") as first, client.websocket_connect("/v1/track") as second:
            third = _denied(client, url="/v1/track")
            assert third.status_code == 503 and third.json()["error"] == "busy"
            assert third.headers["retry-after"] == "5"
            first.send_bytes(portrait)
            assert first.receive_json()["frame"] == 0
            with pytest.raises(WebSocketDisconnect) as idle:  # the second sent nothing for 0.5 s
                second.receive_json()
            assert idle.value.code == 1000 and "no frame for 0.5 s" in idle.value.reason
        with client.websocket_connect("/v1/track") as again:  # the slots are free again
            again.send_bytes(portrait)
            assert again.receive_json()["frame"] == 0
        assert app.state.live_limits.connections == 0 and client.get("/v1/model").json()["limits"]["max_live"] == 2


def test_live_frames_keep_to_max_faces(predictor: Predictor, crowd_photo) -> None:
    crowd = crowd_photo(6)
    with TestClient(create_app(predictor, max_faces=2)) as client, \
            client.websocket_connect("/v1/track") as ws:
        answers = []
        for _ in range(3):  # a face is a person from its third frame
            ws.send_bytes(crowd)
            answers.append(ws.receive_json())
    assert [(a["faces_found"], a["faces_dropped"]) for a in answers] == [(6, 4)] * 3
    assert len(answers[-1]["faces"]) == 2 and answers[-1]["tracks"] == 2


@pytest.mark.slow
def test_a_slow_live_frame_stops_at_the_timeout_and_leaves_a_worker_to_photos(predictor: Predictor, crowd_photo,
                                                                             portrait: bytes) -> None:
    """Two live clients re-sending a crowd frame turned 8 of 9 small photos into 504: their frames neither
    stopped at the timeout nor left a worker free."""
    app = create_app(predictor, timeout_s=3, workers=2, max_queue=8, max_faces=None)
    crowd = crowd_photo(400)  # seconds past the timeout even on an idle machine: every frame times out
    with TestClient(app) as client:
        stop = threading.Event()

        def live_client() -> list:
            closes = []
            while not stop.is_set():
                with client.websocket_connect("/v1/track") as ws:
                    ws.send_bytes(crowd)
                    try:
                        closes.append(ws.receive_json().get("error"))
                    except WebSocketDisconnect as e:
                        closes.append(e.code)
            return closes

        with ThreadPoolExecutor(2) as pool:
            clients = [pool.submit(live_client) for _ in range(2)]
            time.sleep(1)
            statuses = []
            for _ in range(4):
                t0 = time.monotonic()
                statuses.append((_post(client, portrait).status_code, time.monotonic() - t0))
            stop.set()
            closes = sum((c.result(timeout=120) for c in clients), [])
        deadline = time.monotonic() + 30
        while app.state.jobs.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.jobs.in_flight == 0  # every crowd frame stopped, none ran on to its end
    assert [s for s, _ in statuses] == [200] * 4, statuses
    assert 1011 in closes and "busy" in closes  # timed out (connection ended), or refused a second worker


@pytest.mark.slow
def test_text_that_is_not_utf8_closes_the_socket_in_one_line(tmp_path: Path) -> None:
    websockets = pytest.importorskip("websockets.sync.client")
    server = _server(tmp_path, "--max-live", "4")
    with server as (port, proc), websockets.connect(f"ws://127.0.0.1:{port}/v1/track", open_timeout=10) as ws:
        ws.send(b"\xff\xfe not utf-8", text=True)
        with pytest.raises(Exception) as closed:  # websockets' ConnectionClosed
            ws.recv(timeout=10)
        assert getattr(closed.value, "rcvd", None) is not None and closed.value.rcvd.code == 1007
    assert "Traceback" not in proc.stderr_text and "not UTF-8" in proc.stderr_text


# --------------------------------------------------------------------------- a real server, few file descriptors


class _Server:
    stderr_text = ""
    returncode: int | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthz_ms(port: int) -> float:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    return 1000 * (time.perf_counter() - t0)


class _server:
    """``agegender serve`` on a free port with ``extra`` options (and at most ``open_files`` file descriptors);
    yields (port, a record whose ``stderr_text`` is the server's stderr once it has stopped)."""

    def __init__(self, tmp_path: Path, *extra: str, open_files: int | None = None) -> None:
        self.port, self.extra, self.open_files = _free_port(), extra, open_files
        self.log = tmp_path / "serve.log"
        self.record = _Server()

    def _limit(self) -> None:
        if self.open_files:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def __enter__(self) -> tuple[int, _Server]:
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
        self.stderr = open(self.log, "w")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen([sys.executable, "-m", "agegender", "serve", "--port", str(self.port),
                                      *self.extra], env=env, stderr=self.stderr, preexec_fn=self._limit)
        deadline = time.time() + 120
        while True:
            try:
                _healthz_ms(self.port)
                break
            except OSError:
                assert self.proc.poll() is None and time.time() < deadline, self.log.read_text()[-3000:]
                time.sleep(0.3)
        return self.port, self.record

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.record.returncode = self.proc.wait(timeout=60)
        self.stderr.close()
        self.record.stderr_text = self.log.read_text()


@pytest.mark.slow
def test_idle_sockets_beyond_the_cap_are_refused_and_everyone_else_is_answered(tmp_path: Path) -> None:
    """With 64 file descriptors, 60 silent sockets used every one of them and locked everyone out, and asyncio
    logged each failed accept with its traceback (6 MB in 5 s). Capped at 8, the other live sockets are refused at
    once and their descriptors freed; plain connections that take the rest are closed by the header timeout, and
    the failed accepts meanwhile cost a line, not a flood."""
    websockets = pytest.importorskip("websockets.sync.client")
    from websockets.exceptions import InvalidStatus

    server = _server(tmp_path, "--max-live", "8", "--header-timeout", "1", "-q", open_files=64)
    with server as (port, record), contextlib.ExitStack() as stack:
        opened, refused, answers = 0, 0, []
        for i in range(60):
            try:
                stack.enter_context(websockets.connect(f"ws://127.0.0.1:{port}/v1/track", open_timeout=10))
                opened += 1
            except InvalidStatus as e:
                assert e.response.status_code == 503
                refused += 1
            if i % 10 == 9:
                answers.append(_healthz_ms(port))
        assert (opened, refused) == (8, 52)
        # Answered throughout; the median, on a 2-core test machine shared with other work (not 100 ms).
        assert sorted(answers)[len(answers) // 2] < 300, answers
        silent = [stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(60)]
        time.sleep(3)  # every descriptor taken for a while; the header timeout (1 s) closes the silent ones
        assert all(s.recv(1) == b"" for s in silent[:10])
        assert _healthz_ms(port) < 1000
    lines = record.stderr_text.splitlines()
    assert len(lines) < 10 and "Traceback" not in record.stderr_text, lines[:20]
    assert any("live connections at the limit of 8: 1 refused so far" in line for line in lines)
    assert record.returncode == 0  # SIGTERM stops a server gracefully: a stop asked for, not a failure


# --------------------------------------------------------------------------- batching


@pytest.mark.slow
def test_a_crowd_photo_never_sinks_its_batch(predictor: Predictor, crowd_photo, portrait: bytes) -> None:
    """--max-batch 4: a crowd photo beside three small ones made two of them time out; each is answered when its
    own faces are done."""
    app = create_app(predictor, workers=1, max_batch=4, batch_window_s=0.3, timeout_s=60, max_faces=None)
    crowd = crowd_photo(100)
    done: dict[str, float] = {}
    with TestClient(app) as client, ThreadPoolExecutor(4) as pool:
        t0 = time.monotonic()

        def post(name: str, data: bytes) -> int:
            status = _post(client, data).status_code
            done[name] = time.monotonic() - t0
            return status

        futures = [pool.submit(post, "crowd", crowd)]
        time.sleep(0.05)
        futures += [pool.submit(post, f"small{i}", portrait) for i in range(3)]
        assert [f.result(timeout=300) for f in futures] == [200] * 4
    assert max(done[f"small{i}"] for i in range(3)) < done["crowd"], done
