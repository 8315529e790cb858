"""Video: faces followed through a generated clip, the per-track estimate against hand computation, the command
line on clips (every k-th frame, annotated copy, JSON), damaged clips and Ctrl-C."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agegender.cli import main
from agegender.errors import VideoError
from agegender.video.clips import VideoReader, VideoWriter
from agegender.video.synthetic import Walker, render, sprite

pytest.importorskip("norfair", reason="the video extras are not installed (pip install 'agegender[video]')")

from agegender.video.tracking import CONFIRM_FRAMES, FRAME_CORRELATION, FaceTracks, combine, track  # noqa: E402

ASTRONAUT = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"
SIZE, N_FRAMES, FPS = (320, 240), 30, 10
A_FIRST, B_LAST = 4, 19  # face A enters in frame 4; face B leaves after frame 19
LATER = CONFIRM_FRAMES - 1  # analysed frames a face is found in before its track starts


def walkers() -> list[Walker]:
    """Face A enters top left in frame 4 and walks right to the end; face B (mirrored) walks left along the
    bottom from the first frame and is gone after frame 19: they pass each other (their x order swaps) around
    frame 12."""
    face = sprite(ASTRONAUT, (150, 25, 300, 205), 90)
    return [Walker(face, (0, 10), (235, 20), first=A_FIRST),
            Walker(np.ascontiguousarray(face[:, ::-1]), (235, 140), (0, 130), last=B_LAST)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "two.avi"
    with VideoWriter(path, FPS, SIZE) as writer:
        for frame in render(walkers(), N_FRAMES, SIZE):
            writer.write(frame)
    return path


@pytest.fixture(scope="module")
def predictor():
    """The bundled model (its age head gives each face its own spread), with faces of 40 px and more searched."""
    from agegender.faces.detect import FaceDetector
    from agegender.inference.predictor import Predictor
    from agegender.model.checkpoint import resolve_model_path

    return Predictor.from_checkpoint(resolve_model_path(None), detector=FaceDetector(min_face_size=40))


@pytest.fixture(scope="module")
def tracked(predictor, clip: Path) -> list:
    with VideoReader(clip) as reader:
        return list(track(predictor, reader, fps=reader.info.fps))



def test_combine_matches_hand_computed_numbers() -> None:
    # Weights 1/2^2 = 0.25 and 1/4^2 = 0.0625, W = 0.3125: age (30 * 0.25 + 40 * 0.0625) / 0.3125 = 32.
    # Q = 1/2 + 1/4 = 0.75. Spread: rho 0: W^-1/2 = 1.788854; rho 1: Q / W = 2.4;
    # rho 0.5: sqrt((0.5 * 0.3125 + 0.5 * 0.5625) / 0.3125^2) = sqrt(4.48) = 2.116601.
    # Gender: logits log(0.9 / 0.1) = 2.197225 and 0, mean 1.098612 = log(3): p = 3 / 4.
    for rho, sigma in ((0.0, 1.788854), (1.0, 2.4), (0.5, 2.116601)):
        p = combine([30.0, 40.0], [2.0, 4.0], [0.9, 0.5], rho=rho, interval_scale=1.5)
        assert p.age == pytest.approx(32.0)
        assert p.age_sigma == pytest.approx(sigma, abs=1e-6)
        assert (p.age_low, p.age_high) == pytest.approx((32.0 - 1.5 * sigma, 32.0 + 1.5 * sigma), abs=1e-6)
        assert p.p_female == pytest.approx(0.75) and p.gender == "female"
    # Equal spreads: a plain mean; 0.2 years is raised to the 0.5 floor for both, so still a plain mean.
    assert combine([20.0, 30.0, 40.0], [0.2, 0.5, 0.5], [0.1, 0.2, 0.3], rho=0.0).age == pytest.approx(30.0)
    one = combine([25.0], [3.0], [0.2])
    assert (one.age, one.age_sigma, one.gender, one.age_low) == (25.0, 3.0, "male", None)
    with pytest.raises(ValueError, match="need as many ages, sigmas and p_females"):
        combine([30.0, 40.0], [2.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="need as many ages"):
        combine([], [], [])


def test_two_faces_crossing_and_leaving_give_two_tracks_with_hand_computed_estimates(tracked: list,
                                                                                     predictor) -> None:
    assert [f.index for f in tracked] == list(range(N_FRAMES)) and all(f.analysed for f in tracked)
    assert tracked[3].time_s == pytest.approx(0.3)
    # Which track each face got, told apart by row: A walks along the top, B along the bottom.
    rows: dict[str, dict[int, int]] = {"A": {}, "B": {}}
    for frame in tracked:
        for face in frame.faces:
            rows["A" if face.face.box[1] < SIZE[1] / 2 else "B"][frame.index] = face.track
    # Each face is a person from the third frame it is found in.
    assert sorted(rows["A"]) == list(range(A_FIRST + LATER, N_FRAMES)), "face A missed or found where it is not"
    assert sorted(rows["B"]) == list(range(LATER, B_LAST + 1)), "face B missed or found after it left"
    assert len(set(rows["A"].values())) == 1 and len(set(rows["B"].values())) == 1, "a face changed track"
    track_a, track_b = rows["A"][A_FIRST + LATER], rows["B"][LATER]
    assert (track_b, track_a) == (1, 2)  # numbered as they are confirmed, from 1
    final = tracked[-1].tracks
    assert set(final) == {track_a, track_b}
    assert (final[track_a].first_frame, final[track_a].last_frame, final[track_a].frames) == \
        (A_FIRST + LATER, 29, 26 - LATER)
    assert (final[track_b].first_frame, final[track_b].last_frame, final[track_b].frames) == \
        (LATER, B_LAST, 20 - LATER)
    for number in (track_a, track_b):
        preds = [f.face.prediction for frame in tracked for f in frame.faces if f.track == number]
        a = np.array([p.age for p in preds])
        s = np.maximum([p.age_sigma for p in preds], 0.5)
        logit = np.log(np.array([p.p_female for p in preds]) / (1 - np.array([p.p_female for p in preds])))
        w = 1 / s**2
        age = (w * a).sum() / w.sum()
        rho = FRAME_CORRELATION
        sigma = math.sqrt(((1 - rho) * w.sum() + rho * (1 / s).sum() ** 2) / w.sum() ** 2)
        p_female = 1 / (1 + math.exp(-logit.mean()))
        est = final[number].prediction
        assert est.age == pytest.approx(age, abs=1e-9) and est.age_sigma == pytest.approx(sigma, abs=1e-9)
        assert est.p_female == pytest.approx(p_female, abs=1e-9)
        half = predictor.interval_scale * sigma
        assert (est.age_low, est.age_high) == pytest.approx((age - half, age + half), abs=1e-9)
        # More frames than one, correlated: tighter than a typical frame, looser than independence would claim.
        assert 1 / math.sqrt(w.sum()) < est.age_sigma < s.mean()
        assert est.gender == ("female" if p_female >= 0.5 else "male")


def test_running_estimate_is_the_combination_of_the_frames_so_far(tracked: list) -> None:
    frame = tracked[9]
    (b,) = [f for f in frame.faces if f.face.box[1] > SIZE[1] / 2]
    so_far = [f.face.prediction for fr in tracked[:10] for f in fr.faces if f.track == b.track]
    expected = combine([p.age for p in so_far], [p.age_sigma for p in so_far], [p.p_female for p in so_far])
    assert b.estimate.frames == len(so_far) == 10 - LATER and b.estimate.last_frame == 9
    assert b.estimate.prediction.age == pytest.approx(expected.age)
    assert b.estimate.prediction.age_sigma == pytest.approx(expected.age_sigma)
    assert tracked[9].tracks[b.track] == b.estimate


def test_every_kth_frame_and_skipped_frames(predictor, clip: Path) -> None:
    with VideoReader(clip) as reader:
        frames = list(track(predictor, reader, every=3, fps=reader.info.fps))
    assert [f.index for f in frames if f.analysed] == list(range(0, N_FRAMES, 3))
    assert frames[4].faces == frames[3].faces  # a skipped frame shows the last analysed frame's faces
    final = frames[-1].tracks
    assert len(final) == 2, "at every third frame the tracker should still link each face"
    # B found in 0, 3, ..., 18 and A in 6, 9, ..., 27: 7 and 8 analysed frames, the first LATER of each left out.
    assert sorted(e.frames for e in final.values()) == [7 - LATER, 8 - LATER]
    with pytest.raises(ValueError, match="every must be >= 1"):
        next(track(predictor, [], every=0))


def test_frames_searched_ahead_give_the_same_tracks_and_a_break_keeps_what_came_before(predictor, clip: Path,
                                                                                     tracked: list) -> None:
    with VideoReader(clip) as reader:
        frames = list(reader)
    ahead = list(track(predictor, frames, fps=FPS, ahead=3))
    assert [f.index for f in ahead] == [f.index for f in tracked]
    assert [[(f.track, f.face.box) for f in fr.faces] for fr in ahead] == \
        [[(f.track, f.face.box) for f in fr.faces] for fr in tracked]
    assert ahead[-1].tracks == tracked[-1].tracks

    def breaks_after_five():
        yield from frames[:5]
        raise OSError("the camera went away")

    got = []
    with pytest.raises(OSError, match="camera went away"):
        for frame in track(predictor, breaks_after_five(), fps=FPS, ahead=3):
            got.append(frame.index)
    assert got == [0, 1, 2, 3, 4]  # the three frames still in flight at the break are answered first
    with pytest.raises(ValueError, match="ahead >= 0"):
        next(track(predictor, [], ahead=-1))


def test_face_tracks_refuses_frames_out_of_order() -> None:
    tracks = FaceTracks()
    tracks.update(3, [])
    with pytest.raises(ValueError, match="frames must come in increasing order"):
        tracks.update(3, [])


def test_predict_a_clip_writes_frame_rows_track_rows_and_an_annotated_video(clip: Path, tmp_path: Path) -> None:
    out, annotated = tmp_path / "frames.csv", tmp_path / "annotated.mp4"
    rc = main(["predict", str(clip), "--out", str(out), "--annotate", str(annotated), "--every", "2",
               "--min-face", "40", "-q"])
    assert rc == 0
    frames = pd.read_csv(out)
    assert list(frames.columns) == ["file", "frame", "time_s", "track", "face", "box_x1", "box_y1", "box_x2",
                                    "box_y2", "det_score", "landmarks", "age", "age_low", "age_high", "age_sigma",
                                    "gender", "p_female"]
    assert set(frames["frame"]) == set(range(2 * LATER, N_FRAMES, 2))  # B is a person from its third frame on
    assert (frames["time_s"] == frames["frame"] / FPS).all()
    tracks = pd.read_csv(tmp_path / "frames_tracks.csv")
    assert len(tracks) == 2 and tracks["track"].tolist() == sorted(frames["track"].unique())
    for _, t in tracks.iterrows():
        rows = frames[frames["track"] == t["track"]]
        assert (t["first_frame"], t["last_frame"], t["frames"]) == (rows["frame"].min(), rows["frame"].max(),
                                                                    len(rows))
        assert t["first_time_s"] == pytest.approx(t["first_frame"] / FPS)
        # From the rounded CSV values, by hand: inverse-variance mean of the ages.
        w = 1 / np.maximum(rows["age_sigma"], 0.5) ** 2
        assert t["age"] == pytest.approx((w * rows["age"]).sum() / w.sum(), abs=0.01)
    with VideoReader(annotated) as reader:
        assert (reader.info.width, reader.info.height) == SIZE and sum(1 for _ in reader) == N_FRAMES
    # JSON output and a named tracks file
    rc = main(["predict", str(clip), "--out", str(tmp_path / "f.json"), "--tracks", str(tmp_path / "t.json"),
               "--every", "5", "--min-face", "40", "-q"])
    assert rc == 0
    assert {r["frame"] for r in pd.read_json(tmp_path / "f.json").to_dict("records")} == \
        set(range(5 * LATER, N_FRAMES, 5))
    assert len(pd.read_json(tmp_path / "t.json")) == 2


def test_damaged_and_unreadable_clips(clip: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    full = tmp_path / "full.csv"
    assert main(["predict", str(clip), "--out", str(full), "--min-face", "40", "-q"]) == 0
    truncated = tmp_path / "truncated.avi"
    data = clip.read_bytes()
    truncated.write_bytes(data[: len(data) * 6 // 10])
    out = tmp_path / "part.csv"
    caplog.clear()
    assert main(["predict", str(truncated), "--out", str(out), "--min-face", "40", "-q"]) == 1
    assert "truncated or damaged" in caplog.text and "the rows of the frames before it are written" in caplog.text
    part, whole = pd.read_csv(out), pd.read_csv(full)
    assert 0 < part["frame"].max() < N_FRAMES - 1
    # Every row before the break is there, as in the full run (the file name aside).
    pd.testing.assert_frame_equal(part.drop(columns="file"), whole[whole["frame"] <= part["frame"].max()]
                                  .drop(columns="file"))
    assert len(pd.read_csv(tmp_path / "part_tracks.csv")) == 2
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video\n")
    mp4 = tmp_path / "clip.mp4"
    with VideoWriter(mp4, FPS, SIZE, faststart=False) as writer:
        for frame in render(walkers(), 5, SIZE):
            writer.write(frame)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])  # the index comes last: cut off
    for bad in (not_video, cut, tmp_path / "missing.mp4"):
        caplog.clear()
        assert main(["predict", str(bad), "--out", str(tmp_path / "x.csv"), "-q"]) == 2, bad
        assert bad.name in caplog.text and len(caplog.records) == 1 and "Traceback" not in caplog.text
    with pytest.raises(VideoError, match="not a video OpenCV can open"):
        VideoReader(not_video)


def test_video_user_errors_exit_2(clip: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    video, out = [str(clip)], ["--out", str(tmp_path / "f.csv")]
    cases = [(video, ["--every", "0"], "--every must be 1 or more"),
             ([*video, str(ASTRONAUT)], [], "give one video alone"),
             (video, ["--aligned"], "--aligned is for face crops"),
             (video, ["--annotate", str(tmp_path / "a.gif")],
              "can write .avi, .m4v, .mov, .mp4, .webm videos, not .gif"),
             (video, ["--tracks", str(tmp_path / "t.txt")], "rows are written to .csv or .json")]
    for inputs, options, message in cases:
        caplog.clear()
        assert main(["predict", *inputs, *out, *options, "-q"]) == 2, options
        assert message in caplog.text, (options, caplog.text)


def test_ctrl_c_keeps_the_rows_written_and_finishes_the_files(tmp_path: Path, default_sigint) -> None:
    long_clip = tmp_path / "long.avi"
    with VideoWriter(long_clip, FPS, SIZE) as writer:
        for frame in render([Walker(walkers()[0].sprite, (0, 70), (230, 70))], 300, SIZE):
            writer.write(frame)
    out, annotated = tmp_path / "frames.csv", tmp_path / "annotated.avi"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2] / "src"),
                                                                    os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "agegender", "predict", str(long_clip), "--out", str(out),
                             "--annotate", str(annotated), "--min-face", "40", "-q"], env=env,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 240
    partial = out.with_name(out.name + ".partial")  # rows stream there until the run ends (agegender.io.sinks)
    while not (partial.exists() and len(partial.read_text().splitlines()) > 3):
        assert proc.poll() is None and time.monotonic() < deadline, "no rows were written in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    rows = pd.read_csv(out)
    assert len(rows) >= 3 and rows["frame"].tolist() == list(range(LATER, LATER + len(rows)))
    tracks = pd.read_csv(tmp_path / "frames_tracks.csv")
    assert len(tracks) == 1 and tracks["frames"].iloc[0] >= len(rows)
    with VideoReader(annotated) as reader:  # closed properly: readable, with the frames done (the one being
        assert sum(1 for _ in reader) >= len(rows) - 1  # drawn when Ctrl-C came may be missing)
