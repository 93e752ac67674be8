"""Run stage ``vectors``: one concept vector per emotion and layer, saved as safetensors.

Each vector carries the mean residual norm of the neutral texts at every layer in its
metadata (``mean_resid_norm``): steering uses it as the unit of strength.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import BaseModel, ConfigDict

from emoscope.runs.context import RunContext
from emoscope.runs.registry import StageResult, register_stage

__all__ = ["VectorOptions", "vectors_stage"]


class VectorOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["diff_means", "pca_diff", "probe"] = "diff_means"
    baseline: str = "neutral"


@register_stage("vectors", options_model=VectorOptions, description="emotion / concept vectors per layer")
def vectors_stage(ctx: RunContext) -> StageResult:
    import numpy as np
    import pandas as pd

    from emoscope.vectors import fit_vectors

    opts: VectorOptions = ctx.options
    data, model = ctx.dataset, ctx.model
    acts = ctx.activations(progress=False)
    labels = np.asarray(data.labels)
    by_layer = {layer: acts.get(layer) for layer in acts.layers}
    neutral = labels == opts.baseline
    ref = neutral if neutral.any() else np.ones_like(neutral)
    unit = {layer: float(np.linalg.norm(x[ref], axis=1).mean()) for layer, x in by_layer.items()}
    vectors = fit_vectors(by_layer, labels, method=opts.method, baseline=opts.baseline,
                          meta={"model": model.name, "weights_sha256": model.weights_sha256,
                                "dataset": ctx.spec.dataset, "dataset_sha256": data.sha256,
                                "position": acts.position, "mean_resid_norm_source": f"{opts.baseline} texts"})
    out = ctx.run_dir.root / "vectors"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, vec in sorted(vectors.items()):
        vec = dataclasses.replace(vec, meta={**vec.meta, "mean_resid_norm": unit})
        vec.save(out / f"{name}.safetensors")
        for layer, norm in vec.norms().items():
            rows.append({"vector": name, "layer": layer, "relative_depth": layer / model.n_layers,
                         "norm": norm, "mean_resid_norm": unit[layer], "norm_ratio": norm / unit[layer]})
    ctx.write_table("vector_norms", pd.DataFrame(rows))
    return StageResult(summary=f"{len(vectors)} vectors ({opts.method} vs {opts.baseline}) x {len(by_layer)} layers "
                               f"-> vectors/", metrics={"n_vectors": len(vectors)})
