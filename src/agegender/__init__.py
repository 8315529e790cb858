"""agegender: age and gender estimation from face images."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Prediction", "Predictor", "__version__"]

if TYPE_CHECKING:
    from agegender.inference.predictor import Predictor
    from agegender.inference.results import Prediction


def __getattr__(name: str):
    # Imported on first use, so that `agegender --help` and the training modules do not load the predictor.
    if name in ("Prediction", "Predictor"):
        from agegender import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'agegender' has no attribute {name!r}")
