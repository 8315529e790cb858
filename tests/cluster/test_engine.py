"""``agegender predict --engine ray`` on a local Ray: the same rows as plain ``agegender predict`` (every column),
bad files as error rows, a re-run that adds nothing, and a run stopped by Ctrl-C and then killed outright that
resumes to the same dataset as an uninterrupted run."""

from __future__ import annotations

import collections
import re
import signal
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("pyarrow")

from agegender.cli.main import main
from agegender.cluster.dataset import SETTINGS_FILE

RAY = ["--engine", "ray", "--max-faces", "4", "-q"]  # conftest.MAX_FACES, as the expected rows were made


def test_ray_rows_equal_plain_rows_and_a_rerun_adds_nothing(local_ray, tools, photos: Path,
                                                             expected_rows: list[dict], tmp_path: Path) -> None:
    dest = tmp_path / "preds"
    assert main(["predict", str(photos), "--out", str(dest), "--block-size", "7", "--workers", "2", *RAY]) == 1
    rows = tools.dataset_rows(str(dest))
    assert rows == expected_rows  # every column, every row: faces, no face, the crowd's cap, each error
    statuses = collections.Counter(r["status"] for r in rows)
    assert statuses["ok"] >= 10 and statuses["no_face"] >= 1 and statuses["faces_dropped"] == 1
    assert statuses["error"] >= 15  # the hostile files that are not images, the FIFO
    assert {r["file"] for r in rows} == {r["file"] for r in expected_rows}
    parts = sorted(p.name for p in dest.glob("part-*.parquet"))
    assert len(parts) >= 5 and (dest / SETTINGS_FILE).is_file() and not list(dest.glob(".*"))
    # Again: everything is there already, nothing is predicted or written twice.
    assert main(["predict", str(photos), "--out", str(dest), "--block-size", "3", *RAY]) == 0
    assert sorted(p.name for p in dest.glob("part-*.parquet")) == parts
    assert tools.dataset_rows(str(dest)) == expected_rows


def test_face_crops_with_aligned_match_too(local_ray, tools, tmp_path: Path) -> None:
    crops = tmp_path / "crops"
    tools.astronaut_copies(crops, 6, sizes=(40, 90))
    (crops / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    expected = tools.plain_rows([str(crops)], tmp_path / "plain.json", "--aligned")
    dest = tmp_path / "preds"
    assert main(["predict", str(crops), "--aligned", "--out", str(dest), "--block-size", "4", *RAY]) == 1
    assert tools.dataset_rows(str(dest)) == expected


def test_other_settings_on_the_same_dataset_are_refused(local_ray, tools, tmp_path: Path, caplog) -> None:
    crops = tmp_path / "crops"
    tools.astronaut_copies(crops, 2, sizes=(40, 60))
    dest = tmp_path / "preds"
    assert main(["predict", str(crops), "--aligned", "--out", str(dest), *RAY]) == 0
    # Rows of another model or other detection settings must not be mixed in silently.
    assert main(["predict", str(crops), "--out", str(dest), *RAY]) == 2
    assert "other settings (aligned" in caplog.text and "a new --out" in caplog.text


@pytest.mark.parametrize("args, says", [
    (["--out", "preds.csv"], "Parquet dataset"),
    (["--out", "preds", "--annotate", "drawn"], "does not take --annotate"),
    (["--out", "preds", "--runtime", "torch"], "does not take --runtime torch"),
    (["--out", "preds", "--model", "model.pt"], "exported models"),
])
def test_options_the_engine_does_not_take_are_user_errors(args: list[str], says: str, tools, tmp_path: Path,
                                                          caplog, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    tools.astronaut_copies(tmp_path / "in", 1)
    assert main(["predict", "in", "--engine", "ray", *args]) == 2
    assert says in caplog.text
    assert not (tmp_path / "preds").exists()


@pytest.mark.slow
def test_ctrl_c_then_a_kill_then_a_resume_equal_an_uninterrupted_run(tools, photos: Path, expected_rows: list[dict],
                                                                     tmp_path: Path, default_sigint) -> None:
    dest = tmp_path / "preds"
    cmd = ["predict", str(photos), "--out", str(dest), "--block-size", "2", "--workers", "1", *RAY]
    # Ctrl-C once a few parts are in: exit 130, and what is there is whole parts, each input once.
    proc = tools.ray_cli(cmd, preexec_fn=default_sigint)
    try:
        assert tools.wait_for_parts(dest, 2, proc) >= 2, proc.communicate()[0]
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 130, out
        assert "run the same command again to resume" in out
    finally:
        tools.stop_session(proc)
    first = tools.dataset_rows(str(dest))
    done = {r["file"] for r in first}
    # Each input there has exactly its rows (none twice, none missing), and some inputs are not there yet.
    assert first == [r for r in expected_rows if r["file"] in done]
    assert 0 < len(done) < len({r["file"] for r in expected_rows})
    # A kill (no clean-up at all) a few parts later.
    proc = tools.ray_cli(cmd)
    try:
        assert tools.wait_for_parts(dest, len(list(dest.glob("part-*"))) + 2, proc) > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        tools.stop_session(proc)
    # The resume does only what is left, and the dataset is what one uninterrupted run makes.
    before = {p.name for p in dest.glob("part-*.parquet")}
    proc = tools.ray_cli([a for a in cmd if a != "-q"])  # its summary line says what was skipped
    try:
        out = proc.communicate(timeout=600)[0]
    finally:
        tools.stop_session(proc)
    assert proc.returncode in (0, 1), out
    skipped = re.search(r"(\d+) inputs \((\d+) already done\)", out)
    assert skipped and 0 < int(skipped[2]) < int(skipped[1]), out
    assert before < {p.name for p in dest.glob("part-*.parquet")}
    assert tools.dataset_rows(str(dest)) == expected_rows
    assert not list(dest.glob(".*.tmp"))
