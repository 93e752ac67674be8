"""Run stage ``extract``: the first look at a model's residual stream.

It extracts ``resid[l]`` for the dataset (or the ``texts`` option) at the spec's layers and
position, and records the mean and spread of the residual norm per layer against relative
depth (layer / n_layers), with the correlation between a text's token count and its norm: long
prompts have larger norms, the confound that length controls elsewhere in the pipeline exist
for. With ``save: true`` the activations themselves are written to ``RUN/activations/``
(``activations.safetensors`` + ``manifest.json``, readable with ``Activations.load``); that is
what ``emoscope extract`` does.

See ``emoscope.core.stages`` for how stages register themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from emoscope.audit import Finding, Observation
from emoscope.core.stages import StageResult, register_stage
from emoscope.errors import InputError

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = ["ExtractOptions", "extract_stage", "check_extract", "SAVE_DIR"]

SAVE_DIR = "activations"  # RUN/activations/ when `save: true`


class ExtractOptions(BaseModel):
    """Options of the ``extract`` section (``layers``, ``position`` and ``batch_size`` are also
    what ``RunContext.activations`` uses for every later stage)."""

    model_config = ConfigDict(extra="forbid")

    # "all", an int, a list, "0,5,-1", "0-14", or relative depths in [0, 1]; the model checks them
    layers: str | int | float | list[int | float] = "all"
    position: str = "last"
    batch_size: int = Field(default=32, ge=1)
    texts: str | None = None  # a .txt/.jsonl/.csv file (or built-in name) to extract instead of the dataset
    save: bool = False  # write the activations to RUN/activations/
    dtype: Literal["float32", "float16"] = "float32"  # storage dtype
    padding_side: Literal["left", "right"] = "right"
    cache: bool = True  # read and write the content-addressed activation cache ($EMOSCOPE_CACHE)


def _texts(opts: ExtractOptions) -> list[str]:
    from emoscope.datasets import load_texts

    return [t for t in load_texts(opts.texts)]


def check_extract(spec, dataset) -> None:  # noqa: ANN001 - emoscope.runs.Spec, a Dataset
    """Before any model loads: a readable position, and texts to extract."""
    from emoscope.activations import parse_position

    opts = spec.options("extract")
    parse_position(opts.position)
    if opts.texts is not None:
        _texts(opts)  # a missing, empty or malformed file is one line here
    elif dataset is None:
        raise InputError("stage 'extract' needs texts: add `dataset: NAME` to the spec or `texts: FILE` "
                         "to its extract section")


@register_stage("extract", options_model=ExtractOptions, check=check_extract,
                description="residual-stream activations and their norms per layer")
def extract_stage(ctx: RunContext) -> StageResult:
    """Extract activations and write ``tables/activation_norms`` and ``figures/activation_norms``."""
    import numpy as np
    import pandas as pd

    opts: ExtractOptions = ctx.options
    model = ctx.model
    saved = ctx.run_dir.root / SAVE_DIR if opts.save else None
    acts = ctx.activations(texts=None if opts.texts is None else _texts(opts), dtype=opts.dtype,
                           padding_side=opts.padding_side, cache=opts.cache, out=saved)
    n_layers = int(getattr(model, "n_layers", 0) or (max(acts.layers) + 1))
    counts = getattr(acts, "token_counts", None)
    counts = None if counts is None else np.asarray(counts, dtype=float)
    stored = getattr(acts, "norms", None) or {}

    rows = []
    for layer in acts.layers:
        norms = stored.get(layer)
        norms = np.linalg.norm(acts.get(layer), axis=1) if norms is None else np.asarray(norms, float)
        # (n_texts,)
        corr = float("nan")
        if counts is not None and len(counts) == len(norms) > 2 and counts.std() > 0 and norms.std() > 0:
            corr = float(np.corrcoef(counts, norms)[0, 1])
        rows.append({
            "layer": int(layer),
            "relative_depth": round(layer / n_layers, 4),
            "mean_norm": float(norms.mean()),
            "sd_norm": float(norms.std(ddof=1)) if len(norms) > 1 else 0.0,
            "n": int(len(norms)),
            "corr_norm_tokens": corr,
        })
    table = pd.DataFrame(rows)
    ctx.write_table("activation_norms", table)
    ctx.save_figure("activation_norms", _norm_figure(table, getattr(model, "name", ctx.spec.model)))

    first, last = table.iloc[0], table.iloc[-1]
    growth = float(last.mean_norm / first.mean_norm) if first.mean_norm else float("nan")
    ctx.add_finding(Finding(
        kind="extraction",
        observation=Observation(metric=f"mean residual norm, layer {int(last.layer)} / layer {int(first.layer)}",
                                value=growth, n=int(last.n)),
    ))
    if table.corr_norm_tokens.notna().any():
        worst = table.loc[table.corr_norm_tokens.abs().idxmax()]
        ctx.add_finding(Finding(
            kind="extraction",
            observation=Observation(metric=f"corr(token count, residual norm) at layer {int(worst.layer)}",
                                    value=float(worst.corr_norm_tokens), n=int(worst.n)),
        ))
        if abs(worst.corr_norm_tokens) > 0.3:
            ctx.note(f"residual norm tracks prompt length (r = {worst.corr_norm_tokens:.2f} at layer "
                     f"{int(worst.layer)}): length controls matter for this model and dataset")
    summary = f"{len(table)} layers, {int(first.n)} texts; mean norm grows {growth:.1f}x with depth"
    if saved is not None:
        hit = " (cache hit)" if getattr(acts, "cache_hit", False) else ""
        summary = (f"extracted {int(first.n)} texts x {len(table)} layers at position {acts.position} from "
                   f"{getattr(model, 'name', ctx.spec.model)}{hit} -> {SAVE_DIR}/; " + summary)
        ctx.note(f"activations saved to {SAVE_DIR}/ (load with emoscope.activations.Activations.load)")
    return StageResult(
        summary=summary,
        metrics={"layers": len(table), "texts": int(first.n), "norm_growth": round(growth, 4)},
    )


def _norm_figure(table, title: str):  # noqa: ANN001, ANN202 - pandas/matplotlib types stay lazy
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    x, y, sd = table.relative_depth, table.mean_norm, table.sd_norm
    ax.plot(x, y, marker="o", ms=3, color="#3465a4", label="mean residual norm")
    ax.fill_between(x, y - sd, y + sd, color="#3465a4", alpha=0.2, label="± 1 sd over texts")
    ax.set_xlabel("relative depth (layer / n_layers)")
    ax.set_ylabel("‖resid[l]‖")
    ax.set_title(f"Residual norm by depth — {title}")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    return fig
