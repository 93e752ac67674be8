"""The ``Dataset`` value: labelled texts with optional groups and splits, hashed by content."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from emoscope._io import sha256_json
from emoscope.errors import InputError

__all__ = ["Dataset", "VALID_SPLITS", "text_length_stats"]

VALID_SPLITS: tuple[str, ...] = ("train", "test", "val")


def _summary(values: Sequence[int]) -> dict[str, float]:
    """mean, sample sd (ddof=1; 0.0 for one value), min and max of ``values``."""
    n = len(values)
    if n == 0:
        return {"mean": 0.0, "sd": 0.0, "min": 0, "max": 0}
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "sd": math.sqrt(var), "min": min(values), "max": max(values)}


def text_length_stats(texts: Sequence[str]) -> dict[str, Any]:
    """Length statistics of ``texts`` in characters and whitespace-separated words.

    >>> text_length_stats(["a b", "cde"])["words"]["mean"]
    1.5
    """
    return {
        "n": len(texts),
        "chars": _summary([len(t) for t in texts]),
        "words": _summary([len(t.split()) for t in texts]),
    }


@dataclass(frozen=True)
class Dataset:
    """Labelled texts. Treat it as immutable: every method returns a new ``Dataset``.

    ``groups`` (e.g. a scenario id) keeps paraphrases together in group-aware splits;
    ``splits`` holds one of ``train``, ``test``, ``val`` per text. The hash covers texts,
    labels, groups and splits (not the name or card), so it identifies the content.

    >>> ds = Dataset("toy", ["I am glad.", "It is Monday."], ["joy", "neutral"])
    >>> ds.classes, len(ds)
    (['joy', 'neutral'], 2)
    >>> ds.filter(labels=["joy"]).texts
    ['I am glad.']
    """

    name: str
    texts: list[str]
    labels: list[str]
    groups: list[str] | None = None
    splits: list[str] | None = None
    card: str = ""

    def __post_init__(self) -> None:
        n = len(self.texts)
        for field in ("labels", "groups", "splits"):
            values = getattr(self, field)
            if values is not None and len(values) != n:
                raise InputError(
                    f"Dataset {self.name!r}: {len(values)} {field} for {n} texts; "
                    f"give exactly one per text"
                )
        if self.splits is not None:
            bad = sorted({s for s in self.splits if s not in VALID_SPLITS})
            if bad:
                raise InputError(
                    f"Dataset {self.name!r}: unknown split value(s) {bad}; "
                    f"use {', '.join(VALID_SPLITS)}"
                )

    def __len__(self) -> int:
        return len(self.texts)

    def __hash__(self) -> int:
        return hash(self.sha256)

    @property
    def sha256(self) -> str:
        """Stable content hash (texts, labels, groups, splits), e.g. for activation caches."""
        return sha256_json(
            {
                "texts": self.texts,
                "labels": self.labels,
                "groups": self.groups,
                "splits": self.splits,
            }
        )

    @property
    def classes(self) -> list[str]:
        """Sorted unique labels."""
        return sorted(set(self.labels))

    def counts(self) -> dict[str, int]:
        """Number of texts per class, in class order.

        >>> Dataset("t", ["a", "b", "c"], ["x", "y", "x"]).counts()
        {'x': 2, 'y': 1}
        """
        return {c: self.labels.count(c) for c in self.classes}

    def subset(self, mask_or_indices: Iterable[Any]) -> Dataset:
        """Rows picked by a boolean mask (one entry per text) or by integer indices.

        Accepts lists, tuples or numpy arrays.

        >>> ds = Dataset("t", ["a", "b", "c"], ["x", "y", "x"])
        >>> ds.subset([True, False, True]).texts
        ['a', 'c']
        >>> ds.subset([2, 0]).labels
        ['x', 'x']
        """
        items = list(mask_or_indices)
        n = len(self)
        is_bool = [isinstance(v, bool) or type(v).__name__ in ("bool", "bool_") for v in items]
        if items and all(is_bool):
            if len(items) != n:
                raise InputError(
                    f"boolean mask has {len(items)} entries for a dataset of {n}; "
                    f"give one entry per text"
                )
            idx = [i for i, keep in enumerate(items) if keep]
        elif any(is_bool):
            raise InputError("mask mixes booleans and integers; pass one or the other")
        else:
            try:
                idx = [operator.index(v) for v in items]
            except TypeError:
                raise InputError(
                    "subset() takes a boolean mask or integer indices; "
                    f"got {type(items[0]).__name__} values"
                ) from None
            bad = [i for i in idx if not 0 <= i < n]
            if bad:
                raise InputError(f"index {bad[0]} out of range for a dataset of {n} texts")

        def pick(values: list[str] | None) -> list[str] | None:
            return None if values is None else [values[i] for i in idx]

        return replace(
            self,
            texts=[self.texts[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            groups=pick(self.groups),
            splits=pick(self.splits),
        )

    def filter(
        self,
        labels: Iterable[str] | str | None = None,
        *,
        split: str | None = None,
    ) -> Dataset:
        """Rows whose label is in ``labels`` and (if given) whose split is ``split``.

        >>> ds = Dataset("t", ["a", "b", "c"], ["x", "y", "x"], splits=["train", "test", "test"])
        >>> ds.filter(labels="x", split="test").texts
        ['c']
        """
        mask = [True] * len(self)
        if labels is not None:
            wanted = {labels} if isinstance(labels, str) else set(labels)
            unknown = sorted(wanted - set(self.labels))
            if unknown:
                raise InputError(
                    f"label(s) {unknown} not in dataset {self.name!r}; "
                    f"known classes: {', '.join(self.classes)}"
                )
            mask = [m and lab in wanted for m, lab in zip(mask, self.labels, strict=True)]
        if split is not None:
            if self.splits is None:
                raise InputError(
                    f"dataset {self.name!r} has no splits; add a 'split' column or split it yourself"
                )
            if split not in VALID_SPLITS:
                raise InputError(f"unknown split {split!r}; use {', '.join(VALID_SPLITS)}")
            mask = [m and s == split for m, s in zip(mask, self.splits, strict=True)]
        return self.subset(mask)

    def length_stats(self) -> dict[str, dict[str, Any]]:
        """Per-class length statistics: ``{class: {"n", "chars": {...}, "words": {...}}}``.

        Each of ``chars`` and ``words`` (whitespace-separated) has ``mean``, ``sd``
        (sample, ddof=1), ``min`` and ``max``.

        >>> Dataset("t", ["ab", "abcd"], ["x", "x"]).length_stats()["x"]["chars"]["mean"]
        3.0
        """
        by_class: dict[str, list[str]] = {c: [] for c in self.classes}
        for text, label in zip(self.texts, self.labels, strict=True):
            by_class[label].append(text)
        return {c: text_length_stats(ts) for c, ts in by_class.items()}

    def __repr__(self) -> str:
        extras = "".join(f", {f}=yes" for f in ("groups", "splits") if getattr(self, f) is not None)
        return f"Dataset(name={self.name!r}, n={len(self)}, classes={self.classes}{extras})"
