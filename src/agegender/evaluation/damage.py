"""Fixed photo damage for the robustness figures: the same damaged copy of each image for every model."""

from __future__ import annotations

import io

from PIL import Image, ImageFilter


def degrade_fixed(image: Image.Image) -> Image.Image:
    """The fixed damage of the "degraded validation" figure: greyscale, a third of the size and back up,
    blurred (radius 1) and re-compressed as JPEG quality 30. Deterministic, so every model sees the same
    degraded copy."""
    w, h = image.size
    small = image.convert("L").resize((max(8, w // 3), max(8, h // 3)), Image.BILINEAR)
    blurred = small.resize((w, h), Image.BILINEAR).filter(ImageFilter.GaussianBlur(1)).convert("RGB")
    buf = io.BytesIO()
    blurred.save(buf, "JPEG", quality=30)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
