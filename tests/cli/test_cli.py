"""End to end through the command line: train, resume, evaluate, predict, errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agegender.cli import main
from agegender.data.records import scan_utkface
from agegender.data.sources import read_split
from agegender.inference.predictor import Predictor
from agegender.inference.results import Prediction

PNG_MAGIC = b"\x89PNG"


def test_train_writes_the_run_folder(trained_run: Path, face_dir: Path) -> None:
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.csv", "split.csv", "curves.png"):
        assert (trained_run / name).is_file(), name
    import yaml  # the training extra's; trained_run needs it anyway

    cfg = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert cfg["image_size"] == 32 and cfg["backbone"] == "resnet18" and cfg["age_loss"] == "mse"
    metrics = pd.read_csv(trained_run / "metrics.csv")
    assert list(metrics["epoch"]) == [1]
    assert {"train_loss", "val_age_mae", "val_gender_accuracy", "val_gender_mae"} <= set(metrics.columns)
    split = read_split(trained_run / "split.csv")
    assert set(split) == {r.file for r in scan_utkface(face_dir).records}
    assert set(split.values()) == {"train", "val", "test"}
    assert (trained_run / "curves.png").read_bytes()[:4] == PNG_MAGIC
    predictor = Predictor.from_checkpoint(trained_run / "best.pt")
    assert predictor.model.config.image_size == 32


def test_resume_continues_without_repeating_an_epoch(trained_run: Path, face_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    first = pd.read_csv(run / "metrics.csv")
    rc = main(["train", "--data", str(face_dir), "--out", str(run), "--resume", "--epochs", "2",
               "--num-workers", "0", "-q"])
    assert rc == 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    assert metrics.loc[0, "train_loss"] == pytest.approx(first.loc[0, "train_loss"])  # epoch 1 kept, not rerun
    from agegender.model.checkpoint import load_checkpoint

    last = load_checkpoint(run / "last.pt")
    assert last["training"]["epoch"] == 2
    assert "optimizer_state" in last and "scheduler_state" in last
    assert read_split(run / "split.csv") == read_split(trained_run / "split.csv")


def test_resume_refuses_a_changed_recipe(trained_run: Path, face_dir: Path, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    rc = main(["train", "--data", str(face_dir), "--out", str(run), "--resume", "--epochs", "2", "--lr", "0.5"])
    assert rc == 2
    assert "differs from the run being resumed" in caplog.text


def test_evaluate_a_subset_writes_report_predictions_and_plots(trained_run: Path, face_dir: Path,
                                                               tmp_path: Path) -> None:
    report_path, preds_path = tmp_path / "REPORT.json", tmp_path / "PREDS.csv"
    rc = main(["evaluate", "--model", str(trained_run / "best.pt"), "--data", str(face_dir),
               "--split-file", str(trained_run / "split.csv"), "--subset", "test", "--out", str(report_path),
               "--predictions", str(preds_path), "--workers", "1", "-q"])
    assert rc == 0
    report = json.loads(report_path.read_text())
    n_test = sum(1 for s in read_split(trained_run / "split.csv").values() if s == "test")
    assert report["n"] == n_test
    for key in ("age_mae", "age_rmse", "cs5", "gender_accuracy", "gender_mae", "gender_auc"):
        assert key in report
    assert set(report["groups"]) == {"age", "gender", "race"}
    assert sum(g["n"] for g in report["groups"]["age"].values()) == n_test
    assert sum(g["n"] for g in report["groups"]["gender"].values()) == n_test
    preds = pd.read_csv(preds_path)
    assert list(preds.columns)[:6] == ["file", "age_true", "gender_true", "race", "age_pred", "p_female"]
    # the run had a validation subset, so its best.pt carries a calibrated interval
    assert (preds["age_low"] <= preds["age_pred"]).all() and (preds["age_pred"] <= preds["age_high"]).all()
    assert 0 <= report["age_interval"]["coverage"] <= 1 and report["age_interval"]["target_coverage"] == 0.8
    assert 0 <= report["gender_ece"] <= 0.5
    assert len(preds) == n_test and preds["p_female"].between(0, 1).all()
    # the report's MAE is the MAE of the predictions file
    assert report["age_mae"] == pytest.approx((preds["age_pred"] - preds["age_true"]).abs().mean(), abs=1e-3)
    for plot in ("REPORT_age_scatter.png", "REPORT_mae_by_age.png"):
        assert (tmp_path / plot).read_bytes()[:4] == PNG_MAGIC


def test_evaluate_a_whole_folder(trained_run: Path, face_dir: Path, tmp_path: Path) -> None:
    rc = main(["evaluate", "--model", str(trained_run / "best.pt"), "--data", str(face_dir),
               "--out", str(tmp_path / "r.json"), "--workers", "1", "-q"])
    assert rc == 0
    assert json.loads((tmp_path / "r.json").read_text())["n"] == len(scan_utkface(face_dir).records)
    assert (tmp_path / "r_preds.csv").is_file()


def _odd_images(face_dir: Path, dest: Path) -> list[str]:
    """The same face in every mode and container people have on disk, plus one broken file."""
    dest.mkdir()
    (dest / "nested").mkdir()
    face = Image.open(next(face_dir.glob("*.jpg")))
    face.convert("RGBA").save(dest / "rgba.png")
    face.convert("L").save(dest / "nested" / "gray.jpg")
    face.convert("CMYK").save(dest / "cmyk.jpg")
    rotated = face.rotate(90, expand=True)  # stored sideways, EXIF says "rotate back"
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(dest / "exif_rotated.jpg", exif=exif)
    face.resize((300, 180)).save(dest / "wide.jpg")
    (dest / "broken.jpg").write_bytes(b"this is not a jpeg")
    return ["rgba.png", "gray.jpg", "cmyk.jpg", "exif_rotated.jpg", "wide.jpg"]


def test_predict_any_mode_and_reports_broken_files(trained_run: Path, face_dir: Path, tmp_path: Path) -> None:
    good = _odd_images(face_dir, tmp_path / "in")
    out = tmp_path / "preds.csv"
    rc = main(["predict", "--model", str(trained_run / "best.pt"), str(tmp_path / "in"), "--out", str(out),
               "--aligned", "-q"])
    assert rc == 1  # finished, but one input was unreadable
    df = pd.read_csv(out, keep_default_na=False)
    assert sorted(Path(f).name for f in df[df["error"] == ""]["file"]) == sorted(good)
    ok = df[df["error"] == ""]
    assert ok["age"].astype(float).ge(0).all() and ok["p_female"].astype(float).between(0, 1).all()
    assert set(ok["gender"]) <= {"male", "female"}
    broken = df[df["file"].str.endswith("broken.jpg")]
    assert len(broken) == 1 and "not an image" in broken["error"].iloc[0] and broken["status"].iloc[0] == "error"
    assert set(ok["status"]) == {"ok"}


def test_predict_json(trained_run: Path, face_dir: Path, tmp_path: Path) -> None:
    files = sorted(face_dir.glob("*.jpg"))[:3]
    out = tmp_path / "p.json"
    rc = main(["predict", "--model", str(trained_run / "best.pt"), *map(str, files), "--out", str(out), "--aligned",
               "-q"])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r["file"] for r in rows] == [str(f) for f in files]
    assert all({"age", "gender", "p_female"} <= set(r) for r in rows)


def test_predictor_api_agrees_across_input_kinds(trained_run: Path, face_dir: Path) -> None:
    predictor = Predictor.from_checkpoint(trained_run / "best.pt")
    path = sorted(face_dir.glob("*.jpg"))[0]
    img = Image.open(path)
    results = predictor.predict([path, img, np.asarray(img.convert("RGB")), path.read_bytes()])
    assert all(isinstance(r, Prediction) for r in results)
    ages = [r.age for r in results]
    assert max(ages) - min(ages) < 1e-3
    assert results[0].gender == ("female" if results[0].p_female >= 0.5 else "male")


def test_user_errors_exit_2_with_a_message(trained_run: Path, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--pretrained",
                 "none"]) == 2
    assert "no labelled UTKFace image" in caplog.text
    assert main(["predict", "--model", str(tmp_path / "nope.pt"), str(tmp_path), "--out", "x.csv"]) == 2
    assert "does not exist" in caplog.text
    assert main(["predict", "--model", str(trained_run / "best.pt"), str(tmp_path), "--out", "x.txt"]) == 2
    assert "must end in .csv or .json" in caplog.text


def test_console_script_and_module_help() -> None:
    exe = Path(sys.executable).with_name("agegender")
    # train's options come from the training config, which needs the training extra.
    command = "train" if importlib.util.find_spec("torch") else "predict"
    for cmd in ([str(exe), "--help"], [sys.executable, "-m", "agegender", command, "--help"]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "usage: agegender" in res.stdout


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"


def test_predict_detects_aligns_and_annotates_a_photo(trained_run: Path, tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    Image.new("RGB", (320, 240), (128, 128, 128)).save(blank)
    out = tmp_path / "faces.json"
    rc = main(["predict", "--model", str(trained_run / "best.pt"), str(EXAMPLE), str(blank), "--out", str(out),
               "--annotate", str(tmp_path / "ann"), "-q"])
    assert rc == 0
    rows = json.loads(out.read_text())
    (face,) = [r for r in rows if r["file"] == str(EXAMPLE)]
    assert face["status"] == "ok" and face["face"] == 0 and face["det_score"] > 0.95
    x1, y1, x2, y2 = (face[k] for k in ("box_x1", "box_y1", "box_x2", "box_y2"))
    left_eye, right_eye = face["landmarks"][0], face["landmarks"][1]
    assert x1 < left_eye[0] < right_eye[0] < x2 and y1 < left_eye[1] < (y1 + y2) / 2
    assert [r["status"] for r in rows if r["file"] == str(blank)] == ["no_face"]
    annotated = Image.open(tmp_path / "ann" / "astronaut_annotated.jpg")
    assert annotated.size == Image.open(EXAMPLE).size


def test_bundled_model_on_the_example_photo(tmp_path: Path) -> None:
    from agegender.model.checkpoint import BUNDLED_MODEL

    if not BUNDLED_MODEL.is_file():
        pytest.skip("no bundled model in this checkout")
    (faces,) = Predictor.default().predict_faces([EXAMPLE])
    assert len(faces) == 1
    face = faces[0]
    x1, y1, x2, y2 = face.box
    (lx, ly), (rx, ry) = face.landmarks[:2]
    assert x1 < lx < rx < x2 and y1 < ly < (y1 + y2) / 2 and y1 < ry < (y1 + y2) / 2
    p = face.prediction
    assert 20 <= p.age <= 60 and p.age_low < p.age < p.age_high  # an adult (Eileen Collins, NASA portrait)
    assert p.gender == "female"
    # the CLI without --model uses the same bundled model
    out = tmp_path / "p.csv"
    assert main(["predict", str(EXAMPLE), "--out", str(out), "-q"]) == 0
    assert pd.read_csv(out)["age"].iloc[0] == pytest.approx(p.age, abs=0.01)
