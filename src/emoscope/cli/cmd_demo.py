"""``emoscope demo [--out runs/demo]``: run the built-in demo spec and write its report."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the built-in demo spec on the embedded model and write report.html",
        description="Run the built-in `demo` spec (see `emoscope run demo`) and write the HTML report.",
    )
    p.add_argument("--out", metavar="DIR", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo run in DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emoscope.cli.running import print_outcome, stage_logger
    from emoscope.runs import load_spec, run_spec

    # run_spec writes report.html at the end (also after a failed stage, for what did finish)
    rd = run_spec(load_spec("demo"), args.out, resume=args.resume, log=stage_logger(args.quiet))
    print_outcome(rd.root)
    return 0
