"""Run stage ``geometry``: cosines between emotion vectors with a null and a length control,
PCA of the vectors and the anisotropy of the activation space, at one layer.

The layer is the probe's peak when a ``probe`` stage ran before (``tables/probe_layers``),
otherwise the middle layer. The most similar pair of vectors becomes a ``similarity``
finding whose controls are the random-direction null and the length control.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from emoscope.audit import Control, Finding, Observation
from emoscope.core.stages import StageResult, register_stage, require_classes
from emoscope.errors import InputError

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = ["GeometryOptions", "geometry_stage", "check_geometry"]


class GeometryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: int | float | None = None  # default: the probe's peak layer, else the middle layer
    baseline: str | None = None  # a class, or "all"; None: "neutral" when the dataset has it, else "all"
    n_null: int = Field(default=2000, ge=100)
    alpha: float = 0.05


def _baseline(spec, dataset) -> str:  # noqa: ANN001
    from emoscope.vectors.fit import resolve_baseline

    opts: GeometryOptions = spec.options("geometry")
    classes = list(require_classes(dataset, "geometry", spec.dataset))
    baseline = resolve_baseline(classes, opts.baseline, what="geometry: baseline", source=spec.dataset)
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
    """Before any model loads: enough classes for a pair of vectors that is not degenerate."""
    _baseline(spec, dataset)


def _layer(ctx: RunContext, opts: GeometryOptions) -> int:
    model = ctx.model
    if opts.layer is not None:
        return model.resolve_layers([opts.layer])[0]
    try:
        table = ctx.read_table("probe_layers")
    except InputError:  # read_table's error for a table no earlier stage wrote
        ctx.note(f"layer: the middle layer {model.n_layers // 2} (no probe_layers table: no probe stage ran "
                 "before this one; set `geometry: {layer: L}` to choose)")
        return model.n_layers // 2
    layer = int(table.loc[table["acc"].idxmax(), "layer"])
    ctx.note(f"layer: {layer}, the probe's peak layer (tables/probe_layers)")
    return layer


@register_stage("geometry", options_model=GeometryOptions, check=check_geometry,
                description="cosines with a null and a length control, PCA, anisotropy")
def geometry_stage(ctx: RunContext) -> StageResult:
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    from emoscope.geometry import anisotropy, cosine_null, emotion_pca, length_controlled_cosines
    from emoscope.vectors import DiffMeans

    opts: GeometryOptions = ctx.options
    data = ctx.dataset
    baseline = _baseline(ctx.spec, data)
    if baseline == "all":
        ctx.note("baseline: the mean of all class means (no 'neutral' class); such vectors sum to zero, so their "
                 "cosines lean negative (about -1/(K-1) for K classes): read them against that")
    layer = _layer(ctx, opts)
    acts = ctx.activations(progress=False)
    X = acts.get(layer)  # (n, d)
    y = np.asarray(data.labels)
    neutral = X[y == baseline] if baseline != "all" else X
    classes = [c for c in sorted(set(y.tolist())) if c != baseline]
    vecs = {c: DiffMeans(c, baseline).fit(X, y).vector_ for c in classes}
    null = cosine_null(vecs, neutral, n=opts.n_null, seed=ctx.seed)
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
    aniso = anisotropy(neutral, seed=ctx.seed)

    if len(names) >= 2:
        pca = emotion_pca(vecs)
        ctx.write_table("emotion_pca", pd.DataFrame(
            {"vector": pca.names, **{f"pc{k + 1}": pca.scores[:, k] for k in range(min(3, pca.scores.shape[1]))}}))
        ctx.save_figure("cosines", _heatmaps(Figure(figsize=(9, 4)), names, null.observed, lc, layer))

    if len(pairs):
        top = pairs.loc[pairs["cosine"].abs().idxmax()]
        ctx.add_finding(Finding(
            kind="similarity",
            claim=f"the {top.a} and {top.b} vectors point in related directions at layer {layer}",
            observation=Observation(metric="cosine", value=round(float(top.cosine), 4), n=int(len(y))),
            controls=[
                Control(name="null_distribution", value=round(q, 4), passed=bool(top.p_null < opts.alpha),
                        threshold=f"p < {opts.alpha}", note=f"p = {top.p_null:.4f}; {opts.n_null} random "
                        f"direction pairs from neutral activations (anisotropy {aniso:.3f})"),
                Control(name="length_control", value=round(float(top.cosine_length_controlled), 4),
                        passed=bool(abs(top.cosine_length_controlled) > q), threshold=f"|cos| > null {1 - opts.alpha:.0%} ({q:.3f})",
                        note="cosine after regressing token count out within classes"),
            ],
        ))
    return StageResult(summary=f"layer {layer}: {len(pairs)} vector pairs; null |cos| {1 - opts.alpha:.0%} "
                               f"quantile {q:.3f}; anisotropy {aniso:.3f}",
                       metrics={"layer": layer, "anisotropy": aniso, "null_quantile": q})


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
