"""The one figure saver: ``stem.png`` and ``stem.svg``, written atomically, same bytes for the
same figure (no dates or software tags, a fixed SVG hash salt), and the figure closed after.

Build figures with :func:`new_figure` (a bare ``matplotlib.figure.Figure``: no GUI backend,
nothing left in pyplot's registry).

>>> fig = new_figure(4, 3)                                           # doctest: +SKIP
>>> fig.add_subplot().plot([0, 1], [1, 0]); save_figure(fig, "out/curve")   # doctest: +SKIP
PosixPath('out/curve.png')
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

from emoscope._io import atomic_path, ensure_writable_dir
from emoscope.errors import OutputError

__all__ = ["new_figure", "save_figure", "FORMATS"]

FORMATS = ("png", "svg")
_DPI = 110


def new_figure(width: float, height: float, **kwargs: Any) -> Any:
    """A ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches (``kwargs`` go to
    ``Figure``, e.g. ``layout="constrained"``)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), **kwargs)


def save_figure(fig: Any, stem: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``{stem}.png`` and ``{stem}.svg`` atomically; returns the PNG path.

    Any suffix on ``stem`` is replaced. A pyplot-managed figure is closed afterwards.
    """
    import matplotlib

    stem = Path(stem)
    stem = stem.with_name(stem.name.removesuffix(".png").removesuffix(".svg"))
    ensure_writable_dir(stem.parent)
    for fmt in FORMATS:
        meta = {"Software": None} if fmt == "png" else {"Date": None}
        buf = io.BytesIO()
        with matplotlib.rc_context({"svg.hashsalt": stem.name}):  # same figure, same bytes
            fig.savefig(buf, format=fmt, dpi=_DPI, bbox_inches="tight", metadata=meta)
        dest = stem.with_name(f"{stem.name}.{fmt}")
        try:
            with atomic_path(dest) as tmp:
                tmp.write_bytes(buf.getvalue())
        except OSError as e:
            raise OutputError(f"cannot write {dest}: {e.strerror or e}") from None
    if "matplotlib.pyplot" in sys.modules:  # free pyplot-managed figures; a bare Figure needs nothing
        sys.modules["matplotlib.pyplot"].close(fig)
    return stem.with_name(f"{stem.name}.png")
