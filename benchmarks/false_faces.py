"""False faces: what the detector finds where there is no face, and the ghosts it adds around a moving face.

    python benchmarks/false_faces.py [--aaf AAF_DIR] [--frames 100] [--seed 0]

Three sets, each detected once with the final-stage ghost suppression off (``FaceDetector(drop_ghosts=False)``);
the candidate rules are then applied to those boxes, so every row of the table sees the same detections:

- face-free images: generated backgrounds and textures (gradients, noise at several scales, stripes, checks, random
  shapes, woven patterns; 640x480) and the face-free sample photos scikit-image ships (when it is installed; the
  astronaut, the cameraman and the LFW subset are left out): every box is a false face;
- moving-face clips: the astronaut (``examples/astronaut.png``) cut three ways (face only, head and shoulders, the
  whole photo) and at two sizes, sliding across a plain and a textured 640x480 background, written as MPEG-4 Part 2
  (OpenCV's mp4v, what agegender wrote before; the ghosts were first seen on such a clip) and read back: a box
  that is not on the face (IoU < 0.3 with where the face is)
  is a ghost; the face missed in a frame is a miss; tracks are counted by :class:`FaceTracks` with a person
  confirmed after 1 (every detection, the old tracker) or ``CONFIRM_FRAMES`` analysed frames;
- with ``--aaf``: 300 All-Age-Faces photos (one person each, head and neck) upscaled to 400 px tall, and 100 group
  canvases of 3 of them side by side at sizes 0.6-1.6x: faces found, and extra boxes.

Recall on single faces in framed photos is benchmarks/framing_gap.py's job.
"""

from __future__ import annotations

import argparse
import itertools
import math
import pickle
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from agegender.faces.boxes import GHOST_BESIDE, GHOST_OVERLAP, GHOST_REACH, GHOST_SIDE_RATIO, suppress_ghosts
from agegender.faces.detect import Face, FaceDetector
from agegender.inference.results import FacePrediction, Prediction
from agegender.io.images import as_rgb_array, open_image
from agegender.video.synthetic import Walker, background, render, sprite
from agegender.video.tracking import CONFIRM_FRAMES, FaceTracks

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"
SIZE = (640, 480)
# scikit-image's bundled samples that hold no human face.
SKIMAGE_SAMPLES = ("brick", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
                   "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket", "text",
                   "horse", "cell",
                   "checkerboard", "clock", "colorwheel", "stereo_motorcycle")
# (rule name, side_ratio, overlap, reach, beside, O-Net score floor); None: suppression off.
RULES = [("off (before)", None, None, None, None, 0.7)] + [
    (f"ratio {r}, overlap {o}, beside {b}", r, o, GHOST_REACH, b, 0.7) for b, r, o in
    itertools.product((0.0, 0.5), (0.4, 0.5, 0.6), (0.3, 0.5))] + [
    (f"ratio {GHOST_SIDE_RATIO}, overlap {GHOST_OVERLAP}, beside {GHOST_BESIDE}, reach {h}", GHOST_SIDE_RATIO,
     GHOST_OVERLAP, h, GHOST_BESIDE, 0.7) for h in (1.0, 2.0)] + [
    ("off, O-Net score >= 0.9", None, None, None, None, 0.9),
    (f"chosen (ratio {GHOST_SIDE_RATIO}, overlap {GHOST_OVERLAP}, beside {GHOST_BESIDE}, reach {GHOST_REACH})",
     GHOST_SIDE_RATIO, GHOST_OVERLAP, GHOST_REACH, GHOST_BESIDE, 0.7)]


def generated_backgrounds(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Face-free 640x480 images: gradients, noise at several scales, stripes, checks, shapes, woven textures."""
    w, h = SIZE
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = [("gradient", background(SIZE))]
    for scale in (1, 4, 16, 64):
        noise = rng.integers(0, 256, (h // scale + 1, w // scale + 1, 3), dtype=np.uint8)
        img = Image.fromarray(noise).resize((w, h), Image.BILINEAR).filter(ImageFilter.GaussianBlur(scale / 4))
        out.append((f"noise/{scale}", as_rgb_array(img)))
    for period in (8, 24, 60):
        stripes = 128 + 100 * np.sin(2 * math.pi * (x + 0.3 * y) / period)
        out.append((f"stripes/{period}", np.repeat(stripes[..., None], 3, 2).astype(np.uint8)))
        checks = ((x // period + y // period) % 2) * 180 + 40
        out.append((f"checks/{period}", np.repeat(checks[..., None], 3, 2).astype(np.uint8)))
        weave = 128 + 60 * np.sin(2 * math.pi * x / period) * np.sin(2 * math.pi * y / (period * 1.3))
        tint = np.stack([weave, weave * 0.9 + 20, weave * 0.7 + 30], axis=2)
        out.append((f"weave/{period}", np.clip(tint, 0, 255).astype(np.uint8)))
    for k in range(8):  # random ellipses and rectangles, some dark blobs in pairs (eye-like by chance)
        img = Image.fromarray(background(SIZE))
        draw = ImageDraw.Draw(img)
        for _ in range(30):
            x0, y0 = rng.integers(0, w), rng.integers(0, h)
            a, b = rng.integers(5, 120, 2)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + a, y0 + b), fill=colour)
        out.append((f"shapes/{k}", as_rgb_array(img.filter(ImageFilter.GaussianBlur(1)))))
    return out


def skimage_samples() -> list[tuple[str, np.ndarray]]:
    """scikit-image's face-free samples, read from the installed package at run time (none when it is absent)."""
    try:
        from skimage import data
    except ImportError:
        return []
    out = []
    for name in SKIMAGE_SAMPLES:
        try:
            image = getattr(data, name)()
        except Exception:  # noqa: BLE001 - a sample that needs a download (no network) is left out
            continue
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
        image = np.asarray(image, dtype=np.float64) if np.asarray(image).dtype != np.uint8 else np.asarray(image)
        if image.dtype != np.uint8:
            image = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-9)).astype(np.uint8)
        out.append((f"skimage/{name}", as_rgb_array(image)))
    return out


def compressed(frames: list[np.ndarray]) -> list[np.ndarray]:
    """``frames`` through OpenCV's MPEG-4 Part 2 encoder (25 fps, its default quality) and back."""
    import cv2

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "clip.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25.0, SIZE)
        for pixels in frames:
            writer.write(cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        writer.release()
        reader, out = cv2.VideoCapture(path), []
        while True:
            ok, bgr = reader.read()
            if not ok:
                break
            out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        reader.release()
    return out


def iou(a: tuple, b: tuple) -> float:
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@dataclass
class Clip:
    """A moving-face clip: its frames, and where the face is in each (None: off the canvas)."""

    name: str
    frames: list[np.ndarray]
    truth: list[tuple | None]
    detections: list[list[Face]] = field(default_factory=list)


def clips(detector: FaceDetector, n_frames: int, textured: np.ndarray) -> list[Clip]:
    """The astronaut cut three ways at two sizes, sliding over a plain and a textured background."""
    photo = open_image(EXAMPLE)
    face = detector.detect(photo)[0].box
    out = []
    cuts = {"face": (150, 25, 300, 205), "head+shoulders": (100, 0, 400, 400), "photo": (0, 0, 512, 512)}
    for (cut, box), height, (bg_name, base) in itertools.product(
            cuts.items(), (0.5, 1.0), (("plain", background(SIZE)), ("textured", textured))):
        px = round(height * {"face": 180, "head+shoulders": 300, "photo": 470}[cut])
        s = sprite(photo, box, px)
        k = px / (box[3] - box[1])
        f = ((face[0] - box[0]) * k, (face[1] - box[1]) * k, (face[2] - box[0]) * k, (face[3] - box[1]) * k)
        walker = Walker(s, (-s.shape[1] // 4, SIZE[1] - s.shape[0]), (SIZE[0] - 3 * s.shape[1] // 4, 0))
        frames, truth = [], []
        for i, pixels in enumerate(render([walker], n_frames, SIZE, base=base)):
            at = walker.position(i, n_frames)
            frames.append(pixels)
            truth.append((f[0] + at[0], f[1] + at[1], f[2] + at[0], f[3] + at[1]))
        out.append(Clip(f"{cut} {px}px {bg_name}", compressed(frames), truth))
    return out


def apply(faces: list[Face], rule: tuple) -> list[Face]:
    """``faces`` (found with the suppression off) after ``rule``: the O-Net score floor, then the suppression."""
    _, ratio, overlap, reach, beside, floor = rule
    faces = [f for f in faces if f.score >= floor]
    if ratio is None or len(faces) < 2:
        return faces
    boxes = np.array([[*f.box, f.score] for f in faces])
    return [faces[i] for i in sorted(suppress_ghosts(boxes, ratio, overlap, reach, beside).tolist())]


def clip_figures(clip: Clip, rule: tuple) -> tuple[int, int, int, int, dict[int, int]]:
    """(frames with the face visible, ghosts, misses, frames, tracks by confirmation count) of one clip."""
    ghosts = misses = visible = 0
    tracked = {n: FaceTracks(confirm_frames=n) for n in (1, CONFIRM_FRAMES)}
    counted: dict[int, set] = {n: set() for n in tracked}
    for index, (faces, truth) in enumerate(zip(clip.detections, clip.truth, strict=True)):
        faces = apply(faces, rule)
        on_face = [f for f in faces if truth is not None and iou(f.box, truth) >= 0.3]
        inside = truth is not None and truth[0] >= 0 and truth[1] >= 0 and truth[2] <= SIZE[0] and truth[3] <= SIZE[1]
        visible += inside
        misses += inside and not on_face
        ghosts += len(faces) - len(on_face)
        predictions = [FacePrediction(i, f.box, f.score, f.landmarks, Prediction(30.0, "male", 0.2, None, None, 5.0))
                       for i, f in enumerate(faces)]
        for n, tracks in tracked.items():
            counted[n] |= {t.track for t in tracks.update(index, predictions)}
    return visible, ghosts, misses, len(clip.detections), {n: len(c) for n, c in counted.items()}


def aaf_sets(aaf: Path, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """300 single-person photos (upscaled to 400 px tall) and 100 canvases of 3 people at sizes 0.6-1.6x."""
    files = sorted((aaf / "images").glob("*.jpg"))
    chosen = [files[i] for i in rng.choice(len(files), size=min(600, len(files)), replace=False)]
    photos = [open_image(f) for f in chosen]
    singles = [as_rgb_array(p.resize((round(p.width * 400 / p.height), 400), Image.BICUBIC)) for p in photos[:300]]
    groups = []
    for k in range(100):
        canvas = Image.fromarray(background((900, 500)))
        x = 10
        for p in photos[300 + 3 * k : 303 + 3 * k]:
            height = round(200 * rng.uniform(0.6, 1.6))
            person = p.resize((round(p.width * height / p.height), height), Image.BICUBIC)
            canvas.paste(person, (x, int(rng.integers(0, 500 - height + 1))))
            x += person.width + int(rng.integers(5, 40))
        groups.append(as_rgb_array(canvas))
    return singles, groups


def detect_all(args: argparse.Namespace) -> dict:
    """Every set's raw detections (suppression off), with what the table needs to score them."""
    rng = np.random.default_rng(args.seed)
    detector = FaceDetector(drop_ghosts=False)
    free = generated_backgrounds(rng) + skimage_samples()
    textured = dict(generated_backgrounds(np.random.default_rng(1)))["weave/60"]
    moving = clips(detector, args.frames, textured)
    for clip in moving:
        clip.detections = [detector.detect(f) for f in clip.frames]
        clip.frames = []  # not needed any more, nor in the cache
    singles, groups = aaf_sets(args.aaf, rng) if args.aaf else ([], [])
    return {"free": [name for name, _ in free], "free_faces": [detector.detect(pixels) for _, pixels in free],
            "moving": moving, "single_faces": [detector.detect(p) for p in singles],
            "group_faces": [detector.detect(p) for p in groups]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aaf", type=Path, help="All-Age-Faces folder (images/): single photos and group canvases")
    ap.add_argument("--frames", type=int, default=100, help="frames per moving-face clip (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, help="keep the raw detections in this file (pickle) and reuse them: "
                    "the rules can then be changed and scored again in seconds")
    args = ap.parse_args(argv)
    t0 = time.time()
    if args.cache and args.cache.exists():
        found = pickle.loads(args.cache.read_bytes())
    else:
        found = detect_all(args)
        if args.cache:
            args.cache.write_bytes(pickle.dumps(found))
    free, free_faces, moving = found["free"], found["free_faces"], found["moving"]
    single_faces, group_faces = found["single_faces"], found["group_faces"]
    singles = single_faces
    print(f"$ {' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}")
    print(f"{len(free)} face-free images ({sum(n.startswith('skimage') for n in free)} from scikit-image); "
          f"{len(moving)} clips of {args.frames} frames ({', '.join(c.name for c in moving)})"
          + (f"; {len(singles)} AAF photos, {len(group_faces)} AAF groups of 3" if single_faces else ""))
    head = ("| rule | false faces / face-free image | ghosts / clip frame | face missed / clip frame | tracks per clip "
            f"(confirm 1 / {CONFIRM_FRAMES}) |")
    if single_faces:
        head += " AAF photos: found, extra boxes | AAF groups: faces found of 300, extra boxes |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for rule in RULES:
        false = sum(len(apply(f, rule)) for f in free_faces) / len(free)
        figures = [clip_figures(c, rule) for c in moving]
        frames = sum(f[3] for f in figures)
        ghosts = sum(f[1] for f in figures) / frames
        misses = sum(f[2] for f in figures) / max(1, sum(f[0] for f in figures))
        tracks1 = np.mean([f[4][1] for f in figures])
        tracksn = np.mean([f[4][CONFIRM_FRAMES] for f in figures])
        line = f"| {rule[0]} | {false:.3f} | {ghosts:.3f} | {misses:.3f} | {tracks1:.2f} / {tracksn:.2f} |"
        if single_faces:
            kept = [apply(f, rule) for f in single_faces]
            found = sum(bool(k) for k in kept)
            extra = sum(max(0, len(k) - 1) for k in kept)
            g_kept = [apply(f, rule) for f in group_faces]
            g_found = sum(min(3, len(k)) for k in g_kept)
            g_extra = sum(max(0, len(k) - 3) for k in g_kept)
            line += f" {found}/{len(singles)}, {extra} | {g_found}, {g_extra} |"
        print(line)
    print(f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
