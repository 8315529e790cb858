"""Hostile inputs and faults through the command line: every file gets its row or skip line, every other
result is kept, outputs are checked before the work, user errors are one line with exit 2, and a run killed
during its final calibration is repaired by --resume."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from agegender.cli import main
from agegender.data.records import scan_utkface
from agegender.data.sources import read_split
from agegender.model.checkpoint import load_checkpoint, save_checkpoint


def _rows_by_name(path: Path) -> dict[str, list[str]]:
    df = pd.read_csv(path, keep_default_na=False, encoding_errors="surrogateescape")
    rows: dict[str, list[str]] = {}
    for file, status in zip(df["file"], df["status"], strict=True):
        rows.setdefault(Path(file).name, []).append(status)
    return rows


@pytest.mark.slow
def test_hostile_corpus_through_scan_train_evaluate_predict(hostile_corpus: tuple[Path, dict], tmp_path: Path,
                                                            tiny_train_argv) -> None:
    data, cases = hostile_corpus
    good = {n for n, (_, expected) in cases.items() if expected == "ok"}
    bad = set(cases) - good
    assert {Path(r.file).name for r in scan_utkface(data).records} == set(cases)
    run = tmp_path / "run"
    # One epoch on every file: the unreadable ones are named, left out, and make the exit status 1.
    assert main(tiny_train_argv(data, run, "--cache", "memory", "--batch-size", "4")) == 1
    split = read_split(run / "split.csv")
    bad_in_training = sum(1 for f, subset in split.items() if Path(f).name in bad and subset != "test")
    assert load_checkpoint(run / "last.pt")["training"]["unreadable_images"] == bad_in_training > 0
    model = str(run / "best.pt")
    report = tmp_path / "r.json"
    assert main(["evaluate", "--model", model, "--data", str(data), "--out", str(report), "--workers", "1",
                 "-q"]) == 1
    rep = json.loads(report.read_text())
    assert rep["n"] == len(good) and rep["meta"]["skipped_unreadable_or_no_face"] == len(bad)
    for mode in (["--aligned"], []):  # face crops, and photos through detection
        out = tmp_path / f"p{len(mode)}.csv"
        assert main(["predict", "--model", model, str(data), "--out", str(out), "--batch-size", "8", "-q",
                     *mode]) == 1
        rows = _rows_by_name(out)
        assert set(rows) == set(cases)
        for name, statuses in rows.items():
            expected = {"ok"} if name in good and mode else {"ok", "no_face"} if name in good else {"error"}
            assert set(statuses) <= expected, (cases[name][0], statuses)


@pytest.mark.slow
def test_a_predict_process_prints_no_traceback_on_the_corpus(hostile_corpus: tuple[Path, dict], trained_run: Path,
                                                            tmp_path: Path) -> None:
    data, cases = hostile_corpus
    out = tmp_path / "p.json"
    res = subprocess.run([sys.executable, "-m", "agegender", "predict", "--model", str(trained_run / "best.pt"),
                          str(data), "--aligned", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "Warning" not in res.stderr
    assert len(json.loads(out.read_text())) == len(cases)


def test_odd_names_are_written_as_given_and_annotated_apart(trained_run: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in"
    photo = Image.new("RGB", (64, 48), (120, 110, 100))
    names = [Path("a/photo.jpg"), Path("b/photo.jpg"), Path("photo.png"), Path(os.fsdecode(b"caf\xe9.jpg")),
             Path("=HYPERLINK(1).jpg"), Path("n" * 246 + ".jpg")]
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        photo.save(src / name, "PNG" if name.suffix == ".png" else "JPEG")
    out, annotated = tmp_path / "p.csv", tmp_path / "ann"
    monkeypatch.chdir(src)  # relative names in the file column: "=HYPERLINK(1).jpg" starts a cell
    rc = main(["predict", "--model", str(trained_run / "best.pt"), ".", "--out", str(out), "--annotate",
               str(annotated), "-q"])
    assert rc == 0
    raw = out.read_bytes()
    assert b"caf\xe9.jpg" in raw  # the name's bytes, as on disk
    assert b"\n'=HYPERLINK(1).jpg," in raw and b"\n=HYPERLINK" not in raw  # text, not a formula
    assert len(_rows_by_name(out)) == 5 and len(pd.read_csv(out, encoding_errors="surrogateescape")) == 6
    written = sorted(p.name for p in annotated.iterdir())
    assert len(written) == len(names)  # one each: a/photo.jpg, b/photo.jpg and photo.png do not overwrite
    assert {"photo_annotated.jpg", "photo_annotated_2.jpg", "photo_annotated_3.jpg"} <= set(written)
    out_json = tmp_path / "p.json"
    assert main(["predict", "--model", str(trained_run / "best.pt"), ".", "--out", str(out_json), "-q"]) == 0
    assert os.fsdecode(b"caf\xe9.jpg") in {Path(r["file"]).name for r in json.loads(out_json.read_text())}


def test_outputs_are_checked_before_any_work(trained_run: Path, face_dir: Path, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    model = str(trained_run / "best.pt")
    commands = {
        "predict": ["predict", "--model", model, str(face_dir), "--out", str(blocker / "p.csv")],
        "predict --annotate": ["predict", "--model", model, str(face_dir), "--out", str(tmp_path / "p.csv"),
                               "--annotate", str(blocker / "ann")],
        "evaluate": ["evaluate", "--model", model, "--data", str(face_dir), "--out", str(blocker / "r.json")],
        "evaluate --predictions": ["evaluate", "--model", model, "--data", str(face_dir), "--out",
                                   str(tmp_path / "r.json"), "--predictions", str(blocker / "p.csv")],
        "export": ["export", "--model", model, "--out", str(blocker / "m.onnx")],
        "train": ["train", "--data", str(face_dir), "--out", str(blocker / "run"), "--pretrained", "none"],
    }
    for name, argv in commands.items():
        caplog.clear()
        assert main([*argv, "-q"]) == 2, name
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "cannot write into" in errors[0].getMessage(), (name, caplog.text)
        assert errors[0].exc_info is None and "\n" not in errors[0].getMessage()
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "r.json").exists()


def test_ctrl_c_during_predict_keeps_the_rows_already_done(trained_run: Path, face_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import agegender.inference.batch as batch

    real, calls = batch.predict_items, []

    def interrupt_on_third_batch(predictor, items, *args, **kwargs):
        calls.append(len(items))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(predictor, items, *args, **kwargs)

    monkeypatch.setattr(batch, "predict_items", interrupt_on_third_batch)
    out = tmp_path / "p.csv"
    rc = main(["predict", "--model", str(trained_run / "best.pt"), str(face_dir), "--aligned", "--batch-size", "4",
               "--workers", "1", "--out", str(out), "-q"])
    assert rc == 130
    done = sum(calls[:2])  # the two groups of files done before Ctrl-C
    assert 0 < done < len(list(face_dir.iterdir()))
    assert list(pd.read_csv(out)["status"]) == ["ok"] * done


def test_a_photo_with_more_faces_than_max_faces_says_so(trained_run: Path, tmp_path: Path, crowd_photo) -> None:
    photo = tmp_path / "crowd.png"
    photo.write_bytes(crowd_photo(6))
    out = tmp_path / "p.csv"
    rc = main(["predict", "--model", str(trained_run / "best.pt"), str(photo), "--max-faces", "2", "--out", str(out),
               "-q"])
    assert rc == 1  # finished, but faces were left out
    df = pd.read_csv(out, keep_default_na=False)
    ok = df[df["status"] == "ok"]
    assert len(ok) == 2 and list(ok["face"]) == ["0", "1"]
    (dropped,) = df[df["status"] == "faces_dropped"]["error"]
    assert dropped == "6 faces found; the 2 largest were predicted (--max-faces 2)"


# --------------------------------------------------------------------------- user errors: exit 2, one line


def _crafted(trained_run: Path, tmp_path: Path, name: str, change) -> str:
    ckpt = load_checkpoint(trained_run / "best.pt")
    change(ckpt)
    path = tmp_path / f"{name}.pt"
    save_checkpoint(ckpt, path)
    return str(path)


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_user_errors_exit_2_in_one_line(trained_run: Path, face_dir: Path, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    evil_yaml = tmp_path / "evil.yaml"
    evil_yaml.write_text('epochs: !!python/object/apply:os.system ["echo pwned"]\n')
    resumed_from_best = tmp_path / "run"
    resumed_from_best.mkdir()
    (resumed_from_best / "last.pt").write_bytes((trained_run / "best.pt").read_bytes())
    (resumed_from_best / "config.yaml").write_bytes((trained_run / "config.yaml").read_bytes())
    weights_list = _crafted(trained_run, tmp_path, "list", lambda c: c.update(model_state=[1, 2, 3]))
    scale_text = _crafted(trained_run, tmp_path, "scale", lambda c: c["calibration"]["age_interval"].update(
        scale="wide"))
    huge = _crafted(trained_run, tmp_path, "huge", lambda c: c["model_config"].update(head_hidden=10**9))
    huge_input = _crafted(trained_run, tmp_path, "huge_input", lambda c: c["model_config"].update(image_size=10**6))
    busy = _busy_port()
    model = str(trained_run / "best.pt")
    cases = {
        "train --config with a !!python tag": (["train", "--data", str(face_dir), "--out", str(tmp_path / "t"),
                                                "--config", str(evil_yaml)], "not a readable YAML file"),
        "train --image-size 100000": (["train", "--data", str(face_dir), "--out", str(tmp_path / "t"),
                                       "--image-size", "100000"], "--image-size must be 16-1024"),
        "train --resume from a best.pt": (["train", "--data", str(face_dir), "--out", str(resumed_from_best),
                                           "--resume"], "cannot be resumed"),
        "weights are a list": (["predict", "--model", weights_list, str(face_dir), "--out", str(tmp_path / "p.csv")],
                               "model_state is not a mapping"),
        "the interval scale is text": (["predict", "--model", scale_text, str(face_dir), "--out",
                                        str(tmp_path / "p.csv")], "calibration.age_interval needs"),
        "a huge head": (["evaluate", "--model", huge, "--data", str(face_dir), "--out", str(tmp_path / "r.json")],
                        "head_hidden must be 1-8192"),
        "a huge input size": (["export", "--model", huge_input, "--out", str(tmp_path / "m.onnx")],
                              "image_size must be 16-1024"),
        "serve on a busy port": (["serve", "--model", model, "--port", str(busy.getsockname()[1])],
                                 "cannot listen on 127.0.0.1 port"),
        "serve on an unknown address": (["serve", "--model", model, "--host", "no.such.host.invalid", "--port", "0"],
                                        "not an address this machine can listen on"),
        "predict --device meta": (["predict", "--model", model, str(face_dir), "--out", str(tmp_path / "p.csv"),
                                   "--device", "meta"], "device 'meta' is not supported"),
    }
    if not torch.cuda.is_available():
        cases["predict --device cuda without a GPU"] = (
            ["predict", "--model", model, str(face_dir), "--out", str(tmp_path / "p.csv"), "--device", "cuda"],
            "no CUDA GPU is available here")
    try:
        for name, (argv, expected) in cases.items():
            caplog.clear()
            assert main([*argv, "-q"]) == 2, (name, caplog.text)
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1 and expected in errors[0].getMessage(), (name, caplog.text)
            assert errors[0].exc_info is None and "\n" not in errors[0].getMessage(), name
    finally:
        busy.close()


@pytest.mark.parametrize("argv, expected", [
    (["predict", "x.jpg", "--out", "p.csv", "--batch-size", "-1"], "--batch-size: expected int >= 1, got '-1'"),
    (["predict", "x.jpg", "--out", "p.csv", "--batch-size", "0"], "--batch-size: expected int >= 1, got '0'"),
    (["serve", "--port", "70000"], "argument --port: expected int 0-65535, got '70000'"),
    (["serve", "--timeout", "nan"], "argument --timeout: expected float > 0, got 'nan'"),
    (["predict", "x.jpg", "--out", "p.csv", "--det-threshold", "2"], "expected float 0-1, got '2'"),
    pytest.param(["train", "--data", "d", "--out", "o", "--epochs", "many"],
                 "argument --epochs: invalid int value: 'many'", marks=pytest.mark.skipif(
                     importlib.util.find_spec("torch") is None, reason="train's options need the training extra")),
])
def test_bad_numbers_are_one_line_usage_errors(argv: list[str], expected: str,
                                               capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit, match="^2$"):
        main(argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "usage:" not in err


# --------------------------------------------------------------------------- killed during the final calibration

KILLED_AT = """
import os, signal, sys
import agegender.training.trainer as T
where, epochs = sys.argv[1], int(sys.argv[2])
real = getattr(T, where)

def die(*args, **kwargs):
    # write_metrics runs every epoch: die at the last one, right after last.pt was written
    if where == "calibrate" or len(args[1]) == epochs:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

setattr(T, where, die)
from agegender.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["write_metrics", "calibrate"])
def test_a_run_killed_after_its_last_epoch_is_finished_by_resume(where: str, face_dir: Path, tmp_path: Path,
                                                                 tiny_train_argv) -> None:
    run = tmp_path / "run"
    argv = tiny_train_argv(face_dir, run, "--epochs", "2", "--cache", "memory")
    proc = subprocess.run([sys.executable, "-c", KILLED_AT, where, "2", *argv], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert load_checkpoint(run / "last.pt")["training"]["epoch"] == 2
    assert "calibration" not in load_checkpoint(run / "best.pt")
    assert main(["train", "--data", str(face_dir), "--out", str(run), "--resume", "-q"]) == 0
    best = load_checkpoint(run / "best.pt")
    assert best["calibration"]["age_interval"]["scale"] > 0  # predict gives intervals again
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1, 2]
    assert best["training"]["best"]["value"] is not None
    assert main(["train", "--data", str(face_dir), "--out", str(run), "--resume", "-q"]) == 0  # nothing left
    assert load_checkpoint(run / "best.pt")["calibration"] == best["calibration"]
