"""Video: frames per second of `agegender predict CLIP`, and how much one estimate per person beats single frames.

    python benchmarks/video.py speed [--frames 200] [--runtimes onnx,torch] [--model CKPT]
    python benchmarks/video.py tracks --data UTKFACE_DIR [--n 200] [--views 10] [--runtime onnx] [--model CKPT]

speed: generated 640x480 clips (25 fps) with 1 and 3 faces (cut from examples/astronaut.png, 140-150 px tall,
walking slowly) through the same function as `agegender predict clip.mp4 --out rows.csv` (decode, detect, align,
predict, track, write the rows; no process start-up, no --annotate), at --every 1 and 5, per runtime of the age and
gender network (MTCNN runs on onnxruntime with the numpy cascade either way). Frames/s counts every frame of the
clip, analysed or not.

tracks: UTKFace crops cannot give several frames of one person, so each track is N augmented views of ONE
validation image of the model's own split (rotation +-10 degrees, scale 0.9-1.1, shift, brightness and contrast,
blur in 30%, mirror in 50%, JPEG quality 35-90), pasted into 320x240 frames at a position that moves from frame
to frame, then detected, aligned, predicted and tracked. Reports single-frame MAE against per-track MAE (inverse-
variance and plain mean), gender accuracy, interval coverage, and the intraclass correlation of the age errors
(the share of a frame's error variance that its track shares; what tracking.FRAME_CORRELATION stands for). Views
of one photo are more alike than the frames of a real video in some ways (same expression) and less in others
(independent augmentations), so read the correlation as an indication.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from agegender.data.sources import split_from_checkpoint
from agegender.inference.predictor import Predictor
from agegender.io.images import as_rgb_array, open_image
from agegender.model.checkpoint import load_checkpoint, resolve_model_path
from agegender.video.clips import VideoWriter
from agegender.video.predict import predict_video, video_ahead
from agegender.video.synthetic import Walker, background, render, sprite
from agegender.video.tracking import FRAME_CORRELATION, combine

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"
FACE_BOX = (150, 25, 300, 205)  # the astronaut's face with some margin


def speed_clip(path: Path, n_faces: int, frames: int) -> Path:
    face = sprite(EXAMPLE, FACE_BOX, 150)
    small = sprite(EXAMPLE, FACE_BOX, 140)
    walkers = [Walker(face, (60, 30), (300, 60))]
    if n_faces == 3:
        walkers += [Walker(np.ascontiguousarray(small[:, ::-1]), (470, 40), (380, 20)),
                    Walker(small, (250, 300), (420, 320))]
    with VideoWriter(path, 25, (640, 480)) as writer:
        for frame in render(walkers, frames, (640, 480)):
            writer.write(frame)
    return path


def speed(args: argparse.Namespace) -> None:
    model = resolve_model_path(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = {n: speed_clip(Path(tmp) / f"faces{n}.mp4", n, args.frames) for n in (1, 3)}
        for runtime in args.runtimes.split(","):
            predictor = Predictor.from_checkpoint(model, runtime=runtime)
            warm = sprite(EXAMPLE, (0, 0, 512, 512))
            for _ in range(3):
                predictor.predict_faces([warm])
            for n, clip in clips.items():
                for every in (1, 5):
                    run = predict_video(predictor, clip, Path(tmp) / "rows.csv", Path(tmp) / "tracks.csv",
                                        every=every, progress=False)
                    rows.append((runtime, n, every, run.frames / run.seconds, run.faces / max(run.analysed, 1),
                                 run.tracks))
    print(f"$ {' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}")
    ahead = video_ahead(predictor)
    print(f"model {model}; 640x480 clips of {args.frames} frames at 25 fps; CPU ({os.cpu_count()} cores); MTCNN on "
          f"onnxruntime (numpy cascade); analysed frames searched ahead on {ahead} threads; frames/s over the whole "
          "clip (decode, detect, align, predict, track, CSV)")
    print("| runtime (age/gender net) | faces | --every | frames/s | faces found per analysed frame | tracks |")
    print("|---|---|---|---|---|---|")
    for runtime, n, every, fps, found, tracks in rows:
        print(f"| {runtime} | {n} | {every} | {fps:.1f} | {found:.2f} | {tracks} |")


def view(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One augmented view of a 200x200 crop, as a camera might see the same face a moment later."""
    h, w = crop.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-10, 10), rng.uniform(0.9, 1.1))
    matrix[:, 2] += rng.uniform(-6, 6, 2)
    img = cv2.warpAffine(crop, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    img = (img - 128) * rng.uniform(0.75, 1.25) + 128 + rng.uniform(-20, 20)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.5:
        img = np.ascontiguousarray(img[:, ::-1])
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=int(rng.integers(35, 91)))
    return as_rgb_array(Image.open(buf))


def track_frames(predictor: Predictor, crop: np.ndarray, views: int, rng: np.random.Generator) -> list:
    """The per-frame predictions of the longest track through ``views`` frames of one crop."""
    base = background((320, 240))
    frames = []
    for k in range(views):
        canvas = base.copy()
        x = 10 + round(100 * k / max(1, views - 1))
        canvas[20:220, x : x + 200] = view(crop, rng)
        frames.append(canvas)
    per_track: dict[int, list] = {}
    for step in predictor.track(frames):
        for face in step.faces:
            per_track.setdefault(face.track, []).append(face.face.prediction)
    return max(per_track.values(), key=len) if per_track else []


def tracks(args: argparse.Namespace) -> None:
    t0 = time.time()
    model = resolve_model_path(args.model)
    predictor = Predictor.from_checkpoint(model, runtime=args.runtime)
    records, split, same = split_from_checkpoint(load_checkpoint(model), args.data)
    if not same:
        print("warning: this folder's fingerprint differs from the training data's")
    val = [r for r in records if split[r.file] == "val"]
    rng = np.random.default_rng(args.seed)
    sample = [val[i] for i in rng.choice(len(val), size=min(args.n, len(val)), replace=False)]
    truth, frames = [], []
    for r in sample:
        crop = as_rgb_array(open_image(Path(args.data) / r.file).resize((200, 200)))
        preds = track_frames(predictor, crop, args.views, rng)
        if len(preds) >= 2:
            truth.append((r.age, r.gender))
            frames.append(preds)
    report(predictor, truth, frames, args)
    print(f"({time.time() - t0:.0f} s)")


def intraclass_correlation(errors: list[np.ndarray]) -> float:
    """One-way random-effects ICC of the age errors grouped by track (unequal group sizes: mean size)."""
    within = np.mean([e.var(ddof=1) for e in errors])
    means = np.array([e.mean() for e in errors])
    between = means.var(ddof=1) - within / np.mean([len(e) for e in errors])
    return float(max(between, 0.0) / (max(between, 0.0) + within))


def report(predictor: Predictor, truth: list, frames: list, args: argparse.Namespace) -> None:
    ages = np.array([a for a, _ in truth])
    genders = np.array([g for _, g in truth])
    errors = [np.array([p.age for p in preds]) - a for preds, (a, _) in zip(frames, truth, strict=True)]
    icc = intraclass_correlation(errors)
    scale = predictor.interval_scale

    def tracked(rho: float) -> list:
        return [combine([p.age for p in f], [p.age_sigma for p in f], [p.p_female for p in f], rho, scale)
                for f in frames]

    def row(name: str, preds: list, true: np.ndarray, gender: np.ndarray) -> None:
        mae = np.mean([abs(p.age - t) for p, t in zip(preds, true, strict=True)])
        acc = 100 * np.mean([(p.p_female >= 0.5) == (g == 1) for p, g in zip(preds, gender, strict=True)])
        holds = 100 * np.mean([p.age_low <= t <= p.age_high for p, t in zip(preds, true, strict=True)])
        width = np.mean([p.age_high - p.age_low for p in preds])
        print(f"| {name} | {len(preds)} | {mae:.2f} | {acc:.1f}% | {holds:.1f}% | {width:.1f} |")

    single = [p for f in frames for p in f]
    single_true = np.concatenate([[a] * len(f) for f, (a, _) in zip(frames, truth, strict=True)])
    single_gender = np.concatenate([[g] * len(f) for f, (_, g) in zip(frames, truth, strict=True)])
    plain = np.array([np.mean([p.age for p in f]) for f in frames])
    n_frames = np.array([len(f) for f in frames])
    print(f"$ {' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}")
    print(f"model {resolve_model_path(args.model)} ({args.runtime}); {len(frames)} tracks of one validation image "
          f"each ({args.views} augmented views, 320x240 frames; {n_frames.sum()} frames with the face tracked, "
          f"{n_frames.mean():.1f} per track)")
    print("| estimate | n | age MAE | gender accuracy | 80% interval holds | mean interval width |")
    print("|---|---|---|---|---|---|")
    row("single frame", single, single_true, single_gender)
    row(f"per track, rho {FRAME_CORRELATION} (shipped)", tracked(FRAME_CORRELATION), ages, genders)
    row("per track, rho 0 (frames independent)", tracked(0.0), ages, genders)
    row(f"per track, rho {icc:.2f} (the measured ICC)", tracked(icc), ages, genders)
    print(f"| per track, plain mean of ages | {len(plain)} | {np.mean(np.abs(plain - ages)):.2f} | - | - | - |")
    print(f"intraclass correlation of the age errors: {icc:.2f}")
    if not math.isfinite(icc):
        print("warning: the correlation could not be estimated")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    s = sub.add_parser("speed", help="frames/s on generated 640x480 clips")
    s.add_argument("--frames", type=int, default=200)
    s.add_argument("--runtimes", default="onnx,torch")
    s.add_argument("--model", help="checkpoint (default: the bundled model)")
    t = sub.add_parser("tracks", help="single-frame vs per-track accuracy on augmented validation images")
    t.add_argument("--data", required=True, help="the UTKFace folder the model was trained on")
    t.add_argument("--n", type=int, default=200, help="tracks (validation images)")
    t.add_argument("--views", type=int, default=10, help="frames per track")
    t.add_argument("--runtime", default="onnx", choices=["torch", "onnx"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--model", help="checkpoint (default: the bundled model)")
    args = ap.parse_args(argv)
    (speed if args.part == "speed" else tracks)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
