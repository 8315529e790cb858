"""The Ray engine's inputs and output dataset, without Ray: what sources name, part names, the settings check,
committed inputs, typed parts of error rows alone, names that are not UTF-8, leftovers of a killed write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

from agegender.cluster.dataset import SETTINGS_FILE, Dest, part_name, rows_table, stored_name
from agegender.cluster.storage import Storage, list_inputs, location
from agegender.errors import OutputError
from agegender.inference.batch import PHOTO_COLUMNS, problem_row


def test_sources_name_folders_lists_and_objects_sorted_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/2.jpg", "a/deep/1.PNG", "a/notes.txt", "b.webp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a" / "list.txt").write_text("# photos\n\n2.jpg\n  s3://bucket/k/3.jpg  \n/abs/4.jpg\n")
    inputs = list_inputs(["a", "a/list.txt", "b.webp", "nowhere"], Storage())
    assert inputs.names == sorted({"a/2.jpg", "a/deep/1.PNG", "s3://bucket/k/3.jpg", "/abs/4.jpg", "b.webp"})
    assert inputs.missing == [("nowhere", "no such file or folder")]
    assert location("a/2.jpg") == str(tmp_path / "a" / "2.jpg") and location("s3://b/k") == "s3://b/k"


def test_part_names_follow_their_inputs() -> None:
    name = part_name(["a.jpg", "b.jpg"])
    assert name == part_name(["a.jpg", "b.jpg"]) and name.startswith("part-") and name.endswith(".parquet")
    assert len({name, part_name(["b.jpg", "a.jpg"]), part_name(["a.jpg"]), part_name(["a.jpg", "c.jpg"])}) == 4


def test_settings_are_kept_and_other_settings_refused(tmp_path: Path) -> None:
    dest = Dest(str(tmp_path / "out"), Storage())
    dest.prepare({"model": "m sha256:1", "aligned": False, "max_faces": 50})
    saved = json.loads((tmp_path / "out" / SETTINGS_FILE).read_text())
    assert saved["columns"] == PHOTO_COLUMNS and saved["max_faces"] == 50
    dest.prepare({"model": "m sha256:1", "aligned": False, "max_faces": 50})  # the same: resumed
    with pytest.raises(OutputError, match=r"other settings \(max_faces, model: .*'m sha256:1' there"):
        dest.prepare({"model": "m sha256:2", "aligned": False, "max_faces": 10})


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError):
        Dest(str(tmp_path / "file"), Storage()).prepare({})


def test_committed_inputs_are_the_files_of_whole_parts(tmp_path: Path) -> None:
    dest = Dest(str(tmp_path), Storage())
    assert dest.committed() == set()
    face = {"file": "a.jpg", "face": 0, "box_x1": 1.5, "box_y1": 2.0, "box_x2": 3.0, "box_y2": 4.0, "det_score": 0.99,
            "landmarks": [[1.0, 2.0]] * 5, "age": 30.5, "age_low": 25.0, "age_high": 36.0, "age_sigma": 3.2,
            "gender": "male", "p_female": 0.1, "status": "ok"}
    dest.write_part(part_name(["a.jpg"]), [face])
    dest.write_part(part_name(["bad.jpg"]), [problem_row("bad.jpg", "bad.jpg: not an image file")])
    # A write killed before its rename leaves a hidden temporary file: not a part, removed by the next run.
    (tmp_path / ".part-0123.parquet.x1y2.tmp").write_bytes(b"torn")
    assert dest.committed() == {"a.jpg", "bad.jpg"}
    assert dest.remove_stale() == 1 and not list(tmp_path.glob(".*"))
    import pyarrow.dataset as ds

    table = ds.dataset(str(tmp_path), format="parquet").to_table()  # error-only part typed as the face part
    assert table.column_names == PHOTO_COLUMNS and table.num_rows == 2


def test_names_that_are_not_utf8_are_stored_and_matched() -> None:
    odd = b"caf\xe9.jpg".decode("utf-8", "surrogateescape")
    table = rows_table([problem_row(odd, "why")])
    assert table.column("file").to_pylist() == [stored_name(odd)] == ["caf\\xe9.jpg"]
