"""Where a cluster run's photos come from and its rows go: local paths and ``s3://`` URIs on pyarrow's file
systems, and the list of inputs a source names.

A source is a folder (searched recursively, image suffixes only, as ``agegender predict`` does), one image file,
a ``.txt`` list of paths or URIs (one a line; ``#`` comments and blank lines skipped; relative paths are taken
from the list's folder), or an ``s3://bucket/prefix``. S3 settings come from the usual AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``), with the endpoint
overridable: :class:`Storage` holds only what is not secret, so it can be sent to every worker, which takes its
credentials from its own environment.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agegender.data.records import IMAGE_EXTENSIONS
from agegender.errors import StorageError, one_line

S3 = "s3://"
LIST_SUFFIX = ".txt"
# A dead endpoint must fail in seconds, not after the SDK's default minutes of retries.
CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S, ATTEMPTS = 3.0, 30.0, 3


def is_s3(uri: str) -> bool:
    return uri.startswith(S3)


@dataclass(frozen=True)
class Storage:
    """How to reach S3-compatible storage: ``endpoint`` (``http://host:port`` for MinIO, Ceph, moto...; default
    ``AWS_ENDPOINT_URL`` or AWS itself) and ``region`` (default ``AWS_REGION``)."""

    endpoint: str | None = None
    region: str | None = None

    def s3(self) -> Any:
        """A pyarrow ``S3FileSystem`` with short timeouts and few retries."""
        from pyarrow import fs

        endpoint = self.endpoint or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, "request_timeout": REQUEST_TIMEOUT_S,
                                  "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS)}
        if endpoint:
            scheme, _, host = endpoint.rpartition("://")
            kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return fs.S3FileSystem(**kwargs)

    def resolve(self, uri: str) -> tuple[Any, str]:
        """``(filesystem, path on it)`` for a local path or an ``s3://`` URI."""
        from pyarrow import fs

        if is_s3(uri):
            return self.s3(), uri[len(S3):].rstrip("/")
        return fs.LocalFileSystem(), str(Path(uri).absolute())


def storage_error(uri: str, e: BaseException) -> StorageError:
    """A one-line :class:`StorageError` for a failure to reach ``uri``, saying what to check."""
    hint = " (check --s3-endpoint or AWS_ENDPOINT_URL, the bucket name and the AWS credentials)" if is_s3(uri) else ""
    return StorageError(f"{uri}: cannot be reached: {one_line(e, 300)}{hint}")


@dataclass
class Inputs:
    """The inputs a run's sources name, sorted and without repeats, and the sources that name none, with why."""

    names: list[str]
    missing: list[tuple[str, str]]


def list_inputs(sources: Sequence[str], storage: Storage) -> Inputs:
    """Every input the ``sources`` name (see the module docstring). Names are as ``agegender predict`` writes them
    for local files (the path as found under the folder given), ``s3://bucket/key`` for objects."""
    from agegender.inference.batch import expand_inputs

    names: list[str] = []
    missing: list[tuple[str, str]] = []
    for source in sources:
        if is_s3(source):
            found = _list_s3(source, storage)
            if not found:
                missing.append((source, "no image objects under this prefix"))
            names += found
        elif source.lower().endswith(LIST_SUFFIX) and Path(source).is_file():
            names += _read_list(Path(source))
        else:
            files, gone = expand_inputs([source])
            names += [str(f) for f in files]
            missing += gone
    return Inputs(sorted(set(names)), missing)


def _list_s3(uri: str, storage: Storage) -> list[str]:
    from pyarrow import fs

    filesystem, path = storage.resolve(uri)
    try:
        infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as e:
        raise storage_error(uri, e) from None
    return [S3 + i.path for i in infos if i.type == fs.FileType.File and Path(i.path).suffix.lower()
            in IMAGE_EXTENSIONS]


def _read_list(path: Path) -> list[str]:
    """The entries of a list file; relative paths joined to the list's folder as it was given."""
    entries = []
    for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        entries.append(entry if is_s3(entry) or os.path.isabs(entry) else str(path.parent / entry))
    return entries


def location(name: str) -> str:
    """Where a worker finds input ``name``: its URI, or its absolute path (a worker's folder is not the
    driver's)."""
    return name if is_s3(name) else os.path.abspath(name)


def read_input(where: str, storage: Storage, filesystem: Any = None) -> str | bytes:
    """What the decoding gate takes for the input at ``where`` (a :func:`location`): a local file's path (so the
    gate's own checks for special files apply, exactly as in ``agegender predict``), an object's bytes. A
    missing or forbidden object raises :class:`FileNotFoundError` or :class:`PermissionError` (the input's own
    fault: an error row); any other :class:`OSError` is the storage's fault and is raised as it is, so the run
    stops with it instead of recording good photos as errors."""
    if not is_s3(where):
        return where
    filesystem = filesystem or storage.s3()
    with filesystem.open_input_file(where[len(S3):]) as f:
        return f.read()
