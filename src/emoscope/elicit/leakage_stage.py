"""Run stage ``leakage``: script leakage of steered outputs, vector vs negated vs random vectors.

An emotion vector (difference of means against ``neutral`` on the spec's dataset, all tokens
but the first) is steered at one layer over a strength grid; the negated vector and
``n_random`` random vectors of the same norm run in the same batch (``SteeringSweep``). Every
output is scored for the share of its tokens and of its letters outside the prompt's script
(``emoscope.elicit.leakage``). The top non-Latin tokens the vector (and its negation) promotes
through the final norm and unembedding are listed (``emoscope.vectors.promote.top_in_script``),
so one can see whether leaked tokens are aligned with the emotion. ``strengths: auto`` chooses the
strengths per emotion with a short pilot (``emoscope.steering.pilot``; table ``leakage_pilot``).

On a base model (the embedded Gemma-3-270M) this measures leakage, not what safety tuning
suppresses; the same stage runs on any instruction-tuned multilingual model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from emoscope.core.stages import StageResult, register_stage, require_classes
from emoscope.errors import InputError
from emoscope.steering.pilot import AUTO, Strengths

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = ["LeakageOptions", "leakage_stage", "check_leakage"]


class LeakageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    emotions: list[str] = Field(default_factory=lambda: ["joy"], min_length=1)
    layer: float | int = 0.5
    strengths: Strengths = Field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])  # or "auto" (steering.pilot)
    unit: str = "token_norm_robust"
    prompts: str = "neutral-starts"
    n_prompts: int = Field(8, ge=2)
    max_new_tokens: int = Field(24, ge=2)
    n_random: int = Field(8, ge=2)
    promote_k: int = Field(15, ge=1)
    chat: bool = True


def check_leakage(spec, dataset) -> None:  # noqa: ANN001
    """Before any model loads: a dataset with ``neutral`` and every listed emotion, positive strengths."""
    opts: LeakageOptions = spec.options("leakage")
    counts = require_classes(dataset, "leakage", spec.dataset)
    for e in [*opts.emotions, "neutral"]:
        if e not in counts:
            raise InputError(f"leakage: {e!r} is not a class of {spec.dataset} (classes: {', '.join(sorted(counts))})")
    if opts.strengths != AUTO and any(s <= 0 for s in opts.strengths):
        raise InputError("leakage: give positive strengths; the negated vector runs at each one automatically")
    if opts.strengths == AUTO and opts.unit == "raw":
        raise InputError("leakage: strengths 'auto' needs a measured unit (token_norm or token_norm_robust)")


@register_stage("leakage", options_model=LeakageOptions, check=check_leakage,
                description="script leakage of steered outputs against random and negated vectors")
def leakage_stage(ctx: RunContext) -> StageResult:
    import numpy as np
    import pandas as pd

    from emoscope.datasets import load_texts
    from emoscope.elicit.leakage import leakage_table, score_leakage, script_counts
    from emoscope.steering import SteeringSweep
    from emoscope.steering.pilot import pilot_prompts, run_pilot
    from emoscope.vectors.fit import fit_vectors
    from emoscope.vectors.promote import top_in_script

    opts: LeakageOptions = ctx.options
    model, data = ctx.model, ctx.dataset
    layer = model.resolve_layers([opts.layer])[0]
    keep = [i for i, lab in enumerate(data.labels) if lab in {*opts.emotions, "neutral"}]
    acts = ctx.activations([data.texts[i] for i in keep], layers=[layer], position="mean_from:1", progress=False)
    labels = np.asarray([data.labels[i] for i in keep])
    vecs = fit_vectors({layer: acts.get(layer)}, labels, baseline="neutral",
                       meta={"model": model.name, "dataset": ctx.spec.dataset, "position": "mean_from:1"})
    every = load_texts(opts.prompts)
    prompts = every[: opts.n_prompts]
    tables, counts, promo, pilots = [], [], [], []
    scorers = ("nrc", "vader", "repetition", "script")
    for e in opts.emotions:
        strengths = opts.strengths
        if strengths == AUTO:  # positive strengths below and past where this vector breaks at this layer
            pilot = run_pilot(model, vecs[e], [layer], pilot_prompts(every, len(prompts)), unit=opts.unit,
                              chat=opts.chat and model.has_chat_template, scorers=scorers, seed=ctx.seed,
                              max_new_tokens=opts.max_new_tokens, execution=ctx.execution)
            strengths = [s for s in pilot.grid if s > 0]  # the sweep runs the negated vector at each
            pilots.append(pilot.table.assign(emotion=e))
            for line in pilot.notes():
                ctx.note(f"{e}: {line}")
        sweep = SteeringSweep(model, vecs[e], layers=[layer], strengths=strengths, prompts=prompts,
                              max_new_tokens=opts.max_new_tokens, n_random=opts.n_random, random_kind="isotropic",
                              unit=opts.unit, seed=ctx.seed, chat=opts.chat and model.has_chat_template,
                              scorers=scorers)
        res = sweep.run()
        scored = score_leakage(model, res.table, res.tokens, res.table["prompt"].tolist())
        t = leakage_table(scored)
        t.insert(0, "emotion", e)
        tables.append(t)
        c = script_counts(scored)
        c.insert(0, "emotion", e)
        counts.append(c)
        for sign, name in ((1.0, e), (-1.0, f"-{e}")):
            for r in top_in_script(model, sign * vecs[e].vectors[layer], k=opts.promote_k):
                promo.append({"vector": name, "layer": layer, **r})
        cols = ["kind", "vector", "strength", "prompt_id", "text", "token_share", "char_share", "scripts", "regime"]
        ctx.write_table(f"leakage_outputs_{e}", scored[cols])
    table = pd.concat(tables, ignore_index=True)
    ctx.write_table("leakage_by_strength", table)
    scripts = pd.concat(counts, ignore_index=True)
    ctx.write_table("leakage_scripts", scripts)
    ctx.write_table("promoted_non_latin", pd.DataFrame(promo))
    if pilots:
        ctx.write_table("leakage_pilot", pd.concat(pilots, ignore_index=True))
    seen = sorted(set(scripts["script"])) if len(scripts) else []
    ctx.note(f"strength unit {opts.unit} at layer {layer}; token share: output tokens whose letters are mostly "
             "outside the prompt's script; char share: the steering script scorer")
    ctx.note("base model: this measures leakage, not what safety tuning suppresses" if not model.has_chat_template
             else "instruction-tuned model: leakage under the chat template")
    top = table[table["kind"] == "vector"].sort_values("abs_strength").tail(1)
    head = (f"at |s|={top.abs_strength.iloc[0]:g} vector token share {top.token_share.iloc[0]:.3f}"
            if len(top) else "")
    return StageResult(summary=f"leakage of {', '.join(opts.emotions)} at layer {layer}: scripts seen "
                               f"{', '.join(seen) or 'none'}; {head}",
                       metrics={"layer": layer, "scripts": ",".join(seen)})
