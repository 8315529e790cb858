"""How good a model is: figures (overall, per age group, balanced), the evaluation of a predictor on labelled
images, its report and plots, and the fixed damage of the robustness figures.
"""

from agegender._lazy import lazy_exports

_EXPORTS = {
    "evaluate": "evaluate", "write_report": "evaluate", "summarize": "metrics", "report": "metrics",
    "degrade_fixed": "damage",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
