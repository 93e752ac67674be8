"""What the stage sections with a template of their own show: the alignment table with raw,
aligned and shuffled maps side by side, the emotion space and depth peaks (crossmodel), head
effects against random sets (heads), the two views of patching side by side, the arm
comparison and the elicited samples (modes), script shares by strength (leakage) and the
placebo ship rates. Each function reads the tables the stage wrote and returns plain rows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from emoscope.report.blocks import Figure, Table, frame_block
from emoscope.report.charts import interval_chart, line_chart
from emoscope.report.glance import fmt
from emoscope.report.registry import section_data
from emoscope.report.runview import split_name

if TYPE_CHECKING:
    from emoscope.report.runview import RunView

__all__: list[str] = []

_MAPS = ("raw", "ridge", "procrustes", "ridge_shuffled", "procrustes_shuffled")
_MAP_TITLES = {"raw": "raw (no map)", "ridge": "ridge", "procrustes": "Procrustes",
               "ridge_shuffled": "ridge, shuffled pairs", "procrustes_shuffled": "Procrustes, shuffled pairs"}
_HEADLINE_PAIR = ("gen_instr", "read_plain")  # generated with the instruction in context vs human text read plainly
_ALIGN_QUANTITIES = (("matched_cos2", "matched cos²"), ("mismatched_cos2", "mismatched cos²"),
                     ("subspace_overlap", "subspace overlap"), ("id_acc_centred", "identification (centred)"),
                     ("r2_heldout", "held-out R²"))


def _iv(v: Any, lo: Any = None, hi: Any = None) -> str:
    """``v [lo, hi]`` in three digits ("" for a missing value)."""
    text = fmt(_num(v))
    if text and _num(lo) is not None and _num(hi) is not None:
        text += f" [{fmt(_num(lo))}, {fmt(_num(hi))}]"
    return text


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _tables(view: RunView, stage: str, bare: str) -> list[str]:
    """The tables named ``bare`` that the stage wrote (with their model prefix, if any)."""
    rec = view.manifest.stages.get(stage)
    names = rec.tables if rec is not None and rec.tables else view.table_names
    return [t for t in names if split_name(t, view.keys)[1] == bare]


@section_data("crossmodel")
def _crossmodel(view: RunView, stage: str, rec: Any) -> dict[str, Any]:
    import pandas as pd

    out: dict[str, Any] = {"alignment": None, "emotion_space": None, "depth_peaks": None}
    al = view.table("alignment")
    if al is not None and {"map", "source", "target"} <= set(al.columns):
        keys = [c for c in ("source", "target", "depth", "vectors") if c in al.columns]
        rows = []
        for grp, g in al.groupby(keys, sort=False):
            g = g.set_index("map")
            ident = dict(zip(keys, grp if isinstance(grp, tuple) else (grp,), strict=True))
            for col, title in _ALIGN_QUANTITIES:
                if col not in g.columns:
                    continue
                where = [f"{view.label(ident['source'])} → {view.label(ident['target'])}"]
                where += [f"depth {fmt(_num(ident['depth']))}"] if "depth" in ident else []
                where += [f"{ident['vectors']} vectors"] if "vectors" in ident else []
                row = {"models · depth · vectors": ", ".join(where), "quantity": title}
                for m in _MAPS:
                    defined = m in g.index and bool(g.loc[m].get("defined", True)) if m in g.index else False
                    row[_MAP_TITLES[m]] = fmt(_num(g.loc[m, col])) if defined else "n/a"
                rows.append(row)
        note = ("Maps fitted on neutral texts only, applied to model A's emotion vectors; n/a: undefined (raw needs "
                "equal widths). Shuffled pairs: the same maps fitted on shuffled text pairs, the control. Matched "
                "cos² is inflated by what every emotion vector shares (compare mismatched cos²); identification: "
                "share of A's mapped, centred emotions nearest to the same emotion of B.")
        out["alignment"] = frame_block(view, pd.DataFrame(rows), "alignment", title="alignment: raw, aligned and "
                                       "shuffled maps", columns=None, note=note) if rows else None
    es = view.table("emotion_space")
    if es is not None and {"model", "pc"} <= set(es.columns):
        rows = [{"model": view.label(r.get("model")), "vectors": r.get("vectors"), "component": r.get("pc"),
                 "variance share": fmt(_num(r.get("variance_share"))),
                 "r with valence (p)": f"{fmt(_num(r.get('r_valence')))} ({fmt(_num(r.get('p_valence')))})",
                 "r with arousal (p)": f"{fmt(_num(r.get('r_arousal')))} ({fmt(_num(r.get('p_arousal')))})",
                 "depth": r.get("depth")} for r in es.to_dict("records")]
        out["emotion_space"] = frame_block(view, pd.DataFrame(rows), "emotion_space", title="emotion space",
                                           note="PCA of the emotion vectors centred on their mean; Pearson r of each "
                                                "component with valence and arousal ratings, two-sided permutation p.")
    dp = view.table("depth_peaks")
    if dp is not None and "model" in dp.columns:
        rows = [{"model": view.label(r.get("model")),
                 "peak (argmax)": f"layer {r.get('argmax_layer')} of {r.get('n_layers')} "
                                  f"(depth {fmt(_num(r.get('argmax_rel_depth')))})",
                 "value at the peak": _iv(r.get("peak_value"), r.get("peak_lo"), r.get("peak_hi")),
                 "depths inside the peak's interval": f"{fmt(_num(r.get('span_lo_rel_depth')))}–"
                                                      f"{fmt(_num(r.get('span_hi_rel_depth')))}",
                 "earliest such layer": r.get("earliest_layer"), "shape": r.get("shape")}
                for r in dp.to_dict("records")]
        out["depth_peaks"] = frame_block(view, pd.DataFrame(rows), "depth_peaks", title="peak relative depth")
    return out


@section_data("heads")
def _heads(view: RunView, stage: str, rec: Any) -> dict[str, Any]:
    import pandas as pd

    effects: list[Table] = []
    for mode in ("ablate", "patch"):
        for name in _tables(view, stage, f"heads_{mode}_effects"):
            df = view.table(name)
            if df is None or "metric" not in df.columns:
                continue
            rows = [{"method": r.get("method"), "metric": r.get("metric"),
                     "chosen heads: change": _iv(r.get("mean_change"), r.get("change_lo"), r.get("change_hi")),
                     "random sets: change": fmt(_num(r.get("mean_change_random"))),
                     "effect over random": _iv(r.get("effect"), r.get("effect_lo"), r.get("effect_hi")),
                     "rank among random sets": f"{r.get('rank')} of {int(r.get('k', 0)) + 1}" if r.get("k") else "",
                     "rank p (floor)": f"{fmt(_num(r.get('rank_p')))} ({fmt(_num(r.get('floor')))})"}
                    for r in df.to_dict("records")]
            effects.append(frame_block(view, pd.DataFrame(rows), name, title=f"{mode}: chosen heads against random sets",
                                       note="effect = the chosen heads' change minus the random sets' mean change, "
                                            "per prompt; the rank among the random sets cannot go below its floor."))
    return {"effects": effects}


@section_data("patch")
def _patch(view: RunView, stage: str, rec: Any) -> dict[str, Any]:
    out = []
    for name in _tables(view, stage, "patch_cells"):
        df = view.table(name)
        if df is None or "effect" not in df.columns:
            continue
        for r in df.to_dict("records"):
            out.append({"cell": f"layer {r.get('layer')}, {r.get('positions')}",
                        "multi": _iv(r.get("effect"), r.get("effect_lo"), r.get("effect_hi")),
                        "multi_p": fmt(_num(r.get("p_value"))), "success": fmt(_num(r.get("success_rate"))),
                        "step1": _iv(r.get("step1_effect"), r.get("step1_effect_lo"), r.get("step1_effect_hi")),
                        "step1_p": fmt(_num(r.get("p_step1"))), "views": r.get("views", ""),
                        "href": f"tables/{name}.csv"})
    return {"cells": out}


@section_data("modes")
def _modes(view: RunView, stage: str, rec: Any) -> dict[str, Any]:
    import pandas as pd

    out: dict[str, Any] = {"summary": None, "paired": None, "counts": None, "samples": [], "key_figure": None}
    for name in _tables(view, stage, "modes_summary"):
        df = view.table(name)
        if df is not None:
            out["summary"] = frame_block(view, df, name, title="arm comparison (mean over emotions)",
                                         columns=["arm", "description", "probe_accuracy", "separation",
                                                  "cross_to_read_plain", "steer_effect", "steer_success_rate"])
    for name in _tables(view, stage, "modes_paired"):
        df = view.table(name)
        if df is not None and {"diff", "diff_lo", "diff_hi", "metric", "a", "b"} <= set(df.columns):
            recs = [r for r in df.to_dict("records") if _num(r["diff"]) is not None and _num(r["diff_lo"]) is not None]
            head = [r for r in recs if (r["a"], r["b"]) == _HEADLINE_PAIR] or recs  # the comparison the study made
            rows = [(str(r["metric"]), float(r["diff"]), float(r["diff_lo"]), float(r["diff_hi"])) for r in head]
            if rows:
                a, b = (head[0]["a"], head[0]["b"]) if len({(r["a"], r["b"]) for r in head}) == 1 else ("A", "B")
                out["key_figure"] = Figure(name, interval_chart(rows, x_label=f"{a} − {b}, mean over emotions "
                                                                "(bootstrap interval)"),
                                           f"Generation against comprehension: {a} − {b} per metric, with its "
                                           f"interval over emotions (drawn from tables/{name}.csv)")
        if df is not None and "diff" in df.columns:
            rows = [{"metric": r.get("metric"), "a − b": f"{r.get('a')} − {r.get('b')}",
                     "difference": _iv(r.get("diff"), r.get("diff_lo"), r.get("diff_hi")),
                     "wins / losses": f"{r.get('wins')} / {r.get('losses')}",
                     "p (Holm)": f"{fmt(_num(r.get('p_value')))} ({fmt(_num(r.get('p_holm')))})",
                     "floor": fmt(_num(r.get("min_p"))), "isolates": r.get("isolates", "")}
                    for r in df.to_dict("records")]
            out["paired"] = frame_block(view, pd.DataFrame(rows), name, title="paired tests over emotions (Wilcoxon)")
    for name in _tables(view, stage, "elicit_counts"):
        df = view.table(name)
        if df is not None:
            out["counts"] = frame_block(view, df, name, title="elicited texts: kept and rejected per emotion")
    for name in _tables(view, stage, "elicit_samples"):
        df = view.table(name)
        if df is not None and {"label", "text"} <= set(df.columns):
            for label, g in df.groupby("label", sort=True):
                texts = [str(t) for t in g["text"].tolist()]
                out["samples"].append({"label": label, "first": texts[0] if texts else "", "more": texts[1:3]})
    return out


@section_data("leakage")
def _leakage(view: RunView, stage: str, rec: Any) -> dict[str, Any]:
    import pandas as pd

    charts, tables = [], []
    for name in _tables(view, stage, "leakage_by_strength"):
        df = view.table(name)
        if df is None or not {"kind", "abs_strength", "token_share"} <= set(df.columns):
            continue
        by = ["emotion"] if "emotion" in df.columns else []
        for key, g in (df.groupby(by, sort=False) if by else [(None, df)]):
            emo = key[0] if isinstance(key, tuple) else key
            series = {str(k): [(float(s), float(v)) for s, v in zip(h["abs_strength"], h["token_share"], strict=True)]
                      for k, h in g.groupby("kind", sort=True)}
            band = None
            rnd = g[g["kind"] == "random"]
            if len(rnd) and {"token_share_lo", "token_share_hi"} <= set(rnd.columns):
                band = [(float(s), float(lo), float(hi)) for s, lo, hi in
                        zip(rnd["abs_strength"], rnd["token_share_lo"], rnd["token_share_hi"], strict=True)]
            title = f"token share outside the prompt's script{f' — {emo}' if emo else ''}"
            charts.append(Figure(name, line_chart(series, x_label="|strength|", y_label="token share", band=band,
                                                  band_label="random 95% range"),
                                 f"{title}, by |strength| (drawn from tables/{name}.csv)"))
            rows = []
            for s, h in g.groupby("abs_strength", sort=True):
                row: dict[str, Any] = {"|strength|": fmt(float(s))}
                for r in h.to_dict("records"):
                    text = _iv(r.get("token_share"), r.get("token_share_lo"), r.get("token_share_hi"))
                    broken = _num(r.get("broken"))
                    row[str(r["kind"])] = text + (f"; {broken:.0%} broken" if broken is not None else "")
                rows.append(row)
            tables.append(frame_block(view, pd.DataFrame(rows), name, title=title + " by strength and kind",
                                      note="mean token share per output; random: 95% range over random vectors; "
                                           "broken: collapsed or explosive outputs, where leakage is a loop."))
    return {"key_figure": charts[0] if charts else None, "charts": charts[1:], "by_strength": tables}


@section_data("placebo")
def _placebo(view: RunView, stage: str, rec: Any) -> dict[str, Any]:
    rows = []
    section = view.spec.get("placebo")
    alpha = _num(section.get("alpha")) if isinstance(section, dict) else None  # the stage's level, if set
    alpha = 0.05 if alpha is None else alpha
    for name in _tables(view, stage, "placebo_rates"):
        df = view.table(name)
        if df is None or "kind" not in df.columns:
            continue
        for r in df.to_dict("records"):
            lo, hi = _num(r.get("lo")), _num(r.get("hi"))
            if lo is not None and lo > alpha:
                word, cls = "above α", "c-fail"
            elif hi is not None and hi < alpha:
                word, cls = "below α", "c-pass"
            else:
                word, cls = "consistent with α", "c-pass" if lo is not None else "muted"
            rows.append({"kind": r.get("kind"), "n_decoys": r.get("n_decoys"), "n_ship": r.get("n_ship"),
                         "rate": _iv(r.get("rate"), lo, hi), "word": word, "cls": cls,
                         "model": split_name(name, view.keys)[0], "href": f"tables/{name}.csv"})
    return {"rates": rows, "alpha": alpha}
