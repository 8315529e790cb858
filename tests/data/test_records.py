"""UTKFace names, folder scanning, the stratified split, split files, and the dataset + collate."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from agegender.data.records import Record, age_bucket, parse_utkface_name, scan_utkface
from agegender.data.sources import parse_split, read_split, stratified_split, write_split
from agegender.errors import DataError
from agegender.model.config import PresetConfig

REAL_DATA_ENV = "AGEGENDER_TEST_DATA"

# The malformed names shipped in the public UTKFace release, with the word their reason must contain.
REAL_MALFORMED = {
    "39_1_20170116174525125.jpg.chip.jpg": "missing field",
    "61_1_20170109142408075.jpg.chip.jpg": "missing field",
    "61_1_20170109150557335.jpg.chip.jpg": "missing field",
    "24_0_1_20170116220224657 .jpg.chip.jpg": "whitespace",
    "55_0_0_20170116232725357jpg.chip.jpg": "missing dot",
}


def _jpeg(path: Path, colour: tuple[int, int, int] = (120, 80, 60), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, format="JPEG")
    return path


def _name(age: int, gender: int, race: int, i: int) -> str:
    return f"{age}_{gender}_{race}_2017011617{i:07d}.jpg.chip.jpg"


def _records(spec: dict[tuple[int, int], int], start: int = 0) -> list[Record]:
    """``{(age, gender): count}`` -> records with unique UTKFace-style names."""
    out, i = [], start
    for (age, gender), count in spec.items():
        for _ in range(count):
            out.append(Record(_name(age, gender, i % 5, i), age, gender, i % 5))
            i += 1
    return out


# --------------------------------------------------------------------------- parse_utkface_name


def test_parse_chip_name():
    assert parse_utkface_name("26_1_2_20170116174525125.jpg.chip.jpg") == (26, 1, 2)


def test_parse_plain_jpg_name():
    assert parse_utkface_name("100_0_4_20170112213500903.jpg") == (100, 0, 4)


def test_parse_extremes_are_valid():
    assert parse_utkface_name("0_0_0_1.jpg") == (0, 0, 0)
    assert parse_utkface_name("120_1_4_1.jpg.chip.jpg") == (120, 1, 4)


@pytest.mark.parametrize(
    ("name", "defect"),
    [
        ("39_1_20170116174525125.jpg.chip.jpg", "missing field"),
        ("24_0_1_20170116220224657 .jpg.chip.jpg", "whitespace"),
        ("55_0_0_20170116232725357jpg.chip.jpg", "missing dot"),
        ("121_0_0_20170116174525125.jpg.chip.jpg", "age 121"),
        ("30_2_0_20170116174525125.jpg.chip.jpg", "gender 2"),
        ("30_1_5_20170116174525125.jpg.chip.jpg", "race 5"),
    ],
)
def test_parse_malformed_names_the_defect(name, defect):
    with pytest.raises(ValueError, match=defect):
        parse_utkface_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "ab_1_2_20170116174525125.jpg.chip.jpg",  # non-numeric age
        "26_x_2_20170116174525125.jpg.chip.jpg",  # non-numeric gender
        "26_1_2_2017011617452512a.jpg.chip.jpg",  # non-numeric datetime
    ],
)
def test_parse_non_numeric_field_raises(name):
    with pytest.raises(ValueError, match=r"^non-numeric (age|gender|datetime) field '"):
        parse_utkface_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "ab_1_2_20170116174525125.jpg.chip.jpg",
        "26_x_2_20170116174525125.jpg.chip.jpg",
        "26_1_2_2017011617452512a.jpg.chip.jpg",
    ],
)
def test_parse_non_numeric_field_message_names_the_defect(name):
    with pytest.raises(ValueError, match="non-numeric|not a number|numeric"):
        parse_utkface_name(name)


# --------------------------------------------------------------------------- age_bucket


@pytest.mark.parametrize(
    ("age", "bucket"),
    [(0, "0-2"), (2, "0-2"), (3, "3-9"), (9, "3-9"), (10, "10-19"), (69, "60-69"), (70, "70+"), (120, "70+")],
)
def test_age_bucket_boundaries(age, bucket):
    assert age_bucket(age) == bucket


def test_age_bucket_negative_raises():
    with pytest.raises(ValueError, match="age -1 is outside 0-120"):
        age_bucket(-1)


# --------------------------------------------------------------------------- scan_utkface


def test_scan_flat_layout(tmp_path):
    names = [_name(26, 1, 2, 1), _name(3, 0, 0, 2), _name(80, 1, 4, 3)]
    for n in names:
        _jpeg(tmp_path / n)
    result = scan_utkface(tmp_path)
    assert result.skipped == []
    assert sorted(r.file for r in result.records) == sorted(names)
    by_file = {r.file: r for r in result.records}
    assert by_file[names[0]] == Record(names[0], 26, 1, 2)
    assert by_file[names[2]] == Record(names[2], 80, 1, 4)


def test_scan_kaggle_nested_layout(tmp_path):
    names = [_name(26, 1, 2, 1), _name(45, 0, 3, 2)]
    for n in names:
        _jpeg(tmp_path / "utkcropped" / "utkcropped" / n)
    result = scan_utkface(tmp_path)
    assert sorted(r.file for r in result.records) == sorted(f"utkcropped/utkcropped/{n}" for n in names)
    assert result.skipped == []


def test_scan_duplicate_name_kept_once(tmp_path):
    dup = _name(30, 0, 1, 7)
    _jpeg(tmp_path / "UTKFace" / dup)
    _jpeg(tmp_path / "utkcropped" / "utkcropped" / dup)
    _jpeg(tmp_path / "UTKFace" / _name(31, 1, 1, 8))
    result = scan_utkface(tmp_path)
    kept = [r.file for r in result.records if Path(r.file).name == dup]
    assert len(kept) == 1
    assert len(result.records) == 2
    assert len(result.skipped) == 1
    skipped_file, reason = result.skipped[0]
    assert Path(skipped_file).name == dup
    assert skipped_file != kept[0]
    assert "duplicate" in reason


def test_scan_malformed_names_skipped_and_logged(tmp_path, caplog):
    good = [_name(26, 1, 2, i) for i in range(3)]
    bad = {
        "39_1_20170116174525125.jpg.chip.jpg": "missing field",
        "24_0_1_20170116220224657 .jpg.chip.jpg": "whitespace",
        "55_0_0_20170116232725357jpg.chip.jpg": "missing dot",
    }
    for n in [*good, *bad]:
        _jpeg(tmp_path / n)
    with caplog.at_level(logging.INFO, logger="agegender.data.records"):
        result = scan_utkface(tmp_path)
    assert sorted(r.file for r in result.records) == sorted(good)
    reasons = dict(result.skipped)
    assert set(reasons) == set(bad)
    for name, word in bad.items():
        assert word in reasons[name]
    ours = [rec for rec in caplog.records if rec.name == "agegender.data.records"]
    assert len(ours) == 1
    assert ours[0].levelno == logging.WARNING
    line = ours[0].getMessage()
    assert "skipped 3" in line
    for name in bad:
        assert name in line


def test_scan_summary_lists_first_five_and_count(tmp_path, caplog):
    _jpeg(tmp_path / _name(26, 1, 2, 0))
    bad = [f"{i}_1_2017011617452512{i}.jpg.chip.jpg" for i in range(7)]
    for n in bad:
        _jpeg(tmp_path / n)
    with caplog.at_level(logging.INFO, logger="agegender.data.records"):
        result = scan_utkface(tmp_path)
    assert len(result.skipped) == 7
    line = next(rec.getMessage() for rec in caplog.records if rec.name == "agegender.data.records")
    assert "skipped 7" in line
    assert "and 2 more" in line
    first = sorted(bad)[:5]
    for n in first:
        assert n in line


def test_scan_ignores_non_image_files(tmp_path):
    _jpeg(tmp_path / _name(26, 1, 2, 0))
    (tmp_path / "README.txt").write_text("hello")
    (tmp_path / "labels.csv").write_text("a,b\n")
    result = scan_utkface(tmp_path)
    assert [r.file for r in result.records] == [_name(26, 1, 2, 0)]
    assert result.skipped == []


def test_scan_only_malformed_raises(tmp_path):
    _jpeg(tmp_path / "39_1_20170116174525125.jpg.chip.jpg")
    _jpeg(tmp_path / "holiday.jpg")
    with pytest.raises(DataError, match="no labelled UTKFace image"):
        scan_utkface(tmp_path)


def test_scan_empty_folder_raises(tmp_path):
    with pytest.raises(DataError, match=r"no labelled UTKFace image found under .* \(0 unusable files\)"):
        scan_utkface(tmp_path)


def test_scan_missing_folder_raises(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_utkface(tmp_path / "nope")


@pytest.mark.real_data
def test_scan_real_utkface_reports_malformed_names(caplog):
    real = os.environ.get(REAL_DATA_ENV)
    if not real:
        pytest.skip("AGEGENDER_TEST_DATA not set (real UTKFace folder)")
    root = Path(real)
    present = {p.name for p in root.rglob("*") if p.name in REAL_MALFORMED}
    assert present, f"none of the known malformed UTKFace names is under {root}"
    with caplog.at_level(logging.INFO, logger="agegender.data.records"):
        result = scan_utkface(root)
    assert len(result.records) > 1000
    reasons = {Path(f).name: why for f, why in result.skipped}
    for name in present:
        assert name in reasons, f"{name!r} was not reported as skipped"
        assert REAL_MALFORMED[name] in reasons[name]
    assert not {r.file for r in result.records} & set(REAL_MALFORMED)
    line = next(rec.getMessage() for rec in caplog.records if rec.name == "agegender.data.records")
    assert f"skipped {len(result.skipped)}" in line


# --------------------------------------------------------------------------- stratified_split

STRATA = {(1, 0): 12, (1, 1): 10, (5, 0): 23, (25, 0): 50, (25, 1): 41, (45, 1): 17, (65, 0): 3, (65, 1): 11}


def test_split_deterministic_per_seed():
    recs = _records(STRATA)
    assert stratified_split(recs, seed=0) == stratified_split(recs, seed=0)
    assert stratified_split(recs, seed=0) != stratified_split(recs, seed=1)


def test_split_independent_of_record_order():
    recs = _records(STRATA)
    assert stratified_split(recs, seed=3) == stratified_split(list(reversed(recs)), seed=3)


def test_split_disjoint_and_covering():
    recs = _records(STRATA)
    split = stratified_split(recs, (0.8, 0.1, 0.1), seed=0)
    assert set(split) == {r.file for r in recs}
    assert set(split.values()) == {"train", "val", "test"}
    # a dict cannot hold a file twice; check the subsets partition the files
    subsets = {s: {f for f, v in split.items() if v == s} for s in ("train", "val", "test")}
    assert sum(len(v) for v in subsets.values()) == len(recs)
    assert not subsets["train"] & subsets["val"]
    assert not subsets["train"] & subsets["test"]
    assert not subsets["val"] & subsets["test"]


def test_split_train_share_per_stratum():
    recs = _records(STRATA)
    split = stratified_split(recs, (0.8, 0.1, 0.1), seed=0)
    for (age, gender), n in STRATA.items():
        members = [r.file for r in recs if r.age == age and r.gender == gender]
        n_train = sum(split[f] == "train" for f in members)
        if n >= 10:
            assert abs(n_train - 0.8 * n) <= 1, (age, gender, n, n_train)
        assert n_train >= 1


def test_split_reference_80_20():
    assert parse_split("0.8,0,0.2") == (0.8, 0.0, 0.2)
    recs = _records(STRATA)
    split = stratified_split(recs, parse_split("0.8,0,0.2"), seed=0)
    counts = Counter(split.values())
    assert "val" not in counts
    assert abs(counts["test"] - 0.2 * len(recs)) <= len(STRATA)
    for (age, gender), n in STRATA.items():
        members = [r.file for r in recs if r.age == age and r.gender == gender]
        n_test = sum(split[f] == "test" for f in members)
        if n >= 10:
            assert abs(n_test - 0.2 * n) <= 1


def test_split_stable_when_new_stratum_added():
    base = _records({(25, 0): 30, (25, 1): 30, (40, 0): 20, (8, 1): 15})
    assert not any(r.age >= 70 and r.gender == 1 for r in base)
    old = stratified_split(base, seed=5)
    extra = _records({(100, 1): 12, (105, 1): 4}, start=10_000)
    new = stratified_split([*extra, *base], seed=5)
    assert {f: new[f] for f in old} == old
    assert set(new) == set(old) | {r.file for r in extra}


def test_split_one_added_file_moves_at_most_one_per_boundary():
    base = _records({(25, 0): 40})
    old = stratified_split(base, (0.7, 0.2, 0.1), seed=0)
    for k in range(20):
        extra = Record(_name(25, 0, 0, 50_000 + k), 25, 0, 0)
        new = stratified_split([*base, extra], (0.7, 0.2, 0.1), seed=0)
        moved = [f for f in old if new[f] != old[f]]
        assert len(moved) <= 2


def test_split_stable_when_non_image_files_added(tmp_path):
    for i in range(12):
        _jpeg(tmp_path / _name(20 + i % 3, i % 2, i % 5, i))
    first = scan_utkface(tmp_path)
    split_before = stratified_split(first.records, seed=0)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "Thumbs.db").write_bytes(b"\0" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "labels.csv").write_text("file,age\n")
    second = scan_utkface(tmp_path)
    assert second.records == first.records
    assert stratified_split(second.records, seed=0) == split_before


@pytest.mark.parametrize(
    "text", ["0.8,0.2", "0.8,0.1,0.1,0", "0.5,0.5,0.5", "0.9,-0.1,0.2", "0,0.5,0.5", "a,b,c", "", "0.8;0.1;0.1"]
)
def test_parse_split_invalid(text):
    # numbers that break the rule are named with it; text that is not numbers fails in float()
    rule = "split must be three fractions train,val,test >= 0 summing to 1, got '"
    numeric = all(part.replace(".", "").lstrip("-").isdigit() for part in text.split(","))
    with pytest.raises(ValueError, match=rule if numeric else "could not convert string to float"):
        parse_split(text)


def test_parse_split_sequence():
    assert parse_split([0.6, 0.2, 0.2]) == (0.6, 0.2, 0.2)


# --------------------------------------------------------------------------- split files


def test_split_file_round_trip(tmp_path):
    split = {"b.jpg": "train", "a/x.jpg.chip.jpg": "val", "NA": "test", "c d.jpg": "train"}
    path = tmp_path / "split.csv"
    write_split(path, split)
    assert read_split(path) == split


def test_read_split_bad_column(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("name,subset\na.jpg,train\n")
    with pytest.raises(DataError, match="file,subset"):
        read_split(path)


def test_read_split_unknown_subset(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("file,subset\na.jpg,train\nb.jpg,training\n")
    with pytest.raises(DataError, match="training"):
        read_split(path)


def test_read_split_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"cannot read split file .*nope\.csv: .*No such file"):
        read_split(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- FaceDataset + collate


def _dataset(tmp_path: Path, size: int = 16) -> tuple[object, list[Record]]:
    pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    from agegender.training.datasets import FaceDataset
    from agegender.training.transforms import eval_preset
    recs = []
    for i, (age, gender) in enumerate([(26, 1), (3, 0), (70, 0)]):
        name = _name(age, gender, 0, i)
        _jpeg(tmp_path / name, colour=(30 * i, 100, 200), size=20)
        recs.append(Record(name, age, gender, 0))
    corrupt = _name(40, 1, 3, 99)
    (tmp_path / corrupt).write_bytes(b"not a jpeg")
    recs.insert(1, Record(corrupt, 40, 1, 3))
    return FaceDataset(tmp_path, recs, eval_preset(PresetConfig(image_size=size, crop_pct=0.9))), recs


def test_dataset_item(tmp_path):
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    ds, recs = _dataset(tmp_path)
    assert len(ds) == 4
    img, target, index = ds[0]
    assert img.shape == (3, 16, 16)
    assert img.dtype == torch.float32
    assert target == {"age": 26.0, "gender": 1.0}
    assert index == 0


def test_dataset_corrupt_item_is_none_and_logged(tmp_path, caplog):
    ds, recs = _dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="agegender.training.datasets"):
        assert ds[1] is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert recs[1].file in warnings[0].getMessage()


def test_collate_drops_unreadable(tmp_path):
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    from agegender.training.datasets import collate
    ds, recs = _dataset(tmp_path)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch is not None
    images, targets, index = batch
    assert images.shape == (3, 3, 16, 16)
    assert set(targets) == {"age", "gender"}
    assert targets["age"].tolist() == [26.0, 3.0, 70.0]
    assert targets["gender"].tolist() == [1.0, 0.0, 0.0]
    assert targets["age"].dtype == torch.float32
    assert index.tolist() == [0, 2, 3]
    assert index.dtype == torch.long


def test_collate_with_dataloader(tmp_path):
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    from agegender.training.datasets import collate
    ds, _ = _dataset(tmp_path, size=24)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False, num_workers=0, collate_fn=collate)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [1, 2]
    assert batches[0][0].shape == (1, 3, 24, 24)


def test_collate_all_none():
    pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    from agegender.training.datasets import collate
    assert collate([None, None]) is None
    assert collate([]) is None
