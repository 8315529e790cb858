"""Fixtures of the Ray engine's tests: a folder of small generated photos (faces, no face, a crowd, hostile and
corrupt files), the rows plain ``agegender predict`` makes of it, a local Ray shared by the in-process runs, and
readers of a Parquet dataset."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from agegender.cli.main import main
from agegender.inference.batch import PHOTO_COLUMNS

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"
MAX_FACES = "4"  # below the crowd photo's 6 faces: its faces_dropped row is part of what must match


def astronaut_copies(dest: Path, n: int, sizes: tuple[int, int] = (96, 200)) -> list[Path]:
    """``n`` JPEG copies of the example photo, each resized to its own size between ``sizes`` (so their rows
    differ), in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    photo = Image.open(EXAMPLE).convert("RGB")
    low, high = sizes
    out = []
    for i in range(n):
        side = low + (i * 7) % (high - low + 1)
        path = dest / f"photo_{i:04d}.jpg"
        photo.resize((side, side)).save(path, quality=85)
        out.append(path)
    return out


def make_photos(dest: Path, hostile: dict[str, tuple[bytes, str]], crowd: Callable[[int], bytes]) -> Path:
    """The mixed folder: 10 faces, a photo without a face, a crowd of 6, every hostile case, a FIFO named like a
    photo and a file in a sub-folder."""
    astronaut_copies(dest, 10)
    Image.new("RGB", (120, 90), (90, 140, 200)).save(dest / "sky.png")
    (dest / "crowd.png").write_bytes(crowd(6))
    for i, (data, _) in enumerate(hostile.values()):
        (dest / f"hostile_{i:02d}.jpg").write_bytes(data)
    os.mkfifo(dest / "fifo.jpg")
    (dest / "sub").mkdir()
    (dest / "sub" / "nested.jpg").write_bytes((dest / "photo_0003.jpg").read_bytes())
    return dest


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory, hostile_cases, crowd_photo) -> Path:
    return make_photos(tmp_path_factory.mktemp("cluster") / "photos", hostile_cases, crowd_photo)


def sort_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["file"], r["face"] if r["face"] is not None else -1, r["status"]))


def plain_rows(inputs: list[str], out: Path, *extra: str) -> list[dict]:
    """The rows ``agegender predict INPUTS --out OUT.json`` writes, every column present (None where empty)."""
    rc = main(["predict", *inputs, "--out", str(out), "--max-faces", MAX_FACES, "-q", *extra])
    assert rc in (0, 1)
    return sort_rows([{c: r.get(c) for c in PHOTO_COLUMNS} for r in json.loads(out.read_text())])


@pytest.fixture(scope="session")
def expected_rows(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Plain ``agegender predict``'s rows of :func:`photos` (named as given: the folder's absolute path)."""
    return plain_rows([str(photos)], tmp_path_factory.mktemp("plain") / "plain.json")


def dataset_rows(dest: str, filesystem=None) -> list[dict]:
    """Every row of the Parquet dataset ``dest``, read as any pyarrow user would (the folder, whole)."""
    import pyarrow.dataset as ds

    return sort_rows(ds.dataset(dest, format="parquet", filesystem=filesystem).to_table().to_pylist())


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """A local Ray for the in-process runs (the CLI uses a Ray already running in its process), started once:
    each start costs seconds. Fake AWS settings first, as Ray's workers inherit the environment it starts with
    and the S3 tests' loopback server takes any credentials."""
    ray = pytest.importorskip("ray")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        os.environ.setdefault(key, value)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def ray_cli(args: list[str], **kwargs) -> subprocess.Popen:
    """``agegender ARGS`` in a process of its own session (so that what Ray starts for it can be stopped)."""
    return subprocess.Popen([sys.executable, "-m", "agegender.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)


def wait_for_parts(dest: Path, at_least: int, proc: subprocess.Popen, timeout: float = 240) -> int:
    """Wait until ``dest`` holds ``at_least`` part files (or ``proc`` ended); how many it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        n = len(list(dest.glob("part-*.parquet")))
        if n >= at_least:
            return n
        time.sleep(0.2)
    return len(list(dest.glob("part-*.parquet")))


def stop_session(proc: subprocess.Popen) -> None:
    """Stop what is left of ``proc``'s session (Ray's helper processes outlive a killed driver for a while)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def tools():
    """This module's helpers, for the test modules (a conftest cannot be imported by name)."""
    return sys.modules[__name__]
