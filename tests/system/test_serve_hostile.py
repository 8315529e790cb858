"""Hostile inputs at the service, with 1 and 4 prediction threads: every crafted file and mutated header gets a
4xx JSON answer or a prediction (never a 500), bombs cost no memory, crowds are capped, timed-out work stops,
slow headers and foreign Host names are turned away."""

from __future__ import annotations

import http.client
import io
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extras (fastapi, python-multipart) are not installed")
pytest.importorskip("uvicorn", reason="the serve extras are not installed")

from fastapi.testclient import TestClient  # noqa: E402

from agegender.inference.predictor import Predictor  # noqa: E402
from agegender.serving.app import create_app  # noqa: E402

STATUS = {"ok": 200, "empty": 400, "unsupported": 415, "too_large": 422, "corrupt": 422}
ANSWERS = {200, 400, 413, 415, 422}


@pytest.fixture(scope="module")
def predictor(trained_run: Path) -> Predictor:
    return Predictor.from_checkpoint(trained_run / "best.pt")


def _post(client, data: bytes) -> tuple[int, dict]:
    r = client.post("/v1/predict", content=data, headers={"Content-Type": "application/octet-stream"})
    body = r.json()
    assert set(body) == {"error", "detail"} if r.status_code != 200 else "faces" in body, r.text
    return r.status_code, body


@pytest.mark.parametrize("workers", [1, 4])
def test_every_hostile_case_gets_its_answer(predictor: Predictor, hostile_cases: dict, workers: int) -> None:
    cases = list(hostile_cases.items())
    with TestClient(create_app(predictor, workers=workers, max_queue=len(cases))) as client, \
            ThreadPoolExecutor(max_workers=2 * workers) as pool:
        answers = list(pool.map(lambda case: _post(client, case[1][0]), cases))
    for (case, (_, expected)), (status, body) in zip(cases, answers, strict=True):
        assert status == STATUS[expected], (case, body)


def test_mutated_headers_through_the_service(predictor: Predictor, mutated_headers) -> None:
    mutants = [data for _, data in mutated_headers(200, seed=1)]
    t0 = time.perf_counter()
    with TestClient(create_app(predictor, workers=4, max_queue=len(mutants))) as client, \
            ThreadPoolExecutor(max_workers=8) as pool:
        statuses = [status for status, _ in pool.map(lambda data: _post(client, data), mutants)]
    assert set(statuses) <= ANSWERS, statuses
    assert statuses.count(200) > 10 and statuses.count(422) > 10
    assert time.perf_counter() - t0 < 120


def test_concurrent_large_images_never_let_a_bomb_through(predictor: Predictor, hostile_cases: dict) -> None:
    """With the old catch_warnings guard, concurrent large decodes left the warning filter broken: a header-only
    giant then got a 500. Checks without shared state answer 422 every time."""
    buf = io.BytesIO()
    Image.new("RGB", (2000, 2000), (90, 90, 90)).save(buf, "PNG")
    big, bomb = buf.getvalue(), hostile_cases["header-only PNG 10000x10000"][0]
    filters = list(warnings.filters)
    with TestClient(create_app(predictor, workers=4, max_queue=32)) as client, \
            ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda i: _post(client, bomb if i % 3 == 0 else big)[0], range(24)))
        assert _post(client, bomb)[0] == 422
    assert [a for i, a in enumerate(answers) if i % 3 == 0] == [422] * 8
    assert set(answers) == {200, 422}
    assert warnings.filters == filters


def test_a_crowd_is_capped_and_the_answer_says_so(predictor: Predictor, crowd_photo) -> None:
    with TestClient(create_app(predictor, max_faces=2)) as client:
        status, body = _post(client, crowd_photo(6))
        assert client.get("/v1/model").json()["limits"]["max_faces"] == 2
    assert status == 200 and len(body["faces"]) == 2
    assert body["faces_found"] == 6 and body["faces_dropped"] == 4
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in body["faces"]]
    assert min(areas) > 0


def test_a_timed_out_request_stops_its_work(predictor: Predictor, crowd_photo,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """40 faces take the detector seconds per stage; the request gives up after 0.3 s and its job stops at the
    next stage instead of running to the end with its slot held."""
    caplog.set_level(logging.INFO, logger="agegender.serving")
    app = create_app(predictor, timeout_s=0.3, workers=1, max_queue=0)
    with TestClient(app) as client:
        status, body = _post(client, crowd_photo(40))
        assert status == 504 and body["error"] == "timeout"
        deadline = time.monotonic() + 120
        while app.state.jobs.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.jobs.in_flight == 0
        assert any(m.startswith("stopped the work of 1 timed-out request") for m in caplog.messages)
        assert client.get("/healthz").status_code == 200


def test_only_the_allowed_host_names_are_answered(predictor: Predictor) -> None:
    with TestClient(create_app(predictor, allowed_hosts=["localhost", "127.0.0.1", "::1"])) as client:
        r = client.get("/v1/model", headers={"Host": "attacker.example"})
        assert r.status_code == 400 and r.json()["error"] == "bad_host"
        assert client.get("/v1/model", headers={"Host": "localhost:8000"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "[::1]:8000"}).status_code == 200


# --------------------------------------------------------------------------- a real server on loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module", params=[1, 4], ids=["1 worker", "4 workers"])
def server(request, trained_run: Path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agegender", "serve", "--model", str(trained_run / "best.pt"),
                             "--port", str(port), "--workers", str(request.param), "--max-queue", "64",
                             "--header-timeout", "1", "-q"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while True:
        try:
            if _request(port, "GET", "/healthz")[0] == 200:
                break
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, "the server did not start"
        time.sleep(0.3)
    yield port, proc
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err[-3000:]


@pytest.mark.slow
def test_the_corpus_at_a_real_server_leaves_memory_flat(server, hostile_cases: dict) -> None:
    port, proc = server
    warm = next(data for data, expected in hostile_cases.values() if expected == "ok")
    assert _request(port, "POST", "/v1/predict", warm)[0] == 200
    before = _rss_mb(proc.pid)
    for _ in range(3):
        for case, (data, expected) in hostile_cases.items():
            status, body = _request(port, "POST", "/v1/predict", data, {"Content-Type": "image/jpeg"})
            assert status == STATUS[expected], (case, body)
            assert body.startswith(b"{")
    assert _rss_mb(proc.pid) - before < 50
    assert _request(port, "HEAD", "/healthz") == (200, b"")
    status, body = _request(port, "GET", "/v1/model", headers={"Host": "attacker.example"})
    assert status == 400 and b"bad_host" in body


def _trickle(port: int, results: list, index: int) -> None:
    """Send a request head one byte every 0.25 s until the server answers; record what it said and when."""
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    t0 = time.monotonic()
    answer = b"no answer"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for byte in head:
            if select.select([s], [], [], 0.25)[0]:  # the server spoke (or hung up): read it, stop sending
                answer = s.recv(4096)
                break
            s.sendall(bytes([byte]))
    results[index] = (time.monotonic() - t0, answer)


def test_slow_headers_and_idle_connections_are_closed(server) -> None:
    port, _ = server
    results: list = [None] * 16
    threads = [threading.Thread(target=_trickle, args=(port, results, i)) for i in range(16)]
    for t in threads:
        t.start()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:  # connects, never sends a byte
        t0 = time.monotonic()
        assert idle.recv(100) == b"" and time.monotonic() - t0 < 5
    for t in threads:
        t.join(30)
    for seconds, answer in results:
        assert seconds < 5, seconds  # cut off after the 1 s header timeout, not at 50 s of trickling
        assert answer.startswith(b"HTTP/1.1 408") and b"header_timeout" in answer
    assert _request(port, "GET", "/healthz")[0] == 200  # and the server answers everybody else
