"""Stage ``heads``: screen attention heads against a vector, then ablate or patch them.

One stage with ``modes`` (any of ``screen``, ``ablate``, ``patch``, run in that order), so a spec
can screen and ablate in one go (``modes: [screen, ablate]``, the default) and the CLI's
``emoscope heads screen|ablate|patch`` each run it with one mode (``ablate`` / ``patch`` add
``screen`` when they need a ``top:K`` and no ``--from`` run has one).

- **screen** (``emoscope.heads.screen``): each head's direct contribution to the vector's
  direction at the read ``position`` on the ``emotion`` texts of the spec's dataset minus the
  ``baseline`` texts, label-permutation p, Holm across heads. Table ``heads_screen``, figure
  ``heads_screen`` (layer x head heatmap), one observation. Writes ``heads/screen.json`` and
  ``heads/vector.safetensors`` so a later run can take its heads and vector (``from_run``).
- **ablate** (``emoscope.heads.sweep``): the chosen heads (``heads``: ``top:K`` of the screen,
  or ``L.H,...``) zero- and/or mean-ablated (``methods``) while generating ``max_new_tokens`` on
  ``prompts``, and ``n_random`` seeded random sets of the same size (same number per layer,
  never a chosen head) in the same batched decode. Mean ablation uses each head's mean output
  over ``mean_texts`` (``neutral-corpus``; every token but each text's first, averaged over
  positions). Tables ``heads_ablate_outputs``, ``heads_ablate_effects``, ``heads_random_sets``;
  figure ``heads_ablate_effects``; findings (``emoscope.heads.findings``).
- **patch**: the chosen heads' outputs recorded on ``source`` prompts (``DATASET:CLASS``, e.g.
  ``emotions-basic:anger``, or any text list) written into the target ``prompts`` at the last
  ``patch_tokens`` prompt tokens, aligned from the end (the last prompt token takes the source's
  last token; both are chat-wrapped when ``chat``, so that is the same template token reading a
  different message). Target ``i`` takes source ``perm[i mod n_sources]`` (seeded permutation).
  Random-head patching from the same sources is the control. Tables ``heads_patch_outputs``,
  ``heads_patch_effects``; figure ``heads_patch_effects``; findings.

The vector: ``vector`` (a ConceptVector file), else a difference of means fitted here for
``emotion`` against ``baseline`` on the spec's dataset at ``vector_layers`` (position
``fit_position``, as the steer stage fits), else the vector of the ``from_run`` screen. The probe
projections of ablation and patching read ``resid[probe_layer]`` (default: the vector's deepest
layer) along the vector's unit direction there.

Input is checked before any model loads (``check_heads``): malformed ``heads``, a ``from_run``
without a screen or screened on another model, a head out of range (from the screen's record, or
the layer count of an embedded model; otherwise right after the model loads, before any forward),
a missing or foreign vector (metadata ``model`` / ``weights_sha256``, width), an unknown source
dataset or class.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from emoscope.core.stages import StageResult, register_stage
from emoscope.errors import InputError
from emoscope.heads.options import (  # re-exported: specs and the CLI read the options from here
    DEFAULT_DATASET,
    MODES,
    HeadsOptions,
    check_heads_stage,
    check_loaded_screen,
    check_loaded_vector,
    load_prompts,
    screen_class,
    source_texts,
)

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = ["HeadsOptions", "heads_stage", "check_heads_stage", "DEFAULT_DATASET", "MODES"]

def _vector(ctx: RunContext, opts: HeadsOptions, screen_meta: dict | None) -> Any:
    import numpy as np

    from emoscope.vectors import ConceptVector, DiffMeans

    model = ctx.model
    if opts.vector:
        vector = ConceptVector.load(opts.vector)
        check_loaded_vector(vector, model, opts.vector, opts.allow_other_model)
        return vector
    if opts.emotion and ctx.spec.dataset:
        data = ctx.dataset
        emotion, baseline = screen_class(opts, None, data, ctx.spec.dataset)
        layers = model.resolve_layers(opts.vector_layers)
        acts = ctx.activations(layers=layers, position=opts.fit_position, progress=False)
        y = np.asarray([str(x) for x in data.labels])
        vecs = {layer: DiffMeans(emotion, baseline).fit(acts.get(layer), y).vector_.astype(np.float32)
                for layer in layers}
        ctx.note(f"vector: difference of means of {emotion!r} minus "
                 + (f"the {baseline!r} class" if baseline != "all" else "the mean of all classes")
                 + f" on {ctx.spec.dataset} at layers {layers}, position {opts.fit_position}")
        return ConceptVector(emotion, vecs, {"method": "diff_means", "baseline": baseline, "dataset": ctx.spec.dataset,
                                             "position": opts.fit_position, "model": ctx.spec.model,
                                             "weights_sha256": getattr(model, "weights_sha256", "")})
    if opts.from_run:
        path = Path(opts.from_run) / "heads" / "vector.safetensors"
        if path.is_file():
            vector = ConceptVector.load(path)
            check_loaded_vector(vector, model, str(path), opts.allow_other_model)
            return vector
    return None


@register_stage("heads", options_model=HeadsOptions, check=check_heads_stage,
                description="attention heads: screen against a vector, ablate and patch against random heads")
def heads_stage(ctx: RunContext) -> StageResult:
    from emoscope.heads.screen import load_screen
    from emoscope.heads.select import check_heads, parse_heads
    from emoscope.models.head_outputs import head_shape

    opts: HeadsOptions = ctx.options
    model = ctx.model
    modes = [m for m in ("screen", "ablate", "patch") if m in opts.modes]
    hs = parse_heads(opts.heads)
    n_heads = head_shape(model, 0)[0]
    if hs.heads:  # before any forward
        check_heads(hs.heads, model.n_layers, n_heads, model.name)
    screen_table, screen_meta, chosen_from = None, None, ""
    if opts.from_run and "screen" not in modes:
        screen_table, screen_meta = load_screen(opts.from_run)
        check_loaded_screen(model, screen_meta, opts.from_run)
        chosen_from = f"ranked by the screen of {opts.from_run}"
    vector = _vector(ctx, opts, screen_meta)
    summary, metrics = [], {}
    if "screen" in modes:
        screen_table, screen_meta, line = _screen(ctx, opts, vector)
        chosen_from = (f"ranked by the screen on {ctx.spec.dataset} ({screen_meta['emotion']} vs "
                       f"{screen_meta['baseline']} texts)")
        summary.append(line)
        metrics["n_screened"] = len(screen_table)
    if "ablate" in modes or "patch" in modes:
        if hs.top:
            if hs.top > len(screen_table):
                raise InputError(f"heads: top:{hs.top} asks for more heads than the {len(screen_table)} screened")
            t = screen_table.sort_values("rank").head(hs.top)
            chosen = sorted((int(a), int(b)) for a, b in zip(t["layer"], t["head"], strict=True))
            heads_text = f"top {hs.top} ({','.join(f'{a}.{b}' for a, b in chosen)})"
        else:
            chosen = check_heads(hs.heads, model.n_layers, n_heads, model.name)
            heads_text = ",".join(f"{a}.{b}" for a, b in chosen)
            chosen_from = "given by name"
        for mode in ("ablate", "patch"):
            if mode in modes:
                line, m = _intervene(ctx, opts, mode, vector, chosen, heads_text, chosen_from, n_heads, screen_meta)
                summary.append(line)
                metrics.update(m)
    return StageResult(summary="; ".join(summary), metrics=metrics)


def _screen(ctx: RunContext, opts: HeadsOptions, vector: Any) -> tuple[Any, dict, str]:
    from emoscope._progress import is_quiet
    from emoscope.heads.findings import screen_finding
    from emoscope.heads.plots import screen_heatmap
    from emoscope.heads.screen import SCREEN_TABLE, save_screen, screen_heads

    model, data = ctx.model, ctx.dataset
    emotion, baseline = screen_class(opts, vector, data, ctx.spec.dataset)
    res = screen_heads(model, vector, list(data.texts), [str(y) for y in data.labels], emotion, baseline,
                       layers=opts.layers, direction_layer=opts.direction_layer, position=opts.position,
                       n_permutations=opts.n_permutations, alternative=opts.alternative, alpha=opts.alpha,
                       seed=ctx.seed,
                       batch_size=opts.screen_batch_size, progress=not is_quiet())
    meta = {**res.meta, "model": model.name, "spec_model": ctx.spec.model,
            "weights_sha256": getattr(model, "weights_sha256", ""), "dataset": ctx.spec.dataset,
            "vector": vector.name, "vector_file": "heads/vector.safetensors"}
    table = res.table.sort_values(["layer", "head"]).reset_index(drop=True)
    ctx.write_table(SCREEN_TABLE, table)
    ctx.save_figure(SCREEN_TABLE, screen_heatmap(table, model.n_layers, res.meta["n_heads"],
                                                 title=f"{emotion} vs {baseline}: direct contribution per head"))
    save_screen(ctx.run_dir.root, meta, vector)
    dl = ("each head against its block's vector, or the next vector layer above it"
          if opts.direction_layer is None else f"every head against the vector of layer {opts.direction_layer}")
    ctx.note(f"screen: {len(table)} heads of blocks {res.meta['blocks'][0]}..{res.meta['blocks'][-1]} "
             f"(vector layers {res.meta['vector_layers']}; {dl}; heads above the deepest vector layer are not "
             f"screened), read at position {res.meta['position']}, {res.meta['n_texts']} texts; "
             f"{res.meta['n_permutations']} label permutations, Holm across heads (smallest reachable p_holm "
             f"{res.meta['min_p_holm']:.2g}), ranked {opts.alternative}")
    if vector.meta.get("dataset") == ctx.spec.dataset:
        ctx.note("the vector was fitted on the texts it screens: the screen shows which heads write the direction "
                 "that separates these texts; ablation on other prompts is the held-out test")
    ctx.add_finding(screen_finding(table, {**res.meta}, alpha=opts.alpha))
    top = table.sort_values("rank").head(8)
    line = "top heads: " + ", ".join(f"{int(r['layer'])}.{int(r['head'])} ({r['diff']:.3g}, p_holm {r['p_holm']:.2g})"
                                     for _, r in top.iterrows())
    return table, meta, line


def _intervene(ctx: RunContext, opts: HeadsOptions, mode: str, vector: Any, chosen: list, heads_text: str,
               chosen_from: str, n_heads: int, screen_meta: dict | None) -> tuple[str, dict]:
    import numpy as np
    import pandas as pd

    from emoscope._progress import is_quiet
    from emoscope.heads.effects import METRICS, effect_table
    from emoscope.heads.findings import draws_figures, intervention_findings
    from emoscope.heads.plots import effects_figure
    from emoscope.heads.select import describe_match, random_head_sets
    from emoscope.heads.sweep import HeadSweep, mean_head_outputs, plan_configs, record_head_outputs
    from emoscope.steering.sweep import default_target

    model = ctx.model
    pool = None
    if screen_meta is not None:  # band and any draws stay among the heads the screen covered
        pool = [(b, h) for b in screen_meta.get("blocks", []) for h in range(n_heads)] or None
    randoms, match = random_head_sets(chosen, opts.n_random + opts.decoys, n_layers=model.n_layers, n_heads=n_heads,
                                      seed=np.random.default_rng([ctx.seed, 11]), match=opts.random_match, pool=pool)
    if match != opts.random_match:
        ctx.note(f"{mode}: too few other heads to match random heads by {opts.random_match}; random heads are "
                 f"drawn from {describe_match(match, chosen)} instead")
    rs = pd.DataFrame([{"config": f"random-{j}", "heads": ",".join(f"{a}.{b}" for a, b in s)}
                       for j, s in enumerate(randoms)] + [{"config": "chosen", "heads": ",".join(f"{a}.{b}" for a, b in chosen)}])
    ctx.write_table("heads_random_sets", rs)
    prompts = load_prompts(opts)
    name = vector.name if vector is not None else (opts.emotion or "")
    target = opts.target or (default_target(name) if name else "valence")
    probe = None
    if vector is not None:
        layer = opts.probe_layer if opts.probe_layer is not None else max(vector.layers)
        if layer not in vector.layers:
            raise InputError(f"heads: probe layer {layer} is not a layer of the vector ({vector.layers})")
        v = np.asarray(vector[layer], dtype=np.float64)
        probe = (int(layer), v / np.linalg.norm(v))
    kw = dict(max_new_tokens=opts.max_new_tokens, chat="auto" if opts.chat else False, probe=probe, seeds=opts.seeds,
              temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p, batch_rows=opts.batch_rows,
              scorers=opts.scorers, target=target, progress=not is_quiet(), execution=ctx.execution)
    layers = sorted({a for s in [chosen, *randoms] for a, _ in s})
    if mode == "ablate":
        methods = list(opts.methods)
        mean_values = None
        if "mean" in methods:
            from emoscope.datasets import load_texts

            mean_values = mean_head_outputs(model, layers, [t for t in load_texts(opts.mean_texts) if t.strip()])
        sweep = HeadSweep(model, plan_configs(chosen, randoms, methods), prompts, positions=opts.positions,
                          mean_values=mean_values, **kw)
        how = (f"zero ablation sets the heads' outputs (their slices of the o_proj input) to 0; mean ablation to their "
               f"mean over {opts.mean_texts} (every token but each text's first, averaged over positions and texts); "
               f"edited columns: {opts.positions}")
    else:
        methods = ["patch"]
        src_texts, src_name = source_texts(opts.source)
        order = np.random.default_rng([ctx.seed, 5]).permutation(len(src_texts))
        pair = [int(order[i % len(src_texts)]) for i in range(len(prompts))]
        chat = bool(opts.chat and model.has_chat_template)
        tok = model.tokenizer
        src = [src_texts[j] for j in pair]
        src_ids = ([list(tok(model.chat(t), add_special_tokens=False)["input_ids"]) for t in src] if chat
                   else [list(tok(t)["input_ids"]) for t in src])
        values = record_head_outputs(model, src_ids, layers, opts.patch_tokens)  # (n_prompts, K, heads, head_dim)
        sweep = HeadSweep(model, plan_configs(chosen, randoms, methods), prompts, patch_values=values,
                          patch_tokens=opts.patch_tokens, **kw)
        how = (f"head outputs recorded on {src_name} (target prompt i takes source text perm[i mod {len(src_texts)}], "
               f"seeded), written at the last {opts.patch_tokens} prompt token(s) aligned from the end"
               + (" (both chat-wrapped, so the same template token reads a different message)" if sweep.chat else ""))
    res = sweep.run()
    table = res.table
    ctx.write_table(f"heads_{mode}_outputs", table)
    metrics = [m for m in METRICS if m in table]
    eff = effect_table(table, metrics, seed=ctx.seed)
    ctx.write_table(f"heads_{mode}_effects", eff)
    ctx.save_figure(f"heads_{mode}_effects", effects_figure(table, methods, [m for m in ("proj_gen", "target_score",
                    "ppl_ratio", "rep4") if m in table], title=f"{mode}: heads {heads_text} vs {len(randoms)} random sets"))
    ctx.note(f"{mode}: heads {heads_text}, {chosen_from}; {len(randoms)} random sets of {len(chosen)} heads "
             f"({describe_match(match, chosen)}, seeded, never a chosen head; each set is one draw of the null, "
             f"judged by the {opts.random_test} test; a two-sided rank among them cannot reach p below "
             f"{2 / (len(randoms) + 1):.2g}); {how}")
    ctx.note(f"{mode}: {len(table)} generations of up to {opts.max_new_tokens} tokens on {len(prompts)} prompts in "
             f"{res.meta['decode_seconds']:.1f} s; target score {target}"
             + (f"; probe projection at layer {probe[0]}: proj_last = resid . u at the last prompt token, proj_gen = "
                "its mean over the generated tokens read back" if probe else "; no vector, so no probe projections"))
    if screen_meta is not None and screen_meta.get("dataset") and screen_meta.get("dataset") == opts.prompts:
        ctx.note(f"{mode}: the prompts come from the screening dataset: the heads were chosen on these texts")
    asked = [m for m in opts.metrics if m in table]
    if opts.decoys:
        return _placebo(ctx, opts, mode, table, methods, asked, match, chosen, res.meta["decode_seconds"])
    findings, lines = intervention_findings(table, methods, asked, heads=heads_text, chosen_from=chosen_from,
                                            alpha=opts.alpha, seed=ctx.seed, max_new_tokens=opts.max_new_tokens,
                                            match=describe_match(match, chosen), what="", test=opts.random_test)
    figures = draws_figures(table, methods, asked, test=opts.random_test, alpha=opts.alpha)
    keys = [(m, x) for m in methods for x in asked if x in table and table[x].notna().any()]
    for f, key in zip(findings, keys, strict=True):
        added = ctx.add_finding(f)
        if key in figures:  # beside its finding in the report: draws_<finding id>
            ctx.save_figure(f"draws_{added.id}", figures[key])
    for line in lines:
        ctx.note(f"{mode}: {line}")
    return (f"{mode}: " + "; ".join(lines[:2]) if lines else f"{mode}: no effects measured"), {
        f"{mode}_rows": len(table), f"{mode}_decode_seconds": res.meta["decode_seconds"]}


def decoy_view(table: Any, decoy: str, others: list[str]) -> Any:
    """The sweep table with random set ``decoy`` in the chosen heads' place: its rows become the
    ``chosen`` rows, the real chosen heads and the other decoys leave."""
    t = table[(table["kind"] != "chosen") & ~table["config"].isin([o for o in others if o != decoy])].copy()
    mine = (t["config"] == decoy).to_numpy()
    t.loc[mine, "kind"] = "chosen"
    t.loc[mine, "config"] = "chosen"
    return t


def _placebo(ctx: RunContext, opts: HeadsOptions, mode: str, table: Any, methods: list[str], metrics: list[str],
             match: str, chosen: list, seconds: float) -> tuple[str, dict]:
    """The last ``decoys`` random sets, each in the chosen heads' place against the first ``n_random``."""
    from emoscope.core.decoys import decoy_name, judge_decoys
    from emoscope.heads.findings import intervention_findings
    from emoscope.heads.select import describe_match

    k = opts.n_random
    names = [f"random-{k + i}" for i in range(opts.decoys)]
    found = {}
    for i, name in enumerate(names):
        view = decoy_view(table, name, names)
        heads = str(view.loc[view["kind"] == "chosen", "heads"].iloc[0]) if "heads" in view else name
        found[decoy_name(i)] = intervention_findings(
            view, methods, metrics, heads=heads, chosen_from="a decoy: one more random set",
            alpha=opts.alpha, seed=ctx.seed, max_new_tokens=opts.max_new_tokens,
            match=describe_match(match, chosen), test=opts.random_test)[0]
    out = judge_decoys("heads", found, alpha=opts.alpha)
    ctx.write_table(f"placebo_decoys_heads_{mode}", out)
    n_ship = int(out.groupby("decoy")["ships"].any().sum()) if len(out) else 0
    ctx.note(f"placebo ({mode}): {len(names)} decoy head sets drawn as the random sets are "
             f"({describe_match(match, chosen)}), each in the chosen heads' place against the other {k} random sets "
             f"and judged as the run's only candidate; {len(table)} generations in {seconds:.1f} s")
    return (f"placebo {mode}: {n_ship} of {len(names)} decoy head sets ship a heads claim",
            {f"{mode}_decoys": len(names), f"{mode}_decoys_shipping": n_ship})
