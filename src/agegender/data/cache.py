"""Decode each image once: a cache of resized uint8 pixels, in memory or memory-mapped on disk.

JPEG decoding and resizing cost more than a small CNN's forward pass on a CPU, and the reference pipeline
paid them for every image in every epoch. The cache holds each image after :func:`transforms.decode_preset`
(``[R, R, 3]`` uint8, R = the preset's resize side), so an epoch only crops, flips and jitters.
On disk it lives under ``$AGEGENDER_CACHE`` (default ``~/.cache/agegender``) in a file keyed by the data's
fingerprint (file names and sizes) and R: changed files get a new cache, and later runs reuse it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from agegender.data.records import Record, data_fingerprint
from agegender.errors import ImageReadError
from agegender.io.images import open_image
from agegender.io.outputs import writing

log = logging.getLogger(__name__)
# "none" decodes every image on every read (the reference pipeline); the others build a cache.
CACHE_MODES = ("none", "memory", "disk")


CACHE_ENV = "AGEGENDER_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "agegender"))


def _decode_all(root: Path, records: Sequence[Record], decode: Callable, out: np.ndarray, ok: np.ndarray,
                progress: bool, load: Callable) -> list[tuple[str, str]]:
    failures = []
    for i in tqdm(range(len(records)), desc="decode cache", disable=None if progress else True, unit="img"):
        try:
            out[i] = decode(load(root / records[i].file)).permute(1, 2, 0).numpy()
            ok[i] = True
        except ImageReadError as e:
            log.warning("skipping %s: %s", records[i].file, e)
            failures.append((records[i].file, str(e)))
            ok[i] = False
    return failures


def build_cache(root: str | Path, records: Sequence[Record], decode: Callable, side: int, mode: str = "disk",
                progress: bool = True, load: Callable = open_image) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels [N, side, side, 3] uint8, readable [N] bool)`` for ``records``, read with ``load`` (a photo
    loader may detect and align) and decoded with ``decode``.

    ``mode="disk"`` reuses or writes a memory-mapped file (written under a temporary name, then renamed, so
    an interrupted build is never mistaken for a complete one); ``"memory"`` decodes into RAM. Images that
    cannot be used are logged and marked unreadable; a one-line summary counts them.
    """
    if mode not in CACHE_MODES[1:]:
        raise ValueError(f"cache mode must be memory or disk, got {mode!r}")
    root = Path(root)
    shape = (len(records), side, side, 3)
    if mode == "memory":
        pixels, ok = np.empty(shape, np.uint8), np.zeros(len(records), bool)
        _summarise(_decode_all(root, records, decode, pixels, ok, progress, load), len(records))
        return pixels, ok
    # A detect-and-align loader stores other pixels than a plain one: it gets its own key.
    kind = getattr(load, "cache_key", "")
    key = f"{data_fingerprint(root, records)}_{len(records)}_{side}{kind}"
    folder = cache_dir()
    path, ok_path = folder / f"{key}.npy", folder / f"{key}.ok.npy"
    if path.exists() and ok_path.exists():
        log.info("using decoded-image cache %s", path)
        return np.load(path, mmap_mode="r"), np.load(ok_path)
    log.info("building decoded-image cache %s (%.0f MB)", path, np.prod(shape) / 1e6)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with _cache_writes(folder):
            pixels = _reserved_memmap(tmp, shape)
        ok = np.zeros(len(records), bool)
        _summarise(_decode_all(root, records, decode, pixels, ok, progress, load), len(records))
        with _cache_writes(folder):
            pixels.flush()
            del pixels
            np.save(ok_path.with_name(ok_path.name + ".tmp.npy"), ok)
            os.replace(ok_path.with_name(ok_path.name + ".tmp.npy"), ok_path)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r"), ok


def _cache_writes(folder: Path):
    """Failed writes in the cache folder said as such, with what to do (a full disk gave a bare "[Errno 28]")."""
    return writing(folder, "cache folder", f"free space there, point {CACHE_ENV} at another folder, or use "
                   "--cache memory")


def _reserved_memmap(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A new uint8 ``.npy`` memory map at ``path`` whose blocks are allocated now: a sparse file on a disk that
    fills up kills the process (SIGBUS) at the first page that cannot be stored, where this raises ENOSPC."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    return pixels


def _summarise(failures: list[tuple[str, str]], total: int) -> None:
    if failures:
        kinds = Counter(why.split(": ", 1)[-1].split(" (")[0] for _, why in failures)
        log.warning("%d of %d images skipped: %s", len(failures), total,
                    ", ".join(f"{n} x {k}" for k, n in kinds.most_common(5)))
