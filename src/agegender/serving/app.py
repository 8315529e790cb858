"""HTTP service: ``POST /v1/predict`` finds faces in a photo and returns age and gender, ``GET /`` is a web page.

The model is loaded once by the caller (:func:`create_app` takes a ready :class:`Predictor`). Uploads stay in
memory: the body is read with a byte limit and multipart is parsed on those bytes, so nothing is spooled to disk.
Decoding and prediction run off the event loop in worker threads behind a bounded queue (:class:`JobQueue`),
one request per worker by default; with ``max_batch`` > 1 a worker takes the requests waiting together, decodes
and searches their photos side by side and sends all their faces through the network in one call.

Status codes of ``POST /v1/predict`` (every error body is ``{"error": code, "detail": sentence}``):
200 ok (``faces`` may be empty; at most ``max_faces``, the largest, with ``faces_found`` counting all);
400 malformed request (bad multipart, no ``file`` field, empty body) or a Host not in ``allowed_hosts``;
413 upload larger than ``max_upload_bytes``; 415 not an image of an accepted format
(:data:`agegender.images.ACCEPTED_FORMATS`), or a request content type other than multipart/form-data, image/*
or application/octet-stream; 422 an image over ``max_pixels`` (a decompression bomb) or a corrupt image of an
accepted format; 503 queue full (with ``Retry-After``); 504 not done in ``timeout_s`` (the job then stops at its
next step). Every upload goes through :func:`agegender.images.open_image`, the project's one decoding gate.

This module is the web layer only (it needs the ``serve`` extras); ``agegender serve`` in :mod:`agegender.cli`
loads the model and runs it with uvicorn.
"""

import asyncio
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from agegender.allocator import release_free_memory
from agegender.images import CORRUPT, EMPTY, MAX_PIXELS, TOO_LARGE, UNSUPPORTED, ImageReadError, open_image
from agegender.predictor import DEFAULT_MAX_FACES, Predictor
from agegender.preprocess import default_workers
from agegender.tracking import TrackedFrame

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
MULTIPART_OVERHEAD = 16 * 1024  # room for boundaries and part headers on top of max_upload_bytes
RETRY_AFTER_S = 1
# A live track unmatched for this many received frames ends (the page sends about three a second).
LIVE_MAX_MISSED_FRAMES = 5


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

    Whenever the queue runs empty, and every ``release_every`` jobs under load (0: never), a worker hands the heap's
    free pages back to the system (:func:`agegender.allocator.release_free_memory`), so the resident memory stays
    near what the work in flight needs.
    """

    def __init__(self, workers: int, max_queue: int, max_batch: int = 8, window_s: float = 0.005,
                 release_every: int = 25) -> None:
        if workers < 1 or max_queue < 0 or max_batch < 1 or window_s < 0 or release_every < 0:
            raise ValueError(f"need workers >= 1, max_queue >= 0, max_batch >= 1, window_s >= 0 and release_every "
                             f">= 0, got {workers}, {max_queue}, {max_batch}, {window_s} and {release_every}")
        self.capacity = workers + max_queue
        self.max_batch, self.window_s = max_batch, window_s
        self.release_every, self.jobs_done, self.releases = release_every, 0, 0
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
            self._count_done(len(batch))

    def _count_done(self, n: int) -> None:
        with self._lock:
            before, self.jobs_done = self.jobs_done, self.jobs_done + n
            due = self.release_every > 0 and (self.in_flight == 0
                                              or before // self.release_every != self.jobs_done // self.release_every)
            self.releases += due
        if due:  # after the answers are handed over, so no request waits for it
            release_free_memory()

    def shutdown(self) -> None:
        """Stop the workers once their jobs end; jobs still waiting are cancelled."""
        with self._lock:
            self._closed = True
            waiting, self._jobs = list(self._jobs), deque()
            self._arrived.notify_all()
        for job in waiting:
            job.future.cancel()


def _finite(value: Any) -> Any:
    """``value`` as plain JSON: NaN and infinities as None (JSON has neither), anything else that is not JSON
    (a checkpoint may hold tensors anywhere) as its text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)[:200]


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
    if isinstance(training.get("split"), dict):
        card["training"]["split"] = {k: v for k, v in training["split"].items() if k in ("fractions", "seed", "counts")}
    if "metrics" in training:
        card["training"]["last_epoch_metrics"] = training["metrics"]
    card["training"] |= {k: v for k, v in training.items() if str(k).startswith("test")}
    return _finite(card)


# How each kind of unusable image is answered (images.ImageReadError.kind).
IMAGE_ERRORS = {EMPTY: (400, "empty_upload"), UNSUPPORTED: (415, "unsupported_image"),
                TOO_LARGE: (422, "too_many_pixels"), CORRUPT: (422, "corrupt_image")}


class JobCancelled(Exception):
    """The request this job works for has been answered already (timeout): its work stops."""


def decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    """The uploaded image through the project's decoding gate; its refusals as 400/415/422 :class:`ApiError`."""
    if not data:
        raise ApiError(400, "empty_upload", "The upload is empty (0 bytes).")
    try:
        return open_image(data, max_pixels=max_pixels)
    except ImageReadError as e:
        status, code = IMAGE_ERRORS.get(e.kind, (422, "corrupt_image"))
        raise ApiError(status, code, f"The upload cannot be used: {str(e).removeprefix('<bytes>: ')}.") from None


def _decode_timed(item: tuple[bytes, int, threading.Event]) -> tuple[Image.Image | BaseException, float]:
    t0 = time.perf_counter()
    data, max_pixels, cancelled = item
    try:
        if cancelled.is_set():
            raise JobCancelled
        image: Image.Image | BaseException = decode_upload(data, max_pixels)
    except (ApiError, JobCancelled) as e:
        image = e
    return image, 1000 * (time.perf_counter() - t0)


def _predict_jobs(predictor: Predictor, max_faces: int | None,
                  items: list[tuple[bytes, int, threading.Event]]) -> list[dict | BaseException]:
    """The CPU-bound part of a batch of requests (``(upload, max_pixels, cancelled)`` each), run in a worker
    thread: the uploads decoded side by side (an upload that fails answers its own request with the error), then
    the faces of all the photos found and predicted together, at most ``max_faces`` per photo. The work stops at
    its next step once every request of the batch is answered (``cancelled``: timed out)."""
    from agegender.preprocess import parallel_map

    def check() -> None:
        if all(cancelled.is_set() for _, _, cancelled in items):
            raise JobCancelled

    t0 = time.perf_counter()
    decoded = parallel_map(_decode_timed, items, predictor.workers)
    images = [image for image, _ in decoded if isinstance(image, Image.Image)]
    t1 = time.perf_counter()
    try:
        photos = iter(predictor.predict_photos(images, max_faces=max_faces, check=check))
    except JobCancelled:
        log.info("stopped the work of %d timed-out request(s) after %.1f s", len(items), time.perf_counter() - t0)
        raise
    detect_ms = 1000 * (time.perf_counter() - t1)
    results: list[dict | BaseException] = []
    for image, decode_ms in decoded:
        if not isinstance(image, Image.Image):
            results.append(image)
            continue
        photo = next(photos)
        results.append({"faces": [face.to_dict() for face in photo.faces], "faces_found": photo.found,
                        "faces_dropped": photo.dropped, "width": image.width, "height": image.height,
                        "timing_ms": {"decode": decode_ms, "detect_predict": detect_ms}})
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
    cancelled = threading.Event()
    try:
        async with asyncio.timeout(limits["timeout_s"]):
            data = await read_image_upload(request, media, limits["max_upload_bytes"])
            try:
                future = state.jobs.submit_batched(state.predict, (data, limits["max_pixels"], cancelled))
            except QueueFull:
                raise ApiError(503, "busy", "The server is busy; retry shortly.",
                               {"Retry-After": str(RETRY_AFTER_S)}) from None
            result = await asyncio.wrap_future(future)  # a timeout cancels the job if it has not started
    except TimeoutError:
        raise ApiError(504, "timeout", f"The request took longer than {limits['timeout_s']:g} s.") from None
    finally:
        cancelled.set()  # a job still running for an answered request stops at its next step, freeing its slot
    result["timing_ms"]["total"] = 1000 * (time.perf_counter() - start)
    result["timing_ms"] = {k: round(v, 1) for k, v in result["timing_ms"].items()}
    return {"model": state.model_id, **result}


def _track_job(steps: Iterator[TrackedFrame], frames: queue.SimpleQueue, data: bytes, max_pixels: int) -> dict:
    """One live frame, run in a worker thread: decode, then advance the connection's ``Predictor.track``."""
    t0 = time.perf_counter()
    image = decode_upload(data, max_pixels)
    t1 = time.perf_counter()
    frames.put(image)
    step = next(steps)  # Predictor.track takes the frame just queued and links its faces to the tracks so far
    t2 = time.perf_counter()
    return {"frame": step.index, "faces": [face.to_dict() for face in step.faces], "tracks": len(step.tracks),
            "width": image.width, "height": image.height,
            "timing_ms": {"decode": round(1000 * (t1 - t0), 1), "detect_predict_track": round(1000 * (t2 - t1), 1)}}


async def _send_error(websocket: WebSocket, code: str, detail: str) -> None:
    log.info("live %s: %s", code, detail)
    await websocket.send_json({"error": code, "detail": detail})


@router.websocket("/v1/track")
async def track(websocket: WebSocket) -> None:
    """Live video: send each frame as a binary message (JPEG, PNG, ... bytes) and wait for its answer, a JSON text
    message ``{frame, faces: [{track, box, landmarks, det_score, age, ..., track_estimate: {track, first_frame,
    last_frame, frames, age, age_low, age_high, age_sigma, gender, p_female}}], tracks, width, height,
    timing_ms}``, or ``{error, detail}`` for a frame that was not used (the connection stays open). Tracks live as
    long as the connection. Frames of one connection are processed one at a time, in order."""
    state = websocket.app.state
    limits = state.limits
    await websocket.accept()
    frames: queue.SimpleQueue = queue.SimpleQueue()
    try:
        from agegender.tracking import FaceTracks

        tracker = FaceTracks(state.predictor.interval_scale, max_missed_frames=LIVE_MAX_MISSED_FRAMES)
    except ImportError as e:
        await websocket.close(code=1011, reason=str(e)[:120])
        return
    # The connection's frames go through one Predictor.track generator: each job queues a frame, then advances it.
    steps = state.predictor.track(iter(frames.get, None), tracks=tracker)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                await _send_error(websocket, "bad_message", "Send each frame as a binary message of image bytes.")
                continue
            if len(data) > limits["max_upload_bytes"]:
                await _send_error(websocket, "upload_too_large",
                                  f"The frame exceeds the limit of {limits['max_upload_bytes']:,} bytes.")
                continue
            try:
                future = state.jobs.submit(_track_job, steps, frames, data, limits["max_pixels"])
            except QueueFull:
                await _send_error(websocket, "busy", "The server is busy; this frame was skipped.")
                continue
            try:
                async with asyncio.timeout(limits["timeout_s"]):
                    await websocket.send_json(await asyncio.wrap_future(future))
            except ApiError as e:
                await _send_error(websocket, e.code, e.detail)
            except TimeoutError:
                # The job may still run and hold this connection's tracks: end the connection rather than race it.
                await websocket.close(code=1011, reason=f"a frame took longer than {limits['timeout_s']:g} s")
                return
    except WebSocketDisconnect:
        pass


@router.api_route("/healthz", methods=["GET", "HEAD"], summary="Liveness")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/v1/model", summary="Model card")
async def model(request: Request) -> dict:
    state = request.app.state
    return {**model_card(state.predictor, state.model_id), "limits": state.limits}


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


class AllowedHosts:
    """ASGI middleware answering 400 to a request whose Host header names none of ``hosts``: with DNS
    rebinding, a page of another site could otherwise read this service's answers through a browser."""

    def __init__(self, app: Callable, hosts: list[str]) -> None:
        self.app, self.hosts = app, {h.lower() for h in hosts}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and host_name(scope) not in self.hosts:
            await _error(400, "bad_host", "The Host header names a host this service does not answer for "
                         "(see agegender serve --allowed-hosts).")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def host_name(scope: dict) -> str:
    """The host of a request's Host header, without the port, lower case ("" when there is none).

    >>> host_name({"headers": [(b"host", b"[::1]:8000")]}), host_name({"headers": [(b"host", b"LocalHost:80")]})
    ('::1', 'localhost')
    """
    value = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1").strip().lower()
    if value.startswith("["):
        return value[1:].split("]")[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def create_app(predictor: Predictor, max_upload_bytes: int = 10 * 1024 * 1024, max_pixels: int = MAX_PIXELS,
               timeout_s: float = 30.0, max_queue: int = 8, workers: int = 0, model_name: str | None = None,
               max_faces: int | None = DEFAULT_MAX_FACES, allowed_hosts: list[str] | None = None, docs: bool = False,
               max_batch: int = 1, batch_window_s: float = 0.005) -> FastAPI:
    """The web app around a loaded ``predictor``; ``model_name`` (e.g. the checkpoint's file name) goes into the
    model id reported with every answer. ``app.state.jobs`` is the :class:`JobQueue` that runs the predictions,
    up to ``max_batch`` requests together (see there for ``batch_window_s``) on each of ``workers`` threads (0: one
    per core, at most 4).

    ``max_faces``: faces predicted per photo at most (the largest; None: all). ``allowed_hosts``: Host names
    answered (None: any). ``docs``: serve /docs and /redoc, whose pages load scripts from a CDN (off by
    default: the service itself loads nothing from elsewhere); /openapi.json is always there."""
    cfg = predictor.model.config
    predictor.detector  # noqa: B018 - load the face detector now, once, not in the first request
    workers = workers or default_workers()
    jobs = JobQueue(workers, max_queue, max_batch, batch_window_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        jobs.shutdown()

    app = FastAPI(title="agegender", version="1", lifespan=lifespan, docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None,
                  description="Age and gender of the faces in a photo. Errors are "
                  '`{"error": code, "detail": sentence}`.')
    app.state.predictor, app.state.jobs = predictor, jobs
    app.state.predict = partial(_predict_jobs, predictor, max_faces)  # one object, so that its requests batch together
    app.state.model_id = f"{cfg.backbone}-{cfg.image_size}px" + (f":{model_name}" if model_name else "")
    app.state.limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "timeout_s": timeout_s,
                        "workers": workers, "max_queue": max_queue, "max_faces": max_faces, "max_batch": max_batch}
    install_error_handlers(app)
    if allowed_hosts is not None:
        app.add_middleware(AllowedHosts, hosts=allowed_hosts)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
