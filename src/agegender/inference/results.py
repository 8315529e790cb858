"""The result types every part of agegender speaks: what a predictor answers for a crop, a face in a photo, a
photo, and a tracked face of a video. The video tracker, the annotators, the row writers and the service import
them; they import nothing of those (as supervision's ``Detections``).

Numbers keep full precision in the objects; ``to_dict()`` gives them as every output (CSV, JSON, the service's
answers) writes them, rounded to :data:`DIGITS`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# Digits kept in every output, for reading: a tenth of a pixel, a hundredth of a year, and probabilities to 1e-5.
DIGITS = {"box": 1, "landmarks": 1, "det_score": 4, "age": 2, "age_low": 2, "age_high": 2, "age_sigma": 3,
          "p_female": 5, "time_s": 3, "first_time_s": 3, "last_time_s": 3}


def rounded(key: str, value: object) -> object:
    """``value`` rounded to the digits outputs keep for ``key`` (others, and None, as they are).

    >>> rounded("age", 31.4567), rounded("p_female", 0.123456), rounded("file", "a.jpg"), rounded("age", None)
    (31.46, 0.12346, 'a.jpg', None)
    """
    digits = DIGITS.get(key)
    return round(float(value), digits) if digits is not None and isinstance(value, float | int | np.floating) \
        and not isinstance(value, bool) else value


@dataclass(frozen=True)
class Prediction:
    """Age in years with its interval (``None`` for a model without interval calibration), the decided
    gender (``"male"``/``"female"``), the probability of female, and the network's spread of the age estimate
    (``age_sigma``, years; what :mod:`agegender.video.tracking` weighs frames by). The attributes keep full
    precision; :meth:`to_dict` gives them as every output writes them (:data:`DIGITS`)."""

    age: float
    gender: str
    p_female: float
    age_low: float | None = None
    age_high: float | None = None
    age_sigma: float | None = None

    def to_dict(self) -> dict:
        """``{"age", "gender", "p_female", "age_low", "age_high", "age_sigma"}``, rounded as outputs are.

        >>> Prediction(25.91234, "female", 0.0000612, 20.0, 31.456789, 4.56789).to_dict()["p_female"]
        6e-05
        """
        return {k: rounded(k, v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class FacePrediction:
    """One face found in a photo: where it is, how sure the detector is, and the model's estimate."""

    index: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the input image
    det_score: float
    landmarks: tuple[tuple[float, float], ...]  # eyes, nose, mouth corners (image left, then right)
    prediction: Prediction

    # The estimate's fields on the face itself, as InsightFace's ``face.age`` (``face.prediction.age`` too).
    @property
    def age(self) -> float:
        return self.prediction.age

    @property
    def age_low(self) -> float | None:
        return self.prediction.age_low

    @property
    def age_high(self) -> float | None:
        return self.prediction.age_high

    @property
    def age_sigma(self) -> float | None:
        return self.prediction.age_sigma

    @property
    def gender(self) -> str:
        return self.prediction.gender

    @property
    def p_female(self) -> float:
        return self.prediction.p_female

    def to_dict(self) -> dict:
        """``{"face", "box": [x1, y1, x2, y2], "det_score", "landmarks": [[x, y] x 5], **prediction}``, rounded as
        outputs are."""
        return {"face": self.index, "box": [rounded("box", v) for v in self.box],
                "det_score": rounded("det_score", self.det_score),
                "landmarks": [[rounded("landmarks", x), rounded("landmarks", y)] for x, y in self.landmarks],
                **self.prediction.to_dict()}


@dataclass(frozen=True)
class PhotoPrediction:
    """The faces predicted in one photo; ``found`` counts every face detected, so ``found - len(faces)`` faces
    were left out by a ``max_faces`` cap (the smallest ones)."""

    faces: list[FacePrediction]
    found: int

    @property
    def dropped(self) -> int:
        return self.found - len(self.faces)


@dataclass(frozen=True)
class TrackEstimate:
    """A track's combined estimate over its first ``frames`` analysed frames, ``first_frame`` to ``last_frame``
    (indices into the video)."""

    track: int
    first_frame: int
    last_frame: int
    frames: int
    prediction: Prediction

    def to_dict(self) -> dict:
        return {"track": self.track, "first_frame": self.first_frame, "last_frame": self.last_frame,
                "frames": self.frames, **self.prediction.to_dict()}


@dataclass(frozen=True)
class TrackedFace:
    """One face of one frame: the detection and its own estimate (``face``), the track it belongs to, and that
    track's running estimate with this frame included."""

    track: int
    face: FacePrediction
    estimate: TrackEstimate

    def to_dict(self) -> dict:
        return {"track": self.track, **self.face.to_dict(), "track_estimate": self.estimate.to_dict()}


@dataclass(frozen=True)
class TrackedFrame:
    """What :func:`agegender.video.tracking.track` yields for each frame. ``analysed``: faces were detected
    in this frame; on frames skipped by ``every`` it is False and ``faces`` are the last analysed frame's (boxes
    not moved). ``tracks``: the running estimate of every track so far, by track number. ``found``: faces the
    detector found in this frame (None where it was not analysed); ``dropped`` of them were left out by a
    ``max_faces`` cap (the smallest)."""

    index: int
    time_s: float | None
    analysed: bool
    faces: list[TrackedFace]
    tracks: dict[int, TrackEstimate] = field(default_factory=dict)
    found: int | None = None
    dropped: int = 0


def age_interval(age: np.ndarray, sigma: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` = ``age ∓ scale * sigma``, low clipped at 0."""
    half = scale * np.asarray(sigma, float)
    return np.clip(np.asarray(age, float) - half, 0, None), np.asarray(age, float) + half
