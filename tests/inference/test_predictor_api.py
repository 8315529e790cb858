"""The Python front door on the bundled model (its ONNX export) and the example photo: one call for one image, the
face's fields on the face, OpenCV's channel order, and clear answers to the usual mistakes."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender import Predictor
from agegender.compute.runtime import CPU, CUDA, providers_for
from agegender.inference.annotate import draw_faces
from agegender.inference.results import FacePrediction, Prediction

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.default()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.asarray(Image.open(EXAMPLE).convert("RGB"))


def test_one_call_for_one_image_in_any_form(predictor: Predictor, rgb: np.ndarray) -> None:
    (face,) = predictor.predict_image(EXAMPLE)
    assert face.gender == "female" and face.age == face.prediction.age and face.p_female == face.prediction.p_female
    assert face.age_low < face.age < face.age_high and face.age_sigma > 0 and face.det_score > 0.99
    x1, y1, x2, y2 = face.box
    assert 150 < x1 < x2 < 300 and 25 < y1 < y2 < 205
    for same in (str(EXAMPLE), EXAMPLE.read_bytes(), Image.open(EXAMPLE), rgb):
        (other,) = predictor.predict_image(same)
        assert other.age == pytest.approx(face.age, abs=1e-4) and other.box == pytest.approx(face.box, abs=1e-3)


def test_opencv_arrays_with_channels_bgr(predictor: Predictor, rgb: np.ndarray) -> None:
    bgr = np.ascontiguousarray(rgb[..., ::-1])  # what cv2.imread gives
    (right,) = predictor.predict_image(rgb)
    (told,) = predictor.predict_image(bgr, channels="bgr")
    (untold,) = predictor.predict_image(bgr)
    assert told.age == pytest.approx(right.age, abs=1e-4) and told.p_female == pytest.approx(right.p_female)
    assert abs(untold.age - right.age) > 0.5  # the mistake the option is for: BGR taken as RGB answers otherwise
    (listed,) = predictor.predict_faces([bgr], channels="bgr")
    assert listed[0].age == pytest.approx(right.age, abs=1e-4)
    with pytest.raises(ValueError, match="channels must be 'rgb' or 'bgr'"):
        predictor.predict_image(rgb, channels="hsv")


def test_one_image_where_a_list_belongs_says_what_to_call(predictor: Predictor, rgb: np.ndarray) -> None:
    for method in (predictor.predict_faces, predictor.predict_photos, predictor.predict):
        for single in (str(EXAMPLE), EXAMPLE, EXAMPLE.read_bytes(), rgb):
            with pytest.raises(TypeError, match=r"takes a list of images, got one .*predict_image\(image\)"):
                method(single)
    with pytest.raises(TypeError, match="expected one image"):
        predictor.predict_image([EXAMPLE])


def test_predict_on_a_whole_photo_warns_and_says_how_to_detect(predictor: Predictor, rgb: np.ndarray) -> None:
    with pytest.warns(UserWarning, match=r"looks like a whole photo.*predict_image\(photo\)"):
        predictor.predict([EXAMPLE])
    crop = Image.open(EXAMPLE).crop((150, 25, 300, 205)).resize((200, 200))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor.predict([crop])  # a face crop: no warning
        predictor.predict([EXAMPLE], warn_uncropped=False)


def test_providers_for_each_device() -> None:
    assert providers_for("cpu", [CUDA, CPU]) == [CPU]
    assert providers_for("auto", [CPU]) == [CPU] and providers_for("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert providers_for("cuda", [CUDA, CPU]) == [(CUDA, {"device_id": 0}), CPU]
    assert providers_for(" cuda:2 ", [CUDA, CPU]) == [(CUDA, {"device_id": 2}), CPU]
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="no CUDA provider"):
            providers_for(device, [CPU])
    for device in ("banana", "gpu", "cuda:x", "mps", ""):
        with pytest.raises(ValueError, match="unknown device"):
            providers_for(device, [CUDA, CPU])


def test_a_named_device_that_does_not_start_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # onnxruntime falls back to the CPU in silence when CUDA cannot start (no driver, no GPU): a session asked for
    # CUDA by name must not.
    import onnxruntime

    from agegender.compute import runtime
    from agegender.model.checkpoint import BUNDLED_ONNX

    real = onnxruntime.InferenceSession

    def cpu_only(path, options, providers):
        return real(path, options, providers=[CPU])

    monkeypatch.setattr(onnxruntime, "InferenceSession", cpu_only)
    with pytest.raises(ValueError, match="CUDAExecutionProvider could not start"):
        runtime.session(BUNDLED_ONNX, 1, [(CUDA, {"device_id": 0}), CPU])
    assert runtime.session(BUNDLED_ONNX, 1, [CUDA, CPU]).get_providers() == [CPU]  # auto: the CPU will do


def test_labels_stay_inside_the_picture() -> None:
    image = Image.new("RGB", (200, 120), (0, 0, 0))
    pred = Prediction(34.0, "female", 0.97, 29.0, 39.0, 3.0)
    at_right = FacePrediction(0, (170.0, 5.0, 199.0, 40.0), 0.99, ((180.0, 15.0),) * 5, pred)
    drawn = np.asarray(draw_faces(image, [at_right]))
    label = np.all(drawn == (230, 60, 140), axis=2)  # the label's background, in the female colour
    cols, rows = np.nonzero(label.T)
    assert cols.min() < 150 and cols.max() <= 199 and rows.min() >= 0  # shifted left, not cut at the edge
