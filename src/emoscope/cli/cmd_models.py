"""``emoscope models``: the embedded aliases and whether they are installed."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list embedded model aliases (size, layers, d_model, installed)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from emoscope.models.loading import embedded_models

    rows = embedded_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["alias", "architecture", "params", "n_layers", "d_model", "chat_template", "size_mb", "installed"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    return 0
