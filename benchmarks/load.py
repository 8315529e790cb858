"""Load test of the web service: N requests from C concurrent clients, on loopback only.

    python benchmarks/load.py [--model CKPT] [--n 1000] [--concurrency 16] [--time-limit 600]
    python benchmarks/load.py --url http://127.0.0.1:8000 [--pid SERVER_PID]

Without --url the server is started here as a subprocess (``python -m agegender serve``) on a free loopback port
and stopped at the end. Every request POSTs the same photo (examples/astronaut.png by default) as raw bytes.
Reports requests/s, latency percentiles of the successful requests, answers by status (503 = the server shedding
load on purpose, listed apart from errors) and the server's resident memory (VmRSS) before and after, and its peak
(VmHWM), from /proc, each read 1 s after the last answer.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SETTLE_S = 1.0  # pause before each memory reading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kib(pid: int | None) -> dict[str, int | None]:
    """VmRSS and VmHWM (peak) of process ``pid`` in KiB, None where unknown."""
    out: dict[str, int | None] = {"VmRSS": None, "VmHWM": None}
    if pid is None:
        return out
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in out:
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def request(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, float]:
    """POST ``body``; returns the status and the Retry-After seconds (0 when absent)."""
    conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "image/png"})
    response = conn.getresponse()
    response.read()
    retry_after = response.getheader("Retry-After", "0")
    return response.status, float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 0.0


def wait_healthy(host: str, port: int, proc: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"the server exited with status {proc.returncode} before answering; see its log above")
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    sys.exit(f"no answer from http://{host}:{port}/healthz within {timeout:.0f} s")


def run_load(host: str, port: int, body: bytes, n: int, concurrency: int, time_limit: float,
             request_timeout: float, backoff: bool) -> tuple[list[tuple[str, float]], float]:
    """``n`` requests (or as many as fit in ``time_limit``) from ``concurrency`` threads; returns (outcome,
    seconds) per request and the wall time. With ``backoff`` a client told 503 waits Retry-After seconds."""
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    issued = 0
    start = time.monotonic()
    deadline = start + time_limit

    def client() -> None:
        nonlocal issued
        conn = http.client.HTTPConnection(host, port, timeout=request_timeout)
        while True:
            with lock:
                if issued >= n or time.monotonic() >= deadline:
                    break
                issued += 1
            t0 = time.perf_counter()
            wait = 0.0
            try:
                status, wait = request(conn, body)
                outcome = str(status)
            except (OSError, http.client.HTTPException) as e:
                outcome = f"client:{type(e).__name__}"
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=request_timeout)
            with lock:
                results.append((outcome, time.perf_counter() - t0))
            if backoff and outcome == "503":
                time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + request_timeout + 5)
    return results, time.monotonic() - start


def report(results: list[tuple[str, float]], wall: float, before: dict, after: dict, args: argparse.Namespace) -> dict:
    counts = Counter(outcome for outcome, _ in results)
    ok = np.array([s for outcome, s in results if outcome == "200"]) * 1000
    errors = {k: v for k, v in counts.items() if k not in ("200", "503")}
    pct = {f"p{q}": float(np.percentile(ok, q)) if ok.size else None for q in (50, 95, 99)}
    summary = {"requests": len(results), "seconds": wall, "requests_per_s": len(results) / wall,
               "ok_per_s": ok.size / wall, "ok": int(ok.size), "shed_503": counts.get("503", 0), "errors": errors,
               "latency_ms": {**pct, "mean": float(ok.mean()) if ok.size else None,
                              "max": float(ok.max()) if ok.size else None},
               "rss_kib_before": before["VmRSS"], "rss_kib_after": after["VmRSS"], "peak_rss_kib": after["VmHWM"]}

    def mib(kib: int | None) -> str:
        return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"

    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f} ms"

    lat = summary["latency_ms"]
    rows = [
        ("requests (target / done)", f"{args.n} / {len(results)}"),
        ("concurrency", f"{args.concurrency}" + ("" if args.no_backoff else " (clients wait Retry-After on 503)")),
        ("wall time", f"{wall:.1f} s" + ("  (time limit reached)" if len(results) < args.n else "")),
        ("requests/s (all answers)", f"{summary['requests_per_s']:.2f}"),
        ("requests/s (200 only)", f"{summary['ok_per_s']:.2f}"),
        ("200 ok", str(summary["ok"])),
        ("503 shed (deliberate)", str(summary["shed_503"])),
        ("errors", ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "0"),
        ("latency of 200s p50 / p95 / p99", f"{ms(lat['p50'])} / {ms(lat['p95'])} / {ms(lat['p99'])}"),
        ("latency of 200s mean / max", f"{ms(lat['mean'])} / {ms(lat['max'])}"),
        ("server RSS before / after", f"{mib(before['VmRSS'])} / {mib(after['VmRSS'])}"),
        ("server peak RSS (VmHWM)", mib(after["VmHWM"])),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running server on loopback (default: start one)")
    ap.add_argument("--pid", type=int, help="with --url: the server's process id, for its memory")
    ap.add_argument("--model", help="checkpoint for the server started here (default: the bundled model)")
    ap.add_argument("--server-workers", type=int, default=0,
                    help="--workers of the server started here (default 0: the server's default, one per core)")
    ap.add_argument("--max-batch", type=int, help="--max-batch of the server started here (default: the server's)")
    ap.add_argument("--max-queue", type=int, default=8, help="--max-queue of the server started here")
    ap.add_argument("--image", default=str(ROOT / "examples" / "astronaut.png"), help="photo to send")
    ap.add_argument("--n", type=int, default=1000, help="requests to send (default 1000)")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--time-limit", type=float, default=600, help="stop issuing requests after this many seconds")
    ap.add_argument("--request-timeout", type=float, default=120, help="client socket timeout, seconds")
    ap.add_argument("--no-backoff", action="store_true", help="resend at once after a 503 instead of waiting "
                    "the Retry-After seconds")
    ap.add_argument("--json", help="also write the summary here")
    args = ap.parse_args()
    if args.n < 1 or args.concurrency < 1 or args.time_limit <= 0:
        ap.error("--n, --concurrency and --time-limit must be positive")
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    body = Path(args.image).read_bytes()

    proc = None
    if args.url:
        parts = urlsplit(args.url)
        if parts.hostname not in LOOPBACK:
            ap.error(f"--url must be on loopback ({', '.join(LOOPBACK)}), got {parts.hostname}")
        host, port, pid = parts.hostname, parts.port or 80, args.pid
    else:
        host, port = "127.0.0.1", free_port()
        cmd = [sys.executable, "-m", "agegender", "serve", "--host", host, "--port", str(port), "--workers",
               str(args.server_workers), "--max-queue", str(args.max_queue), "-q"]
        if args.model:
            cmd += ["--model", args.model]
        if args.max_batch:
            cmd += ["--max-batch", str(args.max_batch)]
        print("server: ", shlex.join(cmd))
        proc = subprocess.Popen(cmd)
        pid = proc.pid
    try:
        wait_healthy(host, port, proc, timeout=180)
        warm, _ = request(http.client.HTTPConnection(host, port, timeout=args.request_timeout), body)
        if warm != 200:
            sys.exit(f"the warm-up request got HTTP {warm}")
        # Settled figures: a server may still be tidying up (handing free memory back) just after an answer.
        time.sleep(SETTLE_S)
        before = memory_kib(pid)
        results, wall = run_load(host, port, body, args.n, args.concurrency, args.time_limit, args.request_timeout,
                                 backoff=not args.no_backoff)
        time.sleep(SETTLE_S)
        after = memory_kib(pid)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    summary = report(results, wall, before, after, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": sys.argv, **summary}, indent=2))
    return 0 if summary["ok"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
