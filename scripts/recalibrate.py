"""Switch a checkpoint's default flip test-time augmentation and refit its age interval (and, with
--age-map, its quantile age map) on validation.

    python scripts/recalibrate.py --model CKPT --data UTKFACE_DIR --split-file RUN/split.csv [--tta | --no-tta] \
        [--age-map | --no-age-map]
    python scripts/recalibrate.py --model CKPT --run RUN [--tta | --no-tta] [--age-map | --no-age-map]

The interval is fitted on the validation subset (of the split file, or with --run of every source of that run,
pooled, as training does), with the same prediction path (mirror averaging or not) that predict, evaluate and the
service will then use by default.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from agegender.data import sources as S
from agegender.model.checkpoint import load_checkpoint, save_checkpoint
from agegender.model.config import ModelConfig
from agegender.training.calibration import calibrate
from agegender.training.config import TrainConfig
from agegender.training.datasets import FaceDataset, concat_datasets, make_loader
from agegender.training.transforms import eval_preset


def validation_sets(args: argparse.Namespace) -> list[tuple[S.Source, list]]:
    """``(source, validation records)`` for each source: the one of --data/--split-file, or a run's."""
    if not args.run:
        if not (args.data and args.split_file):
            raise SystemExit("give --data and --split-file, or --run")
        return [(S.Source(args.data), S.select(S.scan(args.data).records, S.read_split(args.split_file), "val"))]
    run = Path(args.run)
    cfg = TrainConfig.from_sources(run / "config.yaml")
    out = []
    for i, source in enumerate(cfg.source_list()):
        records = S.limit_records(S.scan(source.data, source.labels).records, cfg.limit, cfg.seed)
        out.append((source, S.select(records, S.read_split(run / S.split_file_name(i, source)), "val")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data")
    ap.add_argument("--split-file")
    ap.add_argument("--run", help="a training run folder: its config.yaml and split files name the sources")
    ap.add_argument("--tta", action=argparse.BooleanOptionalAction, required=True)
    ap.add_argument("--coverage", type=float, default=0.8)
    ap.add_argument("--age-map", action=argparse.BooleanOptionalAction, default=False,
                    help="fit a quantile map of the age estimates on validation (see "
                    "agegender.evaluation.metrics.fit_age_map)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ckpt = load_checkpoint(args.model)
    ckpt["inference"] = {**ckpt.get("inference", {}), "flip_tta": args.tta}
    save_checkpoint(ckpt, args.model)
    preset = ModelConfig.from_dict(ckpt["model_config"]).preset
    sets = validation_sets(args)
    dataset = concat_datasets([FaceDataset(s.data, recs, eval_preset(preset), s.loader()) for s, recs in sets])
    records = [r for _, recs in sets for r in recs]
    loader = make_loader(dataset, 128, False, 0, torch.device("cpu"))
    print(calibrate(args.model, loader, records, torch.device("cpu"), args.coverage, age_map=args.age_map))  # noqa: T201


if __name__ == "__main__":
    main()
