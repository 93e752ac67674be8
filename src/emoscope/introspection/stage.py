"""The ``introspect`` stage: concept injection scored by yes-no logit differences.

It runs ``emoscope.introspection.run_sweep`` on the spec's model, writes its tables
(``introspect_*``) and figures, and records one ``introspection`` finding per injected layer at
the focus strength. Each finding is an observation (no claim unless the spec gives one in
``introspect.claim``) with its three controls judged:

- control questions at the same strength: passed when the score's interval (detection shift
  minus control shift) lies above 0;
- logit differences: passed when the detection shift's interval lies above 0;
- random vectors: passed when the concept score's interval lies above the random-vector score.

Spec section (all optional)::

    introspect:
      concepts: default            # or a word-list path, or a list of words
      layers: [0.3, 0.5, 0.67, 0.8]
      strengths: [1, 2, 4, 8, 16]
      window: before_trial         # prompt_start | generation_only
      n_random: 4
      free_text: 0                 # N sampled answers per cell, graded by rules
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from emoscope.audit import Control, Finding, Observation
from emoscope.core.stages import StageResult, register_stage

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = ["IntrospectOptions", "introspect_stage", "findings_from_summary", "check_introspect"]


class IntrospectOptions(BaseModel):
    """Options of the ``introspect`` section (the CLI ``emoscope introspect`` builds these)."""

    model_config = ConfigDict(extra="forbid")

    concepts: str | list[str] = "default"
    baseline_words: str | list[str] = "default"
    controls: str = "control-questions"
    layers: str | list[int | float] = Field(default_factory=lambda: [0.3, 0.5, 0.67, 0.8])
    strengths: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0], min_length=1)
    window: Literal["before_trial", "prompt_start", "generation_only"] = "before_trial"
    n_random: int = Field(default=4, ge=0)
    prefill: str | None = None
    batch_size: int = Field(default=64, ge=1)
    focus_layer: int | None = None
    focus_strength: float | None = None
    heads: bool = True
    n_boot: int = Field(default=2000, ge=100)
    free_text: int = Field(default=0, ge=0)
    max_new_tokens: int = Field(default=40, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    unit: Literal["trial_norm", "token_norm", "token_norm_robust"] = "trial_norm"  # see emoscope.vectors.units
    claim: str | None = None


def findings_from_summary(summary, *, strength: float, claim: str | None = None) -> list[Finding]:  # noqa: ANN001
    """One ``introspection`` finding per injected layer at ``strength`` (see module doc)."""
    out = []
    concept = summary[(summary.condition == "concept") & (summary.strength == strength)]
    rand = summary[(summary.condition == "random") & (summary.strength == strength)].set_index("layer")
    for r in concept.itertuples():
        interval = None if r.score_lo != r.score_lo else (float(r.score_lo), float(r.score_hi))
        rr = rand.loc[r.layer] if r.layer in rand.index else None
        controls = [
            Control(name="control_questions", value=float(r.control_shift), threshold=0.0,
                    passed=bool(r.score_lo > 0) if interval else None,
                    note=f"score interval [{r.score_lo:.3g}, {r.score_hi:.3g}]"),
            Control(name="logit_difference", value=float(r.detection_shift), threshold=0.0,
                    passed=bool(r.detection_shift_lo > 0) if r.detection_shift_lo == r.detection_shift_lo else None,
                    note="yes-minus-no logit difference (log-sum-exp over spellings), shift from no injection"),
        ]
        if rr is not None:
            controls.append(Control(name="random_vectors", value=float(rr.score), threshold=float(rr.score),
                                    passed=bool(r.score_lo > rr.score) if interval else None,
                                    note=f"{int(rr.n)} random vectors of the same norm"))
        out.append(Finding(
            kind="introspection", claim=claim,
            observation=Observation(
                metric=f"introspection score (detection shift − control shift), layer {r.layer} "
                       f"(depth {r.relative_depth:.2f}), strength {strength:g}",
                value=float(r.score), interval=interval, n=int(r.n)),
            controls=controls,
        ))
    return out


def check_introspect(spec, dataset) -> None:  # noqa: ANN001, ARG001 - emoscope.runs.Spec; no dataset needed
    """Before any model loads: the word lists and the control questions can be read."""
    from emoscope.datasets import load_control_questions
    from emoscope.introspection.concepts import load_words

    opts: IntrospectOptions = spec.options("introspect")
    load_words(opts.concepts, "concepts")
    load_words(opts.baseline_words, "baseline-words")
    load_control_questions(opts.controls)


@register_stage("introspect", options_model=IntrospectOptions, check=check_introspect,
                description="concept injection trials scored by yes-no logit differences")
def introspect_stage(ctx: RunContext) -> StageResult:
    """Sweep concepts × layers × strengths with controls; tables, figures and findings."""
    from emoscope._progress import is_quiet
    from emoscope.introspection import run_sweep

    o: IntrospectOptions = ctx.options
    res = run_sweep(
        ctx.model, concepts=o.concepts, baseline=o.baseline_words, controls=o.controls, layers=o.layers,
        strengths=o.strengths, n_random=o.n_random, window=o.window, prefill=o.prefill, seed=ctx.seed,
        batch_size=o.batch_size, focus_layer=o.focus_layer, focus_strength=o.focus_strength, heads=o.heads,
        n_boot=o.n_boot, free_text=o.free_text, max_new_tokens=o.max_new_tokens, temperature=o.temperature,
        unit=o.unit, progress=not is_quiet(),
    )
    for name, df in res.tables().items():
        ctx.write_table(name, df)
    for name, fig in res.figures().items():
        ctx.save_figure(name, fig)
    m = res.meta
    for f in findings_from_summary(res.summary, strength=m["focus_strength"], claim=o.claim):
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
    f = res.focus()
    r = res.focus("random") if o.n_random else None
    summary = (f"layer {m['focus_layer']}, strength {m['focus_strength']:g}: detection shift "
               f"{f.detection_shift:+.3f}, control shift {f.control_shift:+.3f}, score {f.score:+.3f} "
               f"[{f.score_lo:+.3f}, {f.score_hi:+.3f}]"
               + (f" vs random {r.score:+.3f}" if r is not None else " (no random vectors)"))
    metrics = {"n_cells": m["n_cells"], "focus_layer": m["focus_layer"], "focus_strength": m["focus_strength"],
               "score": round(float(f.score), 4)}
    if r is not None:
        metrics["random_score"] = round(float(r.score), 4)
    if res.free_text is not None:
        ft = res.free_text[res.free_text.condition == "concept"]
        metrics["free_text_success_rate"] = round(float(ft.success.astype(float).mean()), 4)
        metrics["free_text_false_alarm_rate"] = round(float(
            res.free_text[res.free_text.condition == "baseline"].affirms.mean()), 4)
    return StageResult(summary=summary, metrics=metrics)
