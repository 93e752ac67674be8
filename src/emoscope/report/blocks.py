"""The report's building blocks: an inlined figure and a folded table.

A table shows its first rows; the rest fold under ``<details>``; a link points to its CSV in
the run directory. Only columns a reader needs are shown (at most ``MAX_COLS``, so nothing
scrolls sideways at 1280 px): token ids, hashes and other machine columns stay in the CSV.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emoscope.report.runview import RunView

__all__ = ["Figure", "Table", "figure_block", "table_block", "frame_block", "cell", "MAX_COLS", "SHOWN_ROWS",
           "MAX_ROWS", "is_machine_column"]

SHOWN_ROWS = 5     # rows visible before the fold
MAX_ROWS = 50      # rows in the report at all (the CSV has every row)
MAX_COLS = 8       # columns in the report
MAX_TEXT = 240     # characters of one text cell

_MACHINE = re.compile(r"(^|_)(ids|token_ids|input_ids|tokens_ids|sha256|hash|digest)$|^(ids|tokens)$", re.I)
_INT_LIST = re.compile(r"^\s*(\[\s*-?\d+(\s*,\s*-?\d+)*\s*\]|-?\d+(\s+-?\d+){2,})\s*$")


@dataclass(frozen=True)
class Figure:
    """One inlined figure: ``uri`` is a data URI; ``model``: the model key in multi-model runs."""

    name: str
    uri: str
    caption: str
    model: str | None = None


@dataclass
class Table:
    """A table as the report shows it (see ``table_block``)."""

    name: str
    title: str
    columns: list[str]
    head: list[list[tuple[str, bool]]]
    rest: list[list[tuple[str, bool]]]
    n_rows: int
    n_cols: int
    href: str
    note: str = ""
    model: str | None = None
    hidden: list[str] = field(default_factory=list)

    @property
    def shown_rows(self) -> int:
        return len(self.head) + len(self.rest)


def is_machine_column(name: str, values: Sequence[Any] = ()) -> bool:
    """True for token ids, hashes and columns whose cells are lists of integers.

    >>> is_machine_column("input_ids"), is_machine_column("text"), is_machine_column("gen", ["[1, 2]", "[3]"])
    (True, False, True)
    >>> is_machine_column("toks", ["24820 1039 314", "7 8 9"]), is_machine_column("text", ["a b c"])
    (True, False)
    """
    if _MACHINE.search(str(name)):
        return True
    sample = [v for v in values[:20] if isinstance(v, str)]
    return bool(sample) and all(_INT_LIST.match(v) for v in sample)


def cell(v: Any, label: Any = None) -> tuple[str, bool]:
    """(text, is_number) of one table cell; ``label`` maps model names to their keys.

    >>> cell(0.123456), cell(3), cell(float("nan")), cell(True)
    (('0.1235', True), ('3', True), ('', True), ('True', False))
    """
    if type(v).__module__ == "numpy":  # a numpy scalar: its Python value
        v = v.item()
    if isinstance(v, bool) or v is None:
        return ("" if v is None else str(v)), False
    if isinstance(v, int):
        return str(v), True
    if isinstance(v, float):
        return ("" if math.isnan(v) else f"{v:.4g}"), True
    if label is not None:
        v = label(v)
    text = str(v)
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 1] + "…"
    return text, False


def figure_block(view: RunView, name: str, caption: str = "") -> Figure | None:
    """The figure ``name`` of the run, inlined, or ``None`` when it is missing."""
    from emoscope.report.runview import split_name

    uri = view.figure_uri(name)
    if uri is None:
        return None
    key, bare = split_name(name, view.keys)
    text = caption or bare.replace("_", " ")
    if key and view.multi_model:
        text = f"{text} — model {key}"
    return Figure(name, uri, f"{text} (figures/{name}.png)", key)


def frame_block(view: RunView, df: Any, name: str, *, title: str = "", columns: Sequence[str] | None = None,
                note: str = "", href: str | None = None) -> Table:
    """A DataFrame as a folded ``Table`` (``columns``: the ones to show, in order, when present)."""
    from emoscope.report.runview import split_name

    key, bare = split_name(name, view.keys)
    all_cols = [str(c) for c in df.columns]
    top = df.head(MAX_ROWS)
    sample = {str(k): v for k, v in top.head(20).to_dict("list").items()}  # one pass, not one per column
    hidden = [c for c in all_cols if is_machine_column(c, sample.get(c, []))]
    usable = [c for c in all_cols if c not in hidden]
    if columns:
        shown = [c for c in columns if c in usable][:MAX_COLS] or usable[:MAX_COLS]
    else:
        shown = usable[:MAX_COLS]
    values = {str(k): v for k, v in top.to_dict("list").items()}
    rows = [[cell(values[c][i], view.label) for c in shown] for i in range(len(top))] if shown else []
    title = title or bare.replace("_", " ")
    if key and view.multi_model:
        title = f"{title} — model {key}"
    return Table(name, title, shown, rows[:SHOWN_ROWS], rows[SHOWN_ROWS:], len(df), len(all_cols),
                 href if href is not None else f"tables/{name}.csv", note, key, hidden)


def table_block(view: RunView, name: str, *, title: str = "", columns: Sequence[str] | None = None,
                note: str = "") -> Table | None:
    """``tables/NAME.csv`` as a folded ``Table``, or ``None`` when it is missing or empty."""
    df = view.table(name)
    if df is None:
        return None
    return frame_block(view, df, name, title=title, columns=columns, note=note)
