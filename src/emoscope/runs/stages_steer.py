"""Stage ``steer``: steered multi-token generation against random-vector controls.

The vector is read from ``vector:`` (a ConceptVector file) or fitted here by difference of
means for ``emotion:`` on the spec's dataset (default: ``joy``, else ``gratitude``, else the first
non-neutral class). The sweep runs the vector, its negation (the symmetric strength grid) and
``n_random`` random matched-norm vectors in one batched decode, scores every output, classifies
its regime, and records one ``steering`` finding per vector: the best (layer, strength) cell by
effect over random vectors among the cells whose outputs mostly stay fluent, with the random-vector, multi-token and fluency controls, its p-value
Bonferroni-corrected over every cell tried.

Writes tables ``steer_outputs``, ``steer_success``, ``steer_regimes``, ``steer_dose_response`` and
figures ``steer_dose_response``, ``steer_regime_map``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from emoscope.runs.context import RunContext
from emoscope.runs.registry import StageResult, register_stage

__all__ = ["SteerOptions", "steer_stage"]


class SteerOptions(BaseModel):
    """Options of the ``steer`` section. Defaults make a small check (minutes on a laptop CPU)."""

    model_config = ConfigDict(extra="forbid")

    vector: str | None = None  # a ConceptVector .safetensors file; else fitted for `emotion`
    emotion: str | None = None
    position: str = "mean_from:1"  # extraction position when fitting (all tokens but the attention sink)
    layers: str | int | float | list[int | float] = Field(default_factory=lambda: [0.33, 0.5])
    strengths: list[float] = Field(default_factory=lambda: [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    unit: str = "norm"
    positions: str = "generated"
    mode: str = "add"
    prompts: str = "neutral-starts"
    n_prompts: int | None = Field(default=8, ge=1)
    max_new_tokens: int = Field(default=32, ge=1)
    n_random: int = Field(default=2, ge=0)
    seeds: list[int] = Field(default_factory=lambda: [0])
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = 1.0
    scorers: list[str] = Field(default_factory=lambda: ["nrc", "vader", "perplexity", "repetition", "script"])
    target: str | None = None
    batch_rows: int = Field(default=256, ge=1)
    alpha: float = 0.05  # family-wise level for the claim (Bonferroni over cells)


def _pick_emotion(classes: list[str]) -> str:
    from emoscope.errors import InputError

    for name in ("joy", "gratitude"):
        if name in classes:
            return name
    others = [c for c in classes if c != "neutral"]
    if not others:
        raise InputError("the steer stage needs a dataset with an emotion class, or `vector:` in its section")
    return others[0]


def _vector(ctx: RunContext, opts: SteerOptions, layers: list[int]):
    import numpy as np

    from emoscope.errors import InputError
    from emoscope.vectors import ConceptVector, DiffMeans

    if opts.vector:
        return ConceptVector.load(opts.vector)
    data = ctx.dataset
    classes = sorted(set(data.labels))
    emotion = opts.emotion or _pick_emotion(classes)
    if emotion not in classes:
        raise InputError(f"steer: emotion {emotion!r} is not a class of {ctx.spec.dataset} ({', '.join(classes)})")
    acts = ctx.activations(layers=layers, position=opts.position)
    y = np.asarray(data.labels)
    vecs = {layer: DiffMeans(emotion).fit(acts.get(layer), y).vector_.astype(np.float32) for layer in layers}
    return ConceptVector(emotion, vecs, {"method": "diff_means", "baseline": "neutral",
                                         "dataset": ctx.spec.dataset, "position": opts.position})


@register_stage("steer", options_model=SteerOptions,
                description="steered multi-token generation against random-vector controls")
def steer_stage(ctx: RunContext) -> StageResult:
    from emoscope.datasets import load_texts
    from emoscope.steering import SteeringSweep
    from emoscope.steering.plots import dose_response_figure, regime_map_figure
    from emoscope.steering.regimes import regime_switches

    opts: SteerOptions = ctx.options if isinstance(ctx.options, SteerOptions) else SteerOptions(**(ctx.options or {}))
    model = ctx.model
    layers = model.resolve_layers(opts.layers)
    vector = _vector(ctx, opts, layers)
    prompts = load_texts(opts.prompts)[: opts.n_prompts]
    sweep = SteeringSweep(model, vector, layers, opts.strengths, prompts, opts.seeds, opts.max_new_tokens,
                          positions=opts.positions, mode=opts.mode, unit=opts.unit, n_random=opts.n_random,
                          random_state=ctx.seed, temperature=opts.temperature, top_p=opts.top_p,
                          batch_rows=opts.batch_rows, scorers=opts.scorers, target=opts.target, progress=True)
    res = sweep.run()
    ctx.write_table("steer_outputs", res.table)
    ctx.write_table("steer_success", res.success)
    ctx.write_table("steer_regimes", res.regime_shares())
    ctx.write_table("steer_dose_response", res.dose_response())
    ctx.save_figure("steer_dose_response", dose_response_figure(res))
    ctx.save_figure("steer_regime_map", regime_map_figure(res))
    ctx.note(f"steering {vector.name} at layers {layers}, strengths {sweep.grid} in units of the typical "
             f"per-token residual norm ({res.meta['unit_norms']}); positions={opts.positions}; "
             f"{len(res.table)} generations of up to {opts.max_new_tokens} tokens in {res.meta['decode_seconds']:.1f} s")
    ctx.note("regime thresholds: " + ", ".join(f"{k}={v}" for k, v in res.thresholds.as_dict().items()))
    for line in regime_switches(res.table):
        ctx.note("regimes, " + line)
    best = _record_findings(ctx, res, opts)
    return StageResult(summary=best, metrics={"rows": len(res.table), "decode_seconds": res.meta["decode_seconds"]})


def _record_findings(ctx: RunContext, res, opts: SteerOptions) -> str:
    import numpy as np

    from emoscope.audit import Control, Finding, Observation

    s = res.success
    t = res.table
    if not len(s):
        return "no steered cells"
    th = res.thresholds
    summary = ""
    for name, g in s.groupby("vector"):
        # the claim needs fluent text, so the best cell is chosen among those where most outputs
        # neither collapse nor explode (all cells when there is none)
        intact = g[(g.share_repetitive_collapse + g.share_explosive) < 0.5]
        best = (intact if len(intact) else g).sort_values(["effect", "share_surgical"], ascending=False).iloc[0]
        layer, strength = int(best.layer), float(best.strength)
        cell = t[(t.kind == "vector") & (t.vector == name) & (t.layer == layer) & (t.strength == strength)]
        ppl = float(np.nanmedian(cell["ppl_ratio"])) if "ppl_ratio" in cell else float("nan")
        broken = float(best.share_repetitive_collapse + best.share_explosive)
        significant = bool(best.p_bonferroni < opts.alpha and best.effect_lo > 0)
        fluent = bool(np.isfinite(ppl) and ppl < th.max_ppl_ratio and broken < 0.5)
        controls = [
            Control(name="random_vectors", value=float(best.p_bonferroni), passed=significant, threshold=opts.alpha,
                    note=f"{opts.n_random} random matched-norm vectors: mean change {best.mean_change_random:.3g} vs "
                         f"{best.mean_change:.3g}; paired Wilcoxon p Bonferroni-corrected over {len(s)} cells"),
            Control(name="multi_token_outputs", value=float(cell.n_tokens.mean()), passed=True,
                    note=f"scored on generations of up to {opts.max_new_tokens} tokens"),
            Control(name="fluency", value=ppl, passed=fluent, threshold=th.max_ppl_ratio,
                    note=f"median perplexity ratio to the unsteered output; {broken:.0%} collapsed or explosive"),
        ]
        direction = "raises" if strength > 0 else "lowers"
        claim = (f"steering with {name} at layer {layer}, strength {strength:g} {direction} {res.target} more than "
                 "random vectors of the same norm, with fluent text") if significant else None
        ctx.add_finding(Finding(
            kind="steering", claim=claim, controls=controls,
            observation=Observation(metric=f"{res.target} change over random, {name} at layer {layer}, strength "
                                           f"{strength:g} (best of {len(g)} cells)",
                                    value=float(best.effect), interval=(float(best.effect_lo), float(best.effect_hi)),
                                    n=int(best.n)),
        ))
        # v and -v at the same strength should move the target in opposite directions
        pos = g[(g.layer == layer) & (g.strength == abs(strength))]
        neg = g[(g.layer == layer) & (g.strength == -abs(strength))]
        if len(pos) and len(neg):
            gap = float(pos.mean_change.iloc[0] - neg.mean_change.iloc[0])
            ctx.add_finding(Finding(kind="steering", observation=Observation(
                metric=f"{res.target} change at +{abs(strength):g} minus at -{abs(strength):g}, {name} layer {layer}",
                value=gap, n=int(pos.n.iloc[0]))))
        summary = (f"{name}: best layer {layer} strength {strength:g}, effect {best.effect:.3g} over random "
                   f"(p_bonf={best.p_bonferroni:.2g}), success {best.success_rate:.0%}")
    return summary
