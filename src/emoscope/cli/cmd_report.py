"""``emoscope report RUN``: (re)write the self-contained report.html of a run directory."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write RUN/report.html (self-contained, opens offline)",
        description="Build RUN/report.html from the run's manifest, findings, tables and figures.",
    )
    p.add_argument("run_dir", metavar="RUN", help="run directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emoscope.report import write_report

    print(write_report(args.run_dir))
    return 0
