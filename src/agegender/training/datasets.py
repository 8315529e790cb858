"""Torch datasets and loaders over labelled records: decoding each read, or reading a decode cache.

Items are ``(image tensor [3, H, W], {"age": float, "gender": float}, index)``; NaN marks an unknown label and
an unreadable image is ``None``, dropped by :func:`collate`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from agegender.data.records import Record
from agegender.errors import ImageReadError
from agegender.io.images import open_image
from agegender.training.distributed import DistInfo

log = logging.getLogger(__name__)


def loader_workers(requested: int) -> int:
    """``requested``, or for -1: none on machines of 1-2 cores (a loader process there only takes CPU from
    the model; measured in benchmarks/throughput.py), else one per core but one, at most 8."""
    if requested >= 0:
        return requested
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


class FaceDataset(Dataset):
    """Face crops with their labels; an unreadable image yields ``None`` (dropped by :func:`collate`).

    Item: ``(image tensor [3, H, W], {"age": float, "gender": float}, index)``; NaN marks an unknown label.
    ``load`` turns a path into a PIL image (default :func:`images.open_image`; a detect-and-align loader for
    uncropped photos) and raises :class:`images.ImageReadError` for what it cannot use.
    """

    def __init__(self, root: str | Path, records: Sequence[Record], transform: Callable,
                 load: Callable = open_image) -> None:
        self.root = Path(root)
        self.records = list(records)
        self.transform = transform
        self.load = load

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        try:
            img = self.load(self.root / r.file)
        except ImageReadError as e:
            log.warning("skipping unreadable image %s: %s", r.file, e)
            return None
        return self.transform(img), {"age": float(r.age), "gender": float(r.gender)}, i


def collate(items: list) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor] | None:
    """Stack dataset items, dropping ``None`` (unreadable images); ``None`` if nothing is left."""
    items = [it for it in items if it is not None]
    if not items:
        return None
    images = torch.stack([it[0] for it in items])
    targets = {k: torch.tensor([it[1][k] for it in items], dtype=torch.float32) for k in items[0][1]}
    index = torch.tensor([it[2] for it in items], dtype=torch.long)
    return images, targets, index


class CachedFaceDataset(Dataset):
    """Like :class:`FaceDataset`, but reads pixels from a decode cache: transforms get uint8 tensors."""

    def __init__(self, pixels: np.ndarray, readable: np.ndarray, records: Sequence[Record],
                 transform: Callable) -> None:
        if len(pixels) != len(records):
            raise ValueError(f"cache holds {len(pixels)} images for {len(records)} records")
        self.pixels, self.readable, self.records, self.transform = pixels, readable, list(records), transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        if not self.readable[i]:
            return None
        image = torch.from_numpy(np.array(self.pixels[i])).permute(2, 0, 1)  # a copy: memmaps are read-only
        r = self.records[i]
        return self.transform(image), {"age": float(r.age), "gender": float(r.gender)}, i


class _Offset(Dataset):
    """``dataset`` with ``offset`` added to each item's index."""

    def __init__(self, dataset: Dataset, offset: int) -> None:
        self.dataset, self.offset = dataset, offset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self.dataset[i]
        return None if item is None else (item[0], item[1], item[2] + self.offset)


def concat_datasets(datasets: Sequence[Dataset]) -> Dataset:
    """The datasets one after the other, items indexed through all of them (the second's first item has index
    ``len(first)``), so that indices point into the concatenation of their record lists. One dataset is
    returned as it is."""
    if len(datasets) == 1:
        return datasets[0]
    parts, offset = [], 0
    for d in datasets:
        parts.append(_Offset(d, offset))
        offset += len(d)
    return ConcatDataset(parts)


def make_loader(dataset: Dataset, batch_size: int, train: bool, workers: int, device: torch.device,
                info: DistInfo | None = None, seed: int = 0) -> DataLoader:
    """Batches of :func:`collate`; shuffled (and sharded across ranks under DDP) when ``train``."""
    info = info or DistInfo()
    sampler = DistributedSampler(dataset, info.world_size, info.rank, shuffle=train, seed=seed,
                                 drop_last=train) if info.enabled else None
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler, num_workers=workers,
        collate_fn=collate, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        drop_last=train and len(dataset) > batch_size * info.world_size, generator=g,
    )
