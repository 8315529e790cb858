"""Draw detected faces and their estimates onto a photo, and write annotated copies of a run's photos."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from agegender.errors import one_line
from agegender.inference.results import FacePrediction, TrackedFace
from agegender.io.outputs import atomic_write, file_identity, unique_name


def label(face: FacePrediction) -> str:
    """Short label such as ``"34 ±5, female 0.97"`` (the ± is half the age interval, where there is one)."""
    p = face.prediction
    age = f"{p.age:.0f}"
    if p.age_low is not None and p.age_high is not None:
        age += f" ±{(p.age_high - p.age_low) / 2:.0f}"
    confidence = p.p_female if p.gender == "female" else 1 - p.p_female
    return f"{age}, {p.gender} {confidence:.2f}"


def draw_faces(image: Image.Image, faces: Sequence[FacePrediction], labels: Sequence[str] | None = None
               ) -> Image.Image:
    """A copy of ``image`` with each face's box, landmarks and label drawn on it (``labels``: one text per face
    instead of :func:`label`'s)."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    line = max(2, round(max(out.size) / 300))
    font = ImageFont.load_default(size=max(12, round(max(out.size) / 40)))
    for i, face in enumerate(faces):
        x1, y1, x2, y2 = face.box
        color = (230, 60, 140) if face.prediction.gender == "female" else (40, 120, 230)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=line)
        for x, y in face.landmarks:
            draw.ellipse((x - line, y - line, x + line, y + line), fill=(255, 220, 0))
        text = label(face) if labels is None else labels[i]
        # Above the box, kept inside the picture: shifted left at the right edge, inside the box at the top.
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tx = max(line, min(x1, out.width - (right - left) - line))
        ty = max(line, y1 - (bottom - top) - 3 * line)
        box = draw.textbbox((tx, ty), text, font=font)
        draw.rectangle((box[0] - line, box[1] - line, box[2] + line, box[3] + line), fill=color)
        draw.text((tx, ty), text, fill=(255, 255, 255), font=font)
    return out


def draw_tracks(image: Image.Image, faces: Sequence[TrackedFace]) -> Image.Image:
    """A copy of ``image`` with each tracked face boxed and labelled with its track's running estimate, such as
    ``"#2 34 ±3, female 0.95"``."""
    shown = [replace(f.face, prediction=f.estimate.prediction) for f in faces]
    return draw_faces(image, shown, [f"#{f.track} {label(s)}" for f, s in zip(faces, shown, strict=True)])


class AnnotatedCopies:
    """Annotated copies of a run's photos in ``folder``, each under a name no other input of the run has
    (``photo_annotated.jpg``, ``photo_annotated_2.jpg``, ...), and never over one of ``inputs`` (a folder annotated
    into itself may hold a ``photo_annotated.jpg`` of an earlier run, now an input)."""

    def __init__(self, folder: str | Path, inputs: Iterable[str | Path] = ()) -> None:
        self.folder, self._taken = Path(folder), set()
        self._inputs = {ident for f in inputs if (ident := file_identity(f)) is not None}

    def write(self, image: Image.Image, faces: Sequence[FacePrediction], file: str) -> str | None:
        """Write ``image`` with ``faces`` drawn; returns None, or why the copy could not be written."""
        # "<stdin>" (an image read from standard input) is written as stdin_annotated.jpg.
        stem = Path(file).stem.strip("<>") or "image"
        target = self.folder / unique_name(stem, "_annotated.jpg", self._taken)
        while self._inputs and file_identity(target) in self._inputs:
            target = self.folder / unique_name(stem, "_annotated.jpg", self._taken)
        try:
            drawn = draw_faces(image, faces)
            atomic_write(target, lambda f: drawn.save(f, "JPEG", quality=92))
        except OSError as e:
            return f"annotated copy {target} not written: {one_line(e)}"
        return None
