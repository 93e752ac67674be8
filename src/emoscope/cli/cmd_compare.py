"""``emoscope compare RUN_A RUN_B``: which findings changed verdict, value or controls between two runs."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare two run directories: verdicts that changed, values, controls that flipped",
        description="Match the findings of two runs by kind, stage and subject (across models and checklist "
                    "versions), print the changes as a table and write one self-contained HTML page.",
    )
    p.add_argument("run_a", metavar="RUN_A", help="the first run directory")
    p.add_argument("run_b", metavar="RUN_B", help="the second run directory")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="the HTML page to write (default: compare-A-vs-B.html in the current directory)")
    p.add_argument("--all", action="store_true", help="list every matched finding, not only the changed ones")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emoscope._io import atomic_write_text
    from emoscope.errors import InputError
    from emoscope.report.compare import compare_runs, format_comparison, render_comparison

    out = Path(args.out) if args.out else Path(f"compare-{Path(args.run_a).name}-vs-{Path(args.run_b).name}.html")
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name such as {out / 'compare.html'}")
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--out {out} must end in .html (the comparison is one HTML page)")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    comparison = compare_runs(args.run_a, args.run_b)
    print(format_comparison(comparison, all_rows=args.all))
    atomic_write_text(out, render_comparison(comparison))
    print(f"wrote {out}")
    return 0
