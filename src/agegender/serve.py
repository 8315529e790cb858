"""HTTP service: ``POST /v1/predict`` finds faces in a photo and returns age and gender, ``GET /`` is a web page.

The model is loaded once by the caller (:func:`create_app` takes a ready :class:`Predictor`). Uploads stay in
memory: the body is read with a byte limit and multipart is parsed on those bytes, so nothing is spooled to disk.
Decoding and prediction run off the event loop in worker threads behind a bounded queue, which batches the
requests waiting together (:class:`JobQueue`): their photos are decoded and searched side by side and all their
faces go through the network in one call.

Status codes of ``POST /v1/predict`` (every error body is ``{"error": code, "detail": sentence}``):
200 ok (``faces`` may be empty); 400 malformed request (bad multipart, no ``file`` field, empty body);
413 upload larger than ``max_upload_bytes``; 415 not an image format PIL reads, or a request content type other
than multipart/form-data, image/* or application/octet-stream; 422 an image over ``max_pixels`` (a decompression
bomb) or a corrupt image of a known format; 503 queue full (with ``Retry-After``); 504 not done in ``timeout_s``.

This module is the web layer only (it needs the ``serve`` extras); ``agegender serve`` in :mod:`agegender.cli`
loads the model and runs it with uvicorn.
"""

import asyncio
import io
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from agegender.images import MAX_PIXELS, ImageReadError, open_image
from agegender.predictor import Predictor

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
MULTIPART_OVERHEAD = 16 * 1024  # room for boundaries and part headers on top of max_upload_bytes
RETRY_AFTER_S = 1


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": detail}`` with HTTP ``status``."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


class QueueFull(Exception):
    """Every worker is busy and ``max_queue`` jobs are already waiting."""


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple
    batched: bool
    future: Future = field(default_factory=Future)


class JobQueue:
    """``workers`` threads taking jobs from a queue that holds at most ``max_queue`` jobs beyond those running.

    ``submit(fn, *args)`` runs ``fn(*args)`` alone. ``submit_batched(fn, item)`` runs ``fn([item, ...])``
    together with the other items for ``fn`` that are waiting when a worker takes it, or that arrive within
    ``window_s`` after it (up to ``max_batch``): under load the queue fills while a batch runs, so batches grow
    with the load and each costs less per item. ``fn`` returns one result, or one exception, per item.

    A slot is freed when its job finishes or is cancelled, not when a request gives up waiting: a timed-out job
    that already runs keeps its slot until it ends, so the bound always reflects the work really in the pool.
    """

    def __init__(self, workers: int, max_queue: int, max_batch: int = 8, window_s: float = 0.005) -> None:
        if workers < 1 or max_queue < 0 or max_batch < 1 or window_s < 0:
            raise ValueError(f"need workers >= 1, max_queue >= 0, max_batch >= 1 and window_s >= 0, got {workers}, "
                             f"{max_queue}, {max_batch} and {window_s}")
        self.capacity = workers + max_queue
        self.max_batch, self.window_s = max_batch, window_s
        self.in_flight = 0
        self._jobs: deque[_Job] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._closed = False
        for i in range(workers):
            threading.Thread(target=self._work, name=f"agegender-serve-{i}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._put(_Job(fn, args, batched=False))

    def submit_batched(self, fn: Callable[[list], list], item: Any) -> Future:
        return self._put(_Job(fn, (item,), batched=True))

    def _put(self, job: _Job) -> Future:
        with self._lock:
            if self._closed or self.in_flight >= self.capacity:
                raise QueueFull
            self.in_flight += 1
            self._jobs.append(job)
            self._arrived.notify()
        job.future.add_done_callback(self._release)
        return job.future

    def _release(self, _future: Future) -> None:
        with self._lock:
            self.in_flight -= 1

    def _next(self, fn: Callable | None = None, deadline: float = 0.0) -> _Job | None:
        """The next job to run (blocking), or with ``fn`` the next waiting batched job for ``fn`` (waiting
        until ``deadline`` for one, never past a job for something else). Cancelled jobs are dropped."""
        with self._lock:
            while True:
                if self._jobs and (fn is None or (self._jobs[0].batched and self._jobs[0].fn is fn)):
                    job = self._jobs.popleft()
                    if job.future.set_running_or_notify_cancel():
                        return job
                    continue
                timeout = None if fn is None else deadline - time.monotonic()
                if self._jobs or self._closed or (timeout is not None and timeout <= 0):
                    return None
                self._arrived.wait(timeout)

    def _work(self) -> None:
        while (job := self._next()) is not None:
            batch = [job]
            deadline = time.monotonic() + self.window_s
            while job.batched and len(batch) < self.max_batch and (more := self._next(job.fn, deadline)):
                batch.append(more)
            try:
                results = job.fn([j.args[0] for j in batch]) if job.batched else [job.fn(*job.args)]
            except BaseException as e:  # noqa: BLE001 - handed to the waiting requests, as an executor does
                results = [e] * len(batch)
            for j, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    j.future.set_exception(result)
                else:
                    j.future.set_result(result)

    def shutdown(self) -> None:
        """Stop the workers once their jobs end; jobs still waiting are cancelled."""
        with self._lock:
            self._closed = True
            waiting, self._jobs = list(self._jobs), deque()
            self._arrived.notify_all()
        for job in waiting:
            job.future.cancel()


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def model_card(predictor: Predictor, model_id: str) -> dict:
    """What ``GET /v1/model`` answers: architecture, calibration, labels and the training facts on record."""
    info = predictor.checkpoint_info
    cfg = predictor.model.config
    training = info.get("training", {})
    card = {
        "model": model_id, "backbone": cfg.backbone, "image_size": cfg.image_size, "crop_pct": cfg.crop_pct,
        "age_head": cfg.age_head, "flip_tta": predictor.flip_tta, "labels": info.get("labels"),
        "calibration": info.get("calibration"),
        "training": {k: training[k] for k in ("epoch", "data_fingerprint", "best_val_age_mae", "torch_version")
                     if k in training},
    }
    if "split" in training:
        card["training"]["split"] = {k: v for k, v in training["split"].items() if k in ("fractions", "seed", "counts")}
    if "metrics" in training:
        card["training"]["last_epoch_metrics"] = training["metrics"]
    card["training"] |= {k: v for k, v in training.items() if k.startswith("test")}
    return _finite(card)


def _probe_and_decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode ``data``, telling apart "not an image" (415) from "too many pixels" and "corrupt" (422)."""
    if not data:
        raise ApiError(400, "empty_upload", "The upload is empty (0 bytes).")
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            w, h, fmt = *probe.size, probe.format
    except UnidentifiedImageError:
        raise ApiError(415, "unsupported_image", "The upload is not an image format this service reads "
                       "(JPEG, PNG, WebP, BMP, GIF, TIFF, ...).") from None
    except Image.DecompressionBombError as e:
        raise ApiError(422, "too_many_pixels", f"The image is refused as a decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ApiError(422, "corrupt_image", f"The image header cannot be read: {e}") from None
    if w * h > max_pixels:
        raise ApiError(422, "too_many_pixels", f"The image is {w}x{h} pixels; the limit is {max_pixels:,} pixels.")
    try:
        return open_image(data, max_pixels=max_pixels)
    except ImageReadError as e:
        raise ApiError(422, "corrupt_image", f"The {fmt} image cannot be decoded: {e}") from None


def _decode_timed(item: tuple[bytes, int]) -> tuple[Image.Image | ApiError, float]:
    t0 = time.perf_counter()
    try:
        image: Image.Image | ApiError = _probe_and_decode(*item)
    except ApiError as e:
        image = e
    return image, 1000 * (time.perf_counter() - t0)


def _predict_jobs(predictor: Predictor, items: list[tuple[bytes, int]]) -> list[dict | ApiError]:
    """The CPU-bound part of a batch of requests (``(upload, max_pixels)`` each), run in a worker thread: the
    uploads decoded side by side (an upload that fails answers its own request with the error), then the faces
    of all the photos found and predicted together."""
    from agegender.preprocess import parallel_map

    decoded = parallel_map(_decode_timed, items, predictor.workers)
    images = [image for image, _ in decoded if not isinstance(image, ApiError)]
    t0 = time.perf_counter()
    found = iter(predictor.predict_faces(images))
    detect_ms = 1000 * (time.perf_counter() - t0)
    results: list[dict | ApiError] = []
    for image, decode_ms in decoded:
        if isinstance(image, ApiError):
            results.append(image)
            continue
        results.append({"faces": [face.to_dict() for face in next(found)], "width": image.width,
                        "height": image.height, "timing_ms": {"decode": decode_ms, "detect_predict": detect_ms}})
    return results


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


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def _api_error(_request: Request, e: ApiError) -> JSONResponse:
    log.info("%d %s: %s", e.status, e.code, e.detail)
    return _error(e.status, e.code, e.detail, e.headers)


async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
    codes = {404: ("not_found", f"There is nothing at {request.url.path}."),
             405: ("method_not_allowed", f"{request.method} is not allowed on {request.url.path}.")}
    code, detail = codes.get(e.status_code, (f"http_{e.status_code}", str(e.detail)))
    return _error(e.status_code, code, detail, getattr(e, "headers", None))


async def _validation_error(_request: Request, e: RequestValidationError) -> JSONResponse:
    return _error(422, "validation_error", f"The request is invalid: {e.errors()}")


async def _internal_error(_request: Request, e: Exception) -> JSONResponse:
    log.exception("internal error")
    return _error(500, "internal_error", f"The server failed: {type(e).__name__}.")


def install_error_handlers(app: FastAPI) -> None:
    """Every error answers ``{"error": code, "detail": sentence}``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)


router = APIRouter()


@router.post("/v1/predict", summary="Faces with age and gender", openapi_extra={"requestBody": PREDICT_BODY})
async def predict(request: Request) -> dict:
    """A photo as multipart field `file`, or as the raw body (Content-Type image/* or
    application/octet-stream)."""
    start = time.perf_counter()
    state = request.app.state
    limits = state.limits
    media = media_type(request.headers.get("content-type", "application/octet-stream"))  # 415 before reading
    try:
        async with asyncio.timeout(limits["timeout_s"]):
            data = await read_image_upload(request, media, limits["max_upload_bytes"])
            try:
                future = state.jobs.submit_batched(state.predict, (data, limits["max_pixels"]))
            except QueueFull:
                raise ApiError(503, "busy", "The server is busy; retry shortly.",
                               {"Retry-After": str(RETRY_AFTER_S)}) from None
            result = await asyncio.wrap_future(future)  # a timeout cancels the job if it has not started
    except TimeoutError:
        raise ApiError(504, "timeout", f"The request took longer than {limits['timeout_s']:g} s.") from None
    result["timing_ms"]["total"] = 1000 * (time.perf_counter() - start)
    result["timing_ms"] = {k: round(v, 1) for k, v in result["timing_ms"].items()}
    return {"model": state.model_id, **result}


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/v1/model", summary="Model card")
async def model(request: Request) -> dict:
    state = request.app.state
    return {**model_card(state.predictor, state.model_id), "limits": state.limits}


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


def create_app(predictor: Predictor, max_upload_bytes: int = 10 * 1024 * 1024, max_pixels: int = MAX_PIXELS,
               timeout_s: float = 30.0, max_queue: int = 8, workers: int = 1, model_name: str | None = None,
               max_batch: int = 8, batch_window_s: float = 0.005) -> FastAPI:
    """The web app around a loaded ``predictor``; ``model_name`` (e.g. the checkpoint's file name) goes into the
    model id reported with every answer. ``app.state.jobs`` is the :class:`JobQueue` that runs the predictions,
    up to ``max_batch`` requests together (see there for ``batch_window_s``)."""
    cfg = predictor.model.config
    predictor.detector  # noqa: B018 - load the face detector now, once, not in the first request
    jobs = JobQueue(workers, max_queue, max_batch, batch_window_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        jobs.shutdown()

    app = FastAPI(title="agegender", version="1", lifespan=lifespan,
                  description="Age and gender of the faces in a photo. Errors are "
                  '`{"error": code, "detail": sentence}`.')
    app.state.predictor, app.state.jobs = predictor, jobs
    app.state.predict = partial(_predict_jobs, predictor)  # one object, so that its requests batch together
    app.state.model_id = f"{cfg.backbone}-{cfg.image_size}px" + (f":{model_name}" if model_name else "")
    app.state.limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "timeout_s": timeout_s,
                        "workers": workers, "max_queue": max_queue, "max_batch": max_batch}
    install_error_handlers(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
