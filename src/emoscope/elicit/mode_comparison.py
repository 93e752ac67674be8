"""What stage ``modes`` computes: every arm's states, per-arm probe accuracy and separation, crossed
accuracy, steering success and the paired comparisons over emotions (``run_modes``).

``emoscope.elicit.modes_stage`` holds the stage's options and checks and calls ``run_modes``; this
module never imports it (import-linter forbids it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from emoscope.core.stages import StageResult
from emoscope.core.stats import holm
from emoscope.elicit.arms import (
    ARM_LABELS,
    ARMS,
    PAIRS,
    framed_sequences,
    plain_sequences,
    slot_sequences,
)
from emoscope.elicit.capture import read_states
from emoscope.elicit.compare import (
    TEST_NAME,
    cross_accuracy,
    min_attainable_p,
    paired_comparison,
    probe_accuracy,
    separation,
)
from emoscope.elicit.generate import Elicited, elicit
from emoscope.elicit.prompts import NEUTRAL
from emoscope.elicit.success import own_target_effects

__all__ = ["run_modes", "collect_arms", "arm_metrics", "cross_table", "arm_vectors", "steer_arms", "paired_table"]

Arm = dict[str, Any]  # {"labels": (n,) str, "states": {pool: {layer: (n, d)}}, "texts": [...], "groups": [...] | None}


def _take(ds: Any, classes: Sequence[str], n: int, seed: int) -> tuple[list[str], list[str], list[str] | None]:
    """Up to ``n`` texts per class of a dataset, drawn with ``seed`` (dataset order kept)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(ds.labels)
    idx = sorted(int(i) for c in classes for i in rng.permutation(np.flatnonzero(labels == c))[:n])
    return ([ds.texts[i] for i in idx], [ds.labels[i] for i in idx],
            [ds.groups[i] for i in idx] if ds.groups is not None else None)


def collect_arms(model: Any, opts: Any, layers: Sequence[int], seed: int, progress: bool = True
                 ) -> tuple[Elicited, dict[str, Arm], list[str]]:
    """Elicit, then read every arm's states at ``layers`` (pools ``mean`` and ``last``). Emotions with
    fewer than ``opts.folds`` kept texts are left out of every arm (returned: the emotions used)."""
    from emoscope.datasets import load_dataset
    from emoscope.errors import InputError

    style = {"auto": "auto", "chat": True, "completion": False}[opts.style]
    el = elicit(model, opts.emotions, opts.n, seed=seed, max_new_tokens=opts.max_new_tokens,
                temperature=opts.temperature, top_p=opts.top_p, chat=style, layers=list(layers),
                oversample=opts.oversample, require_all=False, progress=progress)
    counts = el.rejection_counts()
    if counts[NEUTRAL]["kept"] < opts.folds:
        raise InputError(f"modes: only {counts[NEUTRAL]['kept']} neutral texts were kept; raise n or oversample")
    used = [e for e in opts.emotions if counts[e]["kept"] >= opts.folds]
    if len(used) < 2:
        raise InputError(f"modes: fewer than 2 emotions kept {opts.folds} texts or more; raise n or oversample")
    chat = el.settings["style"] == "chat"
    classes = [*used, NEUTRAL]
    k = np.asarray([r for r in el.kept if el.labels[r] in classes], dtype=int)
    gen_texts, gen_labels = [el.texts[r] for r in k], [el.labels[r] for r in k]
    arms: dict[str, Arm] = {"gen_instr": {"labels": np.asarray(gen_labels), "texts": gen_texts, "groups": None,
                                          "states": {p: {ly: x[k] for ly, x in s.items()} for p, s in el.states.items()}}}
    r_texts, r_labels, _ = _take(load_dataset(opts.read_dataset), classes, opts.n, seed)
    t_texts, t_labels, t_groups = _take(load_dataset(opts.token_dataset), classes, 10**6, seed)
    jobs = {"gen_plain": (plain_sequences(model, gen_texts), gen_texts, gen_labels, None),
            "read_instr": (framed_sequences(model, r_texts, r_labels, chat), r_texts, r_labels, None),
            "read_plain": (plain_sequences(model, r_texts), r_texts, r_labels, None),
            "token": (slot_sequences(model, t_texts), t_texts, t_labels, t_groups)}
    for arm, ((seqs, spans), texts, labels, groups) in jobs.items():
        arms[arm] = {"labels": np.asarray(labels), "texts": texts, "groups": groups,
                     "states": read_states(model, seqs, spans, layers)}
    return el, arms, used


def arm_metrics(arms: Mapping[str, Arm], emotions: Sequence[str], layers: Sequence[int], folds: int,
                seed: int) -> pd.DataFrame:
    """Long table: arm, layer, pool, emotion, probe_accuracy, separation."""
    rows = []
    for arm, a in arms.items():
        for pool, by_layer in a["states"].items():
            if arm == "token" and pool == "last":
                continue  # the slot is one token: mean and last coincide
            for layer in layers:
                X = by_layer[layer]
                acc = probe_accuracy(X, a["labels"], emotions, folds=folds, seed=seed)
                sep = separation(X, a["labels"], emotions, folds=folds, seed=seed)
                rows += [{"arm": arm, "layer": layer, "pool": pool, "emotion": e, "probe_accuracy": float(acc[i]),
                          "separation": float(sep[i])} for i, e in enumerate(emotions)]
    return pd.DataFrame(rows)


def cross_table(arms: Mapping[str, Arm], emotions: Sequence[str], layer: int, pool: str, seed: int) -> pd.DataFrame:
    """Per (train arm, test arm, emotion): balanced accuracy of the train arm's probe on the test arm."""
    rows = []
    for tr, a in arms.items():
        for te, b in arms.items():
            if tr == te:
                continue
            acc = cross_accuracy(a["states"][pool][layer], a["labels"], b["states"][pool][layer], b["labels"],
                                 emotions, seed=seed)
            rows += [{"train": tr, "test": te, "layer": layer, "pool": pool, "emotion": e, "accuracy": float(acc[i])}
                     for i, e in enumerate(emotions)]
    return pd.DataFrame(rows)


def arm_vectors(arms: Mapping[str, Arm], layer: int, pool: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """``{"emotion@arm": ConceptVector}``: class minus neutral (token arm: word minus twin)."""
    from emoscope.vectors import ConceptVector
    from emoscope.vectors.fit import fit_vectors

    out = {}
    for arm, a in arms.items():
        extra = {"method": "token_diff", "groups": a["groups"]} if arm == "token" else {"method": "diff_means"}
        vecs = fit_vectors({layer: a["states"][pool][layer]}, a["labels"], baseline=NEUTRAL,
                           meta={**meta, "arm": arm, "pool": pool}, **extra)
        for e, v in vecs.items():
            out[f"{e}@{arm}"] = ConceptVector(f"{e}@{arm}", dict(v.vectors), dict(v.meta))
    return out


def steer_arms(model: Any, vectors: Mapping[str, Any], layer: int, opts: Any, seed: int,
               progress: bool = True) -> tuple[pd.DataFrame, Any]:
    """One batched sweep of every arm's vectors at ``layer`` and ``opts.strength`` against random
    vectors of the same norm; each judged on its own emotion's target (``own_target_effects``)."""
    from emoscope.datasets import load_texts
    from emoscope.steering import SteeringSweep

    prompts = load_texts(opts.prompts)[: opts.n_prompts]
    sweep = SteeringSweep(model, dict(vectors), layers=[layer], strengths=[opts.strength], prompts=prompts,
                          max_new_tokens=opts.steer_tokens, n_random=opts.n_random, random_kind="isotropic",
                          negate=False, seed=seed, target="valence",
                          scorers=("nrc", "vader", "perplexity", "repetition"), progress=progress)
    res = sweep.run()
    eff = own_target_effects(res.table, {name: name.split("@")[0] for name in vectors})
    eff["arm"] = [name.split("@")[1] for name in eff["vector"]]
    return eff, res


def paired_table(per_emotion: Mapping[str, Mapping[str, np.ndarray]], pairs: Sequence[tuple[str, str, str]],
                 seed: int) -> pd.DataFrame:
    """For every metric and pair ``(a, b, isolates)``: ``paired_comparison`` over emotions, Holm-adjusted
    within the table (``p_holm``)."""
    rows = []
    for metric, by_arm in per_emotion.items():
        for a, b, what in pairs:
            if a in by_arm and b in by_arm:
                rows.append({"metric": metric, "a": a, "b": b, "isolates": what,
                             **paired_comparison(by_arm[a], by_arm[b], seed=seed)})
    df = pd.DataFrame(rows)
    if len(df):
        df["p_holm"] = holm(df["p_value"].to_numpy(float))
    return df


def _samples(el: Elicited, k: int = 3) -> pd.DataFrame:
    rows, seen = [], {}
    for r in el.kept:
        lab = el.labels[r]
        if seen.get(lab, 0) < k:
            seen[lab] = seen.get(lab, 0) + 1
            rows.append({"label": lab, "text": el.texts[r], "n_tokens": el.spans[r][1] - el.spans[r][0]})
    return pd.DataFrame(rows).sort_values("label", kind="stable")


def run_modes(ctx: Any, pairs: Sequence[tuple[str, str, str]] = PAIRS) -> StageResult:
    """The stage body: ``ctx`` is the stage's ``RunContext``; ``pairs`` the arm pairs compared
    (``(a, b, what the difference isolates)``, default ``emoscope.elicit.arms.PAIRS``)."""
    from emoscope.audit import Finding, Observation
    from emoscope.elicit.dataset import save_elicited
    from emoscope.vectors.promote import promoted_tokens

    opts, model, seed = ctx.options, ctx.model, ctx.seed
    layers = model.resolve_layers(list(opts.layers))
    steer_layer = model.resolve_layers([opts.steer_layer])[0]
    if steer_layer not in layers:
        layers = sorted({*layers, steer_layer})
    el, arms, emotions = collect_arms(model, opts, layers, seed)
    save_elicited(el, ctx.run_dir.root / "elicited")
    counts = el.rejection_counts()
    ctx.write_table("elicit_counts", pd.DataFrame([{"label": k, **v} for k, v in counts.items()]))
    ctx.write_table("elicit_samples", _samples(el))
    dropped = [e for e in opts.emotions if e not in emotions]
    if dropped:
        ctx.note(f"left out (fewer than {opts.folds} texts kept after the forbidden-word filter): {', '.join(dropped)}")
    ctx.note(f"elicited {len(el.kept)} of {len(el.labels)} texts ({el.settings['style']} prompt, seed {seed}) -> "
             "elicited/elicited.jsonl; arms: " + "; ".join(f"{a} = {ARM_LABELS[a]}" for a in ARMS))
    metrics = arm_metrics(arms, emotions, layers, opts.folds, seed)
    ctx.write_table("modes_metrics", metrics)
    cross = cross_table(arms, emotions, steer_layer, "mean", seed)
    ctx.write_table("modes_cross", cross.groupby(["train", "test"], sort=False)["accuracy"].mean().reset_index())
    main = metrics[(metrics["layer"] == steer_layer) & (metrics["pool"] == "mean")]
    per_emotion: dict[str, dict[str, np.ndarray]] = {
        m: {a: g.set_index("emotion").loc[emotions, m].to_numpy(float) for a, g in main.groupby("arm")}
        for m in ("probe_accuracy", "separation")}
    cross_read = cross[cross["test"] == "read_plain"]  # how well each arm's probe reads human text plainly
    per_emotion["cross_to_read_plain"] = {a: g.set_index("emotion").loc[emotions, "accuracy"].to_numpy(float)
                                          for a, g in cross_read.groupby("train")}
    vectors = arm_vectors(arms, steer_layer, "mean", {"model": model.name, "weights_sha256": model.weights_sha256})
    if opts.steer:
        eff, res = steer_arms(model, vectors, steer_layer, opts, seed)
        ctx.write_table("modes_steer", eff)
        for m in ("effect", "success_rate"):
            per_emotion[f"steer_{m}"] = {a: g.set_index("emotion").loc[emotions, m].to_numpy(float)
                                         for a, g in eff.groupby("arm")}
        ctx.note("steering success: an output's own-target change beyond the random vectors' 95% range and not "
                 "collapsed or explosive (emoscope.elicit.success)")
    paired = paired_table(per_emotion, pairs, seed)
    ctx.write_table("modes_paired", paired)
    summary = pd.DataFrame([{"arm": a, "description": ARM_LABELS[a],
                             **{m: float(np.nanmean(v[a])) for m, v in per_emotion.items() if a in v}} for a in ARMS])
    ctx.write_table("modes_summary", summary)
    promo = []
    for name, v in vectors.items():
        promo += promoted_tokens(model, v, steer_layer, opts.promote_k, name=name)
    ctx.write_table("promoted_tokens", pd.DataFrame(promo))
    n = len(emotions)
    ctx.note(f"paired test: {TEST_NAME}; with {n} emotions the smallest attainable p is {min_attainable_p(n):.2g}; "
             f"verdict at the pre-set layer {steer_layer} (mean pooling), not a layer chosen from the results")
    for r in paired[(paired["a"] == "gen_instr") & (paired["b"] == "read_plain")].itertuples():
        ctx.add_finding(Finding(kind="other", observation=Observation(
            metric=f"{r.metric}: gen_instr - read_plain (layer {steer_layer})", value=float(r.diff),
            interval=(float(r.diff_lo), float(r.diff_hi)), n=int(r.n), unit="emotions", p_value=float(r.p_value),
            n_searched=1)))
    top = paired.iloc[0] if len(paired) else None
    headline = (f"{top.metric}: gen_instr {top.mean_a:.3f} vs read_plain {top.mean_b:.3f}, p={top.p_value:.2g} "
                f"(Wilcoxon, n={top.n})") if top is not None else "no comparison"
    return StageResult(summary=f"{len(ARMS)} arms x {len(layers)} layers over {n} emotions; {headline}",
                       metrics={"n_emotions": n, "kept": int(len(el.kept)), "steer_layer": steer_layer,
                                "min_p": min_attainable_p(n)})
