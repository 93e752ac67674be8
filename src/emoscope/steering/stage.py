"""Stage ``steer``: steered multi-token generation against random-vector controls.

The vector is read from ``vector:`` (a ConceptVector file) or fitted here by difference of
means for ``emotion:`` on the spec's dataset (default emotion: ``joy``, else ``gratitude``, else
the first class that is not the baseline) against ``baseline:`` (default: the ``neutral`` class
when the dataset has one, else the mean of all classes). The sweep runs the vector, its negation
(the symmetric strength grid) and ``n_random`` random matched-norm vectors of each
``random_kind`` (isotropic, covariance-matched, or both) in one batched decode, scores every
output, classifies its regime, and records one ``steering`` finding per vector
(``emoscope.steering.findings``): the (layer, strength) cell chosen on half the prompts among the
cells whose outputs mostly stay fluent there, its effect over random vectors, interval and
p-value measured on the other half (``n`` = report prompts), with the random-vector, held-out,
multi-token, fluency and seed-spread controls.

Strengths (``strengths:``, in ``unit``): ``auto`` (the default) runs a short pilot first
(``emoscope.steering.pilot``: a few prompts after the sweep's, few tokens, a ladder of strengths,
no random controls) that finds where this vector on this model stops giving intact output at each
layer, and sweeps a grid below that point and just past it; its table is ``steer_pilot`` and the
notes give the break points, the grid and the pilot's cost. Explicit strengths run as given.

Writes tables ``steer_outputs``, ``steer_success``, ``steer_regimes``, ``steer_dose_response``,
figures ``steer_dose_response``, ``steer_regime_map`` and the vector it steered with
(``steer/vector.safetensors``, with the strength unit it ran with in its metadata).

``SteerOptions`` is the one source of defaults: ``emoscope steer`` takes its flags' defaults
from it, and ``DEFAULT_DATASET`` is the dataset a ``--emotion`` vector is fitted on unless told.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from emoscope.core.stages import StageResult, register_stage, require_classes
from emoscope.errors import InputError
from emoscope.steering.pilot import AUTO, Strengths

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = ["SteerOptions", "steer_stage", "check_steer", "DEFAULT_DATASET"]

DEFAULT_DATASET = "emotions-basic"


class SteerOptions(BaseModel):
    """Options of the ``steer`` section. Defaults make a small check (minutes on a laptop CPU)."""

    model_config = ConfigDict(extra="forbid")

    vector: str | None = None  # a ConceptVector .safetensors file; else fitted for `emotion`
    allow_other_model: bool = False  # use a vector whose metadata names another model (emoscope.vectors.checks)
    emotion: str | None = None  # class of the spec's dataset to fit a vector for (default: see module doc)
    baseline: str | None = None  # class to subtract, or "all"; default neutral if present, else "all"
    position: str = "mean_from:1"  # extraction position when fitting (all tokens but the attention sink)
    layers: str | int | float | list[int | float] = Field(default_factory=lambda: [0.33, 0.5])
    strengths: Strengths = AUTO  # "auto": a short pilot brackets where the vector breaks (steering.pilot); or a list
    unit: str = "token_norm"  # a strength unit of emoscope.vectors.strength (token_norm, token_norm_robust) or "raw"
    positions: str = "generated"
    mode: Literal["add", "ablate_add"] = "add"
    prompts: str = "neutral-starts"
    n_prompts: int | None = Field(default=8, ge=1)  # None: every prompt
    chat: bool = True  # wrap prompts in the model's chat template when it has one
    max_new_tokens: int = Field(default=32, ge=1)
    # random vectors per kind, each put through the vector's search: 16 gives a vector 4 draw sds above them
    # about 90% power at the 5% level (tests/decoy_sims.py; 10 gave 78%)
    n_random: int = Field(default=16, ge=0)
    random_kind: Literal["isotropic", "covariance", "both"] = "both"  # findings are judged against isotropic
    random_test: Literal["interval", "rank"] = "interval"  # how the candidate is judged among the draws (core.draws)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    scorers: list[str] = Field(default_factory=lambda: ["nrc", "vader", "perplexity", "repetition", "script"])
    target: str | None = None
    batch_rows: int = Field(default=256, ge=1)
    alpha: float = 0.05  # level of the test against the random draws (the run corrects across its tests)
    decoys: int = Field(default=0, ge=0)  # placebo: N decoy vectors replace the vector (emoscope placebo)

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, v: str) -> str:
        from emoscope.vectors.strength import STEERING_UNITS

        if v not in STEERING_UNITS:
            raise ValueError(f"unknown strength unit; use one of {', '.join(STEERING_UNITS)}")
        return v

    @model_validator(mode="after")
    def _auto_needs_a_unit(self) -> SteerOptions:
        if self.strengths == AUTO and self.unit == "raw":
            raise ValueError("strengths 'auto' needs a measured unit (token_norm or token_norm_robust); "
                             "with unit raw give the strengths")
        return self


def _pick_emotion(classes: list[str], baseline: str) -> str:
    for name in ("joy", "gratitude"):
        if name in classes and name != baseline:
            return name
    others = [c for c in classes if c not in ("neutral", baseline)]
    if not others:
        raise InputError("the steer stage needs a dataset with an emotion class, or `vector:` in its section")
    return others[0]


def _all_prompts(opts: SteerOptions) -> list[str]:
    from emoscope.datasets import load_texts

    prompts = [t for t in load_texts(opts.prompts) if t.strip()]
    if not prompts:
        raise InputError(f"no prompts in {opts.prompts}; give a dataset name or a file with one prompt per line")
    return prompts


def _prompts(opts: SteerOptions) -> list[str]:
    prompts = _all_prompts(opts)
    return prompts[: opts.n_prompts] if opts.n_prompts else prompts


def _emotion_and_baseline(spec, dataset, opts: SteerOptions) -> tuple[str, str]:  # noqa: ANN001
    from emoscope.vectors.fit import resolve_baseline

    name = spec.dataset
    counts = require_classes(dataset, "steer", name)
    classes = list(counts)
    baseline = resolve_baseline(classes, opts.baseline, what="steer: baseline", source=name)
    if opts.emotion is not None and opts.emotion not in classes:
        raise InputError(f"steer: emotion {opts.emotion!r} is not a class of {name} (classes: {', '.join(classes)})")
    emotion = opts.emotion or _pick_emotion(classes, baseline)
    if emotion == baseline:
        raise InputError(f"steer: emotion {emotion!r} is also the baseline; choose another --baseline or 'all'")
    return emotion, baseline


def check_steer(spec, dataset) -> None:  # noqa: ANN001 - emoscope.runs.Spec, a Dataset
    """Before any model loads: prompts to steer, and a vector file or a class to fit one for."""
    opts = spec.options("steer")
    _prompts(opts)
    if opts.vector:
        from emoscope.vectors.checks import load_vector_for

        load_vector_for(opts.vector, spec.model, what="steer: vector", allow_other_model=opts.allow_other_model)
        return
    if dataset is None:
        raise InputError("steer needs a vector: give `vector: FILE`, or `dataset: NAME` to fit one for `emotion:`")
    _emotion_and_baseline(spec, dataset, opts)


def _vector(ctx: RunContext, opts: SteerOptions, layers: list[int]):
    import numpy as np

    from emoscope.vectors import ConceptVector, DiffMeans

    if opts.vector:
        from emoscope.vectors.checks import check_vector_fits

        vector = ConceptVector.load(opts.vector)
        check_vector_fits(vector, ctx.model, where=f"steer: vector {opts.vector}", allow_other_model=opts.allow_other_model)
        return vector
    data = ctx.dataset
    emotion, baseline = _emotion_and_baseline(ctx.spec, data, opts)
    ctx.note(f"vector: difference of means of {emotion!r} minus "
             + (f"the {baseline!r} class" if baseline != "all" else "the mean of all classes")
             + f" on {ctx.spec.dataset}, position {opts.position}"
             + ("" if opts.baseline is not None or baseline != "all" else " (the dataset has no 'neutral' class)"))
    acts = ctx.activations(layers=layers, position=opts.position)
    y = np.asarray(data.labels)
    vecs = {layer: DiffMeans(emotion, baseline).fit(acts.get(layer), y).vector_.astype(np.float32) for layer in layers}
    return ConceptVector(emotion, vecs, {"method": "diff_means", "baseline": baseline,
                                         "dataset": ctx.spec.dataset, "position": opts.position})


@register_stage("steer", options_model=SteerOptions, check=check_steer,
                description="steered multi-token generation against random-vector controls")
def steer_stage(ctx: RunContext) -> StageResult:
    from emoscope._progress import is_quiet
    from emoscope.steering import SteeringSweep
    from emoscope.steering.plots import dose_response_figure, regime_map_figure
    from emoscope.steering.regimes import regime_switches
    from emoscope.vectors.strength import resolve_unit, with_unit

    opts: SteerOptions = ctx.options
    model = ctx.model
    layers = model.resolve_layers(opts.layers)
    vector = _vector(ctx, opts, layers)
    strengths, pilot_metrics = _strengths(ctx, opts, layers, vector)  # before either branch: decoys get this grid
    if opts.decoys:
        return _placebo(ctx, opts, layers, vector, strengths)
    sweep = SteeringSweep(model, vector, layers, strengths, _prompts(opts), opts.seeds, opts.max_new_tokens,
                          positions=opts.positions, mode=opts.mode, unit=opts.unit, n_random=opts.n_random,
                          random_kind=opts.random_kind,
                          seed=ctx.seed, temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p,
                          chat="auto" if opts.chat else False, batch_rows=opts.batch_rows, scorers=opts.scorers,
                          target=opts.target, progress=not is_quiet(), execution=ctx.execution)
    res = sweep.run()
    ctx.write_table("steer_outputs", res.table)
    ctx.write_table("steer_success", res.success)
    ctx.write_table("steer_regimes", res.regime_shares())
    ctx.write_table("steer_dose_response", res.dose_response())
    ctx.save_figure("steer_dose_response", dose_response_figure(res))
    ctx.save_figure("steer_regime_map", regime_map_figure(res))
    if opts.unit != "raw":  # the saved vector carries the strength unit it was run with
        vector = with_unit(vector, resolve_unit(model, vector, layers, opts.unit))
    out = ctx.run_dir.root / "steer"
    out.mkdir(parents=True, exist_ok=True)
    vector.save(out / "vector.safetensors")
    unit = ("in raw units (times the vector)" if opts.unit == "raw"
            else f"in {opts.unit} units (residual norm of strength 1 per layer: {res.meta['unit_norms']})")
    ctx.note(f"steering {vector.name} at layers {layers}, strengths {sweep.grid} {unit}; positions={opts.positions}; "
             f"{len(res.table)} generations of up to {opts.max_new_tokens} tokens in {res.meta['decode_seconds']:.1f} s")
    ctx.note("regime thresholds: " + ", ".join(f"{k}={v}" for k, v in res.thresholds.as_dict().items()))
    for line in regime_switches(res.table):
        ctx.note("regimes, " + line)
    best = _record_findings(ctx, res, opts)
    return StageResult(summary=best, metrics={"rows": len(res.table), "decode_seconds": res.meta["decode_seconds"],
                                              "target": res.target, **pilot_metrics})


def _strengths(ctx: RunContext, opts: SteerOptions, layers: list[int], vector) -> tuple[list[float], dict]:  # noqa: ANN001
    """The sweep's strengths: the given ones, or for ``auto`` the grid of a pilot
    (``emoscope.steering.pilot``), whose table (``steer_pilot``) and notes go into the run."""
    if opts.strengths != AUTO:
        return list(opts.strengths), {}
    from emoscope._progress import is_quiet
    from emoscope.steering.pilot import pilot_prompts, run_pilot

    prompts = pilot_prompts(_all_prompts(opts), len(_prompts(opts)))
    pilot = run_pilot(ctx.model, vector, layers, prompts, unit=opts.unit, positions=opts.positions, mode=opts.mode,
                      chat="auto" if opts.chat else False, scorers=opts.scorers, seed=ctx.seed, seeds=opts.seeds,
                      temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p, batch_rows=opts.batch_rows,
                      max_new_tokens=opts.max_new_tokens, execution=ctx.execution, progress=not is_quiet())
    ctx.write_table("steer_pilot", pilot.table)
    for line in pilot.notes():
        ctx.note(line)
    return pilot.grid, {"pilot_seconds": round(pilot.seconds, 2), "pilot_rows": pilot.rows,
                        "strengths_auto": ",".join(f"{s:g}" for s in pilot.grid)}


def _vector_of(finding, figures: dict) -> str | None:  # noqa: ANN001
    """The vector (a key of ``figures``) a held-out steering finding is about, from its metric."""
    return next((name for name in figures if f", {name} at layer " in finding.observation.metric), None)


def _record_findings(ctx: RunContext, res, opts: SteerOptions) -> str:
    from emoscope.steering.findings import steering_draw_figures, steering_findings
    from emoscope.vectors.strength import measure_unit

    layers = sorted(int(x) for x in res.meta.get("layers", []))
    massive = measure_unit(ctx.model, layers, "token_norm_robust").massive_dims if layers and opts.n_random else {}
    findings, summary = steering_findings(res, alpha=opts.alpha, seed=ctx.seed, max_new_tokens=opts.max_new_tokens,
                                          massive_dims=massive, test=opts.random_test)
    figures = steering_draw_figures(res, seed=ctx.seed, test=opts.random_test, alpha=opts.alpha)
    for f in findings:
        added = ctx.add_finding(f)
        owner = _vector_of(f, figures) if any(c.name == "random_vectors" for c in f.controls) else None
        if owner is not None:  # the figure sits beside its finding in the report: draws_<finding id>
            ctx.save_figure(f"draws_{added.id}", figures.pop(owner))
    return summary


def decoy_vectors(model, vector, layers: list[int], n: int, random_kind: str, seed: int) -> tuple[list, dict[str, str]]:  # noqa: ANN001
    """``n`` decoys drawn as the sweep draws its random controls: a unit direction per layer
    (isotropic, or covariance-matched to neutral activations), scaled to ``vector``'s norm there;
    from their own seeded stream, so no decoy is one of the controls. Kinds alternate when the
    sweep runs both."""
    import numpy as np

    from emoscope.core.decoys import alternate_kinds, decoy_name
    from emoscope.core.directions import random_layer_directions
    from emoscope.steering.strength import layer_vectors
    from emoscope.vectors import ConceptVector

    kinds = alternate_kinds(n, random_kind)
    vecs = layer_vectors(model, vector, layers)
    iso = random_layer_directions(model.d_model, layers, kinds.count("isotropic"), np.random.default_rng([seed, 71]))
    cov = []
    if "covariance" in kinds:
        from emoscope.vectors.strength import neutral_covariance

        cov = random_layer_directions(model.d_model, layers, kinds.count("covariance"),
                                      np.random.default_rng([seed, 72]), cov=neutral_covariance(model, layers))
    out, of_kind = [], {}
    pools = {"isotropic": iter(iso), "covariance": iter(cov)}
    for i, kind in enumerate(kinds):
        draw = next(pools[kind])
        name = decoy_name(i)
        out.append(ConceptVector(name, {layer: (draw[layer] * np.linalg.norm(vecs[layer])).astype(np.float32)
                                        for layer in layers}, {"decoy": kind, "of": vector.name}))
        of_kind[name] = kind
    return out, of_kind


def _placebo(ctx: RunContext, opts: SteerOptions, layers: list[int], vector,  # noqa: ANN001
             strengths: list[float]) -> StageResult:
    """Decoys in the vector's place: one sweep, each decoy judged as the run's only candidate."""
    from emoscope._progress import is_quiet
    from emoscope.core.decoys import judge_decoys
    from emoscope.steering import SteeringSweep
    from emoscope.steering.findings import steering_findings
    from emoscope.steering.sweep import default_target

    random_kind = opts.random_kind if opts.n_random else "isotropic"
    decoys, kinds = decoy_vectors(ctx.model, vector, layers, opts.decoys, random_kind, ctx.seed)
    target = opts.target or default_target(vector.name)
    sweep = SteeringSweep(ctx.model, decoys, layers, strengths, _prompts(opts), opts.seeds, opts.max_new_tokens,
                          positions=opts.positions, mode=opts.mode, unit=opts.unit, n_random=opts.n_random,
                          random_kind=opts.random_kind, seed=ctx.seed, temperature=opts.temperature, top_k=opts.top_k,
                          top_p=opts.top_p, chat="auto" if opts.chat else False, batch_rows=opts.batch_rows,
                          scorers=opts.scorers, target=target, progress=not is_quiet(), execution=ctx.execution)
    res = sweep.run()
    ctx.write_table("steer_outputs", res.table)
    found = {d.name: steering_findings(res, alpha=opts.alpha, seed=ctx.seed, max_new_tokens=opts.max_new_tokens,
                                       test=opts.random_test, vectors=[d.name])[0] for d in decoys}
    table = judge_decoys("steer", found, alpha=opts.alpha, kinds=kinds)
    ctx.write_table("placebo_decoys_steer", table)
    n_ship = int(table.groupby("decoy")["ships"].any().sum()) if len(table) else 0
    ctx.note(f"placebo: {len(decoys)} decoys in place of {vector.name} (random directions of its norm per layer, "
             f"{', '.join(f'{k}: {list(kinds.values()).count(k)}' for k in dict.fromkeys(kinds.values()))}), each "
             f"judged as the run's only candidate against {opts.n_random} random vectors per kind; "
             f"{len(res.table)} generations in {res.meta['decode_seconds']:.1f} s")
    return StageResult(summary=f"placebo: {n_ship} of {len(decoys)} decoys ship a steering claim",
                       metrics={"decoys": len(decoys), "decoys_shipping": n_ship})
