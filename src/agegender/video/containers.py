"""How many bytes a video file's container says it holds, read from its own structure: a file shorter than that was
cut off, whatever frame count the container reports or estimates.

A frame count cannot tell: a transport stream (.ts) has none, so FFmpeg estimates it from the timestamps it finds
near the end of the file, which for a truncated file are those of the cut; a truncated .wmv reports none at all. But
most containers state lengths in bytes, which a cut file cannot meet:

- RIFF (.avi): each ``RIFF`` chunk's size (OpenDML files > 1 GB chain several);
- ISO base media (.mp4, .mov, .m4v, .3gp): the size of each top-level box;
- ASF (.wmv, .asf): the header object's size and the data object's;
- EBML (.mkv, .webm): the segment's size (where it is known: a live recording may leave it open);
- MPEG transport stream (.ts, .m2ts): whole 188-byte packets (192 with a timecode), so a cut inside a packet shows.

A cut exactly between two transport-stream packets, or a format that states no length (MPEG program stream, FLV),
cannot be told from a shorter file this way; the reader's timestamp check (the last frame against the duration the
container declares) covers the others.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

ASF_HEADER = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
ASF_DATA = bytes.fromhex("3626b2758e66cf11a6d900aa0062ce6c")
EBML_HEADER, EBML_SEGMENT = bytes.fromhex("1a45dfa3"), bytes.fromhex("18538067")
TS_SYNC = 0x47
# Boxes or chunks read at most: a hostile file of millions of tiny boxes would otherwise be walked to its end.
MAX_ELEMENTS = 4096


def declared_size(path: str | Path) -> int | None:
    """The bytes ``path``'s container says the file holds, or None where it says nothing this module reads.

    >>> import io, tempfile, os
    >>> with tempfile.NamedTemporaryFile(suffix=".avi", delete=False) as f:
    ...     _ = f.write(b"RIFF" + (100).to_bytes(4, "little") + b"AVI " + bytes(20))
    >>> declared_size(f.name), os.path.getsize(f.name)
    (108, 32)
    >>> os.unlink(f.name)
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(400)
        for reader in (_riff, _iso_boxes, _asf, _ebml, _transport_stream):
            found = reader(f, head, size)
            if found is not None:
                return found
    return None


def _chained(f: BinaryIO, size: int, header: int, length) -> int:
    """The end of the last of a chain of elements, each ``header`` bytes whose ``length(bytes)`` says how long
    the element is in all; stops at the end of the file or at an element that runs past it."""
    at = 0
    for _ in range(MAX_ELEMENTS):
        f.seek(at)
        head = f.read(header)
        if len(head) < header:
            return at if len(head) == 0 else at + header
        n = length(f, head, at, size)
        if n is None or n < header:
            return at if n is None else at + header
        at += n
        if at >= size:
            return at
    return size


def _riff(f: BinaryIO, head: bytes, size: int) -> int | None:
    if head[:4] != b"RIFF":
        return None

    def length(_f: BinaryIO, chunk: bytes, _at: int, _size: int) -> int | None:
        if chunk[:4] not in (b"RIFF", b"JUNK", b"LIST"):
            return None
        n = 8 + struct.unpack("<I", chunk[4:8])[0]
        return n + (n % 2)  # RIFF chunks are padded to an even size

    return _chained(f, size, 8, length)


BOX_TYPES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"pnot", b"PICT", b"meta", b"moof",
             b"mfra", b"styp", b"sidx", b"pdin", b"prft", b"emsg"}


def _iso_boxes(f: BinaryIO, head: bytes, size: int) -> int | None:
    if head[4:8] not in (b"ftyp", b"wide", b"mdat", b"moov", b"free", b"skip"):
        return None

    def length(box_file: BinaryIO, box: bytes, at: int, total: int) -> int | None:
        if box[4:8] not in BOX_TYPES:
            return None
        n = struct.unpack(">I", box[:4])[0]
        if n == 0:  # the box runs to the end of the file
            return total - at
        if n == 1:  # a 64-bit size follows the type
            box_file.seek(at + 8)
            large = box_file.read(8)
            return struct.unpack(">Q", large)[0] if len(large) == 8 else 16
        return n

    return _chained(f, size, 8, length)


def _asf(f: BinaryIO, head: bytes, size: int) -> int | None:
    if head[:16] != ASF_HEADER or len(head) < 24:
        return None
    header = struct.unpack("<Q", head[16:24])[0]
    f.seek(header)
    data = f.read(24)
    if len(data) < 24:
        return header + 24
    if data[:16] != ASF_DATA:
        return None
    length = struct.unpack("<Q", data[16:24])[0]
    return header + length if length else None  # 0: a broadcast file that does not say


def _vint(data: bytes, at: int) -> tuple[int | None, int]:
    """An EBML variable-length integer at ``data[at]``: (value, or None for "unknown", and its length)."""
    first = data[at]
    width = 8 - first.bit_length() + 1
    if first == 0 or at + width > len(data):
        return None, max(1, width)
    value = first & (0xFF >> width)
    for byte in data[at + 1 : at + width]:
        value = (value << 8) | byte
    return (None if value == (1 << (7 * width)) - 1 else value), width


def _ebml(f: BinaryIO, head: bytes, size: int) -> int | None:
    if head[:4] != EBML_HEADER or len(head) < 16:
        return None
    header_size, width = _vint(head, 4)
    if header_size is None:
        return None
    at = 4 + width + header_size
    if head[at : at + 4] != EBML_SEGMENT or at + 5 > len(head):
        return None
    segment, width = _vint(head, at + 4)
    return None if segment is None else at + 4 + width + segment


def _transport_stream(f: BinaryIO, head: bytes, size: int) -> int | None:
    for packet, offset in ((188, 0), (192, 4)):
        if len(head) > packet + offset and head[offset] == TS_SYNC and head[packet + offset] == TS_SYNC:
            return -(-size // packet) * packet  # whole packets
    return None
