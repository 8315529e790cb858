"""What the wheel carries and says: the ONNX files inference runs and no .pt weights, py.typed, the version from
agegender.__version__, and licence metadata that names the bundled model's terms; and an install without the .pt
still finds the bundled model (its ONNX export), while training from it says what to do."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import agegender
from agegender.errors import CheckpointError
from agegender.model import checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_wheel_carries_onnx_not_pt_and_names_the_model_terms(tmp_path: Path) -> None:
    setuptools = pytest.importorskip("setuptools", reason="building the wheel needs setuptools (the dev extra)")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 cannot read PEP 639 licence metadata")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, timeout=600, capture_output=True)
    (wheel,) = tmp_path.glob("agegender-*.whl")
    assert wheel.name.startswith(f"agegender-{agegender.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(".pt")]
    for needed in ("agegender/py.typed", "agegender/default_model.onnx", "agegender/weights/mtcnn/onet.onnx",
                   "agegender/serving/static/favicon.ico", "agegender/MODEL_CARD.md"):
        assert needed in names, needed
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: MIT AND LicenseRef-agegender-bundled-model" in metadata
    assert "License-File: MODEL_LICENSE.md" in metadata and "License-File: LICENSE" in metadata
    assert any(n.endswith("licenses/MODEL_LICENSE.md") for n in names)


def test_without_the_pt_the_bundled_model_is_its_onnx_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "BUNDLED_MODEL", tmp_path / "default_model.pt")  # as in an installed wheel
    assert checkpoint.resolve_model_path(None) == checkpoint.BUNDLED_ONNX
    assert checkpoint.resolve_model_path("bundled") == checkpoint.BUNDLED_ONNX
    with pytest.raises(CheckpointError, match=r"ONNX export.*pip install -e '\.\[train\]' in a clone"):
        checkpoint.load_checkpoint(checkpoint.BUNDLED_ONNX)  # what train --init bundled reads
    from agegender.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint.resolve_model_path(None))
    assert predictor.source == checkpoint.BUNDLED_ONNX


def test_changelog_names_the_version_source() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "agegender.__version__" in text and "## Unreleased" in text
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()
