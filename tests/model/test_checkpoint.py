from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")

import torch

from agegender.errors import CheckpointError
from agegender.io.outputs import atomic_write
from agegender.model.checkpoint import FORMAT_VERSION, load_checkpoint, load_model, make_checkpoint, save_checkpoint
from agegender.model.config import ModelConfig
from agegender.model.network import AgeGenderNet


def _tiny(backbone: str = "resnet18") -> AgeGenderNet:
    torch.manual_seed(0)
    return AgeGenderNet(ModelConfig(backbone=backbone, image_size=32, age_mean=31.5, age_std=17.0)).eval()


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    model = _tiny()
    path = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(model, {"epoch": 3}), path)
    raw = torch.load(path, weights_only=True)  # plain data only: loads without unpickling code
    assert raw["format_version"] == FORMAT_VERSION
    assert raw["age_normalisation"] == {"mean": 31.5, "std": 17.0}
    assert raw["labels"]["gender"] == ["male", "female"]
    loaded, ckpt = load_model(path)
    assert loaded.config == model.config and ckpt["training"]["epoch"] == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(_tiny(), {"epoch": 1}), path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"format": "agegender", "bad": _FailsWhenSaved()}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_unknown_format_version_is_a_clear_error(tmp_path: Path) -> None:
    ckpt = make_checkpoint(_tiny())
    ckpt["format_version"] = 99
    save_checkpoint(ckpt, tmp_path / "v99.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "v99.pt")


def test_architecture_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    ckpt = make_checkpoint(_tiny("resnet18"))
    ckpt["model_config"]["backbone"] = "resnet34"  # weights of one network declared as another
    save_checkpoint(ckpt, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="do not match the resnet34"):
        load_model(tmp_path / "wrong.pt")


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an agegender checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _FailsWhenSaved:
    def __reduce__(self):
        raise RuntimeError("disk full")


class _Evil:
    def __reduce__(self):
        return (open, (_Evil.marker, "w"))  # creates the marker file if ever executed


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    _Evil.marker = str(tmp_path / "pwned")
    ckpt = make_checkpoint(_tiny())
    ckpt["training"] = {"payload": _Evil()}
    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save(ckpt, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match=r"refused: it would import (io|builtins)\.open"):
        load_model(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


@pytest.fixture
def ctrl_c():
    """Ctrl-C raising KeyboardInterrupt, as in a terminal: a suite started in the background (``cmd &``) inherits
    SIGINT ignored, and Python then installs no handler."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_a_write_lets_the_file_finish_then_interrupts(tmp_path: Path, ctrl_c) -> None:
    path = tmp_path / "f.bin"

    def write(f) -> None:
        f.write(b"first half ")
        os.kill(os.getpid(), signal.SIGINT)  # delivered to this (main) thread at once without the hold
        f.write(b"second half")

    with pytest.raises(KeyboardInterrupt, match="^$"):  # a bare interrupt, as Ctrl-C raises: no message
        atomic_write(path, write)
    assert path.read_bytes() == b"first half second half"
    assert not list(tmp_path.glob(".*.tmp"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_torch_save_is_a_keyboard_interrupt_once_the_file_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c) -> None:
    # Unheld, the interrupt inside torch.save surfaces as a RuntimeError from its zip writer.
    path = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(_tiny()), path)
    real_save = torch.save

    def save_with_ctrl_c(obj, f, *args, **kwargs) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_with_ctrl_c)
    new = make_checkpoint(_tiny("mobilenet_v2"))
    with pytest.raises(KeyboardInterrupt, match="^$"):  # not the zip writer's RuntimeError, nor wrapped in one
        save_checkpoint(new, path)
    assert load_checkpoint(path)["model_config"]["backbone"] == "mobilenet_v2"  # the write completed first
