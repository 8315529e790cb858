"""Uploads read in memory with a byte limit (a chunked or lying client is cut off too), multipart parsed on
those bytes, and the image put through the project's one decoding gate; each refusal as its HTTP error."""

from __future__ import annotations

from fastapi import Request
from PIL import Image
from starlette.requests import ClientDisconnect

from agegender.errors import CORRUPT, EMPTY, TOO_LARGE, UNSUPPORTED, ImageReadError
from agegender.io.images import open_image
from agegender.serving.responses import ApiError

MULTIPART_OVERHEAD = 16 * 1024  # room for boundaries and part headers on top of max_upload_bytes


# How each kind of unusable image is answered (images.ImageReadError.kind).
IMAGE_ERRORS = {EMPTY: (400, "empty_upload"), UNSUPPORTED: (415, "unsupported_image"),
                TOO_LARGE: (422, "too_many_pixels"), CORRUPT: (422, "corrupt_image")}


def decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    """The uploaded image through the project's decoding gate; its refusals as 400/415/422 :class:`ApiError`."""
    if not data:
        raise ApiError(400, "empty_upload", "The upload is empty (0 bytes).")
    try:
        return open_image(data, max_pixels=max_pixels)
    except ImageReadError as e:
        status, code = IMAGE_ERRORS.get(e.kind, (422, "corrupt_image"))
        raise ApiError(status, code, f"The upload cannot be used: {str(e).removeprefix('<bytes>: ')}.") from None


def _multipart_file(body: bytes, content_type: str, field: str = "file") -> bytes:
    """The content of form field ``field`` in a multipart/form-data ``body``, parsed in memory."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "The multipart/form-data content type has no boundary.")
    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    header: list[bytearray] = [bytearray(), bytearray()]

    def on_part_begin() -> None:
        parts.append(({}, bytearray()))

    def on_header_end() -> None:
        parts[-1][0][bytes(header[0]).lower()] = bytes(header[1])
        header[0], header[1] = bytearray(), bytearray()

    callbacks = {
        "on_part_begin": on_part_begin, "on_header_end": on_header_end,
        "on_header_field": lambda data, start, end: header[0].extend(data[start:end]),
        "on_header_value": lambda data, start, end: header[1].extend(data[start:end]),
        "on_part_data": lambda data, start, end: parts[-1][1].extend(data[start:end]),
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise ApiError(400, "bad_multipart", f"The multipart body cannot be parsed: {e}") from None
    for headers, data in parts:
        if parse_options_header(headers.get(b"content-disposition"))[1].get(b"name") == field.encode():
            return bytes(data)
    raise ApiError(400, "missing_file", f"The multipart form has no field named {field!r}.")


PREDICT_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}


def media_type(content_type: str) -> str:
    """The media type of a request's Content-Type, if this service accepts it; else a 415 :class:`ApiError`.

    >>> media_type("Multipart/Form-Data; boundary=XyZ"), media_type("image/jpeg")
    ('multipart/form-data', 'image/jpeg')
    """
    media = content_type.split(";")[0].strip().lower()  # the boundary parameter is case-sensitive: not lowered
    if media == "multipart/form-data" or media.startswith("image/") or media == "application/octet-stream":
        return media
    raise ApiError(415, "unsupported_media_type", f"Content-Type {media} is not accepted: send multipart/form-data "
                   "with field 'file', or the image with Content-Type image/* or application/octet-stream.")


async def read_body(request: Request, limit: int, max_upload_bytes: int) -> bytes:
    """The request body, at most ``limit`` bytes (413 beyond), counted as it arrives: a chunked or lying client
    is cut off too."""
    too_large = ApiError(413, "upload_too_large", f"The upload exceeds the limit of {max_upload_bytes:,} bytes.")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_content_length", "The Content-Length header is not a number.")
        if int(declared) > limit:
            raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise too_large
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "The client went away during the upload.") from None
    return bytes(body)


async def read_image_upload(request: Request, media: str, max_upload_bytes: int) -> bytes:
    """The uploaded file: multipart field ``file`` (``media`` multipart/form-data), or the raw body."""
    content_type = request.headers.get("content-type", "application/octet-stream")
    multipart = media == "multipart/form-data"
    body = await read_body(request, max_upload_bytes + (MULTIPART_OVERHEAD if multipart else 0), max_upload_bytes)
    data = _multipart_file(body, content_type) if multipart else body
    if len(data) > max_upload_bytes:
        raise ApiError(413, "upload_too_large", f"The file exceeds the limit of {max_upload_bytes:,} bytes.")
    return data
