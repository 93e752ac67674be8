"""Run stage ``probe``: per-layer probes with every control on, written as a finding.

The claim "the classes are linearly decodable from resid[peak]" is recorded with the controls
the probe checklist asks for (shuffled labels, length-only and bag-of-words baselines, seed
spread, held-out layer choice); the audit decides whether it ships.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from emoscope.audit import Control, Finding, Observation
from emoscope.core.stages import StageResult, register_stage, require_classes
from emoscope.errors import InputError

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = ["ProbeOptions", "probe_stage", "probe_finding", "check_probe", "min_class_size"]


class ProbeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_folds: int = Field(default=5, ge=2)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    n_permutations: int = Field(default=100, ge=0)
    heldout: float = Field(default=0.2, ge=0.0, lt=0.5)  # 0: no held-out split
    nullspace_k: int = Field(default=3, ge=0)
    max_seed_sd: float = 0.05


def min_class_size(n_folds: int, heldout: float) -> int:
    """Fewest texts a class needs: ``n_folds`` per class left after the held-out split.

    The held-out split takes one fold of ``round(1 / heldout)`` (at most ``ceil(n / k)`` rows
    of a class of ``n``), and the rest must still fill ``n_folds`` folds.

    >>> min_class_size(5, 0.2), min_class_size(5, 0.0), min_class_size(3, 0.2)
    (7, 5, 5)
    """
    if heldout <= 0:
        return n_folds
    k = max(2, int(round(1.0 / heldout)))
    n = max(n_folds, k)
    while n - math.ceil(n / k) < n_folds:
        n += 1
    return n


def check_probe(spec, dataset) -> None:  # noqa: ANN001 - emoscope.runs.Spec, a Dataset
    """Before any model loads: two classes at least, each large enough for the folds."""
    opts: ProbeOptions = spec.options("probe")
    counts = require_classes(dataset, "probe", spec.dataset)
    need = min_class_size(opts.n_folds, opts.heldout)
    split = f" after a {opts.heldout:.0%} held-out split" if opts.heldout > 0 else ""
    small = {c: n for c, n in counts.items() if n < need}
    if small:
        listed = ", ".join(f"{c!r} has {n}" for c, n in small.items())
        raise InputError(f"dataset {spec.dataset}: class {listed} text(s); the probe needs at least {need} per class "
                         f"for {opts.n_folds} folds{split}: add texts or lower the folds (--folds)")
    groups = getattr(dataset, "groups", None)
    if groups is not None and len(set(groups)) < need:
        raise InputError(f"dataset {spec.dataset}: {len(set(groups))} groups cannot fill {opts.n_folds} folds{split} "
                         f"(needs {need}): add groups or lower the folds (--folds)")


def probe_finding(report, *, model_name: str, dataset: str, max_seed_sd: float = 0.05) -> Finding:
    """A ``probe`` finding from a ``ProbeReport``: the peak-layer accuracy, its claim and controls."""
    peak = report.peak
    acc, b = float(peak["acc"]), report.baselines
    chance = float(b["chance"])
    ratio = float(report.meta.get("confound_ratio", 0.9))

    def baseline(key: str, name: str) -> Control:
        if b.get(f"{key}_acc") is None:
            return Control(name=name, value=None, passed=None, note="not run")
        base, lo = float(b[f"{key}_acc"]), float(b[f"{key}_lo"])
        explains = base >= ratio * acc and lo > chance
        return Control(name=name, value=round(base, 4), passed=not explains, threshold=f"< {ratio:g} x probe accuracy")

    perm = report.permutation or {}
    shuffled = peak.get("shuffled_acc")
    controls = [
        Control(name="shuffled_labels", value=None if shuffled is None else round(float(shuffled), 4),
                passed=(perm.get("p", 1.0) < 0.05) if perm else None,
                threshold="permutation p < 0.05", note=f"p = {perm.get('p', float('nan')):.4f}, "
                f"{perm.get('n_permutations', '?')} permutations" if perm else "not run"),
        baseline("length_only", "length_baseline"),
        baseline("bow", "bow_baseline"),
    ]
    sd = peak.get("seed_sd")
    controls.append(Control(name="seed_spread", value=None if sd is None or math.isnan(sd) else round(float(sd), 4),
                            passed=None if sd is None or math.isnan(sd) else bool(sd <= max_seed_sd),
                            threshold=f"sd <= {max_seed_sd}"))
    h = report.heldout_acc
    controls.append(Control(name="heldout_layer_choice", value=None if not h else round(float(h["acc"]), 4),
                            passed=None if not h else bool(h["lo"] > chance),
                            threshold=f"held-out interval above chance {chance:.2f}",
                            note="" if not h else f"[{h['lo']:.2f}, {h['hi']:.2f}], n={h['n']}"))
    return Finding(
        kind="probe",
        claim=f"{dataset} classes are linearly decodable from resid[{report.peak_layer}] of {model_name}",
        observation=Observation(metric="accuracy", value=round(acc, 4),
                                interval=(round(float(peak["acc_lo"]), 4), round(float(peak["acc_hi"]), 4)),
                                n=int(report.meta.get("n", 0)) or None),
        controls=controls,
    )


@register_stage("probe", options_model=ProbeOptions, check=check_probe, description="per-layer probes with controls on by default")
def probe_stage(ctx: RunContext) -> StageResult:
    from emoscope.probing import LayerProbe, ProbeControls, probe_layers

    opts: ProbeOptions = ctx.options
    data = ctx.dataset
    acts = ctx.activations(progress=False)
    controls = ProbeControls(n_permutations=opts.n_permutations, heldout=opts.heldout, nullspace_k=opts.nullspace_k)
    report = probe_layers({layer: acts.get(layer) for layer in acts.layers}, data.labels, texts=data.texts,
                          token_counts=acts.token_counts, groups=data.groups, n_layers_total=ctx.model.n_layers,
                          controls=controls, probe=LayerProbe(n_folds=opts.n_folds, seeds=tuple(opts.seeds)),
                          seed=ctx.seed)
    report.meta.setdefault("n", len(data.labels))
    report.meta.setdefault("confound_ratio", controls.confound_ratio)
    ctx.write_table("probe_layers", report.table)
    ctx.write_table("probe_baselines", _baselines_table(report))
    ctx.save_figure("probe_layer_curve", report.figure(title=f"{ctx.model.name} on {ctx.spec.dataset}"))
    ctx.add_finding(probe_finding(report, model_name=ctx.model.name, dataset=ctx.spec.dataset,
                                  max_seed_sd=opts.max_seed_sd))
    for note in report.notes + [f"confounded: {r}" for r in report.confound_reasons]:
        ctx.note(note)
    peak = report.peak
    return StageResult(
        summary=(f"peak layer {report.peak_layer} (relative depth {report.peak_rel_depth:.2f}), "
                 f"accuracy {peak['acc']:.3f} [{peak['acc_lo']:.3f}, {peak['acc_hi']:.3f}]"
                 + ("; CONFOUNDED: " + "; ".join(report.confound_reasons) if report.confounded else "")),
        metrics={"peak_layer": int(report.peak_layer), "peak_rel_depth": float(report.peak_rel_depth),
                 "peak_acc": float(peak["acc"]), "confounded": bool(report.confounded)},
    )


def _baselines_table(report):
    import pandas as pd

    b = report.baselines
    rows = [{"baseline": "chance", "acc": b.get("chance"), "lo": None, "hi": None}]
    for key in ("length_only", "bow"):
        if b.get(f"{key}_acc") is not None:
            rows.append({"baseline": key, "acc": b[f"{key}_acc"], "lo": b.get(f"{key}_lo"), "hi": b.get(f"{key}_hi")})
    if report.heldout_acc:
        h = report.heldout_acc
        rows.append({"baseline": f"held-out (layer {h['layer']})", "acc": h["acc"], "lo": h["lo"], "hi": h["hi"]})
    for k, acc in enumerate(report.nullspace):
        rows.append({"baseline": f"nullspace after {k} removals", "acc": acc, "lo": None, "hi": None})
    return pd.DataFrame(rows)
