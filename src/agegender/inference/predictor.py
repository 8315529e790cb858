"""One ``Predictor`` behind the CLI, the service and evaluation: images in, named predictions out.

Importing it does not import torch. The network is an exported ONNX file run by onnxruntime (the bundled model
ships as one: ``default_model.onnx``), or a torch model (a ``.pt`` checkpoint with ``runtime="torch"``, or an
``AgeGenderNet`` passed in). Either way the input is made by :mod:`agegender.inference.preprocess`, and batches run side
by side on a few threads (each onnxruntime call on one thread), which keeps a busy machine from slowing it
down more than its share.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from agegender.compute.pools import chunks, default_threads, parallel_map
from agegender.compute.runtime import providers_for
from agegender.data.records import GENDERS
from agegender.errors import ModelOutputError
from agegender.inference.preprocess import normalise, resize_crop
from agegender.inference.results import FacePrediction, PhotoPrediction, Prediction, age_interval
from agegender.io.images import ImageInput, as_pil, as_rgb_array
from agegender.model.checkpoint import BUNDLED_MODEL, BUNDLED_ONNX, resolve_model_path
from agegender.model.onnx import OnnxModel

if TYPE_CHECKING:
    from agegender.faces.detect import Face

MODEL_RUNTIMES = ("auto", "onnx", "torch")
BATCH_SIZE = 16  # images per network call: larger batches were no faster per image on a CPU (benchmarks/speed.py)
# Faces predicted per photo by default in predict and the service: a crowd photo costs seconds per face, far
# beyond what a portrait needs; the largest are kept and the answer says how many were found.
DEFAULT_MAX_FACES = 50
CHANNELS = ("rgb", "bgr")
# predict() takes face crops; an input this large (shorter side) or this far from square is more likely a whole
# photo, and predict() then answers for the whole picture as if it were one face (UTKFace's crops are 200x200).
UNCROPPED_SIDE, UNCROPPED_ASPECT = 400, 1.5


def one_image(image: ImageInput, channels: str = "rgb") -> ImageInput:
    """``image`` checked to be one image (a path, encoded bytes, a PIL image or an ``(H, W[, 3|4])`` uint8 array),
    an array's channels reversed when ``channels="bgr"`` (OpenCV's order; paths, bytes and PIL images are always
    decoded as RGB).

    >>> one_image(np.array([[[1, 2, 3]]], np.uint8), "bgr").tolist()
    [[[3, 2, 1]]]
    >>> one_image(["a.jpg"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: expected one image (a path, bytes, a PIL image or an array), got a list; for several images use ...
    """
    if channels not in CHANNELS:
        raise ValueError(f"channels must be 'rgb' or 'bgr' (OpenCV's order), got {channels!r}")
    if isinstance(image, np.ndarray):
        if channels == "bgr" and image.ndim == 3 and image.shape[2] in (3, 4):
            image = np.ascontiguousarray(image[..., [2, 1, 0, *range(3, image.shape[2])]])
        return image
    if not isinstance(image, str | Path | bytes | bytearray | memoryview | Image.Image):
        raise TypeError(f"expected one image (a path, bytes, a PIL image or an array), got a "
                        f"{type(image).__name__}; for several images use predict_faces([...])")
    return image


def image_list(images: Sequence[ImageInput], method: str, channels: str = "rgb") -> list[ImageInput]:
    """``images`` as a list, each through :func:`one_image`; one image where a list belongs is a ``TypeError`` (a
    string would otherwise be taken for a list of one-letter file names)."""
    single = isinstance(images, str | Path | bytes | bytearray | memoryview | Image.Image) or (
        isinstance(images, np.ndarray) and images.ndim < 4)
    if single:
        raise TypeError(f"{method}() takes a list of images, got one {type(images).__name__}: use "
                        f"{method}([image]), or predict_image(image) for the faces of one photo")
    return [one_image(image, channels) for image in images]


def _warn_if_uncropped(image: Image.Image) -> None:
    w, h = image.size
    if min(w, h) >= UNCROPPED_SIDE or max(w, h) > UNCROPPED_ASPECT * min(w, h):
        warnings.warn(f"predict() takes face crops framed like UTKFace's; a {w}x{h} image looks like a whole photo, "
                      "answered as if it were one face. predict_image(photo) finds and aligns its faces first "
                      "(predict(..., warn_uncropped=False) silences this)", UserWarning, stacklevel=2)


def _exported(checkpoint: Path) -> Path:
    """The ONNX export of ``checkpoint``: the shipped file for the bundled model, else one made once and kept
    in the cache folder (keyed by the checkpoint's content hash; needs torch and onnx)."""
    from agegender.data.cache import CACHE_ENV, cache_dir
    from agegender.io.outputs import writing

    if checkpoint.resolve() == BUNDLED_MODEL.resolve() and BUNDLED_ONNX.is_file():
        return BUNDLED_ONNX
    from agegender.model.checkpoint import import_torch

    import_torch(f"exporting {checkpoint.name} to ONNX")
    from agegender.model.export import export_checkpoint, file_sha256

    out = cache_dir() / "onnx" / f"{checkpoint.stem}-{file_sha256(checkpoint)[:16]}.onnx"
    if not out.exists():
        with writing(out.parent, "cache folder", f"free space there, or point {CACHE_ENV} at another folder"):
            export_checkpoint(checkpoint, out)
    return out


def _check_outputs(out: dict[str, np.ndarray]) -> None:
    """Raise :class:`ModelOutputError` where the network's numbers for any image of the batch are no estimate:
    NaN or infinite, or a negative spread (which swapped ``age_low`` and ``age_high``); they were written as
    results with status ok. The caller answers that input with an error (the photo pipeline retries a failed
    batch one input at a time, so only the input that caused it loses its rows)."""
    age, sigma, logit = (np.asarray(out[k], np.float64) for k in ("age", "age_sigma", "gender_logit"))
    bad = ~(np.isfinite(age) & np.isfinite(sigma) & np.isfinite(logit) & (sigma >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ModelOutputError(f"the model's output is no estimate for {int(bad.sum())} of {len(bad)} images "
                               f"(age {age[i]:g}, age_sigma {sigma[i]:g}, gender_logit {logit[i]:g}): not finite, "
                               "or a negative spread")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Predictor:
    """Age and gender for face crops framed like UTKFace's aligned crops, and for faces found in photos.

    ``model``: an :class:`agegender.model.onnx.OnnxModel`, or a torch ``AgeGenderNet`` (run on ``device``).
    ``workers``: threads that run batches side by side (default: one per core, at most 4, for onnxruntime;
    1 for torch, which uses several threads per call).

    >>> from agegender.model.checkpoint import BUNDLED_ONNX
    >>> p = Predictor(OnnxModel(BUNDLED_ONNX))
    >>> [type(r).__name__ for r in p.predict([np.zeros((40, 50, 3), np.uint8)])]
    ['Prediction']
    """

    def __init__(self, model: Any, device: Any = "cpu", flip_tta: bool | None = None,
                 checkpoint: dict | None = None, detector: Any = None, workers: int | None = None) -> None:
        self.model = model
        if isinstance(model, OnnxModel):
            self.device, self._net = model.device, model
        else:  # a torch network; only then is torch imported
            from agegender.model.network import TorchRunner, resolve_device

            self.device = resolve_device(device) if isinstance(device, str) else device
            self._net = TorchRunner(model, self.device)
        self.preset = model.config.preset
        ckpt = checkpoint or {}
        # The checkpoint says how it was validated and calibrated (mirror averaging or not); follow it
        # unless told otherwise, so the interval keeps its calibrated coverage.
        self.flip_tta = bool(ckpt.get("inference", {}).get("flip_tta", False)) if flip_tta is None else flip_tta
        interval = ckpt.get("calibration", {}).get("age_interval")
        self.interval_scale: float | None = interval["scale"] if interval else None
        self.interval_coverage: float | None = interval["coverage"] if interval else None
        self.checkpoint_info = {k: v for k, v in ckpt.items() if not k.endswith("_state")}
        # onnxruntime runs each call on one thread, so batches run side by side; torch spreads each call over
        # its own threads, and running two at once would only make them fight over the cores.
        parallel = isinstance(model, OnnxModel)
        self.workers = (default_threads() if parallel else 1) if workers is None else max(1, workers)
        self._detector = detector
        # The file this predictor runs (set by from_checkpoint): an export's, not the checkpoint it was made from.
        self.source: Path | None = model.path if isinstance(model, OnnxModel) else None

    @property
    def providers(self) -> list | None:
        """onnxruntime's providers the model runs on (None for a torch model); the detector runs on the same."""
        return self.model.providers if isinstance(self.model, OnnxModel) else None

    @property
    def detector(self):
        """The face detector (MTCNN on onnxruntime, on the model's device), created on first use: crops-only users
        never pay for it. May be set to a :class:`agegender.faces.detect.FaceDetector` of other settings."""
        if self._detector is None:
            from agegender.faces.detect import FaceDetector

            self._detector = FaceDetector(providers=self.providers)
        return self._detector

    @detector.setter
    def detector(self, detector: Any) -> None:
        self._detector = detector

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", flip_tta: bool | None = None,
                        detector: Any = None, runtime: str = "auto", workers: int | None = None) -> Predictor:
        """A predictor for an exported ``.onnx`` file or a ``.pt`` checkpoint.

        ``runtime="auto"``: onnxruntime for an ``.onnx`` file and for the bundled model (its shipped export),
        torch for other checkpoints. ``"onnx"``: a checkpoint is exported once into the cache folder (keyed
        by its content hash) and that file is run. ``"torch"``: the checkpoint's network in torch.

        ``device``: for onnxruntime ``cpu``, ``cuda``, ``cuda:N`` or ``auto``
        (:func:`agegender.compute.runtime.providers_for`; the face detector runs there too), for torch any device
        torch knows. A device that is unknown or not available here is a ``ValueError`` that says what to do.
        """
        path = Path(path)
        if runtime not in MODEL_RUNTIMES:
            raise ValueError(f"runtime must be one of {MODEL_RUNTIMES}, got {runtime!r}")
        bundled = path.resolve() == BUNDLED_MODEL.resolve() and BUNDLED_ONNX.is_file()
        if path.suffix == ".onnx" or runtime == "onnx" or (runtime == "auto" and bundled):
            providers = providers_for(device)  # an unknown device is refused before any file is read
            model = OnnxModel(path if path.suffix == ".onnx" else _exported(path), providers=providers, threads=1)
            return cls(model, flip_tta=flip_tta, checkpoint=model.checkpoint_like(), detector=detector,
                       workers=workers)
        from agegender.model.checkpoint import load_model

        model, ckpt = load_model(path)
        predictor = cls(model, device=device, flip_tta=flip_tta, checkpoint=ckpt, detector=detector, workers=workers)
        predictor.source = path
        return predictor

    @classmethod
    def default(cls, device: str = "cpu", runtime: str = "auto") -> Predictor:
        """The bundled model (its ONNX export; ``runtime="torch"``: ``default_model.pt``)."""
        return cls.from_checkpoint(resolve_model_path(None), device=device, runtime=runtime)

    def prepare(self, image: ImageInput, warn_uncropped: bool = False) -> np.ndarray:
        """One image (PIL, path, encoded bytes or HxWx3 uint8 array) -> the network's crop, uint8 ``[S, S, 3]``;
        ``warn_uncropped``: warn when the image looks like a whole photo rather than a face crop."""
        pil = as_pil(image)
        if warn_uncropped:
            _warn_if_uncropped(pil)
        return resize_crop(pil, self.preset)

    def preprocess(self, images: Sequence[ImageInput], warn_uncropped: bool = False) -> np.ndarray:
        """Images -> normalised batch float32 ``[N, 3, S, S]``."""
        crops = parallel_map(lambda image: self.prepare(image, warn_uncropped), images, self.workers)
        return normalise(np.stack(crops), self.preset)

    def predict_tensor(self, batch: Any) -> dict[str, np.ndarray]:
        """Normalised batch ``[N, 3, S, S]`` (numpy, or a CPU tensor) -> ``{"age", "age_sigma", "p_female"}``,
        each ``[N]``; with ``flip_tta`` the mean over each image and its mirror image (the gender logit is
        averaged before the sigmoid)."""
        batch = np.asarray(batch, dtype=np.float32)
        if self.flip_tta:  # one call on the images and their mirror images
            both = self._net(np.concatenate([batch, batch[..., ::-1]]))
            out = {k: (v[: len(batch)] + v[len(batch) :]) / 2 for k, v in both.items()}
        else:
            out = self._net(batch)
        _check_outputs(out)
        return {"age": out["age"], "age_sigma": out["age_sigma"], "p_female": _sigmoid(out["gender_logit"])}

    def predict_crops(self, crops: np.ndarray, batch_size: int = BATCH_SIZE) -> dict[str, np.ndarray]:
        """uint8 crops ``[N, S, S, 3]`` (from :meth:`prepare`) -> ``{"age", "age_sigma", "p_female"}`` ``[N]``,
        in batches of ``batch_size`` run side by side."""
        if len(crops) == 0:
            return {k: np.zeros(0, np.float32) for k in ("age", "age_sigma", "p_female")}
        parts = parallel_map(lambda part: self.predict_tensor(normalise(part, self.preset)),
                             chunks(crops, batch_size), self.workers)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def predict(self, images: Sequence[ImageInput], batch_size: int = BATCH_SIZE,
                check: Callable[[], None] | None = None, channels: str = "rgb",
                warn_uncropped: bool = True) -> list[Prediction]:
        """One :class:`Prediction` per face crop framed like UTKFace's aligned crops (PIL images, paths, encoded
        bytes or HxWx3 uint8 arrays; ``channels="bgr"`` for OpenCV's arrays). For photos, use
        :meth:`predict_image` or :meth:`predict_faces`, which find and align the faces first: an input that looks
        like a whole photo gets a warning (``warn_uncropped``). Each batch is decoded, cropped and run in one
        worker thread; ``check`` is called before each batch and may raise to stop."""
        images = image_list(images, "predict", channels)

        def run(part: Sequence[ImageInput]) -> dict[str, np.ndarray]:
            if check is not None:
                check()
            return self.predict_tensor(self.preprocess(part, warn_uncropped))

        parts = parallel_map(run, chunks(images, batch_size), self.workers)
        return [p for part in parts for p in self.predictions(part)]

    def predictions(self, out: dict[str, np.ndarray]) -> list[Prediction]:
        """Network outputs (``age``, ``age_sigma``, ``p_female``, each ``[N]``) -> one :class:`Prediction` each,
        with the calibrated interval where the model has one."""
        n = len(out["age"])
        lows, highs = [None] * n, [None] * n
        if self.interval_scale is not None:
            lows, highs = age_interval(out["age"], out["age_sigma"], self.interval_scale)
        return [Prediction(float(max(age, 0.0)), GENDERS[int(p >= 0.5)], float(p),
                           None if lo is None else float(lo), None if hi is None else float(hi), float(sigma))
                for age, p, lo, hi, sigma in zip(out["age"], out["p_female"], lows, highs, out["age_sigma"],
                                                 strict=True)]

    def find_faces(self, image: ImageInput, max_faces: int | None = None,
                   check: Callable[[], None] | None = None) -> tuple[list[Face], np.ndarray, int]:
        """Detect every face in one photo and align it to UTKFace's framing: ``(faces, crops uint8 [K, S, S, 3],
        found)`` (see :meth:`prepare`); at most ``max_faces`` faces (the largest) are kept of the ``found``."""
        from agegender.faces.align import UTKFACE_SIZE, align
        from agegender.faces.detect import largest

        if check is not None:
            check()
        # One array of the photo for the detector and every face's alignment (a crowd photo has dozens).
        pixels = as_rgb_array(as_pil(image))
        faces = self.detector.detect(pixels, check, max_faces)
        found = len(faces)
        if max_faces is not None:
            faces = largest(faces, max_faces)
        crops = [self.prepare(align(pixels, f.landmarks, UTKFACE_SIZE)) for f in faces]
        size = self.preset.image_size
        return faces, np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8), found

    def predict_photos(self, images: Sequence[ImageInput], batch_size: int = BATCH_SIZE,
                       max_faces: int | None = None, check: Callable[[], None] | None = None,
                       channels: str = "rgb") -> list[PhotoPrediction]:
        """Detect every face in each photo, align it to UTKFace's framing, and predict; one
        :class:`PhotoPrediction` per photo (``channels="bgr"`` for OpenCV's arrays). The work is bounded: at most
        ``max_faces`` faces per photo (the largest) are aligned and predicted, and ``check`` is called between
        steps and may raise to stop. Photos are detected side by side; all their faces then go through the
        network together."""
        images = image_list(images, "predict_photos", channels)
        if max_faces is not None and max_faces < 1:
            raise ValueError(f"max_faces must be >= 1 or None, got {max_faces}")
        found = parallel_map(lambda image: self.find_faces(image, max_faces, check), images, self.workers)
        size = self.preset.image_size
        crops = np.concatenate([c for _, c, _ in found]) if found else np.zeros((0, size, size, 3), np.uint8)
        preds = iter(self.predictions(self.predict_crops(crops, batch_size)))
        return [PhotoPrediction([FacePrediction(i, f.box, f.score, f.landmarks, next(preds))
                                 for i, f in enumerate(faces)], n) for faces, _, n in found]

    def predict_faces(self, images: Sequence[ImageInput], batch_size: int = BATCH_SIZE,
                      channels: str = "rgb") -> list[list[FacePrediction]]:
        """Every face of each photo (see :meth:`predict_photos`); one list per photo (empty where no face was
        found)."""
        images = image_list(images, "predict_faces", channels)
        return [photo.faces for photo in self.predict_photos(images, batch_size)]

    def predict_image(self, image: ImageInput, channels: str = "rgb",
                      max_faces: int | None = None) -> list[FacePrediction]:
        """The faces of one photo, found, aligned and predicted: a path, encoded bytes, a PIL image or an
        ``(H, W, 3)`` uint8 array (RGB; ``channels="bgr"`` for one from OpenCV's ``cv2.imread``). Each face has
        ``.age``, ``.age_low``/``.age_high`` (the calibrated interval), ``.gender``, ``.p_female``, ``.box`` and
        ``.det_score``, best detector score first.

        >>> faces = Predictor.default().predict_image("examples/astronaut.png")
        >>> len(faces), faces[0].gender, 20 < faces[0].age < 40, [round(v) for v in faces[0].box]
        (1, 'female', True, [181, 62, 268, 172])
        """
        return self.predict_photos([one_image(image, channels)], max_faces=max_faces)[0].faces
