"""The web service: the FastAPI app over one ``Predictor``, its job queue, uploads, the live socket and the HTTP
server around it.
"""

from agegender._lazy import lazy_exports

_EXPORTS = {
    "create_app": "app", "JobQueue": "jobs", "serve": "http", "listen": "http",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
