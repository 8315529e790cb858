"""The onnxruntime path (the default) against the torch path, on real images: the bundled model's predictions,
MTCNN's detections, preprocessing and alignment. Real UTKFace crops where AGEGENDER_TEST_DATA is set, else the
example photo's face."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")

import torch
from PIL import Image

from agegender.faces.align import align, similarity_transform, warp_affine
from agegender.faces.detect import FaceDetector
from agegender.inference.predictor import Predictor
from agegender.inference.preprocess import normalise, resize_crop
from agegender.model.checkpoint import BUNDLED_MODEL, BUNDLED_ONNX
from agegender.model.config import PresetConfig
from agegender.model.onnx import OnnxModel

ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"
AGE_TOLERANCE, P_TOLERANCE = 0.05, 0.005  # years, probability: the bar for "the same predictions"

pytestmark = pytest.mark.skipif(not BUNDLED_ONNX.is_file(), reason="no bundled model in this checkout")


def real_crops(n: int = 24) -> list[Image.Image]:
    """UTKFace crops spread over the ages, or crops and mirror images around the astronaut's face."""
    folder = os.environ.get("AGEGENDER_TEST_DATA")
    if folder:
        names = sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".jpg.chip.jpg"))
        return [Image.open(Path(folder) / name).convert("RGB") for name in names[:: len(names) // n][:n]]
    photo = Image.open(ASTRONAUT).convert("RGB")
    crops = [photo.crop((150 - d, 20 - d // 2, 300 + d, 190 + d)) for d in (0, 10, 20, 30, 40)]
    return crops + [c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for c in crops]


def photos(crops: list[Image.Image]) -> list[Image.Image]:
    """Each crop pasted into a larger noisy canvas at an offset and a scale: one face per photo."""
    rng = np.random.default_rng(0)
    out = []
    for i, crop in enumerate(crops[:8]):
        side = int(crop.width * (0.8 + 0.2 * (i % 4)))
        canvas = Image.fromarray(rng.integers(90, 160, (360, 480, 3), dtype=np.uint8))
        canvas.paste(crop.resize((side, side)), (40 + 20 * i, 30 + 5 * i))
        out.append(canvas)
    return [Image.open(ASTRONAUT).convert("RGB"), *out]


@pytest.fixture(scope="module")
def both() -> tuple[Predictor, Predictor]:
    torch.set_num_threads(1)  # the cascade's many small ops are slower with threads on a shared machine
    onnx = Predictor.default()
    reference = Predictor.from_checkpoint(BUNDLED_MODEL, runtime="torch", detector=FaceDetector(runtime="torch"))
    assert isinstance(onnx.model, OnnxModel) and not isinstance(reference.model, OnnxModel)
    return onnx, reference


def test_bundled_onnx_matches_torch_on_real_crops(both: tuple[Predictor, Predictor]) -> None:
    onnx, reference = both
    assert onnx.flip_tta and reference.flip_tta and onnx.interval_scale == reference.interval_scale
    crops = real_crops()
    got, want = onnx.predict(crops), reference.predict(crops)
    ages = np.array([p.age for p in want])
    assert ages.std() > 3  # different faces, different answers: the comparison is not one of constants
    assert np.abs(np.array([p.age for p in got]) - ages).max() < AGE_TOLERANCE
    assert np.abs(np.array([p.p_female for p in got]) - np.array([p.p_female for p in want])).max() < P_TOLERANCE
    assert [p.gender for p in got] == [p.gender for p in want]


def test_bundled_onnx_matches_torch_on_photos(both: tuple[Predictor, Predictor]) -> None:
    onnx, reference = both
    pictures = photos(real_crops())
    got, want = onnx.predict_faces(pictures), reference.predict_faces(pictures)
    assert [len(f) for f in got] == [len(f) for f in want] and sum(map(len, want)) >= len(pictures) - 1
    for faces_got, faces_want in zip(got, want, strict=True):
        for a, b in zip(faces_got, faces_want, strict=True):
            assert np.abs(np.subtract(a.box, b.box)).max() < 0.01
            assert abs(a.prediction.age - b.prediction.age) < AGE_TOLERANCE
            assert abs(a.prediction.p_female - b.prediction.p_female) < P_TOLERANCE


def test_mtcnn_onnx_matches_torch_detections(both: tuple[Predictor, Predictor]) -> None:
    onnx, reference = both
    for picture in photos(real_crops()):
        a, b = onnx.detector.detect(picture), reference.detector.detect(picture)
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert abs(x.score - y.score) < 1e-4
            assert np.abs(np.subtract(x.box, y.box)).max() < 0.01
            assert np.abs(np.subtract(x.landmarks, y.landmarks)).max() < 0.01


def test_numpy_preprocessing_equals_torchvision() -> None:
    """The one preprocessing path gives the pixels torchvision's Resize + CenterCrop + ToDtype + Normalize gave
    (the training pipeline), on real crops and on odd shapes."""
    from torchvision.transforms import v2 as T

    for cfg in (PresetConfig(112, 0.9), PresetConfig(32, 0.875), PresetConfig(24, 1.0), PresetConfig(32, 1.25)):
        reference = T.Compose([T.Resize(cfg.resize_size, antialias=True), T.CenterCrop(cfg.image_size), T.ToImage(),
                               T.ToDtype(torch.float32, scale=True), T.Normalize(cfg.mean, cfg.std)])
        rng = np.random.default_rng(0)
        images = real_crops(6) + [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                                  for h, w in ((50, 80), (90, 30), (121, 120))]
        ours = normalise(np.stack([resize_crop(im, cfg) for im in images]), cfg)
        want = torch.stack([reference(im) for im in images]).numpy()
        assert ours.dtype == np.float32 and ours.shape == want.shape
        np.testing.assert_allclose(ours, want, atol=1e-5)


def test_align_matches_opencv_within_one_grey_level() -> None:
    cv2 = pytest.importorskip("cv2", reason="OpenCV (the previous warp) is not installed")
    pixels = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    rng = np.random.default_rng(0)
    for _ in range(12):
        angle, scale, shift = rng.uniform(-0.5, 0.5), rng.uniform(0.3, 3), rng.uniform(-300, 300, 2)
        matrix = np.array([[scale * np.cos(angle), -scale * np.sin(angle), shift[0]],
                           [scale * np.sin(angle), scale * np.cos(angle), shift[1]]])
        ours = warp_affine(pixels, matrix, 200).astype(int)
        theirs = cv2.warpAffine(pixels, matrix, (200, 200), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE).astype(int)
        assert np.abs(ours - theirs).max() <= 1 and abs((ours - theirs).mean()) < 0.01
    landmarks = FaceDetector().detect(Image.fromarray(pixels))[0].landmarks
    matrix = similarity_transform(np.asarray(landmarks), np.asarray([[59.52, 57.77], [138.66, 58.02], [98.33, 104.28],
                                                                      [63.97, 138.76], [133.55, 138.84]]))
    theirs = cv2.warpAffine(pixels, matrix, (200, 200), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    assert np.abs(np.asarray(align(pixels, landmarks), int) - theirs.astype(int)).max() <= 1
