"""The errors a user can cause, and how any error is said in one line.

Every class here is a user's error: the CLI answers it with one line and exit 2, the library raises it with a
sentence that says what to do. They live in one module at the bottom of the package so that every layer can
raise and catch them without importing the layer that defines the work (and so that ``agegender.cli`` can list
them without importing torch).
"""

from __future__ import annotations


def one_line(e: BaseException, limit: int | None = None) -> str:
    """``e``'s message on one line (white space folded), cut to ``limit`` characters; its type name when empty.

    >>> one_line(ValueError("bad\\n   value")), one_line(KeyError()), one_line(OSError("x" * 9), limit=4)
    ('bad value', 'KeyError', 'xxxx')
    """
    text = " ".join(str(e).split()) or type(e).__name__
    return text if limit is None else text[:limit]


def describe(e: BaseException, limit: int = 300) -> str:
    """``"TypeName: message"`` on one line, the message cut to ``limit`` characters: for an error of code that is
    not ours (a decoder, onnxruntime), where the type says what kind of failure it was.

    >>> describe(ZeroDivisionError("division by zero"))
    'ZeroDivisionError: division by zero'
    """
    text = " ".join(str(e).split()) or "no details"
    return f"{type(e).__name__}: {text[:limit]}"


class DataError(ValueError):
    """A data folder or split file that cannot be used (the message says why and what to do)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, of another format or another architecture."""


# ImageReadError kinds: what went wrong, for callers that answer differently (the service's status codes).
EMPTY, UNREADABLE, UNSUPPORTED, TOO_LARGE, CORRUPT = "empty", "unreadable", "unsupported", "too_large", "corrupt"


class ImageReadError(ValueError):
    """The file is not a usable image; the message is one line, ``kind`` says why (see the constants above)."""

    def __init__(self, message: str, kind: str = CORRUPT) -> None:
        super().__init__(message)
        self.kind = kind


class ModelOutputError(ValueError):
    """The model answered an input with numbers that are no estimate (NaN, infinite, a negative spread): that
    input gets an error row (or answer) instead of those numbers written as a result."""


class OutputError(ValueError):
    """An output path that cannot be written (the message says which and why)."""


class VideoError(ValueError):
    """The video cannot be opened, or ends before the frames its container declares (truncated or damaged)."""


class StorageError(DataError):
    """Storage that cannot be reached or listed (a dead S3 endpoint, a missing bucket, refused credentials)."""


class MissingExtra(Exception):
    """A command needs packages this installation lacks (the message says which extra to install)."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops so a bad update never reaches a checkpoint."""


class PretrainedWeightsError(RuntimeError):
    """Pre-trained weights that are missing, corrupt or do not fit the backbone."""
