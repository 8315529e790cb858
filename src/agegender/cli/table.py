"""The rows of ``agegender predict`` as a table on the terminal, when no ``--out`` is given: one line per face (or per
person of a video), printed as each photo is done. The numbers are the rows' own, shown to fewer digits."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO


def _number(key: str, digits: int) -> Callable[[dict], str]:
    return lambda row: "" if row.get(key) is None else f"{row[key]:.{digits}f}"


def _interval(row: dict) -> str:
    low, high = row.get("age_low"), row.get("age_high")
    return "" if low is None or high is None else f"{low:.0f}-{high:.0f}"


def _box(row: dict) -> str:
    corners = [row.get(k) for k in ("box_x1", "box_y1", "box_x2", "box_y2")]
    return "" if None in corners else ",".join(f"{v:.0f}" for v in corners)


def _status(row: dict) -> str:
    status = row.get("status")
    if status in (None, "ok"):
        return ""
    return "no face found" if status == "no_face" else f"{status}: {row.get('error') or ''}".strip()


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[dict], str]
    width: int
    right: bool = True  # numbers right-aligned, text left


def _interval_header(coverage: float | None) -> str:
    return "interval" if coverage is None else f"{100 * coverage:.0f}% range"


def photo_table(coverage: float | None = None) -> list[Column]:
    """What a photo's row shows: age with its interval (``coverage``: the share of true ages it holds), gender with
    its probability, the detector's score, where the face is."""
    return [Column("face", _number("face", 0), 4), Column("age", _number("age", 1), 5),
            Column(_interval_header(coverage), _interval, 8),
            Column("gender", lambda r: r.get("gender") or "", 6, False), Column("p_female", _number("p_female", 3), 8),
            Column("det", _number("det_score", 3), 5),
            Column("box x1,y1,x2,y2", _box, 15, False)]


def track_table(coverage: float | None = None) -> list[Column]:
    """A video's person: their number, frames seen, when, and the combined estimate."""
    return [Column("person", _number("track", 0), 6), Column("frames", _number("frames", 0), 6),
            Column("seen s", lambda r: f"{r['first_time_s']:.1f}-{r['last_time_s']:.1f}"
                   if r.get("first_time_s") is not None else "", 11),
            Column("age", _number("age", 1), 5), Column(_interval_header(coverage), _interval, 8),
            Column("gender", lambda r: r.get("gender") or "", 6, False),
            Column("p_female", _number("p_female", 3), 8)]


class TableSink:
    """Rows (dicts, as a row sink takes them) printed as a table to ``stream``: the file name in a column
    ``file_width`` wide, then ``columns``; a row without a face says why (no face found, or the error)."""

    path = None

    def __init__(self, stream: TextIO, columns: list[Column], file_width: int = 20) -> None:
        self.stream, self.columns, self.rows = stream, columns, 0
        self.file_width = max(4, min(file_width, 60))
        self._line({"file": "file"}, header=True)

    def _line(self, row: dict, header: bool = False) -> None:
        name = str(row.get("file", ""))
        if len(name) > self.file_width:  # the end of a long path says most
            name = "…" + name[-(self.file_width - 1) :]
        cells = [name.ljust(self.file_width)]
        why = "" if header else _status(row)
        if why:
            cells.append(why)
        else:
            for c in self.columns:
                text, width = c.header if header else c.cell(row), max(c.width, len(c.header))
                cells.append(text.rjust(width) if c.right else text.ljust(width))
        self.stream.write("  ".join(cells).rstrip() + "\n")

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self._line(row)
            self.rows += 1
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
