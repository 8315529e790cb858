"""Two processes on the CPU (gloo) through torchrun, as a user would launch them."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")

from agegender.data.sources import read_split
from agegender.model.checkpoint import load_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_train_validate_and_resume(face_dir: Path, tmp_path: Path, tiny_train_argv) -> None:
    run = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={_free_port()}", "-m", "agegender"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # not quiet: each rank's epoch line is read from the log below
    res = subprocess.run([*launcher, *tiny_train_argv(face_dir, run, "--cache", "memory", quiet=False)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    # every rank logs its own view of the validation figures; gathering makes them identical
    lines = re.findall(r"rank (\d) epoch 1/1 .*?(val_age_mae=\S+ .*val_gender_mae=\S+)", res.stderr)
    assert sorted(r for r, _ in lines) == ["0", "1"], res.stderr[-3000:]
    assert lines[0][1] == lines[1][1]

    model, ckpt = load_model(run / "best.pt")
    assert ckpt["training"]["world_size"] == 2 and ckpt["training"]["epoch"] == 1
    assert "calibration" in ckpt  # written once, by rank 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1]

    # resume under DDP continues at epoch 2
    res = subprocess.run([*launcher, *tiny_train_argv(face_dir, run, "--cache", "memory", "--epochs", "2",
                                                      "--resume", quiet=False)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1, 2]

    # a single-process run of the same recipe produces the same files, split and metrics columns
    single = tmp_path / "single"
    from agegender.cli import main

    assert main(tiny_train_argv(face_dir, single, "--cache", "memory")) == 0
    assert read_split(single / "split.csv") == read_split(run / "split.csv")
    assert list(pd.read_csv(single / "metrics.csv").columns) == list(metrics.columns)
    single_model, _ = load_model(single / "best.pt")
    assert single_model.config == model.config
