"""Export to ONNX (needs torch and onnx): the graph and metadata described in :mod:`agegender.model.onnx`, which
runs the file with onnxruntime alone (:class:`OnnxModel` is importable from here too).

``onnx`` is an optional dependency, imported only when exporting.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agegender.io.outputs import atomic_write
from agegender.model.config import ModelConfig
from agegender.model.network import AgeGenderNet
from agegender.model.onnx import CONFIG_KEY, INPUT_NAME, OUTPUT_NAMES, SOURCE_KEY, OnnxModel

__all__ = ["ONNX_OPSET", "OUTPUT_NAMES", "OnnxModel", "checkpoint_metadata", "export_checkpoint", "export_onnx"]

log = logging.getLogger(__name__)

# Opset 17 is handled fully by torch's TorchScript exporter and runs on onnxruntime >= 1.14 (early 2023), so
# an export also works on older deployed runtimes. Every op the supported backbones and heads need (Conv,
# BatchNormalization, Clip for ReLU6, HardSwish and HardSigmoid (opset 14), Softmax, Sigmoid) exists by then.
ONNX_OPSET = 17

# Written by export_onnx itself; user metadata may not overwrite them.
RESERVED_KEYS = frozenset({CONFIG_KEY, "image_size", "mean", "std", "crop_pct", "preprocessing"})


class _NamedOutputs(nn.Module):
    """The model with a tuple of outputs in ``OUTPUT_NAMES`` order: ONNX graphs return positional outputs,
    and the output names given to the exporter make them named again for users of the file."""

    def __init__(self, model: AgeGenderNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``image`` ``[N, 3, S, S]`` -> ``(age, age_sigma, p_female, gender_logit)``, each ``[N]``."""
        out = self.model(image)
        logit = out["gender_logit"]
        return out["age"], out["age_sigma"], torch.sigmoid(logit), logit


def _metadata_entries(config: ModelConfig, metadata: dict[str, Any] | None) -> dict[str, str]:
    """ONNX metadata values are strings: ``str`` values are stored as they are, anything else as JSON."""
    entries = {
        CONFIG_KEY: json.dumps(config.to_dict()),
        "image_size": str(config.image_size),
        "mean": json.dumps(list(config.mean)),
        "std": json.dumps(list(config.std)),
        "crop_pct": str(config.crop_pct),
        # For consumers outside Python, who cannot call transforms.eval_preset.
        "preprocessing": (
            "RGB; resize the shorter side to round(image_size / crop_pct) (antialiased), centre crop "
            "image_size x image_size, scale to [0, 1], subtract mean, divide by std; NCHW float32"
        ),
    }
    for key, value in (metadata or {}).items():
        if key in RESERVED_KEYS:
            raise ValueError(f"metadata key {key!r} is reserved for what export_onnx writes itself")
        entries[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return entries


def checkpoint_metadata(ckpt: dict) -> dict[str, Any]:
    """What a checkpoint knows beyond the weights that inference uses: calibration and inference settings, the
    names of its labels, and its training record without the per-epoch history (the service's model card reads it)."""
    out = {k: ckpt[k] for k in ("calibration", "inference", "labels") if k in ckpt}
    if ckpt.get("training"):
        out["training"] = {k: v for k, v in ckpt["training"].items() if k != "history"}
    return out


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_checkpoint(ckpt_path: str | Path, out: str | Path, opset: int = ONNX_OPSET) -> Path:
    """Export the checkpoint at ``ckpt_path`` (weights, calibration, inference settings, training record and
    the checkpoint's sha256) to ``out``."""
    from agegender.model.checkpoint import load_model

    model, ckpt = load_model(ckpt_path)
    return export_onnx(model, out, opset, checkpoint_metadata(ckpt) | {SOURCE_KEY: file_sha256(ckpt_path)})


def export_onnx(model: AgeGenderNet, path: str | Path, opset: int = ONNX_OPSET,
                metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` as a self-contained ONNX file (see the module docstring for the graph).

    ``metadata``: extra entries (e.g. ``{"calibration": {...}}``) stored in the file's metadata. The model's
    train/eval mode is left as it was. Returns ``path``.
    """
    try:
        import onnx
    except ImportError as e:
        raise RuntimeError("ONNX export needs the onnx package: pip install onnx") from e

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = _metadata_entries(model.config, metadata)
    size = model.config.image_size
    device = next(model.parameters()).device
    # Batch 2, not 1, so that no size-1 dimension can be mistaken for a broadcast and baked into the graph.
    dummy = torch.zeros(2, 3, size, size, device=device)
    wrapper = _NamedOutputs(model)
    was_training = model.training
    buf = io.BytesIO()
    try:
        # eval() explicitly: the exporter restores the wrapper's own mode afterwards, and a fresh module is in
        # training mode, which would leave the model in training mode (batch-statistics BatchNorm) too.
        wrapper.eval()
        with warnings.catch_warnings():
            # dynamo=False: torch 2.14 defaults to the torch.export-based exporter, which needs the extra
            # onnxscript package (and fails without it). The TorchScript exporter handles these plain CNNs with
            # onnx alone; its deprecation warning is expected, so it is not shown to every user.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                wrapper, (dummy,), buf, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            )
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in entries.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(proto)
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    log.info("exported %s (%s, opset %d, %.1f MB) to %s", model.config.backbone, model.config.age_head, opset,
             path.stat().st_size / 1e6, path)
    return path
