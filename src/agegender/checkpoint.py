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

import os
import pickle
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from agegender.data import GENDERS, RACES
from agegender.model_config import ModelConfig

if TYPE_CHECKING:
    from agegender.model import AgeGenderNet

FORMAT = "agegender"
FORMAT_VERSION = 1

# The model that ships inside the package (see MODEL_CARD.md); used wherever no checkpoint is named. Its ONNX
# export (scripts/export_bundled.py) is what inference runs; the checkpoint is for training (--init) and torch.
BUNDLED_MODEL = Path(__file__).with_name("default_model.pt")
BUNDLED_ONNX = BUNDLED_MODEL.with_suffix(".onnx")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, of another format or another architecture."""


def resolve_model_path(path: str | Path | None) -> Path:
    """``path``, or the bundled model when ``path`` is None or ``"bundled"``."""
    if path is not None and str(path) != "bundled":
        return Path(path)
    if not BUNDLED_MODEL.is_file():
        raise CheckpointError(f"this installation has no bundled model ({BUNDLED_MODEL}); pass --model CKPT")
    return BUNDLED_MODEL


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


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C until the block has finished, then raise ``KeyboardInterrupt``.

    Why: a KeyboardInterrupt inside ``torch.save`` is masked by the RuntimeError its zip writer then raises
    on close, and a block that writes several files must finish or not start. Only in the main thread and
    only over Python's default handler (anything else installed, e.g. by the service, is left alone);
    nested blocks are held by the outermost one.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, fsync, then rename it to ``path``: a crash
    never leaves a torn file where a good one was, and a failed write leaves the old file untouched. Ctrl-C
    during the write takes effect once the file is in place (:func:`interrupts_held`)."""
    with interrupts_held():
        _atomic_write(Path(path), write)


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(ckpt: dict, path: str | Path) -> None:
    """Write ``ckpt`` atomically (see :func:`atomic_write`)."""
    import torch

    atomic_write(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path: str | Path) -> dict:
    """Read and validate a checkpoint dict (no model is built)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    torch = import_torch(f"reading the checkpoint {path.name}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:
            raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a torch file?)") from e
        raise CheckpointError(
            f"{path} refused: it would import {found[1]} when loaded, which could run code. agegender checkpoints "
            "hold only tensors and plain data; only use checkpoints from sources you trust."
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a torch file?): {e}") from e
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
    return ckpt


def model_from_checkpoint(ckpt: dict) -> AgeGenderNet:
    """Build the network from the config saved in ``ckpt`` and load its weights (strictly)."""
    from agegender.model import AgeGenderNet

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
