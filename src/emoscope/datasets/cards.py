"""Dataset cards: Markdown with a YAML header that records the content hash and per-class
length statistics. The numbers are computed here, pasted into the card, and checked by
the tests, so a card never drifts from its file.

Maintainers regenerate a header with::

    python -m emoscope.datasets.cards emotions-12            # print the header
    python -m emoscope.datasets.cards emotions-12 --write    # replace it in the card
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from emoscope.datasets._catalog import builtin_entry, builtin_names, load_dataset
from emoscope.datasets._dataset import Dataset

__all__ = ["card_header", "parse_card_header", "render_card_header", "card_body"]

_FENCE = "---"


def _round(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in stats.items()}


def card_header(ds: Dataset) -> dict[str, Any]:
    """The machine-checked header of ``ds``'s card: name, sha256, n, classes, length stats.

    >>> card_header(Dataset("t", ["a b"], ["x"]))["length_stats"]["x"]["words"]["mean"]
    2.0
    """
    return {
        "name": ds.name,
        "sha256": ds.sha256,
        "n": len(ds),
        "classes": ds.classes,
        "length_stats": {
            c: {"n": s["n"], "chars": _round(s["chars"]), "words": _round(s["words"])}
            for c, s in ds.length_stats().items()
        },
    }


class _FlowDumper(yaml.SafeDumper):
    """Block style at the top, flow style for the innermost mappings and lists."""


def _represent_dict(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.Node:
    flow = all(not isinstance(v, dict) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_FlowDumper.add_representer(dict, _represent_dict)
_FlowDumper.add_representer(list, _represent_list)


def render_card_header(ds: Dataset) -> str:
    """The header as YAML between ``---`` fences, ready to paste at the top of a card."""
    body = yaml.dump(card_header(ds), Dumper=_FlowDumper, sort_keys=False, width=120)
    return f"{_FENCE}\n{body}{_FENCE}\n"


def parse_card_header(card: str) -> dict[str, Any]:
    """The YAML header of a card (``{}`` when it has none).

    >>> parse_card_header("---\\nn: 3\\n---\\n# Title\\n")
    {'n': 3}
    """
    if not card.startswith(_FENCE + "\n"):
        return {}
    end = card.find("\n" + _FENCE + "\n", len(_FENCE))
    if end < 0:
        return {}
    return yaml.safe_load(card[len(_FENCE) + 1 : end + 1]) or {}


def card_body(card: str) -> str:
    """The Markdown after the header."""
    if not card.startswith(_FENCE + "\n"):
        return card
    end = card.find("\n" + _FENCE + "\n", len(_FENCE))
    return card if end < 0 else card[end + len(_FENCE) + 2 :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Print or rewrite a built-in dataset's card header."
    )
    parser.add_argument("names", nargs="*", help="built-in names (default: all)")
    parser.add_argument("--write", action="store_true", help="replace the header in the card file")
    args = parser.parse_args(argv)
    from emoscope.datasets._catalog import data_file

    for name in args.names or builtin_names():
        ds = load_dataset(name)
        header = render_card_header(ds)
        if not args.write:
            sys.stdout.write(header)
            continue
        path = data_file(builtin_entry(name)["card"])
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        path.write_text(header + card_body(old).lstrip("\n"), encoding="utf-8")  # type: ignore[union-attr]
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
