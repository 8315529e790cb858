"""What cheaper inference would cost: the bundled model's export on its validation subset with and without the
mirror pass, in float32 and quantised to int8 (onnxruntime's static quantisation, calibrated on training crops).

    python benchmarks/variants.py --data UTKFACE_DIR [--calibration 512] [--work runs/variants]

The split is recomputed from default_model.pt (agegender.data.sources.split_from_checkpoint); nothing is tuned on the
test subset. Quantised variants: every layer, and only the 1x1 convolutions (the depthwise and first convolutions
and the heads kept in float32). Prints validation age MAE and gender accuracy, their change against the shipped
float32 export with mirror averaging, and crops per CPU-second of the network alone (one thread, batches of 16).
Needs the onnx package (the train extra).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from agegender.compute.pools import parallel_map
from agegender.data.sources import split_from_checkpoint
from agegender.evaluation.metrics import age_mae, gender_accuracy
from agegender.inference.predictor import Predictor
from agegender.inference.preprocess import normalise
from agegender.io.images import open_image
from agegender.model.checkpoint import BUNDLED_MODEL, BUNDLED_ONNX, load_checkpoint
from agegender.model.onnx import OnnxModel


def crops(predictor: Predictor, data: Path, files: list[str]) -> np.ndarray:
    return np.stack(parallel_map(lambda f: predictor.prepare(open_image(data / f)), files))


def quantise(source: Path, out: Path, calibration: np.ndarray, predictor: Predictor, pointwise_only: bool) -> Path:
    """``source`` quantised to int8 (QDQ, per-channel weights, percentile calibration on ``calibration`` crops and
    their mirror images) into ``out``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared))
    batches = [normalise(calibration[i : i + 32], predictor.preset) for i in range(0, len(calibration), 32)]
    batches += [np.ascontiguousarray(b[..., ::-1]) for b in batches]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    options: dict = {}
    if pointwise_only:
        convs = [n for n in onnx.load(prepared).graph.node if n.op_type == "Conv"]
        grouped = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
        options = {"op_types_to_quantize": ["Conv"], "nodes_to_exclude": grouped + [convs[0].name]}
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.Percentile, **options)
    return out


def score(model: OnnxModel, ckpt: dict, val: np.ndarray, ages: np.ndarray, genders: np.ndarray,
          mirror: bool) -> tuple[float, float, float]:
    """(val age MAE, gender accuracy in %, crops per CPU-second) of ``model``."""
    predictor = Predictor(model, checkpoint=ckpt, flip_tta=mirror, workers=1)
    t0 = time.process_time()
    out = predictor.predict_crops(val)
    seconds = time.process_time() - t0
    return age_mae(out["age"], ages), 100 * gender_accuracy(out["p_female"], genders), len(val) / seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the UTKFace folder the bundled model was trained on")
    ap.add_argument("--calibration", type=int, default=512, help="training crops for the int8 calibration")
    ap.add_argument("--work", default="runs/variants", help="folder for the quantised files")
    args = ap.parse_args(argv)
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(BUNDLED_MODEL)
    records, split, same = split_from_checkpoint(ckpt, data)
    val = [r for r in records if split[r.file] == "val"]
    train = [r.file for r in records if split[r.file] == "train"]
    predictor = Predictor(OnnxModel(BUNDLED_ONNX, threads=1), checkpoint=ckpt)
    pick = np.random.default_rng(0).choice(len(train), size=min(args.calibration, len(train)), replace=False)
    val_crops = crops(predictor, data, [r.file for r in val])
    ages, genders = np.array([r.age for r in val]), np.array([r.gender for r in val])
    calibration = crops(predictor, data, [train[i] for i in sorted(pick)])
    files = {"float32 (shipped)": BUNDLED_ONNX,
             "int8, every layer": quantise(BUNDLED_ONNX, work / "int8_all.onnx", calibration, predictor, False),
             "int8, 1x1 convolutions only": quantise(BUNDLED_ONNX, work / "int8_pw.onnx", calibration, predictor,
                                                     True)}
    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"validation subset of {BUNDLED_MODEL.name}: {len(val)} crops (same data as in training: {same}); "
          f"int8 calibrated on {len(calibration)} training crops and their mirror images")
    print("| model | mirror pass | val age MAE | change | gender accuracy | change | crops per CPU-second |")
    print("|---|---|---|---|---|---|---|")
    reference = None
    for name, path in files.items():
        for mirror in (True, False):
            mae, acc, speed = score(OnnxModel(path, threads=1), ckpt, val_crops, ages, genders, mirror)
            reference = reference or (mae, acc)
            print(f"| {name} | {'yes' if mirror else 'no'} | {mae:.4f} | {mae - reference[0]:+.3f} | {acc:.2f}% | "
                  f"{acc - reference[1]:+.2f} | {speed:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
