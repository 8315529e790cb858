"""Model files that load but cannot predict (issue 27, defect 12): each is refused when it is loaded, with one line
and exit 2 (``serve`` then never starts), and a model whose numbers are no estimate for some input costs that
input an error row or answer instead of being written as a result. Small ONNX graphs made at test time."""

from __future__ import annotations

import json
import logging
import os
import resource
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx", reason="making test models needs the onnx package")
from onnx import TensorProto, helper  # noqa: E402

from agegender.cli import main  # noqa: E402
from agegender.errors import CheckpointError  # noqa: E402
from agegender.model.checkpoint import BUNDLED_ONNX  # noqa: E402
from agegender.model.onnx import CONFIG_KEY, OnnxModel  # noqa: E402

ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"
SIZE = 32


def fake_model(path: Path, *, graph_size: int = SIZE, metadata_size: int = SIZE, age: str = "plain",
               sigma: str = "plain") -> Path:
    """An agegender-shaped ONNX model whose outputs follow the batch's mean ``m`` (normalised pixels):
    ``age`` plain ``30 + m``, "double" (two numbers per image), "sqrt" (``sqrt(m)``: NaN for a dark image, 0 for
    the zeros of a dummy batch), "nan" (``sqrt(-|m|)``: NaN for any image but zeros); ``sigma`` plain ``4 + m`` or
    "negative" (``m - 1``)."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, graph_size, graph_size])
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
               for n in ("age", "age_sigma", "p_female", "gender_logit")]
    consts = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("c30", 30.0), ("c4", 4.0),
                                                                           ("c1", 1.0))]
    nodes = [helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=0)]
    nodes += {"plain": [helper.make_node("Add", ["m", "c30"], ["age"])],
              "double": [helper.make_node("Add", ["m", "c30"], ["a1"]),
                         helper.make_node("Concat", ["a1", "a1"], ["age"], axis=0)],
              "sqrt": [helper.make_node("Sqrt", ["m"], ["age"])],
              "nan": [helper.make_node("Abs", ["m"], ["a1"]), helper.make_node("Neg", ["a1"], ["a2"]),
                      helper.make_node("Sqrt", ["a2"], ["age"])]}[age]
    nodes += {"plain": [helper.make_node("Add", ["m", "c4"], ["age_sigma"])],
              "negative": [helper.make_node("Sub", ["m", "c1"], ["age_sigma"])]}[sigma]
    nodes += [helper.make_node("Identity", ["m"], ["gender_logit"]), helper.make_node("Sigmoid", ["m"], ["p_female"])]
    graph = helper.make_graph(nodes, "fake", [image], outputs, initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    config = json.loads(OnnxModel(BUNDLED_ONNX).metadata[CONFIG_KEY]) | {"image_size": metadata_size}
    model.metadata_props.append(onnx.StringStringEntryProto(key=CONFIG_KEY, value=json.dumps(config)))
    onnx.save_model(model, str(path))
    return path


def test_a_plain_fake_model_predicts(tmp_path: Path) -> None:
    model = OnnxModel(fake_model(tmp_path / "ok.onnx"))
    assert model(np.zeros((3, 3, SIZE, SIZE), np.float32))["age"].tolist() == [30.0] * 3


@pytest.mark.parametrize("kind, options, message", [
    ("geometry", {"metadata_size": 1024}, "its graph takes images of [3, 32, 32], its metadata says [3, 1024, 1024]"),
    ("two ages per image", {"age": "double"}, "its output 'age' is [4] for a batch of two images"),
    ("negative spread", {"sigma": "negative"}, "its age spread (age_sigma) is negative"),
])
def test_a_model_that_cannot_predict_is_refused_at_load(tmp_path: Path, kind: str, options: dict, message: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    path = fake_model(tmp_path / "m.onnx", **options)
    with pytest.raises(CheckpointError, match="cannot predict"):
        OnnxModel(path)
    for argv in (["predict", str(ASTRONAUT), "--out", str(tmp_path / "p.csv")], ["serve", "--port", "0"]):
        caplog.clear()
        assert main([*argv, "--model", str(path), "-q"]) == 2, (kind, argv)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and message in errors[0], (kind, errors)
    assert not (tmp_path / "p.csv").exists()


def test_numbers_that_are_no_estimate_cost_their_input_an_error_row(tmp_path: Path) -> None:
    crops = tmp_path / "crops"
    crops.mkdir()
    Image.new("RGB", (SIZE, SIZE), (250, 250, 250)).save(crops / "bright.png")
    Image.new("RGB", (SIZE, SIZE), (5, 5, 5)).save(crops / "dark.png")  # sqrt of a negative mean: NaN
    out = tmp_path / "p.csv"
    assert main(["predict", str(crops), "--aligned", "--model", str(fake_model(tmp_path / "m.onnx", age="sqrt")),
                 "--out", str(out), "--batch-size", "2", "-q"]) == 1
    rows = pd.read_csv(out, keep_default_na=False).set_index(pd.read_csv(out)["file"].map(lambda f: Path(f).name))
    assert rows.loc["bright.png", "status"] == "ok" and float(rows.loc["bright.png", "age"]) > 0
    assert rows.loc["dark.png", "status"] == "error" and rows.loc["dark.png", "age"] == ""
    assert "the model's output is no estimate" in rows.loc["dark.png", "error"]


def test_the_service_answers_such_a_photo_with_its_own_error(tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="the serve extras are not installed")
    from fastapi.testclient import TestClient

    from agegender.inference.predictor import Predictor
    from agegender.serving.app import create_app

    predictor = Predictor.from_checkpoint(fake_model(tmp_path / "m.onnx", age="nan"))
    with TestClient(create_app(predictor)) as client:
        r = client.post("/v1/predict", content=ASTRONAUT.read_bytes(), headers={"Content-Type": "image/png"})
        assert r.status_code == 500 and r.json()["error"] == "model_output", r.text
        assert client.get("/healthz").status_code == 200


def test_weights_in_an_external_file_are_not_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 4 GB sparse external-data file beside an .onnx took over 6 GB at load."""
    model = onnx.load(str(BUNDLED_ONNX))
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                    size_threshold=0)
    os.truncate(tmp_path / "w.bin", 4 * 2**30)  # sparse: 4 GB that take no disk
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert main(["predict", str(ASTRONAUT), "--model", str(path), "--out", str(tmp_path / "p.csv"), "-q"]) == 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # kB: nothing of it was read
    assert "weights are in separate files (external data), which are not loaded" in caplog.text
