"""Estimate agegender.faces.align.UTKFACE_TEMPLATE: the mean MTCNN landmarks on a seeded random sample of UTKFace crops.

    python scripts/estimate_template.py --data /path/to/UTKFace --n 2000 --seed 0

Prints the template as a numpy literal (paste it into faces.py), the number of crops with a face and the per-point
standard deviation of the landmarks. The crops are read in place; nothing is written.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from agegender.errors import ImageReadError
from agegender.faces.align import estimate_template
from agegender.faces.detect import Face, FaceDetector
from agegender.io.images import open_image


class RecordingDetector(FaceDetector):
    """Remembers the landmarks estimate_template uses (the best face per crop), for the spread."""

    def __init__(self) -> None:
        super().__init__()
        self.landmarks: list[np.ndarray] = []

    def detect(self, image: Image.Image | np.ndarray) -> list[Face]:
        faces = super().detect(image)
        if faces:
            self.landmarks.append(np.asarray(faces[0].landmarks))
        return faces


def crops(paths: list[Path]) -> Iterator[Image.Image]:
    for i, path in enumerate(paths, 1):
        try:
            yield open_image(path)
        except ImageReadError as e:
            print(f"skipped: {e}", file=sys.stderr)  # noqa: T201
        if i % 200 == 0:
            print(f"{i}/{len(paths)} crops", file=sys.stderr)  # noqa: T201


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of UTKFace 200x200 crops (*.jpg)")
    parser.add_argument("--n", type=int, default=2000, help="number of crops to sample (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: the cascade is many small ops, which extra threads slow down on a busy CPU)",
    )
    args = parser.parse_args(argv)
    if args.n <= 0:
        parser.error("--n must be positive")
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder")
    torch.set_num_threads(args.threads)

    paths = sorted(p for p in args.data.iterdir() if p.suffix.lower() == ".jpg")
    if not paths:
        parser.error(f"no .jpg files in {args.data}")
    sample = random.Random(args.seed).sample(paths, min(args.n, len(paths)))

    detector = RecordingDetector()
    start = time.perf_counter()
    template, count = estimate_template(crops(sample), detector)
    seconds = time.perf_counter() - start
    spread = np.std(np.stack(detector.landmarks), axis=0)

    with np.printoptions(precision=2, suppress=True, floatmode="fixed"):
        print(f"# {count} of {len(sample)} crops with a face ({100 * count / len(sample):.1f}%), {seconds:.1f} s")  # noqa: T201
        print("UTKFACE_TEMPLATE = np." + repr(np.round(template, 2)))  # noqa: T201
        print("# per-point standard deviation (x, y) in pixels:")  # noqa: T201
        print(repr(spread))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
