"""Faults: processes killed mid-training, Ctrl-C, a diverging loss, checkpoints that would run code, and a
folder of every kind of bad input, through every command and the service."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from agegender.cli import main
from agegender.data.records import scan_utkface
from agegender.model.checkpoint import load_checkpoint, load_model, save_checkpoint


def _train_cmd(tiny_train_argv, face_dir: Path, run: Path, epochs: int, quiet: bool = True) -> list[str]:
    return [sys.executable, "-m", "agegender",
            *tiny_train_argv(face_dir, run, "--epochs", str(epochs), "--cache", "memory", quiet=quiet)]


def _all_checkpoints_load(run: Path) -> None:
    for name in ("best.pt", "last.pt"):
        if (run / name).exists():
            load_checkpoint(run / name)  # raises on a torn or partial file


def _epoch_saved(run: Path) -> int:
    try:
        return load_checkpoint(run / "last.pt")["training"]["epoch"]
    except Exception:  # noqa: BLE001 - not written yet
        return 0



@pytest.mark.slow
def test_sigkill_at_random_moments_and_mid_write_then_resume(face_dir: Path, tmp_path: Path,
                                                            tiny_train_argv) -> None:
    run, epochs = tmp_path / "run", 10
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills = []
    while True:
        cmd = _train_cmd(tiny_train_argv, face_dir, run, epochs) + (["--resume"] if (run / "last.pt").exists() else [])
        started_at = _epoch_saved(run)
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        if len(kills) == 3:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-2000:]
            break
        deadline = time.time() + 120
        if not kills:
            # First kill: the moment a checkpoint's temporary file appears, i.e. during a write.
            while proc.poll() is None and time.time() < deadline and not list(run.glob(".*.pt.*.tmp")):
                time.sleep(0.001)
            kills.append("during a checkpoint write")
        else:
            # Then at a random moment after this process has made some progress.
            while proc.poll() is None and time.time() < deadline and _epoch_saved(run) <= started_at:
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 0.5))
            kills.append("at a random moment")
        assert proc.poll() is None, "training ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _all_checkpoints_load(run)
    last = load_checkpoint(run / "last.pt")
    epochs_done = [h["epoch"] for h in last["training"]["history"]]
    assert epochs_done == list(range(1, epochs + 1))  # nothing repeated, nothing missing
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == epochs_done
    load_model(run / "best.pt")
    assert not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_ctrl_c_keeps_last_complete_epoch_and_exits_130(face_dir: Path, tmp_path: Path, tiny_train_argv,
                                                         default_sigint) -> None:
    run = tmp_path / "run"
    assert main(tiny_train_argv(face_dir, run, "--cache", "memory")) == 0
    before = (run / "last.pt").read_bytes()
    proc = subprocess.Popen(_train_cmd(tiny_train_argv, face_dir, run, 50, quiet=False) + ["--resume"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and load_checkpoint(run / "last.pt")["training"]["epoch"] < 2:
        time.sleep(0.2)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted in epoch" in err and "Traceback" not in err
    last = load_checkpoint(run / "last.pt")
    partial = load_checkpoint(run / "interrupted.pt")
    assert partial["training"]["interrupted_in_epoch"] == last["training"]["epoch"] + 1
    assert (run / "last.pt").read_bytes() != before  # epochs completed before the interrupt were saved


@pytest.mark.parametrize("where, completed", [("validate", 1), ("training_curves", 2)])
def test_ctrl_c_outside_the_training_steps_reports_what_was_saved(where: str, completed: int, face_dir: Path,
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture,
                                                                  tiny_train_argv) -> None:
    # Ctrl-C during epoch 2's validation (last.pt still holds epoch 1) or while epoch 2's curves are drawn
    # (last.pt already holds epoch 2): the report and interrupted.pt must follow what is on disk.
    import agegender.training.trainer as T

    real, calls = getattr(T, where), []

    def interrupt_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(T, where, interrupt_on_second_call)
    run = tmp_path / "run"
    assert main(_train_cmd(tiny_train_argv, face_dir, run, 4)[3:]) == 130
    assert load_checkpoint(run / "last.pt")["training"]["epoch"] == completed
    assert load_checkpoint(run / "interrupted.pt")["training"]["interrupted_in_epoch"] == completed + 1
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == list(range(1, completed + 1))
    assert f"interrupted in epoch {completed + 1}" in caplog.text


def test_a_diverging_loss_stops_with_a_message_and_keeps_the_checkpoints(trained_run: Path, face_dir: Path,
                                                                       tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = load_checkpoint(run / "last.pt")
    key = next(k for k in ckpt["model_state"] if k.endswith("conv1.weight"))
    ckpt["model_state"][key] = torch.full_like(ckpt["model_state"][key], float("nan"))
    save_checkpoint(ckpt, run / "last.pt")
    before = {n: (run / n).read_bytes() for n in ("best.pt", "last.pt")}
    rc = main(["train", "--data", str(face_dir), "--out", str(run), "--resume", "--epochs", "2", "--num-workers",
               "0", "-q"])
    assert rc == 2
    assert "loss became nan in epoch 2" in caplog.text
    assert {n: (run / n).read_bytes() for n in before} == before


class _Payload:
    marker = ""

    def __reduce__(self):
        return (open, (_Payload.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(face_dir: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    _Payload.marker = str(tmp_path / "pwned")
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        torch.save({"format": "agegender", "format_version": 1, "x": _Payload()}, f, pickle_module=pickle)
    commands = {
        "evaluate": ["evaluate", "--model", str(evil), "--data", str(face_dir), "--out", str(tmp_path / "r.json")],
        "predict": ["predict", "--model", str(evil), str(face_dir), "--out", str(tmp_path / "p.csv")],
        "export": ["export", "--model", str(evil), "--out", str(tmp_path / "m.onnx")],
        "serve": ["serve", "--model", str(evil), "--port", "0"],
        "train --init": ["train", "--data", str(face_dir), "--out", str(tmp_path / "t"), "--init", str(evil)],
    }
    for name, argv in commands.items():
        caplog.clear()
        assert main(argv) == 2, name
        assert "refused" in caplog.text, name
        assert not Path(_Payload.marker).exists(), name


@pytest.mark.slow
def test_bad_inputs_through_scan_train_evaluate_predict(bad_corpus: tuple[Path, dict], tmp_path: Path,
                                                        tiny_train_argv) -> None:
    data, names = bad_corpus
    scan = scan_utkface(data)
    skipped = {Path(f).name for f, _ in scan.skipped}
    assert set(names["malformed"]) <= skipped
    assert any("duplicate" in why for _, why in scan.skipped)
    listed = {Path(r.file).name for r in scan.records}
    assert set(names["good"]) | set(names["odd_ok"]) | set(names["broken"]) <= listed
    run = tmp_path / "run"
    # Both pipelines skip unreadable images mid-epoch; the decode cache also counts them (exit 1: some inputs
    # skipped), while without a cache each read only logs its skip.
    for cache, expected_rc in (("memory", 1), ("none", 0)):
        rc = main(tiny_train_argv(data, run / cache, "--batch-size", "4", "--split", "0.5,0.25,0.25", "--cache", cache))
        assert rc == expected_rc, cache
    report = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(run / "memory" / "best.pt"), "--data", str(data), "--out", str(report),
                 "--workers", "1", "-q"]) == 1  # finished; the broken files are named and left out
    meta = pd.read_json(report, typ="series")["meta"]
    assert meta["skipped_unreadable_or_no_face"] >= len(names["broken"])
    out = tmp_path / "p.csv"
    rc = main(["predict", "--model", str(run / "memory" / "best.pt"), str(data), "--aligned", "--out", str(out),
               "-q"])
    assert rc == 1  # finished, some inputs unreadable
    df = pd.read_csv(out, keep_default_na=False)
    by_name = {Path(f).name: s for f, s in zip(df["file"], df["status"], strict=True)}
    assert all(by_name[n] == "error" for n in names["broken"])
    assert all(by_name[n] == "ok" for n in names["good"] + names["odd_ok"])
