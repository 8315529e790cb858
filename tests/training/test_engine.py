"""Mirror averaging at inference (flip TTA): the mean of the outputs for each image and its mirror image."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")

import torch
from torch import nn

from agegender.inference.predictor import Predictor
from agegender.model.config import ModelConfig
from agegender.model.network import AgeGenderNet
from agegender.training.engine import predict_batches


class _Asymmetric(nn.Module):
    """Outputs read from the left or right edge of the image, so an image and its mirror give different ones."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"age": 30 + 10 * x[:, 0, 0, -1], "age_sigma": 2 + x[:, 1, :, 0].abs().mean(1),
                "gender_logit": x[:, 2, -1, :3].sum(1) - x[:, 2, -1, -1]}


def _by_hand(x: torch.Tensor) -> dict[str, np.ndarray]:
    # The same outputs for the mirror image (its last column is the image's first), averaged.
    age = (30 + 10 * x[:, 0, 0, -1] + 30 + 10 * x[:, 0, 0, 0]) / 2
    sigma = (2 + x[:, 1, :, 0].abs().mean(1) + 2 + x[:, 1, :, -1].abs().mean(1)) / 2
    logit = (x[:, 2, -1, :3].sum(1) - x[:, 2, -1, -1] + x[:, 2, -1, -3:].sum(1) - x[:, 2, -1, 0]) / 2
    return {"age": age.numpy(), "age_sigma": sigma.numpy(), "p_female": torch.sigmoid(logit).numpy()}


def _batch(images: torch.Tensor, first: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    # shaped like data.collate's batches: (images, targets, dataset indices)
    n = len(images)
    return images, {"age": torch.zeros(n), "gender": torch.zeros(n)}, torch.arange(first, first + n)


def test_predict_batches_flip_tta_averages_image_and_mirror() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 3, 8, 8)
    loader = [_batch(x[:3], 0), None, _batch(x[3:], 3)]  # None: a batch of unreadable images, skipped
    model = _Asymmetric()
    plain = predict_batches(model, loader, torch.device("cpu"), progress=False)
    tta = predict_batches(model, loader, torch.device("cpu"), flip_tta=True, progress=False)
    expected = _by_hand(x)
    for out in (plain, tta):
        np.testing.assert_array_equal(out["index"], np.arange(5))
    for key in ("age", "age_sigma", "p_female"):
        np.testing.assert_allclose(tta[key], expected[key], rtol=1e-6)
        assert not np.allclose(plain[key], expected[key])  # the mirror changes every output of this model
    np.testing.assert_allclose(plain["age"], (30 + 10 * x[:, 0, 0, -1]).numpy(), rtol=1e-6)


def test_predictor_flip_tta_averages_image_and_mirror() -> None:
    torch.manual_seed(0)
    net = AgeGenderNet(ModelConfig(image_size=32)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out, mirrored = net(x), net(x.flip(3))
    for key in ("age", "gender_logit"):  # (the regression head's age_sigma is a constant)
        assert not torch.allclose(out[key], mirrored[key])  # a random network is not mirror-symmetric
    plain = Predictor(net, flip_tta=False).predict_tensor(x)
    tta = Predictor(net, flip_tta=True).predict_tensor(x)
    np.testing.assert_allclose(plain["age"], out["age"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tta["age"], ((out["age"] + mirrored["age"]) / 2).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tta["age_sigma"], ((out["age_sigma"] + mirrored["age_sigma"]) / 2).numpy(),
                               rtol=1e-5, atol=1e-5)
    logit = (out["gender_logit"] + mirrored["gender_logit"]) / 2
    np.testing.assert_allclose(tta["p_female"], torch.sigmoid(logit).numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(tta["age"], plain["age"], rtol=1e-5, atol=1e-5)
