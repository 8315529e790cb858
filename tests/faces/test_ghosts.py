"""The detector's final-stage suppression of ghost faces (faces.boxes.suppress_ghosts): a box around a face and its
shoulders, or a small box on the collar below a face or beside it, goes; faces side by side, large and small, stay."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agegender.faces.boxes import suppress_ghosts
from agegender.faces.detect import FaceDetector
from agegender.video.synthetic import Walker, render, sprite

ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"


def test_a_box_around_face_and_shoulders_is_dropped() -> None:
    # The astronaut down to the waist, 400 px tall, on the plain background: MTCNN's last stage keeps a 297x369 box
    # (score 0.92) around the face (70x87, score 1.00) and the suit, which NMS cannot see as a duplicate.
    person = sprite(ASTRONAUT, (50, 0, 450, 512), 400)
    (frame,) = render([Walker(person, (101, 25), (101, 25))], 1)
    raw = FaceDetector(drop_ghosts=False).detect(frame)
    assert len(raw) == 2 and raw[1].area > 10 * raw[0].area
    (face,) = FaceDetector().detect(frame)
    assert face == raw[0]


def boxes(*rows: tuple) -> np.ndarray:
    return np.array(rows, dtype=float)


def test_which_pairs_are_ghosts() -> None:
    face = (200, 100, 300, 220, 0.99)
    # A small box on the collar or chest below a face, right beside it, or a large box around it: the lower score
    # goes.
    for ghost in ((230, 250, 255, 280, 0.85), (310, 130, 330, 155, 0.8), (120, 60, 420, 500, 0.92)):
        assert suppress_ghosts(boxes(face, ghost)).tolist() == [0], ghost
    # ... whichever is the better-scoring one: a ghost scoring above the face would win, so the face is kept
    # only by its score (the rule never keeps both).
    assert suppress_ghosts(boxes((200, 100, 300, 220, 0.8), (230, 250, 255, 280, 0.9))).tolist() == [1]
    # Faces that stay: a similar-sized face beside or below (a child in front), a small face more than half a face
    # width to the side or above (far away), and a small face well below the body region (1.5 face heights down).
    for other in ((320, 100, 420, 220, 0.9), (360, 150, 380, 175, 0.9), (215, 240, 285, 320, 0.9),
                  (240, 20, 260, 45, 0.9), (240, 420, 262, 446, 0.9)):
        assert suppress_ghosts(boxes(face, other)).tolist() == [0, 1], other
    # A box already dropped drops nothing: the real small face next to a ghost box is kept.
    kept = suppress_ghosts(boxes(face, (120, 60, 420, 500, 0.92), (380, 300, 400, 325, 0.91)))
    assert kept.tolist() == [0, 2]
    assert suppress_ghosts(boxes()).tolist() == [] and suppress_ghosts(boxes(face)).tolist() == [0]
