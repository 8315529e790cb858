"""UTKFace file names, folder scanning, the stratified split and the training dataset.

UTKFace stores its labels in the file name ``AGE_GENDER_RACE_DATETIME.jpg.chip.jpg`` (gender 0 = male,
1 = female; race 0-4 = White, Black, Asian, Indian, Others). A handful of names in the public release are
malformed; they are skipped and reported once, never fatal.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from agegender.images import ImageReadError, open_image

log = logging.getLogger(__name__)

GENDERS = ("male", "female")
RACES = ("White", "Black", "Asian", "Indian", "Others")
AGE_BUCKETS = ((0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 200))
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_AGE = 120
SUBSETS = ("train", "val", "test")

_NAME = re.compile(r"^(?P<age>\d+)_(?P<gender>\d+)_(?P<race>\d+)_(?P<datetime>\d+)\.jpg(\.chip\.jpg)?$")


class DataError(ValueError):
    """A data folder or split file that cannot be used (the message says why and what to do)."""


@dataclass(frozen=True)
class Record:
    """One labelled face image; ``file`` is relative to the data root, with forward slashes.

    UTKFace gives every label. A labels file may leave some out: ``age`` and ``gender`` are then NaN,
    ``race`` is -1, and ``age_group`` (an inclusive ``(low, high)`` range in years) may stand in for the age.
    """

    file: str
    age: float
    gender: float
    race: int = -1
    age_group: tuple[int, int] | None = None

    def stratum(self) -> tuple[str, int]:
        """(age bucket, gender) for stratified splitting; what is unknown forms a stratum of its own."""
        age = self.age
        if math.isnan(age) and self.age_group is not None:
            age = sum(self.age_group) / 2
        bucket = "unknown" if math.isnan(age) else age_bucket(min(age, MAX_AGE))
        return bucket, -1 if math.isnan(self.gender) else int(self.gender)


def age_bucket(age: float) -> str:
    """Name of the reporting age bucket that holds ``age``.

    >>> age_bucket(0), age_bucket(2.4), age_bucket(35), age_bucket(70), age_bucket(101)
    ('0-2', '0-2', '30-39', '70+', '70+')
    """
    a = int(round(float(age)))
    for lo, hi in AGE_BUCKETS:
        if lo <= a <= hi:
            return f"{lo}+" if hi >= 200 else f"{lo}-{hi}"
    raise ValueError(f"age {age} is outside 0-{MAX_AGE}")


def parse_utkface_name(name: str) -> tuple[int, int, int]:
    """Parse ``AGE_GENDER_RACE_DATETIME.jpg[.chip.jpg]`` into ``(age, gender, race)``.

    Raises ``ValueError`` naming the defect for any malformed name.

    >>> parse_utkface_name("26_1_2_20170116174525125.jpg.chip.jpg")
    (26, 1, 2)
    >>> parse_utkface_name("39_1_20170116174525125.jpg.chip.jpg")
    Traceback (most recent call last):
    ...
    ValueError: missing field: expected AGE_GENDER_RACE_DATETIME.jpg[.chip.jpg], got 3 fields
    """
    m = _NAME.match(name)
    if m is None:
        if any(c.isspace() for c in name):
            raise ValueError("stray whitespace in name")
        stem = name.split(".jpg")[0] if ".jpg" in name else Path(name).stem
        fields = stem.split("_")
        if len(fields) != 4:
            raise ValueError(
                f"missing field: expected AGE_GENDER_RACE_DATETIME.jpg[.chip.jpg], got {len(fields)} fields"
            )
        for label, value in zip(("age", "gender", "race", "datetime"), fields, strict=True):
            if label == "datetime" and re.fullmatch(r"\d+jpg(\.chip)?", value):
                raise ValueError("missing dot before the extension")
            if not value.isdigit():
                raise ValueError(f"non-numeric {label} field {value!r}")
        raise ValueError("extension must be .jpg or .jpg.chip.jpg")
    age, gender, race = int(m["age"]), int(m["gender"]), int(m["race"])
    if not 0 <= age <= MAX_AGE:
        raise ValueError(f"age {age} outside 0-{MAX_AGE}")
    if gender not in (0, 1):
        raise ValueError(f"gender {gender} is not 0 (male) or 1 (female)")
    if not 0 <= race < len(RACES):
        raise ValueError(f"race {race} is not 0-{len(RACES) - 1}")
    return age, gender, race


def iter_image_files(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted; symlinked folders are not followed (no loops)."""
    out = []
    for p in root.rglob("*"):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            out.append(p)
    return sorted(out)


@dataclass
class ScanResult:
    records: list[Record]
    skipped: list[tuple[str, str]]  # (relative file, reason)

    def summary(self) -> str:
        if not self.skipped:
            return f"{len(self.records)} labelled images, none skipped"
        first = "; ".join(f"{f!r} ({why})" for f, why in self.skipped[:5])
        more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
        return (
            f"{len(self.records)} labelled images; skipped {len(self.skipped)} with unusable names: {first}{more}"
        )


def scan_utkface(root: str | Path) -> ScanResult:
    """Find every UTKFace image under ``root`` (flat, or Kaggle's nested ``utkcropped/utkcropped/``).

    Files whose names cannot be parsed are skipped and logged in one summary line. A file name seen twice
    in different sub-folders (the Kaggle archive ships copies) is kept once.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    records: list[Record] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for path in iter_image_files(root):
        rel = path.relative_to(root).as_posix()
        try:
            age, gender, race = parse_utkface_name(path.name)
        except ValueError as e:
            skipped.append((rel, str(e)))
            continue
        if path.name in seen:
            skipped.append((rel, "duplicate of a file with the same name"))
            continue
        seen.add(path.name)
        records.append(Record(rel, age, gender, race))
    result = ScanResult(records, skipped)
    if not records:
        raise DataError(
            f"no labelled UTKFace image found under {root} ({len(skipped)} unusable files). Expected names like "
            "26_1_2_20170116174525125.jpg.chip.jpg; see the README for how to download UTKFace."
        )
    (log.warning if skipped else log.info)("%s: %s", root, result.summary())
    return result


def data_fingerprint(root: str | Path, records: Sequence[Record]) -> str:
    """A short hash of the file list and sizes: it changes when files are added, removed or replaced."""
    h = hashlib.sha256()
    root = Path(root)
    for r in records:
        try:
            size = (root / r.file).stat().st_size
        except OSError:
            size = -1
        h.update(f"{r.file}\0{size}\n".encode())
    return h.hexdigest()[:16]


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

    pd.DataFrame(sorted(split.items()), columns=["file", "subset"]).to_csv(path, index=False)


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
