"""Distillation (``--distill``): a student learns its teacher's mirror-averaged outputs, so one pass can stand in
for two."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")

import torch

from agegender.cli import main
from agegender.model.config import ModelConfig
from agegender.model.network import AgeGenderNet
from agegender.training.engine import teacher_targets
from agegender.training.losses import DistillLoss, MultiTaskLoss, distillation_loss


def _net(age_head: str = "dldl", seed: int = 0) -> AgeGenderNet:
    torch.manual_seed(seed)
    return AgeGenderNet(ModelConfig(backbone="mobilenet_v2", image_size=32, age_head=age_head, max_age=20)).eval()


@pytest.mark.parametrize("age_head", ["dldl", "regression"])
def test_teacher_targets_average_the_image_and_its_mirror(age_head: str) -> None:
    net, x = _net(age_head), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b = net(x), net(torch.flip(x, dims=[3]))
    t = teacher_targets(net, x)
    assert torch.allclose(t["gender_logit"], (a["gender_logit"] + b["gender_logit"]) / 2)
    if age_head == "dldl":
        want = (torch.softmax(a["age_logits"], -1) + torch.softmax(b["age_logits"], -1)) / 2
        assert torch.allclose(t["age_prob"], want) and torch.allclose(t["age_prob"].sum(-1), torch.ones(3))
        # the mean of the two distributions has the mean of the two expected ages
        assert torch.allclose((t["age_prob"] * torch.arange(21.0)).sum(-1), (a["age"] + b["age"]) / 2, atol=1e-5)
    else:
        assert torch.allclose(t["age_norm"], (a["age_norm"] + b["age_norm"]) / 2)
    # the same targets for an image and its mirror image: what makes one student pass enough
    flipped = teacher_targets(net, torch.flip(x, dims=[3]))
    assert all(torch.allclose(t[k], flipped[k], atol=1e-6) for k in t)


def test_distillation_loss_hand_computed_for_dldl() -> None:
    # teacher: all mass on bin 1 of 3; student: uniform -> KL = log 3, expected ages 1 vs 1 (no gap);
    # gender: student logit 0 against teacher p = sigmoid(0) = 0.5 -> log 2
    teacher = {"age_prob": torch.tensor([[0.0, 1.0, 0.0]]), "gender_logit": torch.zeros(1)}
    out = {"age_logits": torch.zeros(1, 3), "gender_logit": torch.zeros(1)}
    assert float(distillation_loss(out, teacher, std=10.0)) == pytest.approx(math.log(3) + math.log(2), abs=1e-5)
    # teacher [0.5, 0.5, 0] (expected age 0.5), student uniform (expected 1): KL = log(0.5 / (1/3)) = log 1.5,
    # the gap of 0.5 years is 0.1 std
    teacher = {"age_prob": torch.tensor([[0.5, 0.5, 0.0]]), "gender_logit": torch.zeros(1)}
    got = float(distillation_loss(out | {"age_logits": torch.zeros(1, 3)}, teacher, std=5.0))
    assert got == pytest.approx(math.log(1.5) + 0.1 + math.log(2), abs=1e-5)


def test_distillation_loss_is_smallest_at_the_teacher() -> None:
    teacher = {"age_prob": torch.softmax(torch.tensor([[0.5, 2.0, -1.0]]), -1), "gender_logit": torch.tensor([1.5])}
    at = distillation_loss({"age_logits": torch.log(teacher["age_prob"]), "gender_logit": torch.tensor([1.5])},
                           teacher, std=5.0)
    for shift in ([0.3, 0, 0], [0, 0, 0.3]):
        off = distillation_loss({"age_logits": torch.log(teacher["age_prob"]) + torch.tensor(shift),
                                 "gender_logit": torch.tensor([1.5])}, teacher, std=5.0)
        assert off > at
    assert distillation_loss({"age_logits": torch.log(teacher["age_prob"]), "gender_logit": torch.tensor([0.5])},
                             teacher, std=5.0) > at


def test_distill_loss_mixes_labels_and_teacher() -> None:
    base = MultiTaskLoss(10.0, 5.0, "mse")
    out = {"age_norm": torch.tensor([0.0, 1.0]), "gender_logit": torch.tensor([0.0, 2.0])}
    targets = {"age": torch.tensor([10.0, 20.0]), "gender": torch.tensor([0.0, 1.0])}
    teacher = {"age_norm": torch.tensor([0.5, 1.0]), "gender_logit": torch.tensor([0.0, 2.0])}
    parts = DistillLoss(base, 0.25)(out, targets, teacher)
    kd = distillation_loss(out, teacher, 5.0)
    assert torch.allclose(parts["loss"], 0.75 * base(out, targets)["loss"] + 0.25 * kd)
    assert torch.allclose(parts["distill_loss"], kd)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DistillLoss(base, 1.5)
    with pytest.raises(ValueError, match="dldl teacher"):
        distillation_loss(out, {"age_prob": torch.ones(2, 3) / 3, "gender_logit": torch.zeros(2)}, 5.0)


def test_train_distills_from_a_teacher_checkpoint(trained_run: Path, face_dir: Path, tmp_path: Path,
                                                  tiny_train_argv) -> None:
    out = tmp_path / "student"
    rc = main(tiny_train_argv(face_dir, out, "--init", str(trained_run / "best.pt"),
                              "--distill", str(trained_run / "best.pt"), "--distill-weight", "0.7"))
    assert rc == 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["train_distill_loss"].notna().all() and (metrics["train_distill_loss"] > 0).all()
    assert "distill: " in (out / "config.yaml").read_text()


def test_train_refuses_a_teacher_of_another_crop(trained_run: Path, face_dir: Path, tmp_path: Path,
                                                 tiny_train_argv, caplog) -> None:
    rc = main(tiny_train_argv(face_dir, tmp_path / "s", "--crop-pct", "0.8",
                              "--distill", str(trained_run / "best.pt")))
    assert rc == 2
    assert "teacher has crop_pct=" in caplog.text and "they must match" in caplog.text


def test_a_teacher_at_another_size_sees_the_batch_resized() -> None:
    teacher, x = _net(), torch.randn(2, 3, 24, 24)  # the teacher takes 32 px
    t = teacher_targets(teacher, x)
    up = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    want = teacher_targets(teacher, up)
    assert all(torch.allclose(t[k], want[k]) for k in t)
    assert t["age_prob"].shape == (2, 21)
