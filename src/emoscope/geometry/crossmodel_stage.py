"""Run stage ``crossmodel``: every model of a multi-model spec compared with the others.

It runs once, after the per-model stages (``stages.yaml`` gives it ``scope: models``), and reads
each model's activations through the content-addressed cache (one extraction per model and text
set, shared with the per-model stages). For each model, at each relative depth in ``depths``:

- emotion vectors: class mean minus the dataset's ``neutral`` class (``raw``), and the paper
  recipe (``denoised``: minus the mean over emotions, top neutral PCs explaining ``neutral_share``
  of the variance projected out; ``position: mean_from:K`` gives its first step);
- ``emotion_space``: centred PCA of the vectors and PC1/PC2 against valence/arousal ratings
  (permutation p), for both kinds of vector;
- ``alignment``: for each pair of models, maps fitted on ``neutral`` texts only
  (``geometry.crossmodel``): raw (undefined when widths differ), ridge, Procrustes and their
  shuffled-pairing controls, with matched cos^2, subspace overlap and the identification test;
- ``cka``: debiased linear CKA layer x layer within each model and model x model, on the
  neutral texts;
- ``depth_peaks``: each model's probe curve (when the ``probe`` stage ran) on relative depth,
  with argmax, earliest-within-interval and the curve's shape.

Findings: ``alignment`` (one per pair, at ``depth``: centred identification with the shuffled
control), ``emotion_space`` (PC1/PC2 vs valence/arousal per model), ``depth`` (peaks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from emoscope.audit import Control, Finding, Observation
from emoscope.core.stages import StageResult, register_stage, require_classes
from emoscope.errors import InputError

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = ["CrossModelOptions", "crossmodel_stage", "check_crossmodel", "alignment_finding"]


class CrossModelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    neutral: str = "neutral-corpus"  # texts the maps, neutral PCs and CKA are computed on
    depth: int | float = 0.5  # relative depth (float in [0, 1]) or absolute layer (int) of the findings
    sweep_depths: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75])  # extra rows in the tables
    position: str | None = None  # None: the extract section's; e.g. "mean_from:3" for the paper recipe
    neutral_share: float = Field(default=0.5, gt=0.0, le=1.0)  # variance share of the neutral PCs removed
    valence_arousal: str | None = None  # a CSV/JSON table (emotion, valence, arousal); None: the shipped one
    test_share: float = Field(default=0.2, gt=0.0, lt=0.5)  # held-out neutral texts for R^2
    n_perm: int = Field(default=9999, ge=99)
    # maps refitted on random pairings of the neutral texts: the null of the shuffled-pairing test
    # (floor 1 / (n_pairings + 1); at least 20 so that it can pass at 0.05)
    n_pairings: int = Field(default=99, ge=20)
    alpha: float = 0.05


def _emotions(spec, dataset) -> list[str]:  # noqa: ANN001
    classes = list(require_classes(dataset, "crossmodel", spec.dataset))
    emotions = [c for c in classes if c != "neutral"]
    if len(emotions) < 3:
        raise InputError(f"crossmodel: {spec.dataset} has {len(emotions)} emotion classes ({', '.join(emotions)}); "
                         "the identification test and the emotion space need at least 3")
    return emotions


def check_crossmodel(spec, dataset) -> None:  # noqa: ANN001 - emoscope.runs.Spec, a Dataset
    """Before any model loads: two models at least, layers every model has, enough emotions,
    readable neutral texts and (when given) a valence/arousal table naming known emotions."""
    from emoscope.datasets import load_texts
    from emoscope.geometry.depth import check_layers_exist
    from emoscope.geometry.emotion_space import check_valence_arousal, load_valence_arousal

    opts: CrossModelOptions = spec.options("crossmodel")
    models = spec.all_models
    if len(models) < 2:
        raise InputError(f"crossmodel compares models, but the spec names one ({models[0]}); add the others as "
                         "`models: [NAME, ...]`")
    extract = spec.options("extract")
    check_layers_exist(models, getattr(extract, "layers", None) if extract else None, "extract.layers")
    if isinstance(opts.depth, int) and not isinstance(opts.depth, bool):
        check_layers_exist(models, opts.depth, "crossmodel.depth")
    elif not 0.0 <= float(opts.depth) <= 1.0:
        raise InputError(f"crossmodel.depth: {opts.depth} is neither a relative depth in [0, 1] nor a layer index")
    if any(not 0.0 <= d <= 1.0 for d in opts.sweep_depths):
        raise InputError(f"crossmodel.sweep_depths: relative depths must be in [0, 1]; got {opts.sweep_depths}")
    emotions = _emotions(spec, dataset)
    if len(load_texts(opts.neutral)) < 20:
        raise InputError(f"crossmodel: {opts.neutral} has fewer than 20 texts; the maps need more neutral text")
    if opts.valence_arousal:
        check_valence_arousal(load_valence_arousal(opts.valence_arousal), emotions, where=opts.valence_arousal)


def _layer(depth: int | float, n_layers: int) -> int:
    if isinstance(depth, int) and not isinstance(depth, bool):
        return depth if depth >= 0 else n_layers + depth
    return min(n_layers - 1, max(0, int(round(float(depth) * n_layers))))


@register_stage("crossmodel", options_model=CrossModelOptions, check=check_crossmodel,
                description="models compared: neutral-fitted alignment with controls, CKA, emotion space, depth")
def crossmodel_stage(ctx: RunContext) -> StageResult:
    import numpy as np
    import pandas as pd

    from emoscope.datasets import load_texts
    from emoscope.geometry.crossmodel import compare_vectors, fit_neutral_maps
    from emoscope.geometry.emotion_space import denoise_vectors, emotion_space, load_valence_arousal

    opts: CrossModelOptions = ctx.options
    data = ctx.dataset
    emotions = _emotions(ctx.spec, data)
    y = np.asarray(data.labels).astype(str)
    base = "neutral" if "neutral" in set(y.tolist()) else None
    neutral_texts = list(load_texts(opts.neutral))
    kw: dict[str, Any] = {"progress": False, "layers": "all"}
    if opts.position:
        kw["position"] = opts.position
    va = load_valence_arousal(opts.valence_arousal)
    if opts.valence_arousal is None:
        va = va.loc[[e for e in va.index if e in set(emotions)]]
    keys = ctx.spec.model_keys
    depths = list(dict.fromkeys([opts.depth, *opts.sweep_depths]))
    per: dict[str, dict[str, Any]] = {}
    for name in ctx.models:
        model = ctx.load_model(name)
        acts = ctx.activations(model=name, **kw)
        neutral = ctx.activations(neutral_texts, model=name, **kw)
        n_layers = int(model.n_layers)
        layers = {d: _layer(d, n_layers) for d in depths}
        vecs: dict[tuple[Any, str], dict[str, np.ndarray]] = {}
        n_removed = {}
        for d, L in layers.items():
            X = acts.get(L).astype(np.float64)
            means = {e: X[y == e].mean(0) for e in emotions}
            ref = X[y == base].mean(0) if base else np.mean(list(means.values()), axis=0)
            vecs[(d, "raw")] = {e: m - ref for e, m in means.items()}
            vecs[(d, "denoised")], n_removed[d] = denoise_vectors(means, neutral.get(L), share=opts.neutral_share)
        per[name] = {"key": keys[name], "n_layers": n_layers, "layers": layers, "vecs": vecs, "neutral": neutral,
                     "d_model": int(neutral.get(layers[opts.depth]).shape[1]), "n_removed": n_removed}
    ctx.note(f"vectors: raw = class mean minus {'the neutral class' if base else 'the mean of all classes'}; "
             f"denoised = class mean minus the mean over the {len(emotions)} emotions, with the top principal "
             f"components of {opts.neutral} explaining {opts.neutral_share:.0%} of its variance projected out; "
             f"position {opts.position or getattr(ctx.spec.options('extract'), 'position', 'last')}")

    # emotion space ------------------------------------------------------------------------------
    es_rows = []
    if len(emotions) < 4:
        ctx.note(f"emotion space: skipped, {len(emotions)} emotions are too few to correlate components with ratings")
    for name, p in per.items():
        for (d, kind), v in p["vecs"].items() if len(emotions) >= 4 else ():
            es = emotion_space(v, va, n_perm=opts.n_perm, seed=ctx.seed)
            for row in es.rows():
                es_rows.append({"model": name, "depth": d, "layer": p["layers"][d],
                                "rel_depth": p["layers"][d] / p["n_layers"], "vectors": kind,
                                "neutral_pcs_removed": p["n_removed"][d] if kind == "denoised" else 0, **row})
            if d == opts.depth:
                for f in _space_findings(name, p["layers"][d], kind, es, opts.alpha):
                    ctx.add_finding(f)
                if kind == "raw":
                    ctx.save_figure(f"emotion_space_{p['key']}", _space_figure(name, es, va))
    if es_rows:
        ctx.write_table("emotion_space", pd.DataFrame(es_rows))

    # alignment ----------------------------------------------------------------------------------
    al_rows = []
    names = list(per)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = per[a], per[b]
            for d in depths:
                La, Lb = pa["layers"][d], pb["layers"][d]
                maps = fit_neutral_maps(pa["neutral"].get(La), pb["neutral"].get(Lb), test_share=opts.test_share,
                                        n_pairings=opts.n_pairings, seed=ctx.seed)
                if d == opts.depth:
                    ctx.note(f"{a} -> {b}, layers {La} -> {Lb}: ridge penalty {maps.lam_rel:g} x the mean Gram "
                             "eigenvalue, chosen by 5-fold CV R^2 on the training neutral texts ("
                             + ", ".join(f"{k:g}: {v:.3f}" for k, v in maps.cv_r2.items()) + f"); held-out R^2 "
                             f"ridge {maps.r2_heldout['ridge']:.3f}, procrustes {maps.r2_heldout['procrustes']:.3f} "
                             f"(k={maps.k_common}); denoised vectors: {pa['n_removed'][d]} / {pb['n_removed'][d]} "
                             "neutral PCs removed")
                for kind in ("raw", "denoised"):
                    rows = compare_vectors(pa["vecs"][(d, kind)], pb["vecs"][(d, kind)], maps.maps, seed=ctx.seed,
                                           labels=(a, b), pairings=maps.pairings)
                    for r in rows:
                        r.update(source=a, target=b, depth=d, layer_a=La, layer_b=Lb, vectors=kind,
                                 neutral_pcs_removed=(f"{pa['n_removed'][d]}/{pb['n_removed'][d]}"
                                                      if kind == "denoised" else "0/0"),
                                 r2_heldout=maps.r2_heldout.get(r["map"], float("nan")), lambda_rel=maps.lam_rel,
                                 k_common=maps.k_common, n_neutral_train=maps.n_train, n_neutral_test=maps.n_test)
                    al_rows += rows
                    if d == opts.depth and kind == "raw":
                        ctx.add_finding(alignment_finding(a, b, La, Lb, rows, maps, alpha=opts.alpha))
    cols = ["source", "target", "depth", "layer_a", "layer_b", "vectors", "map", "defined", "matched_cos2",
            "mismatched_cos2", "p_matched", "chance_cos2", "subspace_overlap", "chance_overlap",
            "subspace_overlap_centred", "chance_overlap_centred", "median_angle_deg", "id_acc", "id_p",
            "id_acc_centred", "id_p_centred", "id_p_min", "chance_id", "matched_cos_centred", "p_pairing",
            "pairing_null_mean", "pairing_null_q95", "pairing_id_acc_centred_mean", "n_pairings", "r2_heldout", "lambda_rel", "k_common", "n_emotions",
            "n_neutral_train", "n_neutral_test", "neutral_pcs_removed", "note"]
    al = pd.DataFrame(al_rows)
    ctx.write_table("alignment", al[[c for c in cols if c in al.columns]])

    # CKA ----------------------------------------------------------------------------------------
    from emoscope.geometry.cka import cka_matrix

    cka_rows = []
    reps = {n: {L: p["neutral"].get(L) for L in p["neutral"].layers} for n, p in per.items()}
    mats = {}
    for n, r in reps.items():
        ka, _, M = cka_matrix(r)
        mats[(n, n)] = (ka, ka, M)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            mats[(a, b)] = cka_matrix(reps[a], reps[b])
    for (a, b), (ka, kb, M) in mats.items():
        for ii, La in enumerate(ka):
            for jj, Lb in enumerate(kb):
                cka_rows.append({"model_a": a, "layer_a": La, "rel_a": La / per[a]["n_layers"], "model_b": b,
                                 "layer_b": Lb, "rel_b": Lb / per[b]["n_layers"], "cka": M[ii, jj]})
    ctx.write_table("cka", pd.DataFrame(cka_rows))
    ctx.save_figure("cka", _cka_figure(mats, per))

    # relative depth -----------------------------------------------------------------------------
    summary_depth = _depth_section(ctx, per)

    head = [r for r in al_rows if r["depth"] == opts.depth and r["vectors"] == "raw" and r.get("defined")]
    pick = {r["map"]: r for r in head if r["source"] == names[0] and r["target"] == names[1]}
    metrics = {f"{m}_{k}": round(float(pick[m][k]), 4) for m in ("ridge", "procrustes", "ridge_shuffled")
               if m in pick for k in ("matched_cos2", "id_acc_centred")}
    s = (f"{names[0]} -> {names[1]} at depth {opts.depth}: matched cos2 ridge {pick['ridge']['matched_cos2']:.3f}, "
         f"procrustes {pick['procrustes']['matched_cos2']:.3f}, shuffled {pick['ridge_shuffled']['matched_cos2']:.3f}; "
         f"centred identification {pick['ridge']['id_acc_centred']:.2f} (chance {pick['ridge']['chance_id']:.2f})"
         if pick else "no alignment rows")
    return StageResult(summary=s + summary_depth, metrics=metrics)


def alignment_finding(a: str, b: str, la: int, lb: int, rows: list[dict[str, Any]], maps: Any, *,
                      alpha: float = 0.05) -> Finding:
    """``alignment`` finding for the ridge map: centred identification of A's mapped emotion
    vectors among B's, with the shuffled-pairing control, raw identification and held-out R^2.

    Two tests decide the verdict: ``identification`` (exact permutation p of the centred hits,
    ``geometry.crossmodel.identification_pvalue``) and ``shuffled_pairing`` (rank p of the real
    map among maps refitted on random pairings of the neutral texts, ``geometry.pairing``). The
    claim needs both, so ``observation.p_value`` is ``max`` of the two: the p of the
    intersection-union test of "both hold", valid at level alpha without a correction, and below
    alpha exactly when both controls pass. A claim is still made only when identification passes.
    """
    by = {r["map"]: r for r in rows}
    r, sh = by["ridge"], by["ridge_shuffled"]
    K = int(r["n_emotions"])
    ok_id = bool(r["id_p_centred"] < alpha)
    p_pair = float(r["p_pairing"])
    controls = [
        Control(name="identification", value=round(float(r["id_acc_centred"]), 4), passed=ok_id,
                threshold=f"exact permutation p < {alpha} (chance 1/{K})",
                note=f"centred vectors: {r['id_acc_centred']:.2f} (p {r['id_p_centred']:.3g}); uncentred "
                     f"{r['id_acc']:.2f} (p {r['id_p']:.3g}); null: which of B's {K} emotions is the counterpart "
                     f"is a uniformly random assignment (a permutation of the columns of the similarity matrix), "
                     f"p counted exactly over all {K}! of them, smallest attainable {r['id_p_min']:.3g}; matched "
                     f"cos2 {r['matched_cos2']:.3f} vs mismatched {r['mismatched_cos2']:.3f}"),
        Control(name="shuffled_pairing", value=round(p_pair, 4), passed=bool(p_pair < alpha),
                threshold=f"rank p < {alpha} against {int(r['n_pairings'])} shuffled-pairing maps",
                note=f"null: which neutral text of {a} goes with which of {b} does not matter (the real pairing is "
                     f"one of {int(r['n_pairings']) + 1} exchangeable pairings); each shuffled map refitted with its "
                     f"own CV penalty; statistic: mean cosine of each mapped centred emotion vector with its "
                     f"counterpart, real {r['matched_cos_centred']:.3f} vs shuffled mean {r['pairing_null_mean']:.3f} "
                     f"(95% point {r['pairing_null_q95']:.3f}); rank p = (1 + #shuffled >= real) / (n + 1), smallest "
                     f"attainable {r['pairing_min_p']:.3g}; shuffled maps' centred identification "
                     f"{r['pairing_id_acc_centred_mean']:.2f} on average; first shuffled ridge map: matched cos2 "
                     f"{sh['matched_cos2']:.3f}, overlap {sh['subspace_overlap']:.3f} (chance "
                     f"{sh['chance_overlap']:.3f}); Procrustes shuffled overlap "
                     f"{by['procrustes_shuffled']['subspace_overlap']:.3f}"),
        Control(name="heldout_fit", value=round(float(maps.r2_heldout["ridge"]), 4),
                passed=bool(maps.r2_heldout["ridge"] > 0), threshold="R^2 > 0 on held-out neutral texts",
                note=f"ridge penalty chosen by 5-fold CV on {maps.n_train} neutral texts (relative lambda "
                     f"{maps.lam_rel:.3g}); R^2 on {maps.n_test} held-out texts; Procrustes (k={maps.k_common}) "
                     f"R^2 {maps.r2_heldout['procrustes']:.3f}; no emotion text was used to fit either map"),
    ]
    hits = int(round(float(r["id_acc_centred"]) * K))
    claim = (f"a linear map fitted on neutral text only carries the emotion vectors of {a} (layer {la}) onto "
             f"those of {b} (layer {lb}): {hits} of {K} mapped emotions are nearest to the same emotion of {b} "
             f"(centred vectors; chance 1 of {K})") if ok_id else None
    obs = Observation(metric=f"identification accuracy of {a}'s ridge-mapped, centred emotion vectors among {b}'s "
                             f"(layers {la} -> {lb})", value=round(float(r["id_acc_centred"]), 4), n=K,
                      unit="emotions", p_value=max(float(r["id_p_centred"]), p_pair), n_searched=1)
    return Finding(kind="alignment", claim=claim, observation=obs, controls=controls)


def _space_findings(name: str, layer: int, kind: str, es: Any, alpha: float) -> list[Finding]:
    """``emotion_space`` findings (PC1 ~ valence, PC2 ~ arousal): ``observation.p_value`` is the
    two-sided permutation p of the correlation, the one that decides ``null_distribution``."""
    out = []
    for pc, rating in (("pc1", "valence"), ("pc2", "arousal")):
        c = es.correlations.get(pc, {}).get(rating)
        if c is None:
            continue
        share = float(es.pca.explained_variance_ratio[int(pc[2]) - 1])
        ok = bool(c["p"] < alpha)
        out.append(Finding(
            kind="emotion_space",
            claim=(f"{pc.upper()} of {name}'s {kind} emotion vectors at layer {layer} tracks human {rating} "
                   f"ratings") if ok else None,
            observation=Observation(metric=f"Pearson r of {pc.upper()} ({share:.0%} of variance, centred PCA) "
                                           f"with {rating}, {name} layer {layer}, {kind} vectors",
                                    value=round(float(c["r"]), 4), n=len(es.pca.names), unit="emotions",
                                    p_value=float(c["p"]), n_searched=1),
            controls=[Control(name="null_distribution", value=round(float(c["p"]), 4), passed=ok,
                              threshold=f"permutation p < {alpha}",
                              note=f"ratings shuffled over the {len(es.pca.names)} emotions {int(c['n_perm'])} times; "
                                   "two-sided (the sign of a component is arbitrary)")]))
    return out


def _depth_section(ctx: RunContext, per: dict[str, dict[str, Any]]) -> str:
    import pandas as pd

    from emoscope.geometry.depth import depth_figure, depth_peak

    curves, peaks = {}, {}
    for name in per:
        try:
            curves[name] = ctx.read_table("probe_layers", model=name)
        except InputError:
            continue
        peaks[name] = depth_peak(curves[name])
    if not peaks:
        ctx.note("relative depth: no probe_layers table (add `probe` to the stages for the depth comparison)")
        return ""
    ctx.write_table("depth_peaks", pd.DataFrame([{"model": n, **p} for n, p in peaks.items()]))
    ctx.save_figure("relative_depth", depth_figure(curves, peaks))
    for n, p in peaks.items():
        ctx.add_finding(Finding(kind="depth", observation=Observation(
            metric=f"{n}: relative depth of the probe's peak (argmax layer {p['argmax_layer']} of {p['n_layers']}; "
                   f"earliest layer within the peak's interval {p['earliest_layer']} at {p['earliest_rel_depth']:.2f}; "
                   f"curve shape: {p['shape']})",
            value=round(p["argmax_rel_depth"], 4),
            interval=(round(p["span_lo_rel_depth"], 4), round(p["span_hi_rel_depth"], 4)),
            n=p["n_layers"], unit="layers", n_searched=p["n_layers"])))
    ctx.note("relative depth: argmax and earliest layer within the argmax's interval; the interval is the span of "
             "relative depths whose accuracy lies within it. Two models are evidence about two models, not about "
             "architectures in general.")
    return "; peaks " + ", ".join(f"{n} {p['argmax_rel_depth']:.2f} [{p['span_lo_rel_depth']:.2f}, "
                                  f"{p['span_hi_rel_depth']:.2f}] {p['shape']}" for n, p in peaks.items())


def _cka_figure(mats: dict[tuple[str, str], Any], per: dict[str, dict[str, Any]]):  # noqa: ANN202
    from emoscope.core.figures import new_figure

    fig = new_figure(4.2 * len(mats), 4)
    for k, ((a, b), (_ka, _kb, M)) in enumerate(mats.items()):
        ax = fig.add_subplot(1, len(mats), k + 1)
        im = ax.imshow(M, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
        ax.set_xlabel(f"{per[b]['key']} layer", fontsize=8)
        ax.set_ylabel(f"{per[a]['key']} layer", fontsize=8)
        ax.set_title(f"debiased CKA: {per[a]['key']} x {per[b]['key']}", fontsize=8)
    fig.colorbar(im, ax=fig.axes, shrink=0.8)
    return fig


def _space_figure(name: str, es: Any, va: Any):  # noqa: ANN202
    from emoscope.core.figures import new_figure

    fig = new_figure(5, 4.5)
    ax = fig.add_subplot()
    sc = es.pca.scores
    val = va.loc[es.pca.names, "valence"].to_numpy(float)
    pts = ax.scatter(sc[:, 0], sc[:, 1] if sc.shape[1] > 1 else 0 * sc[:, 0], c=val, cmap="coolwarm", vmin=0, vmax=1)
    for i, e in enumerate(es.pca.names):
        ax.annotate(e, (sc[i, 0], sc[i, 1] if sc.shape[1] > 1 else 0), fontsize=7)
    r = es.pca.explained_variance_ratio
    ax.set_xlabel(f"PC1 ({r[0]:.0%})")
    ax.set_ylabel(f"PC2 ({r[1]:.0%})" if len(r) > 1 else "")
    ax.set_title(f"{name}: centred PCA of emotion vectors (colour: valence)", fontsize=9)
    fig.colorbar(pts, ax=ax, shrink=0.8)
    return fig
