"""One ``Predictor`` behind the CLI, the service and export: images in, named predictions out."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from agegender.checkpoint import load_model, resolve_model_path
from agegender.data import GENDERS
from agegender.engine import forward_tta, resolve_device
from agegender.images import ImageInput, as_pil
from agegender.metrics import age_interval
from agegender.model import AgeGenderNet
from agegender.transforms import eval_preset

if TYPE_CHECKING:
    from agegender.tracking import FaceTracks, TrackedFrame

RUNTIMES = ("torch", "onnx")
# Faces predicted per photo by default in predict and the service: a crowd photo costs seconds per face, far
# beyond what a portrait needs; the largest are kept and the answer says how many were found.
DEFAULT_MAX_FACES = 50


def _exported(checkpoint: Path) -> Path:
    """The ONNX export of ``checkpoint``, made once and kept in the cache folder."""
    import hashlib

    from agegender.cache import cache_dir
    from agegender.export import export_checkpoint

    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]
    out = cache_dir() / "onnx" / f"{checkpoint.stem}-{digest}.onnx"
    if not out.exists():
        export_checkpoint(checkpoint, out)
    return out


@dataclass(frozen=True)
class Prediction:
    """Age in years with its interval (``None`` for a model without interval calibration), the decided
    gender (``"male"``/``"female"``), the probability of female, and the network's spread of the age estimate
    (``age_sigma``, years; what :mod:`agegender.tracking` weighs frames by)."""

    age: float
    gender: str
    p_female: float
    age_low: float | None = None
    age_high: float | None = None
    age_sigma: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FacePrediction:
    """One face found in a photo: where it is, how sure the detector is, and the model's estimate."""

    index: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the input image
    det_score: float
    landmarks: tuple[tuple[float, float], ...]  # eyes, nose, mouth corners (image left, then right)
    prediction: Prediction

    def to_dict(self) -> dict:
        return {"face": self.index, "box": [round(v, 1) for v in self.box], "det_score": round(self.det_score, 4),
                "landmarks": [[round(x, 1), round(y, 1)] for x, y in self.landmarks], **self.prediction.to_dict()}


@dataclass(frozen=True)
class PhotoPrediction:
    """The faces predicted in one photo; ``found`` counts every face detected, so ``found - len(faces)`` faces
    were left out by a ``max_faces`` cap (the smallest ones)."""

    faces: list[FacePrediction]
    found: int

    @property
    def dropped(self) -> int:
        return self.found - len(self.faces)


class Predictor:
    """Age and gender for face crops framed like UTKFace's aligned crops.

    >>> from PIL import Image
    >>> from agegender.model import ModelConfig
    >>> p = Predictor(AgeGenderNet(ModelConfig(image_size=32)))
    >>> [type(r).__name__ for r in p.predict([Image.new("RGB", (50, 40))])]
    ['Prediction']
    """

    def __init__(self, model: AgeGenderNet, device: str | torch.device = "cpu", flip_tta: bool | None = None,
                 checkpoint: dict | None = None, detector=None) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        cfg = model.config
        self.transform = eval_preset(cfg.preset)
        ckpt = checkpoint or {}
        # The checkpoint says how it was validated and calibrated (mirror averaging or not); follow it
        # unless told otherwise, so the interval keeps its calibrated coverage.
        self.flip_tta = bool(ckpt.get("inference", {}).get("flip_tta", False)) if flip_tta is None else flip_tta
        interval = ckpt.get("calibration", {}).get("age_interval")
        self.interval_scale: float | None = interval["scale"] if interval else None
        self.interval_coverage: float | None = interval["coverage"] if interval else None
        self.checkpoint_info = {k: v for k, v in ckpt.items() if not k.endswith("_state")}
        self._detector = detector

    @property
    def detector(self):
        """The face detector (MTCNN), created on first use: crops-only users never pay for it."""
        if self._detector is None:
            from agegender.faces import FaceDetector

            self._detector = FaceDetector(device=self.device)
        return self._detector

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", flip_tta: bool | None = None,
                        detector=None, runtime: str = "torch") -> Predictor:
        """A predictor for a checkpoint (``.pt``) or an exported ``.onnx`` file.

        ``runtime="onnx"`` runs the network with onnxruntime: an ``.onnx`` file directly; a checkpoint is
        exported once into the cache folder (keyed by its content hash) and that file is used.
        """
        path = Path(path)
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if path.suffix == ".onnx" or runtime == "onnx":
            from agegender.export import OnnxModel

            onnx_path = path if path.suffix == ".onnx" else _exported(path)
            model = OnnxModel(onnx_path)
            return cls(model, device="cpu", flip_tta=flip_tta, checkpoint=model.checkpoint_like(),
                       detector=detector)
        model, ckpt = load_model(path)
        return cls(model, device=device, flip_tta=flip_tta, checkpoint=ckpt, detector=detector)

    @classmethod
    def default(cls, device: str = "cpu") -> Predictor:
        """The bundled model (``agegender/default_model.pt``)."""
        return cls.from_checkpoint(resolve_model_path(None), device=device)

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Images -> normalised batch ``[N, 3, S, S]``."""
        return torch.stack([self.transform(as_pil(im)) for im in images])

    @torch.inference_mode()
    def predict_tensor(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """``[N, 3, S, S]`` normalised batch -> ``{"age", "age_sigma", "p_female"}``, each ``[N]``."""
        out = forward_tta(self.model, batch.to(self.device), self.flip_tta)
        return {"age": out["age"].cpu().numpy(), "age_sigma": out["age_sigma"].cpu().numpy(),
                "p_female": torch.sigmoid(out["gender_logit"]).cpu().numpy()}

    def predict_faces(self, images: Sequence[ImageInput], batch_size: int = 64) -> list[list[FacePrediction]]:
        """Detect every face in each photo, align it to UTKFace's framing, and predict; one list per photo
        (empty where no face was found)."""
        return [photo.faces for photo in self.predict_photos(images, batch_size)]

    def predict_photos(self, images: Sequence[ImageInput], batch_size: int = 64, max_faces: int | None = None,
                       check: Callable[[], None] | None = None) -> list[PhotoPrediction]:
        """As :meth:`predict_faces`, with a bound on the work: at most ``max_faces`` faces per photo (the
        largest) are aligned and predicted, and ``check`` is called between steps and may raise to stop."""
        from agegender.faces import UTKFACE_SIZE, align, largest

        if max_faces is not None and max_faces < 1:
            raise ValueError(f"max_faces must be >= 1 or None, got {max_faces}")
        check = check or (lambda: None)
        found, kept, crops = [], [], []
        for image in images:
            check()
            pil = as_pil(image)
            faces = self.detector.detect(pil, check)
            found.append(len(faces))
            kept.append(faces if max_faces is None else largest(faces, max_faces))
            crops.extend(align(pil, f.landmarks, UTKFACE_SIZE) for f in kept[-1])
        preds = iter(self.predict(crops, batch_size, check) if crops else [])
        return [PhotoPrediction([FacePrediction(i, f.box, f.score, f.landmarks, next(preds))
                                 for i, f in enumerate(faces)], n) for faces, n in zip(kept, found, strict=True)]

    def track(self, frames: Iterable[ImageInput], every: int = 1, fps: float | None = None,
              tracks: FaceTracks | None = None) -> Iterator[TrackedFrame]:
        """Follow the faces of a video: ``frames`` (an iterable of photos, in order) in, one
        :class:`~agegender.tracking.TrackedFrame` out per frame, as each is read: its faces with their track
        number and each track's running estimate. Faces are detected in every ``every``-th frame (the first
        included); ``fps`` gives each frame's time; ``tracks`` continues an existing
        :class:`~agegender.tracking.FaceTracks` (by default a new one with this model's interval scale)."""
        from agegender.tracking import FaceTracks, TrackedFrame

        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        tracks = tracks or FaceTracks(self.interval_scale, every=every)
        faces = []
        for index, frame in enumerate(frames):
            analysed = index % every == 0
            if analysed:
                faces = tracks.update(index, self.predict_faces([frame])[0])
            yield TrackedFrame(index, index / fps if fps else None, analysed, faces, tracks.estimates())

    def predict(self, images: Sequence[ImageInput], batch_size: int = 64,
                check: Callable[[], None] | None = None) -> list[Prediction]:
        """One :class:`Prediction` per image (PIL images, paths, encoded bytes or HxWx3 uint8 arrays);
        ``check`` is called before each batch and may raise to stop."""
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            if check is not None:
                check()
            out = self.predict_tensor(self.preprocess(images[start : start + batch_size]))
            lows, highs = [None] * len(out["age"]), [None] * len(out["age"])
            if self.interval_scale is not None:
                lows, highs = age_interval(out["age"], out["age_sigma"], self.interval_scale)
            for age, p, lo, hi, sigma in zip(out["age"], out["p_female"], lows, highs, out["age_sigma"],
                                             strict=True):
                results.append(Prediction(
                    float(max(age, 0.0)), GENDERS[int(p >= 0.5)], float(p),
                    None if lo is None else float(lo), None if hi is None else float(hi), float(sigma)))
        return results
