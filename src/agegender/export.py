"""Export to ONNX, and run an exported file with onnxruntime in place of the torch model.

The exported graph::

    input   "image"         float32 [N, 3, S, S]  normalised as the model's eval preset does (N is dynamic)
    outputs "age"           float32 [N]  years
            "age_sigma"     float32 [N]  spread of the age estimate (1 for the regression head)
            "p_female"      float32 [N]  sigmoid(gender_logit), computed inside the graph
            "gender_logit"  float32 [N]

The file carries everything inference needs in its metadata (model config, input size, mean, std, crop_pct and
any extra entries such as the interval calibration), so no checkpoint has to travel with it.

``onnx`` (export) and ``onnxruntime`` (inference) are optional dependencies, imported only when used.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agegender.checkpoint import CheckpointError, atomic_write, check_contents
from agegender.model import AgeGenderNet, ModelConfig

log = logging.getLogger(__name__)

# Opset 17 is handled fully by torch's TorchScript exporter and runs on onnxruntime >= 1.14 (early 2023), so
# an export also works on older deployed runtimes. Every op the supported backbones and heads need (Conv,
# BatchNormalization, Clip for ReLU6, HardSwish and HardSigmoid (opset 14), Softmax, Sigmoid) exists by then.
ONNX_OPSET = 17

INPUT_NAME = "image"
OUTPUT_NAMES = ("age", "age_sigma", "p_female", "gender_logit")
CONFIG_KEY = "agegender_model_config"
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
    """What a checkpoint knows beyond the weights that inference uses: calibration and inference settings."""
    return {k: ckpt[k] for k in ("calibration", "inference") if k in ckpt}


def export_checkpoint(ckpt_path: str | Path, out: str | Path, opset: int = ONNX_OPSET) -> Path:
    """Export the checkpoint at ``ckpt_path`` (weights, calibration, inference settings) to ``out``."""
    from agegender.checkpoint import load_model

    model, ckpt = load_model(ckpt_path)
    return export_onnx(model, out, opset, checkpoint_metadata(ckpt))


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


class OnnxModel:
    """An exported file run by onnxruntime, callable like :class:`AgeGenderNet` so that it can stand in for the
    model in :class:`agegender.predictor.Predictor`.

    ``config``: the :class:`ModelConfig` stored in the file; ``metadata``: all metadata entries (strings).
    ``threads``: onnxruntime's intra-op threads (``None``: its default, one per core).
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RuntimeError("running an ONNX model needs onnxruntime: pip install onnxruntime") from e
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model {self.path} does not exist")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        # Idle onnxruntime threads otherwise spin for a while after each run and starve whatever runs next in
        # this process (the face detector, between two crops batches), which costs more than it saves.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable files
            raise CheckpointError(f"{self.path} is not a readable ONNX model: {e}") from e
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        outputs = {o.name for o in self.session.get_outputs()}
        inputs = [i.name for i in self.session.get_inputs()]
        if CONFIG_KEY not in self.metadata or inputs != [INPUT_NAME] or not outputs >= set(OUTPUT_NAMES):
            raise CheckpointError(f"{self.path} is not an agegender ONNX export (written by export_onnx)")
        try:
            self.config = ModelConfig.from_dict(json.loads(self.metadata[CONFIG_KEY]))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"bad model config in {self.path}: {e}") from e

    def checkpoint_like(self) -> dict:
        """The parts of a checkpoint dict a Predictor reads (calibration, inference settings, model config)."""
        out: dict[str, Any] = {"model_config": self.config.to_dict(), "format": "onnx"}
        for key in ("calibration", "inference"):
            if key in self.metadata:
                try:
                    out[key] = json.loads(self.metadata[key])
                except ValueError as e:
                    raise CheckpointError(f"{self.path}: metadata entry {key!r} is not JSON: {e}") from None
        check_contents(out, self.path)
        return out

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` ``[N, 3, S, S]`` normalised -> ``{"age", "age_sigma", "gender_logit"}``, each ``[N]`` (CPU)."""
        size = self.config.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, size, size):
            # onnxruntime's own shape errors name graph internals; say what the file expects instead.
            raise ValueError(f"expected a batch [N, 3, {size}, {size}], got {list(x.shape)}")
        image = np.ascontiguousarray(x.detach().cpu().float().numpy())
        names = ["age", "age_sigma", "gender_logit"]
        outputs = self.session.run(names, {INPUT_NAME: image})
        return {name: torch.from_numpy(value) for name, value in zip(names, outputs, strict=True)}

    def eval(self) -> OnnxModel:
        """No-op (the graph is always in inference mode); for duck typing with ``nn.Module``."""
        return self

    def to(self, device: str | torch.device) -> OnnxModel:
        """No-op (the device is chosen by ``providers``); for duck typing with ``nn.Module``."""
        return self
