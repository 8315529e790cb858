"""MTCNN's box arithmetic in numpy: boxes squared, shifted and suppressed, and image regions resampled for the
networks.

Boxes are (K, 5+) float arrays: x1, y1, x2, y2, score, extra columns. The +1 / -1 below are MTCNN's 1-based
(Matlab) pixel convention: the weights were trained on crops framed that way, and facenet-pytorch keeps it too.

Every resampling of the cascade (pyramid levels, R-Net and O-Net crops) is an area average over the windows
torch's ``interpolate(mode="area")`` uses, computed for all boxes at once from one integral image.
"""

from __future__ import annotations

import numpy as np


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


def square_boxes(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square about its centre, as the next network expects square crops."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += (w - side) / 2
    boxes[:, 1] += (h - side) / 2
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def regress_boxes(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Shift box edges by ``offsets`` (K, 4), given in units of the box's width and height."""
    boxes = boxes.copy()
    wh = np.tile(boxes[:, 2:4] - boxes[:, 0:2] + 1, 2)
    boxes[:, :4] += offsets * wh
    return boxes


def box_crops(table: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
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
    if len(order) <= 512:
        # All pairs at once, then one cheap pass in score order: the cascade's calls have tens to hundreds of
        # boxes, where a numpy call per kept box cost more than the arithmetic. Not beyond 512: the K x K float64
        # temporaries of 2,048 boxes took 170 MB per thread on a crowd photo.
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


# Final-stage suppression of "ghost" faces (see :func:`suppress_ghosts`), chosen on benchmarks/false_faces.py: a face
# less than this share of another box's size (side over side) is a candidate ghost of it ...
GHOST_SIDE_RATIO = 0.5
# ... when this share of its area lies on the other box's region: the box widened by GHOST_BESIDE box widths on each
# side, and the body below it, GHOST_REACH box heights down and half a box width wider on each side.
GHOST_OVERLAP = 0.3
GHOST_BESIDE = 0.5
GHOST_REACH = 1.5


def _share_on(boxes: np.ndarray, region: tuple[np.ndarray, ...]) -> np.ndarray:
    """``[i, j]``: the area of box ``j`` inside region ``i`` (x1, y1, x2, y2 arrays), over box ``j``'s area."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    rx1, ry1, rx2, ry2 = region
    iw = np.minimum(rx2[:, None], x2[None, :]) - np.maximum(rx1[:, None], x1[None, :])
    ih = np.minimum(ry2[:, None], y2[None, :]) - np.maximum(ry1[:, None], y1[None, :])
    return np.maximum(iw, 0) * np.maximum(ih, 0) / np.maximum((x2 - x1) * (y2 - y1), 1e-12)[None, :]


def suppress_ghosts(boxes: np.ndarray, side_ratio: float = GHOST_SIDE_RATIO, overlap: float = GHOST_OVERLAP,
                    reach: float = GHOST_REACH, beside: float = GHOST_BESIDE) -> np.ndarray:
    """Indices of the final boxes ``(K, 5+)`` (score in column 4) to keep, in their order, after dropping the
    ghosts among pairs of very different sizes: of two boxes whose sides differ by more than ``side_ratio``, where
    ``overlap`` of the smaller one's area lies on the larger one's region, the lower-scoring one goes. The region is
    the larger box widened by ``beside`` box widths on each side, and the body below it, ``reach`` box heights
    down and half a width wider on each side.

    Why: MTCNN's last stage keeps boxes that NMS cannot see as duplicates, because they overlap little: a large box
    around a face and its shoulders, and small boxes on a collar or a suit just below a face, or beside it. In a
    video each becomes a person of its own. A real face less than half the size of another and on that person's
    body or right beside their face (a baby held to the chest, a badge photo, a face far behind) is lost when it
    scores lower, which is rare and costs one face; the ghosts cost a person per clip.

    >>> boxes = np.array([[100, 100, 200, 220, 0.99], [120, 240, 145, 270, 0.8], [60, 80, 260, 400, 0.9],
    ...                   [300, 100, 390, 210, 0.95]])
    >>> suppress_ghosts(boxes).tolist()
    [0, 3]
    """
    if len(boxes) < 2:
        return np.arange(len(boxes))
    b = boxes[:, :5].astype(np.float64)
    x1, y1, x2, y2, score = (b[:, k] for k in range(5))
    w, h = np.maximum(x2 - x1, 1e-6), np.maximum(y2 - y1, 1e-6)
    side = np.sqrt(w * h)
    # [big, small]: the small box's share on the big box's region (the box and beside it, then the body below).
    share = _share_on(b, (x1 - beside * w, y1, x2 + beside * w, y2)) + \
        _share_on(b, (x1 - w / 2, y2, x2 + w / 2, y2 + reach * h))
    pair = (side[None, :] <= side_ratio * side[:, None]) & (share >= overlap)
    ghost_of = pair | pair.T  # symmetric: either may be the ghost of the other
    # As NMS does: best score first, each box kept drops the lower-scoring boxes it pairs with, so that a box
    # already dropped drops nothing.
    dropped = np.zeros(len(boxes), bool)
    for i in np.argsort(-score, kind="stable").tolist():
        if not dropped[i]:
            dropped |= ghost_of[i] & (score < score[i])
    return np.flatnonzero(~dropped)
