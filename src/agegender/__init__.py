"""agegender: age and gender estimation from face images."""

from agegender.predictor import Prediction, Predictor

__version__ = "0.1.0"
__all__ = ["Prediction", "Predictor", "__version__"]
