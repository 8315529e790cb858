"""MTCNN detection and UTKFace alignment, on real photos: the bundled astronaut.png, and UTKFace crops where
AGEGENDER_TEST_DATA points to the dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender.faces.align import UTKFACE_TEMPLATE, align, estimate_template, similarity_transform
from agegender.faces.boxes import nms
from agegender.faces.detect import Face, FaceDetector

ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"
GREY = (128, 128, 128)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The cascade is hundreds of tiny ops; on a shared CPU, OpenMP threads waiting for each other make it ~20x
    # slower than a single thread.
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.open(ASTRONAUT).convert("RGB")


@pytest.fixture(scope="module")
def astronaut_face(detector, astronaut) -> Face:
    faces = detector.detect(astronaut)
    assert faces
    return faces[0]


def utkface_crop() -> Image.Image:
    value = os.environ.get("AGEGENDER_TEST_DATA")
    if not value:
        pytest.skip("AGEGENDER_TEST_DATA is not set: needs real UTKFace crops")
    names = sorted(p.name for p in Path(value).iterdir() if p.name.endswith(".jpg.chip.jpg"))
    if not names:
        pytest.skip(f"no UTKFace crops (*.jpg.chip.jpg) in AGEGENDER_TEST_DATA={value}")
    return Image.open(Path(value) / names[len(names) // 2]).convert("RGB")


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


# --------------------------------------------------------------------------- networks and weights


@pytest.mark.parametrize(
    ("net", "name", "count"), [("PNet", "pnet", 6_632), ("RNet", "rnet", 100_178), ("ONet", "onet", 389_040)]
)
def test_weights_load_strictly(net, name, count):
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    from agegender.faces import mtcnn_torch

    module = getattr(mtcnn_torch, net)()
    module.load_state_dict(torch.load(mtcnn_torch.WEIGHTS_DIR / f"{name}.pt", weights_only=True), strict=True)
    assert sum(p.numel() for p in module.parameters()) == count


def test_network_output_shapes():
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    from agegender.faces.mtcnn_torch import ONet, PNet, RNet
    net_p, net_r, net_o = PNet(), RNet(), ONet()
    offsets, probs = net_p(torch.zeros(1, 3, 30, 40))
    assert offsets.shape == (1, 4, 10, 15) and probs.shape == (1, 10, 15)
    assert [t.shape for t in net_r(torch.zeros(2, 3, 24, 24))] == [(2, 4), (2,)]
    assert [t.shape for t in net_o(torch.zeros(2, 3, 48, 48))] == [(2, 4), (2, 10), (2,)]


# --------------------------------------------------------------------------- detection


def test_astronaut_has_one_confident_face(detector, astronaut, astronaut_face):
    faces = detector.detect(astronaut)
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    assert len([f for f in faces if f.score > 0.95]) == 1
    face = astronaut_face
    x1, y1, x2, y2 = face.box
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512
    assert 60 < x2 - x1 < 200  # her face is about 90 px wide in the 512 px photo
    assert len(face.landmarks) == 5
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
    for x, y in (face.landmarks[0], face.landmarks[1]):
        assert x1 <= x <= x2 and y1 <= y <= (y1 + y2) / 2
    assert lx < rx and mlx < mrx
    assert lx < nx < rx
    assert max(ly, ry) < ny < min(mly, mry)


def test_numpy_input_matches_pil(detector, astronaut, astronaut_face):
    faces = detector.detect(np.asarray(astronaut))
    assert faces[0].box == pytest.approx(astronaut_face.box)
    assert np.allclose(faces[0].landmarks, astronaut_face.landmarks)


def test_downscaled_detection_maps_back(astronaut, astronaut_face):
    faces = FaceDetector(max_side=256).detect(astronaut)
    assert faces and faces[0].score > 0.95
    # Coordinates come back in the 512 px frame; the half-size detection is only a few pixels off.
    assert np.abs(np.subtract(faces[0].box, astronaut_face.box)).max() < 12
    assert np.abs(np.subtract(faces[0].landmarks, astronaut_face.landmarks)).max() < 6


@pytest.mark.parametrize("value", [0, 255, 128])
def test_uniform_image_has_no_face(detector, value):
    assert detector.detect(Image.new("RGB", (320, 240), (value,) * 3)) == []


def test_greyscale_and_small_images(detector, astronaut, astronaut_face):
    # Without colour she is still the one face, found where the colour photo has her (a pixel or two off).
    colour = detector.detect(astronaut)
    grey = astronaut.convert("L")
    faces = detector.detect(grey)
    assert len(faces) == len(colour) and faces[0].score > 0.95
    assert np.abs(np.subtract(faces[0].box, astronaut_face.box)).max() < 5
    assert np.abs(np.subtract(faces[0].landmarks, astronaut_face.landmarks)).max() < 3
    # an (H, W) array is the same pixels as the "L" image: the same detections
    as_array = detector.detect(np.asarray(grey))
    assert len(as_array) == len(faces) and np.allclose([f.box for f in as_array], [f.box for f in faces])
    assert np.allclose([f.landmarks for f in as_array], [f.landmarks for f in faces])
    # At 64x48 her face is about 11 px wide, under the default min_face_size of 20: nothing is found.
    assert detector.detect(astronaut.resize((64, 48))) == []
    assert detector.detect(Image.new("RGB", (5, 5))) == []  # smaller than P-Net's window: no pyramid level


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_face_size": 0}, r"min_face_size must be a positive number of pixels, got 0"),
        ({"thresholds": (0.6, 0.7)}, r"thresholds must be three probabilities in \[0, 1\], got \(0\.6, 0\.7\)"),
        ({"thresholds": (0.6, 0.7, 1.5)}, r"thresholds must be three probabilities in \[0, 1\], got .*1\.5"),
        ({"factor": 1.0}, r"factor must lie strictly between 0 and 1, got 1\.0"),
        ({"factor": 0.0}, r"factor must lie strictly between 0 and 1, got 0\.0"),
        ({"max_side": 5}, r"max_side must be None or an integer >= 12, got 5"),
    ],
)
def test_bad_detector_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FaceDetector(**kwargs)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((10, 10, 3), np.float32), r"image array must be uint8, got float32"),
        (np.zeros((10, 10, 2), np.uint8), r"image array must have shape \(H, W.*, got \(10, 10, 2\)"),
        (np.zeros((0, 10, 3), np.uint8), r"image is empty \(10x0\)"),
        ("a.jpg", r"image must be a PIL image or a numpy array, got str"),
    ],
)
def test_bad_images(detector, image, match):
    with pytest.raises(ValueError, match=match):
        detector.detect(image)


# --------------------------------------------------------------------------- alignment


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = np.radians(23.0), 1.7, np.array([12.5, -40.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rotation.T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-6)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-6)


def test_similarity_transform_never_reflects():
    # A mirror image is best matched by a reflection; the fit must settle for a rotation instead.
    src = np.random.default_rng(1).normal(size=(5, 2)) * [3.0, 1.0]
    matrix = similarity_transform(src, src * [-1.0, 1.0])
    assert np.linalg.det(matrix[:, :2]) > 0


def test_similarity_transform_rejects_degenerate_points():
    with pytest.raises(ValueError, match="source points all coincide; no transform is defined"):
        similarity_transform(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"need two matching \(N, 2\) point arrays .* got \(5, 2\) and \(4, 2\)"):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))


def test_align_is_identity_on_template_landmarks(astronaut):
    crop = astronaut.crop((130, 20, 330, 220))
    out = align(crop, UTKFACE_TEMPLATE)
    assert out.size == (200, 200) and out.mode == "RGB"
    assert mean_abs_diff(out, crop) < 0.5
    # At another size the template scales with it: the same as a bilinear resize. At 400 px that is PIL's
    # (which, enlarging, does not smooth); at 100 px each output pixel sits between four input pixels, so a
    # bilinear resize is the mean of each 2x2 block.
    pixels = np.asarray(crop, dtype=np.float64)
    blocks = pixels.reshape(100, 2, 100, 2, 3).mean(axis=(1, 3))
    for size, resized in ((400, crop.resize((400, 400), Image.Resampling.BILINEAR)),
                          (100, Image.fromarray(np.floor(blocks + 0.5).astype(np.uint8)))):
        assert mean_abs_diff(align(crop, UTKFACE_TEMPLATE, size=size), resized) < 0.5


def test_align_bad_arguments(astronaut):
    with pytest.raises(ValueError, match=r"landmarks and template must have shape \(5, 2\), got \(4, 2\)"):
        align(astronaut, UTKFACE_TEMPLATE[:4])
    with pytest.raises(ValueError, match="size must be a positive integer, got 0"):
        align(astronaut, UTKFACE_TEMPLATE, size=0)


def test_align_frames_astronaut_like_utkface(astronaut, astronaut_face):
    out = align(astronaut, astronaut_face.landmarks)
    assert out.size == (200, 200)
    # The warp puts her landmarks close to the template: eyes level, face centred.
    matrix = similarity_transform(np.asarray(astronaut_face.landmarks), UTKFACE_TEMPLATE)
    moved = np.asarray(astronaut_face.landmarks) @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(moved - UTKFACE_TEMPLATE).max() < 10


@pytest.mark.real_data
def test_align_undoes_rotation(detector):
    crop = utkface_crop()
    canvas = Image.new("RGB", (400, 400), GREY)
    canvas.paste(crop, (100, 100))
    rotated = canvas.rotate(10, resample=Image.Resampling.BILINEAR, fillcolor=GREY)
    upright_face, rotated_face = detector.detect(canvas)[0], detector.detect(rotated)[0]
    matrix = similarity_transform(np.asarray(rotated_face.landmarks), np.asarray(upright_face.landmarks))
    assert np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])) == pytest.approx(10, abs=2)
    upright, restored = align(canvas, upright_face.landmarks), align(rotated, rotated_face.landmarks)
    unaligned = rotated.crop((100, 100, 300, 300))
    assert mean_abs_diff(restored, upright) < 15
    assert mean_abs_diff(restored, upright) < 0.5 * mean_abs_diff(unaligned, crop)


# --------------------------------------------------------------------------- template


def test_estimate_template_on_astronaut(detector, astronaut):
    crop = astronaut.crop((125, 15, 325, 215))
    template, count = estimate_template([crop, Image.new("RGB", (200, 200), GREY)], detector)
    assert count == 1 and template.shape == (5, 2)
    np.testing.assert_allclose(template, np.asarray(detector.detect(crop)[0].landmarks))
    with pytest.raises(ValueError, match="200x200"):
        estimate_template([astronaut], detector)
    with pytest.raises(ValueError, match="no face"):
        estimate_template([Image.new("RGB", (200, 200), GREY)], detector)


@pytest.mark.real_data
def test_template_matches_real_crops(detector):
    crop = utkface_crop()
    template, count = estimate_template([crop], detector)
    assert count == 1
    # One crop's landmarks sit within a few standard deviations (3-7 px) of the mean over 1978 crops.
    assert np.abs(template - UTKFACE_TEMPLATE).max() < 25


@pytest.mark.parametrize("k", [300, 2500])  # the all-pairs path and the one for crowded photos
def test_nms_matches_torchvision(k: int) -> None:
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(k)
    xy = rng.uniform(0, 400, (k, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (k, 2))], axis=1)
    scores = rng.random(k)
    for threshold in (0.3, 0.5, 0.7):
        want = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        assert np.array_equal(nms(boxes, scores, threshold), want)


def test_nms_min_overlap_removes_a_nested_box() -> None:
    # box 1 lies inside box 0: intersection over the smaller area (11 x 11 px with MTCNN's +1) is 1 > 0.7, while
    # the IoU is 100 / 400 = 0.25 and IoU keeps box 0; box 2 is apart.
    boxes = np.array([[0, 0, 20, 20], [5, 5, 15, 15], [40, 40, 50, 50.0]])
    scores = np.array([0.9, 0.95, 0.5])
    assert nms(boxes, scores, 0.7, overlap="min").tolist() == [1, 2]
    assert nms(boxes, scores, 0.7).tolist() == [1, 0, 2]
