"""Progress bars (tqdm) that one switch silences: ``--quiet`` or ``EMOSCOPE_QUIET=1``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_QUIET = os.environ.get("EMOSCOPE_QUIET", "") not in ("", "0")


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


def is_quiet() -> bool:
    return _QUIET


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, disabled when quiet or when stderr is not a terminal and
    ``EMOSCOPE_PROGRESS`` is not set (so logs and CI stay readable)."""
    disable = _QUIET or (not sys.stderr.isatty() and not os.environ.get("EMOSCOPE_PROGRESS"))
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=disable, file=sys.stderr, **kwargs)
