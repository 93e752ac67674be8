"""The concept-injection sweep: concepts × layers × strengths on the detection question and
every control question, plus the no-injection baseline and random vectors of the same norm.

Strength is in the unit ``trial_norm`` by default: the mean residual norm at the injected layer,
measured on the detection trial prompt without injection (all tokens except the first, whose
attention-sink norm is far above the rest). ``unit="token_norm"`` / ``"token_norm_robust"``
use steering's units instead (measured on neutral text; the robust one leaves out massive
dimensions, so strengths compare across models); see ``emoscope.vectors.strength``. Every injected vector is scaled to ``strength × mean norm``, so
concept and random vectors have exactly the same norm. The unit is measured in ``norms.py``; the
tables come back as an ``InjectionResult`` (``result.py``); both are re-exported here.

Random vectors (``n_random`` of each kind, default 10): ``random`` are isotropic draws,
``random_cov`` covariance-matched ones (drawn from the covariance of ``resid[l]`` on
``neutral-corpus``, ``emoscope.vectors.strength.neutral_covariance``); ``random_kind`` picks
``"isotropic"``, ``"covariance"`` or ``"both"`` (the default). The bank normalises every vector
before scaling, so both kinds have the concept vectors' norm by construction.

Cost: every (layer, strength) cell runs ``(n_concepts + n_random × kinds) × (1 + n_controls)``
trial rows (defaults: (30 + 10 × 2) × 17 = 850 rows, against 578 with the former 4 isotropic
vectors), plus one neutral-corpus extraction for the covariance and the massive dimensions.

The reported cell (``InjectionResult.heldout``) is chosen on half the concepts and reported on
the other half; see ``emoscope.introspection.heldout``.

Heads (``introspect_heads``): one eager-attention pass at the focus cell over the detection
question and every control question, with and without concept injection, and with isotropic
random vectors (covariance-matched ones when no isotropic ones ran): the attention from the
answer position to the window per (layer, head) in the replication's three conditions (control
question with injection, detection question with injection, detection question without) side by
side, the random vectors' mean and spread beside them (``tables.heads_table``).

Flip strengths (``introspect_flips``): per vector and layer, where the detection question's
yes-minus-no difference crosses 0, where the control questions' mean does, and the gap
(``tables.flips_table``). The logit lens is drawn per swept layer at the smallest grid strength
where, for most concepts, detection has flipped and the controls have not
(``tables.flip_lens_strengths``); a layer without one keeps the focus strength (the meta says so).

Ablation (``ablate=``, a ``ConceptVector`` or its ``.safetensors`` path, e.g. a refusal
direction): every injected cell also runs with that direction's projection removed at the
injected layer only, over the injection window, after the concept is added (``cells`` module
doc), as condition ``<condition>+ablated``; ``baseline+ablated`` is the uninjected prompt with the
direction ablated at each swept layer, the zero its ablated conditions' shifts are measured from.
``introspect_ablation`` compares the score with and without ablation (``tables.ablation_table``).
A single layer is the choice: the same place the concept enters, exact under the early-block
replay, and it needs the vector only at the swept layers; later blocks can write the direction
back, which the lens of the ablated cells shows. Ablation doubles the injected cells.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emoscope.errors import InputError
from emoscope.introspection.cells import Injection, ablation_directions, score_cells
from emoscope.introspection.concepts import concept_vectors, random_vectors
from emoscope.introspection.freetext import sweep_free_text
from emoscope.introspection.heldout import N_SPLITS, heldout_finding
from emoscope.introspection.measure import answer_tokens
from emoscope.introspection.norms import resid_norm_profile, unit_values
from emoscope.introspection.result import InjectionResult
from emoscope.introspection.summaries import ablation_baseline, flip_lens, flip_summary
from emoscope.introspection.tables import (
    ABLATED,
    ablation_table,
    flips_table,
    heads_table,
    per_vector_table,
    summary_table,
)
from emoscope.introspection.trials import build_trials
from emoscope.introspection.units import score_units
from emoscope.models.standard import StandardModel
from emoscope.vectors.strength import (
    MASSIVE_SHARE,
    MEASURED,
    UNITS,
    measure_unit,
    neutral_covariance,
)

__all__ = ["InjectionSweep", "InjectionResult", "run_sweep", "resid_norm_profile", "DEFAULT_LAYERS",
           "DEFAULT_STRENGTHS", "DEFAULT_N_RANDOM", "RANDOM_KINDS"]

DEFAULT_LAYERS = (0.3, 0.5, 0.67, 0.8)
DEFAULT_STRENGTHS = (1.0, 2.0, 4.0, 8.0, 16.0)
DEFAULT_N_RANDOM = 10
RANDOM_KINDS = ("isotropic", "covariance", "both")


def _focus(layers: Sequence[int], strengths: Sequence[float], n_layers: int,
           layer: Any, strength: float | None) -> tuple[int, float]:
    """Focus cell for the lens and heads, fixed before the data are seen: the sweep layer
    nearest 2/3 depth and the middle strength, unless given."""
    if layer is None:
        layer = min(layers, key=lambda x: (abs(x / n_layers - 2 / 3), x))
    elif int(layer) not in layers:
        raise InputError(f"focus layer {layer} is not among the swept layers {list(layers)}")
    if strength is None:
        strength = sorted(strengths)[len(strengths) // 2]
    elif float(strength) not in strengths:
        raise InputError(f"focus strength {strength} is not among the swept strengths {list(strengths)}")
    return int(layer), float(strength)


def _check_vectors(vectors: Sequence[Any], layers: Sequence[int], d: int) -> None:
    if not vectors:
        raise InputError("no concept vectors to inject")
    for v in vectors:
        missing = [layer for layer in layers if layer not in v.vectors]
        if missing:
            raise InputError(f"concept vector {v.name!r} has no layer(s) {missing}; build it with those layers")
        if v.d != d:
            raise InputError(f"concept vector {v.name!r} has width {v.d}, the model has d_model={d}")


def run_sweep(model: StandardModel, vectors: Sequence[Any] | None = None, *, concepts: Any = "default",
              baseline: Any = "default", controls: Any = "control-questions",
              layers: Any = DEFAULT_LAYERS, strengths: Sequence[float] = DEFAULT_STRENGTHS,
              n_random: int = DEFAULT_N_RANDOM, random_kind: str = "both", window: str = "before_trial",
              prefill: str | None = None, seed: int = 0,
              batch_size: int = 64, focus_layer: int | None = None, focus_strength: float | None = None,
              heads: bool = True, n_boot: int = 2000, free_text: int = 0, max_new_tokens: int = 40,
              temperature: float = 1.0, judge: Any = None, unit: str = "trial_norm", n_splits: int = N_SPLITS,
              ablate: Any = None, execution: Any = None, progress: bool = False) -> InjectionResult:
    """Run the logit sweep. ``vectors``: ``ConceptVector``s to inject (default: built from
    ``concepts`` minus the mean over ``baseline`` words). ``controls``: a control-question set
    name, path or list of questions. ``free_text=N``: also N sampled answers per cell of the
    detection trial (and of the baseline and random vectors), graded by rules (``judge``: an
    optional extra grader, see ``run_free_text``). ``unit``: what strength 1 means, ``trial_norm``
    (the trial prompt's mean token norm, the default) or ``token_norm`` / ``token_norm_robust``
    measured on neutral text (see ``emoscope.vectors.strength``). ``n_random`` random vectors of each
    ``random_kind`` (``isotropic``, ``covariance``-matched, or ``both``). The reported cell is
    chosen on half the concepts unless ``focus_layer`` and ``focus_strength`` fix it; its seed
    spread uses ``n_splits`` (>= 3) seeds of the concept split (see ``emoscope.introspection.heldout``).
    ``ablate``: a ``ConceptVector`` (or its ``.safetensors`` path) whose direction is also ablated
    at the injected layer in every cell, beside the same cells without ablation (module doc).
    ``execution``: where the cells' work units run and are stored (``emoscope.core.executor``;
    default in process, nothing stored); a run gives its stage one, so ``--resume`` skips the
    finished units and ``--executor ray`` spreads them over workers.

    >>> res = run_sweep(model, concepts=["ocean", "bread"], layers=[0.5], strengths=[4])  # doctest: +SKIP
    >>> res.summary[["condition", "layer", "strength", "score"]]                          # doctest: +SKIP
    """
    from emoscope.datasets import load_control_questions

    if unit != "trial_norm" and unit not in MEASURED:
        raise InputError(f"introspection unit must be 'trial_norm' or one of {MEASURED}, got {unit!r}")
    layer_list = model.resolve_layers(list(layers) if isinstance(layers, tuple) else layers)
    strengths = sorted({float(s) for s in strengths})
    if not strengths or any(not np.isfinite(s) or s < 0 for s in strengths):
        raise InputError(f"strengths must be finite and non-negative, got {strengths}")
    if not isinstance(n_random, int) or n_random < 0:
        raise InputError(f"n_random must be a non-negative integer, got {n_random!r}")
    if random_kind not in RANDOM_KINDS:
        raise InputError(f"random_kind must be one of {RANDOM_KINDS}, got {random_kind!r}")
    if not isinstance(n_splits, int) or n_splits < 3:
        raise InputError(f"n_splits must be an integer >= 3 (seeds of the concept split), got {n_splits!r}")
    fl, fs = _focus(layer_list, strengths, model.n_layers, focus_layer, focus_strength)
    questions = load_control_questions(controls) if isinstance(controls, (str, os.PathLike)) else list(controls)
    if not questions:
        raise InputError("no control questions; the introspection score needs them")
    trials = build_trials(model, questions, prefill=prefill, window=window)
    tokens = answer_tokens(model.tokenizer)
    if vectors is None:
        vectors = concept_vectors(model, concepts, baseline, layers=layer_list, progress=progress)
    vectors = list(vectors)
    _check_vectors(vectors, layer_list, model.d_model)
    ablate_name, dirs = _ablation(ablate, layer_list, model.d_model)
    iso = random_vectors(model.d_model, layer_list, n_random, seed=seed) if (
        n_random and random_kind in ("isotropic", "both")) else []
    cov = []
    if n_random and random_kind in ("covariance", "both"):
        cov = random_vectors(model.d_model, layer_list, n_random, seed=(seed, 1),
                             cov=neutral_covariance(model, layer_list), prefix="random_cov")
    massive = measure_unit(model, layer_list, "token_norm_robust").massive_dims if n_random else {}
    norms_df = resid_norm_profile(model, trials[0], layer_list)
    norms = unit_values(model, unit, norms_df, layer_list)

    # bank rows: one unit direction per (vector, layer); cells index them
    bank, labels, cells = [], [], []
    for t in range(len(trials)):
        cells.append(Injection(t))
        labels.append(("baseline", "none", None, 0.0, 0.0))
    for cond, group in (("concept", vectors), ("random", iso), ("random_cov", cov)):
        for v in group:
            for layer in layer_list:
                u = np.asarray(v[layer], dtype=np.float64)
                norm = np.linalg.norm(u)
                if norm == 0:
                    raise InputError(f"vector {v.name!r} is zero at layer {layer}")
                bank.append((u / norm).astype(np.float32))
                for s in strengths:
                    scale = s * norms[layer]
                    for t in range(len(trials)):
                        cells.append(Injection(t, layer, len(bank) - 1, scale))
                        labels.append((cond, v.name, layer, s, scale))
    if dirs:
        # the ablated baseline per layer, then every injected cell again with the ablation
        n_plain = len(cells)
        for layer in layer_list:
            for t in range(len(trials)):
                cells.append(Injection(t, layer, 0, 0.0, True))
                labels.append(("baseline" + ABLATED, "none", layer, 0.0, 0.0))
        for i in range(len(trials), n_plain):
            c, lab = cells[i], labels[i]
            cells.append(Injection(c.trial, c.layer, c.vector, c.scale, True))
            labels.append((lab[0] + ABLATED, *lab[1:]))
    scores = score_units(model, trials, cells, np.stack(bank), tokens, batch_size=batch_size,
                         ablate=dirs or None, execution=execution, progress=progress)

    table = pd.DataFrame(labels, columns=["condition", "vector", "layer", "strength", "scale"])
    table.insert(1, "kind", [trials[c.trial].kind for c in cells])
    table.insert(2, "question", [trials[c.trial].question for c in cells])
    table["relative_depth"] = [None if x is None else round(x / model.n_layers, 4) for x in table.layer]
    table["layer"] = table.layer.astype("Int64")
    table["logit_diff"] = scores.logit_diff
    base = scores.logit_diff[: len(trials)]
    table["shift"] = scores.logit_diff - _zero(cells, labels, scores.logit_diff)
    table["p_yes"], table["p_no"] = scores.p_yes, scores.p_no
    per_vector = per_vector_table(table)
    summary = summary_table(per_vector, n_boot=n_boot, seed=seed)
    flips = flips_table(table)
    lens, lens_meta = flip_lens(table, scores.lens, model.n_layers, layer_list, fs)
    heldout = heldout_finding(per_vector, focus_layer=focus_layer, focus_strength=focus_strength,
                              fallback=(fl, fs), seed=seed, n_boot=n_boot, n_splits=n_splits)
    ablation_df = ablation_table(per_vector, n_boot=n_boot, seed=seed) if dirs else None

    heads_df, heads_random = None, None
    if heads:
        heads_random = "random" if iso else ("random_cov" if cov else None)
        keep = ("concept", heads_random)
        rows = list(range(len(trials))) + [
            i for i, c in enumerate(cells) if labels[i][0] in keep and c.layer == fl and labels[i][3] == fs]
        att = score_cells(model, trials, [cells[i] for i in rows], np.stack(bank), tokens,
                          batch_size=batch_size, attention=True).attention
        group = ["baseline" if labels[i][0] == "baseline" else
                 "concept" if labels[i][0] == "concept" else "random" for i in rows]
        heads_df = heads_table(att, group, [trials[cells[i].trial].kind for i in rows], [labels[i][1] for i in rows])

    free_df = None
    if free_text:
        free_df = sweep_free_text(model, trials[0], vectors, bank, cells, labels, free_text, seed=seed,
                             max_new_tokens=max_new_tokens, temperature=temperature, judge=judge,
                             batch_size=batch_size, progress=progress)
    meta = {
        "model": model.name, "n_layers": model.n_layers, "layers": layer_list, "strengths": strengths,
        "n_concepts": len(vectors), "concepts": [v.name for v in vectors], "n_random": n_random,
        "random_kind": random_kind, "n_splits": n_splits, "random_conditions": [c for c, g in (("random", iso), ("random_cov", cov)) if g],
        "massive_dims": {int(k): [int(i) for i in v] for k, v in massive.items()}, "massive_share": MASSIVE_SHARE,
        "heldout": heldout.to_meta(),
        "n_controls": len(questions), "window": window, "prefill": prefill, "seed": seed,
        "window_text": trials[0].window_text(model.tokenizer), "window_start_token": trials[0].window_start,
        "prompt_tokens": len(trials[0].ids), "shared_prefix_tokens": scores.prefix_length,
        "yes_tokens": list(tokens.yes_text), "no_tokens": list(tokens.no_text),
        "strength_unit": unit, "strength_unit_definition": UNITS[unit].format(share=MASSIVE_SHARE),
        "focus_layer": fl, "focus_strength": fs, "chat_template": model.has_chat_template,
        "detection_prompt": trials[0].text, "n_cells": len(cells),
        "baseline_detection_diff": float(base[0]), "baseline_control_diff_mean": float(base[1:].mean()),
        "heads_random": heads_random, "flips": flip_summary(flips), **lens_meta,
        "ablate": ablate_name, "ablate_layers": "the injected layer only, over the injection window, after the concept"
        if dirs else None,
    }
    if dirs:
        meta["ablation_baseline"] = ablation_baseline(table)
    return InjectionResult(table, per_vector, summary, lens, norms_df, heads_df, meta, free_df, heldout,
                           flips, ablation_df)


def _ablation(ablate: Any, layers: Sequence[int], d: int) -> tuple[str | None, dict[int, np.ndarray]]:
    """The ablation vector's name and its unit direction per swept layer (checked)."""
    if ablate is None:
        return None, {}
    if isinstance(ablate, (str, os.PathLike)):
        from emoscope.vectors import ConceptVector

        if not Path(ablate).is_file():
            raise InputError(f"ablate: vector file {ablate} not found; give a ConceptVector .safetensors file")
        ablate = ConceptVector.load(ablate)
    return str(getattr(ablate, "name", "ablate")), ablation_directions(ablate, layers, d)


def _zero(cells: Sequence[Injection], labels: Sequence[tuple], diff: np.ndarray) -> np.ndarray:
    """Per cell, the logit difference its shift is measured from: the trial's baseline; for an
    ablated condition the ablated baseline at the same layer (for ``baseline+ablated`` itself,
    the plain baseline: its shift is the ablation's own effect)."""
    ablated_base = {(c.trial, c.layer): diff[i] for i, (c, lab) in enumerate(zip(cells, labels, strict=True))
                    if lab[0] == "baseline" + ABLATED}
    return np.array([ablated_base[(c.trial, c.layer)] if lab[0].endswith(ABLATED) and lab[0] != "baseline" + ABLATED
                     else diff[c.trial] for c, lab in zip(cells, labels, strict=True)], dtype=diff.dtype)


class InjectionSweep:
    """The concept-injection sweep as an object of the same shape as ``SteeringSweep``: settings in
    ``__init__`` (checked against :func:`run_sweep`'s keywords), the work in :meth:`run`.

    >>> sweep = InjectionSweep(model, concepts=["ocean", "bread"], layers=[0.5], strengths=[2, 4])  # doctest: +SKIP
    >>> res = sweep.run(); res.summary                                                          # doctest: +SKIP
    """

    def __init__(self, model: StandardModel, vectors: Sequence[Any] | None = None, **options: Any) -> None:
        import inspect

        known = [p for p in inspect.signature(run_sweep).parameters if p not in ("model", "vectors")]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InputError(f"InjectionSweep got unknown option(s) {unknown}; known: {', '.join(known)}")
        self.model, self.vectors, self.options = model, vectors, dict(options)

    def run(self) -> InjectionResult:
        """Run the sweep (see :func:`run_sweep`)."""
        return run_sweep(self.model, self.vectors, **self.options)
