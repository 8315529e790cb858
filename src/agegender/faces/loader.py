"""How a labelled file becomes a face crop: decoded as it is, or its face detected and aligned to UTKFace's
framing (the loader of photo folders, for training and evaluation alike).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image

from agegender.errors import ImageReadError
from agegender.faces.align import align
from agegender.faces.detect import FaceDetector, largest
from agegender.io.images import open_image

# With detection: what to do with a photo of several faces (skip it, or take the largest face).
FACE_POLICIES = ("single", "largest")


def image_loader(detect: bool = False, face: str = "single", min_face: int = 20) -> Callable:
    """How a file becomes a face crop: decoded as it is, or (``detect``) detected and aligned to UTKFace's
    framing with the ``face`` policy for photos of several faces."""
    if detect:
        return AlignedFaceLoader(face, min_face)
    return open_image


class AlignedFaceLoader:
    """Path -> the photo's face, aligned to UTKFace's 200x200 framing: the loader for labelled photo folders.

    ``policy``: ``"single"`` refuses photos with several faces (the label would be ambiguous); ``"largest"``
    takes the largest face. A photo without a usable face raises :class:`images.ImageReadError`, so datasets
    skip and count it like an unreadable file. The detector is built lazily, once per process (loader workers
    get their own).
    """

    def __init__(self, policy: str = "single", min_face_size: int = 20) -> None:
        if policy not in FACE_POLICIES:
            raise ValueError(f"face policy must be one of {', '.join(FACE_POLICIES)}, got {policy!r}")
        self.policy, self.min_face_size = policy, min_face_size
        self.cache_key = f"_aligned-{policy}-{min_face_size}"
        self._detector: FaceDetector | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_detector": None}

    def __call__(self, path: str | Path) -> Image.Image:
        image = open_image(path)
        if self._detector is None:
            self._detector = FaceDetector(min_face_size=self.min_face_size)
        faces = self._detector.detect(image)
        if not faces:
            raise ImageReadError(f"{path}: no face found", "no_face")
        if len(faces) > 1 and self.policy == "single":
            raise ImageReadError(f"{path}: {len(faces)} faces found (use --face largest to take the largest)",
                                 "several_faces")
        try:
            return align(image, largest(faces, 1)[0].landmarks)
        except ValueError as e:  # degenerate landmarks (all on one point) leave no transform to apply
            raise ImageReadError(f"{path}: the face cannot be aligned: {e}", "no_face") from e
