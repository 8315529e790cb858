"""``agegender predict --engine ray``: the options checked, then :func:`agegender.cluster.engine.run`."""

from __future__ import annotations

import argparse
import logging
import time

from agegender.cli.options import EXIT_OK, EXIT_PARTIAL, needs, warn_problems

log = logging.getLogger("agegender")


def _refuse_local_only(args: argparse.Namespace) -> None:
    """The options of ``predict`` that the Ray engine does not take, each refused with what to do instead."""
    from agegender.video.clips import is_video

    if not args.inputs:
        raise ValueError("--engine ray: give folders, image files, .txt lists or s3:// prefixes")
    if args.out.lower().endswith((".csv", ".json")):
        raise ValueError(f"--engine ray writes a Parquet dataset: --out must be a folder or s3:// prefix, not "
                         f"{args.out}")
    refused = {"--annotate": args.annotate, "--labels": args.labels, "--tracks": args.tracks,
               "--runtime torch": args.runtime == "torch", f"--device {args.device}": args.device != "cpu"}
    given = [flag for flag, value in refused.items() if value]
    if given:
        raise ValueError(f"--engine ray does not take {', '.join(given)}; run without --engine ray for them")
    if any(is_video(i) for i in args.inputs):
        raise ValueError("--engine ray predicts photos; predict a video without --engine ray")


def cmd_predict_ray(args: argparse.Namespace) -> int:
    needs(("ray", "pyarrow"), "ray", "predict --engine ray")
    _refuse_local_only(args)
    from agegender.cluster.engine import Job, run
    from agegender.cluster.storage import Storage

    job = Job(sources=list(args.inputs), dest=args.out, storage=Storage(endpoint=args.s3_endpoint),
              model=args.model, aligned=args.aligned, tta=args.tta, min_face=args.min_face,
              det_threshold=args.det_threshold, max_faces=args.max_faces, batch_size=args.batch_size,
              block_size=args.block_size, workers=args.workers, address=args.address, progress=not args.quiet)
    started = time.monotonic()
    try:
        summary = run(job)
    except KeyboardInterrupt:
        log.warning("stopped: %s holds the blocks finished so far; run the same command again to resume", args.out)
        raise
    warn_problems(summary.problems)
    log.info("%d inputs (%d already done): %d predicted in %.1f s, %d faces, %d without a face, %d problems -> %s",
             summary.inputs, summary.skipped, summary.done, time.monotonic() - started, summary.faces,
             summary.no_face, len(summary.problems), args.out)
    return EXIT_PARTIAL if summary.problems else EXIT_OK
