"""The service under two hostile loads (issue 27), each against its own ``agegender serve`` on a loopback port:

    python benchmarks/hostile.py [--crowds 4] [--sockets 2000] [--hold 15] [--max-live 32]

1. **Crowd photos.** A 400-face "crowd" (25 x 16 copies of the example photo's face, 58 x 70 px, on a 1700 x 1280
   canvas), ``--crowds`` at once, with the server's default options (``--timeout 120`` so that each is answered).
   Reports the server's resident memory idle (after one small photo), its peak while the crowds are worked on
   (VmRSS sampled every 20 ms, and VmHWM), and 3 s after the last answer; and each answer's faces and seconds.
2. **Idle WebSockets.** ``--sockets`` connections to ``/v1/track`` that send nothing, opened 50 at a time and
   held ``--hold`` seconds, while ``/healthz`` is asked every 100 ms on a connection of its own, from a process of
   its own (so that the client's handshakes are not counted as the server's latency). Reports the
   connections accepted and refused, ``/healthz`` latency (median, p99, max) while they are opened and while they
   are held, and the server's memory. Run twice: with ``--max-live`` (the rest refused) and with room for every
   socket (all held).

This process raises its own open-files limit to the hard limit for the sockets. Needs the serve and video extras
and the ``websockets`` client (installed with uvicorn).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import os
import resource
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import free_port, memory_kib, wait_healthy  # noqa: E402

ASTRONAUT = ROOT / "examples" / "astronaut.png"


def crowd_jpeg(cols: int = 25, rows: int = 16, size: tuple[int, int] = (1700, 1280)) -> bytes:
    face = Image.open(ASTRONAUT).convert("RGB").crop((146, 18, 303, 216)).resize((58, 70))
    canvas = Image.new("RGB", size, (128, 128, 128))
    for r in range(rows):
        for c in range(cols):
            canvas.paste(face, (c * 68 + 2, r * 80 + 2))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def start_server(*options: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "agegender", "serve", "--port", str(port), "-q", *options]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    wait_healthy("127.0.0.1", port, proc, 180)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def post(port: int, body: bytes, timeout: float = 300) -> tuple[int, dict, float]:
    import http.client
    import json

    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "image/jpeg"})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), time.perf_counter() - t0
    finally:
        conn.close()


def mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.0f}"


def crowds(n: int) -> None:
    proc, port = start_server("--timeout", "120", "--max-queue", str(max(8, n)))
    try:
        buf = io.BytesIO()
        Image.open(ASTRONAUT).convert("RGB").save(buf, "JPEG")
        post(port, buf.getvalue())
        time.sleep(3)
        idle = memory_kib(proc.pid)["VmRSS"]
        body, peak, answers, done = crowd_jpeg(), 0, [None] * n, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, memory_kib(proc.pid)["VmRSS"] or 0)
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, post(port, body))) for i in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        time.sleep(3)
        done.set()
        sampler.join()
        after = memory_kib(proc.pid)
        print(f"crowd photos: {n} at once of {len(body):,} bytes (400 faces), default options, --timeout 120")
        for status, answer, seconds in answers:
            print(f"  {status}: {len(answer.get('faces', []))} faces predicted of {answer.get('faces_found')} found, "
                  f"{seconds:.1f} s")
        print(f"  server RSS MiB: idle {mib(idle)}, peak {mib(peak)} (VmHWM {mib(after['VmHWM'])}), 3 s after the "
              f"last answer {mib(after['VmRSS'])}; all answered in {wall:.1f} s")
    finally:
        stop(proc)


def _healthz(port: int) -> float:
    """One ``GET /healthz`` on a fresh connection: milliseconds to the whole answer."""
    import socket

    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    if b" 200 " not in answer.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"/healthz answered {answer[:40]!r}")
    return 1000 * (time.perf_counter() - t0)


def _poll(port: int, stop: Any, out: Any) -> None:
    """Ask ``/healthz`` every 100 ms until ``stop`` is set; send back (monotonic time, ms) pairs. Runs in a process
    of its own: in the process that opens the sockets, the client's own handshakes would delay the poll and be
    counted as the server's latency."""
    got = []
    while not stop.is_set():
        t = time.monotonic()
        try:
            got.append((t, _healthz(port)))
        except (OSError, RuntimeError):
            got.append((t, float("inf")))
        time.sleep(0.1)
    out.send(got)


async def _open_and_hold(port: int, n: int, hold: float) -> dict:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    opened, refused, failed = [], 0, 0

    async def one() -> None:
        nonlocal refused, failed
        try:
            opened.append(await connect(f"ws://127.0.0.1:{port}/v1/track", open_timeout=60, ping_interval=None))
        except InvalidStatus:
            refused += 1
        except (OSError, TimeoutError):
            failed += 1

    t0 = time.monotonic()
    for start in range(0, n, 50):
        await asyncio.gather(*(one() for _ in range(min(50, n - start))))
    t1 = time.monotonic()
    await asyncio.sleep(hold)
    t2 = time.monotonic()
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    return {"opened": len(opened), "refused": refused, "failed": failed, "t0": t0, "t1": t1, "t2": t2}


def _sockets(port: int, n: int, hold: float) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    stop, (receive, send) = ctx.Event(), ctx.Pipe(duplex=False)
    poller = ctx.Process(target=_poll, args=(port, stop, send), daemon=True)
    poller.start()
    time.sleep(1.0)  # the poller's interpreter is up and asking before the first socket opens
    got = asyncio.run(_open_and_hold(port, n, hold))
    stop.set()
    polls = receive.recv()
    poller.join(10)
    got["opening_s"] = got["t1"] - got["t0"]
    got["latencies"] = {"opening": [ms for t, ms in polls if got["t0"] <= t < got["t1"]],
                        "held": [ms for t, ms in polls if got["t1"] <= t < got["t2"]]}
    return got


def sockets(n: int, hold: float, max_live: int) -> None:
    for live in (max_live, n):
        proc, port = start_server("--max-live", str(live), "--live-idle-timeout", str(hold + 60))
        try:
            idle = memory_kib(proc.pid)["VmRSS"]
            got = _sockets(port, n, hold)
            during = memory_kib(proc.pid)
        finally:
            stop(proc)
        print(f"idle WebSockets: {n} opened 50 at a time in {got['opening_s']:.1f} s and held {hold:g} s, "
              f"--max-live {live}: {got['opened']} accepted, {got['refused']} refused (503), {got['failed']} failed")
        for phase, values in got["latencies"].items():
            ms = np.array(values or [np.nan])
            print(f"  /healthz every 100 ms while {phase}, {len(values)} answers: median {np.median(ms):.1f} ms, "
                  f"p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms")
        print(f"  server RSS MiB: idle {mib(idle)}, with the sockets open {mib(during['VmRSS'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crowds", type=int, default=4)
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--hold", type=float, default=15.0, help="seconds the sockets are held open")
    parser.add_argument("--max-live", type=int, default=32)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load = os.getloadavg()
    print(f"$ python benchmarks/hostile.py {shlex.join(sys.argv[1:])}")
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio's own (uvloop is not installed)"
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start; open "
          f"files {hard} (was {soft}); the server's event loop: {loop}")
    if args.crowds:
        crowds(args.crowds)
    if args.sockets:
        sockets(args.sockets, args.hold, args.max_live)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end")


if __name__ == "__main__":
    main()
