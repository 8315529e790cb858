"""scripts/logit_adjust.py: the post-hoc prior correction of a dldl age head, on a tiny trained run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")

import torch

from agegender.data import sources as S
from agegender.model.checkpoint import load_checkpoint
from agegender.training.losses import prior_logit_shift

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "logit_adjust.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("logit_adjust", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_expected_age_by_hand(script) -> None:
    logits = np.zeros((2, 1, 3))  # two views of one image, three age bins
    assert script.expected_age(logits, np.array([0.0, np.log(2.0), 0.0]))[0] == pytest.approx(1.0)
    skewed = np.array([[[0.0, 0.0, np.log(3.0)]], [[0.0, 0.0, 0.0]]])  # views 1.4 (0.2 0.2 0.6) and 1.0
    assert script.expected_age(skewed, np.zeros(3))[0] == pytest.approx(1.2)


def test_adjusts_the_head_bias_by_the_chosen_tau_and_records_it(script, face_dir: Path, tmp_path: Path,
                                                                tiny_train_argv, monkeypatch, capsys) -> None:
    from agegender.cli import main

    run = tmp_path / "run"
    assert main(tiny_train_argv(face_dir, run, "--age-loss", "dldl", "--flip-tta")) == 0
    out = tmp_path / "adjusted.pt"
    monkeypatch.setattr(sys, "argv", ["logit_adjust.py", "--model", str(run / "best.pt"), "--source", str(face_dir),
                                      "--taus", "0,0.5,1", "--min-group", "2", "--out", str(out)])
    script.main()
    printed = capsys.readouterr().out
    assert "$ python scripts/logit_adjust.py --model" in printed and printed.count("<- lowest balanced MAE") == 1
    before, after = load_checkpoint(run / "best.pt"), load_checkpoint(out)
    tau = after["calibration"]["logit_adjustment"]["tau"]
    assert tau in (0.0, 0.5, 1.0) and "age_interval" in after["calibration"]  # the interval refitted after
    records, split, _ = S.folder_split(before, face_dir)
    ages = np.array([r.age for r in S.select(records, split, "train")])
    key = next(k for k in before["model_state"] if k.startswith("age_head") and k.endswith("bias")
               and before["model_state"][k].numel() == 101)
    shift = after["model_state"][key] - before["model_state"][key]
    torch.testing.assert_close(shift, torch.from_numpy(-prior_logit_shift(ages, 101, tau)).float())
    others = [k for k in before["model_state"] if k != key]
    assert all(torch.equal(before["model_state"][k], after["model_state"][k]) for k in others)
