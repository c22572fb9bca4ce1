"""Command line: ``scellst run``, ``scellst predict`` and ``scellst demo``.

Each command writes a SpatialData zarr store stage by stage and resumes an interrupted run
(see ``docs/cli.md``). The entry point is :func:`main`.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback

from ._config import read_config
from ._errors import CLIError
from ._options import RUN_SOURCES, build_parser

log = logging.getLogger("scellst")

#: Errors of the library whose message says what to fix: shown without a traceback.
_USER_ERRORS = (CLIError, FileNotFoundError, FileExistsError, ValueError, KeyError, TypeError)


def parse_args(argv: list[str] | None = None):
    """The options of the command line, with those of ``--config`` under the flags."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    if args.config is None:
        return args
    sub = subparsers[args.command]
    try:
        values = read_config(args.config, sub, args.command)
    except CLIError as e:
        sub.error(str(e))
    if args.command == "run" and any(getattr(args, s) is not None for s in RUN_SOURCES):
        for source, companions in RUN_SOURCES.items():  # an input flag replaces the file's
            for key in (source, *companions):
                values.pop(key, None)
    sub.set_defaults(**values)
    return parser.parse_args(argv)


def _log_to_stderr() -> logging.Handler:
    """Show scellst's own progress messages (not those of the libraries it uses)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    # ome-zarr warns about every labels element it reads ("no parent found"): not actionable
    logging.getLogger("ome_zarr").setLevel(logging.ERROR)
    return handler


def main(argv: list[str] | None = None) -> int:
    """Run the ``scellst`` command line; return the exit status.

    ``0``: success; ``1``: an error in the data or a setting (the message says what to fix);
    ``2``: invalid options; ``130``: interrupted.
    """
    args = parse_args(argv)
    handler = _log_to_stderr()
    t0 = time.perf_counter()
    try:
        from ._inputs import check_options

        check_options(args)
        from ._pipeline import Pipeline, demo_scores, summary

        sdata = Pipeline(args).execute()
        if args.command == "demo" and args.stop_after is None:
            log.info("per-cell Pearson vs truth (mean by gene group): %s", demo_scores(sdata))
        log.info("%s: %s (%.1f s)", args.out, summary(sdata), time.perf_counter() - t0)
        return 0
    except KeyboardInterrupt:
        print(
            f"\nscellst {args.command}: interrupted. Run the same command again to resume after "
            "the last finished stage.",
            file=sys.stderr,
        )
        return 130
    except _USER_ERRORS as e:
        if args.traceback:
            traceback.print_exc()
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"scellst {args.command}: error: {message}", file=sys.stderr)
        if not isinstance(e, CLIError) and not args.traceback:
            print("(--traceback shows where it happened)", file=sys.stderr)
        return 2 if isinstance(e, CLIError) else 1
    finally:
        log.removeHandler(handler)


__all__ = ["main", "parse_args"]
