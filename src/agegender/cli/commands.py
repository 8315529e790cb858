"""``agegender train``, ``evaluate``, ``export`` and ``serve``: each reads its options, calls the library, and says
what it did in one line."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from agegender.cli.options import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, needs
from agegender.io.outputs import check_folder, check_writable

log = logging.getLogger("agegender")


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from agegender.training.config import TrainConfig
    from agegender.training.trainer import fit

    flags = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    config = args.config
    run_config = Path(args.out) / "config.yaml" if args.out else None
    if args.resume and run_config is not None and run_config.exists():
        # A resumed run continues its own recipe: the flags given are checked against it, not another YAML.
        if config:
            log.info("--resume: using %s, not --config %s", run_config, config)
        config = str(run_config)
    cfg = TrainConfig.from_sources(config, flags)
    check_folder(cfg.out, "--out")  # now, not after the first epoch
    summary = fit(cfg, resume=args.resume, progress=not args.quiet)
    best = summary.get("best", {})
    log.info("done: %s (best %s %s)", Path(cfg.out) / "best.pt", best.get("metric", "validation score"),
             best.get("value"))
    if summary.get("unreadable_images"):
        log.warning("%d images could not be read and were left out (each is named above)",
                    summary["unreadable_images"])
        return EXIT_PARTIAL
    return EXIT_OK


def _evaluation_records(args: argparse.Namespace) -> tuple[list, str, int]:
    """The records to evaluate (all, or one subset of a split file), a description of them, and how many
    files were skipped for their labels."""
    from agegender.data import sources as S

    scanned = S.scan(args.data, args.labels)
    records, scope = scanned.records, "all labelled images"
    if args.split_file:
        split = S.read_split(args.split_file)
        records = S.select(records, split, args.subset)
        missing = sum(1 for v in split.values() if v == args.subset) - len(records)
        if missing:
            log.warning("%d files of subset %s in %s are not in %s", missing, args.subset, args.split_file, args.data)
        scope = f"subset {args.subset} of {args.split_file}"
        if not records:
            from agegender.errors import DataError

            raise DataError(f"no image of {scope} found in {args.data}")
    return records, scope, len(scanned.skipped)


def cmd_evaluate(args: argparse.Namespace) -> int:
    needs(("pandas", "matplotlib"), "eval", "evaluate")
    from agegender.evaluation.evaluate import evaluate, headline, predictions_path, write_report
    from agegender.inference.predictor import Predictor
    from agegender.model.checkpoint import resolve_model_path

    check_writable(args.out, "--out")
    check_writable(predictions_path(args.out, args.predictions), "--predictions")
    model_path = resolve_model_path(args.model)
    predictor = Predictor.from_checkpoint(model_path, device=args.device, flip_tta=args.tta, runtime=args.runtime)
    records, scope, skipped_labels = _evaluation_records(args)
    df, rep = evaluate(predictor, args.data, records, detect=args.detect, face=args.face, min_face=args.min_face,
                       damage=args.damage, batch_size=args.batch_size, workers=args.workers,
                       progress=not args.quiet)
    rep["meta"] |= {"model": str(model_path), "data": str(args.data), "labels": args.labels, "scope": scope,
                    "skipped_labels": skipped_labels}
    write_report(df, rep, args.out, args.predictions, scope)
    log.info("%s -> %s", headline(rep), args.out)
    skipped = rep["meta"]["skipped_unreadable_or_no_face"]
    if skipped:
        log.warning("%d of %d images were left out: unreadable, or without a usable face (each is named above)",
                    skipped, len(records))
        return EXIT_PARTIAL
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    needs(("torch", "torchvision", "onnx"), "train", "export")
    from agegender.model.checkpoint import resolve_model_path
    from agegender.model.export import export_checkpoint

    check_writable(args.out, "--out")
    out = export_checkpoint(resolve_model_path(args.model), args.out, args.opset)
    log.info("wrote %s", out)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from agegender.serving.app import create_app
        from agegender.serving.http import allowed_hosts, listen, raise_open_files_limit, serve
    except ImportError:
        log.error("agegender serve needs FastAPI and uvicorn, which this installation lacks: pip install agegender")
        return EXIT_USAGE
    from agegender.compute.allocator import limit_arenas
    from agegender.inference.predictor import Predictor
    from agegender.model.checkpoint import resolve_model_path

    # One malloc arena for the whole service, set before any worker thread allocates (agegender.allocator).
    limit_arenas(1)
    open_files = raise_open_files_limit()
    hosts = allowed_hosts(args.allowed_hosts, args.host)
    sock = listen(args.host, args.port)  # a taken port or a bad address is said now, before the model loads
    try:
        predictor = Predictor.from_checkpoint(resolve_model_path(args.model), device=args.device,
                                              runtime=args.runtime)
        path = predictor.source  # the file run: the bundled model's ONNX export, not the checkpoint beside it
        app = create_app(predictor, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), timeout_s=args.timeout,
                         max_queue=args.max_queue, workers=args.workers, model_name=path.name,
                         max_faces=args.max_faces, allowed_hosts=hosts, docs=args.docs,
                         max_batch=args.max_batch, batch_window_s=args.batch_window_ms / 1000,
                         max_live=args.max_live, live_idle_s=args.live_idle_timeout)
        port = sock.getsockname()[1]
        log.info("model %s (%s, on %s); http://%s:%d/ (Host names answered: %s; %d live connections at most, %d "
                 "open files)", path, predictor.model.config.backbone, predictor.device, args.host, port,
                 ", ".join(hosts) if hosts else "any", args.max_live, open_files)
        started = serve(app, sock, args.header_timeout, args.quiet)
    finally:
        sock.close()
    return EXIT_OK if started else EXIT_USAGE
