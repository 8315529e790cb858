"""The numpy preprocessing path and the thread helper it runs on."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from agegender.compute.pools import chunks, parallel_map
from agegender.inference.preprocess import center_crop, normalise, resize_crop
from agegender.model.config import PresetConfig


def test_parallel_map_keeps_order_uses_threads_and_runs_nested_calls_inline() -> None:
    names: set[str] = set()
    barrier = threading.Barrier(2, timeout=10)

    def work(x: int) -> int:
        names.add(threading.current_thread().name)
        if x < 2:
            barrier.wait()  # the first two items can only finish if they run at the same time
        # A nested call from a pool thread would wait on the pool it occupies; it runs inline instead.
        assert parallel_map(lambda y: y + 1, range(x), workers=2) == list(range(1, x + 1))
        return x * x

    assert parallel_map(work, range(6), workers=2) == [x * x for x in range(6)]
    assert len(names) == 2 and all(n.startswith("agegender-pool") for n in names)
    assert parallel_map(work, [5], workers=2) == [25]  # one item: the calling thread
    with pytest.raises(ValueError, match="chunk size must be >= 1, got 0"):
        chunks([1, 2], 0)


def test_resize_crop_and_normalise_shapes_and_values() -> None:
    cfg = PresetConfig(image_size=32, crop_pct=0.8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    image = Image.new("RGB", (90, 60), (255, 0, 128))
    crop = resize_crop(image, cfg)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8 and crop.flags.writeable
    batch = normalise(np.stack([crop, crop]), cfg)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_allclose(batch[:, :, 5, 7], [[2.0, -1.0, 128 / 255 - 0.5]] * 2, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected a uint8 batch \[N, S, S, 3\], got shape \(32, 32, 3\)"):
        normalise(crop, cfg)
    # Smaller than the crop: zero padding, split as torchvision splits it (the odd pixel right and below).
    padded = center_crop(np.ones((3, 4, 1), np.uint8), 6)[..., 0]
    assert padded.tolist() == [[0] * 6, [0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0], [0] * 6,
                               [0] * 6]
