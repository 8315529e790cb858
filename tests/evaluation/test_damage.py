"""The fixed damaged copies of the robustness figures, and the old-print damage training draws at random."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender.evaluation.damage import DAMAGES, OLD_PRINT, OldPrint, old_print, old_print_fixed, random_old_print

ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(ASTRONAUT).convert("RGB").resize((120, 100))


def test_the_fixed_copies_are_the_same_every_time_and_keep_the_size(photo: Image.Image) -> None:
    for name, damage in DAMAGES.items():
        a, b = np.asarray(damage(photo)), np.asarray(damage(photo.copy()))
        assert a.shape == (100, 120, 3) and np.array_equal(a, b), name
        assert np.abs(a.astype(int) - np.asarray(photo)).mean() > 5, name  # it is damaged


def test_the_old_print_copy_is_faded_toned_and_darker_at_the_corners(photo: Image.Image) -> None:
    aged = np.asarray(old_print_fixed(photo)).astype(float)
    # Faded: no true black or white is left (the lift and the faded white, give or take the grain).
    assert np.percentile(aged, 1) > OLD_PRINT.lift - 25 and np.percentile(aged, 99) < OLD_PRINT.white + 25
    # Sepia: red over blue everywhere on average.
    assert aged[..., 0].mean() > aged[..., 2].mean() + 15
    flat = np.asarray(old_print(np.full((60, 60, 3), 150, np.uint8), OldPrint(vignette=0.5), None)).astype(float)
    assert flat[0, 0].mean() < flat[30, 30].mean() - 30  # the corner is darker than the centre


def test_each_part_of_an_old_print_by_hand() -> None:
    grey = np.full((4, 4, 3), [200, 100, 50], np.uint8)
    toned = old_print(grey, OldPrint(tone=1.0, sepia=False), None)
    assert np.all(toned == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50))  # fully toned to grey: the luma
    cast = old_print(grey, OldPrint(cast=(1.1, 1.0, 0.5)), None)
    assert cast[0, 0].tolist() == [220, 100, 25]
    faded = old_print(np.array([[[0, 255, 51]]], np.uint8), OldPrint(lift=40.0, white=240.0), None)
    assert faded[0, 0].tolist() == [40, 240, 80]  # 40 + 200 * 51 / 255
    with_grain = old_print(grey, OldPrint(grain=5.0), np.random.default_rng(0))
    assert not np.array_equal(with_grain, grey) and np.ptp(with_grain[..., 0] - with_grain[..., 1].astype(int)) == 0


def test_random_old_prints_vary_within_their_ranges() -> None:
    rng = np.random.default_rng(0)
    draws = [random_old_print(rng) for _ in range(200)]
    assert all(0.3 <= d.scale <= 1.0 and 0 <= d.tone <= 1 and 0 <= d.lift <= 60 and 210 <= d.white <= 255
               and 0 <= d.grain <= 12 for d in draws)
    assert 0.3 < np.mean([d.scale < 1 for d in draws]) < 0.7  # each kind of damage by its own chance
    assert len({d.sepia for d in draws}) == 2
