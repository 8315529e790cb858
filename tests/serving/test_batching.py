"""The service's queue batches the requests waiting together: one call for their photos, each request its own
answer, an error answering only its own request, cancelled requests left out."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extras (fastapi, python-multipart) are not installed")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from agegender.inference.predictor import Predictor  # noqa: E402
from agegender.serving.app import create_app
from agegender.serving.jobs import JobQueue

ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


class Recorder:
    """A batch function that records each batch it gets; item 3 fails."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, items: list[int]) -> list:
        self.batches.append(list(items))
        return [ValueError(f"item {i} is bad") if i == 3 else 10 * i for i in items]


@pytest.mark.parametrize(("max_batch", "sizes"), [(8, [5]), (2, [2, 2, 1])])
def test_waiting_jobs_run_together_and_each_gets_its_own_result(max_batch: int, sizes: list[int]) -> None:
    jobs = JobQueue(workers=1, max_queue=8, max_batch=max_batch, window_s=0.0)
    gate, record = threading.Event(), Recorder()
    try:
        blocker = jobs.submit(gate.wait, 30)
        futures = [jobs.submit_batched(record, i) for i in range(5)]
        assert jobs.in_flight == 6 and record.batches == []
        gate.set()
        assert blocker.result(timeout=10) is True
        for i, f in enumerate(futures):
            if i == 3:
                with pytest.raises(ValueError, match="item 3 is bad"):
                    f.result(timeout=10)
            else:
                assert f.result(timeout=10) == 10 * i
        assert [len(b) for b in record.batches] == sizes and sum(record.batches, []) == list(range(5))
        wait_until(lambda: jobs.in_flight == 0)
    finally:
        gate.set()
        jobs.shutdown()


def test_cancelled_jobs_are_left_out_and_free_their_slot() -> None:
    jobs, gate, record = JobQueue(workers=1, max_queue=4, window_s=0.0), threading.Event(), Recorder()
    try:
        jobs.submit(gate.wait, 30)
        first, second = jobs.submit_batched(record, 1), jobs.submit_batched(record, 2)
        assert first.cancel()
        assert jobs.in_flight == 2  # the blocker and the second job
        gate.set()
        assert second.result(timeout=10) == 20
        assert record.batches == [[2]]
        wait_until(lambda: jobs.in_flight == 0)
    finally:
        gate.set()
        jobs.shutdown()


def test_a_job_arriving_within_the_window_joins_the_batch() -> None:
    jobs, record = JobQueue(workers=1, max_queue=4, window_s=1.0), Recorder()
    try:
        futures = [jobs.submit_batched(record, 1), jobs.submit_batched(record, 2)]
        assert [f.result(timeout=10) for f in futures] == [10, 20]
        assert record.batches == [[1, 2]]
    finally:
        jobs.shutdown()


def test_concurrent_requests_batch_and_each_gets_its_photos_faces(trained_run: Path) -> None:
    """Several photos in one batch: the astronaut, her mirror image, a blank photo and bytes that are no image;
    each answer is the one the library gives for that photo alone."""
    predictor = Predictor.from_checkpoint(trained_run / "best.pt")
    astronaut = Image.open(ASTRONAUT).convert("RGB")
    photos = {"astronaut": astronaut, "mirrored": astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
              "blank": Image.new("RGB", (320, 240), (128, 128, 128))}
    bodies = {}
    for name, img in photos.items():
        buf = io.BytesIO()
        img.save(buf, "PNG")
        bodies[name] = buf.getvalue()
    bodies["not an image"] = b"this is not an image"
    app = create_app(predictor, workers=1, max_queue=8, max_batch=8)
    seen: list[int] = []
    predict = app.state.predict
    app.state.predict = lambda items: seen.append(len(items)) or predict(items)  # observe the batch sizes
    gate = threading.Event()
    with TestClient(app) as client:
        blocker = app.state.jobs.submit(gate.wait, 30)

        def post(name: str):
            return client.post("/v1/predict", content=bodies[name], headers={"Content-Type": "image/png"})

        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = {name: pool.submit(post, name) for name in bodies}
            wait_until(lambda: app.state.jobs.in_flight == 1 + len(bodies))  # all queued behind the blocker
            gate.set()
            answers = {name: a.result(timeout=60) for name, a in answers.items()}
        blocker.result(timeout=10)
    assert seen == [len(bodies)]
    assert answers["not an image"].status_code == 415
    for name, img in photos.items():
        assert answers[name].status_code == 200, answers[name].text
        want = predictor.predict_faces([img])[0]
        got = answers[name].json()["faces"]
        assert len(got) == len(want) == (0 if name == "blank" else 1)
        assert got == [w.to_dict() for w in want]
