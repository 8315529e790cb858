"""The shipped ONNX files are exports of the torch weights beside them (scripts/export_bundled.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agegender.compute.runtime import session
from agegender.faces.detect import WEIGHTS_DIR
from agegender.model.checkpoint import BUNDLED_MODEL, BUNDLED_ONNX
from agegender.model.onnx import SOURCE_KEY, OnnxModel

FIX = "a source changed without its export: run python scripts/export_bundled.py and commit what it writes"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="no bundled model in this checkout")
def test_bundled_onnx_is_the_export_of_the_bundled_checkpoint() -> None:
    model = OnnxModel(BUNDLED_ONNX)
    assert model.metadata[SOURCE_KEY] == sha256(BUNDLED_MODEL), FIX
    info = model.checkpoint_like()
    # What the service's model card and the predictor read travels in the file.
    assert info["inference"] == {"flip_tta": True} and "age_interval" in info["calibration"]
    assert info["training"]["epoch"] >= 1 and "history" not in info["training"]
    assert info["labels"]["gender"] == ["male", "female"]


@pytest.mark.parametrize("name", ["pnet", "rnet", "onet"])
def test_mtcnn_onnx_files_are_exports_of_the_vendored_weights(name: str) -> None:
    meta = session(WEIGHTS_DIR / f"{name}.onnx").get_modelmeta().custom_metadata_map
    assert meta[SOURCE_KEY] == sha256(WEIGHTS_DIR / f"{name}.pt"), FIX
