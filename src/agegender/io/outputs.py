"""Writing results safely: output paths checked before the work starts, files replaced atomically, CSV cells a
spreadsheet will not run as formulas, file names written byte for byte as they are on disk, unique names for
files derived from inputs.

Nothing here needs torch: every command and the light inference path write through it.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from agegender.errors import OutputError

# A cell starting with one of these is run as a formula by Excel, LibreOffice and Google Sheets (OWASP's CSV
# injection list); such a cell gets a leading apostrophe, which spreadsheets show as text and hide.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Longest file name most file systems take, in bytes.
NAME_MAX = 255


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C until the block has finished, then raise ``KeyboardInterrupt``.

    Why: a KeyboardInterrupt inside ``torch.save`` is masked by the RuntimeError its zip writer then raises
    on close, and a block that writes several files must finish or not start. Only in the main thread and
    only over Python's default handler (anything else installed, e.g. by the service, is left alone);
    nested blocks are held by the outermost one.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, fsync, then rename it to ``path``: a crash
    never leaves a torn file where a good one was, and a failed write leaves the old file untouched. Ctrl-C
    during the write takes effect once the file is in place (:func:`interrupts_held`)."""
    with interrupts_held():
        _atomic_write(Path(path), write)


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps a short prefix of the final one: a name near the length limit must still fit.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def check_writable(path: str | Path, what: str) -> Path:
    """Fail now, before any work, if the file ``path`` could not be written at the end: it is a folder, its
    name is too long, or its folder cannot be created or written. Creates the folder. Returns ``path``."""
    path = Path(path)
    if len(os.fsencode(path.name)) > NAME_MAX:
        raise OutputError(f"{what} {path}: the file name is longer than {NAME_MAX} bytes")
    check_folder(path.parent, what)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    return path


def check_folder(folder: str | Path, what: str) -> Path:
    """Create ``folder`` if needed and check that files can be created in it (by creating and removing one)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what}: cannot write into {folder}: it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".agegender-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{what}: cannot write into {folder}: {_reason(e)}") from None
    return folder


def plain_float(value: float) -> str:
    """``value`` as Python writes it, but never in exponent notation (``6e-05`` -> ``0.00006``): every output
    writes numbers for people to read.

    >>> plain_float(6e-05), plain_float(0.5), plain_float(1e+20), plain_float(-1.5e-07)
    ('0.00006', '0.5', '100000000000000000000', '-0.00000015')
    """
    text = repr(float(value))
    if "e" not in text or not math.isfinite(value):
        return text
    return f"{value:.20f}".rstrip("0").rstrip(".") if abs(value) < 1 else f"{value:.0f}"


def csv_cell(value: Any) -> Any:
    """``value``, with a leading apostrophe if it is text a spreadsheet would run as a formula; a float that Python
    would write in exponent notation (``6e-05``) written out in plain digits instead (:func:`plain_float`).

    >>> csv_cell("=HYPERLINK(1)"), csv_cell("photo.jpg"), csv_cell(-3.5), csv_cell(6e-05)
    ("'=HYPERLINK(1)", 'photo.jpg', -3.5, '0.00006')
    """
    if isinstance(value, float) and "e" in repr(value) and math.isfinite(value):
        return plain_float(value)
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


# A JSON string (skipped whole, so nothing inside one is touched) or a number in exponent notation.
_JSON_STRING_OR_EXPONENT = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?[eE][-+]?\d+')


def json_text(value: Any, **dumps: Any) -> str:
    """``json.dumps(value, **dumps)`` with every number in plain digits (``0.00006``, not ``6e-05``), as the CSV
    writes them: the same figures in every output.

    >>> json_text({"p_female": 6e-05, "file": "x_1e-05.jpg", "age": 31.5})
    '{"p_female": 0.00006, "file": "x_1e-05.jpg", "age": 31.5}'
    """
    text = json.dumps(value, **dumps)
    return _JSON_STRING_OR_EXPONENT.sub(lambda m: m[0] if m[0][0] == '"' else plain_float(float(m[0])), text)


def csv_row(row: dict) -> dict:
    """``row`` with each cell as a CSV writer should get it: None empty, lists as JSON, text made formula-safe
    (:func:`csv_cell`).

    >>> csv_row({"file": "=cmd.jpg", "age": 31.5, "error": None, "landmarks": [[1.0, 2.0]]})
    {'file': "'=cmd.jpg", 'age': 31.5, 'error': '', 'landmarks': '[[1.0, 2.0]]'}
    """
    return {k: csv_cell("" if v is None else json.dumps(v) if isinstance(v, list | tuple | dict) else v)
            for k, v in row.items()}


def write_rows(rows: list[dict], columns: list[str], path: str | Path) -> None:
    """Write ``rows`` (dicts; keys outside ``columns`` ignored, missing ones empty) to ``path`` atomically as CSV,
    cells as :func:`csv_row` makes them, without pandas (an inference-only install has none)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_row(row) for row in rows)
    data = buf.getvalue().encode("utf-8", "surrogateescape")
    atomic_write(path, lambda f: f.write(data))


def write_json(value: Any, path: str | Path) -> None:
    """Write ``value`` to ``path`` atomically as indented JSON (non-UTF-8 names survive as ``\\udcXX``
    escapes, which ``json.loads`` turns back into the same name)."""
    data = json_text(value, indent=2).encode()
    atomic_write(path, lambda f: f.write(data))


def unique_name(stem: str, suffix: str, taken: set[str]) -> str:
    """``stem + suffix``, shortened to fit :data:`NAME_MAX` bytes and numbered (``_2``, ``_3``, ...) if it is in
    ``taken`` (compared case-insensitively, for case-insensitive file systems); the name is added to ``taken``.

    >>> taken = set()
    >>> unique_name("photo", "_annotated.jpg", taken), unique_name("Photo", "_annotated.jpg", taken)
    ('photo_annotated.jpg', 'Photo_annotated_2.jpg')
    """
    number = 1
    while True:
        tail = suffix if number == 1 else f"{Path(suffix).stem}_{number}{Path(suffix).suffix}"
        room = NAME_MAX - len(os.fsencode(tail))
        head = stem
        while len(os.fsencode(head)) > room:
            head = head[:-1]
        name = head + tail
        if name.casefold() not in taken:
            taken.add(name.casefold())
            return name
        number += 1
