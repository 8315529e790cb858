"""TrainConfig: defaults, then YAML, then explicit overrides; validation; save/load round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")

import yaml

from agegender.training.config import TrainConfig

REQUIRED = {"data": "/data/utkface", "out": "/runs/x"}


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults():
    cfg = TrainConfig.from_sources(overrides=dict(REQUIRED))
    assert cfg == TrainConfig(**REQUIRED)
    assert cfg.backbone == "resnet18"
    assert cfg.epochs == 10
    assert cfg.lr == pytest.approx(1e-3)
    assert cfg.split == "0.8,0.1,0.1"
    assert cfg.data == REQUIRED["data"]


def test_data_and_out_required():
    with pytest.raises(ValueError, match="--data"):
        TrainConfig.from_sources(overrides={"out": "x"})
    with pytest.raises(ValueError, match="--out"):
        TrainConfig.from_sources(overrides={"data": "x"})


def test_yaml_overrides_defaults(tmp_path):
    path = _yaml(tmp_path, "backbone: resnet34\nepochs: 3\nlr: 0.01\namp: false\n")
    cfg = TrainConfig.from_sources(path, dict(REQUIRED))
    assert cfg.backbone == "resnet34"
    assert cfg.epochs == 3
    assert cfg.lr == pytest.approx(0.01)
    assert cfg.amp is False
    assert cfg.batch_size == TrainConfig.batch_size  # untouched keys keep their default


def test_explicit_overrides_beat_yaml(tmp_path):
    path = _yaml(tmp_path, "backbone: resnet34\nepochs: 3\nbatch_size: 16\n")
    cfg = TrainConfig.from_sources(path, {**REQUIRED, "epochs": 7, "backbone": "mobilenet_v2"})
    assert cfg.epochs == 7
    assert cfg.backbone == "mobilenet_v2"
    assert cfg.batch_size == 16


def test_none_overrides_ignored(tmp_path):
    path = _yaml(tmp_path, "epochs: 3\n")
    cfg = TrainConfig.from_sources(path, {**REQUIRED, "epochs": None, "lr": None, "backbone": None})
    assert cfg.epochs == 3
    assert cfg.lr == pytest.approx(1e-3)
    assert cfg.backbone == "resnet18"


def test_empty_yaml_file(tmp_path):
    cfg = TrainConfig.from_sources(_yaml(tmp_path, ""), dict(REQUIRED))
    assert cfg == TrainConfig(**REQUIRED)


def test_yaml_not_a_mapping(tmp_path):
    with pytest.raises(ValueError, match="mapping"):
        TrainConfig.from_sources(_yaml(tmp_path, "- epochs\n- 3\n"), dict(REQUIRED))


def test_unknown_yaml_key_named(tmp_path):
    path = _yaml(tmp_path, "epochz: 3\n")
    with pytest.raises(ValueError, match="epochz"):
        TrainConfig.from_sources(path, dict(REQUIRED))


def test_unknown_override_key_named():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_sources(overrides={**REQUIRED, "learning_rate": 0.1})


@pytest.mark.parametrize(
    ("override", "word"),
    [
        ({"epochs": 0}, "epochs"),
        ({"backbone": "vgg99"}, "backbone"),
        ({"split": "0.8,0.3,0.1"}, "split"),
        ({"split": "0.5,0.5"}, "split"),
        ({"batch_size": 0}, "batch-size"),
        ({"lr": 0.0}, "lr"),
        ({"image_size": 8}, "image-size"),
        ({"age_loss": "huber"}, "age-loss"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"schedule": "step"}, "schedule"),
        ({"crop_pct": 1.5}, "crop_pct"),
        ({"limit": -1}, "limit"),
    ],
)
def test_invalid_values(override, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig.from_sources(overrides={**REQUIRED, **override})


def test_invalid_yaml_value(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig.from_sources(_yaml(tmp_path, "epochs: 0\n"), dict(REQUIRED))


def test_yaml_list_split(tmp_path):
    cfg = TrainConfig.from_sources(_yaml(tmp_path, "split: [0.8, 0, 0.2]\n"), dict(REQUIRED))
    assert cfg.split == "0.8,0,0.2"


def test_override_tuple_split():
    cfg = TrainConfig.from_sources(overrides={**REQUIRED, "split": (0.7, 0.1, 0.2)})
    assert cfg.split == "0.7,0.1,0.2"


def test_packaged_reference_config():
    path = Path(__file__).resolve().parents[2] / "src" / "agegender" / "training" / "configs" / "reference.yaml"
    cfg = TrainConfig.from_sources(path, dict(REQUIRED))
    assert cfg.split == "0.8,0,0.2"
    assert cfg.backbone == "resnet18"
    assert cfg.epochs == 10


def test_save_round_trip(tmp_path):
    cfg = TrainConfig.from_sources(
        overrides={**REQUIRED, "backbone": "efficientnet_b0", "epochs": 4, "lr": 3e-4, "split": "0.7,0.1,0.2",
                   "amp": False, "augment": 0.5, "seed": 42}
    )
    path = tmp_path / "saved.yaml"
    cfg.save(path)
    assert yaml.safe_load(path.read_text()) == cfg.to_dict()
    again = TrainConfig.from_sources(path)
    assert again == cfg
    assert isinstance(again.lr, float)


def test_yaml_exponent_float_without_dot(tmp_path):
    cfg = TrainConfig.from_sources(_yaml(tmp_path, "lr: 1e-4\nweight_decay: 5e-5\n"), dict(REQUIRED))
    assert cfg.lr == pytest.approx(1e-4)
    assert cfg.weight_decay == pytest.approx(5e-5)
