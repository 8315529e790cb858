"""``agegender`` command line: train, evaluate, predict, export, serve. A thin layer over the library.

Exit status: 0 success; 1 finished, but some input files could not be read (they are listed, the rest is
written); 2 a user error (bad arguments, data, checkpoint or weights: one line says what to do); 130 interrupted
(Ctrl-C); 143 terminated (SIGTERM). Interrupted or terminated, every output is finished with what was done.
"""

from __future__ import annotations

import logging
import sys
import warnings

from agegender import errors
from agegender.cli.commands import cmd_evaluate, cmd_export, cmd_serve, cmd_train
from agegender.cli.options import EXIT_BUG, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, build_parser
from agegender.cli.predict import cmd_predict

log = logging.getLogger("agegender")


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)


# A user's error: exit 2 and one line. OSError too: the machine said no (permissions, a full disk, a missing device).
USER_ERRORS = (errors.DataError, errors.CheckpointError, errors.ImageReadError, errors.OutputError, errors.VideoError,
               errors.MissingExtra, errors.NonFiniteLossError, errors.PretrainedWeightsError, FileNotFoundError,
               ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(argv).parse_args(argv)
    except errors.MissingExtra as e:
        _setup_logging(0)
        log.error("%s", e)
        return EXIT_USAGE
    _setup_logging(-1 if args.quiet else args.verbose)
    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export,
                "serve": cmd_serve}
    # Pillow warns about every odd EXIF tag of a hostile file; the gate (images.open_image) already reports
    # what matters in one line per file. Set once for the process, never toggled (toggling is not thread-safe).
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")  # refused by the gate
    from agegender.io.outputs import Terminated, terminate_like_ctrl_c

    try:
        # SIGTERM stops the work as Ctrl-C does, so the rows so far are written and every file finished.
        with terminate_like_ctrl_c():
            return handlers[args.command](args)
    except Terminated:
        log.error("terminated (SIGTERM)")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - sorted below: the user's error, the machine's, or a bug
        if isinstance(e, USER_ERRORS):
            log.error("%s", errors.one_line(e))
            return EXIT_USAGE
        # A bug: one line, the traceback with -v, and a code of its own.
        log.error("internal error, please report it: %s: %s (run with -v for the traceback)", type(e).__name__,
                  errors.one_line(e))
        log.debug("traceback", exc_info=True)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
