"""Layer curves of several models on one relative-depth axis: where is each model's peak?

Curves often plateau, so one argmax says little. :func:`depth_peak` reports three statistics
of a layer curve with a confidence interval per layer (e.g. the probe's ``acc``, ``acc_lo``,
``acc_hi``):

- ``argmax``: the layer with the largest value;
- ``earliest``: the first layer whose value lies inside the argmax's interval (at or above its
  lower bound): the earliest depth that is as good as the best, given the noise;
- ``span``: the first and last relative depth inside that interval (where the peak may be);

and the curve's **shape**: ``inverted U`` (both the first and the last layer below the peak's
interval: rises then falls, the "peak in the middle" the small-model study reports),
``rise to plateau`` (only the first below), ``fall`` (only the last below) or ``flat``.

Relative depth is the probe table's ``rel_depth`` (``layer / n_layers``).

>>> import pandas as pd
>>> t = pd.DataFrame({"layer": range(5), "rel_depth": [0, .2, .4, .6, .8], "acc": [.3, .6, .8, .79, .5],
...                   "acc_lo": [.2, .5, .75, .74, .4], "acc_hi": [.4, .7, .85, .84, .6]})
>>> p = depth_peak(t)
>>> p["argmax_layer"], p["earliest_layer"], p["shape"]
(2, 2, 'inverted U')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from emoscope.errors import InputError
from emoscope.models.shape import known_depth
from emoscope.models.standard import parse_layer_text

__all__ = ["known_depth", "check_layers_exist", "depth_peak", "depth_figure"]


def _absolute(layers: Any) -> list[int]:
    """The absolute indices in a layer spec (ints and int strings; relative depths and 'all' skipped)."""
    if layers is None:
        return []
    if isinstance(layers, str):
        if layers.strip().lower() == "all":
            return []
        return [v for v in parse_layer_text(layers, strict=False) if isinstance(v, int)]
    if isinstance(layers, bool):
        return []
    if isinstance(layers, int):
        return [layers]
    if isinstance(layers, Sequence):
        return [v for v in layers if isinstance(v, int) and not isinstance(v, bool)]
    return []


def check_layers_exist(models: Sequence[str], layers: Any, what: str) -> None:
    """One ``InputError`` when an absolute layer index in ``layers`` does not exist in one of
    ``models`` (depths read without loading; models of unknown depth are skipped)."""
    depths = {m: known_depth(m) for m in models}
    for idx in _absolute(layers):
        for m, n in depths.items():
            if n is not None and not -n <= idx < n:
                others = ", ".join(f"{o} has {k}" for o, k in depths.items() if o != m and k is not None)
                raise InputError(f"{what}: layer {idx} does not exist in {m} ({n} layers{'; ' + others if others else ''}); "
                                 "models of different depth compare on relative depth: give layers as fractions "
                                 "(e.g. 0.5) or 'all'")


def depth_peak(table: Any, value: str = "acc", lo: str = "acc_lo", hi: str = "acc_hi") -> dict[str, Any]:
    """Peak statistics and shape of one layer curve (see the module doc)."""
    import numpy as np

    need = {"layer", "rel_depth", value, lo, hi}
    missing = sorted(need - set(table.columns))
    if missing:
        raise InputError(f"layer curve lacks column(s) {', '.join(missing)}")
    t = table.sort_values("layer").reset_index(drop=True)
    if len(t) == 0:
        raise InputError("layer curve is empty")
    v = t[value].to_numpy(float)
    i = int(np.nanargmax(v))
    floor = float(t[lo].iloc[i])
    inside = np.flatnonzero(v >= floor)
    first_below = bool(t[hi].iloc[0] < floor)
    last_below = bool(t[hi].iloc[-1] < floor)
    shape = {(True, True): "inverted U", (True, False): "rise to plateau", (False, True): "fall",
             (False, False): "flat"}[(first_below, last_below)]
    if len(t) < 3:
        shape = "too few layers"
    e = int(inside[0])
    return {"argmax_layer": int(t["layer"].iloc[i]), "argmax_rel_depth": float(t["rel_depth"].iloc[i]),
            "peak_value": float(v[i]), "peak_lo": floor, "peak_hi": float(t[hi].iloc[i]),
            "earliest_layer": int(t["layer"].iloc[e]), "earliest_rel_depth": float(t["rel_depth"].iloc[e]),
            "span_lo_rel_depth": float(t["rel_depth"].iloc[inside[0]]),
            "span_hi_rel_depth": float(t["rel_depth"].iloc[inside[-1]]),
            "n_layers_in_peak": int(len(inside)), "n_layers": int(len(t)), "shape": shape}


def depth_figure(curves: Mapping[str, Any], peaks: Mapping[str, Mapping[str, Any]], *, value: str = "acc",
                 lo: str = "acc_lo", hi: str = "acc_hi", ylabel: str = "probe accuracy (CV)"):  # noqa: ANN201
    """Every model's layer curve on one relative-depth axis, with its band, argmax (filled) and
    earliest-within-interval (open) markers."""
    from emoscope.core.figures import new_figure

    fig = new_figure(7, 4)
    ax = fig.add_subplot()
    for k, (name, t) in enumerate(curves.items()):
        t = t.sort_values("layer")
        c = f"C{k}"
        ax.plot(t["rel_depth"], t[value], color=c, label=f"{name} ({len(t)} layers)")
        ax.fill_between(t["rel_depth"], t[lo], t[hi], color=c, alpha=0.2)
        p = peaks[name]
        ax.plot([p["argmax_rel_depth"]], [p["peak_value"]], "o", color=c)
        ax.plot([p["earliest_rel_depth"]], [t.set_index("layer").loc[p["earliest_layer"], value]], "o",
                mfc="none", color=c, ms=10)
        ax.axvspan(p["span_lo_rel_depth"], p["span_hi_rel_depth"], color=c, alpha=0.06)
    ax.axvline(0.5, ls=":", color="0.5", lw=1)
    ax.set_xlabel("relative depth (layer / n_layers)")
    ax.set_ylabel(ylabel)
    ax.set_title("layer curves on relative depth: filled = argmax, open = earliest within its interval", fontsize=9)
    ax.legend(fontsize=8)
    return fig
