"""ONNX export: graph names, dynamic batch, metadata round trip and parity with the torch model on real images."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")

import torch
from PIL import Image, ImageOps

from agegender.errors import CheckpointError
from agegender.inference.predictor import Predictor
from agegender.model.config import ModelConfig
from agegender.model.export import export_onnx
from agegender.model.network import AgeGenderNet
from agegender.model.onnx import OUTPUT_NAMES, OnnxModel
from agegender.training.transforms import eval_preset

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

log = logging.getLogger(__name__)

SIZE = 48
ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"
CALIBRATION = {"age_interval": {"scale": 1.7, "coverage": 0.8}}


def _real_images(n: int = 8) -> list[Image.Image]:
    """``n`` UTKFace crops spread over the ages where AGEGENDER_TEST_DATA is set, else crops and mirror images
    of the astronaut portrait around her face."""
    folder = os.environ.get("AGEGENDER_TEST_DATA")
    if folder:
        names = sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".jpg.chip.jpg"))
        if len(names) >= n:
            step = len(names) // n  # names sort by age, so this spans the ages
            return [Image.open(Path(folder) / name).convert("RGB") for name in names[::step][:n]]
    photo = Image.open(ASTRONAUT).convert("RGB")
    boxes = [(150, 20, 300, 190), (130, 0, 320, 210), (160, 40, 290, 170), (110, 0, 340, 240)]
    crops = [photo.crop(box) for box in boxes]
    return (crops + [ImageOps.mirror(c) for c in crops])[:n]


@pytest.fixture(scope="module")
def real_batch() -> torch.Tensor:
    """``[8, 3, SIZE, SIZE]``, preprocessed exactly as the Predictor does."""
    cfg = ModelConfig(backbone="mobilenet_v2", image_size=SIZE)
    transform = eval_preset(cfg.preset)
    return torch.stack([transform(im) for im in _real_images()])


# A fitted-looking quantile map: stretches the middle, flattens near 60, slope 1 beyond the ends.
AGE_MAP = {"x": [5.0, 20.0, 40.0, 60.0, 61.0], "y": [2.0, 15.0, 45.0, 70.0, 70.0]}


def _tiny_model(variant: str, batch: torch.Tensor) -> AgeGenderNet:
    torch.manual_seed(0)
    age_head, _, mapped = variant.partition("+")
    model = AgeGenderNet(ModelConfig(backbone="mobilenet_v2", image_size=SIZE, age_head=age_head,
                                     age_map=AGE_MAP if mapped else None))
    # A freshly initialised MobileNet shrinks activations ~1e9-fold by the last layer, so every image would get
    # the same output and parity would be checked on constants. BatchNorm statistics taken from the real batch
    # give activations of a trained network's scale, and outputs that differ between images.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass sets the batch's statistics
    model.train()
    with torch.no_grad():
        model(batch)
        # Larger last-layer weights spread the outputs over many years and most of [0, 1] like a trained model's,
        # which makes the absolute tolerances below a stricter test.
        model.age_head[-1].weight.mul_(10)
        model.gender_head[-1].weight.mul_(10)
    return model.eval()


@pytest.fixture(scope="module", params=["regression", "dldl", "dldl+map"])
def exported(request: pytest.FixtureRequest, real_batch: torch.Tensor,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[AgeGenderNet, Path]:
    model = _tiny_model(request.param, real_batch)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", metadata={"calibration": CALIBRATION})
    return model, path


def test_graph_has_named_input_outputs_and_dynamic_batch(exported: tuple[AgeGenderNet, Path]) -> None:
    _, path = exported
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # symbolic batch axis
    assert [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no temporary file left behind

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        outputs = session.run(None, {"image": np.zeros((n, 3, SIZE, SIZE), np.float32)})
        assert [o.shape for o in outputs] == [(n,)] * len(OUTPUT_NAMES)


def test_metadata_round_trip(exported: tuple[AgeGenderNet, Path]) -> None:
    model, path = exported
    onnx_model = OnnxModel(path, threads=1)
    assert onnx_model.config == model.config
    meta = onnx_model.metadata
    assert int(meta["image_size"]) == SIZE
    assert float(meta["crop_pct"]) == model.config.crop_pct
    assert tuple(json.loads(meta["mean"])) == model.config.mean
    assert tuple(json.loads(meta["std"])) == model.config.std
    assert json.loads(meta["calibration"]) == CALIBRATION
    assert onnx_model.eval() is onnx_model and onnx_model.to("cpu") is onnx_model


def test_parity_with_torch_on_real_batch(exported: tuple[AgeGenderNet, Path], real_batch: torch.Tensor) -> None:
    model, path = exported
    with torch.no_grad():
        ref = model(real_batch)
    ref_p = torch.sigmoid(ref["gender_logit"]).numpy()
    # The images must get different outputs, or parity would hold trivially.
    assert ref["age"].std() > 1 and ref_p.std() > 0.05

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(OUTPUT_NAMES, session.run(None, {"image": real_batch.numpy()}), strict=True))
    age_diff = float(np.abs(got["age"] - ref["age"].numpy()).max())
    p_diff = float(np.abs(got["p_female"] - ref_p).max())
    log.info("%s head: max |age diff| %.2e years, max |p_female diff| %.2e", model.config.age_head, age_diff, p_diff)
    assert age_diff < 0.01
    assert p_diff < 1e-3
    np.testing.assert_allclose(got["age_sigma"], ref["age_sigma"].numpy(), atol=0.01)
    np.testing.assert_allclose(got["gender_logit"], ref["gender_logit"].numpy(), atol=1e-3)

    # OnnxModel stands in for the torch model in the Predictor, mirror averaging included.
    onnx_model = OnnxModel(path, threads=1)
    for flip_tta in (False, True):
        want = Predictor(model, flip_tta=flip_tta).predict_tensor(real_batch)
        have = Predictor(onnx_model, flip_tta=flip_tta).predict_tensor(real_batch)
        assert set(have) == set(want)
        np.testing.assert_allclose(have["age"], want["age"], atol=0.01)
        np.testing.assert_allclose(have["p_female"], want["p_female"], atol=1e-3)


def test_export_keeps_the_model_mode_and_refuses_reserved_metadata(exported: tuple[AgeGenderNet, Path],
                                                                   tmp_path: Path) -> None:
    model, _ = exported
    assert not model.training  # exported in eval mode by the fixture, and still in it
    model.train()
    try:
        export_onnx(model, tmp_path / "train_mode.onnx")
        assert model.training
    finally:
        model.eval()
    with pytest.raises(ValueError, match="reserved"):
        export_onnx(model, tmp_path / "bad.onnx", metadata={"image_size": 64})
    assert not (tmp_path / "bad.onnx").exists()


def test_missing_or_foreign_files_give_clear_errors(tmp_path: Path, exported: tuple[AgeGenderNet, Path]) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        OnnxModel(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        OnnxModel(tmp_path / "junk.onnx")
    # A valid ONNX file that export_onnx did not write
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "identity",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    foreign = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    foreign.ir_version = 8  # readable by any onnxruntime of the last years
    onnx.save(foreign, tmp_path / "foreign.onnx")
    with pytest.raises(CheckpointError, match="not an agegender ONNX export"):
        OnnxModel(tmp_path / "foreign.onnx")
    _, path = exported
    with pytest.raises(ValueError, match=rf"\[N, 3, {SIZE}, {SIZE}\]"):
        OnnxModel(path, threads=1)(torch.zeros(2, 3, SIZE + 1, SIZE + 1))
