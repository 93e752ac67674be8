"""``emoscope datasets``: list the built-in datasets, or show one's card.

emoscope datasets                     # table: name, n, classes, mean length
emoscope datasets list --json
emoscope datasets show emotions-12    # the card (contents, how written, length stats)
emoscope datasets show my_data.jsonl  # summary and per-class length stats of a file
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "datasets",
        help="list built-in datasets, or show a dataset's card",
        description="List the built-in datasets, or show the card of one (or a summary of a file).",
    )
    sub = p.add_subparsers(dest="datasets_action", metavar="ACTION")
    pl = sub.add_parser("list", help="table of built-in datasets (the default)")
    pl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ps = sub.add_parser("show", help="print a dataset's card, or summarise a .jsonl/.csv file")
    ps.add_argument("name", help="built-in name or path to a .jsonl/.csv file")
    ps.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "datasets_action", None) == "show":
        return _show(args.name, as_json=args.json)
    return _list(as_json=getattr(args, "json", False))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _classes_cell(classes: list[str], limit: int = 48) -> str:
    text = ", ".join(classes)
    if len(text) <= limit:
        return f"{len(classes)}: {text}"
    return f"{len(classes)}: {text[: limit - 3].rsplit(',', 1)[0]}, ..."


def _list(as_json: bool) -> int:
    from emoscope.datasets import list_datasets

    infos = list_datasets()
    if as_json:
        print(json.dumps(infos, indent=2))
        return 0
    rows = [
        [
            d["name"],
            str(d["n"]),
            _classes_cell(d["classes"]),
            f"{d['mean_chars']:.1f}",
            d["description"],
        ]
        for d in infos
    ]
    print(_table(rows, ["name", "n", "classes", "mean chars", "description"]))
    print(
        "\n`emoscope datasets show NAME` prints a card; load with emoscope.datasets.load_dataset(NAME)."
    )
    return 0


def _summary(ds: Any) -> dict[str, Any]:
    from emoscope.datasets.cards import card_header

    info = card_header(ds)
    if ds.splits is not None:
        info["splits"] = {s: ds.splits.count(s) for s in sorted(set(ds.splits))}
    if ds.groups is not None:
        info["n_groups"] = len(set(ds.groups))
    return info


def _show(name: str, as_json: bool) -> int:
    from emoscope.datasets import load_dataset
    from emoscope.datasets.cards import parse_card_header

    ds = load_dataset(name)
    if as_json:
        print(json.dumps(_summary(ds), indent=2))
        return 0
    if parse_card_header(ds.card):  # built-in cards carry their statistics in the header
        print(ds.card.rstrip())
        return 0
    # a user's file: print what a card's header would hold, then its card if it has one
    info = _summary(ds)
    print(f"# {ds.name}\n\n{len(ds)} texts, {len(ds.classes)} classes, sha256 {ds.sha256[:16]}")
    if "splits" in info:
        print("splits: " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()))
    if "n_groups" in info:
        print(f"groups: {info['n_groups']}")
    rows = [
        [
            c,
            str(s["n"]),
            f"{s['chars']['mean']:.1f}",
            f"{s['chars']['sd']:.1f}",
            f"{s['chars']['min']}-{s['chars']['max']}",
            f"{s['words']['mean']:.1f}",
        ]
        for c, s in info["length_stats"].items()
    ]
    print()
    print(_table(rows, ["class", "n", "chars mean", "sd", "min-max", "words mean"]))
    if ds.card.strip():
        print("\n" + ds.card.rstrip())
    return 0
