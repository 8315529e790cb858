"""Labels from a CSV file, for face folders that are not named the UTKFace way.

Columns (others are ignored): ``file`` (required, relative to the data folder), and any of ``age`` (years),
``gender`` (``male``/``female``, ``m``/``f``, ``man``/``woman``, or ``0``/``1`` with UTKFace's convention:
0 = male, 1 = female) and ``age_group`` (an inclusive range such as ``25-32``, ``(25, 32)``, ``60-100`` or
``70+``). Empty cells are unknown labels: a row with only a gender trains only the gender head. Each row that
cannot be used is counted by reason and reported in one line; no usable row at all is an error.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from pathlib import Path

from agegender.data.frames import pd
from agegender.data.records import MAX_AGE, Record, ScanResult
from agegender.errors import DataError

log = logging.getLogger(__name__)

GENDER_WORDS = {"male": 0, "m": 0, "man": 0, "0": 0, "female": 1, "f": 1, "woman": 1, "1": 1}
_RANGE = re.compile(r"^\(?\s*(\d+)\s*(?:-|,|to)\s*(\d+)\s*\)?$")
_OPEN = re.compile(r"^(\d+)\s*\+$")


def parse_gender(text: str) -> float:
    """``"female"`` -> 1.0, ``"M"`` -> 0.0, ``""`` -> NaN; anything else raises ``ValueError``.

    >>> parse_gender("Female"), parse_gender("0"), parse_gender("")
    (1.0, 0.0, nan)
    """
    t = str(text).strip().lower()
    if t in ("", "nan", "none"):
        return math.nan
    if t.endswith(".0"):  # pandas may read a 0/1 column as floats
        t = t[:-2]
    if t not in GENDER_WORDS:
        raise ValueError(f"unknown gender {text!r} (use male/female or 0/1 with 0 = male)")
    return float(GENDER_WORDS[t])


def parse_age(text: str) -> float:
    """``"34"`` -> 34.0, ``""`` -> NaN; negative, above 120 or not a number raises ``ValueError``."""
    t = str(text).strip()
    if t.lower() in ("", "nan", "none"):
        return math.nan
    try:
        age = float(t)
    except ValueError:
        raise ValueError(f"age {text!r} is not a number") from None
    if not 0 <= age <= MAX_AGE:
        raise ValueError(f"age {age:g} outside 0-{MAX_AGE}")
    return age


def parse_age_group(text: str) -> tuple[int, int] | None:
    """``"25-32"`` -> (25, 32), ``"(8, 12)"`` -> (8, 12), ``"70+"`` -> (70, 120), ``""`` -> None.

    >>> parse_age_group("(25, 32)"), parse_age_group("70+"), parse_age_group("")
    ((25, 32), (70, 120), None)
    """
    t = str(text).strip()
    if t.lower() in ("", "nan", "none"):
        return None
    if m := _RANGE.match(t):
        lo, hi = int(m[1]), int(m[2])
    elif m := _OPEN.match(t):
        lo, hi = int(m[1]), MAX_AGE
    else:
        raise ValueError(f"age group {text!r} is not a range like 25-32 or 70+")
    if lo > hi or hi > MAX_AGE:
        raise ValueError(f"age group {text!r} is not a range within 0-{MAX_AGE}")
    return lo, hi


def read_labels(path: str | Path, root: str | Path) -> ScanResult:
    """Records for the rows of the labels file ``path`` whose files exist under ``root``."""
    path, root = Path(path), Path(root)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read labels file {path}: {e}") from e
    df.columns = [c.strip().lower() for c in df.columns]
    if "file" not in df.columns:
        raise DataError(f"labels file {path} needs a 'file' column; it has {list(df.columns)}")
    known = [c for c in ("age", "gender", "age_group") if c in df.columns]
    if not known:
        raise DataError(f"labels file {path} has none of the label columns age, gender, age_group")
    records: list[Record] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for row in df.itertuples(index=False):
        file = str(row.file).strip().replace("\\", "/")
        try:
            if not file:
                raise ValueError("empty file name")
            if file in seen:
                raise ValueError("listed twice")
            if not (root / file).is_file():
                raise ValueError("file not found")
            age = parse_age(getattr(row, "age", ""))
            gender = parse_gender(getattr(row, "gender", ""))
            group = parse_age_group(getattr(row, "age_group", ""))
            if math.isnan(age) and math.isnan(gender) and group is None:
                raise ValueError("no label")
        except ValueError as e:
            skipped.append((file, str(e)))
            continue
        seen.add(file)
        records.append(Record(file, age, gender, -1, group))
    result = ScanResult(records, skipped)
    if skipped:
        reasons = Counter(_reason_kind(why) for _, why in skipped)
        log.warning("%s: %d usable rows; skipped %d (%s); first: %s", path, len(records), len(skipped),
                    ", ".join(f"{n} {k}" for k, n in reasons.most_common()),
                    "; ".join(f"{f!r} ({why})" for f, why in skipped[:3]))
    if not records:
        raise DataError(f"labels file {path}: no usable row ({len(skipped)} skipped)")
    return result


def _reason_kind(why: str) -> str:
    for kind in ("file not found", "unknown gender", "not a number", "outside", "age group", "no label",
                 "listed twice", "empty file name"):
        if kind in why:
            return kind
    return why
