"""``probe_layers``: the per-layer probe curve with every control, as one ``ProbeReport``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from emoscope._io import sha256_json
from emoscope._progress import progress
from emoscope.core.arrays import as_labels, as_layer_dict, numeric_vector
from emoscope.core.directions import random_subspaces
from emoscope.core.stats import bootstrap, group_permutations, holm, min_pvalue
from emoscope.errors import InputError, LayerError
from emoscope.probing import controls as ctl
from emoscope.probing._solver import blas_threads
from emoscope.probing._splits import heldout_split, make_folds
from emoscope.probing.controls import ProbeControls
from emoscope.probing.probe import LayerProbe, cv_proba, summarize
from emoscope.probing.probe_report import TABLE_COLUMNS, ProbeReport, judge

__all__ = ["probe_layers"]

_DEFAULT_CONTROLS = ProbeControls()


def _check_texts(texts: Any, n: int) -> list[str] | None:
    if texts is None:
        return None
    texts = list(texts)
    if len(texts) != n:
        raise InputError(f"texts has {len(texts)} entries but the activations have {n} rows")
    if not all(isinstance(t, str) for t in texts):
        raise InputError("texts must be strings")
    return texts


def probe_layers(
    acts_by_layer: Any,
    labels: Any,
    *,
    texts: Any,
    token_counts: Any,
    groups: Any = None,
    n_layers_total: int | None = None,
    controls: ProbeControls = _DEFAULT_CONTROLS,
    probe: LayerProbe | None = None,
    seed: int = 0,
    n_threads: int | None = 1,
) -> ProbeReport:
    """Probe every layer with cross-validation and run the controls; return a ``ProbeReport``.

    ``acts_by_layer``: ``{layer: (n, d)}`` (or an ``Activations``); ``labels (n,)``;
    ``texts`` and ``token_counts`` feed the bag-of-words and length-only baselines: pass
    ``None`` only together with ``controls=ProbeControls(bow=False)`` /
    ``ProbeControls(length_only=False)``. ``groups (n,)`` keeps rows of one group (e.g.
    paraphrases of one prompt) in one fold. ``probe`` sets folds, seeds and ``C``.
    ``n_threads`` caps BLAS threads while probing (the matrices are small; ``None``
    leaves the BLAS default).

    A held-out share of rows (``controls.heldout``) is set aside first; layers are compared
    and the peak chosen on cross-validation over the remaining rows only; the held-out
    accuracy of the peak layer is reported separately, with a permutation p whose unit is the
    group (``controls.heldout_test``). The shuffled-label test of the peak is against the best
    layer under each shuffle (``perm_p_max``, ``report.permutation_max``), so it accounts for
    the choice. Every label permutation keeps groups (``core.stats.group_permutations``).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(["joy", "neutral"], 60)
    >>> acts = {l: rng.normal(size=(120, 16)) + (y == "joy")[:, None] * l for l in range(3)}
    >>> texts = ["some text"] * 120; counts = np.full(120, 3)
    >>> rep = probe_layers(acts, y, texts=texts, token_counts=counts, n_layers_total=3,
    ...                    controls=ProbeControls(n_permutations=20, n_layer_permutations=100))
    >>> rep.peak_layer > 0, rep.confounded
    (True, False)
    """
    with blas_threads(n_threads):
        return _probe_layers(
            acts_by_layer, labels, texts=texts, token_counts=token_counts, groups=groups,
            n_layers_total=n_layers_total, controls=controls, probe=probe, seed=seed,
        )


def _probe_layers(
    acts_by_layer: Any,
    labels: Any,
    *,
    texts: Any,
    token_counts: Any,
    groups: Any,
    n_layers_total: int | None,
    controls: ProbeControls,
    probe: LayerProbe | None,
    seed: int,
) -> ProbeReport:
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    if not isinstance(controls, ProbeControls):
        raise InputError("controls must be a ProbeControls(...)")
    controls.validate()
    probe = probe if probe is not None else LayerProbe(seed=seed)
    probe._check()
    acts = as_layer_dict(acts_by_layer)
    layers = list(acts)
    n = next(iter(acts.values())).shape[0]
    y_str = as_labels(labels, n)
    classes, y_all = np.unique(y_str, return_inverse=True)
    K = classes.size
    if K < 2:
        raise InputError("probing needs at least two classes in labels")
    g_all = None if groups is None else as_labels(groups, n, "groups")
    texts = _check_texts(texts, n)
    if controls.bow and texts is None:
        raise InputError("the bag-of-words control needs texts=...; to skip it pass controls=ProbeControls(bow=False)")
    if token_counts is None and controls.length_only:
        raise InputError(
            "the length-only control needs token_counts=...; to skip it pass controls=ProbeControls(length_only=False)"
        )
    counts = None if token_counts is None else numeric_vector(token_counts, n, "token_counts")
    notes: list[str] = []
    if n_layers_total is None:
        n_layers_total = max(layers) + 1
        notes.append(f"n_layers_total not given; rel_depth uses {n_layers_total} (max layer + 1)")
    if min(layers) < 0 or max(layers) >= n_layers_total:
        raise LayerError(f"layers {min(layers)}..{max(layers)} do not fit in n_layers_total={n_layers_total}")
    C, it, tol = float(probe.C), int(probe.max_iter), float(probe.tol)
    rng = np.random.default_rng(seed)
    boot = dict(n_boot=int(probe.n_boot), seed=seed)

    if controls.heldout > 0:
        dev, ho = heldout_split(y_all, g_all, controls.heldout, seed)
    else:
        dev, ho = np.arange(n), np.arange(0)
    y = y_all[dev]
    g = None if g_all is None else g_all[dev]
    seeds = list(probe.seeds)
    folds = [make_folds(y, g, probe.n_folds, s) for s in seeds]
    f0 = folds[0]
    # every label permutation keeps groups: rows of one group move together (core.stats)
    y_shuf = group_permutations(y, 1, groups=g, seed=rng)[0] if controls.shuffled else None
    ridge = (
        ctl.RidgePermutation(y, f0, group_permutations(y, controls.n_layer_permutations, groups=g, seed=rng), K)
        if controls.n_layer_permutations > 0
        else None
    )
    ridge_obs, ridge_null = [], []  # per layer: the ridge probe's accuracy and its shuffles
    k_dir = max(1, K - 1)
    R_by_d: dict[int, np.ndarray] = {}

    rows = []
    for layer in progress(layers, desc="probe layers", total=len(layers)):
        X = acts[layer][dev].astype(np.float64)  # (n_dev, d)
        runs_y = [y] * len(seeds) + ([y_shuf] if y_shuf is not None else [])
        runs_f = folds + ([f0] if y_shuf is not None else [])
        proba, _ = cv_proba(X, runs_y, runs_f, K, C, it, tol)
        row: dict[str, Any] = {"layer": layer, "rel_depth": layer / n_layers_total}
        row.update(summarize(y, proba[: len(seeds)], g, **boot))
        nan = float("nan")
        if y_shuf is not None:
            _, lo, hi = bootstrap((proba[-1].argmax(1) == y_shuf).astype(float), g, **boot)
            row.update(shuffled_acc=float(np.mean(proba[-1].argmax(1) == y_shuf)), shuffled_lo=lo, shuffled_hi=hi)
        else:
            row.update(shuffled_acc=nan, shuffled_lo=nan, shuffled_hi=nan)
        if ridge is not None:
            obs_acc, row["perm_p"], null_acc = ridge.test(X)
            ridge_obs.append(obs_acc)
            ridge_null.append(null_acc)
        else:
            row["perm_p"] = nan
        if controls.random_directions and controls.n_random_draws > 0:
            d = X.shape[1]
            if d not in R_by_d:
                R_by_d[d] = random_subspaces(d, min(k_dir, d), controls.n_random_draws, rng)
            row["random_dir_acc"] = ctl.random_direction_accuracy(X, y, f0, K, R_by_d[d], min(k_dir, d), C, it, tol)
        else:
            row["random_dir_acc"] = nan
        rows.append(row)

    table = pd.DataFrame(rows)
    table["perm_p_holm"] = holm(table["perm_p"].to_numpy())
    table["perm_p_max"] = (ctl.max_over_layers(np.array(ridge_obs), np.stack(ridge_null)) if ridge is not None
                           else np.nan)
    table["selectivity"] = table["acc"] - table["shuffled_acc"]
    peak_i = int(np.argmax(table["acc"].to_numpy()))
    peak_layer = int(table["layer"].iloc[peak_i])
    Xp = acts[peak_layer].astype(np.float64)  # (n, d), all rows

    permutation_max = None
    if ridge is not None:  # the shuffled-label test of the chosen layer, the search over layers included
        peak_null = np.stack(ridge_null).max(axis=0)
        permutation_max = {
            "statistic": "cv_accuracy_ridge_best_layer", "layer": peak_layer, "observed": float(ridge_obs[peak_i]),
            "p": float(table["perm_p_max"].iloc[peak_i]), "n_permutations": int(controls.n_layer_permutations),
            "min_p": min_pvalue(controls.n_layer_permutations), "n_layers": len(layers),
            "null_max_mean": float(peak_null.mean()), "null_max_q95": float(np.quantile(peak_null, 0.95)),
            "unit": "row" if g is None else "group",
        }
    permutation = None
    if controls.shuffled and controls.n_permutations > 0:
        permutation = ctl.logistic_permutation_test(
            Xp[dev], y, f0, K, controls.n_permutations, rng, C, it, tol, groups=g
        )
        permutation["layer"] = peak_layer
    nullspace = ctl.nullspace_curve(Xp[dev], y, f0, K, controls.nullspace_k, C, it, tol) if controls.nullspace_k > 0 else []

    heldout = None
    if ho.size:
        fit = ctl.train_once(Xp, y_all, dev, K, C, it, tol)
        pred = fit.proba(Xp[ho])[:, 0].argmax(1)
        correct = (pred == y_all[ho]).astype(float)
        g_ho = None if g_all is None else g_all[ho]
        acc, lo, hi = bootstrap(correct, g_ho, **boot)
        # the p-value: a permutation test with groups as the unit (rows of a group are not independent)
        test = ctl.heldout_test(pred, y_all[ho], g_ho, max(999, controls.n_layer_permutations), rng)
        heldout = {"acc": acc, "lo": lo, "hi": hi, "n": int(ho.size), "layer": peak_layer,
                   "n_per_class_min": int(np.bincount(y_all[ho], minlength=K).min()),
                   "n_correct": int(correct.sum()), "p": test["p"], "test": test}

    share = np.bincount(y, minlength=K) / y.size
    baselines: dict[str, Any] = {"chance": float(share.max()), "chance_uniform": 1.0 / K}
    if controls.length_only:
        F = ctl.length_features(counts[dev], None if texts is None else [texts[i] for i in dev])
        pl, _ = cv_proba(F, [y] * len(seeds), folds, K, C, it, tol)
        s = summarize(y, pl, g, **boot)
        baselines.update(length_only_acc=s["acc"], length_only_lo=s["acc_lo"], length_only_hi=s["acc_hi"])
        baselines["length_features"] = ["token_count"] + (["char_count"] if texts is not None else [])
    if controls.bow:
        tdev = [texts[i] for i in dev]
        pb = np.stack([ctl.bow_proba(tdev, y, f, K, C) for f in folds])
        s = summarize(y, pb, g, **boot)
        baselines.update(bow_acc=s["acc"], bow_lo=s["acc_lo"], bow_hi=s["acc_hi"])

    report = ProbeReport(
        table=table[TABLE_COLUMNS],
        baselines=baselines,
        peak_layer=peak_layer,
        peak_rel_depth=float(table["rel_depth"].iloc[peak_i]),
        heldout_acc=heldout,
        nullspace=nullspace,
        permutation=permutation,
        permutation_max=permutation_max,
        notes=notes,
        meta={
            "n": int(n),
            "n_rows": int(n),
            "n_dev": int(dev.size),
            "n_heldout": int(ho.size),
            "classes": classes.tolist(),
            "layers": layers,
            "n_layers_total": int(n_layers_total),
            "grouped": g_all is not None,
            "probe": {
                "n_folds": int(probe.n_folds), "seeds": seeds, "C": C, "max_iter": it, "tol": tol,
                "n_boot": int(probe.n_boot),
            },
            "controls": controls.to_dict(),
            "confound_ratio": float(controls.confound_ratio),
            "seed": seed,
            "labels_sha": sha256_json(y_str.tolist()),
        },
    )
    judge(report, controls)
    report.meta["seconds"] = round(time.perf_counter() - t_start, 3)
    report.meta["cpu_seconds"] = round(time.process_time() - cpu_start, 3)
    return report
