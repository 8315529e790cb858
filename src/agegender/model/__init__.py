"""What a model is and where it is kept: its config, plain-dict checkpoints, the torch network, the ONNX
export and the exported model run by onnxruntime.
"""

from agegender._lazy import lazy_exports

_EXPORTS = {
    "ModelConfig": "config", "PresetConfig": "config", "BUNDLED_MODEL": "checkpoint", "BUNDLED_ONNX": "checkpoint",
    "resolve_model_path": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "load_model": "checkpoint", "OnnxModel": "onnx", "AgeGenderNet": "network", "create_backbone": "network",
    "export_checkpoint": "export",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
