"""A found face warped onto UTKFace's 200x200 framing by a similarity transform of its five landmarks, so that
photos look like the crops the model was trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from agegender.io.images import as_rgb_array

if TYPE_CHECKING:
    from agegender.faces.detect import FaceDetector

logger = logging.getLogger(__name__)

# Mean MTCNN landmarks (left eye, right eye, nose, mouth left, mouth right; x, y in pixels) on UTKFace's 200x200
# aligned crops, so that align() reproduces the dataset's framing on new photos. Obtained with
#   python scripts/estimate_template.py --data UTKFACE_DIR --n 2000 --seed 0
# (FaceDetector defaults): a face was found in 1978 of the 2000 sampled crops; rounded to 0.01 px. The per-point
# standard deviation across crops was 3.2-3.5 px for the eyes, 5.4-5.6 px for the nose, 5.0-6.8 px for the mouth.
UTKFACE_TEMPLATE = np.array([[59.52, 57.77], [138.66, 58.02], [98.33, 104.28], [63.97, 138.76], [133.55, 138.84]])
UTKFACE_TEMPLATE.flags.writeable = False  # a shared default argument of align(); nobody should edit it in place


UTKFACE_SIZE = 200


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
