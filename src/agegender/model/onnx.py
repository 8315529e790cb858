"""An exported age/gender model run in place of the torch network, torch-free.

The exported graph (written by :func:`agegender.model.export.export_onnx`)::

    input   "image"         float32 [N, 3, S, S]  normalised as the model's eval preset does (N is dynamic)
    outputs "age"           float32 [N]  years
            "age_sigma"     float32 [N]  spread of the age estimate (1 for the regression head)
            "p_female"      float32 [N]  sigmoid(gender_logit), computed inside the graph
            "gender_logit"  float32 [N]

The file carries everything inference needs in its metadata (model config, input size, mean, std, crop_pct and
any extra entries such as the interval calibration), so no checkpoint has to travel with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from agegender.compute.runtime import session
from agegender.errors import CheckpointError, describe
from agegender.model.checkpoint import check_contents
from agegender.model.config import ModelConfig

INPUT_NAME = "image"
OUTPUT_NAMES = ("age", "age_sigma", "p_female", "gender_logit")
CONFIG_KEY = "agegender_model_config"


# The sha256 of the checkpoint an export was made from, so that a stale bundled export can be detected.
SOURCE_KEY = "source_sha256"


class OnnxModel:
    """An exported age/gender model run by onnxruntime; it stands in for the torch network in
    :class:`agegender.inference.predictor.Predictor`.

    ``config``: the :class:`ModelConfig` stored in the file; ``metadata``: all metadata entries (strings).
    ``threads``: onnxruntime's intra-op threads (``None``: one per core); the predictor uses 1 and runs
    batches side by side instead, which degrades far less on a busy machine. ``providers``: onnxruntime's
    execution providers (:func:`agegender.compute.runtime.providers_for`; default the CPU); ``device`` says where
    the session runs: ``"cuda"`` or ``"cpu"``.
    """

    def __init__(self, path: str | Path, providers: list | None = None, threads: int | None = None) -> None:
        self.path = Path(path)
        self.providers = providers
        self.session = session(self.path, threads, providers)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        outputs = {o.name for o in self.session.get_outputs()}
        inputs = [i.name for i in self.session.get_inputs()]
        if CONFIG_KEY not in self.metadata or inputs != [INPUT_NAME] or not outputs >= set(OUTPUT_NAMES):
            raise CheckpointError(f"{self.path} is not an agegender ONNX export (written by export_onnx)")
        try:
            self.config = ModelConfig.from_dict(json.loads(self.metadata[CONFIG_KEY]))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"bad model config in {self.path}: {e}") from e
        self._check_can_predict()

    def _check_can_predict(self) -> None:
        """Refuse, at load, a model that loads but cannot predict (it made ``serve`` start and answer 500 to
        everything): a graph whose input size is not the one its metadata gives, and one whose outputs on a
        dummy batch of two are not one finite number per image with a spread of zero or more."""
        size = self.config.image_size
        dims = self.session.get_inputs()[0].shape
        fixed = [d if isinstance(d, int) else None for d in dims[1:]]
        if len(dims) != 4 or any(d is not None and d != want for d, want in zip(fixed, (3, size, size), strict=True)):
            raise CheckpointError(f"{self.path} cannot predict: its graph takes images of {dims[1:]}, its metadata "
                                  f"says [3, {size}, {size}]")
        try:
            out = self(np.zeros((2, 3, size, size), np.float32))
        except Exception as e:  # noqa: BLE001 - onnxruntime's own errors: the graph cannot run on its input
            raise CheckpointError(f"{self.path} cannot predict: a batch of two [3, {size}, {size}] images fails: "
                                  f"{describe(e)}") from None
        for name, values in out.items():
            values = np.asarray(values)
            if values.shape != (2,):
                raise CheckpointError(f"{self.path} cannot predict: its output {name!r} is {list(values.shape)} for "
                                      "a batch of two images, not one number per image")
            if not np.isfinite(values).all():
                raise CheckpointError(f"{self.path} cannot predict: its output {name!r} is not finite ({values})")
        if (out["age_sigma"] < 0).any():
            raise CheckpointError(f"{self.path} cannot predict: its age spread (age_sigma) is negative "
                                  f"({out['age_sigma']})")

    def checkpoint_like(self) -> dict:
        """The parts of a checkpoint dict a Predictor reads (calibration, inference settings, model config)."""
        out: dict[str, Any] = {"model_config": self.config.to_dict(), "format": "onnx"}
        for key in ("calibration", "inference", "labels", "training"):
            if key in self.metadata:
                try:
                    out[key] = json.loads(self.metadata[key])
                except ValueError as e:
                    raise CheckpointError(f"{self.path}: metadata entry {key!r} is not JSON: {e}") from None
        check_contents(out, self.path)
        return out

    def __call__(self, x: Any) -> dict[str, np.ndarray]:
        """``x`` ``[N, 3, S, S]`` normalised (a numpy array, or anything ``np.asarray`` takes) ->
        ``{"age", "age_sigma", "gender_logit"}``, each float32 ``[N]``."""
        image = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        size = self.config.image_size
        if image.ndim != 4 or tuple(image.shape[1:]) != (3, size, size):
            # onnxruntime's own shape errors name graph internals; say what the file expects instead.
            raise ValueError(f"expected a batch [N, 3, {size}, {size}], got {list(image.shape)}")
        names = ["age", "age_sigma", "gender_logit"]
        return dict(zip(names, self.session.run(names, {INPUT_NAME: image}), strict=True))

    def eval(self) -> OnnxModel:
        """No-op (the graph is always in inference mode); for duck typing with ``nn.Module``."""
        return self

    def to(self, device: Any) -> OnnxModel:
        """No-op (the device is chosen by ``providers``); for duck typing with ``nn.Module``."""
        return self
