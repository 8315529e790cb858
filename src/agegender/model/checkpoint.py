"""Checkpoints are plain dicts, written atomically and read with ``weights_only=True``.

Importing this module does not import torch (inference with onnxruntime needs :class:`CheckpointError` and the
bundled model's paths); the functions that read or write ``.pt`` files import it when called.

A checkpoint never unpickles code: ``torch.load(..., weights_only=True)`` accepts only tensors and plain
containers, so a file crafted to run code on load is refused.

Layout (format version 1)::

    {"format": "agegender", "format_version": 1,
     "model_config": {...ModelConfig...}, "model_state": {...},
     "age_normalisation": {"mean": float, "std": float},
     "labels": {"gender": ["male", "female"], "race": [...]},
     "training": {"epoch": int, "config": {...}, "data_fingerprint": str, "split": {...}, "metrics": {...},
                  "history": [...]},
     # last.pt only, for --resume:
     "optimizer_state": ..., "scheduler_state": ..., "scaler_state": ..., "rng_state": ...}
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING

from agegender.data.records import GENDERS, RACES
from agegender.errors import CheckpointError
from agegender.io.outputs import atomic_write
from agegender.model.config import ModelConfig

if TYPE_CHECKING:
    from agegender.model.network import AgeGenderNet

FORMAT = "agegender"
FORMAT_VERSION = 1

# The model that ships inside the package (see MODEL_CARD.md); used wherever no checkpoint is named. Its ONNX
# export (scripts/export_bundled.py) is what inference runs; the checkpoint is for training (--init) and torch.
BUNDLED_MODEL = Path(__file__).parents[1] / "default_model.pt"
BUNDLED_ONNX = BUNDLED_MODEL.with_suffix(".onnx")


def resolve_model_path(path: str | Path | None) -> Path:
    """``path``, or the bundled model when ``path`` is None or ``"bundled"``: its checkpoint where there is one (a
    clone of the repository), else its ONNX export (an installed wheel carries only that; inference runs it
    either way)."""
    if path is not None and str(path) != "bundled":
        return Path(path)
    for bundled in (BUNDLED_MODEL, BUNDLED_ONNX):
        if bundled.is_file():
            return bundled
    raise CheckpointError(f"this installation has no bundled model ({BUNDLED_ONNX}); pass --model CKPT")


def import_torch(purpose: str):
    """``torch``, or a :class:`CheckpointError` saying how to install it (an inference-only install has none)."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{purpose} needs PyTorch, which is not installed: pip install 'agegender[train]', "
                              "or use an exported .onnx model") from None
    return torch


def make_checkpoint(model: AgeGenderNet, training: dict | None = None, **resume_state) -> dict:
    cfg = model.config
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": cfg.to_dict(),
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "age_normalisation": {"mean": float(cfg.age_mean), "std": float(cfg.age_std)},
        "labels": {"gender": list(GENDERS), "race": list(RACES)},
        "training": training or {},
        **resume_state,
    }


def save_checkpoint(ckpt: dict, path: str | Path) -> None:
    """Write ``ckpt`` atomically (see :func:`atomic_write`)."""
    import torch

    atomic_write(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path: str | Path) -> dict:
    """Read and validate a checkpoint dict (no model is built)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        bundled = path.resolve() == BUNDLED_ONNX.resolve()
        raise CheckpointError(f"{path} is an ONNX export, which predicts but cannot be trained from or run in torch: "
                              "this needs a .pt checkpoint" + (
                                  " (installed wheels carry the bundled model as ONNX only; its default_model.pt is "
                                  "in the source repository: pip install -e '.[train]' in a clone)" if bundled else ""))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    torch = import_torch(f"reading the checkpoint {path.name}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch words this differently across versions: "Unsupported global: GLOBAL x.y", "unsupported GLOBAL
        # x.y whose module x is blocked", or an opcode the safe unpickler does not allow at all.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:
            raise CheckpointError(f"{path} is not a readable checkpoint (truncated, not a torch file, or holding "
                                  "more than tensors and plain data)") from e
        raise CheckpointError(
            f"{path} refused: it would import {found[1]} when loaded, which could run code. agegender checkpoints "
            "hold only tensors and plain data; only use checkpoints from sources you trust."
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError, MemoryError) as e:
        reason = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a torch file?): {reason}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an agegender checkpoint")
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this agegender reads version {FORMAT_VERSION}. "
            "Upgrade agegender (or retrain)."
        )
    for key in ("model_config", "model_state"):
        if key not in ckpt:
            raise CheckpointError(f"{path} lacks {key!r}")
    check_contents(ckpt, path)
    return ckpt


def _positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf


def check_contents(ckpt: dict, source: str | Path) -> None:
    """Refuse a checkpoint (or an export's metadata) whose parts do not have the types every consumer relies
    on: a crafted file may put a list where the weights go or a string where the interval's scale goes."""
    state = ckpt.get("model_state", {})
    # An export's metadata has no weights, and an inference-only install has no torch to type them with.
    tensor = import_torch("reading weights").Tensor if state else object
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{source}: model_state is not a mapping of parameter names to tensors")
    for key in ("model_config", "calibration", "inference", "labels", "training"):
        if not isinstance(ckpt.get(key, {}), dict):
            raise CheckpointError(f"{source}: {key} is not a mapping (got {type(ckpt[key]).__name__})")
    interval = ckpt.get("calibration", {}).get("age_interval")
    if interval is not None and not (isinstance(interval, dict) and _positive_number(interval.get("scale"))
                                     and _positive_number(interval.get("coverage")) and interval["coverage"] < 1):
        raise CheckpointError(f"{source}: calibration.age_interval needs a finite scale > 0 and a coverage in (0, 1)")


def check_resumable(ckpt: dict, path: str | Path) -> None:
    """``ckpt`` holds what ``train --resume`` continues from (a run's last.pt, not a best.pt or an export)."""
    missing = [k for k in ("optimizer_state", "scheduler_state", "rng_state") if k not in ckpt]
    training = ckpt.get("training", {})
    if missing or not isinstance(training.get("epoch"), int) or not isinstance(training.get("config"), dict):
        raise CheckpointError(f"{path} cannot be resumed: it lacks the optimiser state and run config that a "
                              "run's last.pt holds (a best.pt, or a file from elsewhere?)")


def model_from_checkpoint(ckpt: dict) -> AgeGenderNet:
    """Build the network from the config saved in ``ckpt`` and load its weights (strictly)."""
    from agegender.model.network import AgeGenderNet

    try:
        config = ModelConfig.from_dict(dict(ckpt["model_config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"bad model config in checkpoint: {e}") from e
    model = AgeGenderNet(config)
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint weights do not match the {config.backbone} architecture it declares: {str(e)[:400]}"
        ) from e
    return model.eval()


def load_model(path: str | Path) -> tuple[AgeGenderNet, dict]:
    """``(model in eval mode on the CPU, checkpoint dict)``."""
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt
