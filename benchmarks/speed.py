"""Inference speed on this machine: face crops per second (batch 1 and 64, torch vs onnxruntime) and the
end-to-end latency of one 640x480 photo with one face (decode, detect, align, predict).

    python benchmarks/speed.py [--model CKPT] [--runs 50]

The photo is examples/astronaut.png (one face) resized to 640x480 and JPEG-encoded; decoding starts from those
bytes. Crops are the photo's aligned face crop (200x200), preprocessed by the model's eval preset each time.
"""

from __future__ import annotations

import argparse
import io
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from agegender.checkpoint import resolve_model_path
from agegender.faces import align
from agegender.images import open_image
from agegender.predictor import Predictor

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"


def crops_per_second(predictor: Predictor, crop: Image.Image, batch: int, seconds: float = 4.0) -> float:
    images = [crop] * batch
    predictor.predict(images, batch)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        predictor.predict(images, batch)
        n += batch
    return n / (time.perf_counter() - t0)


def photo_latency(predictor: Predictor, jpeg: bytes, runs: int) -> list[float]:
    times = []
    for i in range(runs + 3):
        t0 = time.perf_counter()
        faces = predictor.predict_faces([open_image(jpeg)])[0]
        if i >= 3:  # warm-up
            times.append(1000 * (time.perf_counter() - t0))
        assert len(faces) == 1, f"expected one face, found {len(faces)}"
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint (default: the bundled model)")
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args(argv)
    model = resolve_model_path(args.model)
    photo = Image.open(EXAMPLE).convert("RGB").resize((640, 480))
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    rows = []
    for runtime in ("torch", "onnx"):
        predictor = Predictor.from_checkpoint(model, runtime=runtime)
        face = predictor.detector.detect(photo)[0]
        crop = align(photo, face.landmarks)
        b1, b64 = crops_per_second(predictor, crop, 1), crops_per_second(predictor, crop, 64)
        lat = sorted(photo_latency(predictor, jpeg, args.runs))
        p50, p95 = statistics.median(lat), lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
        rows.append((runtime, b1, b64, p50, p95))
    cfg = predictor.model.config
    print(f"$ {' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}")
    print(f"model {model} ({cfg.backbone}, {cfg.image_size} px); CPU, {torch.get_num_threads()} torch threads; "
          f"photo latency over {args.runs} runs after 3 warm-ups")
    print("| runtime | crops/s batch 1 | crops/s batch 64 | 640x480 photo p50 ms | p95 ms |")
    print("|---|---|---|---|---|")
    for runtime, b1, b64, p50, p95 in rows:
        print(f"| {runtime} | {b1:.1f} | {b64:.1f} | {p50:.1f} | {p95:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
