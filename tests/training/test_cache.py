"""The decoded-image cache: same pixels as decoding each time, reused, rebuilt when files change."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")

import torch

from agegender.data.cache import build_cache
from agegender.data.records import scan_utkface
from agegender.model.config import PresetConfig
from agegender.training.datasets import CachedFaceDataset, FaceDataset
from agegender.training.transforms import decode_preset, eval_preset


@pytest.fixture
def folder(face_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AGEGENDER_CACHE", str(tmp_path / "cache"))
    dest = tmp_path / "faces"
    dest.mkdir()
    for p in sorted(face_dir.iterdir())[:12]:
        shutil.copy(p, dest / p.name)
    return dest


def test_cached_items_equal_decoded_items(folder: Path) -> None:
    preset = PresetConfig(image_size=32, crop_pct=0.9)
    records = scan_utkface(folder).records
    pixels, ok = build_cache(folder, records, decode_preset(preset), preset.resize_size, "memory", progress=False)
    assert pixels.shape == (len(records), 36, 36, 3) and pixels.dtype == np.uint8 and ok.all()
    direct = FaceDataset(folder, records, eval_preset(preset))
    cached = CachedFaceDataset(pixels, ok, records, eval_preset(preset, cached=True))
    for i in range(len(records)):
        a, ta, _ = direct[i]
        b, tb, _ = cached[i]
        torch.testing.assert_close(a, b)
        assert ta == tb


def test_disk_cache_is_reused_and_rebuilt_when_files_change(folder: Path, tmp_path: Path) -> None:
    preset = PresetConfig(image_size=32, crop_pct=0.9)
    decode = decode_preset(preset)
    records = scan_utkface(folder).records
    first, _ = build_cache(folder, records, decode, 36, "disk", progress=False)
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 2 and isinstance(first, np.memmap)
    mtimes = [f.stat().st_mtime_ns for f in files]
    again, _ = build_cache(folder, records, decode, 36, "disk", progress=False)
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # reused, not rewritten
    np.testing.assert_array_equal(first, again)
    # replace one image's content: its size changes, so does the fingerprint, so a new cache is built
    victim = folder / records[0].file
    victim.write_bytes(victim.read_bytes() + b"\0" * 10)
    build_cache(folder, scan_utkface(folder).records, decode, 36, "disk", progress=False)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4
    assert not list((tmp_path / "cache").glob("*.tmp*"))


def test_unreadable_image_is_marked_and_skipped(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    records = scan_utkface(folder).records
    (folder / records[3].file).write_bytes(b"not an image")
    preset = PresetConfig(image_size=32, crop_pct=0.9)
    pixels, ok = build_cache(folder, records, decode_preset(preset), 36, "memory", progress=False)
    assert not ok[3] and ok.sum() == len(records) - 1
    # the skipped file is logged with open_image's reason, then a summary counts the skips by kind
    reason = "not an image file (accepted formats: JPEG, PNG, WebP, AVIF, GIF, BMP, TIFF)"
    assert any(m.startswith(f"skipping {records[3].file}: ") and m.endswith(reason) for m in caplog.messages)
    assert f"1 of {len(records)} images skipped: 1 x not an image file" in caplog.messages
    assert CachedFaceDataset(pixels, ok, records, eval_preset(preset, cached=True))[3] is None


def test_bad_mode() -> None:
    with pytest.raises(ValueError, match="memory or disk"):
        build_cache(".", [], decode_preset(PresetConfig(image_size=112, crop_pct=0.9)), 10, "ram")
