"""Where the work runs: onnxruntime sessions, the thread pools, and glibc's heap for a long-running service.
"""

from agegender._lazy import lazy_exports

_EXPORTS = {
    "session": "runtime", "default_threads": "pools", "thread_pool": "pools", "parallel_map": "pools",
    "chunks": "pools", "limit_arenas": "allocator", "release_free_memory": "allocator", "release_memory": "runtime",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
