"""Run stage ``vectors``: one concept vector per emotion and layer, saved as safetensors.

Each class is measured against ``baseline``: the ``neutral`` class when the dataset has one,
else the mean of all classes (``"all"``), or any class named in the spec; the stage notes which.
The strength unit is not stored here: steering measures it once with
``emoscope.vectors.strength.measure_unit`` (on neutral text, whatever the baseline) and saves the
vector it ran with that unit in ``meta["strength_unit"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from emoscope.core.stages import StageResult, register_stage, require_classes
from emoscope.errors import InputError

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = ["VectorOptions", "vectors_stage", "check_vectors"]


class VectorOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["diff_means", "pca_diff", "probe", "token_diff"] = "diff_means"  # token_diff: text minus twin
    baseline: str | None = None  # a class, or "all"; None: "neutral" when the dataset has it, else "all"


def _baseline(spec, dataset) -> tuple[str, list[str]]:  # noqa: ANN001
    """The resolved baseline and the classes that get a vector; InputError when none would."""
    from emoscope.vectors.fit import resolve_baseline

    opts: VectorOptions = spec.options("vectors")
    classes = list(require_classes(dataset, "vectors", spec.dataset))
    baseline = resolve_baseline(classes, opts.baseline, what="vectors: baseline", source=spec.dataset)
    if opts.method == "token_diff" and (baseline == "all" or getattr(dataset, "groups", None) is None):
        raise InputError(f"vectors: method 'token_diff' pairs each text with its {baseline!r} twin by group; "
                         f"{spec.dataset} needs a 'group' column and a baseline class (e.g. emotion-word-templates)")
    targets = [c for c in classes if c not in ("neutral", baseline)]
    if not targets:
        raise InputError(f"vectors: no class of {spec.dataset} is left to fit against baseline {baseline!r} "
                         f"(classes: {', '.join(classes)}); choose another baseline or 'all'")
    return baseline, targets


def check_vectors(spec, dataset) -> None:  # noqa: ANN001 - emoscope.runs.Spec, a Dataset
    """Before any model loads: at least two classes, a baseline that is a class (or 'all')."""
    _baseline(spec, dataset)


@register_stage("vectors", options_model=VectorOptions, check=check_vectors,
                description="emotion / concept vectors per layer")
def vectors_stage(ctx: RunContext) -> StageResult:
    import numpy as np
    import pandas as pd

    from emoscope.vectors import fit_vectors

    opts: VectorOptions = ctx.options
    data, model = ctx.dataset, ctx.model
    baseline, _ = _baseline(ctx.spec, data)
    if baseline == "all":
        why = "" if opts.baseline == "all" else f" ({ctx.spec.dataset} has no 'neutral' class)"
        ctx.note(f"baseline: the mean of all class means{why}; each vector is its class minus that mean")
    else:
        ctx.note(f"baseline: the {baseline!r} class")
    acts = ctx.activations(progress=False)
    labels = np.asarray(data.labels)
    by_layer = {layer: acts.get(layer) for layer in acts.layers}
    vectors = fit_vectors(by_layer, labels, method=opts.method, baseline=baseline,
                          meta={"model": model.name, "weights_sha256": model.weights_sha256,
                                "dataset": ctx.spec.dataset, "dataset_sha256": data.sha256,
                                "position": acts.position},
                          **({"groups": data.groups} if opts.method == "token_diff" else {}))
    out = ctx.run_dir.root / "vectors"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, vec in sorted(vectors.items()):
        vec.save(out / f"{name}.safetensors")
        for layer, norm in vec.norms().items():
            rows.append({"vector": name, "layer": layer, "relative_depth": layer / model.n_layers,
                         "norm": norm})
    ctx.write_table("vector_norms", pd.DataFrame(rows))
    versus = "the mean of all classes" if baseline == "all" else baseline
    return StageResult(summary=f"{len(vectors)} vectors ({opts.method} vs {versus}) x {len(by_layer)} layers "
                               f"-> vectors/", metrics={"n_vectors": len(vectors), "baseline": baseline})
