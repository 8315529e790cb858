"""One person, one track: a face becomes a person only once found in CONFIRM_FRAMES analysed frames, so a false
detection that comes and goes is never counted; the tracks are numbered 1, 2, ... as people are confirmed."""

from __future__ import annotations

import pytest

pytest.importorskip("norfair", reason="the video extras are not installed (pip install 'agegender[video]')")

from agegender.inference.results import FacePrediction, Prediction  # noqa: E402
from agegender.video.tracking import CONFIRM_FRAMES, FaceTracks  # noqa: E402


def face(x: float, y: float, side: float = 80.0, age: float = 30.0) -> FacePrediction:
    return FacePrediction(0, (x, y, x + side, y + side * 1.2), 0.99, ((x, y),) * 5,
                          Prediction(age, "female", 0.8, None, None, 4.0))


def test_a_face_is_a_person_from_its_third_frame_and_ghosts_never_are() -> None:
    assert CONFIRM_FRAMES == 3
    tracks = FaceTracks()
    counted = []
    for frame in range(12):
        faces = [face(100 + 5 * frame, 100)]
        if frame in (1, 5, 9):  # a ghost, each time somewhere else and never twice: 3 people before
            faces.append(face(400 - 30 * frame, 300, 20))
        out = tracks.update(frame, faces)
        counted.append([t.track for t in out])
    assert counted[:2] == [[], []] and all(c == [1] for c in counted[2:])
    (estimate,) = tracks.estimates().values()
    assert (estimate.track, estimate.first_frame, estimate.last_frame, estimate.frames) == (1, 2, 11, 10)
    # As before, with every detection a person at once (confirm_frames=1): the ghosts are people too.
    old = FaceTracks(confirm_frames=1)
    for frame in range(12):
        old.update(frame, [face(100 + 5 * frame, 100)] + ([face(400 - 30 * frame, 300, 20)]
                                                          if frame in (1, 5, 9) else []))
    assert len(old.estimates()) == 4


def test_a_ghost_that_comes_back_in_the_same_place_is_still_held_until_confirmed() -> None:
    tracks = FaceTracks(every=5)  # every 5th frame analysed: confirmation counts analysed frames, not frames
    seen = [bool(tracks.update(frame, [face(200, 200)])) for frame in range(0, 25, 5)]
    assert seen == [False, False, True, True, True]
    with pytest.raises(ValueError, match="confirm_frames must be >= 1"):
        FaceTracks(confirm_frames=0)
