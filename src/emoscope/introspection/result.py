"""``InjectionResult``: the tables of a concept-injection sweep (``run_sweep``), its figures, its
meta, and writing them to disk. Re-exported by ``emoscope.introspection.sweep``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from emoscope.errors import InputError
from emoscope.introspection.heldout import HeldOutFinding

__all__ = ["InjectionResult"]


@dataclass
class InjectionResult:
    """Tables of a sweep (pandas) and what produced them.

    - ``cells``: one row per forward cell (condition, vector, kind, question, layer, strength,
      scale, logit_diff, shift, p_yes, p_no)
    - ``per_vector``: detection shift, control shift and score per vector × layer × strength
    - ``summary``: means over vectors with bootstrap intervals and min/max over vectors, per
      condition (``concept``, ``random`` isotropic, ``random_cov`` covariance-matched) × layer ×
      strength
    - ``lens``: logit lens of the yes-no difference per swept layer, at the strength where
      detection flips and the controls do not (else the focus strength; ``strength_choice``)
    - ``heads``: attention from the answer position to the window per (layer, head): detection
      and control questions with concept injection, detection without, random vectors beside
    - ``flips``: per vector and layer, the strength where detection flips, where the control
      flips, and the gap
    - ``ablation``: with ``ablate``, the score with and without the ablated direction
    - ``norms``: the mean residual norm per layer (the strength unit) and the share of it that its
      largest dimension carries (see ``resid_norm_profile``)
    - ``heldout``: the reported cell, chosen on half the concepts and reported on the other
      (``emoscope.introspection.heldout``); its table is ``introspect_heldout``
    """

    cells: pd.DataFrame
    per_vector: pd.DataFrame
    summary: pd.DataFrame
    lens: pd.DataFrame
    norms: pd.DataFrame
    heads: pd.DataFrame | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    free_text: pd.DataFrame | None = None
    heldout: HeldOutFinding | None = None
    flips: pd.DataFrame | None = None
    ablation: pd.DataFrame | None = None

    def tables(self) -> dict[str, pd.DataFrame]:
        out = {"introspect_cells": self.cells, "introspect_per_vector": self.per_vector,
               "introspect_summary": self.summary, "introspect_lens": self.lens, "introspect_norms": self.norms}
        if self.flips is not None:
            out["introspect_flips"] = self.flips
        if self.ablation is not None:
            out["introspect_ablation"] = self.ablation
        if self.heldout is not None:
            out["introspect_heldout"] = self.heldout.table()
        if self.heads is not None:
            out["introspect_heads"] = self.heads
        if self.free_text is not None:
            out["introspect_free_text"] = self.free_text
        return out

    def figures(self) -> dict[str, Any]:
        from emoscope.introspection.plots import sweep_figures

        return sweep_figures(self)

    def save(self, out: str | os.PathLike[str]) -> Path:
        """Write ``tables/*.csv|json``, ``figures/*.png|svg`` and ``introspect.json`` under ``out``."""
        from emoscope._io import atomic_write_json, atomic_write_text, ensure_writable_dir
        from emoscope.core.figures import save_figure

        root = ensure_writable_dir(out)
        tables, figs = ensure_writable_dir(root / "tables"), ensure_writable_dir(root / "figures")
        for name, df in self.tables().items():
            atomic_write_text(tables / f"{name}.csv", df.to_csv(index=False))
            atomic_write_text(tables / f"{name}.json", df.to_json(orient="split", index=False, indent=1))
        for name, fig in self.figures().items():
            save_figure(fig, figs / name)
        atomic_write_json(root / "introspect.json", self.meta)
        return root

    def focus(self, condition: str = "concept", layer: int | None = None) -> pd.Series:
        """The summary row at the focus strength (and ``layer``, default the focus layer)."""
        s = self.summary
        layer = self.meta["focus_layer"] if layer is None else layer
        row = s[(s.condition == condition) & (s.layer == layer) & (s.strength == self.meta["focus_strength"])]
        if row.empty:
            raise InputError(f"no {condition} row at layer {layer}, strength {self.meta['focus_strength']}")
        return row.iloc[0]
