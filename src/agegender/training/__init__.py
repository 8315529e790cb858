"""Training (needs torch): the config, datasets and transforms, losses, the epoch loop, calibration and
``fit``.
"""

from agegender._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config", "fit": "trainer", "train_one_epoch": "engine", "predict_batches": "engine",
    "MultiTaskLoss": "losses", "train_preset": "transforms", "eval_preset": "transforms",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
