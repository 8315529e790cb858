"""scripts/average_weights.py: the weight-space average of two checkpoints, on numbers computed by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")

import torch

from agegender.errors import CheckpointError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "average_weights.py"
spec = importlib.util.spec_from_file_location("average_weights", SCRIPT)
average_weights = importlib.util.module_from_spec(spec)
spec.loader.exec_module(average_weights)


def ckpt(weight: list[float], batches: int, **extra) -> dict:
    return {"format": "agegender", "format_version": 1, "model_config": {"backbone": "mobilenet_v2"},
            "model_state": {"head.weight": torch.tensor(weight), "bn.num_batches_tracked": torch.tensor(batches)},
            "training": {"epoch": 3}, **extra}


def test_average_is_the_weighted_mean_and_takes_b_records() -> None:
    a = ckpt([0.0, 4.0], 10, calibration={"age_interval": {"scale": 1.0, "coverage": 0.8}})
    b = ckpt([2.0, -4.0], 99, inference={"flip_tta": True})
    soup = average_weights.average(a, b, alpha=0.25)
    assert soup["model_state"]["head.weight"].tolist() == [0.5, 2.0]  # 0.75 * a + 0.25 * b
    assert soup["model_state"]["bn.num_batches_tracked"].item() == 99
    assert soup["inference"] == {"flip_tta": True} and soup["training"] == {"epoch": 3}
    assert "calibration" not in soup  # the interval of either parent does not hold for the average


def test_average_refuses_other_networks_and_bad_alpha() -> None:
    a, b = ckpt([0.0, 1.0], 1), ckpt([0.0, 1.0], 1)
    b["model_config"] = {"backbone": "resnet18"}
    with pytest.raises(CheckpointError, match="not the same network"):
        average_weights.average(a, b, 0.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        average_weights.average(a, a, 1.5)
