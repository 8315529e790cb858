"""Faces found and framed: MTCNN detection (numpy cascade, ONNX networks), alignment to UTKFace's 200x200
framing, and the loader that turns a labelled photo into its aligned face.
"""

from agegender._lazy import lazy_exports

_EXPORTS = {
    "FaceDetector": "detect", "Face": "detect", "largest": "detect", "align": "align", "UTKFACE_SIZE": "align",
    "UTKFACE_TEMPLATE": "align", "AlignedFaceLoader": "loader", "image_loader": "loader", "FACE_POLICIES": "loader",
    "nms": "boxes",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
