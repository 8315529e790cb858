"""Faces followed through the frames of a video, and one age and gender estimate per person that sharpens with
each frame.

**Linking.** Each analysed frame's faces are linked into tracks by norfair's ``Tracker`` (the ``norfair-enough``
package, a maintained fork of Tryolabs' norfair, BSD-3-Clause, needing only numpy, scipy and rich; the original
pins numpy < 2). A box is two corner points, each followed by a Kalman filter that predicts where a moving face
will be in the next analysed frame; detections are matched greedily from the smallest distance up. The distance
is how far a detection's centre lies from the predicted box's, in units of that box's size, plus how much the
sizes differ (``|log|`` of their ratio): unlike ``1 - IoU`` (SORT's), it still links a face that moved more than
its own width between two analysed frames (``--every 5``), and it means the same for a small face far away as for
a large one. A track that goes ``max_missed_frames`` frames without a match ends.

**Combining.** Frame ``i`` of a track says age ``a_i`` with spread ``s_i`` (the network's ``age_sigma``) and
probability of female ``p_i``. The track's age is the inverse-variance weighted mean ``sum(a_i / s_i^2) /
sum(1 / s_i^2)``: the least-variance combination of estimates of one quantity, so a blurred or turned face, which
the network itself is unsure of, counts less. Its spread would be ``W^-1/2`` (``W = sum(1 / s_i^2)``) if frames
were independent, but they are not: much of an estimate's error belongs to the person (their looks, the light,
the camera) and repeats in every frame. With errors correlated ``rho`` between any two frames, the spread of the
weighted mean is ``sqrt(((1 - rho) W + rho Q^2) / W^2)`` with ``Q = sum(1 / s_i)``: ``rho = 0`` gives the
independent ``W^-1/2``, ``rho = 1`` no gain at all from more frames of one person. The interval is ``age -+ scale *
spread`` with the model's calibrated single-image scale (:func:`agegender.inference.results.age_interval`). Gender
is the mean of the frames' logits (the log-odds ``log(p / (1 - p))``), mapped back to a probability: the gender head
is
calibrated per image, and summing logits instead would count correlated frames as independent evidence and drive
every track towards certainty.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from agegender.compute.pools import thread_pool
from agegender.data.records import GENDERS
from agegender.inference.results import (
    FacePrediction,
    PhotoPrediction,
    Prediction,
    TrackedFace,
    TrackedFrame,
    TrackEstimate,
    age_interval,
)
from agegender.io.images import ImageInput

if TYPE_CHECKING:
    from agegender.inference.predictor import Predictor

# Correlation of one person's age errors between two frames, used for a track's spread (see the module
# docstring): the intraclass correlation of the bundled model's age errors over 100 tracks of 8 augmented views of
# one validation image each, measured with
#   python benchmarks/video.py tracks --data UTKFACE_DIR --n 100 --views 8
# (0.95; the per-track 80% interval then held in 81% of tracks, against 64% with rho 0.5 and 29% with rho 0).
# Consecutive video frames of one person are at least as alike as those views, so this is not pessimistic.
FRAME_CORRELATION = 0.95
# No frame may claim to know an age better than this (years): one near-degenerate spread would otherwise outweigh
# every other frame of its track.
SIGMA_FLOOR = 0.5
# Probabilities are kept this far from 0 and 1 before taking logits (float32 sigmoid saturates to exactly 1).
P_CLIP = 1e-6
# A face is a person (a track with a number, a row, a count on the live page) once it was found in this many analysed
# frames of one norfair object: a false detection seldom comes back in the same place frame after frame. The frames
# before are left out (2 frames of each real person: a 15th of a second in a 30 fps file, 0.6 s on the live page).
# Chosen on `python benchmarks/false_faces.py` (docs/video.md).
CONFIRM_FRAMES = 3


@dataclass
class Evidence:
    """Running sums over a track's frames; the combined estimate is computed from them in O(1) per frame.

    >>> e = Evidence()
    >>> e.add(30.0, 2.0, 0.9); e.add(40.0, 4.0, 0.5)
    >>> round(e.age(), 3), round(e.sigma(0.0), 4), round(e.p_female(), 4)
    (32.0, 1.7889, 0.75)
    """

    n: int = 0
    w: float = 0.0  # sum of 1 / s^2
    wa: float = 0.0  # sum of a / s^2
    q: float = 0.0  # sum of 1 / s
    logit: float = 0.0  # sum of log(p / (1 - p))

    def add(self, age: float, sigma: float, p_female: float) -> None:
        s = max(float(sigma), SIGMA_FLOOR)
        p = min(max(float(p_female), P_CLIP), 1.0 - P_CLIP)
        self.n += 1
        self.w += 1.0 / s**2
        self.wa += age / s**2
        self.q += 1.0 / s
        self.logit += math.log(p / (1.0 - p))

    def age(self) -> float:
        return self.wa / self.w

    def sigma(self, rho: float) -> float:
        return math.sqrt(((1.0 - rho) * self.w + rho * self.q**2) / self.w**2)

    def p_female(self) -> float:
        return 1.0 / (1.0 + math.exp(-self.logit / self.n))

    def prediction(self, rho: float, interval_scale: float | None) -> Prediction:
        """The combined estimate as a :class:`Prediction` (interval only with an ``interval_scale``)."""
        if self.n == 0:
            raise ValueError("a track needs at least one frame to have an estimate")
        age, sigma, p = max(self.age(), 0.0), self.sigma(rho), self.p_female()
        low = high = None
        if interval_scale is not None:
            lo, hi = age_interval(np.array([age]), np.array([sigma]), interval_scale)
            low, high = float(lo[0]), float(hi[0])
        return Prediction(age, GENDERS[int(p >= 0.5)], p, low, high, sigma)


def combine(ages: Sequence[float], sigmas: Sequence[float], p_females: Sequence[float],
            rho: float = FRAME_CORRELATION, interval_scale: float | None = None) -> Prediction:
    """One estimate from a track's frames: ``ages``, ``sigmas`` (years) and ``p_females``, each ``[n]``.

    >>> p = combine([30.0, 40.0], [2.0, 4.0], [0.9, 0.5], rho=0.5, interval_scale=1.0)
    >>> round(p.age, 2), round(p.age_sigma, 4), p.gender, round(p.age_low, 4)
    (32.0, 2.1166, 'female', 29.8834)
    """
    if not (len(ages) == len(sigmas) == len(p_females)) or len(ages) == 0:
        raise ValueError(f"need as many ages, sigmas and p_females (at least one), got {len(ages)}, "
                         f"{len(sigmas)} and {len(p_females)}")
    evidence = Evidence()
    for a, s, p in zip(ages, sigmas, p_females, strict=True):
        evidence.add(a, s, p)
    return evidence.prediction(rho, interval_scale)


def box_distance(candidates: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """Distances ``[N, K]`` between boxes ``candidates`` ``[N, 4]`` and ``objects`` ``[K, 4]`` (x1, y1, x2, y2):
    centre offset over the object's size (the square root of its area), plus ``|log|`` of the size ratio.

    >>> box_distance(np.array([[10.0, 0, 20, 10], [0, 0, 20, 20]]), np.array([[0.0, 0, 10, 10]])).round(3).tolist()
    [[1.0], [1.4]]
    """
    def centre_size(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = np.sqrt(np.clip(b[:, 2] - b[:, 0], 1e-3, None) * np.clip(b[:, 3] - b[:, 1], 1e-3, None))
        return (b[:, :2] + b[:, 2:]) / 2, size

    (cc, cs), (oc, os_) = centre_size(candidates), centre_size(objects)
    offset = np.linalg.norm(cc[:, None, :] - oc[None, :, :], axis=2) / os_[None, :]
    return offset + np.abs(np.log(cs[:, None] / os_[None, :]))


@dataclass
class _Track:
    first_frame: int
    last_frame: int = -1
    evidence: Evidence = field(default_factory=Evidence)

    def add(self, frame: int, face: FacePrediction) -> None:
        p = face.prediction
        self.evidence.add(p.age, p.age_sigma, p.p_female)
        self.last_frame = frame


class FaceTracks:
    """Links the faces of successive analysed frames into tracks and keeps each track's running estimate.

    ``interval_scale``: the model's calibrated interval scale (``Predictor.interval_scale``; None: no interval).
    ``every``: frames between analysed frames (sets how long a missed track lives); ``max_missed_frames``: a track
    unmatched this many frames ends (a face seen again later starts a new one); ``max_distance``: the largest
    :func:`box_distance` between a track's predicted box and a detection that still matches (1.5: the centre moved
    one and a half face sizes at most, at equal size; two people side by side are about three apart); ``rho``: see
    :data:`FRAME_CORRELATION`; ``confirm_frames``: analysed frames a face must be found in before it is a track
    (:data:`CONFIRM_FRAMES`; 1: every detection at once). Until then its faces are left out of the answer (no
    row, no label, not counted); the track starts at the frame that confirms it.
    """

    def __init__(self, interval_scale: float | None = None, every: int = 1, max_missed_frames: int = 15,
                 max_distance: float = 1.5, rho: float = FRAME_CORRELATION,
                 confirm_frames: int = CONFIRM_FRAMES) -> None:
        try:
            from norfair import Tracker
            from norfair.distances import VectorizedDistance
            from norfair.filter import OptimizedKalmanFilterFactory
        except ImportError as e:
            raise ImportError("following faces through frames needs norfair-enough: pip install "
                              "'agegender[video]'") from e
        if every < 1 or max_missed_frames < 1 or confirm_frames < 1:
            raise ValueError(f"every, max_missed_frames and confirm_frames must be >= 1, got {every}, "
                             f"{max_missed_frames} and {confirm_frames}")
        if not max_distance > 0.0 or not 0.0 <= rho <= 1.0:
            raise ValueError(f"need max_distance > 0 and 0 <= rho <= 1, got {max_distance} and {rho}")
        self.interval_scale, self.rho, self.confirm_frames = interval_scale, rho, confirm_frames
        # norfair counts a track's life in update calls, one per analysed frame; a detection is a norfair object at
        # once (initialization_delay 0): norfair's own delay counts hits weighted by the gap between analysed frames,
        # so with --every 5 it would confirm an object on its first frame. The confirmation is counted here instead
        # (``confirm_frames``), in analysed frames whatever the gap. norfair's default Kalman
        # filter expects almost no velocity (variance 1 px^2 per step) and needed 5+ analysed frames to follow a
        # face moving 66 px per analysed frame (--every 5 on a walking person), losing it on the way; with more
        # room for velocity and for changes of it (Q), it follows from the second frame, and a still face stays
        # as steady (measured on generated boxes with 4 px of jitter).
        self._tracker = Tracker(distance_function="iou", distance_threshold=max_distance,
                                hit_counter_max=max(1, math.ceil(max_missed_frames / every)),
                                initialization_delay=0,
                                filter_factory=OptimizedKalmanFilterFactory(Q=10.0, vel_variance=100.0))
        # The constructor takes a custom distance only as a per-pair Python function (and warns that it is slow);
        # the vectorised form it builds for its own named distances is set here instead.
        self._tracker.distance_function = VectorizedDistance(box_distance)
        self._tracks: dict[int, _Track] = {}
        self._estimates: dict[int, TrackEstimate] = {}
        self._last_frame: int | None = None
        self._numbers: dict[int, int] = {}  # norfair object id -> track number, once confirmed
        self._pending: dict[int, int] = {}  # norfair object id -> analysed frames found in, until confirmed

    def update(self, frame: int, faces: Sequence[FacePrediction]) -> list[TrackedFace]:
        """Link ``faces`` (one analysed frame's, ``frame`` its index) to tracks; returns them in the same order
        with their track and its running estimate. Every face needs ``prediction.age_sigma``."""
        from norfair import Detection

        if self._last_frame is not None and frame <= self._last_frame:
            raise ValueError(f"frames must come in increasing order, got {frame} after {self._last_frame}")
        if any(face.prediction.age_sigma is None for face in faces):
            raise ValueError("the face predictions carry no age_sigma; use Predictor.predict_faces")
        period = 1 if self._last_frame is None else frame - self._last_frame
        self._last_frame = frame
        detections = [Detection(np.array(face.box, dtype=float).reshape(2, 2), data=(frame, k))
                      for k, face in enumerate(faces)]
        objects = self._tracker.update(detections, period=period)
        # norfair keeps the detection an object was last matched with (or created from): those of this frame
        # say which face went to which object.
        object_of = {obj.last_detection.data[1]: obj.id for obj in objects if obj.last_detection.data[0] == frame}
        out = []
        for k, face in enumerate(faces):
            track = self._confirmed(object_of[k], frame, face)  # every detection is matched or starts an object
            if track is None:
                continue
            number = self._numbers[object_of[k]]
            estimate = TrackEstimate(number, track.first_frame, frame, track.evidence.n,
                                     track.evidence.prediction(self.rho, self.interval_scale))
            self._estimates[number] = estimate
            out.append(TrackedFace(number, face, estimate))
        # Objects norfair has ended will never be confirmed.
        alive = {obj.id for obj in self._tracker.tracked_objects}
        self._pending = {oid: seen for oid, seen in self._pending.items() if oid in alive}
        return out

    def _confirmed(self, oid: int, frame: int, face: FacePrediction) -> _Track | None:
        """The track of norfair object ``oid`` with ``face`` (of ``frame``) added, or None while the object has been
        found in fewer than ``confirm_frames`` analysed frames. A track starts at its confirming frame: the frames
        before it are not rows, so they are not in its estimate either (a track's ``frames`` is its rows)."""
        if oid not in self._numbers:
            self._pending[oid] = self._pending.get(oid, 0) + 1
            if self._pending[oid] < self.confirm_frames:
                return None
            del self._pending[oid]
            self._numbers[oid] = len(self._numbers) + 1
            self._tracks[self._numbers[oid]] = _Track(first_frame=frame)
        track = self._tracks[self._numbers[oid]]
        track.add(frame, face)
        return track

    def estimates(self) -> dict[int, TrackEstimate]:
        """The running estimate of every track so far, by track number (a new dict)."""
        return dict(self._estimates)


# Bytes of frames read ahead at most, whatever ``every`` and ``ahead`` ask: a 720p clip at --every 600 held the 1,200
# frames between two analysed ones (3.4 GB), and 600 threads held 600 frames being searched (1.8 GB). 128 MiB: 47
# frames of 720p, 21 of 1080p, 5 of 4K, one of the largest frame the reader lets through (64 MP).
FRAMES_AHEAD_BYTES = 128 * 2**20


def frames_ahead(frame: ImageInput, ahead: int, every: int) -> tuple[int, int]:
    """``(analysed frames searched at once, frames held in all)`` for frames like ``frame`` when ``ahead``
    analysed frames are wanted in flight at every ``every``-th frame; at least one of each, at most what
    :data:`FRAMES_AHEAD_BYTES` holds.

    >>> frames_ahead(np.zeros((720, 1280, 3), np.uint8), 2, 600), frames_ahead(np.zeros((8, 8, 3), np.uint8), 2, 5)
    ((2, 48), (2, 10))
    """
    size = getattr(frame, "nbytes", None) or 3 * getattr(frame, "width", 1) * getattr(frame, "height", 1)
    window = max(1, min(ahead * every, FRAMES_AHEAD_BYTES // max(1, size)))
    return max(1, min(ahead, window)), window


def track(predictor: Predictor, frames: Iterable[ImageInput], every: int = 1, fps: float | None = None,
          tracks: FaceTracks | None = None, ahead: int = 0, max_faces: int | None = None,
          check: Callable[[], None] | None = None) -> Iterator[TrackedFrame]:
    """Follow the faces of a video: ``frames`` (an iterable of photos, in order) in, one :class:`TrackedFrame` out
    per frame, in order: its faces with their track number and each track's running estimate. Faces are detected
    by ``predictor`` in every ``every``-th frame (the first included); ``fps`` gives each frame's time; ``tracks``
    continues an existing :class:`FaceTracks` (by default a new one with the predictor's interval scale).

    The work per frame is bounded as a photo's is (:meth:`Predictor.predict_photos`): at most ``max_faces``
    faces, the largest, are predicted and followed (``TrackedFrame.found`` counts all, ``.dropped`` those left
    out), and ``check`` is called between the detector's steps and may raise to stop.

    ``ahead``: analysed frames read and searched for faces ahead of the one being linked, on ``ahead`` threads (a
    frame costs what a photo costs, so a video file keeps every core busy this way), with at most
    :data:`FRAMES_AHEAD_BYTES` of frames held (:func:`frames_ahead`); 0 handles each frame as it comes, for a live
    source that has no next frame yet. If ``frames`` fails part-way, the frames read before the failure are still
    answered, then the error is raised."""
    if every < 1 or ahead < 0:
        raise ValueError(f"every must be >= 1 and ahead >= 0, got {every} and {ahead}")
    tracks = tracks or FaceTracks(predictor.interval_scale, every=every)
    faces: list[TrackedFace] = []

    def detect(frame: ImageInput) -> PhotoPrediction:
        return predictor.predict_photos([frame], max_faces=max_faces, check=check)[0]

    def link(index: int, photo: PhotoPrediction | None) -> TrackedFrame:
        nonlocal faces
        if photo is not None:
            faces = tracks.update(index, photo.faces)
        return TrackedFrame(index, index / fps if fps else None, photo is not None, faces, tracks.estimates(),
                            None if photo is None else photo.found, 0 if photo is None else photo.dropped)

    if ahead == 0:
        for index, frame in enumerate(frames):
            yield link(index, detect(frame) if index % every == 0 else None)
        return
    yield from _track_ahead(enumerate(frames), detect, link, ahead, every)


def _track_ahead(source: Iterator[tuple[int, ImageInput]], detect: Callable, link: Callable, ahead: int,
                 every: int) -> Iterator[TrackedFrame]:
    """:func:`track`'s frames searched ``ahead`` at once on a thread pool, answered in order."""
    pending: deque = deque()
    pool = window = None
    error = None
    while True:
        try:
            index, frame = next(source)
        except StopIteration:
            break
        except Exception as e:  # noqa: BLE001 - the source broke off: what it gave before is answered first
            error = e
            break
        if window is None:  # sized on the first frame: a video's frames are all alike
            ahead, window = frames_ahead(frame, ahead, every)
            pool = thread_pool(ahead)
        pending.append((index, pool.submit(detect, frame) if index % every == 0 else None))
        # Up to ``ahead`` analysed frames in flight, and ``window`` frames held in all.
        while sum(work is not None for _, work in pending) > ahead or len(pending) > window:
            index, work = pending.popleft()
            yield link(index, None if work is None else work.result())
    while pending:
        index, work = pending.popleft()
        yield link(index, None if work is None else work.result())
    if error is not None:
        raise error
