"""Run stage ``geometry``: are two emotion vectors related beyond what every emotion vector
shares? Plus the cosines of the class-minus-baseline vectors, PCA of the vectors and the
anisotropy of the activation space, at one layer.

The similarity test is :func:`emoscope.geometry.similarity.similarity_analysis`: centred
vectors (class mean minus the mean of the K emotion class means) against a permutation null
of the same estimator, Holm over the pairs, with the layer chosen on one half of the texts
(split within each class) and every reported number from the other half. Each pair above its
null becomes a "related" ``similarity`` claim; when none is, the top pair is recorded as an
observation. With fewer than 3 emotion classes the test cannot be run (centred vectors of two
classes are exact opposites) and the vs-neutral cosine is recorded as an observation.

Tables: ``similarity_pairs`` (one row per pair), ``similarity_layers`` (the selection score of
each layer searched), ``cosines`` (class-minus-baseline cosines on all texts, with the
random-direction null and the token-count control), ``emotion_pca``. Figures: ``similarity``
(centred cosine against its null band per pair), ``cosines``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from emoscope.audit import Control, Finding, Observation
from emoscope.core.figures import new_figure
from emoscope.core.stages import StageResult, register_stage, require_classes
from emoscope.errors import InputError

if TYPE_CHECKING:
    from emoscope.geometry.similarity import SimilarityResult
    from emoscope.runs.context import RunContext

__all__ = ["GeometryOptions", "geometry_stage", "check_geometry", "similarity_findings", "similarity_table"]


class GeometryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # None: the layer is chosen among the extracted layers on one half of the texts (held out)
    layer: int | float | None = None
    baseline: str | None = None  # a class, or "all"; None: "neutral" when the dataset has it, else "all"
    n_null: int = Field(default=2000, ge=100)  # random-direction pairs
    n_perm: int = Field(default=2000, ge=100)  # label permutations (raised to 20 x pairs)
    n_boot: int = Field(default=1000, ge=100)
    n_seeds: int = Field(default=3, ge=3)  # seeded half-splits for the seed spread
    seed_sd_max: float = Field(default=0.1, gt=0)
    alpha: float = Field(default=0.05, gt=0, lt=1)


def _baseline(spec, dataset) -> str:  # noqa: ANN001
    from emoscope.vectors.fit import resolve_baseline

    opts: GeometryOptions = spec.options("geometry")
    counts = require_classes(dataset, "geometry", spec.dataset)
    classes = list(counts)
    baseline = resolve_baseline(classes, opts.baseline, what="geometry: baseline", source=spec.dataset)
    small = {c: n for c, n in counts.items() if n < 4}
    if len(classes) - (baseline != "all") >= 3 and small:
        raise InputError(f"geometry: {spec.dataset} has classes with fewer than 4 texts ({small}); the similarity "
                         "test halves each class twice (held-out layer choice, split-half reliability): add texts")
    n_vectors = len([c for c in classes if c != baseline])
    if baseline == "all" and n_vectors < 3:
        raise InputError(f"geometry: {spec.dataset} has no 'neutral' class and only {n_vectors} classes; against the "
                         "mean of all classes two vectors are exact opposites (cosine -1 by construction): add a "
                         "neutral class or a third class, or name a class as the geometry baseline")
    if n_vectors < 2:
        raise InputError(f"geometry: {spec.dataset} leaves {n_vectors} vector against baseline {baseline!r}; "
                         "cosines need two: add a class")
    return baseline


def check_geometry(spec, dataset) -> None:  # noqa: ANN001 - emoscope.runs.Spec, a Dataset
    """Before any model loads: enough classes for a pair of vectors that is not degenerate, and
    enough texts per class for the halved similarity test."""
    _baseline(spec, dataset)


def _fixed_layer(ctx: RunContext, opts: GeometryOptions, have: list[int]) -> int | None:
    if opts.layer is None:
        return None
    layer = ctx.model.resolve_layers([opts.layer])[0]
    if layer not in have:
        raise InputError(f"geometry: layer {layer} was not extracted (extract.layers gave {have}); add it to "
                         "`extract: {layers: ...}` or drop `geometry: {layer: ...}`")
    return layer


@register_stage("geometry", options_model=GeometryOptions, check=check_geometry,
                description="similarity beyond shared emotion (permutation null, held-out layer), cosines, PCA")
def geometry_stage(ctx: RunContext) -> StageResult:
    import numpy as np
    import pandas as pd

    from emoscope.geometry import anisotropy, cosine_null, emotion_pca, length_controlled_cosines
    from emoscope.geometry.similarity import expected_centred_cosine, similarity_analysis
    from emoscope.vectors import DiffMeans

    opts: GeometryOptions = ctx.options
    data = ctx.dataset
    baseline = _baseline(ctx.spec, data)
    acts = ctx.activations(progress=False)
    y = np.asarray(data.labels).astype(str)
    neutral = None if baseline == "all" else baseline
    emotions = [c for c in sorted(set(y.tolist())) if c != neutral]
    fixed = _fixed_layer(ctx, opts, list(acts.layers))
    metrics: dict[str, float | int] = {}
    if len(emotions) >= 3:
        res = similarity_analysis({L: acts.get(L) for L in acts.layers}, y, acts.token_counts, neutral=neutral,
                                  layer=fixed, n_perm=opts.n_perm, n_boot=opts.n_boot, n_seeds=opts.n_seeds,
                                  n_null=opts.n_null, alpha=opts.alpha, seed=ctx.seed)
        layer = res.layer
        ctx.note(f"similarity: centred vectors (class mean minus the mean of the K={len(emotions)} emotion class "
                 f"means{'' if neutral is None else f'; {neutral} left out'}), expected cosine for unrelated "
                 f"classes {expected_centred_cosine(len(emotions)):.3f}; "
                 + (f"layer {layer} fixed by `geometry: {{layer}}`" if res.layer_fixed else
                    f"layer {layer} chosen among {res.n_searched} on one half of the texts") + "; all similarity "
                 f"numbers from the other half ({min(res.n_report.values())}+ texts per class)")
        ctx.write_table("similarity_pairs", similarity_table(res))
        if res.selection_scores:
            ctx.write_table("similarity_layers", pd.DataFrame(
                {"layer": list(res.selection_scores), "score": list(res.selection_scores.values()),
                 "chosen": [L == layer for L in res.selection_scores]}))
        ctx.save_figure("similarity", _similarity_figure(res))
        for f in similarity_findings(res, seed_sd_max=opts.seed_sd_max):
            ctx.add_finding(f)
        metrics.update(similarity_layer=layer, n_pairs=len(res.pairs), n_searched=res.n_searched,
                       n_related=int(np.sum(res.null.p_holm < opts.alpha)), n_perm=res.null.n_perm)
    else:
        layer = fixed if fixed is not None else acts.layers[len(acts.layers) // 2]
        ctx.note(f"similarity beyond what emotion vectors share cannot be tested with K<3 classes (have "
                 f"{emotions}); layer {layer} ({'from the spec' if fixed is not None else 'the middle extracted layer'})")

    X = acts.get(layer)  # (n, d), all texts: the descriptive cosines below
    base_rows = X[y == baseline] if baseline != "all" else X
    vecs = {c: DiffMeans(c, baseline).fit(X, y).vector_ for c in emotions}
    null = cosine_null(vecs, base_rows, n=opts.n_null, seed=ctx.seed)
    lc = length_controlled_cosines(X, y, acts.token_counts, baseline=baseline)
    names = null.names
    rows = []
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            rows.append({"a": a, "b": names[j], "layer": layer, "cosine": null.observed[i, j],
                         "cosine_length_controlled": lc.controlled[lc.names.index(a), lc.names.index(names[j])],
                         "p_null": null.p[i, j]})
    pairs = pd.DataFrame(rows)
    ctx.write_table("cosines", pairs)
    q = float(np.quantile(np.abs(null.null), 1 - opts.alpha))
    aniso = anisotropy(base_rows, seed=ctx.seed)
    pca = emotion_pca(vecs)
    ctx.write_table("emotion_pca", pd.DataFrame(
        {"vector": pca.names, **{f"pc{k + 1}": pca.scores[:, k] for k in range(min(3, pca.scores.shape[1]))}}))
    ctx.save_figure("cosines", _heatmaps(new_figure(9, 4), names, null.observed, lc, layer))
    if len(emotions) < 3:
        a, b = names[0], names[1]
        n_min = int(min(np.sum(y == a), np.sum(y == b)))
        ctx.add_finding(Finding(kind="similarity", observation=Observation(
            metric=f"cosine of the {a} and {b} vectors against {baseline} at layer {layer} (similarity beyond "
                   "what emotion vectors share cannot be tested with K<3 classes)",
            value=round(float(null.observed[0, 1]), 4), n=n_min, unit="texts per class", n_searched=1)))
    metrics.update(layer=layer, anisotropy=aniso, null_quantile=q)
    if len(emotions) >= 3:
        summary = (f"layer {layer} ({res.n_searched} searched on a held-out half): {metrics['n_related']} of "
                   f"{len(res.pairs)} pairs related beyond shared emotion (permutation null, Holm); ")
    else:
        summary = f"layer {layer}: K<3 emotion classes, no similarity test; "
    return StageResult(summary=summary + f"random-direction null |cos| {1 - opts.alpha:.0%} quantile {q:.3f}; "
                       f"anisotropy {aniso:.3f}", metrics=metrics)


def _heatmaps(fig, names, raw, lc, layer):
    import numpy as np

    controlled = np.array([[lc.controlled[lc.names.index(a), lc.names.index(b)] for b in names] for a in names])
    for k, (M, title) in enumerate(((raw, f"cosine, layer {layer}"), (controlled, "length-controlled"))):
        ax = fig.add_subplot(1, 2, k + 1)
        im = ax.imshow(M, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=fig.axes, shrink=0.8)
    return fig


def similarity_table(res: SimilarityResult):  # noqa: ANN201 - a pandas DataFrame
    """The ``similarity_pairs`` table: one row per pair, every number from the report half."""
    import pandas as pd

    nl = res.null
    rel = dict(zip(res.classes, res.reliability, strict=True))
    q95, qc, sd = nl.q95, nl.q_corrected, res.seed_sd
    rows = []
    for i, (a, b) in enumerate(res.pairs):
        row = {"pair": f"{a}~{b}", "a": a, "b": b, "layer": res.layer, "n_searched": res.n_searched,
               "cos_vs_neutral": res.vs_neutral[i], "cos_centred": nl.observed[i], "cos_centred_lo": res.lo[i],
               "cos_centred_hi": res.hi[i], "expected": nl.expected, "null_q95": q95[i], "null_q_corrected": qc[i],
               "p": nl.p[i], "p_holm": nl.p_holm[i]}
        for v, r in res.variants.items():
            row[f"cos_{v}"], row[f"p_holm_{v}"] = r.observed[i], r.p_holm[i]
        row.update({"reliability_a": rel[a], "reliability_b": rel[b], "p_distinct": res.p_distinct[i],
                    "own_share": res.own_share[i], "p_random_directions": res.p_random[i], "seed_sd": sd[i],
                    "n_a": res.n_report[a], "n_b": res.n_report[b], "n_perm": nl.n_perm})
        rows.append(row)
    return pd.DataFrame(rows)


def _similarity_figure(res: SimilarityResult):  # noqa: ANN202 - a matplotlib Figure
    """Centred cosine per pair against its permutation null (5-95% band, corrected threshold)."""
    import numpy as np

    P = len(res.pairs)
    fig = new_figure(max(5.0, 0.6 * P + 2), 4)
    ax = fig.add_subplot()
    x = np.arange(P)
    lo, hi = res.null.quantile(0.05), res.null.quantile(0.95)
    ax.bar(x, hi - lo, bottom=lo, width=0.6, color="0.85", label="permutation null 5-95%")
    ax.scatter(x, res.null.q_corrected, marker="_", s=300, color="0.3", label="null, corrected threshold (1 - alpha/P)")
    ax.errorbar(x, res.null.observed, yerr=[res.null.observed - res.lo, res.hi - res.null.observed], fmt="o",
                color="C0", label="centred cosine (95% bootstrap)")
    for k, (v, r) in enumerate(res.variants.items()):
        ax.scatter(x + 0.15 * (k + 1), r.observed, marker="^v"[k], facecolors="none", edgecolors=f"C{k + 1}", label=v)
    ax.axhline(res.null.expected, ls="--", color="0.5", lw=1, label=f"-1/(K-1) = {res.null.expected:.2f}")
    ax.set_xticks(x, [f"{a}~{b}" for a, b in res.pairs], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("centred cosine")
    ax.set_title(f"layer {res.layer}: similarity beyond what the {len(res.classes)} emotion vectors share", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _shared_presence(res: SimilarityResult, i: int, a: str, b: str) -> Control:
    """Related by what the pair has, not by what it lacks; judged from neutral, or not at all."""
    import numpy as np

    share = float(res.own_share[i])
    if np.isfinite(share):
        return Control(name="shared_presence", value=round(share, 4), passed=bool(share > 0.5), threshold="> 0.5",
                       note=f"share of the pair's common centred direction that {a} and {b} carry themselves, "
                       "measured from neutral (near 0: they sit at the neutral level and the other classes carry the "
                       "opposite, so centring makes them look related by a shared absence)")
    why = ("there is no neutral class" if res.neutral is None else
           f"the pair's common centred direction is zero, so no share of it can be measured from {res.neutral}")
    return Control(name="shared_presence", value=None, passed=None, threshold="> 0.5",
                   note=f"not judged: {why}. Centring on the mean of the emotion classes makes two classes that both "
                   "lack what the other classes carry look related (a shared absence: e.g. two weak classes among two "
                   "strong ones), and only a reference outside the emotion classes tells presence from absence; add "
                   "a 'neutral' class (texts that express no emotion) to the dataset, or name a reference class as "
                   "`geometry: {baseline: CLASS}`")


def similarity_findings(res: SimilarityResult, *, seed_sd_max: float = 0.1) -> list[Finding]:
    """``similarity`` findings: a "related" claim for each pair above its permutation null after
    Holm; when no pair is, one observation (no claim) for the pair with the largest centred cosine.

    Controls: ``null_distribution`` (Holm-adjusted p < alpha), ``length_control`` (each
    length-normalised variant above its own permutation null after Holm), ``heldout_selection``
    (layer chosen on the other half of the texts, or fixed by the caller), ``seed_spread`` (sd of
    the centred cosine over seeded reruns of split and layer choice below ``seed_sd_max``) and
    ``shared_presence`` (``own_share > 0.5``: the pair carries its common direction itself rather
    than sharing the absence of what the other classes have). ``shared_presence`` is measured from
    a neutral class; without one it is recorded unjudged (``passed=None``, the note says why and
    what to add), and the checklist, which requires it, makes the verdict "needs controls".

    ``observation.p_value`` is the pair's Holm-adjusted permutation p (Holm over the ``P`` pairs):
    the p that decides ``null_distribution`` and so whether a claim is made. Every finding here
    (the claims, or the top pair's observation) carries it; the run-wide correction then runs over
    it with the run's other tests.
    """
    import numpy as np

    nl, K, P, a_ = res.null, len(res.classes), len(res.pairs), res.alpha
    rel = dict(zip(res.classes, res.reliability, strict=True))
    passing = [i for i in range(P) if nl.p_holm[i] < a_]
    picks = passing or [int(np.argmax(nl.observed))]
    sd = res.seed_sd
    out = []
    for i in picks:
        a, b = res.pairs[i]
        ceiling = float(np.sqrt(max(rel[a], 0.0) * max(rel[b], 0.0)))
        null_note = (f"permutation null: labels shuffled across the texts of the K={K} emotion classes (sizes kept), "
                     f"centred cosine of the same class pair recomputed; {nl.n_perm} permutations (at least 20 x "
                     f"{P} pairs), smallest attainable p {nl.min_p:.2g}; uncorrected p {nl.p[i]:.4g}, Holm over {P} "
                     f"pairs; null 95% point {nl.q95[i]:.3f}, expected -1/(K-1) = {nl.expected:.3f}; vs-neutral "
                     f"cosine {res.vs_neutral[i]:.3f}; reliability (split-half, Spearman-Brown to the report half) "
                     f"{a} {rel[a]:.2f}, {b} {rel[b]:.2f} "
                     f"(ceiling ~{ceiling:.2f}); distinct p {res.p_distinct[i]:.3g}; random-direction p "
                     f"{res.p_random[i]:.3g}; share of the common direction carried by the pair (vs neutral) "
                     f"{res.own_share[i]:.2f}")
        var = {v: (float(r.observed[i]), float(r.p_holm[i])) for v, r in res.variants.items()}
        length_ok = all(p < a_ for _, p in var.values())
        if res.layer_fixed:
            held = f"layer {res.layer} fixed by the caller (nothing searched); reported on a held-out half"
        else:
            held = (f"layer {res.layer} chosen among {res.n_searched} layers (largest standardised centred cosine "
                    "over pairs against a 200-permutation null) on one half of the texts, split within each class; "
                    "every number here is from the other half")
        controls = [
            Control(name="null_distribution", value=round(float(nl.p_holm[i]), 4), passed=bool(nl.p_holm[i] < a_),
                    threshold=f"Holm-adjusted p < {a_}", note=null_note),
            Control(name="length_control", value=round(min(c for c, _ in var.values()), 4), passed=length_ok,
                    threshold=f"each length-normalised centred cosine above its own permutation null (Holm p < {a_})",
                    note="; ".join(f"{v}: cos {c:.3f}, Holm p {p:.4g}" for v, (c, p) in var.items())),
            Control(name="heldout_selection", value=res.layer, passed=True, threshold="layer not chosen on the "
                    "reported texts", note=held),
            Control(name="seed_spread", value=round(float(sd[i]), 4), passed=bool(sd[i] < seed_sd_max),
                    threshold=f"sd < {seed_sd_max}", note=f"centred cosine over {res.seed_values.shape[0]} seeded "
                    f"half-splits ({'layer fixed' if res.layer_fixed else 'layer re-chosen each time'}: layers "
                    f"{res.seed_layers}): "
                    + ", ".join(f"{v:.3f}" for v in res.seed_values[:, i])),
        ]
        controls.append(_shared_presence(res, i, a, b))
        claim = None
        if i in passing:
            claim = (f"the {a} and {b} vectors point in related directions at layer {res.layer}, beyond what all "
                     f"{K} emotion vectors share (centred cosine above its permutation null)")
        obs = Observation(metric=f"centred cosine of {a} and {b} (class mean minus the mean of {K} emotion class "
                                 f"means) at layer {res.layer}",
                          value=round(float(nl.observed[i]), 4),
                          interval=(round(float(res.lo[i]), 4), round(float(res.hi[i]), 4)),
                          n=min(res.n_report[a], res.n_report[b]), unit="texts per class",
                          p_value=float(nl.p_holm[i]), n_searched=res.n_searched)
        out.append(Finding(kind="similarity", claim=claim, observation=obs, controls=controls))
    return out
