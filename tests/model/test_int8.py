"""benchmarks/int8.py's quantisation on the tiny trained run's export: the int8 file keeps the named outputs and the
model's metadata (so a Predictor reads it like any export), really holds int8 weights, and stays close to float32."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime.quantization", reason="onnxruntime's quantisation tools are not installed")
pytest.importorskip("torch", reason="exporting the tiny run needs torch")

from agegender.inference.predictor import Predictor, _exported  # noqa: E402
from agegender.model.onnx import OnnxModel  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "int8.py"


@pytest.fixture(scope="module")
def int8():
    spec = importlib.util.spec_from_file_location("int8_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_quantise_writes_an_int8_export_a_predictor_can_run(int8, trained_run: Path, tmp_path: Path) -> None:
    import onnx

    fp32 = _exported(trained_run / "best.pt")
    model = OnnxModel(fp32)
    size = model.config.image_size
    batches = [np.random.default_rng(i).standard_normal((8, 3, size, size), dtype=np.float32) for i in range(4)]
    dest = tmp_path / "q.onnx"
    int8.quantise(fp32, dest, batches)

    graph = onnx.load(str(dest))
    ops = {n.op_type for n in graph.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.graph.initializer)
    assert not (tmp_path / "q.pre.onnx").exists()  # the intermediate file is removed

    quantised = OnnxModel(dest)
    assert quantised.config == model.config  # the metadata came along
    a, b = model(batches[0]), quantised(batches[0])
    assert set(b) == {"age", "age_sigma", "gender_logit"} and b["age"].shape == (8,)
    assert np.all(np.isfinite(b["age"])) and np.abs(a["age"] - b["age"]).max() < 5.0
    preds = Predictor.from_checkpoint(dest).predict([np.full((40, 40, 3), 128, np.uint8)])
    assert len(preds) == 1 and preds[0].age >= 0


def test_cpu_ms_per_image_times_the_network(int8, trained_run: Path) -> None:
    ms = int8.cpu_ms_per_image(_exported(trained_run / "best.pt"), batch=2, seconds=0.2)
    assert 0 < ms < 1000
