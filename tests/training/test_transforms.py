"""Transform presets: output geometry, normalisation values, determinism and augmentation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")

import torch
from PIL import Image

from agegender.model.config import IMAGENET_MEAN, IMAGENET_STD, PresetConfig
from agegender.training.transforms import eval_preset, train_preset


def _noise(w: int = 80, h: int = 50) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_eval_preset_shape_dtype_non_square():
    out = eval_preset(PresetConfig(image_size=32, crop_pct=0.9))(_noise(80, 50))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (3, 32, 32)
    assert out.dtype == torch.float32


def test_eval_preset_tall_input():
    out = eval_preset(PresetConfig(image_size=24, crop_pct=1.0))(_noise(30, 90))
    assert out.shape == (3, 24, 24)


def test_eval_preset_constant_colour_normalised():
    colour = (200, 100, 50)
    out = eval_preset(PresetConfig(image_size=32, crop_pct=0.9))(Image.new("RGB", (70, 45), colour))
    for c in range(3):
        expected = (colour[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(out[c], torch.full_like(out[c], expected), atol=1e-3), c


def test_eval_preset_custom_mean_std():
    cfg = PresetConfig(image_size=16, crop_pct=0.9, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    out = eval_preset(cfg)(Image.new("RGB", (20, 20), (255, 0, 255)))
    assert torch.allclose(out[0], torch.full((16, 16), 2.0), atol=1e-3)  # (1 - 0.5) / 0.25
    assert torch.allclose(out[1], torch.full((16, 16), -1.0), atol=1e-3)  # (0 - 0.5) / 0.5
    assert torch.allclose(out[2], torch.full((16, 16), 0.5), atol=1e-3)  # (1 - 0.5) / 1


def test_eval_preset_deterministic():
    tf = eval_preset(PresetConfig(image_size=32, crop_pct=0.9))
    img = _noise()
    torch.manual_seed(0)
    a = tf(img)
    torch.manual_seed(1)
    b = tf(img)
    assert torch.equal(a, b)


def test_train_preset_random_but_seeded():
    tf = train_preset(PresetConfig(image_size=32, crop_pct=0.9))
    img = _noise()
    torch.manual_seed(0)
    a = tf(img)
    torch.manual_seed(1)
    b = tf(img)
    torch.manual_seed(0)
    a_again = tf(img)
    assert a.shape == b.shape == (3, 32, 32)
    assert a.dtype == torch.float32
    assert not torch.equal(a, b)
    assert torch.equal(a, a_again)


def test_train_preset_strength_zero_keeps_colours():
    # With strength 0 only crop and flip remain: a constant image comes out exactly normalised.
    tf = train_preset(PresetConfig(image_size=16, crop_pct=0.9), strength=0.0)
    colour = (10, 120, 240)
    torch.manual_seed(0)
    out = tf(Image.new("RGB", (40, 30), colour))
    assert out.shape == (3, 16, 16)
    for c in range(3):
        expected = (colour[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(out[c], torch.full_like(out[c], expected), atol=1e-3)


@pytest.mark.parametrize("strength", [-0.1, -1.0])
def test_train_preset_negative_strength(strength):
    with pytest.raises(ValueError, match="strength"):
        train_preset(PresetConfig(image_size=112, crop_pct=0.9), strength=strength)


@pytest.mark.parametrize(
    ("size", "crop", "expected"), [(112, 0.9, 124), (90, 0.9, 100), (32, 1.0, 32), (224, 0.875, 256)]
)
def test_resize_size(size, crop, expected):
    assert PresetConfig(image_size=size, crop_pct=crop).resize_size == expected


def test_default_preset():
    cfg = PresetConfig(image_size=112, crop_pct=0.9)
    assert cfg.image_size == 112
    assert cfg.mean == IMAGENET_MEAN
    assert cfg.std == IMAGENET_STD


def test_random_old_print_is_seeded_by_torch_and_keeps_the_form():
    from agegender.training.transforms import RandomOldPrint

    img = torch.from_numpy(np.asarray(Image.open("examples/astronaut.png").convert("RGB").resize((64, 64))).copy())
    img = img.permute(2, 0, 1).contiguous()
    torch.manual_seed(1)
    first = [RandomOldPrint(1.0)(img) for _ in range(8)]
    torch.manual_seed(1)
    again = [RandomOldPrint(1.0)(img) for _ in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # a seeded run repeats
    assert all(o.dtype == torch.uint8 and o.shape == img.shape and not torch.equal(o, img) for o in first)
    assert len({o.float().mean().item() for o in first}) == 8  # each draw ages differently
    assert torch.equal(RandomOldPrint(0.0)(img), img)
    with pytest.raises(ValueError, match=r"old-print probability must be in \[0, 1\]"):
        RandomOldPrint(-0.1)
    preset = PresetConfig(32, 0.875)
    out = train_preset(preset, cached=True, old_print=1.0)(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
