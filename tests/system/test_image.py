"""The container image (Containerfile) built and checked by ``scripts/image.sh test``: the service answers the example
photo with the host's age, is healthy within 5 s, runs as non-root on a read-only root, stops on SIGTERM within
10 s, and the image is at most 450 MB (scripts/image_check.py prints each figure; docs/container.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _why_not() -> str | None:
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (Debian: apt-get install podman runc debootstrap; .ci/run installs them)"
    if os.geteuid() != 0:
        return "needs root: debootstrap makes the base image and podman runs rootful"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")
def test_the_image_builds_and_serves_like_the_host():
    # The host's reference answer comes from this interpreter's agegender, the one under test. The script's output
    # (one line per check, with the figures) goes to pytest's captured output: shown on failure and with -rP.
    # The 5 s start-to-healthy target is image.sh's own (run it alone for that figure); inside the suite, on a
    # machine that may be busy, only a container that never gets healthy fails.
    env = {**os.environ, "PYTHON": sys.executable, "HEALTHY_S": "30"}
    done = subprocess.run(["bash", "scripts/image.sh", "test"], cwd=ROOT, env=env, timeout=900)
    assert done.returncode == 0, "scripts/image.sh test failed; its output is above"
