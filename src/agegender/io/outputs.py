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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from agegender.errors import OutputError

# A cell starting with one of these is run as a formula by Excel, LibreOffice and Google Sheets (OWASP's CSV
# injection list); such a cell gets a leading apostrophe, which spreadsheets show as text and hide.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Longest file name most file systems take, in bytes.
NAME_MAX = 255


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C is (see :func:`terminate_like_ctrl_c`): a subclass of
    ``KeyboardInterrupt``, so that every ``finally`` and every handler of Ctrl-C finishes the outputs the same way."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextmanager
def terminate_like_ctrl_c() -> Iterator[None]:
    """Within the block, SIGTERM (``kill``, a container or service manager stopping the process) raises
    :class:`Terminated` in the main thread instead of ending the process at once, which lost every row still to be
    renamed into place and left an annotated video without its index. Only in the main thread, and only over the
    default action (a handler someone else installed is left alone); the previous handler is restored after."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# The handlers that stop the work by raising: held back by interrupts_held, then run.
_RAISING = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _raise_terminated}


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C (and SIGTERM where :func:`terminate_like_ctrl_c` made it raise) until the block has finished,
    then raise ``KeyboardInterrupt`` (or :class:`Terminated`).

    Why: a KeyboardInterrupt inside ``torch.save`` is masked by the RuntimeError its zip writer then raises
    on close, and a block that writes several files must finish or not start. Only in the main thread and
    only over those handlers (anything else installed, e.g. by the service, is left alone); nested blocks are held
    by the outermost one.
    """
    held = [] if threading.current_thread() is not threading.main_thread() else \
        [signum for signum, handler in _RAISING.items() if signal.getsignal(signum) is handler]
    if not held:
        yield
        return
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        previous[received[0]](received[0], None)


@contextmanager
def writing(path: str | Path, what: str = "", then: str = "") -> Iterator[None]:
    """An ``OSError`` of the block raised as :class:`OutputError` naming ``path`` (``what`` it is, then ``then``,
    what to do): a failed ``write()`` names no file, so a full disk read as a bare "[Errno 28] No space left on
    device" while the output the user named had room. An :class:`OutputError` from within (a file of ``path``)
    gets ``then`` added."""
    try:
        yield
    except OutputError as e:
        raise OutputError(f"{e}; {what + ' ' if what else ''}{path}: {then}" if then else str(e)) from None
    except OSError as e:
        raise OutputError(f"{what + ' ' if what else ''}{path}: cannot write ({_reason(e)})"
                          f"{'; ' + then if then else ''}") from None


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, fsync, then rename it to ``path``: a crash
    never leaves a torn file where a good one was, and a failed write leaves the old file untouched (and raises
    :class:`OutputError` naming ``path``). Ctrl-C during the write takes effect once the file is in place
    (:func:`interrupts_held`)."""
    with interrupts_held(), writing(path, then="it is left as it was"):
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


def file_identity(path: str | Path) -> tuple[int, int] | None:
    """The file ``path`` names, whatever the name (device and inode), or None where there is no such file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_not_inputs(outputs: dict[str, str | Path | None], inputs: Iterable[str | Path]) -> None:
    """Refuse, before anything is opened, an output that is one of the ``inputs`` under any name (the same path,
    a relative one, a link, a hard link): ``agegender predict long.mp4 --annotate long.mp4`` replaced the clip
    with a stub of its first frames. ``outputs`` maps each option to its path (None: not given)."""
    given = {what: Path(path) for what, path in outputs.items() if path is not None}
    existing = {ident: what for what, path in given.items() if (ident := file_identity(path)) is not None}
    if not existing:
        return
    for item in inputs:
        what = existing.get(file_identity(item))
        if what is not None:
            raise OutputError(f"{what} {given[what]} is the input {item}: writing it would destroy the input; "
                              "give another name")


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
