"""export, then predict and evaluate through onnxruntime: the same answers as torch."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from agegender.cli import main  # noqa: E402


def test_export_then_predict_and_evaluate_with_onnxruntime(trained_run: Path, face_dir: Path,
                                                           tmp_path: Path) -> None:
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--model", str(trained_run / "best.pt"), "--out", str(onnx_file), "-q"]) == 0
    outs = {}
    for name, extra in {"torch": [], "onnx_file": ["--model", str(onnx_file)],
                        "onnx_runtime": ["--runtime", "onnx"]}.items():
        model = [] if extra[:1] == ["--model"] else ["--model", str(trained_run / "best.pt")]
        out = tmp_path / f"{name}.csv"
        assert main(["predict", *model, *extra, str(face_dir), "--out", str(out), "--aligned", "-q"]) == 0
        outs[name] = pd.read_csv(out).sort_values("file").reset_index(drop=True)
    for name in ("onnx_file", "onnx_runtime"):
        assert (outs[name]["age"] - outs["torch"]["age"]).abs().max() < 0.01
        assert (outs[name]["p_female"] - outs["torch"]["p_female"]).abs().max() < 1e-3
        # the calibrated interval travels in the ONNX metadata
        assert (outs[name]["age_high"] - outs["torch"]["age_high"]).abs().max() < 0.02
    report = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(onnx_file), "--data", str(face_dir), "--out", str(report),
                 "--workers", "1", "-q"]) == 0
    assert json.loads(report.read_text())["n"] == len(outs["torch"])
