"""Where labelled images come from and how they are divided: scanning a folder (UTKFace names or a labels
file), the seeded stratified split, a run's split recreated from its checkpoint, and how a file becomes a face
(decoded as it is, or detected and aligned).

Nothing here needs torch: prediction and evaluation use it as well as training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from agegender.data import DataError, Record, ScanResult, data_fingerprint, scan_utkface
from agegender.images import open_image

SUBSETS = ("train", "val", "test")
# With detection: what to do with a photo of several faces (skip it, or take the largest face).
FACE_POLICIES = ("single", "largest")


def scan(root: str | Path, labels: str = "") -> ScanResult:
    """The labelled images of a folder: from a labels file when given, else from UTKFace file names."""
    if labels:
        from agegender.labels import read_labels

        return read_labels(labels, root)
    return scan_utkface(root)


def image_loader(detect: bool = False, face: str = "single") -> Callable:
    """How a file becomes a face crop: decoded as it is, or (``detect``) detected and aligned to UTKFace's
    framing with the ``face`` policy for photos of several faces."""
    if detect:
        from agegender.faces import AlignedFaceLoader

        return AlignedFaceLoader(face)
    return open_image


def limit_records(records: list[Record], limit: int, seed: int) -> list[Record]:
    """At most ``limit`` records (0 = all): a seeded, name-keyed subset, so repeated quick runs see the same
    images."""
    if not limit or limit >= len(records):
        return records
    keyed = sorted(records, key=lambda r: _hash01(seed + 1, r.file))
    return sorted(keyed[:limit], key=lambda r: r.file)


def _hash01(seed: int, name: str) -> float:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def parse_split(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> ``(0.8, 0.1, 0.1)``; fractions must be >= 0 and sum to 1.

    >>> parse_split("0.8,0,0.2")
    (0.8, 0.0, 0.2)
    """
    parts = [float(x) for x in text.split(",")] if isinstance(text, str) else [float(x) for x in text]
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6 or parts[0] <= 0:
        raise ValueError(f"split must be three fractions train,val,test >= 0 summing to 1, got {text!r}")
    return parts[0], parts[1], parts[2]


def stratified_split(
    records: Sequence[Record], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, str]:
    """Assign every record to train/val/test, stratified by age bucket x gender.

    Within each stratum files are ordered by a seeded hash of their base name and cut at the fractions, so
    the split depends only on the seed and the stratum's own files: adding files to other strata, or
    non-image files, changes nothing, and one file added to a stratum moves at most one file per boundary.
    Returns ``{file: subset}``.
    """
    strata: dict[tuple[str, int], list[Record]] = {}
    for r in records:
        strata.setdefault(r.stratum(), []).append(r)
    out: dict[str, str] = {}
    for members in strata.values():
        members = sorted(members, key=lambda r: (_hash01(seed, Path(r.file).name), r.file))
        n = len(members)
        n_train = round(n * fractions[0])
        n_val = round(n * (fractions[0] + fractions[1])) - n_train
        for i, r in enumerate(members):
            out[r.file] = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
    return out


def write_split(path: str | Path, split: dict[str, str]) -> None:
    import pandas as pd

    from agegender.outputs import atomic_write

    text = pd.DataFrame(sorted(split.items()), columns=["file", "subset"]).to_csv(index=False)
    atomic_write(path, lambda f: f.write(text.encode("utf-8", "surrogateescape")))  # names as they are on disk


def read_split(path: str | Path) -> dict[str, str]:
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from e
    if not {"file", "subset"} <= set(df.columns):
        raise DataError(f"split file {path} needs the columns file,subset; it has {list(df.columns)}")
    bad = sorted(set(df["subset"]) - set(SUBSETS))
    if bad:
        raise DataError(f"split file {path} has unknown subsets {bad}; expected {SUBSETS}")
    return dict(zip(df["file"], df["subset"], strict=True))


def select(records: Iterable[Record], split: dict[str, str], subset: str) -> list[Record]:
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    return [r for r in records if split.get(r.file) == subset]


def split_from_checkpoint(ckpt: dict, root: str | Path) -> tuple[list[Record], dict[str, str], bool]:
    """Recreate a run's split of ``root`` from what its checkpoint recorded (fractions, seed, image limit).

    Returns ``(records, split, same_data)``; ``same_data`` is False when the folder's fingerprint differs
    from the training data's, in which case the subsets may differ from the ones used in training.
    """
    cfg = ckpt["training"]["config"]
    records = limit_records(scan(root, cfg.get("labels", "")).records, cfg["limit"], cfg["seed"])
    split = stratified_split(records, parse_split(cfg["split"]), cfg["seed"])
    return records, split, data_fingerprint(root, records) == ckpt["training"].get("data_fingerprint")
