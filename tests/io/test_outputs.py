"""Output safety: paths checked before the work, names written as given, cells that cannot start a formula,
unique derived names."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from agegender.errors import OutputError
from agegender.evaluation.evaluate import csv_bytes, write_csv
from agegender.io.outputs import NAME_MAX, check_folder, check_writable, unique_name


def test_check_writable_refuses_what_could_not_be_written_later(tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError, match=r"--out: cannot write into .*file\.txt: it is a file, not a folder"):
        check_writable(a_file / "preds.csv", "--out")
    with pytest.raises(OutputError, match="is a folder; give a file name"):
        check_writable(tmp_path, "--out")
    with pytest.raises(OutputError, match="longer than 255 bytes"):
        check_writable(tmp_path / ("x" * 260 + ".csv"), "--out")
    with pytest.raises(OutputError, match=r"--annotate: cannot write into .*annotated: Not a directory"):
        check_folder(a_file / "annotated", "--annotate")
    made = check_writable(tmp_path / "new" / "deeper" / "p.csv", "--out")
    assert made.parent.is_dir() and list(made.parent.iterdir()) == []  # the probe file is gone


def test_csv_cells_never_start_a_formula_and_names_keep_their_bytes(tmp_path: Path) -> None:
    raw_name = b"caf\xe9-\xff.jpg"  # Latin-1 bytes: not UTF-8, held by Python as surrogate escapes
    name = os.fsdecode(raw_name)
    df = pd.DataFrame({"file": ["=HYPERLINK(\"http://x\")", "+1", "@SUM(A1)", "-2", name, "plain.jpg"],
                       "age": [1.0, -2.5, 3.0, 4.0, 5.0, 6.0]})
    path = tmp_path / "p.csv"
    write_csv(df, path)
    data = path.read_bytes()
    assert raw_name in data  # byte for byte, not replaced or escaped
    back = pd.read_csv(path, encoding="utf-8", encoding_errors="surrogateescape")
    assert list(back["file"]) == ["'=HYPERLINK(\"http://x\")", "'+1", "'@SUM(A1)", "'-2", name, "plain.jpg"]
    assert list(back["age"]) == [1.0, -2.5, 3.0, 4.0, 5.0, 6.0]  # numbers are numbers, signs and all
    assert csv_bytes(df) == data


def test_unique_names_fit_and_differ() -> None:
    taken: set[str] = set()
    stems = ["photo", "photo", "Photo", "x" * 250, "x" * 250, os.fsdecode(b"\xff" * 300)]
    names = [unique_name(stem, "_annotated.jpg", taken) for stem in stems]
    assert len({n.casefold() for n in names}) == len(names)
    assert names[:3] == ["photo_annotated.jpg", "photo_annotated_2.jpg", "Photo_annotated_3.jpg"]
    assert all(len(os.fsencode(n)) <= NAME_MAX for n in names)
    assert names[4].endswith("_annotated_2.jpg")
