"""Images in, named predictions out: the result types every other part speaks, the numpy preprocessing, the
``Predictor``, the photo pipeline behind every command, and annotation.
"""

from agegender._lazy import lazy_exports

_EXPORTS = {
    "Prediction": "results", "FacePrediction": "results", "PhotoPrediction": "results", "TrackEstimate": "results",
    "TrackedFace": "results", "TrackedFrame": "results", "Predictor": "predictor", "predict_files": "batch",
    "predict_items": "batch", "PHOTO_COLUMNS": "batch", "draw_faces": "annotate", "draw_tracks": "annotate",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
