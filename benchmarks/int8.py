"""int8 quantisation of an exported model: what it saves per image on this CPU, and what it costs on validation.

    python benchmarks/int8.py --utk UTKFACE_DIR [--aaf AAF_DIR] [--model CKPT] [--out runs/int8]

Quantises the model's ONNX export (the bundled ``default_model.onnx`` by default) statically with onnxruntime's
tools: weights int8 per channel, activations uint8, QDQ format, calibrated (min-max) on 256 seeded images of the
UTKFace *training* subset and their mirror images, so nothing of validation is seen. Then times the float32 and
int8 networks alone (one onnxruntime thread, batches of 8 and 32, CPU seconds per image), and scores both on each
source's validation subset through the same path as ``benchmarks/sources.py`` (mirror pass as the model's
default). Issue 14 allows int8 where it costs <= 0.05 years and <= 0.2 points of gender accuracy.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from agegender.data.sources import Source, folder_split, select
from agegender.evaluation.evaluate import evaluate
from agegender.inference.predictor import Predictor, _exported
from agegender.inference.preprocess import normalise, resize_crop
from agegender.model.checkpoint import load_checkpoint, resolve_model_path
from agegender.model.onnx import INPUT_NAME, OnnxModel

CALIBRATION_IMAGES = 256


def quantise(src: Path, dest: Path, batches: list[np.ndarray]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self.items, None)
            return None if batch is None else {INPUT_NAME: batch}

    pre = dest.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    pre.unlink()


def cpu_ms_per_image(path: Path, batch: int, seconds: float = 3.0) -> float:
    model = OnnxModel(path, threads=1)
    x = np.random.default_rng(0).standard_normal((batch, 3, model.config.image_size, model.config.image_size),
                                                 dtype=np.float32)
    model(x)
    start, n = time.process_time(), 0
    while time.process_time() - start < seconds:
        model(x)
        n += batch
    return 1000 * (time.process_time() - start) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utk", required=True, help="UTKFace folder (calibration images and a validation subset)")
    ap.add_argument("--aaf", help="All-Age-Faces folder (images/ and labels.csv), scored as well")
    ap.add_argument("--model", help="checkpoint whose ONNX export is quantised (default: the bundled model)")
    ap.add_argument("--out", default="runs/int8")
    args = ap.parse_args(argv)
    t0 = time.time()
    model = resolve_model_path(args.model)
    ckpt = load_checkpoint(model)
    fp32 = _exported(model)  # the shipped export for the bundled model, else one made once into the cache
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    int8 = out / "model_int8.onnx"

    reference = Predictor.from_checkpoint(fp32)
    records, split, _ = folder_split(ckpt, args.utk)
    train = sorted(select(records, split, "train"), key=lambda r: r.file)
    chosen = random.Random(0).sample(train, min(CALIBRATION_IMAGES, len(train)))
    crops = np.stack([resize_crop(Image.open(Path(args.utk) / r.file).convert("RGB"), reference.preset)
                      for r in chosen])
    x = normalise(crops, reference.preset)
    x = np.concatenate([x, x[..., ::-1]])
    quantise(fp32, int8, [np.ascontiguousarray(x[i : i + 32]) for i in range(0, len(x), 32)])
    predictors = {"float32": reference, "int8": Predictor.from_checkpoint(int8)}

    print(f"$ {' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}")
    print(f"float32 {fp32} ({fp32.stat().st_size / 1e6:.1f} MB), int8 {int8} ({int8.stat().st_size / 1e6:.1f} MB); "
          f"calibrated on {len(chosen)} UTKFace training images and their mirror images")
    print("| network alone, 1 thread | batch 8 | batch 32 |")
    print("|---|---|---|")
    for name, path in (("float32", fp32), ("int8", int8)):
        print(f"| {name} | {cpu_ms_per_image(path, 8):.2f} ms | {cpu_ms_per_image(path, 32):.2f} ms |")

    sources = [Source(args.utk, name="UTKFace")]
    if args.aaf:
        sources.append(Source(str(Path(args.aaf) / "images"), str(Path(args.aaf) / "labels.csv"), True, "largest",
                              60, "AAF"))
    print(f"\nvalidation, mirror pass {reference.flip_tta}: | source | n | model | age MAE | gender acc |")
    for source in sources:
        recs, sp, _ = folder_split(ckpt, source.data, source.labels)
        val = select(recs, sp, "val")
        for name, predictor in predictors.items():
            _, rep = evaluate(predictor, source.data, val, detect=source.detect, face=source.face,
                              min_face=source.min_face, progress=False)
            print(f"| {source.key} | {rep['n']} | {name} | {rep['age_mae']:.3f} | "
                  f"{100 * rep['gender_accuracy']:.2f}% |")
    print(f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
