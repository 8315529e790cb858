"""Outputs under faults (issue 27): SIGTERM finishes every file as Ctrl-C does, an output that names an input is
refused before anything opens, and a write that fails (a full disk, here a file-size limit) is reported in one line
naming the path and what was lost."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agegender.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"
ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}


def _agegender(*argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agegender", *argv], env=_env(), stderr=subprocess.PIPE,
                            text=True, **kwargs)


def _wait_for_lines(path: Path, lines: int, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not (path.exists() and len(path.read_text(errors="replace").splitlines()) > lines):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not reach {lines} lines in time"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 small photos without a face: each costs the detector a few milliseconds."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(300):
        Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(folder / f"p{i:03d}.jpg")
    return folder


def test_sigterm_during_predict_writes_the_rows_done_and_exits_143(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    proc = _agegender("predict", str(photos), "--out", str(out), "--workers", "1", "--batch-size", "2", "-q")
    _wait_for_lines(out.with_name("p.csv.partial"), 4, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    rows = pd.read_csv(out)
    assert 4 <= len(rows) < 300 and rows["file"].is_unique and set(rows["status"]) == {"no_face"}
    assert not out.with_name("p.csv.partial").exists()


def test_outputs_never_overwrite_an_input_photo(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(ASTRONAUT).convert("RGB").resize((128, 128)).save(folder / "a.jpg")
    earlier = folder / "a_annotated.jpg"  # an annotated copy of an earlier run, now an input
    Image.new("RGB", (64, 64), (10, 200, 10)).save(earlier)
    before = earlier.read_bytes()
    assert main(["predict", str(folder), "--out", str(tmp_path / "p.csv"), "--annotate", str(folder), "-q"]) == 0
    assert earlier.read_bytes() == before
    assert {"a_annotated_2.jpg", "a_annotated_annotated.jpg"} <= {p.name for p in folder.iterdir()}
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    caplog.clear()
    assert main(["predict", str(folder / "a.jpg"), str(listed), "--out", str(listed), "-q"]) == 2
    assert f"--out {listed} is the input {listed}" in caplog.text and listed.read_text() == "[]"


def _file_size_limit(limit: int):
    """In the child before exec: files may grow to ``limit`` bytes at most, after which a write fails (EFBIG, as
    ENOSPC on a full disk: the same failed write(2) for the program)."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return apply


def test_rows_that_cannot_be_written_are_said_with_the_path_and_what_was_kept(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    proc = _agegender("predict", str(photos), "--out", str(out), "--workers", "1", "--batch-size", "8", "-q",
                      preexec_fn=_file_size_limit(4096))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    kept = int(errors[0].split("; the ")[1].split(" rows before")[0])
    assert f"{out}: cannot write rows (File too large); the {kept} rows before are in {out}.partial" in errors[0]
    assert not out.exists()
    rows = pd.read_csv(out.with_name("p.csv.partial"))
    assert 0 < kept <= len(rows) < 300  # every row reported is there (the failed write may have added a torn one)


@pytest.mark.slow
def test_a_cache_folder_that_cannot_be_written_is_named(trained_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="exporting a checkpoint needs the onnx package")
    cache, out = tmp_path / "cache", tmp_path / "p.csv"
    env = {**_env(), "AGEGENDER_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-m", "agegender", "predict", str(ASTRONAUT), "--out", str(out),
                           "--model", str(trained_run / "best.pt"), "--runtime", "onnx", "-q"], env=env,
                          capture_output=True, text=True, timeout=600, preexec_fn=_file_size_limit(1_000_000))
    assert proc.returncode == 2, proc.stderr[-3000:]
    (error,) = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert "cannot write (File too large)" in error and f"cache folder {cache / 'onnx'}: free space there" in error
    assert "AGEGENDER_CACHE" in error and not out.exists()
