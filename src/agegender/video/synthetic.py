"""Generated clips of faces moving over a plain background, for tests, benchmarks and demos: no data set and no
recorded video needed. The faces are images the caller gives (e.g. the face of ``examples/astronaut.png``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from agegender.io.images import ImageInput, as_pil, as_rgb_array


@dataclass(frozen=True)
class Walker:
    """A face image ``sprite`` (``(h, w, 3)`` uint8) whose top-left corner moves in a straight line, at constant
    speed, from ``start`` (x, y in pixels) in frame ``first`` to ``end`` in frame ``last`` (inclusive; None: the
    clip's last frame); it is absent outside those frames. Parts outside the canvas are cut off."""

    sprite: np.ndarray
    start: tuple[float, float]
    end: tuple[float, float]
    first: int = 0
    last: int | None = None

    def position(self, frame: int, n_frames: int) -> tuple[int, int] | None:
        """Top-left corner in ``frame`` of a clip of ``n_frames``, or None where the face is absent."""
        last = n_frames - 1 if self.last is None else self.last
        if not self.first <= frame <= last:
            return None
        t = (frame - self.first) / max(1, last - self.first)
        return (round(self.start[0] + t * (self.end[0] - self.start[0])),
                round(self.start[1] + t * (self.end[1] - self.start[1])))


def sprite(image: ImageInput, box: tuple[int, int, int, int], height: int | None = None) -> np.ndarray:
    """The ``box`` (x1, y1, x2, y2) of ``image`` as an RGB array, resized to ``height`` pixels if given."""
    pil = as_pil(image).crop(box)
    if height is not None:
        pil = pil.resize((round(pil.width * height / pil.height), height))
    return as_rgb_array(pil)


def background(size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """A smooth grey-blue gradient ``(H, W, 3)`` uint8: nothing in it looks like a face."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    grey = 90 + 60 * (x / w) + 40 * (y / h)
    return np.clip(np.stack([grey, grey + 10, grey + 25], axis=2), 0, 255).astype(np.uint8)


def render(walkers: Sequence[Walker], n_frames: int, size: tuple[int, int] = (640, 480),
           base: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """The clip's frames, ``(H, W, 3)`` uint8 RGB of ``size`` (width, height), over ``base`` (an image of that size;
    default :func:`background`); later walkers are drawn on top."""
    base = background(size) if base is None else as_rgb_array(base)
    if base.shape[:2] != (size[1], size[0]):
        raise ValueError(f"base is {base.shape[1]}x{base.shape[0]}, the clip {size[0]}x{size[1]}")
    w, h = size
    for frame in range(n_frames):
        canvas = base.copy()
        for walker in walkers:
            at = walker.position(frame, n_frames)
            if at is None:
                continue
            x, y = at
            sh, sw = walker.sprite.shape[:2]
            x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + sw, w), min(y + sh, h)
            if x1 < x2 and y1 < y2:
                canvas[y1:y2, x1:x2] = walker.sprite[y1 - y : y2 - y, x1 - x : x2 - x]
        yield canvas
