"""benchmarks/peers.py's own logic, without node, face-api.js or any data set: the side-by-side table on
hand-made predictions (numbers worked out by hand) and which split a labelled folder gets from a checkpoint."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

from agegender.data.records import Record
from agegender.data.sources import folder_split, same_folder, scan, stratified_split

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("peers_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its own module up while being defined
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


RECORDS = [Record("a.jpg", 1.0, 1.0), Record("b.jpg", 25.0, 0.0), Record("c.jpg", 28.0, 1.0),
           Record("d.jpg", 75.0, 0.0)]
# Ours found no face in d, face-api none in c: only a and b are scored side by side.
OURS = pd.DataFrame({"file": ["a.jpg", "b.jpg", "c.jpg"], "age_pred": [3.0, 20.0, 30.0], "p_female": [0.8, 0.3, 0.4]})
PEER = pd.DataFrame({"file": ["a.jpg", "b.jpg", "d.jpg"], "age_pred": [0.0, 27.0, 60.0],
                     "p_female": [0.6, 0.7, 0.1], "det_score": [0.9, 0.8, 0.7]})


def test_bucket_table_scores_only_what_both_found(peers) -> None:
    frame = peers.side_by_side(RECORDS, OURS, PEER)
    assert list(frame.columns) == ["file", "age_true", "gender_true", "ours_age", "ours_p_female", "faceapi_age",
                                   "faceapi_p_female", "faceapi_det_score"]
    table = peers.bucket_table(frame).set_index("age")
    assert list(table.index) == ["0-2", "20-29", "70+", "0-9", "all"]  # no group of 20: no balanced row
    assert table.loc["0-2"].to_dict() == {
        "photos": 1, "n": 1, "ours_found": 1, "ours_mae": 2.0, "ours_bias": 2.0, "ours_gender_acc": 1.0,
        "faceapi_found": 1, "faceapi_mae": 1.0, "faceapi_bias": -1.0, "faceapi_gender_acc": 1.0}
    # 20-29: only b is scored (face-api missed c); face-api calls b (male) female at 0.7.
    row = table.loc["20-29"]
    assert (row["photos"], row["n"], row["ours_found"], row["faceapi_found"]) == (2, 1, 2, 1)
    assert (row["ours_mae"], row["ours_bias"], row["faceapi_mae"], row["faceapi_bias"]) == (5.0, -5.0, 2.0, 2.0)
    assert (row["ours_gender_acc"], row["faceapi_gender_acc"]) == (1.0, 0.0)
    assert table.loc["70+", "n"] == 0 and pd.isna(table.loc["70+", "ours_mae"])
    row = table.loc["all"]
    assert (row["photos"], row["n"], row["ours_found"], row["faceapi_found"]) == (4, 2, 3, 3)
    assert (row["ours_mae"], row["ours_bias"], row["faceapi_mae"], row["faceapi_bias"]) == (3.5, -1.5, 1.5, 0.5)
    assert (row["ours_gender_acc"], row["faceapi_gender_acc"]) == (1.0, 0.5)

    assert table.loc["0-9"].to_dict() == table.loc["0-2"].to_dict()  # the only child
    # Every group with a scored image counted the same: ours (2 + 5) / 2, its largest bias the -5 of 20-29;
    # face-api.js (1 + 2) / 2, its largest +2 (20-29) over -1 (0-2).
    balanced = peers.bucket_table(frame, min_group=1).set_index("age").loc["balanced"]
    assert (balanced["ours_mae"], balanced["ours_bias"], balanced["faceapi_mae"], balanced["faceapi_bias"]) == (
        3.5, -5.0, 1.5, 2.0)

    lines = peers.markdown(peers.bucket_table(frame), detect=True)
    assert lines[0] == ("| age | n | agegender age MAE | agegender bias | face-api.js age MAE | face-api.js bias | "
                        "agegender gender acc | face-api.js gender acc | faces found (agegender / face-api.js, "
                        "of photos) |")
    assert lines[-3] == "| 70+ | 0 | - | - | - | - | - | - | 0 / 1 of 1 |"
    assert lines[-1] == "| all | 2 | 3.50 | -1.50 | 1.50 | +0.50 | 100.0% | 50.0% | 3 / 3 of 4 |"
    # Alone: ours on a, b, c (errors +2, -5, +2; c called male); face-api on a, b, d (-1, +2, -15; b wrong).
    assert peers.alone_rows(frame) == ["| agegender alone | 3 | 3.00 | -0.33 | 66.7% |",
                                       "| face-api.js alone | 3 | 6.00 | -4.67 | 66.7% |"]


def test_bucket_table_without_the_peer(peers) -> None:
    table = peers.bucket_table(peers.side_by_side(RECORDS, OURS, None)).set_index("age")
    assert "faceapi_mae" not in table
    assert table.loc["all", "n"] == 3 and table.loc["all", "ours_mae"] == 3.0
    assert peers.markdown(table.reset_index(), detect=False)[-1] == "| all | 3 | 3.00 | -0.33 | 66.7% |"


@pytest.fixture
def aaf(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "aaf" / "images"
    images.mkdir(parents=True)
    rows = []
    for i in range(40):
        (images / f"{i:05d}.jpg").write_bytes(b"x")  # scanning a labels file only checks the files exist
        rows.append((f"{i:05d}.jpg", 2 + (i * 7) % 70, "female" if i % 2 else "male"))
    labels = tmp_path / "aaf" / "labels.csv"
    pd.DataFrame(rows, columns=["file", "age", "gender"]).to_csv(labels, index=False)
    return images, labels


def test_a_folder_the_model_never_saw_gets_its_own_split(peers, aaf) -> None:
    images, labels = aaf
    ckpt = {"training": {"config": {"data": "../shared/datasets/utkface", "labels": "", "split": "0.6,0.2,0.2",
                                    "seed": 5, "limit": 0}}}
    records, split, how = folder_split(ckpt, images, str(labels))
    assert len(records) == 40
    assert split == stratified_split(scan(images, str(labels)).records, (0.8, 0.1, 0.1), 0)
    assert split != stratified_split(records, (0.6, 0.2, 0.2), 5)
    assert "own split 0.8,0.1,0.1, seed 0" in how


def test_a_training_source_naming_the_folder_gives_its_split(peers, aaf, tmp_path: Path) -> None:
    images, labels = aaf
    # Recorded from another working directory: the same folder by its last two path components.
    sources = [{"data": "../shared/datasets/utkface", "labels": "", "detect": False, "face": "single"},
               {"data": "../shared/datasets/aaf/images", "labels": "../shared/datasets/aaf/labels.csv",
                "detect": True, "face": "largest"}]
    ckpt = {"training": {"config": {"data": "", "sources": sources, "split": "0.6,0.2,0.2", "seed": 5, "limit": 0}}}
    records, split, how = folder_split(ckpt, images, str(labels))
    assert split == stratified_split(records, (0.6, 0.2, 0.2), 5)
    assert "../shared/datasets/aaf/images: 0.6,0.2,0.2, seed 5" in how
    # A single-source run trained on the folder itself (its `data`) counts too.
    ckpt = {"training": {"config": {"data": str(images), "labels": str(labels), "split": "0.7,0.15,0.15",
                                    "seed": 2, "limit": 0}}}
    assert folder_split(ckpt, images, str(labels))[1] == stratified_split(records, (0.7, 0.15, 0.15), 2)
    assert same_folder(images, tmp_path / "x" / "aaf" / "images")
    assert not same_folder(images, tmp_path / "aaf")


def test_link_folder_flattens_and_maps_back(peers, tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(b"a")
    (root / "b.jpg").write_bytes(b"b")
    folder = tmp_path / "links"
    folder.mkdir()
    names = peers.link_folder(root, [Record("sub/a.jpg", 1.0, 0.0), Record("b.jpg", 2.0, 1.0)], folder)
    assert names == {"sub__a.jpg": "sub/a.jpg", "b.jpg": "b.jpg"}
    assert (folder / "sub__a.jpg").read_bytes() == b"a"
