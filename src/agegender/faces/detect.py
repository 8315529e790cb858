"""Face detection: MTCNN's cascade in numpy, its networks on onnxruntime.

The detector is MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional
Networks", 2016) as facenet-pytorch 2.6.0 runs it, with its MIT-licensed weights (``weights/mtcnn/``, see
NOTICE.md there). Three networks run in cascade: P-Net proposes boxes over an image pyramid, R-Net rejects most
of them, O-Net scores the rest and places five landmarks. The networks run as ONNX files (exported from the
vendored torch weights by ``scripts/export_bundled.py``); ``runtime="torch"`` runs the same cascade on the torch
modules of :mod:`agegender.faces.mtcnn_torch` instead.

The box arithmetic and resampling live in :mod:`agegender.faces.boxes`, the alignment of a found face in
:mod:`agegender.faces.align`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agegender.faces.boxes import (
    box_crops,
    integral_image,
    nms,
    pyramid_input,
    regress_boxes,
    square_boxes,
    suppress_ghosts,
)
from agegender.io.images import as_rgb_array

WEIGHTS_DIR = Path(__file__).parents[1] / "weights" / "mtcnn"
DETECTOR_RUNTIMES = ("onnx", "torch")
# Widths of the outputs of R- and O-Net before their face probability: box offsets[, landmarks].
NET_OUTPUTS = {"rnet": (4,), "onet": (4, 10)}
# Crops per R-Net and O-Net call. One call on every candidate of a crowd photo (400 faces: 6,324 crops for R-Net,
# 2,769 for O-Net) grew onnxruntime's arena to 2.4 GB, which it keeps; in chunks a stage needs a few MB at a time,
# and ``check`` can stop the work between two chunks.
CHUNK = {"rnet": 256, "onet": 64}
# Candidates a stage takes at most, the largest boxes first (photos of up to five people gave R-Net at most 665 and
# O-Net 43): with ``max_faces`` the bound grows with it, without it a photo of over ~600 faces loses its smallest.
# It bounds the time a crowd costs, as the chunks bound its memory.
MAX_CANDIDATES = {"rnet": 16384, "onet": 4096}
CANDIDATES_PER_FACE = {"rnet": 32, "onet": 8}
MIN_CANDIDATES = {"rnet": 2048, "onet": 256}


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


def candidate_limit(stage: str, max_faces: int | None) -> int:
    """Candidates R-Net (``stage="rnet"``) or O-Net takes at most when at most ``max_faces`` faces are wanted.

    >>> candidate_limit("onet", None), candidate_limit("onet", 1), candidate_limit("onet", 50)
    (4096, 256, 400)
    """
    if max_faces is None:
        return MAX_CANDIDATES[stage]
    return min(MAX_CANDIDATES[stage], max(MIN_CANDIDATES[stage], CANDIDATES_PER_FACE[stage] * max_faces))


def largest_first(boxes: np.ndarray, limit: int) -> np.ndarray:
    """The ``limit`` largest of ``boxes`` (K, 5+), largest first (stable among equal areas).

    >>> largest_first(np.array([[0, 0, 1, 1.0], [0, 0, 3, 3], [0, 0, 2, 2]]), 2)[:, 2].tolist()
    [3.0, 2.0]
    """
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return boxes[np.argsort(-area, kind="stable")[:limit]]


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

    def __init__(self, threads: int = 1, providers: list | None = None) -> None:
        from agegender.compute.runtime import register_probe, session

        self.sessions = {name: session(WEIGHTS_DIR / f"{name}.onnx", threads, providers)
                         for name in ("pnet", "rnet", "onet")}
        # P-Net on one 12 x 12 window, the cheapest call there is, shrinks the shared arena when work is done.
        register_probe(self.sessions["pnet"], {"image": np.zeros((1, 3, 12, 12), np.float32)})

    def __call__(self, name: str, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """Network ``name`` on ``batch`` float32 ``[N, 3, H, W]``; outputs in the order the torch modules return
        them (offsets, [landmarks,] face probability)."""
        return tuple(self.sessions[name].run(None, {"image": batch}))


# --------------------------------------------------------------------------- resampling and boxes
# Boxes are (K, 5+) float arrays: x1, y1, x2, y2, score, extra columns. The +1 / -1 below are MTCNN's 1-based
# (Matlab) pixel convention: the weights were trained on crops framed that way, and facenet-pytorch keeps it too.


# --------------------------------------------------------------------------- detector


class FaceDetector:
    """MTCNN face detector with facenet-pytorch's defaults.

    ``min_face_size``: smallest face side searched for, in pixels (of the image after any ``max_side``
    downscaling); ``thresholds``: face-probability cut-offs of P-, R- and O-Net; ``factor``: ratio between
    pyramid levels; ``max_side``: images with a longer side are detected on a downscaled copy (much faster on
    large photos; faces smaller than ``min_face_size`` after downscaling are missed), None to disable.
    ``runtime``: ``"onnx"`` (onnxruntime, no torch needed) or ``"torch"`` (the same cascade on the torch
    networks, on ``device``). ``drop_ghosts``: drop the final boxes that contain or sit below a much smaller or
    larger better-scoring face (:func:`agegender.faces.boxes.suppress_ghosts`). ``providers``: onnxruntime's
    execution providers (:func:`agegender.compute.runtime.providers_for`; default the CPU).
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        device: object = "cpu",
        max_side: int | None = 1280,
        runtime: str = "onnx",
        drop_ghosts: bool = True,
        providers: list | None = None,
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
        if runtime not in DETECTOR_RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(DETECTOR_RUNTIMES)}, got {runtime!r}")
        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.factor = factor
        self.max_side = max_side
        self.runtime = runtime
        self.drop_ghosts = drop_ghosts
        if runtime == "torch":
            from agegender.faces.mtcnn_torch import TorchNetworks

            self.networks = TorchNetworks(device)
        else:
            self.networks = OnnxNetworks(providers=providers)

    def detect(self, image: Image.Image | np.ndarray, check: Callable[[], None] | None = None,
               max_faces: int | None = None) -> list[Face]:
        """Faces in ``image`` (an RGB or greyscale PIL image, or an (H, W, 3) or (H, W) uint8 array), best score
        first; an empty list when there is none. ``check`` is called between pyramid levels and between the
        chunks of each later stage (a crowded photo takes seconds) and may raise to stop the work.
        ``max_faces``: the caller keeps at most this many faces, the largest, so each stage looks at the largest
        candidates only, up to :func:`candidate_limit` (the faces returned may then be fewer than a crowd
        holds, never fewer than ``max_faces`` of its largest)."""
        pixels = as_rgb_array(image)
        h, w = pixels.shape[:2]
        sx = sy = 1.0
        if self.max_side is not None and max(h, w) > self.max_side:
            ratio = self.max_side / max(h, w)
            small = (max(1, round(w * ratio)), max(1, round(h * ratio)))
            pixels = np.asarray(Image.fromarray(pixels).resize(small, Image.Resampling.BOX))
            sx, sy = w / small[0], h / small[1]
        boxes, points = self._cascade(integral_image(pixels), check or (lambda: None), max_faces)
        faces = [
            Face((b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy), b[4], tuple((x * sx, y * sy) for x, y in pts))
            for b, pts in zip(boxes.tolist(), points.tolist(), strict=True)
        ]
        return sorted(faces, key=lambda f: f.score, reverse=True)

    def _cascade(self, table: np.ndarray, check: Callable[[], None],
                 max_faces: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run the three stages on the image whose :func:`integral_image` is ``table``; returns boxes (K, 5) with
        score in column 4 and landmarks (K, 5, 2). ``check`` runs between pyramid levels and chunks."""
        no_faces = np.zeros((0, 5)), np.zeros((0, 5, 2))
        boxes = self._propose(table, check)
        if len(boxes) == 0:
            return no_faces

        # Stage 2: R-Net rescores P-Net's proposals and refines their boxes.
        boxes, (offsets,) = self._refine(table, boxes, "rnet", 24, self.thresholds[1], check, max_faces)
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = square_boxes(regress_boxes(boxes[keep], offsets[keep]))
        if len(boxes) == 0:
            return no_faces

        # Stage 3: O-Net gives the final score, box and landmarks.
        boxes, (offsets, marks) = self._refine(table, boxes, "onet", 48, self.thresholds[2], check, max_faces)
        # Landmarks are relative to the (1-based) box O-Net saw, hence the +1 on the size and -1 on the origin.
        size = boxes[:, 2:4] - boxes[:, 0:2] + 1
        xs = boxes[:, 0:1] + size[:, 0:1] * marks[:, 0:5] - 1
        ys = boxes[:, 1:2] + size[:, 1:2] * marks[:, 5:10] - 1
        points = np.stack([xs, ys], axis=2)
        boxes = regress_boxes(boxes, offsets)
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7, overlap="min")
        boxes, points = boxes[keep], points[keep]
        if self.drop_ghosts:
            keep = suppress_ghosts(boxes)
            boxes, points = boxes[keep], points[keep]
        return boxes, points

    def _refine(self, table: np.ndarray, boxes: np.ndarray, net: str, size: int, threshold: float,
                check: Callable[[], None], max_faces: int | None) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """R- or O-Net (``net``, input ``size``) on the crops of ``boxes`` (the largest :func:`candidate_limit`,
        in chunks of :data:`CHUNK`): the boxes it scores above ``threshold`` with its score in column 4, and its
        other outputs (offsets[, landmarks]) for those boxes."""
        boxes = largest_first(boxes, candidate_limit(net, max_faces))
        found: list[np.ndarray] = []
        outputs: list[tuple[np.ndarray, ...]] = []
        for start in range(0, len(boxes), CHUNK[net]):
            check()
            part = boxes[start : start + CHUNK[net]]
            crops, kept = box_crops(table, part, size)
            if len(kept) == 0:  # every box of the chunk left the image
                continue
            *rest, scores = self.networks(net, crops)
            passed = scores > threshold
            found.append(np.concatenate([part[kept][passed, :4], scores[passed, None]], axis=1))
            outputs.append(tuple(r[passed] for r in rest))
        if not found:
            return np.zeros((0, 5)), tuple(np.zeros((0, n)) for n in NET_OUTPUTS[net])
        return np.concatenate(found), tuple(np.concatenate(parts) for parts in zip(*outputs, strict=True))

    def _propose(self, table: np.ndarray, check: Callable[[], None] = lambda: None) -> np.ndarray:
        """Stage 1: P-Net over an image pyramid; returns squared candidate boxes (K, 5). ``check`` runs before
        each level."""
        h, w = table.shape[1] - 1, table.shape[2] - 1
        scale = 12.0 / self.min_face_size  # maps the smallest wanted face onto P-Net's 12 px window
        shortest = min(h, w) * scale
        found = []
        while shortest >= 12:
            check()
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
        return square_boxes(np.concatenate([boxes[:, :4] + boxes[:, 5:9] * wh, boxes[:, 4:5]], axis=1))


# --------------------------------------------------------------------------- alignment


