"""One ``Predictor`` behind the CLI, the service and export: images in, named predictions out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from agegender.checkpoint import load_model
from agegender.data import GENDERS
from agegender.engine import resolve_device
from agegender.images import open_image
from agegender.model import AgeGenderNet
from agegender.transforms import PresetConfig, eval_preset

ImageInput = Image.Image | str | Path | bytes | np.ndarray


@dataclass(frozen=True)
class Prediction:
    """Age in years, the decided gender (``"male"``/``"female"``) and the probability of female."""

    age: float
    gender: str
    p_female: float

    def to_dict(self) -> dict:
        return asdict(self)


def _as_pil(x: ImageInput) -> Image.Image:
    if isinstance(x, Image.Image):
        return x.convert("RGB") if x.mode != "RGB" else x
    if isinstance(x, np.ndarray):
        if x.ndim == 2:
            x = np.stack([x] * 3, axis=-1)
        if x.ndim != 3 or x.shape[2] not in (3, 4) or x.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {x.shape} dtype {x.dtype}")
        return Image.fromarray(np.ascontiguousarray(x[..., :3]))
    return open_image(x)


class Predictor:
    """Age and gender for face crops framed like UTKFace's aligned crops.

    >>> from agegender.model import ModelConfig
    >>> p = Predictor(AgeGenderNet(ModelConfig(image_size=32)))
    >>> [type(r).__name__ for r in p.predict([Image.new("RGB", (50, 40))])]
    ['Prediction']
    """

    def __init__(self, model: AgeGenderNet, device: str | torch.device = "cpu", flip_tta: bool = False,
                 checkpoint: dict | None = None) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        cfg = model.config
        self.transform = eval_preset(PresetConfig(cfg.image_size, cfg.crop_pct, cfg.mean, cfg.std))
        self.flip_tta = flip_tta
        self.checkpoint_info = {k: v for k, v in (checkpoint or {}).items() if k not in ("model_state",)}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", flip_tta: bool = False) -> Predictor:
        model, ckpt = load_model(path)
        return cls(model, device=device, flip_tta=flip_tta, checkpoint=ckpt)

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Images -> normalised batch ``[N, 3, S, S]``."""
        return torch.stack([self.transform(_as_pil(im)) for im in images])

    @torch.inference_mode()
    def predict_tensor(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """``[N, 3, S, S]`` normalised batch -> ``{"age": [N], "p_female": [N]}``."""
        x = batch.to(self.device)
        out = self.model(x)
        age, logit = out["age"], out["gender_logit"]
        if self.flip_tta:
            out_f = self.model(torch.flip(x, dims=[3]))
            age, logit = (age + out_f["age"]) / 2, (logit + out_f["gender_logit"]) / 2
        return {"age": age.float().cpu().numpy(), "p_female": torch.sigmoid(logit).float().cpu().numpy()}

    def predict(self, images: Sequence[ImageInput], batch_size: int = 64) -> list[Prediction]:
        """One :class:`Prediction` per image (PIL images, paths, encoded bytes or HxWx3 uint8 arrays)."""
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            out = self.predict_tensor(self.preprocess(images[start : start + batch_size]))
            for age, p in zip(out["age"], out["p_female"], strict=True):
                results.append(Prediction(float(max(age, 0.0)), GENDERS[int(p >= 0.5)], float(p)))
        return results
