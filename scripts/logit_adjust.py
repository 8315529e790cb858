"""Post-hoc logit adjustment of a dldl checkpoint's age head (Menon et al., "Long-tail learning via logit
adjustment", ICLR 2021): the age-bin logits lose ``tau x log(training prior / group-balanced prior)``, so the
network answers as if every age group were equally common. Free at inference: the shift is added to the bias of
the head's last layer, so every runtime (torch, the ONNX export) carries it without a line of inference code.

    python scripts/logit_adjust.py --model CKPT --source UTKFACE_DIR \
        --source AAF_DIR/images,labels=AAF_DIR/labels.csv,detect=true,face=largest,min_face=60 \
        [--taus -0.5,-0.25,0,0.25,0.5,0.75,1,1.25] --out ADJUSTED.pt

The sources are split as the checkpoint's training split them (``agegender.data.sources.folder_split``). The
training prior is the pooled training subsets' age histogram (smoothed, as ``--age-balance`` smooths it); ``tau``
is chosen on the pooled validation subsets by balanced MAE (the mean of the age groups' MAEs), with the model's own
prediction path (mirror averaging as calibrated). The chosen checkpoint's age interval is refitted on the same
validation subsets. A negative tau moves a model trained with balanced softmax back towards the training prior.
Prints a table of every tau, and the command that made it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from agegender.data import sources as S
from agegender.evaluation.metrics import MIN_GROUP, balanced_age_figures
from agegender.model.checkpoint import load_model, resolve_model_path, save_checkpoint
from agegender.training.calibration import calibrate
from agegender.training.datasets import FaceDataset, concat_datasets, make_loader
from agegender.training.losses import prior_logit_shift
from agegender.training.transforms import eval_preset


def validation_and_prior(ckpt: dict, specs: list[str]) -> tuple[list[tuple[S.Source, list]], np.ndarray]:
    """Each source's validation records, and the pooled training ages."""
    sets, train_ages = [], []
    for spec in specs:
        source = S.parse_source(spec)
        records, split, how = S.folder_split(ckpt, source.data, source.labels)
        logging.info("%s: %s", source.key, how)
        sets.append((source, S.select(records, split, "val")))
        train_ages += [r.age for r in S.select(records, split, "train")]
    return sets, np.asarray(train_ages, float)


@torch.inference_mode()
def age_logits(model: torch.nn.Module, loader, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [N, K] (and of the mirror images, [2, N, K] with ``flip``), indices [N])`` of the loader's items."""
    views, index = [], []
    for batch in loader:
        if batch is None:  # every image of the batch unreadable
            continue
        x, _, idx = batch
        passes = [x, x.flip(-1)] if flip else [x]
        views.append(np.stack([model(v)["age_logits"].float().numpy() for v in passes]))
        index.append(np.asarray(idx))
    return np.concatenate(views, axis=1), np.concatenate(index)


def expected_age(logits: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The mean over views of each image's expected age under ``softmax(logits + shift)``: ``[V, N, K]`` -> ``[N]``."""
    z = logits + shift
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ np.arange(logits.shape[-1], dtype=np.float64)).mean(0)


def figures(age: np.ndarray, true: np.ndarray, prefix: str, min_group: int) -> dict:
    """MAE, balanced MAE and the largest group bias of ``age`` against ``true``, keyed ``PREFIX_...``."""
    f = balanced_age_figures(age, true, min_group)
    return {f"{prefix}_mae": float(np.abs(age - true).mean()), f"{prefix}_balanced_mae": f["balanced_age_mae"],
            f"{prefix}_worst_bias": f["worst_age_bias"], f"{prefix}_worst_group": f["worst_bias_group"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="dldl checkpoint (default: the bundled model)")
    ap.add_argument("--source", action="append", required=True, help="as agegender train --source")
    ap.add_argument("--taus", default="-0.5,-0.25,0,0.25,0.5,0.75,1,1.25")
    ap.add_argument("--min-group", type=int, default=MIN_GROUP,
                    help=f"images an age group needs to count in the balanced MAE (default {MIN_GROUP})")
    ap.add_argument("--out", required=True, help="the adjusted checkpoint to write")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    path = resolve_model_path(args.model)
    model, ckpt = load_model(path)
    if model.config.age_head != "dldl":
        raise SystemExit(f"{path} has a {model.config.age_head} age head: logit adjustment needs dldl")
    model.eval()
    sets, train_ages = validation_and_prior(ckpt, args.source)
    preset = model.config.preset
    dataset = concat_datasets([FaceDataset(s.data, recs, eval_preset(preset), s.loader()) for s, recs in sets])
    records = [r for _, recs in sets for r in recs]
    flip = bool(ckpt.get("inference", {}).get("flip_tta", False))
    logits, index = age_logits(model, make_loader(dataset, 128, False, 0, torch.device("cpu")), flip)
    true = np.array([records[i].age for i in index])
    owner = np.concatenate([[k] * len(recs) for k, (_, recs) in enumerate(sets)])[index]
    n_bins = logits.shape[-1]
    rows = []
    for tau in (float(t) for t in args.taus.split(",")):
        age = expected_age(logits, -prior_logit_shift(train_ages, n_bins, tau))
        rows.append({"tau": tau, **figures(age, true, "pooled", args.min_group)}
                    | {k: v for i, (s, _) in enumerate(sets)
                       for k, v in figures(age[owner == i], true[owner == i], s.key, args.min_group).items()})
    best = min(rows, key=lambda r: r["pooled_balanced_mae"])
    print("$ python scripts/logit_adjust.py " + " ".join(sys.argv[1:]))  # noqa: T201
    print(f"model {path}; pooled validation n={len(true)} ({', '.join(s.key for s, _ in sets)}); "  # noqa: T201
          f"mirror averaging {'on' if flip else 'off'}")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))  # noqa: T201
    for r in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()]
        print("| " + " | ".join(cells) + (" | <- lowest balanced MAE" if r is best else " |"))  # noqa: T201
    shift = torch.from_numpy(-prior_logit_shift(train_ages, n_bins, best["tau"])).float()
    last = model.age_head[-1]
    with torch.no_grad():
        last.bias += shift
    state = {k: v for k, v in model.state_dict().items() if k in ckpt["model_state"]}
    out = {**ckpt, "model_state": state,
           "calibration": {**ckpt.get("calibration", {}),
                           "logit_adjustment": {"tau": best["tau"], "sources": [s.key for s, _ in sets],
                                                "chosen_by": "pooled validation balanced age MAE"}}}
    save_checkpoint(out, args.out)
    print(calibrate(Path(args.out), make_loader(dataset, 128, False, 0, torch.device("cpu")), records,  # noqa: T201
                    torch.device("cpu"), ckpt.get("calibration", {}).get("age_interval", {}).get("coverage", 0.8)))


if __name__ == "__main__":
    main()
