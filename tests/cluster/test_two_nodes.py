"""Two Ray nodes on this machine (``ray start --head`` and ``ray start --address``, each its own temporary folder and
one CPU), a job over 300 small photos, and the worker node's raylet killed mid-run: the job completes, and the
dataset holds every input exactly once."""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("pyarrow")

RAY_BIN = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            out[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return out


def _descendants(roots: list[int]) -> set[int]:
    procs, found, todo = _processes(), set(), list(roots)
    while todo:
        pid = todo.pop()
        kids = [p for p, (ppid, _) in procs.items() if ppid == pid and p not in found]
        found.update(kids)
        todo += kids
    return found


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([str(RAY_BIN), "start", "--block", "--num-cpus", "1", "--disable-usage-stats", *args],
                                env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_nodes(address: str, n: int, env: dict, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run([str(RAY_BIN), "status", "--address", address], env=env, capture_output=True,
                                text=True).stdout
        active = status.split("Active:", 1)[-1].split("Pending:", 1)[0]
        if active.count(" node_") >= n:
            return
        time.sleep(1)
    pytest.fail(f"the Ray cluster did not reach {n} nodes")


@pytest.mark.slow
def test_a_worker_node_killed_mid_run_loses_and_repeats_nothing(tools, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    tools.astronaut_copies(photos, 300, sizes=(48, 96))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # A token of this test's own: Ray's default token file is shared by every cluster of the user.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    # Short folders of their own: Ray's socket paths must fit in 107 bytes, and each node needs its own.
    folders = [tempfile.mkdtemp(prefix="ag-ray-head-"), tempfile.mkdtemp(prefix="ag-ray-node-")]
    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(_start(["--head", "--port", str(port), "--temp-dir", folders[0], "--include-dashboard=false"],
                            env, tmp_path / "head.log"))
        nodes.append(_start(["--address", address, "--temp-dir", folders[1]], env, tmp_path / "node.log"))
        _wait_for_nodes(address, 2, env)
        dest = tmp_path / "preds"
        # Two actors of one CPU each on two one-CPU nodes: one of them runs on the worker node.
        driver = tools.ray_cli(["predict", str(photos), "--engine", "ray", "--address", address, "--out", str(dest),
                                "--workers", "2", "--block-size", "10", "-q"], env=env)
        try:
            assert tools.wait_for_parts(dest, 3, driver) >= 3, driver.communicate()[0]
            raylets = [pid for pid, (_, cmd) in _processes().items()
                       if "raylet/raylet" in cmd and f"--raylet_socket_name={folders[1]}" in cmd]
            assert len(raylets) == 1
            # The node being killed holds one of the job's actors (its raylet's child), busy with a block.
            assert any(ppid == raylets[0] and cmd.startswith("ray::MapWorker") for ppid, cmd in _processes().values())
            os.kill(raylets[0], signal.SIGKILL)
            done_before = len(list(dest.glob("part-*.parquet")))
            out = driver.communicate(timeout=600)[0]
        finally:
            tools.stop_session(driver)
        assert driver.returncode == 0, out
        assert done_before < 30  # the kill came mid-run
        rows = tools.dataset_rows(str(dest))
        counts = collections.Counter(r["file"] for r in rows)
        assert set(counts) == {str(p) for p in photos.iterdir()}
        assert max(counts.values()) == 1 and len(rows) == 300  # each photo once, each with one row (small faces)
        assert len(list(dest.glob("part-*.parquet"))) == 30
    finally:
        _stop(nodes)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def _stop(nodes: list[subprocess.Popen]) -> None:
    """Kill both nodes and every process they started (Ray's workers are in process groups of their own)."""
    pids = _descendants([n.pid for n in nodes]) | {n.pid for n in nodes}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for n in nodes:
        n.wait(timeout=30)
