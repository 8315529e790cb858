"""agegender: age and gender estimation from face images.

The front door: ``from agegender import Predictor``. Each subpackage has its own (``agegender.faces``,
``agegender.video``, ...); nothing is imported until it is used, so ``agegender --help`` stays fast and the
training code (torch) is never loaded by inference.
"""

from agegender._lazy import lazy_exports

__version__ = "0.1.0"
_EXPORTS = {
    "Predictor": "inference.predictor", "Prediction": "inference.results", "FacePrediction": "inference.results",
    "PhotoPrediction": "inference.results", "predict_files": "inference.batch", "track": "video.tracking",
}
__all__ = [*sorted(_EXPORTS), "__version__"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
