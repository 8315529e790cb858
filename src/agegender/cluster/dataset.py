"""A cluster run's output: a Parquet dataset (a local folder or an ``s3://`` prefix) of part files, each holding
the rows of one block of inputs (:data:`agegender.inference.batch.PHOTO_COLUMNS`), and ``_agegender.json``, the
settings its rows were made with.

Exactly-once in effect, with no coordinator: a part's name is derived from the inputs of its block, a part is
written whole (a local file under a hidden temporary name, fsynced and renamed; an S3 object is put whole), and the
rows a part holds are the only record that its inputs are done (every input has at least one row: faces, no face,
or an error). A re-run reads the ``file`` column of the parts, skips those inputs and cuts the rest into new
blocks, so no input gets rows twice; a block done twice within a run (a task retried after its worker died)
writes the same name with the same rows. Readers (pyarrow, pandas, DuckDB, Spark) skip names starting with ``.``
or ``_``, so a reader at any moment sees whole parts only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from agegender.cluster.storage import Storage, is_s3, storage_error
from agegender.errors import OutputError
from agegender.inference.batch import PHOTO_COLUMNS

SETTINGS_FILE = "_agegender.json"
PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
FORMAT = 1  # bumped when the meaning of a part changes


def schema() -> Any:
    """The Arrow schema of every part: one column per :data:`PHOTO_COLUMNS`, typed (a part of error rows alone
    has the same types as one of faces, so the dataset reads as one table)."""
    import pyarrow as pa

    f64, text = pa.float64(), pa.string()
    types = {"file": text, "face": pa.int64(), "box_x1": f64, "box_y1": f64, "box_x2": f64, "box_y2": f64,
             "det_score": f64, "landmarks": pa.list_(pa.list_(f64)), "age": f64, "age_low": f64, "age_high": f64,
             "age_sigma": f64, "gender": text, "p_female": f64, "status": text, "error": text}
    assert list(types) == PHOTO_COLUMNS, "a column was added to PHOTO_COLUMNS: give it a type here"
    return pa.schema([(c, types[c]) for c in PHOTO_COLUMNS])


def stored_name(name: str) -> str:
    """``name`` as a Parquet string can hold it: a file name that is not valid UTF-8 (surrogate escapes) gets
    its odd bytes as ``\\xNN`` text. Inputs are compared with committed rows by this form.

    >>> stored_name("a.jpg"), stored_name("caf\\udce9.jpg")
    ('a.jpg', 'caf\\\\xe9.jpg')
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def part_name(names: Sequence[str]) -> str:
    """The file name of the part holding the rows of inputs ``names`` (a hash of them, in order)."""
    digest = hashlib.sha256("\n".join(stored_name(n) for n in names).encode()).hexdigest()[:24]
    return f"{PART_PREFIX}{digest}{PART_SUFFIX}"


def rows_table(rows: Sequence[dict]) -> Any:
    """``rows`` (dicts as :func:`agegender.inference.batch.predict_items` makes them) as an Arrow table."""
    import pyarrow as pa

    return pa.Table.from_pylist([{c: stored_name(r[c]) if c == "file" else r.get(c) for c in PHOTO_COLUMNS}
                                 for r in rows], schema=schema())


class Dest:
    """The output dataset at ``uri``: checked, its settings kept, its committed inputs listed, parts written."""

    def __init__(self, uri: str, storage: Storage) -> None:
        self.uri, self.storage = uri.rstrip("/") or uri, storage
        self.fs, self.path = storage.resolve(self.uri)

    def _at(self, name: str) -> str:
        return f"{self.path}/{name}"

    def prepare(self, settings: dict) -> None:
        """Make sure the dataset can be written, and that rows already there were made with ``settings`` (the
        model and the options that change rows): mixing two models' rows in one dataset would be silent."""
        from pyarrow import fs

        if not is_s3(self.uri):
            from agegender.io.outputs import check_folder

            check_folder(self.uri, "--out")
        else:
            try:
                bucket = self.fs.get_file_info(self.path.split("/", 1)[0])
            except OSError as e:
                raise storage_error(self.uri, e) from None
            if bucket.type == fs.FileType.NotFound:
                raise OutputError(f"--out {self.uri}: no such bucket")
        settings = {"format": FORMAT, "columns": PHOTO_COLUMNS, **settings}
        before = self._read_settings()
        if before is None:
            self._write(SETTINGS_FILE, json.dumps(settings, indent=2).encode())
        elif before != settings:
            changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
            raise OutputError(f"--out {self.uri} holds rows made with other settings ({', '.join(changed)}: "
                              f"{', '.join(f'{before.get(k)!r} there, {settings.get(k)!r} now' for k in changed)}); "
                              "give the same options to resume it, or a new --out")

    def _read_settings(self) -> dict | None:
        try:
            with self.fs.open_input_stream(self._at(SETTINGS_FILE)) as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None
        except OSError as e:
            raise storage_error(self.uri, e) from None

    def parts(self) -> list[str]:
        """Paths of the committed part files."""
        from pyarrow import fs

        try:
            infos = self.fs.get_file_info(fs.FileSelector(self.path, allow_not_found=True))
        except OSError as e:
            raise storage_error(self.uri, e) from None
        return sorted(i.path for i in infos if i.base_name.startswith(PART_PREFIX)
                      and i.base_name.endswith(PART_SUFFIX))

    def committed(self) -> set[str]:
        """The ``file`` of every committed row: the inputs a re-run skips (by :func:`stored_name`)."""
        import pyarrow.dataset as ds

        parts = self.parts()
        if not parts:
            return set()
        table = ds.dataset(parts, filesystem=self.fs, format="parquet", schema=schema()).to_table(columns=["file"])
        return set(table.column("file").unique().to_pylist())

    def write_part(self, name: str, rows: Sequence[dict]) -> None:
        """Write ``rows`` as part ``name`` in one piece (see the module docstring)."""
        import io

        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(rows_table(rows), buf, compression="zstd")
        self._write(name, buf.getvalue())

    def _write(self, name: str, data: bytes) -> None:
        if is_s3(self.uri):
            # An S3 object appears whole when the upload completes, or not at all.
            with self.fs.open_output_stream(self._at(name)) as f:
                f.write(data)
            return
        from agegender.io.outputs import atomic_write

        atomic_write(self._at(name), lambda f: f.write(data))

    def remove_stale(self) -> int:
        """Remove the hidden temporary files of writes that a kill interrupted (local datasets; S3 keeps no
        half-written object). Returns how many."""
        if is_s3(self.uri):
            return 0
        from pathlib import Path

        stale = [p for p in Path(self.path).glob(".*.tmp") if p.name.startswith((f".{PART_PREFIX}",
                                                                                   f".{SETTINGS_FILE}"))]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)
