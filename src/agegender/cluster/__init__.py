"""Batch prediction over a cluster (``agegender predict --engine ray``, the ``ray`` extra): inputs listed from
folders, lists or S3, streamed through Ray Data actors running the photo pipeline, rows written to a resumable
Parquet dataset.
"""

from agegender._lazy import lazy_exports

_EXPORTS = {"Job": "engine", "JobSummary": "engine", "run": "engine", "Storage": "storage",
            "list_inputs": "storage", "Dest": "dataset"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
