"""Readers for user data files (JSONL, CSV, plain text) with one-line, line-numbered errors.

Everything here parses *text* plus a ``source`` name used in messages, so the same code
validates the built-in files (read through ``importlib.resources``) and the user's files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from emoscope.datasets._dataset import VALID_SPLITS, Dataset
from emoscope.errors import DataError, InputError

__all__ = [
    "DataWarning",
    "Row",
    "read_file_text",
    "parse_rows",
    "rows_to_dataset",
    "parse_texts",
]

SUPPORTED = (".jsonl", ".csv")
CSV_FIELD_LIMIT = 1 << 24  # characters per CSV cell (Python's default is 131072); longer texts are truncated later
Row = tuple[int, dict[str, Any]]  # (1-based line number, fields)


def _clip(value: Any, n: int = 40) -> str:
    """``repr`` of a value from the user's file, cut to ``n`` characters so an error stays short."""
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


class DataWarning(UserWarning):
    """A data problem that does not stop loading (e.g. texts shared by train and test)."""


def read_file_text(path: str | os.PathLike[str], allowed: tuple[str, ...]) -> tuple[str, str]:
    """Read a data file as UTF-8; return ``(text, suffix)``. Raises ``DataError``."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in allowed:
        raise DataError(
            f"{p}: unsupported file type {suffix or '(no extension)'!r}; "
            f"use one of {', '.join(allowed)}"
        )
    if not p.exists():
        raise DataError(f"{p}: file not found; check the path (relative to {Path.cwd()})")
    if p.is_dir():
        raise DataError(f"{p}: is a directory; give the path of a {'/'.join(allowed)} file")
    try:
        return p.read_text(encoding="utf-8-sig"), suffix
    except UnicodeDecodeError as e:
        raise DataError(
            f"{p}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8"
        ) from None
    except OSError as e:
        raise DataError(f"{p}: cannot be read ({e.strerror or e})") from None


def _check_not_empty(text: str, source: str, what: str) -> None:
    if not text.strip():
        raise DataError(f"{source}: file is empty; expected {what}")


def parse_rows(text: str, source: str, fmt: str, required: tuple[str, ...]) -> list[Row]:
    """Parse JSONL or CSV into ``(line, fields)`` rows, checking the ``required`` columns.

    >>> parse_rows('{"text": "hi", "label": "x"}\\n', "d.jsonl", ".jsonl", ("text",))
    [(1, {'text': 'hi', 'label': 'x'})]
    """
    want = ", ".join(repr(c) for c in required)
    _check_not_empty(text, source, f"one record per line with columns {want}")
    rows = _parse_jsonl(text, source) if fmt == ".jsonl" else _parse_csv(text, source, required)
    for line, fields in rows:
        missing = [c for c in required if c not in fields or fields[c] is None]
        if missing:
            raise DataError(
                f"{source}:{line}: missing column(s) {', '.join(repr(c) for c in missing)}; "
                f"every record needs {want}"
            )
    return rows


def _parse_jsonl(text: str, source: str) -> list[Row]:
    rows: list[Row] = []
    # split on "\n" only, so line numbers match what an editor shows
    for line_no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{source}:{line_no}: not valid JSON ({e.msg}, column {e.colno}); "
                f'each line must be one object such as {{"text": "...", "label": "..."}}'
            ) from None
        except (ValueError, RecursionError) as e:  # a 5000-digit number, arrays nested 10^5 deep
            reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
            raise DataError(
                f"{source}:{line_no}: JSON value cannot be read ({reason}); "
                f'each line must be one flat object such as {{"text": "...", "label": "..."}}'
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{source}:{line_no}: expected a JSON object, got {type(obj).__name__}; "
                f'write one object per line such as {{"text": "...", "label": "..."}}'
            )
        rows.append((line_no, obj))
    if not rows:
        raise DataError(
            f"{source}: file is empty (only blank lines); expected one JSON object per line"
        )
    return rows


def _parse_csv(text: str, source: str, required: tuple[str, ...]) -> list[Row]:
    old_limit = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        return _parse_csv_rows(text, source, required)
    finally:
        csv.field_size_limit(old_limit)


def _csv_error(source: str, line: int, e: csv.Error) -> DataError:
    if "field larger than field limit" in str(e):
        return DataError(f"{source}:{line}: a cell is longer than {CSV_FIELD_LIMIT} characters; "
                         "check for an unclosed quote, or shorten the text")
    return DataError(f"{source}:{line}: malformed CSV ({e}); check the quoting")


def _parse_csv_rows(text: str, source: str, required: tuple[str, ...]) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
    except csv.Error as e:
        raise _csv_error(source, max(reader.line_num, 1), e) from None
    twice = sorted({h for h in header if h and header.count(h) > 1})
    if twice:
        raise DataError(f"{source}:1: column(s) {', '.join(_clip(h) for h in twice[:5])} appear more than once in the "
                        "header; name each column once")
    reader.fieldnames = header
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{source}:1: missing column(s) {', '.join(repr(c) for c in missing)} in the header "
            f"(found: {', '.join(_clip(h) for h in header[:8]) + (', ...' if len(header) > 8 else '') or 'nothing'}); "
            f"the first line must name {', '.join(required)}"
        )
    rows: list[Row] = []
    try:
        for rec in reader:
            # a short row leaves trailing cells as None ("missing"); an empty cell stays ""
            extra = [v for v in rec.get(None) or [] if v.strip()]  # cells past the header's columns
            if extra:
                raise DataError(
                    f"{source}:{reader.line_num}: {len(header) + len(rec[None])} cells but the header names "
                    f"{len(header)}; quote texts that contain commas (\"like, this\")"
                )
            fields = {k: v for k, v in rec.items() if k is not None}
            rows.append((reader.line_num, fields))
    except csv.Error as e:
        raise _csv_error(source, reader.line_num, e) from None
    if not rows:
        raise DataError(f"{source}: has a header but no rows; add one row per text")
    return rows


def _as_str(value: Any, column: str, source: str, line: int, *, allow_int: bool) -> str:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON can spell a lone surrogate ("\ud800"); no tokenizer takes it
            raise DataError(
                f"{source}:{line}: column {column!r} is not valid Unicode (lone surrogate "
                f"{value[e.start]!r} at character {e.start}); fix the escape"
            ) from None
        return value
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    kind = "a string or an integer" if allow_int else "a string"
    raise DataError(
        f"{source}:{line}: column {column!r} must be {kind}, got {type(value).__name__}; "
        f"quote the value"
    )


def _optional_column(rows: list[Row], column: str, source: str) -> list[str] | None:
    """All-or-nothing optional column: None if absent everywhere, an error if partly absent."""
    present = [(line, None if f.get(column) in (None, "") else f[column]) for line, f in rows]
    have = [line for line, v in present if v is not None]
    if not have:
        return None
    values: list[str] = []
    for line, v in present:
        if v is None:
            raise DataError(
                f"{source}:{line}: no {column!r} value, but line {have[0]} has one; "
                f"give every record a {column} or none"
            )
        values.append(_as_str(v, column, source, line, allow_int=True).strip())
    return values


def rows_to_dataset(
    rows: list[Row],
    source: str,
    name: str,
    *,
    text_field: str = "text",
    label_field: str = "label",
    card: str = "",
    min_per_class: int | None = None,
) -> Dataset:
    """Validate parsed rows and build a ``Dataset`` (see ``load_dataset`` for the rules)."""
    texts: list[str] = []
    labels: list[str] = []
    for line, fields in rows:
        text = _as_str(fields[text_field], text_field, source, line, allow_int=False)
        if not text.strip():
            raise DataError(f"{source}:{line}: empty text; fill it in or delete the line")
        label = _as_str(fields[label_field], label_field, source, line, allow_int=True).strip()
        if not label:
            raise DataError(f"{source}:{line}: empty label; every text needs a class label")
        texts.append(text)
        labels.append(label)
    groups = _optional_column(rows, "group", source)
    splits = _optional_column(rows, "split", source)
    if splits is not None:
        for (line, _), s in zip(rows, splits, strict=True):
            if s not in VALID_SPLITS:
                raise DataError(
                    f"{source}:{line}: unknown split {_clip(s)}; use one of {', '.join(VALID_SPLITS)}"
                )
        _warn_shared_texts(texts, splits, source)
    if min_per_class is not None:
        _check_min_per_class(labels, min_per_class, source)
    return Dataset(name=name, texts=texts, labels=labels, groups=groups, splits=splits, card=card)


def _warn_shared_texts(texts: list[str], splits: list[str], source: str) -> None:
    where: dict[str, set[str]] = defaultdict(set)
    for t, s in zip(texts, splits, strict=True):
        where[t.strip()].add(s)
    shared = [t for t, ss in where.items() if len(ss) > 1]
    if shared:
        pairs = sorted({"/".join(sorted(where[t])) for t in shared})
        warnings.warn(
            f"{source}: {len(shared)} text(s) appear in more than one split ({', '.join(pairs)}), "
            f"e.g. {shared[0][:50]!r}; held-out scores will be optimistic: deduplicate the file",
            DataWarning,
            stacklevel=4,
        )


def _check_min_per_class(labels: list[str], min_per_class: int, source: str) -> None:
    if isinstance(min_per_class, bool) or not isinstance(min_per_class, int) or min_per_class < 1:
        raise InputError(f"min_per_class must be a positive integer, got {min_per_class!r}")
    counts = Counter(labels)
    small = sorted((c, n) for c, n in counts.items() if n < min_per_class)
    if small:
        listed = ", ".join(f"class {c!r} has {n} example(s)" for c, n in small)
        raise DataError(
            f"{source}: {listed}, fewer than min_per_class={min_per_class}; "
            f"add examples or drop the class"
        )


def parse_texts(text: str, source: str, fmt: str) -> list[str]:
    """Plain texts from ``.txt`` (one per line) or ``.jsonl``/``.csv`` (a ``text`` column).

    In ``.txt`` files blank lines at the end are ignored; a blank line between texts is an
    error (it would silently become an empty prompt).

    >>> parse_texts("one\\ntwo\\n", "t.txt", ".txt")
    ['one', 'two']
    """
    if fmt != ".txt":
        rows = parse_rows(text, source, fmt, ("text",))
        out = []
        for line, fields in rows:
            t = _as_str(fields["text"], "text", source, line, allow_int=False)
            if not t.strip():
                raise DataError(f"{source}:{line}: empty text; fill it in or delete the line")
            out.append(t)
        return out
    _check_not_empty(text, source, "one text per line")
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    for line_no, ln in enumerate(lines, 1):
        if not ln.strip():
            raise DataError(f"{source}:{line_no}: empty text (blank line); delete the line")
    return lines
