"""The ``introspect`` stage: concept injection scored by yes-no logit differences.

It runs ``emoscope.introspection.run_sweep`` on the spec's model, writes its tables
(``introspect_*``) and figures, and records one ``introspection`` finding: one (layer, strength)
cell, chosen on a seeded half of the concepts by mean introspection score and reported on the
other half (``emoscope.introspection.heldout``; when the spec fixes ``focus_layer`` and
``focus_strength`` nothing is searched and every concept is reported). Its ``n`` counts report
concepts. The finding is an observation (no claim unless the spec gives one in
``introspect.claim``) with its controls judged on the report concepts:

- held-out selection: chosen on N concepts, reported on M (or nothing searched);
- control questions at the same strength: passed when the score's interval (detection shift
  minus control shift) lies above 0;
- logit differences: passed when the detection shift's interval lies above 0;
- random vectors: a one-sided Mann-Whitney test of the report concepts' scores against each kind
  of random vectors' scores at the same cell (the unit is the vector: each random vector is one
  draw, and neither the report concepts nor the random vectors took part in choosing the cell, so
  under the decoy null, concepts that are just more random vectors, the two are exchangeable),
  passed at p < 0.05 against every kind that ran; the p recorded for the run's correction is this
  one (the worst over kinds), with the rank floor of the design; the note says when the model has
  massive dimensions (then neither kind of random direction is neutral);
- seed spread: the held-out score over ``n_splits`` seeds of the concept split and the
  random-vector comparison over subsets of the random vectors: signs stable, sd < 0.5 × |score|.

Spec section (all optional)::

    introspect:
      concepts: default            # or a word-list path, or a list of words
      layers: [0.3, 0.5, 0.67, 0.8]
      strengths: [1, 2, 4, 8, 16]
      window: before_trial         # prompt_start | generation_only
      n_random: 10                 # random vectors of each kind
      random_kind: both            # isotropic | covariance | both
      free_text: 0                 # N sampled answers per cell, graded by rules
      ablate: refusal.safetensors  # a ConceptVector whose direction is also ablated at the injected
                                   # layer in every cell (conditions "+ablated", table introspect_ablation)

Besides the finding, the stage writes ``introspect_flips`` (per concept and layer, the strength at
which the detection question's yes-minus-no difference crosses 0, the control questions' mean
crosses 0, and the gap) and notes, per layer, the strength its logit lens is drawn at.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from emoscope.audit import Control, Finding, Observation
from emoscope.core.stages import StageResult, register_stage

if TYPE_CHECKING:
    from emoscope.introspection.heldout import HeldOutFinding
    from emoscope.introspection.sweep import InjectionResult
    from emoscope.runs.context import RunContext

__all__ = ["IntrospectOptions", "introspect_stage", "introspection_finding", "findings_from_result",
           "check_introspect"]


class IntrospectOptions(BaseModel):
    """Options of the ``introspect`` section (the CLI ``emoscope introspect`` builds these)."""

    model_config = ConfigDict(extra="forbid")

    concepts: str | list[str] = "default"
    baseline_words: str | list[str] = "default"
    controls: str = "control-questions"
    layers: str | list[int | float] = Field(default_factory=lambda: [0.3, 0.5, 0.67, 0.8])
    strengths: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0], min_length=1)
    window: Literal["before_trial", "prompt_start", "generation_only"] = "before_trial"
    n_random: int = Field(default=10, ge=0)
    random_kind: Literal["isotropic", "covariance", "both"] = "both"
    n_splits: int = Field(default=5, ge=3)
    prefill: str | None = None
    batch_size: int = Field(default=64, ge=1)
    focus_layer: int | None = None
    focus_strength: float | None = None
    heads: bool = True
    n_boot: int = Field(default=2000, ge=100)
    free_text: int = Field(default=0, ge=0)
    max_new_tokens: int = Field(default=40, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    unit: Literal["trial_norm", "token_norm", "token_norm_robust"] = "trial_norm"  # see emoscope.vectors.strength
    ablate: str | None = None  # a ConceptVector .safetensors file: its direction is ablated at the injected layer
    allow_other_model: bool = False  # use an `ablate` vector whose metadata names another model
    claim: str | None = None
    decoys: int = Field(default=0, ge=0)  # placebo: N decoy runs, each with every concept replaced by a random vector

    @field_validator("strengths", mode="before")
    @classmethod
    def _no_auto(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "auto":  # the shared --strengths flag takes it for steer
            raise ValueError("takes numbers, such as [1, 2, 4, 8, 16]: 'auto' is for steer and leakage, where a "
                             "pilot finds the strength at which generated text breaks")
        return v


def _random_note(h: HeldOutFinding, massive: dict[int, list[int]] | None, massive_share: float) -> str:
    comps = [c for c in (h.random, h.random_cov) if c is not None]
    text = "the concepts must beat every kind of random vector that ran: " + "; ".join(
        f"{c.kind}: {c.describe()}" for c in comps)
    dims = (massive or {}).get(h.layer) or []
    if dims:
        text += (f". Layer {h.layer} has massive dimension(s) {dims} (each > {massive_share:.0%} of ||resid||^2 on "
                 "neutral text): neither kind of random direction is neutral there; isotropic draws almost never "
                 "point along them, covariance-matched ones almost always do")
    return text


def introspection_finding(h: HeldOutFinding, *, claim: str | None = None, massive: dict[int, list[int]] | None = None,
                          massive_share: float = 0.05) -> Finding:
    """The ``introspection`` finding of a sweep's reported cell (see the module doc)."""
    score = h.score
    interval = None if score.lo != score.lo else (float(score.lo), float(score.hi))
    det = h.detection_shift
    on = f"on the {h.n} report concept{'s' * (h.n != 1)}"
    controls = [
        Control(name="heldout_selection", value=float(score.point), passed=True, note=h.selection_note),
        Control(name="control_questions", value=float(h.control_shift.point), threshold=0.0,
                passed=bool(score.lo > 0) if interval else None,
                note=f"{on}: score interval [{score.lo:.3g}, {score.hi:.3g}], control shift "
                     f"{h.control_shift.point:+.3g} [{h.control_shift.lo:.3g}, {h.control_shift.hi:.3g}]"),
        Control(name="logit_difference", value=float(det.point), threshold=0.0,
                passed=bool(det.lo > 0) if det.lo == det.lo else None,
                note=f"{on}: yes-minus-no logit difference (log-sum-exp over spellings), shift from no injection "
                     f"{det.point:+.3g} [{det.lo:.3g}, {det.hi:.3g}]"),
    ]
    comps = [c for c in (h.random, h.random_cov) if c is not None]
    p_decide, floor = h.p_value, None  # without random vectors the score's own test is the one that ran
    if comps:  # isotropic and covariance-matched: a reviewer asks for both, so the claim must beat both
        verdicts = [c.passed for c in comps]
        p_decide = float(max(c.p_value for c in comps))
        floor = float(max(c.floor for c in comps))
        controls.append(Control(name="random_vectors", value=p_decide,
                                threshold=comps[0].alpha,
                                passed=False if False in verdicts else None if None in verdicts else True,
                                note=_random_note(h, massive, massive_share)))
    controls.append(Control(name="seed_spread", value=float(h.spread_sd), threshold=float(h.spread_threshold),
                            passed=h.spread_passed, note=h.spread_note))
    return Finding(
        kind="introspection", claim=claim,
        observation=Observation(
            metric=f"held-out introspection score (detection shift − control shift), layer {h.layer} "
                   f"(depth {h.relative_depth:.2f}), strength {h.strength:g}",
            value=float(score.point), interval=interval, n=h.n, unit="concepts",
            p_value=None if p_decide != p_decide else float(p_decide), p_floor=floor, n_searched=h.n_searched),
        controls=controls,
    )


def findings_from_result(res: InjectionResult, *, claim: str | None = None) -> list[Finding]:
    """The finding of a sweep result (one: the held-out cell)."""
    if res.heldout is None:
        return []
    m = res.meta
    return [introspection_finding(res.heldout, claim=claim, massive=m.get("massive_dims"),
                                  massive_share=m.get("massive_share", 0.05))]


def check_introspect(spec, dataset) -> None:  # noqa: ANN001, ARG001 - emoscope.runs.Spec; no dataset needed
    """Before any model loads: the word lists and the control questions can be read."""
    from emoscope.datasets import load_control_questions
    from emoscope.introspection.concepts import load_words

    opts: IntrospectOptions = spec.options("introspect")
    load_words(opts.concepts, "concepts")
    load_words(opts.baseline_words, "baseline-words")
    load_control_questions(opts.controls)
    if opts.ablate:
        from emoscope.vectors.checks import load_vector_for

        load_vector_for(opts.ablate, spec.model, what="introspect: ablate vector",
                        allow_other_model=opts.allow_other_model)


@register_stage("introspect", options_model=IntrospectOptions, check=check_introspect,
                description="concept injection trials scored by yes-no logit differences")
def introspect_stage(ctx: RunContext) -> StageResult:
    """Sweep concepts × layers × strengths with controls; tables, figures and findings."""
    from emoscope._progress import is_quiet
    from emoscope.introspection import run_sweep

    o: IntrospectOptions = ctx.options
    if o.ablate:  # before any forward: the vector is for this model (emoscope.vectors.checks)
        from emoscope.vectors import ConceptVector
        from emoscope.vectors.checks import check_vector_fits

        check_vector_fits(ConceptVector.load(o.ablate), ctx.model, where=f"introspect: ablate vector {o.ablate}",
                          allow_other_model=o.allow_other_model)
    if o.decoys:
        return _placebo(ctx, o)
    res = run_sweep(
        ctx.model, concepts=o.concepts, baseline=o.baseline_words, controls=o.controls, layers=o.layers,
        strengths=o.strengths, n_random=o.n_random, window=o.window, prefill=o.prefill, seed=ctx.seed,
        batch_size=o.batch_size, focus_layer=o.focus_layer, focus_strength=o.focus_strength, heads=o.heads,
        n_boot=o.n_boot, free_text=o.free_text, max_new_tokens=o.max_new_tokens, temperature=o.temperature,
        unit=o.unit, random_kind=o.random_kind, n_splits=o.n_splits, ablate=o.ablate, execution=ctx.execution,
        progress=not is_quiet(),
    )
    for name, df in res.tables().items():
        ctx.write_table(name, df)
    for name, fig in res.figures().items():
        ctx.save_figure(name, fig)
    m = res.meta
    for f in findings_from_result(res, claim=o.claim):
        ctx.add_finding(f)
    ctx.note(f"strength unit: {m['strength_unit']}")
    for r in res.norms.itertuples():
        if r.top_dim_share > 0.5:
            ctx.note(f"layer {r.layer}: dimension {r.top_dim} carries {r.top_dim_share:.0%} of ||resid||^2 (massive "
                     f"activation); one mean norm ({r.mean_resid_norm:.4g}) is {r.mean_resid_norm / r.mean_norm_without_top_dim:.1f}x "
                     "the rest of the residual, so even strength 1 is a very large push and a random direction of "
                     "that norm lands almost entirely outside that dimension")
    ctx.note(f"window '{m['window']}' starts at token {m['window_start_token']} of {m['prompt_tokens']}: "
             f"{m['window_text'][:60]!r}…; {m['shared_prefix_tokens']} prefix tokens computed once")
    ctx.note(f"yes spellings {m['yes_tokens']}, no spellings {m['no_tokens']}")
    if not m["chat_template"]:
        ctx.note("the model has no chat template: trials use plain 'User: ... Assistant:' text")
    h = res.heldout
    how = (f"chosen on {len(h.select)} of {len(h.select) + h.n} concepts among {h.n_searched} cells"
           if h.select else "fixed, nothing searched")
    summary = (f"layer {h.layer}, strength {h.strength:g} ({how}): held-out score {h.score.point:+.3f} "
               f"[{h.score.lo:+.3f}, {h.score.hi:+.3f}] on {h.n} concepts, Wilcoxon p {h.p_value:.3g}")
    metrics = {"n_cells": m["n_cells"], "focus_layer": m["focus_layer"], "focus_strength": m["focus_strength"],
               "heldout_layer": h.layer, "heldout_strength": h.strength, "n_searched": h.n_searched,
               "n_report": h.n, "score": round(float(h.score.point), 4), "p_value": h.p_value}
    for cmp in (h.random, h.random_cov):
        if cmp is not None:
            summary += f"; vs {cmp.kind} random (n={cmp.n_random}) mean {cmp.random_mean:+.3f}, Mann-Whitney p {cmp.p_value:.3g}"
            metrics[f"{cmp.condition}_score"] = round(cmp.random_mean, 4)
            metrics[f"p_vs_{cmp.condition}"] = cmp.p_value
    if h.random is None and h.random_cov is None:
        summary += " (no random vectors)"
    ctx.note(f"reported cell: {h.selection_note}; the heads use the focus cell fixed before the data "
             f"(layer {m['focus_layer']}, strength {m['focus_strength']:g})")
    ctx.note(m["lens_note"] + " (" + ", ".join(
        f"layer {layer}: {s:g} ({m['lens_strength_choice'][layer]})" for layer, s in m["lens_strengths"].items()) + ")")
    for r in m["flips"]:
        if r["condition"] in ("concept", "random"):
            ctx.note(f"flips, {r['condition']} at layer {r['layer']} (median over {r['n']}): detection "
                     f"{r['median_detection_flip']}, control {r['median_control_flip']}, gap {r['median_gap']}; "
                     f"detection flips in the grid for {r['detection_flips_share']:.0%}, control for "
                     f"{r['control_flips_share']:.0%}")
    if m.get("ablate"):
        ctx.note(f"ablated direction {m['ablate']!r}: {m['ablate_layers']}; the ablated conditions' shifts are "
                 "measured from the ablated baseline at the same layer (table introspect_ablation)")
        if res.ablation is not None and len(res.ablation):
            a = res.ablation[(res.ablation.condition == "concept") & (res.ablation.layer == h.layer)
                             & (res.ablation.strength == h.strength)]
            if len(a):
                r = a.iloc[0]
                metrics["score_ablated"] = round(float(r.score_ablated), 4)
                ctx.note(f"ablation at the reported cell: score {r.score:+.3f} -> {r.score_ablated:+.3f} "
                         f"(difference {r.difference:+.3f} [{r.difference_lo:+.3f}, {r.difference_hi:+.3f}] over "
                         f"{int(r.n)} concepts)")
    massive = {layer: dims for layer, dims in (m.get("massive_dims") or {}).items() if dims}
    if massive:
        ctx.note("massive dimensions on neutral text (layer: dims) "
                 + ", ".join(f"{layer}: {dims}" for layer, dims in massive.items())
                 + "; neither isotropic nor covariance-matched random directions are neutral there "
                   "(the tables give both: conditions random and random_cov)")
    if res.free_text is not None:
        ft = res.free_text[res.free_text.condition == "concept"]
        metrics["free_text_success_rate"] = round(float(ft.success.astype(float).mean()), 4)
        metrics["free_text_false_alarm_rate"] = round(float(
            res.free_text[res.free_text.condition == "baseline"].affirms.mean()), 4)
    return StageResult(summary=summary, metrics=metrics)


def decoy_concepts(model, layers: list[int], n_concepts: int, n: int, random_kind: str, seed: int) -> list:  # noqa: ANN001
    """``n`` decoy runs of ``n_concepts`` random directions each (named ``decoy-i:j``), drawn as the
    sweep draws its random vectors (isotropic, or covariance-matched; alternating when it runs
    both), from their own seeded streams."""
    from emoscope.core.decoys import alternate_kinds, decoy_name
    from emoscope.introspection.concepts import random_vectors

    cov = None
    out = []
    for i, kind in enumerate(alternate_kinds(n, random_kind)):
        if kind == "covariance" and cov is None:
            from emoscope.vectors.strength import neutral_covariance

            cov = neutral_covariance(model, layers)
        out += random_vectors(model.d_model, layers, n_concepts, seed=(seed, 91, i),
                              cov=cov if kind == "covariance" else None, prefix=decoy_name(i))
    return out


def _placebo(ctx: RunContext, o: IntrospectOptions) -> StageResult:
    """Decoy runs: every concept replaced by a random direction; each run judged on its own."""
    from emoscope._progress import is_quiet
    from emoscope.core.decoys import alternate_kinds, decoy_name, judge_decoys
    from emoscope.introspection import run_sweep
    from emoscope.introspection.concepts import load_words
    from emoscope.introspection.heldout import heldout_finding

    model = ctx.model
    layers = model.resolve_layers(list(o.layers) if isinstance(o.layers, tuple) else o.layers)
    n_concepts = len(load_words(o.concepts, "concepts"))
    random_kind = o.random_kind if o.n_random else "isotropic"
    vectors = decoy_concepts(model, layers, n_concepts, o.decoys, random_kind, ctx.seed)
    res = run_sweep(model, vectors, baseline=o.baseline_words, controls=o.controls, layers=o.layers,
                    strengths=o.strengths, n_random=o.n_random, window=o.window, prefill=o.prefill, seed=ctx.seed,
                    batch_size=o.batch_size, focus_layer=o.focus_layer, focus_strength=o.focus_strength, heads=False,
                    n_boot=o.n_boot, unit=o.unit, random_kind=o.random_kind, n_splits=o.n_splits,
                    execution=ctx.execution, progress=not is_quiet())
    pv, m = res.per_vector, res.meta
    found, kinds = {}, {}
    claim = o.claim or "the model detects injected thoughts more than random directions would"
    for i, kind in enumerate(alternate_kinds(o.decoys, random_kind)):
        name = decoy_name(i)
        view = pv[(pv.condition != "concept") | pv.vector.astype(str).str.startswith(f"{name}:")]
        h = heldout_finding(view, focus_layer=o.focus_layer, focus_strength=o.focus_strength, seed=ctx.seed,
                            n_boot=o.n_boot, n_splits=o.n_splits)
        found[name] = [introspection_finding(h, claim=claim, massive=m.get("massive_dims"),
                                             massive_share=m.get("massive_share", 0.05))]
        kinds[name] = kind
    out = judge_decoys("introspect", found, kinds=kinds)
    ctx.write_table("introspect_per_vector", pv)
    ctx.write_table("placebo_decoys_introspect", out)
    n_ship = int(out["ships"].sum()) if len(out) else 0
    ctx.note(f"placebo: {o.decoys} decoy runs, each with its {n_concepts} concepts replaced by random directions "
             f"(drawn as the random vectors are), judged as the run's only candidate against {o.n_random} random "
             "vectors per kind")
    return StageResult(summary=f"placebo: {n_ship} of {o.decoys} decoy runs ship an introspection claim",
                       metrics={"decoys": o.decoys, "decoys_shipping": n_ship})
