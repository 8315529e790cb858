"""The photo pipeline of every driver: inputs in -> the decoding gate -> faces found and aligned (or crops taken as
they are) -> predicted -> one flat row per face, or one row that says why there is none.

``agegender predict``, the Ray engine and Python users call the same functions, so a row is the same (columns and
number formatting, :data:`PHOTO_COLUMNS`) whichever runs it. Failures stay with their input: a file that cannot
be decoded, or that breaks the network, costs its own row and never the batch's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agegender.compute.pools import parallel_map
from agegender.data.records import iter_image_files
from agegender.errors import ImageReadError, describe
from agegender.inference.annotate import AnnotatedCopies
from agegender.inference.predictor import BATCH_SIZE, DEFAULT_MAX_FACES, Predictor
from agegender.inference.results import FacePrediction, Prediction
from agegender.io.images import open_image
from agegender.io.sinks import RowSink

log = logging.getLogger(__name__)

PHOTO_COLUMNS = ["file", "face", "box_x1", "box_y1", "box_x2", "box_y2", "det_score", "landmarks", "age",
                 "age_low", "age_high", "age_sigma", "gender", "p_female", "status", "error"]
# What a row's status says: a face was predicted, none was found, the file could not be used, or faces were left out.
OK, NO_FACE, ERROR, FACES_DROPPED = "ok", "no_face", "error", "faces_dropped"


def face_row(file: str, face: FacePrediction | Prediction) -> dict:
    """The flat row of one face (or of one crop's :class:`Prediction`): the box in four columns, every number
    rounded as outputs are (:data:`agegender.inference.results.DIGITS`).

    >>> face_row("a.jpg", Prediction(31.456, "female", 0.91234, None, None, 4.0))["age"]
    31.46
    """
    row = {"file": file, "face": 0, **face.to_dict(), "status": OK}
    if "box" in row:
        row["box_x1"], row["box_y1"], row["box_x2"], row["box_y2"] = row.pop("box")
    return row


def problem_row(file: str, why: str, status: str = ERROR) -> dict:
    return {"file": file, "status": status, "error": why}


@dataclass
class BatchResult:
    """The rows of a batch of inputs, and the inputs that could not be (fully) used with why."""

    rows: list[dict] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def problem(self, file: str, why: str, status: str = ERROR) -> None:
        self.problems.append((file, why))
        self.rows.append(problem_row(file, why, status))


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named or found in folders (searched recursively, image suffixes only), and the inputs that are not
    there or hold no image, with why."""
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = iter_image_files(p)
            if not found:
                missing.append((str(item), "folder holds no image files"))
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            missing.append((str(item), "no such file or folder"))
    return files, missing


def _decode(item: tuple[str, str | Path | bytes]) -> object:
    """The decoded image, or the :class:`ImageReadError` that says why it cannot be. Its reason names the input
    as its rows do, whether the source is a path (which may be spelled otherwise, e.g. absolute on a cluster's
    worker) or bytes read from storage."""
    name, source = item
    try:
        return open_image(source, name=name)
    except ImageReadError as e:
        return e


def group_size(predictor: Predictor, batch_size: int = BATCH_SIZE, aligned: bool = False) -> int:
    """Inputs decoded and predicted together: enough to keep every worker busy. Photos go in smaller groups than
    crops (a decoded photo is large). Every driver groups by this, so batches (and rows) are made alike."""
    return batch_size * predictor.workers * (4 if aligned else 1)


def predict_items(predictor: Predictor, items: Sequence[tuple[str, str | Path | bytes]], *, aligned: bool = False,
                  batch_size: int = BATCH_SIZE, max_faces: int | None = DEFAULT_MAX_FACES,
                  annotate: AnnotatedCopies | None = None) -> BatchResult:
    """Rows for ``items``, each ``(name, source)``: ``source`` a path or the file's bytes, ``name`` what its rows'
    ``file`` column says. Sources are decoded side by side; with ``aligned`` each image is a face crop (one row
    each), else faces are detected (at most ``max_faces`` per photo, the largest; a photo with more gets a
    ``faces_dropped`` row). An input the model cannot take costs only its own rows: the batch is then retried one
    input at a time."""
    result, names, images = BatchResult(), [], []
    for (name, _), decoded in zip(items, parallel_map(_decode, list(items), predictor.workers), strict=True):
        if isinstance(decoded, ImageReadError):
            result.problem(name, str(decoded))
        else:
            names.append(name)
            images.append(decoded)
    try:
        result.rows += _predict_images(predictor, names, images, aligned, batch_size, max_faces, annotate, result)
    except Exception as e:  # noqa: BLE001 - isolate the input that broke the batch; the others keep their rows
        if len(names) == 1:
            _failed(result, names[0], e)
            return result
        for name, image in zip(names, images, strict=True):
            try:
                result.rows += _predict_images(predictor, [name], [image], aligned, batch_size, max_faces, annotate,
                                               result)
            except Exception as e1:  # noqa: BLE001 - as above
                _failed(result, name, e1)
    return result


def _failed(result: BatchResult, name: str, e: Exception) -> None:
    log.debug("prediction failed for %s", name, exc_info=True)
    result.problem(name, f"prediction failed: {describe(e)}")


def _predict_images(predictor: Predictor, names: list[str], images: list, aligned: bool, batch_size: int,
                    max_faces: int | None, annotate: AnnotatedCopies | None, result: BatchResult) -> list[dict]:
    """Rows for decoded ``images``, returned only once the whole batch is predicted (problems of annotation and
    of too many faces go to ``result`` as they are found)."""
    if not images:
        return []
    if aligned:
        crops = predictor.predict(images, batch_size, warn_uncropped=False)  # --aligned: crops, whatever their size
        return [face_row(n, p) for n, p in zip(names, crops, strict=True)]
    rows = []
    photos = predictor.predict_photos(images, batch_size, max_faces=max_faces)
    for name, image, photo in zip(names, images, photos, strict=True):
        rows += [face_row(name, face) for face in photo.faces]
        if not photo.found:
            rows.append({"file": name, "status": NO_FACE})
        if photo.dropped:
            result.problem(name, f"{photo.found} faces found; the {len(photo.faces)} largest were predicted "
                           f"(--max-faces {max_faces})", status=FACES_DROPPED)
        if annotate is not None:
            problem = annotate.write(image, photo.faces, name)
            if problem:
                result.problems.append((name, problem))
    return rows


@dataclass
class RunSummary:
    """What :func:`predict_files` did: files done of all, face rows, photos without a face, problems."""

    files: int
    done: int = 0
    faces: int = 0
    no_face: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    def add(self, result: BatchResult, inputs: int) -> None:
        """Count ``result``, the rows and problems of ``inputs`` more files done."""
        self.done += inputs
        self.faces += sum(r["status"] == OK for r in result.rows)
        self.no_face += sum(r["status"] == NO_FACE for r in result.rows)
        self.problems += result.problems


def predict_files(predictor: Predictor, files: Sequence[Path], sink: RowSink, *, aligned: bool = False,
                  batch_size: int = BATCH_SIZE, max_faces: int | None = DEFAULT_MAX_FACES,
                  annotate: AnnotatedCopies | None = None, progress: bool = True,
                  summary: RunSummary | None = None) -> RunSummary:
    """Predict ``files`` in groups that keep every worker busy, writing each group's rows to ``sink`` as it is
    done (see :func:`predict_items`). ``summary`` (default a new one) is updated as groups finish, so a caller
    that is interrupted still knows what was done."""
    from tqdm.auto import tqdm

    summary = summary or RunSummary(len(files))
    group = group_size(predictor, batch_size, aligned)
    with tqdm(total=len(files), desc="predict", unit="img", disable=None if progress else True,
              dynamic_ncols=True) as bar:
        for start in range(0, len(files), group):
            part = files[start : start + group]
            result = predict_items(predictor, [(str(f), f) for f in part], aligned=aligned, batch_size=batch_size,
                                   max_faces=max_faces, annotate=annotate)
            sink.write(result.rows)
            summary.add(result, len(part))
            bar.update(len(part))
    return summary
