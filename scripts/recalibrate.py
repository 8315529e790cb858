"""Switch a checkpoint's default flip test-time augmentation and refit its age interval (and, with
--age-map, its quantile age map) on validation.

    python scripts/recalibrate.py --model CKPT --data UTKFACE_DIR --split-file RUN/split.csv [--tta | --no-tta] \
        [--age-map | --no-age-map]

The interval is fitted on the validation subset of the split file, with the same prediction path (mirror
averaging or not) that predict, evaluate and the service will then use by default.
"""

from __future__ import annotations

import argparse
import logging

import torch

from agegender import sources as S
from agegender.calibration import calibrate
from agegender.checkpoint import load_checkpoint, save_checkpoint
from agegender.datasets import FaceDataset, make_loader
from agegender.model import ModelConfig
from agegender.transforms import eval_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--tta", action=argparse.BooleanOptionalAction, required=True)
    ap.add_argument("--coverage", type=float, default=0.8)
    ap.add_argument("--age-map", action=argparse.BooleanOptionalAction, default=False,
                    help="fit a quantile map of the age estimates on validation (see agegender.metrics.fit_age_map)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ckpt = load_checkpoint(args.model)
    ckpt["inference"] = {**ckpt.get("inference", {}), "flip_tta": args.tta}
    save_checkpoint(ckpt, args.model)
    records = S.select(S.scan(args.data).records, S.read_split(args.split_file), "val")
    preset = ModelConfig.from_dict(ckpt["model_config"]).preset
    loader = make_loader(FaceDataset(args.data, records, eval_preset(preset)), 128, False, 1, torch.device("cpu"))
    print(calibrate(args.model, loader, records, torch.device("cpu"), args.coverage, age_map=args.age_map))  # noqa: T201


if __name__ == "__main__":
    main()
