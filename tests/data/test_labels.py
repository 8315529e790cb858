"""Your own data: a labels file instead of UTKFace names, partial labels, photos, fine-tuning."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from agegender.cli import main
from agegender.data.labels import parse_age, parse_age_group, parse_gender, read_labels
from agegender.data.records import scan_utkface
from agegender.errors import DataError
from agegender.model.checkpoint import load_checkpoint

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"


@pytest.mark.parametrize(("text", "want"), [("male", 0.0), ("F", 1.0), ("woman", 1.0), ("0", 0.0), ("1.0", 1.0)])
def test_gender_words(text: str, want: float) -> None:
    assert parse_gender(text) == want


def test_bad_values_raise_with_the_reason() -> None:
    assert math.isnan(parse_gender("")) and math.isnan(parse_age(" "))
    with pytest.raises(ValueError, match="unknown gender"):
        parse_gender("other")
    with pytest.raises(ValueError, match="not a number"):
        parse_age("thirty")
    with pytest.raises(ValueError, match="outside"):
        parse_age("130")
    assert parse_age_group("60-100") == (60, 100) and parse_age_group("( 8 , 12 )") == (8, 12)
    with pytest.raises(ValueError, match="not a range"):
        parse_age_group("old")
    with pytest.raises(ValueError, match="not a range"):
        parse_age_group("40-30")


def _own_folder(face_dir: Path, dest: Path) -> list[dict]:
    """face_dir's images under plain names, with labels of every kind, some partial, some broken."""
    dest.mkdir()
    rows = []
    for i, r in enumerate(scan_utkface(face_dir).records):
        name = f"img_{i:03d}.jpg"
        shutil.copy(face_dir / r.file, dest / name)
        row = {"file": name, "age": str(r.age), "gender": ["male", "female"][int(r.gender)], "age_group": "",
               "camera": "x"}  # an unknown column, ignored
        if i % 4 == 1:
            row["age"] = ""  # gender only
        if i % 4 == 2:
            row["gender"] = ""  # age only
        if i % 4 == 3:
            lo = int(r.age) // 10 * 10
            row |= {"age": "", "age_group": f"{lo}-{lo + 9}"}  # group and gender
        rows.append(row)
    for extra in ("extra1.jpg", "extra2.jpg"):
        shutil.copy(dest / rows[0]["file"], dest / extra)
    rows += [{"file": "missing.jpg", "age": "30", "gender": "male"},
             {"file": "extra1.jpg", "age": "abc", "gender": "male"},
             {"file": "extra2.jpg", "age": "30", "gender": "unknown"}]
    return rows


def test_read_labels_counts_every_reason(face_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = _own_folder(face_dir, tmp_path / "own")
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    result = read_labels(tmp_path / "labels.csv", tmp_path / "own")
    assert len(result.records) == len(rows) - 3
    assert sorted(why for _, why in result.skipped)[0].startswith("age 'abc'")
    assert "1 file not found" in caplog.text and "1 unknown gender" in caplog.text
    partial = [r for r in result.records if math.isnan(r.age) and r.age_group is None]
    assert partial and all(not math.isnan(r.gender) for r in partial)
    pd.DataFrame({"name": ["a.jpg"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="needs a 'file' column"):
        read_labels(tmp_path / "bad.csv", tmp_path / "own")
    pd.DataFrame({"file": ["missing.jpg"], "age": [3]}).to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(DataError, match="no usable row"):
        read_labels(tmp_path / "none.csv", tmp_path / "own")


def test_train_and_evaluate_with_partial_labels(face_dir: Path, tmp_path: Path, tiny_train_argv) -> None:
    rows = _own_folder(face_dir, tmp_path / "own")
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    run = tmp_path / "run"
    rc = main(tiny_train_argv(tmp_path / "own", run, "--labels", str(tmp_path / "labels.csv")))
    assert rc == 0
    assert math.isfinite(pd.read_csv(run / "metrics.csv")["train_loss"].iloc[0])  # masked losses stay finite
    report = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(run / "best.pt"), "--data", str(tmp_path / "own"), "--labels",
                 str(tmp_path / "labels.csv"), "--out", str(report), "--workers", "1", "-q"]) == 0
    rep = json.loads(report.read_text())
    n_age = sum(1 for r in rows[:-3] if r["age"])
    n_group = sum(1 for r in rows[:-3] if r["age_group"])
    assert rep["n"] == len(rows) - 3 and rep["meta"]["skipped_labels"] == 3
    assert rep["n_age_group"] == n_group and 0 <= rep["age_group_accuracy"] <= rep["age_group_one_off"] <= 1
    assert "age_mae" in rep and "gender_accuracy" in rep
    preds = pd.read_csv(tmp_path / "r_preds.csv", keep_default_na=False)
    assert {"file", "age_true", "gender_true", "age_pred", "p_female", "age_group_true"} <= set(preds.columns)
    assert (preds["age_true"] != "").sum() == n_age


def test_fine_tune_freezes_the_backbone_first(trained_run: Path, face_dir: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    run = tmp_path / "ft"
    start = load_checkpoint(trained_run / "best.pt")
    rc = main(["train", "--data", str(face_dir), "--out", str(run), "--init", str(trained_run / "best.pt"),
               "--freeze-backbone-epochs", "1", "--epochs", "1", "--batch-size", "8", "--num-workers", "0",
               "--lr", "0.01", "-q"])
    assert rc == 0
    after = load_checkpoint(run / "last.pt")
    assert after["model_config"] == start["model_config"]  # the network it started from, not the defaults
    backbone = [k for k in start["model_state"] if k.startswith("backbone.") and "weight" in k]
    heads = [k for k in start["model_state"] if k.startswith("age_head.") and "weight" in k]
    assert all(torch.equal(start["model_state"][k], after["model_state"][k]) for k in backbone)
    assert any(not torch.equal(start["model_state"][k], after["model_state"][k]) for k in heads)
    # the second epoch trains everything
    assert main(["train", "--data", str(face_dir), "--out", str(run), "--resume", "--epochs", "2",
                 "--num-workers", "0", "-q"]) == 0
    later = load_checkpoint(run / "last.pt")
    assert any(not torch.equal(start["model_state"][k], later["model_state"][k]) for k in backbone)


def test_evaluate_photos_detects_and_counts_no_face_and_crowds(trained_run: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(EXAMPLE, photos / "one.png")
    Image.new("RGB", (300, 200), (90, 90, 90)).save(photos / "none.png")
    single = Image.open(EXAMPLE).convert("RGB")
    pair = Image.new("RGB", (1024, 512))
    pair.paste(single, (0, 0))
    pair.paste(single.resize((400, 400)), (560, 50))
    pair.save(photos / "two.jpg")
    pd.DataFrame({"file": ["one.png", "none.png", "two.jpg"], "age": [38, 40, 38],
                  "gender": ["female"] * 3}).to_csv(tmp_path / "labels.csv", index=False)
    common = ["evaluate", "--model", str(trained_run / "best.pt"), "--data", str(photos), "--labels",
              str(tmp_path / "labels.csv"), "--detect", "-q"]
    assert main([*common, "--out", str(tmp_path / "single.json")]) == 1  # finished, two photos left out
    rep = json.loads((tmp_path / "single.json").read_text())
    assert rep["n"] == 1 and rep["meta"]["skipped_unreadable_or_no_face"] == 2
    assert main([*common, "--face", "largest", "--out", str(tmp_path / "largest.json")]) == 1  # none.png
    assert json.loads((tmp_path / "largest.json").read_text())["n"] == 2
