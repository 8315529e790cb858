"""``/v1/track``: live video over a WebSocket. Each binary message is a frame; its faces are linked to the
connection's tracks and answered with each person's running estimate.

What one client can cost is bounded as for ``/v1/predict``: at most ``max_faces`` faces per frame, and a frame
that takes longer than the timeout stops at the detector's next step (the connection then ends). On top of that,
because a socket lives long: at most ``max_connections`` live sockets at once (more are refused with 503 before the
handshake completes: a thousand silent sockets used every file descriptor and locked everyone out), each closed
after ``idle_s`` without a frame, and live frames in the workers at once are one fewer than the workers, so a live
client never holds every worker that ``/v1/predict`` needs.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from starlette.websockets import WebSocket, WebSocketDisconnect

from agegender.errors import ModelOutputError
from agegender.inference.results import TrackedFrame
from agegender.serving.jobs import QueueFull
from agegender.serving.responses import ApiError, JobCancelled, refuse
from agegender.serving.uploads import decode_upload

log = logging.getLogger(__name__)

LIVE_PATH = "/v1/track"

# A live track unmatched for this many received frames ends (the page sends about three a second).
LIVE_MAX_MISSED_FRAMES = 5
RETRY_AFTER_S = 5
REFUSALS_LOGGED_EVERY_S = 10.0  # a client reconnecting in a loop gets one log line per this many seconds


@dataclass
class LiveLimits:
    """The bounds of the live socket (see the module docstring); ``connections`` counts the open ones."""

    max_connections: int = 32
    idle_s: float = 30.0
    frames_at_once: int = 1
    connections: int = 0
    refused: int = 0
    _slots: threading.Semaphore = field(init=False, repr=False)
    _last_refusal_log: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if self.max_connections < 0 or not self.idle_s > 0 or self.frames_at_once < 1:
            raise ValueError(f"need max_connections >= 0, idle_s > 0 and frames_at_once >= 1, got "
                             f"{self.max_connections}, {self.idle_s} and {self.frames_at_once}")
        self._slots = threading.Semaphore(self.frames_at_once)

    def take_slot(self) -> bool:
        return self._slots.acquire(blocking=False)

    def free_slot(self, *_args: object) -> None:
        self._slots.release()

    def log_refusal(self) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSALS_LOGGED_EVERY_S:
            self._last_refusal_log = now
            log.warning("live connections at the limit of %d: %d refused so far", self.max_connections, self.refused)


def _tracked(predictor, frames: queue.SimpleQueue, max_faces: int | None,
             check: Callable[[], None]) -> Iterator[TrackedFrame]:
    """The connection's ``track()`` over the frames put in ``frames``. Its tracker is made at the first frame, in a
    worker thread: the first one imports norfair and SciPy (seconds on a busy machine), which on the event loop held
    every other connection, /healthz included, for as long; and an idle connection never needs one."""
    from agegender.video.tracking import FaceTracks, track

    tracker = FaceTracks(predictor.interval_scale, max_missed_frames=LIVE_MAX_MISSED_FRAMES)
    yield from track(predictor, iter(frames.get, None), tracks=tracker, max_faces=max_faces, check=check)


def _track_job(steps: Iterator[TrackedFrame], frames: queue.SimpleQueue, data: bytes, max_pixels: int) -> dict:
    """One live frame, run in a worker thread: decode, then advance the connection's ``track`` generator."""
    t0 = time.perf_counter()
    image = decode_upload(data, max_pixels)
    t1 = time.perf_counter()
    frames.put(image)
    step = next(steps)  # track() takes the frame just queued and links its faces to the tracks so far
    t2 = time.perf_counter()
    return {"frame": step.index, "faces": [face.to_dict() for face in step.faces], "faces_found": step.found,
            "faces_dropped": step.dropped, "tracks": len(step.tracks), "width": image.width, "height": image.height,
            "timing_ms": {"decode": round(1000 * (t1 - t0), 1), "detect_predict_track": round(1000 * (t2 - t1), 1)}}


async def _send_error(websocket: WebSocket, code: str, detail: str) -> None:
    log.info("live %s: %s", code, detail)
    await websocket.send_json({"error": code, "detail": detail})


async def live_endpoint(scope: dict, receive: Callable, send: Callable) -> None:
    """:func:`live_track` as a plain ASGI app, for :class:`agegender.serving.app.Service` to call directly."""
    await live_track(WebSocket(scope, receive, send))


async def live_track(websocket: WebSocket) -> None:
    """Live video: send each frame as a binary message (JPEG, PNG, ... bytes) and wait for its answer, a JSON text
    message ``{frame, faces: [{track, box, landmarks, det_score, age, ..., track_estimate: {track, first_frame,
    last_frame, frames, age, age_low, age_high, age_sigma, gender, p_female}}], faces_found, faces_dropped, tracks,
    width, height, timing_ms}``, or ``{error, detail}`` for a frame that was not used (the connection stays open).
    Tracks live as long as the connection. Frames of one connection are processed one at a time, in order."""
    live: LiveLimits = websocket.app.state.live_limits
    if live.connections >= live.max_connections:
        live.log_refusal()
        await refuse(websocket.scope, websocket.receive, websocket.send, 503, "busy", f"The server takes "
                     f"{live.max_connections} live connections at once; retry shortly.",
                     {"Retry-After": str(RETRY_AFTER_S)})
        return
    live.connections += 1
    try:
        await _live(websocket, live)
    except WebSocketDisconnect:
        pass
    finally:
        live.connections -= 1


async def _live(websocket: WebSocket, live: LiveLimits) -> None:
    state = websocket.app.state
    limits = state.limits
    await websocket.accept()
    if not state.live["available"]:  # found once, when the app was made: a find_spec per connection walks sys.path
        await websocket.close(code=1011, reason=state.live["detail"])
        return
    cancelled = threading.Event()  # set when the connection ends: a frame still in the works stops at its next step

    def check() -> None:
        if cancelled.is_set():
            raise JobCancelled

    # The connection's frames go through one track() generator: each job queues a frame, then advances it.
    frames: queue.SimpleQueue = queue.SimpleQueue()
    steps = _tracked(state.predictor, frames, limits["max_faces"], check)
    try:
        while await _next_frame(websocket, live, steps, frames, limits):
            pass
    finally:
        cancelled.set()


async def _next_frame(websocket: WebSocket, live: LiveLimits, steps: Iterator[TrackedFrame],
                      frames: queue.SimpleQueue, limits: dict) -> bool:
    """Receive one message and answer it; False when the connection has ended."""
    try:
        async with asyncio.timeout(live.idle_s):
            message = await websocket.receive()
    except TimeoutError:
        log.info("closed a live connection idle for %g s", live.idle_s)
        await websocket.close(code=1000, reason=f"no frame for {live.idle_s:g} s")
        return False
    if message["type"] == "websocket.disconnect":
        return False
    data = message.get("bytes")
    if data is None:
        await _send_error(websocket, "bad_message", "Send each frame as a binary message of image bytes.")
        return True
    if len(data) > limits["max_upload_bytes"]:
        await _send_error(websocket, "upload_too_large",
                          f"The frame exceeds the limit of {limits['max_upload_bytes']:,} bytes.")
        return True
    if not live.take_slot():  # the other workers stay free for /v1/predict
        await _send_error(websocket, "busy", "The server is busy with other live frames; this frame was skipped.")
        return True
    try:
        future = websocket.app.state.jobs.submit(_track_job, steps, frames, data, limits["max_pixels"])
    except QueueFull:
        live.free_slot()
        await _send_error(websocket, "busy", "The server is busy; this frame was skipped.")
        return True
    future.add_done_callback(live.free_slot)  # when the work ends, not when the answer is given up on
    try:
        async with asyncio.timeout(limits["timeout_s"]):
            await websocket.send_json(await asyncio.wrap_future(future))
    except ApiError as e:
        await _send_error(websocket, e.code, e.detail)
    except ModelOutputError as e:  # the connection's tracks cannot go on without this frame's faces
        await _send_error(websocket, "model_output", f"The model gave no usable estimate for this frame: {e}.")
        await websocket.close(code=1011, reason="the model gave no usable estimate")
        return False
    except TimeoutError:
        # The job stops at its next step (check()), but the connection's tracks were mid-update: end it.
        await websocket.close(code=1011, reason=f"a frame took longer than {limits['timeout_s']:g} s")
        return False
    return True
