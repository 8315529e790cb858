"""Rows out: one writer for every command's CSV or JSON rows (photos, video frames, video tracks).

Rows stream into ``OUT.partial`` beside the output as they come (flushed after every call: a long run holds no
rows in memory, and ``tail -f`` shows them) and :meth:`RowSink.close` moves the finished file to ``OUT``: the
output path never holds a torn file, and a run stopped by an error or Ctrl-C still gets every row it made,
because ``close`` runs on the way out (``with row_sink(...)``). A run killed outright leaves its rows in
``OUT.partial``, and so does a write that fails (a full disk): the file may end in a torn row there, so it is
never renamed to ``OUT``, and the error says how many rows reached it. Cells are written as
:func:`agegender.io.outputs.csv_row` makes them.
"""

from __future__ import annotations

import contextlib
import csv
import os
import textwrap
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from agegender.errors import OutputError, one_line
from agegender.io.outputs import NAME_MAX, csv_row, interrupts_held, json_text

ROW_SUFFIXES = (".csv", ".json")


def check_rows_path(path: str | Path) -> Path:
    """``path`` if rows can be written there (a ``.csv`` or ``.json`` name), else :class:`OutputError`.

    >>> check_rows_path("out/preds.CSV").name
    'preds.CSV'
    """
    path = Path(path)
    if path.suffix.lower() not in ROW_SUFFIXES:
        raise OutputError(f"{path.name}: rows are written to .csv or .json files")
    return path


def partial_path(path: Path) -> Path:
    """Where a :class:`RowSink` writes until it is closed: ``OUT.partial``, or a shorter name when ``OUT`` is near
    the file-name limit.

    >>> partial_path(Path("runs/preds.csv")).name
    'preds.csv.partial'
    """
    name = path.name + ".partial"
    return path.with_name(name if len(os.fsencode(name)) <= NAME_MAX else f".{path.name[:64]}.partial")


class RowSink:
    """Rows (dicts) to ``path``, a ``.csv`` (the ``columns``, in order; a missing key is an empty cell, other keys
    are left out) or a ``.json`` list of objects (the ``columns`` that are not None). See the module docstring."""

    def __init__(self, path: str | Path, columns: list[str]) -> None:
        self.path, self.columns, self.rows = check_rows_path(path), list(columns), 0
        self.failed: OutputError | None = None  # the write that failed, after which nothing more is written
        self._json = self.path.suffix.lower() == ".json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = partial_path(self.path)
        # Names that are not valid UTF-8 are written back as the bytes they were on disk.
        self._file: TextIO | None = open(self._tmp, "w", newline="", encoding="utf-8",  # noqa: SIM115 - see close()
                                         errors="surrogateescape")
        if self._json:
            self._guarded(lambda f: f.write("["))
        else:
            self._csv = csv.DictWriter(self._file, self.columns, restval="", extrasaction="ignore",
                                       lineterminator="\n")
            self._guarded(lambda f: self._csv.writeheader())

    @property
    def where(self) -> Path:
        """The file that holds the rows written so far: ``OUT`` once closed, else ``OUT.partial``."""
        return self.path if self._file is None and self.failed is None else self._tmp

    def _guarded(self, write) -> None:
        """Run ``write`` on the open file and flush; a failure (a full disk) is an :class:`OutputError` that names
        the output, how many rows reached it and where they are; the sink writes nothing more after it."""
        if self.failed is not None:
            raise self.failed
        try:
            write(self._file)
            self._file.flush()
        except OSError as e:
            reason = e.strerror or one_line(e)
            self.failed = OutputError(f"{self.path}: cannot write rows ({reason}); the {self.rows} rows before are "
                                      f"in {self._tmp}, the rest of this run's rows are lost")
            raise self.failed from None

    def write(self, rows: Iterable[dict]) -> None:
        rows = [{k: r.get(k) for k in self.columns} for r in rows]
        if not rows:
            return
        if self._json:
            objects = (json_text({k: v for k, v in r.items() if v is not None}, indent=2) for r in rows)
            text = ",\n".join(textwrap.indent(o, "  ") for o in objects)
            self._guarded(lambda f: f.write(("\n" if self.rows == 0 else ",\n") + text))
        else:
            self._guarded(lambda f: self._csv.writerows(csv_row(r) for r in rows))
        self.rows += len(rows)

    def close(self) -> None:
        """Finish the file and move it into place (idempotent). After a failed write the rows that reached the
        disk stay in ``OUT.partial`` and nothing is raised again (the failed write raised already); a failure now
        raises :class:`OutputError` and leaves them there too."""
        if self._file is None:
            return
        with interrupts_held():
            try:
                if self.failed is None:
                    if self._json:
                        self._guarded(lambda f: f.write("\n]\n" if self.rows else "]\n"))
                    self._guarded(lambda f: os.fsync(f.fileno()))
            finally:
                self._close_file()
            if self.failed is None:
                os.replace(self._tmp, self.path)

    def _close_file(self) -> None:
        # The buffer's last flush may fail again after a write that failed already: nothing more can be saved.
        with contextlib.suppress(OSError):
            self._file.close()
        self._file = None

    def discard(self) -> None:
        """Drop the temporary file without touching ``path`` (an output refused before any row was made)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)


class StreamSink:
    """Rows to an open text stream (standard output for ``--out -``) as they come: CSV (the ``columns``, cells as
    in a file) or JSON lines (one object per row, its columns that are not None). ``path`` is None: there is no
    file to put in place."""

    path = None

    def __init__(self, stream: TextIO, columns: list[str], json_lines: bool = False) -> None:
        self.stream, self.columns, self.json_lines, self.rows = stream, list(columns), json_lines, 0
        if not json_lines:
            self._csv = csv.DictWriter(stream, self.columns, restval="", extrasaction="ignore", lineterminator="\n")
            self._csv.writeheader()

    def write(self, rows: Iterable[dict]) -> None:
        rows = [{k: r.get(k) for k in self.columns} for r in rows]
        if self.json_lines:
            self.stream.writelines(json_text({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows)
        else:
            self._csv.writerows(csv_row(r) for r in rows)
        self.stream.flush()  # a reader at the other end of a pipe gets each photo's rows when they are made
        self.rows += len(rows)

    def close(self) -> None:
        self.stream.flush()


@contextmanager
def row_sink(path: str | Path, columns: list[str]) -> Iterator[RowSink]:
    """A :class:`RowSink` closed (its rows put in place) however the block ends."""
    sink = RowSink(path, columns)
    try:
        yield sink
    finally:
        sink.close()
