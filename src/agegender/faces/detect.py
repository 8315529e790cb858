"""Face detection (MTCNN) and similarity alignment to UTKFace's 200x200 framing, in numpy and onnxruntime.

The detector is MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional
Networks", 2016) as facenet-pytorch 2.6.0 runs it, with its MIT-licensed weights (``weights/mtcnn/``, see
NOTICE.md there). Three networks run in cascade: P-Net proposes boxes over an image pyramid, R-Net rejects most
of them, O-Net scores the rest and places five landmarks. The networks run as ONNX files (exported from the
vendored torch weights by ``scripts/export_bundled.py``); ``runtime="torch"`` runs the same cascade on the torch
modules of :mod:`agegender.mtcnn_nets` instead.

Every resampling of the cascade (pyramid levels, R-Net and O-Net crops) is an area average over the windows
torch's ``interpolate(mode="area")`` uses, computed for all boxes at once from one integral image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agegender.images import ImageReadError, as_rgb_array, open_image
from agegender.sources import FACE_POLICIES

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights" / "mtcnn"
RUNTIMES = ("onnx", "torch")

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


class OnnxNetworks:
    """P-, R- and O-Net as onnxruntime sessions (``weights/mtcnn/*.onnx``), one intra-op thread each: the
    cascade runs many small calls, which threads would only slow down."""

    def __init__(self, threads: int = 1) -> None:
        from agegender.runtime import session

        self.sessions = {name: session(WEIGHTS_DIR / f"{name}.onnx", threads) for name in ("pnet", "rnet", "onet")}

    def __call__(self, name: str, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """Network ``name`` on ``batch`` float32 ``[N, 3, H, W]``; outputs in the order the torch modules return
        them (offsets, [landmarks,] face probability)."""
        return tuple(self.sessions[name].run(None, {"image": batch}))


# --------------------------------------------------------------------------- resampling and boxes
# Boxes are (K, 5+) float arrays: x1, y1, x2, y2, score, extra columns. The +1 / -1 below are MTCNN's 1-based
# (Matlab) pixel convention: the weights were trained on crops framed that way, and facenet-pytorch keeps it too.


def integral_image(pixels: np.ndarray) -> np.ndarray:
    """``S`` of shape ``(3, H + 1, W + 1)`` with ``S[:, r, c]`` the sum of ``pixels[:r, :c]`` (``pixels``
    ``[H, W, 3]`` uint8; integer sums, so exact). Channels first: numpy's running sums are fastest there."""
    h, w = pixels.shape[:2]
    dtype = np.int32 if h * w * 255 < 2**31 else np.int64
    out = np.zeros((3, h + 1, w + 1), dtype)
    out[:, 1:, 1:] = pixels.transpose(2, 0, 1)
    np.cumsum(out, axis=1, out=out)
    np.cumsum(out, axis=2, out=out)
    return out


def _windows(origin: np.ndarray, length: np.ndarray, size: int,
             limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start and end (clipped to ``[0, limit]``) and unclipped length of each of ``size`` output cells over
    ``length`` input pixels from ``origin``, for K boxes at once: ``[K, size]`` each. The cells are torch's
    adaptive-pooling windows: ``[floor(i * L / size), ceil((i + 1) * L / size))``."""
    i = np.arange(size)
    start = (i * length[:, None]) // size
    end = -((-(i + 1) * length[:, None]) // size)
    return np.clip(origin[:, None] + start, 0, limit), np.clip(origin[:, None] + end, 0, limit), end - start


def _to_input(total: np.ndarray, area: np.ndarray) -> np.ndarray:
    """Window sums ``total`` over window sizes ``area`` -> the networks' input: the mean, minus 127.5, over 128."""
    out = np.multiply(total, (1.0 / (128.0 * area)).astype(np.float32), dtype=np.float32)
    out -= np.float32(127.5 / 128)
    return out


def crops_input(table: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each box ``(top, left, height, width)`` (``[K, 4]`` integers, 0-based, may leave the image: outside is
    zero) of the image whose :func:`integral_image` is ``table``, area-averaged to ``size`` x ``size`` and
    normalised for R- or O-Net: float32 ``[K, 3, size, size]``."""
    h, w = table.shape[1] - 1, table.shape[2] - 1
    r0, r1, rn = _windows(boxes[:, 0], boxes[:, 2], size, h)
    c0, c1, cn = _windows(boxes[:, 1], boxes[:, 3], size, w)
    # One gather of the four corners of every cell from the flattened table.
    corners = (np.stack([r1, r0, r1, r0])[:, :, :, None] * (w + 1) + np.stack([c1, c1, c0, c0])[:, :, None, :])
    g = np.take(table.reshape(3, -1), corners.reshape(-1), axis=1).reshape(3, 4, len(boxes), size, size)
    total = g[:, 0] - g[:, 1] - g[:, 2] + g[:, 3]
    return np.ascontiguousarray(_to_input(total, rn[:, :, None] * cn[:, None, :]).transpose(1, 0, 2, 3))


def pyramid_input(table: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The whole image area-averaged to ``rows`` x ``cols`` (as torch's ``interpolate(mode="area")``) and
    normalised for P-Net: float32 ``[1, 3, rows, cols]``. Rows first, then columns."""
    h, w = table.shape[1] - 1, table.shape[2] - 1
    r0, r1, rn = (a[0] for a in _windows(np.array([0]), np.array([h]), rows, h))
    c0, c1, cn = (a[0] for a in _windows(np.array([0]), np.array([w]), cols, w))
    # np.take, not fancy indexing: a gather of whole rows is many times faster that way.
    strips = np.take(table, r1, axis=1) - np.take(table, r0, axis=1)
    total = np.take(strips, c1, axis=2) - np.take(strips, c0, axis=2)
    return _to_input(total, rn[:, None] * cn[None, :])[None]


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square about its centre, as the next network expects square crops."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += (w - side) / 2
    boxes[:, 1] += (h - side) / 2
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Shift box edges by ``offsets`` (K, 4), given in units of the box's width and height."""
    boxes = boxes.copy()
    wh = np.tile(boxes[:, 2:4] - boxes[:, 0:2] + 1, 2)
    boxes[:, :4] += offsets * wh
    return boxes


def _crops(table: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each box of the image (1-based, inclusive, truncated to integers), zero-padded where it leaves the image
    as the original MTCNN does, area-resampled to ``size`` x ``size`` and normalised: ``([K', 3, size, size],
    indices of the boxes kept)``; a box that misses the image gives no crop."""
    h, w = table.shape[1] - 1, table.shape[2] - 1
    x1, y1, x2, y2 = np.trunc(boxes[:, :4]).astype(np.int64).T
    kept = np.flatnonzero((np.minimum(x2, w) >= np.maximum(x1, 1)) & (np.minimum(y2, h) >= np.maximum(y1, 1)))
    if kept.size == 0:
        return np.zeros((0, 3, size, size), np.float32), kept
    x1, y1, x2, y2 = x1[kept], y1[kept], x2[kept], y2[kept]
    windows = np.stack([y1 - 1, x1 - 1, y2 - y1 + 1, x2 - x1 + 1], axis=1)
    return crops_input(table, windows, size), kept


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, overlap: str = "iou") -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best score first.

    ``overlap="iou"``: intersection over union of ``(x2 - x1) * (y2 - y1)`` areas (torchvision's ``nms``);
    ``"min"``: intersection over the *smaller* area with MTCNN's +1 pixel convention, which removes a small box
    nested in a larger one (a face part scored as a face) that IoU would keep.

    >>> nms(np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.0]]), np.array([0.9, 0.8, 0.7]), 0.5)
    array([0, 2])
    """
    pad = 1.0 if overlap == "min" else 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[order, j], dtype=np.float64) for j in range(4))
    area = (x2 - x1 + pad) * (y2 - y1 + pad)

    def suppressed(i: int | tuple, rest: np.ndarray | tuple) -> np.ndarray:
        # ``i`` one box against the boxes ``rest``, or (with None axes) every box against every box
        iw = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + pad
        ih = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + pad
        inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
        denominator = np.minimum(area[i], area[rest]) if overlap == "min" else area[i] + area[rest] - inter
        # not (inter / denominator <= threshold), without dividing: a zero denominator (empty boxes) keeps the
        # box, as torchvision's NaN comparison does.
        return ~(inter <= threshold * denominator)

    keep = []
    if len(order) <= 2048:
        # All pairs at once, then one cheap pass in score order: the cascade's calls have tens to hundreds of
        # boxes, where a numpy call per kept box cost more than the arithmetic.
        every = slice(None)
        over = suppressed((every, None), (None, every))
        removed = np.zeros(len(order), bool)
        for i in range(len(order)):
            if not removed[i]:
                keep.append(i)
                removed |= over[i]
    else:  # a crowded, large photo: no K x K matrix
        rest = np.arange(len(order))
        while rest.size:
            i, rest = rest[0], rest[1:]
            keep.append(i)
            rest = rest[~suppressed(i, rest)]
    return order[np.asarray(keep, dtype=np.int64)]


# --------------------------------------------------------------------------- detector


class FaceDetector:
    """MTCNN face detector with facenet-pytorch's defaults.

    ``min_face_size``: smallest face side searched for, in pixels (of the image after any ``max_side``
    downscaling); ``thresholds``: face-probability cut-offs of P-, R- and O-Net; ``factor``: ratio between
    pyramid levels; ``max_side``: images with a longer side are detected on a downscaled copy (much faster on
    large photos; faces smaller than ``min_face_size`` after downscaling are missed), None to disable.
    ``runtime``: ``"onnx"`` (onnxruntime, no torch needed) or ``"torch"`` (the same cascade on the torch
    networks, on ``device``).
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        device: object = "cpu",
        max_side: int | None = 1280,
        runtime: str = "onnx",
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
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.factor = factor
        self.max_side = max_side
        self.runtime = runtime
        if runtime == "torch":
            from agegender.mtcnn_nets import TorchNetworks

            self.networks = TorchNetworks(device)
        else:
            self.networks = OnnxNetworks()

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
            pixels = np.asarray(Image.fromarray(pixels).resize(small, Image.Resampling.BOX))
            sx, sy = w / small[0], h / small[1]
        boxes, points = self._cascade(integral_image(pixels), check or (lambda: None))
        faces = [
            Face((b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy), b[4], tuple((x * sx, y * sy) for x, y in pts))
            for b, pts in zip(boxes.tolist(), points.tolist(), strict=True)
        ]
        return sorted(faces, key=lambda f: f.score, reverse=True)

    def _cascade(self, table: np.ndarray, check: Callable[[], None]) -> tuple[np.ndarray, np.ndarray]:
        """Run the three stages on the image whose :func:`integral_image` is ``table``; returns boxes (K, 5) with
        score in column 4 and landmarks (K, 5, 2). ``check`` runs between the stages."""
        no_faces = np.zeros((0, 5)), np.zeros((0, 5, 2))
        boxes = self._propose(table)
        check()
        if len(boxes) == 0:
            return no_faces

        # Stage 2: R-Net rescores P-Net's proposals and refines their boxes.
        crops, kept = _crops(table, boxes, 24)
        boxes = boxes[kept]
        if len(boxes) == 0:
            return no_faces
        offsets, scores = self.networks("rnet", crops)
        passed = scores > self.thresholds[1]
        boxes = np.concatenate([boxes[passed, :4], scores[passed, None]], axis=1)
        offsets = offsets[passed]
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = _square(_regress(boxes[keep], offsets[keep]))
        check()
        if len(boxes) == 0:
            return no_faces

        # Stage 3: O-Net gives the final score, box and landmarks.
        crops, kept = _crops(table, boxes, 48)
        boxes = boxes[kept]
        if len(boxes) == 0:
            return no_faces
        offsets, marks, scores = self.networks("onet", crops)
        passed = scores > self.thresholds[2]
        boxes = np.concatenate([boxes[passed, :4], scores[passed, None]], axis=1)
        offsets, marks = offsets[passed], marks[passed]
        # Landmarks are relative to the (1-based) box O-Net saw, hence the +1 on the size and -1 on the origin.
        size = boxes[:, 2:4] - boxes[:, 0:2] + 1
        xs = boxes[:, 0:1] + size[:, 0:1] * marks[:, 0:5] - 1
        ys = boxes[:, 1:2] + size[:, 1:2] * marks[:, 5:10] - 1
        points = np.stack([xs, ys], axis=2)
        boxes = _regress(boxes, offsets)
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7, overlap="min")
        return boxes[keep], points[keep]

    def _propose(self, table: np.ndarray) -> np.ndarray:
        """Stage 1: P-Net over an image pyramid; returns squared candidate boxes (K, 5)."""
        h, w = table.shape[1] - 1, table.shape[2] - 1
        scale = 12.0 / self.min_face_size  # maps the smallest wanted face onto P-Net's 12 px window
        shortest = min(h, w) * scale
        found = []
        while shortest >= 12:
            level = pyramid_input(table, int(h * scale + 1), int(w * scale + 1))
            offsets, probs = self.networks("pnet", level)
            ys, xs = np.nonzero(probs[0] >= self.thresholds[0])
            if ys.size:
                # Output cell (x, y) saw the 12x12 window at 2 * (x, y) of this level (1-based corners).
                corner = 2 * np.stack([xs, ys], axis=1).astype(np.float32) + 1
                top_left, bottom_right = np.floor(corner / scale), np.floor((corner + 11) / scale)
                boxes = np.concatenate([top_left, bottom_right, probs[0][ys, xs][:, None], offsets[0][:, ys, xs].T],
                                       axis=1)
                found.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
            scale *= self.factor
            shortest *= self.factor
        if not found:
            return np.zeros((0, 5))
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        # P-Net's offsets are in units of the box size without MTCNN's +1.
        wh = np.tile(boxes[:, 2:4] - boxes[:, 0:2], 2)
        return _square(np.concatenate([boxes[:, :4] + boxes[:, 5:9] * wh, boxes[:, 4:5]], axis=1))


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


def warp_affine(pixels: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """``pixels`` ``[H, W, 3]`` uint8 warped by ``matrix`` (2, 3), which maps source to output pixel
    coordinates (pixel centres at integers), into ``[size, size, 3]`` uint8: bilinear, rounded, the border pixels
    repeated outside the image (OpenCV's ``warpAffine`` with ``INTER_LINEAR`` and ``BORDER_REPLICATE``, whose
    fixed-point weights differ by at most one grey level)."""
    h, w = pixels.shape[:2]
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    grid = np.arange(size, dtype=np.float64)
    sx = inverse[0, 0] * grid[None, :] + (inverse[0, 1] * grid[:, None] + inverse[0, 2])
    sy = inverse[1, 0] * grid[None, :] + (inverse[1, 1] * grid[:, None] + inverse[1, 2])
    x0, y0 = np.floor(sx), np.floor(sy)
    # The region the output samples, cut out with clipped indices (which repeats the border), RGB packed into
    # one 32-bit word per pixel so that each of the four neighbours is a single gather.
    x_lo, y_lo, x_hi, y_hi = int(x0.min()), int(y0.min()), int(x0.max()) + 2, int(y0.max()) + 2
    rows, cols = np.clip(np.arange(y_lo, y_hi), 0, h - 1), np.clip(np.arange(x_lo, x_hi), 0, w - 1)
    region = np.zeros((y_hi - y_lo, x_hi - x_lo, 4), np.uint8)
    region[..., :3] = np.take(np.take(pixels, rows, axis=0), cols, axis=1)
    stride = x_hi - x_lo
    at = (y0 - y_lo).astype(np.intp) * stride + (x0 - x_lo).astype(np.intp)
    packed = np.take(region.view(np.uint32).reshape(-1), np.stack([at, at + 1, at + stride, at + stride + 1]))
    g = packed.view(np.uint8).reshape(4, size, size, 4)[..., :3].astype(np.float32)
    fx, fy = (sx - x0).astype(np.float32)[..., None], (sy - y0).astype(np.float32)[..., None]
    top = g[0] + (g[1] - g[0]) * fx
    bottom = g[2] + (g[3] - g[2]) * fx
    return np.clip(np.floor(top + (bottom - top) * fy + 0.5), 0, 255).astype(np.uint8)


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
    return Image.fromarray(warp_affine(as_rgb_array(image), matrix, size))


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
