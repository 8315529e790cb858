"""Labelled face records: UTKFace file names, folder scanning, age buckets and the data fingerprint.

UTKFace stores its labels in the file name ``AGE_GENDER_RACE_DATETIME.jpg.chip.jpg`` (gender 0 = male,
1 = female; race 0-4 = White, Black, Asian, Indian, Others). A handful of names in the public release are
malformed; they are skipped and reported once, never fatal.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agegender.errors import DataError

log = logging.getLogger(__name__)

GENDERS = ("male", "female")
RACES = ("White", "Black", "Asian", "Indian", "Others")
AGE_BUCKETS = ((0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 200))
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_AGE = 120

_NAME = re.compile(r"^(?P<age>\d+)_(?P<gender>\d+)_(?P<race>\d+)_(?P<datetime>\d+)\.jpg(\.chip\.jpg)?$")


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


def bucket_name(lo: int, hi: int) -> str:
    """``"30-39"``, or ``"70+"`` for the open-ended last bucket.

    >>> bucket_name(30, 39), bucket_name(70, 200)
    ('30-39', '70+')
    """
    return f"{lo}+" if hi >= 200 else f"{lo}-{hi}"


AGE_BUCKET_NAMES = tuple(bucket_name(lo, hi) for lo, hi in AGE_BUCKETS)


def age_bucket(age: float) -> str:
    """Name of the reporting age bucket that holds ``age``.

    >>> age_bucket(0), age_bucket(2.4), age_bucket(35), age_bucket(70), age_bucket(101)
    ('0-2', '0-2', '30-39', '70+', '70+')
    """
    a = int(round(float(age)))
    for (lo, hi), name in zip(AGE_BUCKETS, AGE_BUCKET_NAMES, strict=True):
        if lo <= a <= hi:
            return name
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
            "26_1_2_20170116174525125.jpg.chip.jpg; see docs/data.md for how to download UTKFace."
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


