"""HTTP service: ``POST /v1/predict`` finds faces in a photo and returns age and gender, ``GET /`` is a web page.

The model is loaded once by the caller (:func:`create_app` takes a ready :class:`Predictor`). Uploads stay in
memory: the body is read with a byte limit and multipart is parsed on those bytes, so nothing is spooled to disk.
Decoding and prediction run off the event loop in worker threads behind a bounded queue (:class:`JobQueue`),
one request per worker by default; with ``max_batch`` > 1 a worker takes the requests waiting together, decodes
and searches their photos side by side and sends all their faces through the network in one call.

Status codes of ``POST /v1/predict`` (every error body is ``{"error": code, "detail": sentence}``):
200 ok (``faces`` may be empty; at most ``max_faces``, the largest, with ``faces_found`` counting all);
400 malformed request (bad multipart, no ``file`` field, empty body) or a Host not in ``allowed_hosts``;
403 a browser's request from a page of another site (its Origin);
413 upload larger than ``max_upload_bytes``; 415 not an image of an accepted format
(:data:`agegender.io.images.ACCEPTED_FORMATS`), or a request content type other than multipart/form-data, image/*
or application/octet-stream; 422 an image over ``max_pixels`` (a decompression bomb) or a corrupt image of an
accepted format; 503 queue full (with ``Retry-After``); 504 not done in ``timeout_s`` (the job then stops at its
next step). Every upload goes through :func:`agegender.io.images.open_image`, the project's one decoding gate.

This package is the web layer only: ``agegender serve`` (:mod:`agegender.cli.commands`) loads the model and runs
the app with the server of :mod:`agegender.serving.http`. The job queue is :mod:`agegender.serving.jobs`, uploads
are read by :mod:`agegender.serving.uploads`, the live socket is :mod:`agegender.serving.live`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import as_completed
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from agegender._lazy import importable
from agegender.compute.pools import default_threads, parallel_map, thread_pool
from agegender.errors import ModelOutputError
from agegender.inference.predictor import DEFAULT_MAX_FACES, Predictor
from agegender.io.images import MAX_PIXELS
from agegender.io.outputs import json_text
from agegender.serving.jobs import JobQueue, QueueFull
from agegender.serving.live import LIVE_PATH, LiveLimits, live_endpoint
from agegender.serving.responses import ApiError, JobCancelled, install_error_handlers, refuse
from agegender.serving.uploads import PREDICT_BODY, decode_upload, media_type, read_image_upload

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
RETRY_AFTER_S = 1
LIVE_HINT = "Live tracking needs the video extra on the server: pip install 'agegender[video]'"


class PlainJSONResponse(JSONResponse):
    """JSON whose numbers are written as the CSV writes them (``0.00006``, not ``6e-05``): the same figures from
    the service as from ``agegender predict``."""

    def render(self, content: Any) -> bytes:
        return json_text(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _swagger_ui_dir() -> Path | None:
    """Swagger UI's script and style, vendored by the fastapi-swagger package (None where it is not installed)."""
    try:
        from importlib.resources import files

        import fastapi_swagger.resources
    except ImportError:
        return None
    return Path(str(files(fastapi_swagger.resources)))


def live_tracking() -> dict:
    """Whether ``/v1/track`` can follow faces here (it needs norfair, of the video extra), and what to install."""
    available = importable("norfair")
    return {"available": available, "detail": None if available else LIVE_HINT}


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


def _predict_jobs(predictor: Predictor, max_faces: int | None, items: list[tuple[bytes, int, threading.Event]]
                  ) -> Iterator[tuple[int, dict | BaseException]]:
    """The CPU-bound part of a batch of requests (``(upload, max_pixels, cancelled)`` each), run in a worker
    thread: the uploads decoded side by side (an upload that fails answers its own request with the error), then
    each photo's faces found and predicted on its own, smallest photo first, at most ``max_faces`` per photo.
    Yields ``(item, answer)`` as each is ready, so a crowd photo never holds its batch's small photos back (with
    one call for the batch, three small photos beside a crowd waited for it and timed out). A photo's work stops
    at its next step once its own request is answered (``cancelled``: timed out)."""
    decoded = parallel_map(_decode_timed, items, predictor.workers)
    photos = []
    for i, (image, _) in enumerate(decoded):
        if isinstance(image, Image.Image):
            photos.append(i)
        else:
            yield i, image
    photos.sort(key=lambda i: decoded[i][0].width * decoded[i][0].height)

    def answer(i: int) -> dict:
        (image, decode_ms), cancelled = decoded[i], items[i][2]

        def check() -> None:
            if cancelled.is_set():
                raise JobCancelled

        t0 = time.perf_counter()
        try:
            photo = predictor.predict_photos([image], max_faces=max_faces, check=check)[0]
        except JobCancelled:
            log.info("stopped the work of 1 timed-out request after %.1f s", time.perf_counter() - t0)
            raise
        except ModelOutputError as e:
            raise ApiError(500, "model_output", f"The model gave no usable estimate for this photo: {e}.") from None
        return {"faces": [face.to_dict() for face in photo.faces], "faces_found": photo.found,
                "faces_dropped": photo.dropped, "width": image.width, "height": image.height,
                "timing_ms": {"decode": decode_ms, "detect_predict": 1000 * (time.perf_counter() - t0)}}

    if len(photos) == 1 or predictor.workers <= 1:
        for i in photos:
            yield i, _outcome(answer, i)
        return
    pool = thread_pool(predictor.workers)
    work = {pool.submit(_outcome, answer, i): i for i in photos}
    for done in as_completed(work):
        yield work[done], done.result()


def _outcome(fn: Callable[[int], dict], i: int) -> dict | BaseException:
    """``fn(i)``, or the exception it raised: each answers its own request."""
    try:
        return fn(i)
    except Exception as e:  # noqa: BLE001 - handed to the waiting request, as the queue does
        return e


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


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict:
    return {"status": "ok"}


# HEAD for probes that send it: one route per method, so that the OpenAPI description has one operation id each.
@router.head("/healthz", include_in_schema=False)
async def healthz_head() -> dict:
    return {"status": "ok"}


@router.get("/v1/model", summary="Model card")
async def model(request: Request) -> dict:
    """The model's card, the service's limits, and whether live tracking (``/v1/track``) is available."""
    state = request.app.state
    return {**model_card(state.predictor, state.model_id), "limits": state.limits, "live": state.live}


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    return FileResponse(STATIC_DIR / "favicon.ico", media_type="image/x-icon")


async def swagger_ui(request: Request) -> HTMLResponse:
    """The API's documentation page: Swagger UI from this service's own files, nothing from elsewhere."""
    return get_swagger_ui_html(openapi_url=request.app.openapi_url, title="agegender API",
                               swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                               swagger_css_url="/docs-assets/swagger-ui.css", swagger_favicon_url="/favicon.ico",
                               # No badge from the online validator (it would send the API description away).
                               swagger_ui_parameters={"validatorUrl": None})


class Service(FastAPI):
    """The service's app: FastAPI, but the live socket's handshakes (``/v1/track``) go straight to its handler,
    behind the same Host and Origin checks (``live_socket``), not through FastAPI's middleware and router.

    Why: each of those ~15 layers keeps a coroutine alive for as long as its socket is open; an idle socket held
    some 160 objects, now 85, and 2,000 open faster (1.8-1.9 s, now 1.2-1.6 s on 2 cores). Objects that live long
    make the garbage collector's full passes long (:mod:`agegender.serving.heap`).
    WebSocket routes have no OpenAPI entry or dependencies to lose; other WebSocket paths take FastAPI's way."""

    live_socket: Callable | None = None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.live_socket is not None and scope["type"] == "websocket" and _route_path(scope) == LIVE_PATH:
            scope["app"] = self  # as Starlette sets it: the handler reads app.state
            await self.live_socket(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _route_path(scope: dict) -> str:
    """The request's path below the app's root path (an ASGI server may include it in ``path``).

    >>> _route_path({"path": "/api/v1/track", "root_path": "/api"}), _route_path({"path": "/v1/track"})
    ('/v1/track', '/v1/track')
    """
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


class AllowedHosts:
    """ASGI middleware refusing, on every HTTP request and WebSocket handshake, a Host header that names none of
    ``hosts`` (None: any), and an Origin header of another site (400 ``bad_host``, 403 ``bad_origin``).

    Host: with DNS rebinding, a page of another site could otherwise read this service's answers through a browser.
    Origin: a browser sends it with every WebSocket handshake and every POST from a page; a WebSocket has no
    same-origin protection of its own, so a page of any site could drive ``/v1/track`` through a visitor's
    browser. An Origin is accepted when it is the request's own host and port (the service's page) or names one
    of ``hosts``; a request without one (curl, scripts) is not a browser's and is left to the Host check.
    """

    def __init__(self, app: Callable, hosts: list[str] | None) -> None:
        self.app, self.hosts = app, None if hosts is None else {h.lower() for h in hosts}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket"):
            if self.hosts is not None and host_name(scope) not in self.hosts:
                await refuse(scope, receive, send, 400, "bad_host", "The Host header names a host this service does "
                             "not answer for (see agegender serve --allowed-hosts).")
                return
            if not origin_allowed(scope, self.hosts):
                await refuse(scope, receive, send, 403, "bad_origin", "The request comes from a page of another "
                             "site (its Origin header), which this service does not answer.")
                return
        await self.app(scope, receive, send)


def _header(scope: dict, name: bytes) -> str | None:
    value = next((v for k, v in scope["headers"] if k == name), None)
    return None if value is None else value.decode("latin-1").strip()


def host_name(scope: dict) -> str:
    """The host of a request's Host header, without the port, lower case ("" when there is none).

    >>> host_name({"headers": [(b"host", b"[::1]:8000")]}), host_name({"headers": [(b"host", b"LocalHost:80")]})
    ('::1', 'localhost')
    """
    return _host_port(_header(scope, b"host") or "")[0]


def _host_port(value: str) -> tuple[str, int | None]:
    """``host[:port]`` (an IPv6 host in brackets) -> (host lower case, port or None)."""
    value = value.lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, ""
    return host, int(port) if port.isdigit() else None


def origin_allowed(scope: dict, hosts: set[str] | None) -> bool:
    """Whether a request's Origin (absent: yes) is the request's own scheme-default-aware host and port, or a host
    of ``hosts``.

    >>> same = {"headers": [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000")]}
    >>> other = {"headers": [(b"host", b"127.0.0.1:8000"), (b"origin", b"https://evil.example")]}
    >>> origin_allowed(same, None), origin_allowed(other, None), origin_allowed(other, {"evil.example"})
    (True, False, True)
    """
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False  # "null" (a sandboxed page, a file) or something else that is no site of ours
    default = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port or default
    except ValueError:
        return False
    host, host_port = _host_port(_header(scope, b"host") or "")
    if (parts.hostname.lower(), port) == (host, host_port or default):
        return True
    return hosts is not None and parts.hostname.lower() in hosts


def create_app(predictor: Predictor, max_upload_bytes: int = 10 * 1024 * 1024, max_pixels: int = MAX_PIXELS,
               timeout_s: float = 30.0, max_queue: int = 8, workers: int = 0, model_name: str | None = None,
               max_faces: int | None = DEFAULT_MAX_FACES, allowed_hosts: list[str] | None = None, docs: bool = True,
               max_batch: int = 1, batch_window_s: float = 0.005, max_live: int = 32,
               live_idle_s: float = 30.0) -> FastAPI:
    """The web app around a loaded ``predictor``; ``model_name`` (e.g. the checkpoint's file name) goes into the
    model id reported with every answer. ``app.state.jobs`` is the :class:`JobQueue` that runs the predictions,
    up to ``max_batch`` requests together (see there for ``batch_window_s``) on each of ``workers`` threads (0: one
    per core, at most 4).

    ``max_faces``: faces predicted per photo or live frame at most (the largest; None: all). ``allowed_hosts``:
    Host names answered (None: any); a browser's request from a page of another site is refused whatever they are
    (:class:`AllowedHosts`). ``max_live``: live sockets (``/v1/track``) open at once, each closed after
    ``live_idle_s`` without a frame (:mod:`agegender.serving.live`). ``docs``: serve /docs, Swagger UI from files
    vendored by the fastapi-swagger package (nothing is loaded from elsewhere); /openapi.json is always there."""
    cfg = predictor.model.config
    predictor.detector  # noqa: B018 - load the face detector now, once, not in the first request
    workers = workers or default_threads()
    jobs = JobQueue(workers, max_queue, max_batch, batch_window_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        jobs.shutdown()

    app = Service(title="agegender", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  default_response_class=PlainJSONResponse,
                  description="Age and gender of the faces in a photo. Errors are "
                  '`{"error": code, "detail": sentence}`.')
    app.state.predictor, app.state.jobs, app.state.live = predictor, jobs, live_tracking()
    app.state.predict = partial(_predict_jobs, predictor, max_faces)  # one object, so that its requests batch together
    app.state.model_id = f"{cfg.backbone}-{cfg.image_size}px" + (f":{model_name}" if model_name else "")
    app.state.limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "timeout_s": timeout_s,
                        "workers": workers, "max_queue": max_queue, "max_faces": max_faces, "max_batch": max_batch,
                        "max_live": max_live, "live_idle_s": live_idle_s}
    app.state.live_limits = LiveLimits(max_live, live_idle_s, frames_at_once=max(1, workers - 1))
    install_error_handlers(app)
    app.add_middleware(AllowedHosts, hosts=allowed_hosts)
    app.live_socket = AllowedHosts(live_endpoint, hosts=allowed_hosts)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    swagger = _swagger_ui_dir() if docs else None
    if swagger is not None:
        app.add_api_route("/docs", swagger_ui, include_in_schema=False)
        app.mount("/docs-assets", StaticFiles(directory=swagger), name="docs-assets")
    elif docs:
        log.warning("/docs is off: the fastapi-swagger package (Swagger UI's files) is not installed")
    return app
