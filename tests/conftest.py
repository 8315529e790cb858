"""Shared fixtures: a few dozen real UTKFace crops (or generated stand-ins) and one tiny trained run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL_DATA_ENV = "AGEGENDER_TEST_DATA"
IMAGENET_ENV = "AGEGENDER_TEST_IMAGENET"


def real_data_dir() -> Path | None:
    value = os.environ.get(REAL_DATA_ENV)
    return Path(value) if value else None


def _generated_faces(dest: Path, n: int = 48) -> None:
    """Stand-ins with UTKFace names: a bright oval on a background whose tone follows the label, so the
    tiny models in the tests have something to fit."""
    rng = np.random.default_rng(0)
    ages = [1, 5, 8, 15, 22, 25, 28, 33, 36, 41, 47, 52, 58, 63, 68, 75]
    for i in range(n):
        age, gender, race = ages[i % len(ages)], (i // len(ages)) % 2, i % 5
        img = np.full((64, 64, 3), 40 + 2 * age, np.uint8)
        img[..., 2] = 200 if gender else 60
        yy, xx = np.mgrid[:64, :64]
        img[((yy - 32) / 24) ** 2 + ((xx - 32) / 18) ** 2 < 1] = (220, 180, 150)
        img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(dest / f"{age}_{gender}_{race}_2017011{i:010d}.jpg.chip.jpg", quality=90)


@pytest.fixture(scope="session")
def face_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 labelled face crops: real UTKFace files where AGEGENDER_TEST_DATA is set, generated otherwise."""
    dest = tmp_path_factory.mktemp("faces")
    real = real_data_dir()
    if real is None:
        _generated_faces(dest)
        return dest
    names = sorted(p.name for p in real.iterdir() if p.name.endswith(".jpg.chip.jpg") and p.name.count("_") == 3)
    step = max(1, len(names) // 48)
    for name in names[::step][:48]:  # names sort by age, so this spans all ages
        shutil.copy(real / name, dest / name)
    return dest


@pytest.fixture(scope="session")
def trained_run(face_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of a tiny ResNet-18 at 32 px through the CLI; returns the run folder."""
    from agegender.cli import main

    run = tmp_path_factory.mktemp("run") / "tiny"
    rc = main(["train", "--data", str(face_dir), "--out", str(run), "--pretrained", "none", "--image-size", "32",
               "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--split", "0.6,0.2,0.2", "-q"])
    assert rc == 0
    return run


@pytest.fixture(scope="session", autouse=True)
def _private_decode_cache(tmp_path_factory: pytest.TempPathFactory):
    """Training runs in tests write their decode caches into a temporary folder, not the user's cache."""
    old = os.environ.get("AGEGENDER_CACHE")
    os.environ["AGEGENDER_CACHE"] = str(tmp_path_factory.mktemp("decode_cache"))
    yield
    if old is None:
        os.environ.pop("AGEGENDER_CACHE", None)
    else:
        os.environ["AGEGENDER_CACHE"] = old
