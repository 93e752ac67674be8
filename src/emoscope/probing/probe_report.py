"""``ProbeReport``: the layer curve, its controls, a confound verdict, and its files."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emoscope._io import atomic_write_text, ensure_writable_dir
from emoscope.errors import DataError, OutputError

__all__ = ["ProbeReport", "SCHEMA_VERSION", "TABLE_COLUMNS"]

SCHEMA_VERSION = 1
TABLE_COLUMNS = [
    "layer", "rel_depth", "acc", "acc_lo", "acc_hi", "bal_acc", "f1", "auroc",
    "shuffled_acc", "shuffled_lo", "shuffled_hi", "perm_p", "perm_p_holm", "perm_p_max",
    "random_dir_acc", "seed_sd", "selectivity",
]


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass
class ProbeReport:
    """Result of ``probe_layers``.

    ``table``: one row per layer with the columns in ``TABLE_COLUMNS``; ``baselines``:
    chance, length-only and bag-of-words accuracies with intervals; ``peak_layer`` and
    ``peak_rel_depth``: the best layer on the dev folds; ``heldout_acc``: that layer's
    accuracy on rows never used to choose it (``{"acc", "lo", "hi", "n", "layer"}``);
    ``nullspace``: CV accuracy at the peak after 0..k INLP removals (entry 0 = none);
    ``permutation``: the logistic permutation test at the peak (not corrected for choosing
    it); ``permutation_max``: the shuffled-label test of the peak against the null of the best
    layer (ridge probe, max over layers per shuffle; the table's ``perm_p_max`` at the peak);
    ``confounded`` and ``confound_reasons``; ``notes``: other caveats worth reading.

    >>> rep = ProbeReport(table=pd.DataFrame({"layer": [0]}), baselines={}, peak_layer=0,
    ...                   peak_rel_depth=0.0)
    >>> rep.to_dict()["peak_layer"]
    0
    """

    table: pd.DataFrame
    baselines: dict[str, Any]
    peak_layer: int
    peak_rel_depth: float
    heldout_acc: dict[str, Any] | None = None
    nullspace: list[float] = field(default_factory=list)
    permutation: dict[str, Any] | None = None
    permutation_max: dict[str, Any] | None = None
    confounded: bool = False
    confound_reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def peak(self) -> dict[str, Any]:
        """The table row of the peak layer, as a dict."""
        row = self.table.loc[self.table["layer"] == self.peak_layer].iloc[0]
        return {k: _clean(v) for k, v in row.to_dict().items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN becomes null)."""
        return _clean(
            {
                "schema_version": SCHEMA_VERSION,
                "kind": "probe_layers",
                "table": self.table.to_dict(orient="records"),
                "baselines": self.baselines,
                "peak_layer": self.peak_layer,
                "peak_rel_depth": self.peak_rel_depth,
                "heldout_acc": self.heldout_acc,
                "nullspace": self.nullspace,
                "permutation": self.permutation,
                "permutation_max": self.permutation_max,
                "confounded": self.confounded,
                "confound_reasons": self.confound_reasons,
                "notes": self.notes,
                "meta": self.meta,
            }
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeReport:
        try:
            table = pd.DataFrame(d["table"]).astype({"layer": int})
            return cls(
                table=table.apply(pd.to_numeric, errors="coerce"),
                baselines=d["baselines"], peak_layer=int(d["peak_layer"]),
                peak_rel_depth=float(d["peak_rel_depth"]), heldout_acc=d.get("heldout_acc"),
                nullspace=list(d.get("nullspace") or []), permutation=d.get("permutation"),
                permutation_max=d.get("permutation_max"),
                confounded=bool(d.get("confounded")), confound_reasons=list(d.get("confound_reasons") or []),
                notes=list(d.get("notes") or []), meta=dict(d.get("meta") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"not a probe report ({type(e).__name__}: {e})") from None

    def save(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``tables/probe_layers.csv`` and ``tables/probe_layers.json`` atomically.

        >>> import tempfile
        >>> rep = ProbeReport(table=pd.DataFrame({"layer": [0]}), baselines={}, peak_layer=0,
        ...                   peak_rel_depth=0.0)
        >>> sorted(rep.save(tempfile.mkdtemp()))
        ['csv', 'json']
        """
        tables = ensure_writable_dir(Path(out_dir) / "tables")
        csv_path, json_path = tables / "probe_layers.csv", tables / "probe_layers.json"
        try:
            atomic_write_text(csv_path, self.table.to_csv(index=False))
            atomic_write_text(json_path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        except OSError as e:
            raise OutputError(f"cannot write probe tables in {tables}: {e.strerror or e}") from None
        return {"csv": csv_path, "json": json_path}

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str]) -> ProbeReport:
        """Read ``tables/probe_layers.json`` written by :meth:`save`."""
        path = Path(out_dir) / "tables" / "probe_layers.json"
        if not path.is_file():
            raise DataError(f"probe report not found: {path}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{path} is not valid JSON ({e})") from None
        return cls.from_dict(d)

    def figure(self, title: str | None = None) -> Any:
        """A matplotlib ``Figure`` (no pyplot) of accuracy vs. relative depth: the probe
        with its interval band, the shuffled-label and random-direction curves, the
        length-only, bag-of-words and chance lines, and the held-out point at the peak.

        >>> rep = ProbeReport(table=pd.DataFrame({"layer": [0, 1], "rel_depth": [0.0, 0.5],
        ...     "acc": [0.5, 0.9], "acc_lo": [0.4, 0.8], "acc_hi": [0.6, 1.0]}),
        ...     baselines={"chance": 0.5}, peak_layer=1, peak_rel_depth=0.5)
        >>> len(rep.figure().axes)
        1
        """
        from matplotlib.figure import Figure

        t = self.table.sort_values("rel_depth")
        x = t["rel_depth"].to_numpy()
        fig = Figure(figsize=(7, 4.2))
        ax = fig.add_subplot()
        ax.fill_between(x, t["acc_lo"], t["acc_hi"], color="C0", alpha=0.2, label="95% CI")
        ax.plot(x, t["acc"], "o-", color="C0", ms=3, label="probe (dev CV)")
        for col, style, color, label in (("shuffled_acc", "--", "C3", "shuffled labels"),
                                         ("random_dir_acc", ":", "C2", "random directions")):
            if col in t and t[col].notna().any():
                ax.plot(x, t[col], style, color=color, label=label)
        b = self.baselines
        for key, label, color in (("length_only_acc", "length only", "C1"), ("bow_acc", "bag of words", "C4")):
            if b.get(key) is not None:
                ax.axhline(b[key], color=color, ls="-.", lw=1, label=f"{label} ({b[key]:.2f})")
        if b.get("chance") is not None:
            ax.axhline(b["chance"], color="grey", lw=1, label=f"chance ({b['chance']:.2f})")
        if self.heldout_acc:
            h = self.heldout_acc
            ax.errorbar([self.peak_rel_depth], [h["acc"]], yerr=[[h["acc"] - h["lo"]], [h["hi"] - h["acc"]]],
                        fmt="s", color="k", ms=5, capsize=3, label="held-out at peak")
        ax.axvline(self.peak_rel_depth, color="C0", lw=0.8, alpha=0.5)
        ax.set_xlabel("relative depth (layer / n_layers)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_title((title or "layer probe") + (" (confounded)" if self.confounded else ""))
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        return fig

    def plot(self, path_stem: str | os.PathLike[str], title: str | None = None) -> dict[str, Path]:
        """Write :meth:`figure` to ``{path_stem}.png`` and ``{path_stem}.svg`` atomically."""
        from emoscope.core.figures import FORMATS, save_figure

        png = save_figure(self.figure(title), path_stem)
        return {ext: png.with_name(f"{png.stem}.{ext}") for ext in FORMATS}


def judge(report: ProbeReport, controls: Any) -> None:
    """Fill ``confounded``, ``confound_reasons`` and caveat ``notes`` from the numbers."""
    peak = report.table.loc[report.table["layer"] == report.peak_layer].iloc[0]
    acc = float(peak["acc"])
    b = report.baselines
    chance = float(b["chance"])
    ratio = float(controls.confound_ratio)
    reasons: list[str] = []
    for key, name in (("length_only", "length-only"), ("bow", "bag-of-words")):
        if b.get(f"{key}_acc") is None:
            continue
        base, lo = float(b[f"{key}_acc"]), float(b[f"{key}_lo"])
        # A baseline at chance never explains a probe, however weak the probe is.
        if base >= ratio * acc and lo > chance:
            reasons.append(f"{name} baseline reaches {base:.2f} >= {ratio:g}x the activation probe ({acc:.2f})")
    report.confound_reasons = reasons
    report.confounded = bool(reasons)
    notes = report.notes
    if report.heldout_acc:
        h = report.heldout_acc
        if h["lo"] <= chance:
            notes.append(f"held-out accuracy {h['acc']:.2f} [{h['lo']:.2f}, {h['hi']:.2f}] includes chance ({chance:.2f})")
        if h["hi"] < float(peak["acc_lo"]):
            notes.append(f"held-out accuracy {h['acc']:.2f} is below the dev interval: the peak choice may be optimistic")
    if report.permutation and report.permutation["p"] >= controls.alpha:
        notes.append(f"permutation test at the peak: p = {report.permutation['p']:.3f} >= {controls.alpha}")
    pm = report.permutation_max
    if pm and pm["p"] >= controls.alpha:
        notes.append(f"against the best of {pm['n_layers']} layers under shuffled labels the peak is not significant: "
                     f"p = {pm['p']:.3f} >= {controls.alpha}")
    holm_p = report.table["perm_p_holm"]
    if holm_p.notna().any() and not (holm_p < controls.alpha).any():
        notes.append(f"no layer passes the Holm-corrected permutation test at {controls.alpha}")
    rd = peak.get("random_dir_acc")
    if rd is not None and not math.isnan(rd) and rd >= ratio * acc and rd > chance:
        notes.append(f"random directions reach {rd:.2f}: the signal is not specific to the learned directions")
    sd = peak.get("seed_sd")
    if sd is not None and not math.isnan(sd) and sd > 0.05:
        notes.append(f"seed-to-seed sd of accuracy at the peak is {sd:.3f}")
