"""Stage ``patch``: multi-token activation patching against random-patch and neutral-source controls.

Residuals recorded on the source (``source: DATASET:CLASS``; by default the mean over that class,
``pairing: per_target`` pairs source and target prompts in order, cycling) are written into the
target prompts (``targets``, default ``neutral-starts``) at each layer and positions spec
(``last``, ``all``, ``window:K``, aligned from the end; ``generated: true`` also writes the
source's last-token state at every generated position), and the model generates
``max_new_tokens`` tokens. In the same batch: unpatched baseline rows, self-patch rows (the target
patched with its own states: strength 0), the neutral source (``neutral: auto`` = the source
dataset's ``neutral`` class, else ``neutral-corpus``) and ``n_random`` random patches of the same
norm as the delta they replace. Outputs are scored with the steering scorers; the target score is
``steering.sweep.default_target(CLASS)`` unless ``target_score`` says otherwise. Every row also
carries the step-1 view (log-odds of target tokens at the first generated token).

Writes tables ``patch_outputs`` (one row per generation) and ``patch_cells`` (per layer and
positions: the multi-token effect beside the step-1 view), figure ``patch_effect_by_layer``, and
one ``patching`` finding for the source class (``emoscope.patching.findings``) plus the step-1
observation of the same cell.

Input is checked before any model loads (``check_patch``): the source dataset and class, the
neutral source, the target prompts, the positions, and, when the model's depth can be read without
loading it (an embedded alias, a local directory with ``config.json``), the layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from emoscope.core.stages import StageResult, register_stage
from emoscope.errors import InputError
from emoscope.models.shape import resolve_layers_unloaded

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = ["PatchOptions", "patch_stage", "check_patch", "parse_source", "resolve_neutral", "DEFAULT_TARGETS",
           "DEFAULT_NEUTRAL_DATASET"]

DEFAULT_TARGETS = "neutral-starts"
DEFAULT_NEUTRAL_DATASET = "neutral-corpus"


class PatchOptions(BaseModel):
    """Options of the ``patch`` section. Defaults give a run whose finding can reach the
    checklist's 20 report prompts (40 targets, half chosen on, half reported)."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = None  # DATASET:CLASS, e.g. emotions-basic:anger (required)
    pairing: Literal["class_mean", "per_target"] = "class_mean"
    n_sources: int | None = Field(default=None, ge=1)  # None: every text of the class
    neutral: str = "auto"  # DATASET:CLASS, a dataset / file (all its texts), "auto" or "none"
    targets: str = DEFAULT_TARGETS  # target prompts: dataset name or file
    n_targets: int | None = Field(default=40, ge=1)  # None: every prompt
    layers: str | int | float | list[int | float] = Field(default_factory=lambda: [0.3, 0.5, 0.7])
    positions: list[str] = Field(default_factory=lambda: ["last"], min_length=1)  # last | all | window:K
    generated: bool = False  # also write the source's last-token state at every generated position
    chat: bool = True  # wrap sources and targets in the model's chat template when it has one
    max_new_tokens: int = Field(default=32, ge=1)
    # random patches per kind, each put through the patch's search: 16 gives a patch 4 draw sds above them
    # about 86% power at the 5% level (tests/decoy_sims.py; 10 gave 78%), as for steering
    n_random: int = Field(default=16, ge=0)
    random_kind: Literal["isotropic", "covariance", "both"] = "isotropic"  # the claim must beat every kind run
    random_test: Literal["interval", "rank"] = "interval"  # how the patch is judged among the draws (core.draws)
    self_rows: bool = True  # self-patch rows (strength 0): the target patched with its own states
    scorers: list[str] = Field(default_factory=lambda: ["nrc", "vader", "perplexity", "repetition", "script"])
    target_score: str | None = None  # scorer column; default steering.sweep.default_target(CLASS)
    batch_rows: int = Field(default=256, ge=1)
    alpha: float = 0.05
    decoys: int = Field(default=0, ge=0)  # placebo: N decoy patches (more random patches per kind) as the source

    @field_validator("positions", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else v


# -- inputs -------------------------------------------------------------------------------------
def parse_source(text: str | None, what: str = "source") -> tuple[str, str]:
    """``"DATASET:CLASS"`` -> ``(DATASET, CLASS)``; the dataset may be a path."""
    if not text or ":" not in str(text):
        raise InputError(f"patch: {what} {text!r} must be DATASET:CLASS, e.g. emotions-basic:anger")
    name, _, cls = str(text).rpartition(":")
    if not name.strip() or not cls.strip():
        raise InputError(f"patch: {what} {text!r} must be DATASET:CLASS, e.g. emotions-basic:anger")
    return name.strip(), cls.strip()


def _class_texts(name: str, cls: str, what: str) -> list[str]:
    from emoscope.datasets import load_dataset

    data = load_dataset(name)
    classes = sorted({str(y) for y in data.labels})
    if cls not in classes:
        raise InputError(f"patch: {what} class {cls!r} is not a class of {name} (classes: {', '.join(classes)})")
    return [t for t, y in zip(data.texts, data.labels, strict=True) if str(y) == cls and t.strip()]


def source_texts(opts: PatchOptions) -> tuple[str, str, list[str]]:
    """``(dataset, class, texts)`` of the source (the first ``n_sources`` texts of the class)."""
    name, cls = parse_source(opts.source)
    texts = _class_texts(name, cls, "source")
    return name, cls, texts[: opts.n_sources] if opts.n_sources else texts


def resolve_neutral(opts: PatchOptions) -> tuple[str, list[str]] | None:
    """``(label, texts)`` of the neutral source, or ``None`` for ``neutral: none``."""
    from emoscope.datasets import load_dataset, load_texts

    spec = opts.neutral.strip()
    if spec.lower() == "none":
        return None
    src_name, src_cls = parse_source(opts.source)
    if spec.lower() == "auto":
        data = load_dataset(src_name)
        if "neutral" in {str(y) for y in data.labels} and src_cls != "neutral":
            spec = f"{src_name}:neutral"
        else:
            spec = DEFAULT_NEUTRAL_DATASET
    is_pair = ":" in spec and not Path(spec).exists()
    if is_pair:
        name, cls = parse_source(spec, "neutral")
        if (name, cls) == (src_name, src_cls):
            raise InputError(f"patch: the neutral source {spec} is the source itself; give another class or dataset")
        texts = _class_texts(name, cls, "neutral")
    else:
        texts = [t for t in load_texts(spec) if t.strip()]
    if not texts:
        raise InputError(f"patch: the neutral source {spec} has no texts")
    n = opts.n_sources
    return spec, texts[:n] if n else texts


def target_prompts(opts: PatchOptions) -> list[str]:
    from emoscope.datasets import load_texts

    prompts = [t for t in load_texts(opts.targets) if t.strip()]
    if not prompts:
        raise InputError(f"patch: no target prompts in {opts.targets}; give a dataset name or a file with one prompt "
                         "per line")
    return prompts[: opts.n_targets] if opts.n_targets else prompts


    return None


def check_patch(spec, dataset) -> None:  # noqa: ANN001, ARG001 - emoscope.runs.Spec; the spec's dataset is not used
    """Before any model loads: the source class, the neutral source, the targets, the positions
    and (when the model's depth is known without loading it) the layers."""
    from emoscope.patching.positions import parse_position_list

    opts: PatchOptions = spec.options("patch")
    if not opts.source:
        raise InputError("patch needs a source: --source DATASET:CLASS (e.g. emotions-basic:anger)")
    _, cls, texts = source_texts(opts)
    if not texts:
        raise InputError(f"patch: the source class {cls!r} has no texts")
    resolve_neutral(opts)
    target_prompts(opts)
    parse_position_list(opts.positions)
    resolve_layers_unloaded(spec.model, opts.layers)  # a layer past a model of known depth: one line, now


@register_stage("patch", options_model=PatchOptions, check=check_patch,
                description="multi-token activation patching against random-patch and neutral-source controls")
def patch_stage(ctx: RunContext) -> StageResult:
    from emoscope._progress import is_quiet
    from emoscope.patching.plots import effect_by_layer_figure
    from emoscope.patching.sweep import PatchSweep

    opts: PatchOptions = ctx.options
    src_name, cls, sources = source_texts(opts)
    neutral = resolve_neutral(opts)
    targets = target_prompts(opts)
    model = ctx.model
    layers = model.resolve_layers(opts.layers)
    sweep = PatchSweep(model, sources, targets, layers, opts.positions, source_name=cls,
                       neutral=None if neutral is None else neutral[1],
                       neutral_name="neutral" if neutral is None else neutral[0].rpartition(":")[2] or "neutral",
                       pairing=opts.pairing, generated=opts.generated, max_new_tokens=opts.max_new_tokens,
                       n_random=opts.n_random + opts.decoys, random_kind=opts.random_kind, seed=ctx.seed,
                       chat="auto" if opts.chat else False,
                       self_rows=opts.self_rows, scorers=opts.scorers, target=opts.target_score,
                       batch_rows=opts.batch_rows, progress=not is_quiet(), execution=ctx.execution)
    res = sweep.run()
    res.meta["neutral"] = None if neutral is None else neutral[0]
    if opts.decoys:
        return _placebo(ctx, opts, res)
    ctx.write_table("patch_outputs", res.table)
    ctx.write_table("patch_cells", res.cells)
    ctx.save_figure("patch_effect_by_layer", effect_by_layer_figure(res))
    for line in _notes(res, opts, src_name, cls, neutral, len(sources)):
        ctx.note(line)
    pat = res.table[res.table["kind"] == "patch"]
    for (layer, pos), g in pat.groupby(["layer", "positions"], sort=False):
        shares = g["regime"].value_counts(normalize=True)
        ctx.note(f"regimes of the patched rows, layer {layer}, positions {pos}: "
                 + ", ".join(f"{share:.0%} {reg}" for reg, share in shares.items()))
    summary = _record_findings(ctx, res, opts)
    return StageResult(summary=summary, metrics={"rows": len(res.table), "decode_seconds": res.meta["decode_seconds"],
                                                 "seconds": res.meta["seconds"], "target": res.target})


_KIND_WORDS = {"isotropic": "isotropic", "covariance": "covariance-matched (neutral activations)",
               "both": "isotropic or covariance-matched (neutral activations; effects judged against isotropic)"}


def _notes(res: Any, opts: PatchOptions, src_name: str, cls: str, neutral: tuple[str, list[str]] | None,
           n_sources: int) -> list[str]:
    m = res.meta
    how = ("the end-aligned mean of their states (as long as the shortest source)" if opts.pairing == "class_mean"
           else "one source per target prompt, paired in order and cycling")
    lo, hi = m["target_tokens"]
    notes = [f"source: {n_sources} texts of class {cls!r} of {src_name}, {how}; neutral source: "
             + (f"{len(neutral[1])} texts of {neutral[0]}, the same way" if neutral else "none (neutral: none)")
             + f"; {m['n_targets']} target prompts of {opts.targets} ({lo}-{hi} tokens"
             + (", chat template)" if m["chat_template"] else ")"),
             f"patched at layers {m['layers']}, positions {m['positions']}"
             + (" and every generated position (replaced by the source's last-token state at that layer; random "
                "patches add a delta of the last prompt token's delta norm there)" if m["generated"] else "")
             + f"; {m['n_random']} random patches per cell and kind (seed {m['seed']}), each the target's clean "
               f"state plus a seeded {_KIND_WORDS[m.get('random_kind', 'isotropic')]} direction scaled column by "
               "column to the norm of the (source - target) delta it replaces; {m['n_rows']} generations of up to {m['max_new_tokens']} tokens in "
               f"{m['decode_seconds']:.1f} s of decoding ({m['seconds']:.1f} s in all, with recording and scoring)"]
    for a in m["alignment"]:
        if a["rows_with_drops"]:
            notes.append(f"alignment from the end, {a['kind']} rows at positions {a['positions']}: {a['rows_with_drops']} "
                         f"of {a['rows']} rows had unequal lengths; {a['unpatched_target_tokens']} target tokens were "
                         f"left unpatched (no source token) and {a['unused_source_tokens']} source tokens were dropped "
                         f"(no target token); {a['mean_patched']:.1f} tokens patched per row on average")
        else:
            notes.append(f"alignment from the end, {a['kind']} rows at positions {a['positions']}: no tokens dropped "
                         f"({a['mean_patched']:.1f} patched per row)")
    if m["self_rows"]:
        notes.append(f"self-patch rows (strength 0, the target patched with its own states): {m['self_rows_identical']} "
                     f"of {m['self_rows']} outputs identical to the unpatched baseline"
                     + ("" if m["self_rows_identical"] == m["self_rows"] else
                        " (the others differ after a floating-point near-tie; see min_logit_gap)"))
    if m["step1"]:
        notes.append(f"step-1 view: log P(T+) - log P(T-) at the first generated token, T+ the vocabulary tokens the "
                     f"{res.target} scorer scores above 0 on their own text, T- those below 0 (signed scorers) or "
                     "every other token; step1_change is minus the unpatched row of the same prompt (nats)")
    else:
        notes.append(f"no step-1 view for target {res.target!r} (only nrc_* and valence targets have one)")
    notes.append("regime thresholds: " + ", ".join(f"{k}={v}" for k, v in res.thresholds.as_dict().items()))
    return notes


def _record_findings(ctx: RunContext, res: Any, opts: PatchOptions) -> str:
    from emoscope.patching.findings import patch_draw_figures, patching_findings

    findings, summary = patching_findings(res, alpha=opts.alpha, seed=ctx.seed, max_new_tokens=opts.max_new_tokens,
                                          test=opts.random_test)
    figures = patch_draw_figures(res, seed=ctx.seed, test=opts.random_test, alpha=opts.alpha)
    for i, f in enumerate(findings):
        added = ctx.add_finding(f)
        if i == 0 and "patch" in figures:  # the held-out finding: its figure sits beside it (draws_<finding id>)
            ctx.save_figure(f"draws_{added.id}", figures["patch"])
    return summary


def decoy_view(result: Any, decoy: str, others: list[str]) -> Any:
    """The sweep's result with random patch ``decoy`` in the source patch's place: its rows become
    the ``patch`` rows, the real source patch and the other decoys leave."""
    from dataclasses import replace

    t = result.table
    t = t[(t["kind"] != "patch") & ~t["source"].isin([o for o in others if o != decoy])].copy()
    mine = (t["source"] == decoy).to_numpy()
    t.loc[mine, "kind"] = "patch"
    t.loc[mine, "random_kind"] = ""
    return replace(result, table=t)


def _placebo(ctx: RunContext, opts: PatchOptions, res: Any) -> StageResult:
    """The last ``decoys`` random patches of each kind, each in the source patch's place."""
    from emoscope.core.decoys import judge_decoys
    from emoscope.patching.findings import patching_findings

    k, n = opts.n_random, opts.decoys
    kinds = ["isotropic", "covariance"] if opts.random_kind == "both" else [opts.random_kind]
    names = {f"{'random-' if kd == 'isotropic' else 'random-cov-'}{k + i}": kd for kd in kinds for i in range(n)}
    found = {}
    for name in names:
        found[f"decoy-{name.removeprefix('random-')}"] = patching_findings(
            decoy_view(res, name, list(names)), alpha=opts.alpha, seed=ctx.seed, max_new_tokens=opts.max_new_tokens,
            test=opts.random_test)[0]
    kinds_of = {f"decoy-{nm.removeprefix('random-')}": kd for nm, kd in names.items()}
    out = judge_decoys("patch", found, alpha=opts.alpha, kinds=kinds_of)
    ctx.write_table("placebo_decoys_patch", out)
    n_ship = int(out.groupby("decoy")["ships"].any().sum()) if len(out) else 0
    ctx.note(f"placebo: {len(names)} decoy patches (random patches of the same norm, {n} per kind) each in the "
             f"source patch's place against the first {k} random patches per kind, judged as the run's only "
             f"candidate; {len(res.table)} generations in {res.meta['decode_seconds']:.1f} s")
    return StageResult(summary=f"placebo: {n_ship} of {len(names)} decoy patches ship a patching claim",
                       metrics={"decoys": len(names), "decoys_shipping": n_ship})
