"""Batch prediction on Ray Data: millions of photos over a cluster, into a resumable Parquet dataset.

The driver lists the inputs, skips those the dataset already holds, and cuts the rest into blocks; Ray Data
streams the blocks through a pool of actors, each holding one :class:`~agegender.inference.predictor.Predictor`
(onnxruntime on one thread, so one actor uses one CPU) and running the same pipeline as ``agegender predict``
(:func:`agegender.inference.batch.predict_items`), then writing its block's rows as one part file
(:mod:`agegender.cluster.dataset`). Ray retries the task of an actor or node that dies, and a retried block
rewrites the same part, so the output is complete and holds each input once.

Why parts are written by the actors and not by ``Dataset.write_parquet``: a part's name must follow from its
inputs, so that a retried or resumed block replaces its part instead of adding a second one.

Ray is imported only in this module (an import-linter contract); the base install has no Ray.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from agegender.cluster.dataset import Dest, part_name, stored_name
from agegender.cluster.storage import Storage, is_s3, list_inputs, location, read_input, storage_error
from agegender.errors import StorageError
from agegender.inference.batch import BatchResult, RunSummary, problem_row
from agegender.inference.predictor import BATCH_SIZE, DEFAULT_MAX_FACES

log = logging.getLogger(__name__)

BLOCK_SIZE = 256  # inputs per part file: minutes of one CPU's work, the most a dead worker costs
READ_THREADS = 8  # objects fetched side by side by each actor: storage latency, not CPU, bounds a fetch


@dataclass(frozen=True)
class Job:
    """One run: ``sources`` (folders, files, ``.txt`` lists, ``s3://`` prefixes) into the dataset ``dest``, with
    the options of ``agegender predict`` that change rows, and how to run: ``workers`` actors (0: one per CPU of
    the cluster, the pool growing from one as work queues), ``block_size`` inputs per part, ``address`` of a Ray
    cluster (None: ``RAY_ADDRESS``, else a local Ray started for the job)."""

    sources: Sequence[str]
    dest: str
    storage: Storage = field(default_factory=Storage)
    model: str | None = None
    aligned: bool = False
    tta: bool | None = None
    min_face: int = 20
    det_threshold: float = 0.7
    max_faces: int | None = DEFAULT_MAX_FACES
    batch_size: int = BATCH_SIZE
    block_size: int = BLOCK_SIZE
    workers: int = 0
    address: str | None = None
    progress: bool = True


@dataclass
class JobSummary:
    """What a run found and did: inputs named, already in the dataset, done now; face rows, photos without a
    face, and the inputs with a problem (error or faces_dropped rows) with why."""

    inputs: int
    skipped: int = 0
    done: int = 0
    faces: int = 0
    no_face: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    def add(self, part: dict) -> None:
        self.done += int(part["inputs"])
        self.faces += int(part["faces"])
        self.no_face += int(part["no_face"])
        self.problems += [tuple(p) for p in json.loads(part["problems"])]


def model_identity(model: str | None) -> str:
    """What the settings file records of the model: its file name and content hash (a renamed copy is the same
    model, a retrained one is not)."""
    import hashlib

    from agegender.model.checkpoint import BUNDLED_ONNX

    path = Path(model) if model else BUNDLED_ONNX
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"{'bundled ' if model is None else ''}{path.name} sha256:{digest}"


def _settings(job: Job, model_id: str) -> dict:
    """The options that change rows; a dataset's rows are all made with one set."""
    detection = {} if job.aligned else {"min_face": job.min_face, "det_threshold": job.det_threshold,
                                        "max_faces": job.max_faces}
    return {"model": model_id, "aligned": job.aligned, "tta": job.tta, **detection}


def _check_model(model: str | None) -> bytes | None:
    """The model file's bytes to send to every actor (None: the bundled model, installed on every node)."""
    from agegender.errors import CheckpointError

    if model is None or model == "bundled":
        return None
    path = Path(model)
    if path.suffix.lower() != ".onnx":
        raise CheckpointError(f"--engine ray runs exported models: agegender export --model {model} --out "
                              f"{path.with_suffix('.onnx').name}, then pass the .onnx file")
    if not path.is_file():
        raise CheckpointError(f"{model}: no such model file")
    return path.read_bytes()


class _PartWorker:
    """A Ray Data actor: loads the model once, then turns each block (a row ``{part, inputs}``) into a written
    part and a small summary row."""

    def __init__(self, job: Job, model_bytes: bytes | None) -> None:
        from agegender.faces.detect import FaceDetector
        from agegender.inference.predictor import Predictor
        from agegender.model.checkpoint import BUNDLED_ONNX

        path = BUNDLED_ONNX
        if model_bytes is not None:
            fd, tmp = tempfile.mkstemp(suffix=".onnx")  # onnxruntime and the metadata reader want a file
            with os.fdopen(fd, "wb") as f:
                f.write(model_bytes)
            path = Path(tmp)
        detector = None if job.aligned else FaceDetector(min_face_size=job.min_face,
                                                         thresholds=(0.6, 0.7, job.det_threshold))
        # One thread: Ray gives each actor one CPU, and the pool, not threads, spreads the work.
        self.predictor = Predictor.from_checkpoint(path, flip_tta=job.tta, detector=detector, workers=1)
        if model_bytes is not None:
            path.unlink(missing_ok=True)  # the session has read it
        self.job, self.dest = job, Dest(job.dest, job.storage)
        self.fs = job.storage.s3() if any(is_s3(s) for s in job.sources) else None
        self.reader = ThreadPoolExecutor(READ_THREADS)

    def __call__(self, block: dict) -> dict:
        """The block's part written, and its summary row; ``fatal`` says why the run must stop (else empty)."""
        inputs = json.loads(block["inputs"])  # [[name, location], ...]
        try:
            result = self._predict(inputs)
            self.dest.write_part(block["part"], result.rows)
        except OSError as e:
            # The storage's fault, not the photos' (theirs are error rows): the run stops and says so. Raising
            # would do too, but Ray hands the driver only the traceback's text, not the error.
            uri = next((s for s in self.job.sources if is_s3(s)), self.job.dest)
            return {"part": block["part"], "inputs": 0, "faces": 0, "no_face": 0, "problems": "[]",
                    "fatal": str(storage_error(uri, e))}
        done = RunSummary(len(inputs))
        done.add(result, len(inputs))
        return {"part": block["part"], "inputs": done.done, "faces": done.faces, "no_face": done.no_face,
                "problems": json.dumps(done.problems), "fatal": ""}

    def _predict(self, inputs: list[list[str]]) -> BatchResult:
        from agegender.inference.batch import group_size, predict_items

        result = BatchResult()
        # Grouped as agegender predict groups, so that the network sees the same batches.
        size = group_size(self.predictor, self.job.batch_size, self.job.aligned)
        for start in range(0, len(inputs), size):
            group = inputs[start:start + size]
            items = []
            for (name, _), source in zip(group, self.reader.map(self._read, group), strict=True):
                if isinstance(source, tuple):  # (why,): the object is gone or forbidden
                    result.problem(name, source[0])
                else:
                    items.append((name, source))
            predicted = predict_items(self.predictor, items, aligned=self.job.aligned,
                                      batch_size=self.job.batch_size, max_faces=self.job.max_faces)
            result.rows += predicted.rows
            result.problems += predicted.problems
        return result

    def _read(self, item: list[str]) -> str | bytes | tuple[str]:
        name, where = item
        try:
            return read_input(where, self.job.storage, self.fs)
        except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
            return (f"{name}: cannot be read ({type(e).__name__})",)


def _blocks(names: list[str], size: int) -> list[dict]:
    """The work: ``size`` inputs a block, each block named for the part its rows go to."""
    return [{"part": part_name(b), "inputs": json.dumps([[n, location(n)] for n in b])} for b in
            (names[i:i + size] for i in range(0, len(names), size))]


def run(job: Job) -> JobSummary:
    """Predict every input of ``job`` not yet in its dataset; see the module docstring."""
    model_bytes = _check_model(job.model)
    job = replace(job, dest=location(job.dest))  # the workers' folder is not the driver's
    inputs = list_inputs(job.sources, job.storage)
    dest = Dest(job.dest, job.storage)
    dest.prepare(_settings(job, model_identity(None if model_bytes is None else job.model)))
    if dest.remove_stale():
        log.info("removed the temporary files of an interrupted run from %s", job.dest)
    committed = dest.committed()
    todo = [n for n in inputs.names if stored_name(n) not in committed]
    summary = JobSummary(len(inputs.names) + len(inputs.missing), skipped=len(inputs.names) - len(todo))
    missing = [(n, why) for n, why in inputs.missing if stored_name(n) not in committed]
    if missing:  # sources that name nothing get their error rows, committed like any block's
        dest.write_part(part_name([n for n, _ in missing]), [problem_row(n, why) for n, why in missing])
        summary.problems += missing
    summary.skipped += len(inputs.missing) - len(missing)
    if summary.skipped:
        log.info("%s already holds the rows of %d of %d inputs: skipped", job.dest, summary.skipped, summary.inputs)
    if not todo:
        return summary
    for part in _stream(job, model_bytes, _blocks(todo, job.block_size)):
        summary.add(part)
    return summary


def _stream(job: Job, model_bytes: bytes | None, blocks: list[dict]) -> Iterator[dict]:
    """The summary row of each block as its part is written, on a Ray connected (or started) for the run."""
    import ray

    started = _connect(job)
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = job.progress
        # Fewer of Ray Data's own chores: each task polling its memory every second, the stats printout at the end.
        ctx.memory_usage_poll_interval_s = None
        ctx.enable_auto_log_stats = False
        # One input row per Ray block, so that idle actors can take any block that is left.
        ds = ray.data.from_items(blocks, override_num_blocks=len(blocks))
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        pool = (job.workers, job.workers) if job.workers else (1, cpus)
        out = ds.map(_PartWorker, fn_constructor_kwargs={"job": job, "model_bytes": model_bytes},
                     compute=ray.data.ActorPoolStrategy(min_size=pool[0], max_size=pool[1]), num_cpus=1)
        for part in out.iter_rows():
            if part["fatal"]:
                raise StorageError(part["fatal"])
            yield part
    finally:
        if started:
            ray.shutdown()


def _connect(job: Job) -> bool:
    """Connect to ``job.address`` or ``RAY_ADDRESS``, else start a local Ray for the job (never a stray local
    cluster found on the machine). True when this call connected (and the run must disconnect)."""
    import ray

    if ray.is_initialized():
        return False
    address = job.address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(address="local", num_cpus=job.workers or None, include_dashboard=False, **quiet)
    return True
