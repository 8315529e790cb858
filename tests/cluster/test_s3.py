"""The Ray engine against a real S3 API on loopback (moto's standalone server, started here): photos read from a
bucket, the Parquet dataset written to a bucket, a resume after parts were lost, and a dead endpoint."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("pyarrow")
pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
from pyarrow import fs as pafs

from agegender.cli.main import main
from agegender.cluster.storage import Storage

RAY = ["--engine", "ray", "--max-faces", "4", "-q"]  # conftest.MAX_FACES, as the expected rows were made


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 server on a free loopback port, answering; (its process, its URL)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return proc, url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto's S3 server did not start")
            time.sleep(0.3)


@pytest.fixture(scope="module")
def s3_url(local_ray) -> Iterator[str]:
    """moto's S3 server for the module (the fake AWS credentials are set by ``local_ray``)."""
    proc, url = _moto()
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _upload(url: str, photos: Path, bucket: str, prefix: str) -> dict[str, str]:
    """Every regular file under ``photos`` into ``bucket/prefix``; local name -> object URI."""
    client = boto3.client("s3", endpoint_url=url)
    client.create_bucket(Bucket=bucket)
    names = {}
    for p in sorted(photos.rglob("*")):
        if p.is_file():
            key = f"{prefix}/{p.relative_to(photos).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=p.read_bytes())
            names[str(p)] = f"s3://{bucket}/{key}"
    return names


def _renamed(rows: list[dict], names: dict[str, str]) -> list[dict]:
    """``rows`` of local files as the rows of their uploaded copies: the name in ``file`` and in ``error``."""
    out = []
    for r in rows:
        if r["file"] in names:
            uri = names[r["file"]]
            out.append({**r, "file": uri, "error": r["error"] and r["error"].replace(r["file"], uri)})
    return out


def test_photos_from_a_bucket_rows_to_a_bucket_and_a_resume(s3_url: str, tools, photos: Path,
                                                            expected_rows: list[dict]) -> None:
    names = _upload(s3_url, photos, "photos", "set1")
    boto3.client("s3", endpoint_url=s3_url).create_bucket(Bucket="preds")
    expected = tools.sort_rows(_renamed(expected_rows, names))
    assert len({r["file"] for r in expected}) == len(names)  # every upload has its expected rows (the FIFO has none)
    cmd = ["predict", "s3://photos/set1", "--out", "s3://preds/run1", "--s3-endpoint", s3_url, "--block-size", "6",
           *RAY]
    assert main(cmd) == 1
    fs = Storage(endpoint=s3_url).s3()
    assert tools.dataset_rows("preds/run1", fs) == expected
    parts = {i.base_name: i.mtime for i in fs.get_file_info(pafs.FileSelector("preds/run1"))
             if i.base_name.startswith("part-")}
    assert len(parts) >= 5
    # Two parts lost: the re-run does their inputs again, leaves the others alone, and the dataset is whole.
    lost = sorted(parts)[:2]
    for name in lost:
        fs.delete_file(f"preds/run1/{name}")
    assert main(cmd) in (0, 1)
    after = {i.base_name: i.mtime for i in fs.get_file_info(pafs.FileSelector("preds/run1"))
             if i.base_name.startswith("part-")}
    assert after.keys() == parts.keys()
    assert all(after[n] == parts[n] for n in parts if n not in lost)
    assert tools.dataset_rows("preds/run1", fs) == expected


@pytest.mark.parametrize("where", ["input", "output"])
def test_a_dead_endpoint_is_a_clear_user_error(where: str, tools, tmp_path: Path, caplog, monkeypatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    tools.astronaut_copies(tmp_path / "in", 1)
    src, out = ("s3://photos/set1", str(tmp_path / "out")) if where == "input" else (str(tmp_path / "in"),
                                                                                     "s3://preds/run9")
    started = time.monotonic()
    assert main(["predict", src, "--out", out, "--engine", "ray", "--s3-endpoint", dead, "-q"]) == 2
    assert time.monotonic() - started < 60
    assert "cannot be reached" in caplog.text and "--s3-endpoint" in caplog.text


def test_storage_that_dies_mid_run_stops_it_and_records_no_photo_as_an_error(local_ray, tools, tmp_path: Path,
                                                                             caplog) -> None:
    proc, url = _moto()
    try:
        names = _upload(url, tools.astronaut_copies(tmp_path / "in", 24, sizes=(64, 96))[0].parent, "photos", "p")
        dest = tmp_path / "preds"

        def kill_storage_after_two_parts() -> None:
            deadline = time.monotonic() + 300
            while len(list(dest.glob("part-*.parquet"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            proc.kill()

        watcher = threading.Thread(target=kill_storage_after_two_parts, daemon=True)
        watcher.start()
        rc = main(["predict", "s3://photos/p", "--out", str(dest), "--s3-endpoint", url, "--block-size", "2",
                   "--workers", "1", "-q", "--engine", "ray"])
        watcher.join(timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert rc == 2 and "cannot be reached" in caplog.text
    # The blocks done are whole and hold real predictions; no photo was written off as unreadable.
    rows = tools.dataset_rows(str(dest))
    assert 2 <= len(rows) < len(names) and {r["status"] for r in rows} <= {"ok", "no_face"}
