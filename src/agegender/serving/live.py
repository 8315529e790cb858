"""``/v1/track``: live video over a WebSocket. Each binary message is a frame; its faces are linked to the
connection's tracks and answered with each person's running estimate."""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Iterator

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from agegender.inference.results import TrackedFrame
from agegender.serving.jobs import QueueFull
from agegender.serving.responses import ApiError
from agegender.serving.uploads import decode_upload

log = logging.getLogger(__name__)

router = APIRouter()

# A live track unmatched for this many received frames ends (the page sends about three a second).
LIVE_MAX_MISSED_FRAMES = 5


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
async def live_track(websocket: WebSocket) -> None:
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
        from agegender.video.tracking import FaceTracks, track

        tracker = FaceTracks(state.predictor.interval_scale, max_missed_frames=LIVE_MAX_MISSED_FRAMES)
    except ImportError as e:
        await websocket.close(code=1011, reason=str(e)[:120])
        return
    # The connection's frames go through one Predictor.track generator: each job queues a frame, then advances it.
    steps = track(state.predictor, iter(frames.get, None), tracks=tracker)
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
