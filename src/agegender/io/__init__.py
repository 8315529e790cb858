"""Reading inputs and writing outputs safely: the decoding gate every image passes, atomic and formula-safe
writers, and the row sinks that every command writes its CSV or JSON through.
"""

from agegender._lazy import lazy_exports

_EXPORTS = {
    "open_image": "images", "as_pil": "images", "as_rgb_array": "images", "ImageInput": "images",
    "MAX_PIXELS": "images", "ACCEPTED_FORMATS": "images", "atomic_write": "outputs", "check_writable": "outputs",
    "check_folder": "outputs", "interrupts_held": "outputs", "terminate_like_ctrl_c": "outputs",
    "Terminated": "outputs", "write_rows": "outputs", "write_json": "outputs",
    "unique_name": "outputs", "RowSink": "sinks", "row_sink": "sinks",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
