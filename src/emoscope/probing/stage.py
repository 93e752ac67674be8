"""Run stage ``probe``: per-layer probes with every control on, written as a finding.

The claim "the classes are linearly decodable from resid[peak]" is recorded with the controls
the probe checklist asks for (shuffled labels, length-only and bag-of-words baselines, seed
spread, held-out layer choice); the audit decides whether it ships.
"""

from __future__ import annotations

import math
from collections import Counter
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
    # a second dataset (built-in name or path): the probe fitted on the spec's dataset at the
    # chosen layer is scored on the classes the two share; the transfer accuracy becomes a control
    transfer: str | None = None


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
    if opts.transfer:
        from emoscope.datasets import load_dataset

        other = load_dataset(opts.transfer)
        shared = sorted(set(counts) & set(other.labels))
        if len(shared) < 2:
            raise InputError(f"transfer dataset {opts.transfer} shares {len(shared)} class(es) with {spec.dataset} "
                             f"({', '.join(shared) or 'none'}); it needs at least 2 in common")
    groups = getattr(dataset, "groups", None)
    if groups is not None and len(set(groups)) < need:
        raise InputError(f"dataset {spec.dataset}: {len(set(groups))} groups cannot fill {opts.n_folds} folds{split} "
                         f"(needs {need}): add groups or lower the folds (--folds)")


def transfer_control(train_X, train_y, test_X, test_y, *, source: str, target: str, seed: int = 0) -> Control:  # noqa: ANN001
    """Generalisation: a probe fitted on ``source`` rows scored on ``target`` rows of the classes
    both share; passed when the accuracy's bootstrap interval lies above the majority-class rate
    of the shared classes in the target."""
    import numpy as np

    from emoscope.core.stats import bootstrap
    from emoscope.probing import LayerProbe

    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    shared = sorted(set(train_y.tolist()) & set(test_y.tolist()))
    if len(shared) < 2:
        raise InputError(f"transfer dataset {target} shares {len(shared)} class(es) with {source} "
                         f"({', '.join(shared) or 'none'}); it needs at least 2 in common")
    tr, te = np.isin(train_y, shared), np.isin(test_y, shared)
    probe = LayerProbe(n_folds=2, seeds=(seed,), n_boot=0, seed=seed).fit(train_X[tr], train_y[tr])
    correct = (probe.predict(test_X[te]) == test_y[te]).astype(float)
    acc, lo, hi = bootstrap(correct, seed=seed)
    chance = max(float(np.mean(test_y[te] == c)) for c in shared)
    return Control(name="transfer", value=round(acc, 4), passed=bool(lo > chance), threshold=f"> chance {chance:.2f}",
                   note=f"fitted on {source}, scored on {int(te.sum())} texts of {target} "
                        f"({len(shared)} shared classes); 95% interval [{lo:.2f}, {hi:.2f}]")


def _shuffled_labels(report, alpha: float) -> tuple[Control, float | None]:  # noqa: ANN001
    """The shuffled-label control and its p: the peak against the null of the best layer.

    With the per-layer ridge test (``permutation_max``): the peak's ridge CV accuracy against, per
    label shuffle, the best accuracy over all layers (floor ``1 / (n + 1)``). Without it, the
    logistic permutation p at the peak, Bonferroni over the layers searched. Both are computed on
    the rows that chose the layer and account for the choice."""
    peak, pm, perm = report.peak, report.permutation_max, report.permutation or {}
    shuffled = peak.get("shuffled_acc")
    value = None if shuffled is None else round(float(shuffled), 4)
    threshold = f"permutation p < {alpha}, the search over layers included"
    n_layers = int(len(report.table))
    if pm:
        p = float(pm["p"])
        note = (f"p = {p:.4g}: null: labels carry nothing at any layer; labels shuffled {pm['n_permutations']} times "
                f"{_unit_words(pm['unit'])}; the peak's ridge-probe CV accuracy "
                f"{pm['observed']:.3f} against the best of {pm['n_layers']} layers per shuffle (mean "
                f"{pm['null_max_mean']:.3f}, 95% point {pm['null_max_q95']:.3f}); smallest attainable p "
                f"{pm['min_p']:.3g}")
    elif perm:
        p = min(1.0, float(perm["p"]) * n_layers)
        note = (f"p = {p:.4g}: the logistic permutation p at the peak ({perm['p']:.4g}, {perm['n_permutations']} "
                f"shuffles) x {n_layers} layers searched (Bonferroni)")
    else:
        return Control(name="shuffled_labels", value=value, passed=None, threshold=threshold, note="not run"), None
    if perm and pm:
        note += f"; logistic probe at the peak alone (not corrected for the choice): p = {perm['p']:.4g}"
    return Control(name="shuffled_labels", value=value, passed=bool(p < alpha), threshold=threshold, note=note), p


def probe_finding(report, *, model_name: str, dataset: str, max_seed_sd: float = 0.05) -> Finding:
    """A ``probe`` finding from a ``ProbeReport``: the peak-layer accuracy, its claim and controls.

    ``observation.p_value`` is the p of the ``shuffled_labels`` control: the only control of the
    probe decided by a test, and one that accounts for choosing the layer (the peak against the
    best layer under shuffled labels), so the run-wide correction need add nothing for the
    layers. The held-out accuracy's own permutation p (groups as the unit) is in the
    ``heldout_layer_choice`` note; that control is judged by its grouped bootstrap interval.
    """
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

    alpha = float((report.meta.get("controls") or {}).get("alpha", 0.05))
    shuffled_control, p_value = _shuffled_labels(report, alpha)
    controls = [
        shuffled_control,
        baseline("length_only", "length_baseline"),
        baseline("bow", "bow_baseline"),
    ]
    sd = peak.get("seed_sd")
    controls.append(Control(name="seed_spread", value=None if sd is None or math.isnan(sd) else round(float(sd), 4),
                            passed=None if sd is None or math.isnan(sd) else bool(sd <= max_seed_sd),
                            threshold=f"sd <= {max_seed_sd}"))
    h = report.heldout_acc
    n_layers = int(len(report.table))
    controls.append(Control(name="heldout_layer_choice", value=None if not h else round(float(h["acc"]), 4),
                            passed=None if not h else bool(h["lo"] > chance),
                            threshold=f"held-out interval above chance {chance:.2f}",
                            note="not run (heldout: 0)" if not h else
                            f"layer chosen among {n_layers} on the dev rows (CV accuracy {acc:.3f}); "
                            f"held-out [{h['lo']:.2f}, {h['hi']:.2f}], n={h['n']}" + _heldout_p(h)))
    claim = f"{dataset} classes are linearly decodable from resid[{report.peak_layer}] of {model_name}"
    if h:  # the value reported is the held-out one: the layer was chosen on the other rows
        obs = Observation(metric=f"held-out accuracy at layer {report.peak_layer} (chosen among {n_layers} layers "
                                 "on the dev rows)", value=round(float(h["acc"]), 4),
                          interval=(round(float(h["lo"]), 4), round(float(h["hi"]), 4)),
                          n=int(h.get("n_per_class_min", 0)) or None, unit="held-out texts per class",
                          p_value=p_value, n_searched=n_layers)
    else:
        obs = Observation(metric=f"CV accuracy at layer {report.peak_layer}, the best of {n_layers} layers",
                          value=round(acc, 4), interval=(round(float(peak["acc_lo"]), 4), round(float(peak["acc_hi"]), 4)),
                          n=int(report.meta.get("n_per_class_min", 0)) or None, unit="texts per class",
                          p_value=p_value, n_searched=n_layers)
    return Finding(kind="probe", claim=claim, observation=obs, controls=controls)


def _heldout_p(h: dict) -> str:
    t = h.get("test")
    if not t:
        return ""
    return (f"; permutation p {t['p']:.3g} (null: the predictions carry no label information; labels permuted "
            f"{t['n_permutations']} times {_unit_words(t['unit'], t['n_units'])}; smallest attainable {t['min_p']:.3g})")


def _unit_words(unit: str, n: int | None = None) -> str:
    count = "" if n is None else f"{n} "
    if unit == "row":
        return f"over the {count}rows"
    return (f"keeping the {count}groups (rows of a group move together: whole groups swap labels, or labels move "
            "only within a group)")


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
    report.meta.setdefault("n_per_class_min", min(Counter(data.labels).values()))
    report.meta.setdefault("confound_ratio", controls.confound_ratio)
    ctx.write_table("probe_layers", report.table)
    ctx.write_table("probe_baselines", _baselines_table(report))
    ctx.save_figure("probe_layer_curve", report.figure(title=f"{ctx.model.name} on {ctx.spec.dataset}"))
    finding = probe_finding(report, model_name=ctx.model.name, dataset=ctx.spec.dataset, max_seed_sd=opts.max_seed_sd)
    if opts.transfer:
        from emoscope.datasets import load_dataset

        other = load_dataset(opts.transfer)
        layer = int(report.peak_layer)
        other_acts = ctx.activations(texts=list(other.texts), layers=[layer], progress=False)
        control = transfer_control(acts.get(layer), data.labels, other_acts.get(layer), other.labels,
                                   source=ctx.spec.dataset, target=opts.transfer, seed=ctx.seed)
        finding = finding.with_updates(controls=[*finding.controls, control])
        ctx.note(f"transfer to {opts.transfer} at layer {layer}: accuracy {control.value} ({control.note})")
    ctx.add_finding(finding)
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
