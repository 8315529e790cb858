from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")

import torch

from agegender.errors import PretrainedWeightsError
from agegender.model.config import BACKBONES, ModelConfig
from agegender.model.network import AgeGenderNet, create_backbone

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_random_init_named_outputs(name: str) -> None:
    torch.manual_seed(0)
    net = AgeGenderNet(ModelConfig(backbone=name, image_size=64, age_mean=30.0, age_std=15.0)).eval()
    with torch.no_grad():
        out = net(torch.randn(3, 3, 64, 64))
    assert set(out) == {"age", "age_norm", "age_sigma", "gender_logit"}
    for value in out.values():
        assert value.shape == (3,)
        assert torch.isfinite(value).all()
    # years = normalised * std + mean, the normalisation the checkpoint records
    torch.testing.assert_close(out["age"], out["age_norm"] * 15.0 + 30.0)


def test_label_distribution_head_outputs_expectation_and_spread() -> None:
    torch.manual_seed(0)
    net = AgeGenderNet(ModelConfig(backbone="mobilenet_v2", image_size=64, age_head="dldl", max_age=100)).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64))
    assert set(out) == {"age", "age_sigma", "age_logits", "gender_logit"}
    assert out["age_logits"].shape == (2, 101)
    p = torch.softmax(out["age_logits"], -1)
    ages = torch.arange(101.0)
    torch.testing.assert_close(out["age"], (p * ages).sum(-1))
    torch.testing.assert_close(out["age_sigma"] ** 2, (p * (ages - out["age"][:, None]) ** 2).sum(-1))
    assert ((out["age"] >= 0) & (out["age"] <= 100)).all()


def test_backward_reaches_both_heads_and_backbone() -> None:
    net = AgeGenderNet(ModelConfig(backbone="resnet18", image_size=32))
    out = net(torch.randn(4, 3, 32, 32))
    (out["age_norm"].sum() + out["gender_logit"].sum()).backward()
    assert net.age_head[0].weight.grad.abs().sum() > 0
    assert net.gender_head[0].weight.grad.abs().sum() > 0
    assert net.backbone.conv1.weight.grad.abs().sum() > 0


def test_bad_config_and_backbone_names_raise() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        ModelConfig(backbone="vgg11")
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("alexnet")
    with pytest.raises(ValueError, match="age_std"):
        ModelConfig(age_std=0)
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({"backbone": "resnet18", "wings": 2})


def test_pretrained_path_loads_a_local_state_dict(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    backbone, nf = create_backbone("resnet18", str(tmp_path / "r18.pth"))
    assert nf == 512
    torch.testing.assert_close(backbone.conv1.weight, source.conv1.weight)


def test_pretrained_path_errors(tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError, match="no such file"):
        create_backbone("resnet18", str(tmp_path / "missing.pth"))
    import torchvision

    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), tmp_path / "mnv2.pth")
    with pytest.raises(PretrainedWeightsError, match="do not fit resnet18"):
        create_backbone("resnet18", str(tmp_path / "mnv2.pth"))


def _imagenet_file() -> Path:
    value = os.environ.get("AGEGENDER_TEST_IMAGENET")
    if not value:
        pytest.skip("AGEGENDER_TEST_IMAGENET not set (folder holding torchvision's mobilenet_v2-b0353104.pth)")
    path = Path(value) / MOBILENET_V2_FILE
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


def _torch_home_with(tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / MOBILENET_V2_FILE
    cached.parent.mkdir(parents=True)
    shutil.copy(source, cached)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return cached


@pytest.mark.real_data
def test_imagenet_weights_from_a_prefilled_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _imagenet_file()
    assert hashlib.sha256(source.read_bytes()).hexdigest() == MOBILENET_V2_SHA256
    _torch_home_with(tmp_path, source, monkeypatch)
    backbone, nf = create_backbone("mobilenet_v2", "imagenet")
    expected = torch.load(source, weights_only=True)
    assert nf == 1280
    torch.testing.assert_close(backbone.features[0][0].weight, expected["features.0.0.weight"])


@pytest.mark.real_data
def test_tampered_cached_imagenet_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = _torch_home_with(tmp_path, _imagenet_file(), monkeypatch)
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte still unpickles; only the hash can tell
    cached.write_bytes(bytes(data))
    with pytest.raises(PretrainedWeightsError, match="fail their checksum.*delete it"):
        create_backbone("mobilenet_v2", "imagenet")
