"""Built-in datasets (package data listed in ``data/catalog.yaml``) and the loaders that
accept either a built-in name or a path to the user's file."""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from emoscope.datasets._dataset import Dataset
from emoscope.datasets._readers import parse_rows, parse_texts, read_file_text, rows_to_dataset
from emoscope.errors import DataError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "builtin_entry",
    "builtin_names",
    "data_file",
    "is_path_like",
    "load_dataset",
    "list_datasets",
    "load_texts",
]


def data_file(filename: str) -> Traversable:
    """A file in the package's ``data/`` folder (works from a wheel or a source tree)."""
    return resources.files("emoscope.datasets").joinpath("data").joinpath(filename)


@functools.lru_cache(maxsize=1)
def _catalog() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(data_file("catalog.yaml").read_text(encoding="utf-8"))


def builtin_names() -> list[str]:
    """Names of the built-in datasets, in catalogue order.

    >>> "emotions-12" in builtin_names()
    True
    """
    return list(_catalog())


def is_path_like(name_or_path: str | os.PathLike[str]) -> bool:
    """True for anything that should be read as a file rather than looked up by name."""
    if isinstance(name_or_path, os.PathLike):
        return True
    s = str(name_or_path)
    if Path(s).suffix or "/" in s or os.sep in s:
        return True
    # a bare name: a built-in wins over a same-named file in the working directory
    return s not in _catalog() and Path(s).exists()


def _unknown(name: str) -> DataError:
    return DataError(
        f"unknown dataset {name!r}; built-ins are {', '.join(builtin_names())}, "
        f"or give the path of a .jsonl or .csv file"
    )


def builtin_entry(name: str) -> dict[str, Any]:
    """The catalogue entry of a built-in dataset; ``DataError`` listing the known names."""
    try:
        return _catalog()[name]
    except KeyError:
        raise _unknown(name) from None


def _read_card(entry: dict[str, Any]) -> str:
    card = entry.get("card")
    path = data_file(card) if card else None
    return path.read_text(encoding="utf-8") if path is not None and path.is_file() else ""


def _sibling_card(path: Path) -> str:
    """A user's ``data.card.md`` next to ``data.jsonl`` is picked up as the card."""
    card = path.with_name(path.stem + ".card.md")
    return card.read_text(encoding="utf-8") if card.is_file() else ""


def load_dataset(
    name_or_path: str | os.PathLike[str], *, min_per_class: int | None = None
) -> Dataset:
    """Load a built-in dataset by name, or a ``.jsonl`` / ``.csv`` file of labelled texts.

    Files need the columns ``text`` and ``label``; ``split`` (train/test/val) and ``group``
    are optional but all-or-nothing. Every problem raises ``DataError`` naming the file,
    the line and the fix: missing or empty file, malformed JSONL line, missing columns,
    empty text, unknown split, a class with fewer than ``min_per_class`` texts. Texts that
    occur in more than one split only warn (``DataWarning``).

    >>> ds = load_dataset("emotions-12")
    >>> len(ds.classes), ds.counts()["fear"]
    (13, 40)
    >>> load_dataset("my_data.csv", min_per_class=20)  # doctest: +SKIP
    """
    if is_path_like(name_or_path):
        path = Path(name_or_path)
        text, fmt = read_file_text(path, (".jsonl", ".csv"))
        rows = parse_rows(text, str(path), fmt, ("text", "label"))
        return rows_to_dataset(
            rows, str(path), path.stem, card=_sibling_card(path), min_per_class=min_per_class
        )
    name = str(name_or_path)
    entry = builtin_entry(name)
    text_field, label_field = entry.get("text", "text"), entry.get("label", "label")
    source = f"emoscope/datasets/data/{entry['file']}"
    rows = parse_rows(
        data_file(entry["file"]).read_text(encoding="utf-8"),
        source,
        ".jsonl",
        (text_field, label_field),
    )
    return rows_to_dataset(
        rows,
        source,
        name,
        text_field=text_field,
        label_field=label_field,
        card=_read_card(entry),
        min_per_class=min_per_class,
    )


def list_datasets() -> list[dict[str, Any]]:
    """One dict per built-in: name, n, classes, description, kind, mean_chars, file.

    >>> [d["name"] for d in list_datasets()][:2]
    ['emotions-basic', 'emotions-12']
    """
    out = []
    for name, entry in _catalog().items():
        ds = load_dataset(name)
        out.append(
            {
                "name": name,
                "n": len(ds),
                "classes": ds.classes,
                "description": entry.get("description", ""),
                "kind": entry.get("kind", "labelled"),
                "mean_chars": round(sum(map(len, ds.texts)) / max(len(ds), 1), 1),
                "file": entry["file"],
            }
        )
    return out


def load_texts(name_or_path: str | os.PathLike[str]) -> list[str]:
    """Plain list of texts: a ``.txt`` file (one per line), a ``.jsonl``/``.csv`` file with a
    ``text`` column (labels not needed), or a built-in dataset name.

    Used by ``emoscope extract --texts``. Empty files, malformed lines and empty texts raise
    ``DataError`` with the line number.

    >>> load_texts("neutral-starts")[0]
    'Tell me about your morning.'
    >>> load_texts("prompts.txt")  # doctest: +SKIP
    """
    if is_path_like(name_or_path):
        path = Path(name_or_path)
        text, fmt = read_file_text(path, (".txt", ".jsonl", ".csv"))
        return parse_texts(text, str(path), fmt)
    return load_dataset(name_or_path).texts
