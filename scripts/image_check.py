"""Run the built image as a deployer would and check it; called by ``scripts/image.sh test`` after the build.

    python scripts/image_check.py --image agegender:latest [--target serve|ray] -- podman [FLAGS] run [FLAGS]

The container runs with a read-only root (writable /tmp only), no capabilities, its port published on loopback.
Checked: /healthz answers within --healthy-s of `podman run`; the example photo gets the age that `agegender
predict` gives on this host (rounded to 2 decimals, as its CSV); the server runs as a non-root uid; the image's
HEALTHCHECK passes; AGEGENDER_SERVE_MAX_FACES reaches the server (where the CLI reads settings from the environment);
nothing complained about the read-only root; `podman stop` (the image's STOPSIGNAL) ends it with status 0 within
10 s; the serve image is at most --max-mb MB. The ray target also runs a Ray task, and serves with its command
overridden. Prints one line per check and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "astronaut.png"
MAX_FACES = 3  # not the default, so that the answer shows whether the setting arrived
STOP_LIMIT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def podman_cmd(run_prefix: list[str], *args: str) -> list[str]:
    """A podman subcommand with the global flags of ``run_prefix`` (everything before its ``run``)."""
    return [*run_prefix[: run_prefix.index("run")], *args]


def sh(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def host_age() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ref.csv"
        subprocess.run([sys.executable, "-m", "agegender", "predict", str(PHOTO), "--out", str(out), "-q"],
                       check=True, timeout=120)
        with out.open(newline="") as f:
            return float(next(csv.DictReader(f))["age"])


def get(port: int, path: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if body is None:
            conn.request("GET", path)
        else:
            conn.request("POST", path, body=body, headers={"Content-Type": "image/png"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_healthy(port: int, started: float, timeout: float, alive) -> float | None:
    """Seconds from ``started`` to the first 200 from /healthz; None if it never came or the container ended."""
    while time.monotonic() - started < timeout:
        try:
            if get(port, "/healthz", timeout=2)[0] == 200:
                return time.monotonic() - started
        except (OSError, http.client.HTTPException):
            pass
        if not alive():
            return None
        time.sleep(0.05)
    return None


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def report(self, name: str, ok: bool, detail: str) -> bool:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        if not ok:
            self.failed.append(name)
        return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True)
    ap.add_argument("--target", choices=["serve", "ray"], default="serve")
    ap.add_argument("--max-mb", type=float, default=450, help="largest serve image in MB (default 450)")
    ap.add_argument("--healthy-s", type=float, default=5, help="most seconds from run to healthy (default 5)")
    ap.add_argument("run_prefix", nargs="+", help="the podman command up to and including `run` and its flags")
    args = ap.parse_args(argv)
    run_prefix, checks = args.run_prefix, Checks()

    size = int(sh(podman_cmd(run_prefix, "image", "inspect", "--format", "{{.Size}}", args.image)).stdout.strip())
    limit = args.max_mb if args.target == "serve" else float("inf")
    checks.report("size", size <= limit * 1e6, f"{args.image} {size / 1e6:.1f} MB ({size / 2**20:.1f} MiB)"
                  + (f", limit {args.max_mb:g} MB" if args.target == "serve" else ""))
    reference = host_age()

    if args.target == "ray":
        # A task through Ray inside the same locked-down container the service gets.
        code = ("import ray, ray.data, pyarrow, agegender; ray.init(num_cpus=1, include_dashboard=False, "
                "object_store_memory=80 * 2**20); "
                "print(ray.__version__, ray.get(ray.remote(lambda: agegender.__version__).remote()))")
        started = time.monotonic()
        done = sh([*run_prefix, "--rm", "--read-only", "--tmpfs", "/tmp", "--shm-size", "256m", args.image,
                   "python", "-c", code], timeout=180)
        checks.report("ray task", done.returncode == 0, f"{time.monotonic() - started:.1f} s, "
                      + (done.stdout.strip() or done.stderr.strip()[-800:]))

    port = free_port()
    name = f"agegender-image-check-{os.getpid()}"
    command = ["agegender", "serve", "--host", "0.0.0.0"] if args.target == "ray" else []
    started = time.monotonic()
    run = sh([*run_prefix, "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
              "--security-opt", "no-new-privileges", "-p", f"127.0.0.1:{port}:8000",
              "-e", f"AGEGENDER_SERVE_MAX_FACES={MAX_FACES}", args.image, *command])
    if run.returncode != 0:
        checks.report("run", False, run.stderr.strip())
        return 1
    try:
        def alive() -> bool:
            state = sh(podman_cmd(run_prefix, "inspect", "--format", "{{.State.Running}}", name)).stdout
            return state.strip() == "true"

        healthy = wait_healthy(port, started, 60, alive)
        if healthy is None:
            checks.report("start to healthy", False, "no 200 from /healthz within 60 s")
            logs = sh(podman_cmd(run_prefix, "logs", name))
            print((logs.stdout + logs.stderr)[-4000:], flush=True)
            return 1
        checks.report("start to healthy", healthy <= args.healthy_s,
                      f"{healthy:.2f} s (limit {args.healthy_s:g} s)")

        status, body = get(port, "/v1/predict", PHOTO.read_bytes())
        faces = json.loads(body).get("faces", []) if status == 200 else []
        if faces:
            age = round(faces[0]["age"], 2)
            checks.report("age", abs(age - reference) <= 0.01 + 1e-9,
                          f"container {age:.2f}, host `agegender predict` {reference:.2f}, "
                          f"difference {abs(age - reference):.3f} (limit 0.01)")
        else:
            checks.report("age", False, f"HTTP {status}: {body[:300]!r}")

        proc1 = sh(podman_cmd(run_prefix, "exec", name, "cat", "/proc/1/status")).stdout
        uid = next((line.split()[1] for line in proc1.splitlines() if line.startswith("Uid:")), "?")
        checks.report("non-root", uid not in ("0", "?"), f"the server (pid 1 in the container) runs as uid {uid}")

        if args.target == "serve":
            hc = sh(podman_cmd(run_prefix, "healthcheck", "run", name))
            checks.report("HEALTHCHECK", hc.returncode == 0,
                          (hc.stdout.strip() or hc.stderr.strip() or "passed") + " (podman healthcheck run)")

        limits = json.loads(get(port, "/v1/model")[1]).get("limits", {})
        env_contract = any("AGEGENDER_SERVE_" in p.read_text() for p in (ROOT / "src").rglob("*.py"))
        if env_contract:
            checks.report("settings from env", limits.get("max_faces") == MAX_FACES,
                          f"AGEGENDER_SERVE_MAX_FACES={MAX_FACES} -> /v1/model limits.max_faces "
                          f"{limits.get('max_faces')}")
        else:
            print(f"skip settings from env: this agegender does not read AGEGENDER_SERVE_* yet "
                  f"(limits.max_faces {limits.get('max_faces')})", flush=True)

        stop_started = time.monotonic()
        stop = sh(podman_cmd(run_prefix, "stop", "-t", str(int(STOP_LIMIT_S)), name), timeout=STOP_LIMIT_S + 30)
        stopped = time.monotonic() - stop_started
        code = sh(podman_cmd(run_prefix, "inspect", "--format", "{{.State.ExitCode}}", name)).stdout.strip()
        checks.report("stop (SIGTERM)", stop.returncode == 0 and code == "0" and stopped < STOP_LIMIT_S,
                      f"{stopped:.2f} s, exit status {code} (limit {STOP_LIMIT_S:g} s, status 0)")

        logs = sh(podman_cmd(run_prefix, "logs", name))
        text = logs.stdout + logs.stderr
        complaints = [line for line in text.splitlines() if "Read-only file system" in line or "Errno 30" in line]
        checks.report("read-only root", not complaints, complaints[0] if complaints else "no write outside /tmp "
                      "was attempted (--read-only --tmpfs /tmp)")
        if checks.failed:
            print("--- container log (last 40 lines) ---\n" + "\n".join(text.splitlines()[-40:]), flush=True)
    finally:
        sh(podman_cmd(run_prefix, "rm", "-f", "-t", "0", name))
    if checks.failed:
        print(f"FAILED: {', '.join(checks.failed)}", flush=True)
        return 1
    print("image checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
