"""Video: clips read and written, faces followed through frames into one estimate per person, and a clip in,
rows and an annotated copy out.
"""

from agegender._lazy import lazy_exports

_EXPORTS = {
    "VideoReader": "clips", "VideoWriter": "clips", "is_video": "clips", "FaceTracks": "tracking",
    "track": "tracking", "combine": "tracking", "predict_video": "predict",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
