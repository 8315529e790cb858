"""Average two checkpoints of the same network weight by weight: ``(1 - alpha) * A + alpha * B``.

    python scripts/average_weights.py A.pt B.pt --alpha 0.5 --out SOUP.pt
    python scripts/recalibrate.py --model SOUP.pt --run RUN_OF_B --tta      # refit the age interval

Weight-space averaging of a model and its own fine-tuned version ("WiSE-FT", Wortsman et al., CVPR 2022) keeps
much of what the fine-tuning added while giving back some of what it lost; it works when B was fine-tuned from A
(the two lie in one basin), not for two independent trainings. Integer buffers (BatchNorm's batch counter) are
taken from B. The result carries B's training record (its split is the one to score it on) with a ``soup`` entry
naming both parents, and no calibration: refit it on validation with ``scripts/recalibrate.py``.
"""

from __future__ import annotations

import argparse
import logging

from agegender.errors import CheckpointError
from agegender.model.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger("average_weights")


def average(a: dict, b: dict, alpha: float) -> dict:
    """The checkpoint dict of ``(1 - alpha) * a + alpha * b`` (see the module docstring)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if a["model_config"] != b["model_config"] or a["model_state"].keys() != b["model_state"].keys():
        raise CheckpointError("the two checkpoints are not the same network (model_config or weight names differ)")
    state = {}
    for name, wa in a["model_state"].items():
        wb = b["model_state"][name]
        state[name] = ((1 - alpha) * wa.double() + alpha * wb.double()).to(wa.dtype) if wa.is_floating_point() else wb
    out = {k: b[k] for k in ("format", "format_version", "model_config", "age_normalisation", "labels", "inference")
           if k in b}
    return out | {"model_state": state, "training": dict(b.get("training", {}))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="checkpoint A (e.g. the model fine-tuning started from)")
    ap.add_argument("b", help="checkpoint B (e.g. the fine-tuned model)")
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of B (default 0.5)")
    ap.add_argument("--out", required=True, help="checkpoint to write")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    soup = average(load_checkpoint(args.a), load_checkpoint(args.b), args.alpha)
    soup["training"]["soup"] = {"a": args.a, "b": args.b, "alpha": args.alpha}
    save_checkpoint(soup, args.out)
    log.info("wrote %s (%.2f x %s + %.2f x %s); refit its interval with scripts/recalibrate.py", args.out,
             1 - args.alpha, args.a, args.alpha, args.b)


if __name__ == "__main__":
    main()
