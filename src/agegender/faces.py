"""Face detection (MTCNN) and similarity alignment to UTKFace's 200x200 framing.

The detector is MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional
Networks", 2016) as facenet-pytorch 2.6.0 runs it, re-implemented here so that its MIT-licensed weights
(``weights/mtcnn/``, see NOTICE.md there) load without that package. Three networks run in cascade: P-Net proposes
boxes over an image pyramid, R-Net rejects most of them, O-Net scores the rest and places five landmarks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torchvision.ops import nms

from agegender.images import ImageReadError, as_rgb_array, open_image
from agegender.sources import FACE_POLICIES

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights" / "mtcnn"

# Mean MTCNN landmarks (left eye, right eye, nose, mouth left, mouth right; x, y in pixels) on UTKFace's 200x200
# aligned crops, so that align() reproduces the dataset's framing on new photos. Obtained on 2026-11-28 with
#   nice -n 10 python scripts/estimate_template.py --data /work/shared/datasets/utkface --n 2000 --seed 0
# (FaceDetector defaults): a face was found in 1978 of the 2000 sampled crops; rounded to 0.01 px. The per-point
# standard deviation across crops was 3.2-3.5 px for the eyes, 5.4-5.6 px for the nose, 5.0-6.8 px for the mouth.
UTKFACE_TEMPLATE = np.array([[59.52, 57.77], [138.66, 58.02], [98.33, 104.28], [63.97, 138.76], [133.55, 138.84]])
UTKFACE_TEMPLATE.flags.writeable = False  # a shared default argument of align(); nobody should edit it in place
UTKFACE_SIZE = 200


@dataclass(frozen=True)
class Face:
    """One detected face.

    ``box`` is (x1, y1, x2, y2) in pixels of the input image, ``score`` O-Net's face probability, ``landmarks``
    five (x, y) points: left eye, right eye, nose, mouth left, mouth right, left/right as seen in the image.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


def largest(faces: Sequence[Face], n: int) -> list[Face]:
    """The ``n`` largest of ``faces`` (by box area), in their original order.

    >>> faces = [Face((0, 0, w, w), 0.9, ()) for w in (10, 30, 20)]
    >>> [f.box[2] for f in largest(faces, 2)]
    [30, 20]
    """
    keep = sorted(sorted(range(len(faces)), key=lambda i: faces[i].area, reverse=True)[:n])
    return [faces[i] for i in keep]


# --------------------------------------------------------------------------- networks
# Parameter names follow facenet-pytorch's so that its state dicts load with strict=True.


class PNet(nn.Module):
    """Proposal net, fully convolutional: (N, 3, H, W) -> box offsets (N, 4, H', W'), face probability (N, H', W'),
    one cell per 12x12 window at stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)[:, 1]


def _flatten_caffe(x: torch.Tensor) -> torch.Tensor:
    # The dense weights were converted from Caffe/TF and expect (W, H, C) order, not PyTorch's (C, H, W).
    return x.permute(0, 3, 2, 1).contiguous().flatten(1)


class RNet(nn.Module):
    """Refinement net: (N, 3, 24, 24) -> box offsets (N, 4), face probability (N,)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_caffe(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output net: (N, 3, 48, 48) -> box offsets (N, 4), landmarks (N, 10) as (x0..x4, y0..y4) in units of the
    box size, face probability (N,)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_caffe(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)[:, 1]


def load_networks(device: str | torch.device = "cpu") -> tuple[PNet, RNet, ONet]:
    """The three networks with the bundled weights, in eval mode on ``device``."""
    nets = (PNet(), RNet(), ONet())
    for net, name in zip(nets, ("pnet", "rnet", "onet"), strict=True):
        state = torch.load(WEIGHTS_DIR / f"{name}.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        net.to(device).eval()
    return nets


# --------------------------------------------------------------------------- box helpers
# Boxes are (K, 5+) float tensors: x1, y1, x2, y2, score, extra columns. The +1 / -1 below are MTCNN's 1-based
# (Matlab) pixel convention: the weights were trained on crops framed that way, and facenet-pytorch keeps it too.


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each box to a square about its centre, as the next network expects square crops."""
    boxes = boxes.clone()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    boxes[:, 0] += (w - side) / 2
    boxes[:, 1] += (h - side) / 2
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Shift box edges by ``offsets`` (K, 4), given in units of the box's width and height."""
    boxes = boxes.clone()
    wh = (boxes[:, 2:4] - boxes[:, 0:2] + 1).repeat(1, 2)
    boxes[:, :4] += offsets * wh
    return boxes


def _crops(image: torch.Tensor, boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample each box of ``image`` (3, H, W) to (size, size), normalised; returns crops (K', 3, size, size) and
    the indices of the boxes kept (a box that misses the image gives no crop)."""
    _, h, w = image.shape
    crops, kept = [], []
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].trunc().int().tolist()):
        ix1, iy1, ix2, iy2 = max(x1, 1), max(y1, 1), min(x2, w), min(y2, h)
        if ix2 < ix1 or iy2 < iy1:
            continue
        # Zero padding where the box leaves the image, as the original MTCNN does: facenet-pytorch 2.x stretches
        # the clipped part instead, which misplaces the landmarks of faces that touch the border (most UTKFace
        # crops).
        patch = image.new_zeros((1, 3, y2 - y1 + 1, x2 - x1 + 1))
        patch[0, :, iy1 - y1 : iy2 - y1 + 1, ix1 - x1 : ix2 - x1 + 1] = image[:, iy1 - 1 : iy2, ix1 - 1 : ix2]
        crops.append(F.interpolate(patch, size=(size, size), mode="area"))
        kept.append(k)
    if not crops:
        return image.new_zeros((0, 3, size, size)), torch.zeros(0, dtype=torch.long)
    return _normalise(torch.cat(crops)), torch.tensor(kept, dtype=torch.long)


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS where overlap is intersection over the *smaller* area, which removes a small box nested in a
    larger one (a face part scored as a face) that IoU would keep. Returns kept indices, best score first."""
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort(descending=True)
    keep = []
    while order.numel() > 0:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        iw = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest]) + 1).clamp(min=0)
        ih = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest]) + 1).clamp(min=0)
        overlap = iw * ih / torch.minimum(area[i], area[rest])
        order = rest[overlap <= threshold]
    return torch.tensor(keep, dtype=torch.long)


# --------------------------------------------------------------------------- detector


class FaceDetector:
    """MTCNN face detector with facenet-pytorch's defaults.

    ``min_face_size``: smallest face side searched for, in pixels (of the image after any ``max_side``
    downscaling); ``thresholds``: face-probability cut-offs of P-, R- and O-Net; ``factor``: ratio between
    pyramid levels; ``max_side``: images with a longer side are detected on a downscaled copy (much faster on
    large photos; faces smaller than ``min_face_size`` after downscaling are missed), None to disable.
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        device: str | torch.device = "cpu",
        max_side: int | None = 1280,
    ) -> None:
        if not isinstance(min_face_size, int | float) or min_face_size <= 0:
            raise ValueError(f"min_face_size must be a positive number of pixels, got {min_face_size!r}")
        try:
            thresholds = tuple(float(t) for t in thresholds)
        except (TypeError, ValueError):
            raise ValueError(f"thresholds must be three probabilities in [0, 1], got {thresholds!r}") from None
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"thresholds must be three probabilities in [0, 1], got {thresholds!r}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must lie strictly between 0 and 1, got {factor!r}")
        if max_side is not None and (not isinstance(max_side, int) or max_side < 12):
            raise ValueError(f"max_side must be None or an integer >= 12, got {max_side!r}")
        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.factor = factor
        self.max_side = max_side
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = load_networks(self.device)

    def detect(self, image: Image.Image | np.ndarray, check: Callable[[], None] | None = None) -> list[Face]:
        """Faces in ``image`` (an RGB or greyscale PIL image, or an (H, W, 3) or (H, W) uint8 array), best score
        first; an empty list when there is none. ``check`` is called between the three stages (a crowded photo
        takes seconds each) and may raise to stop the work."""
        pixels = as_rgb_array(image)
        h, w = pixels.shape[:2]
        sx = sy = 1.0
        if self.max_side is not None and max(h, w) > self.max_side:
            ratio = self.max_side / max(h, w)
            small = (max(1, round(w * ratio)), max(1, round(h * ratio)))
            pixels = cv2.resize(pixels, small, interpolation=cv2.INTER_AREA)
            sx, sy = w / small[0], h / small[1]
        tensor = torch.tensor(pixels, dtype=torch.float32, device=self.device).permute(2, 0, 1)
        with torch.inference_mode():
            boxes, points = self._cascade(tensor, check or (lambda: None))
        faces = [
            Face((b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy), b[4], tuple((x * sx, y * sy) for x, y in pts))
            for b, pts in zip(boxes.tolist(), points.tolist(), strict=True)
        ]
        return sorted(faces, key=lambda f: f.score, reverse=True)

    def _cascade(self, image: torch.Tensor, check: Callable[[], None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the three stages on ``image`` (3, H, W) float in [0, 255]; returns boxes (K, 5) with score in
        column 4 and landmarks (K, 5, 2)."""
        no_faces = image.new_zeros((0, 5)), image.new_zeros((0, 5, 2))
        boxes = self._propose(image)
        check()
        if len(boxes) == 0:
            return no_faces

        # Stage 2: R-Net rescores P-Net's proposals and refines their boxes.
        crops, kept = _crops(image, boxes, 24)
        boxes = boxes[kept]
        if len(boxes) == 0:
            return no_faces
        offsets, scores = self.rnet(crops)
        passed = scores > self.thresholds[1]
        boxes = torch.cat([boxes[passed, :4], scores[passed, None]], dim=1)
        offsets = offsets[passed]
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = _square(_regress(boxes[keep], offsets[keep]))
        check()
        if len(boxes) == 0:
            return no_faces

        # Stage 3: O-Net gives the final score, box and landmarks.
        crops, kept = _crops(image, boxes, 48)
        boxes = boxes[kept]
        if len(boxes) == 0:
            return no_faces
        offsets, marks, scores = self.onet(crops)
        passed = scores > self.thresholds[2]
        boxes = torch.cat([boxes[passed, :4], scores[passed, None]], dim=1)
        offsets, marks = offsets[passed], marks[passed]
        # Landmarks are relative to the (1-based) box O-Net saw, hence the +1 on the size and -1 on the origin.
        size = boxes[:, 2:4] - boxes[:, 0:2] + 1
        xs = boxes[:, 0:1] + size[:, 0:1] * marks[:, 0:5] - 1
        ys = boxes[:, 1:2] + size[:, 1:2] * marks[:, 5:10] - 1
        points = torch.stack([xs, ys], dim=2)
        boxes = _regress(boxes, offsets)
        keep = _nms_min(boxes[:, :4], boxes[:, 4], 0.7)
        return boxes[keep], points[keep]

    def _propose(self, image: torch.Tensor) -> torch.Tensor:
        """Stage 1: P-Net over an image pyramid; returns squared candidate boxes (K, 5)."""
        _, h, w = image.shape
        scale = 12.0 / self.min_face_size  # maps the smallest wanted face onto P-Net's 12 px window
        shortest = min(h, w) * scale
        found = []
        while shortest >= 12:
            level = F.interpolate(image[None], size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            offsets, probs = self.pnet(_normalise(level))
            mask = probs[0] >= self.thresholds[0]
            if mask.any():
                # Output cell (x, y) saw the 12x12 window at 2 * (x, y) of this level (1-based corners).
                corner = 2 * mask.nonzero().flip(1).float() + 1
                top_left, bottom_right = (corner / scale).floor(), ((corner + 11) / scale).floor()
                boxes = torch.cat([top_left, bottom_right, probs[0][mask][:, None], offsets[0][:, mask].T], dim=1)
                found.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
            scale *= self.factor
            shortest *= self.factor
        if not found:
            return image.new_zeros((0, 5))
        boxes = torch.cat(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        # P-Net's offsets are in units of the box size without MTCNN's +1.
        wh = (boxes[:, 2:4] - boxes[:, 0:2]).repeat(1, 2)
        return _square(torch.cat([boxes[:, :4] + boxes[:, 5:9] * wh, boxes[:, 4:5]], dim=1))


# --------------------------------------------------------------------------- alignment


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) taking points ``src``
    (N, 2) onto ``dst`` (N, 2), by Umeyama's method (1991). Returns the (2, 3) matrix ``[s*R | t]``."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need two matching (N, 2) point arrays with N >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("points must be finite")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var == 0:
        raise ValueError("source points all coincide; no transform is defined")
    u, sigma, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    # Flipping the last axis when the best orthogonal fit is a reflection keeps it a proper rotation.
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ np.diag(d) @ vt
    scale = (sigma * d).sum() / src_var
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align(
    image: Image.Image | np.ndarray,
    landmarks: Sequence[Sequence[float]] | np.ndarray,
    size: int = UTKFACE_SIZE,
    template: np.ndarray = UTKFACE_TEMPLATE,
) -> Image.Image:
    """Warp ``image`` so that its five ``landmarks`` (5, 2) land on ``template`` (5, 2, defined on a 200x200
    crop and scaled by size/200), returning a size x size RGB image framed like a UTKFace crop."""
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    points = np.asarray(landmarks, dtype=np.float64)
    template = np.asarray(template, dtype=np.float64)
    if points.shape != (5, 2) or template.shape != (5, 2):
        raise ValueError(f"landmarks and template must have shape (5, 2), got {points.shape} and {template.shape}")
    # Scaled about pixel edges, not centres (which sit at integers), so that a larger size is exactly a resize.
    matrix = similarity_transform(points, (template + 0.5) * (size / UTKFACE_SIZE) - 0.5)
    warped = cv2.warpAffine(
        as_rgb_array(image), matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return Image.fromarray(warped)


def estimate_template(images: Iterable[Image.Image], detector: FaceDetector) -> tuple[np.ndarray, int]:
    """Mean landmarks (5, 2) of the best-scoring face in each 200x200 crop of ``images``, and how many crops had a
    face. Raises ValueError for a crop of another size, or when no crop has a face."""
    total, count, seen = np.zeros((5, 2)), 0, 0
    for image in images:
        seen += 1
        if image.size != (UTKFACE_SIZE, UTKFACE_SIZE):
            raise ValueError(f"crop {seen} is {image.size[0]}x{image.size[1]}, expected 200x200")
        faces = detector.detect(image)
        if faces:
            total += np.asarray(faces[0].landmarks)
            count += 1
    if count == 0:
        raise ValueError(f"no face found in any of {seen} crops")
    logger.info("landmark template from %d of %d crops", count, seen)
    return total / count, count


class AlignedFaceLoader:
    """Path -> the photo's face, aligned to UTKFace's 200x200 framing: the loader for labelled photo folders.

    ``policy``: ``"single"`` refuses photos with several faces (the label would be ambiguous); ``"largest"``
    takes the largest face. A photo without a usable face raises :class:`images.ImageReadError`, so datasets
    skip and count it like an unreadable file. The detector is built lazily, once per process (loader workers
    get their own).
    """

    def __init__(self, policy: str = "single", min_face_size: int = 20) -> None:
        if policy not in FACE_POLICIES:
            raise ValueError(f"face policy must be one of {', '.join(FACE_POLICIES)}, got {policy!r}")
        self.policy, self.min_face_size = policy, min_face_size
        self.cache_key = f"_aligned-{policy}-{min_face_size}"
        self._detector: FaceDetector | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_detector": None}

    def __call__(self, path: str | Path) -> Image.Image:
        image = open_image(path)
        if self._detector is None:
            self._detector = FaceDetector(min_face_size=self.min_face_size)
        faces = self._detector.detect(image)
        if not faces:
            raise ImageReadError(f"{path}: no face found", "no_face")
        if len(faces) > 1 and self.policy == "single":
            raise ImageReadError(f"{path}: {len(faces)} faces found (use --face largest to take the largest)",
                                 "several_faces")
        try:
            return align(image, largest(faces, 1)[0].landmarks)
        except ValueError as e:  # degenerate landmarks (all on one point) leave no transform to apply
            raise ImageReadError(f"{path}: the face cannot be aligned: {e}", "no_face") from e
