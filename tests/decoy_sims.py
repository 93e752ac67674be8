"""Decoy simulations: the candidate is one more random draw, put through each finding kind's real
code (steering, heads, patching, introspection) with its full search and the run's correction.

A random control is only as good as its behaviour on a decoy: a "candidate" that is just one more
draw from the same distribution as the random controls, where every draw (a random direction, a
random head set, a random patch) has an effect of its own. Each simulated run builds a sweep table
the way the sweep writes it, calls the finding code the stage calls, applies the run's Holm
correction (``core.claims.correct_run``), and counts whether a claim ships.

- ``tau``: the draw-to-draw spread, in units of the per-unit (prompt, concept) noise sd (1);
  each entity's effect in each cell is ``tau * D`` with ``D`` standard normal or Student t with 3
  df scaled to unit sd (``dist``); units also have effects shared by every entity (a prompt that
  is easy to move), as real prompts do.
- ``plant``: the candidate's effect above the draws, in draw sds (the sd of the draws' held-out
  values, estimated from null runs of the same configuration): 0 is the decoy.

``python -m tests.decoy_sims --seeds 200 --out bench-results/decoys.json`` runs the whole grid
(4 kinds x tau in {0, 0.3, 1, 3} x {normal, t3}) and prints a table with binomial intervals; the
test suite runs a reduced grid (``tests/test_decoys.py``).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from emoscope.core.claims import correct_run
from emoscope.core.stats import binomial_interval

TAUS = (0.0, 0.3, 1.0, 3.0)
DISTS = ("normal", "t3")
KINDS = ("steering", "heads", "patching", "introspection")


def draws(rng: np.random.Generator, dist: str, size: Any) -> np.ndarray:
    """Unit-sd draws: standard normal, or Student t with 3 df divided by its sd (sqrt 3)."""
    if dist == "normal":
        return rng.standard_normal(size)
    if dist == "t3":
        return rng.standard_t(3, size) / np.sqrt(3.0)
    raise ValueError(dist)


# -- steering ---------------------------------------------------------------------------------------
STEER_LAYERS = (3, 5)
STEER_STRENGTHS = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)


def steering_table(rng: np.random.Generator, *, tau: float, dist: str, plant: float = 0.0, n_prompts: int = 40,
                   k: int = 16, kinds: tuple[str, ...] = ("isotropic", "covariance"), broken_share: float = 0.1,
                   looping_share: float = 0.0):
    """A steering sweep table: the vector "decoy" and ``k`` random vectors per kind (16, the stage's
    default), 2 layers x 6
    strengths, one seed per prompt. Each entity moves the target by its own ``tau * D`` per cell
    (in the intended direction when positive), prompts by a shared ``0.5 * N(0, 1)`` per cell,
    plus unit noise; ``broken_share`` of each entity's cells break its text (collapse).
    ``looping_share`` of the prompts loop with no steering (as gemma3-270m does on 2 of 8) and stay
    looped in every cell of every entity: the fluency filter must not count them."""
    from emoscope.steering import RegimeThresholds, SteeringResult

    cells = [(la, s) for la in STEER_LAYERS for s in STEER_STRENGTHS]
    names = [("vector", "decoy", "")] + [("random", ("random-" if kd == "isotropic" else "random-cov-") + str(j), kd)
                                         for kd in kinds for j in range(k)]
    E, U, C = len(names), n_prompts, len(cells)
    own = tau * draws(rng, dist, (E, C))
    own[0] += plant
    shared = 0.5 * rng.standard_normal((U, C))
    change = own[:, None, :] + shared[None] + rng.standard_normal((E, U, C))  # intended direction
    brk = rng.random((E, C)) < broken_share
    e, u, c = (a.ravel() for a in np.meshgrid(np.arange(E), np.arange(U), np.arange(C), indexing="ij"))
    lay = np.array([cells[i][0] for i in range(C)])[c]
    st = np.array([cells[i][1] for i in range(C)])[c]
    df = pd.DataFrame({"kind": np.array([n[0] for n in names])[e], "vector": np.array([n[1] for n in names])[e],
                       "random_kind": np.array([n[2] for n in names])[e], "layer": lay, "strength": st,
                       "prompt_id": u, "seed": 0, "target_change": np.sign(st) * change.ravel()})
    loops = rng.random(U) < looping_share
    df["regime"] = np.where(brk[e, c] | loops[u], "repetitive collapse", "no effect")
    df["n_tokens"], df["ppl_ratio"] = 16, np.where(brk[e, c], 5.0, 1.0)
    base = pd.DataFrame({"kind": "baseline", "vector": "baseline", "random_kind": "", "layer": -1, "strength": 0.0,
                         "prompt_id": np.arange(U), "seed": 0, "target_change": 0.0,
                         "regime": np.where(loops, "repetitive collapse", "no effect"),
                         "n_tokens": 16, "ppl_ratio": 1.0})
    table = pd.concat([base, df], ignore_index=True)
    table["target_score"] = 0.5 + table["target_change"]
    return SteeringResult(table=table, success=pd.DataFrame(), target="target", thresholds=RegimeThresholds())


def steering_run(rng: np.random.Generator, *, tau: float, dist: str, plant: float = 0.0, k: int = 16,
                 test: str = "interval", looping_share: float = 0.0) -> list:
    from emoscope.steering.findings import steering_findings

    res = steering_table(rng, tau=tau, dist=dist, plant=plant, k=k, looping_share=looping_share)
    findings, _ = steering_findings(res, seed=int(rng.integers(1 << 30)), max_new_tokens=16, n_boot=0, n_seeds=3,
                                    vectors=["decoy"], test=test)
    return findings


def steering_draw_sd(result: Any) -> float:
    from emoscope.steering.findings import entity_table, search_draws

    d = search_draws(entity_table(result.table, "decoy", ["isotropic"]), n_boot=0)
    return d.tests["isotropic"].sd


# -- heads ------------------------------------------------------------------------------------------
def heads_table(rng: np.random.Generator, *, tau: float, dist: str, plant: float = 0.0, n_prompts: int = 20,
                k: int = 20, methods: tuple[str, ...] = ("zero",), metrics: tuple[str, ...] = ("proj_gen", "target_score")):
    """A head-ablation sweep table: the chosen set (the decoy) and ``k`` random sets per method, each
    set with its own ``tau * D`` effect per (method, metric), prompts with shared effects."""
    rows: dict[str, list] = {"kind": [], "method": [], "config": [], "prompt_id": []}
    for p in range(n_prompts):
        rows["kind"].append("baseline"), rows["method"].append("none"), rows["config"].append("baseline")
        rows["prompt_id"].append(p)
    for m in methods:
        for name in ["chosen", *[f"random-{j}" for j in range(k)]]:
            for p in range(n_prompts):
                rows["kind"].append("chosen" if name == "chosen" else "random")
                rows["method"].append(m), rows["config"].append(name), rows["prompt_id"].append(p)
    t = pd.DataFrame(rows)
    t["seed"], t["n_heads"], t["n_tokens"] = 0, 8, 16
    is_base = (t["kind"] == "baseline").to_numpy()
    ent = pd.factorize(t["method"] + "/" + t["config"])[0]
    for metric in metrics:
        own = tau * draws(rng, dist, ent.max() + 1)
        own[pd.factorize(t["method"] + "/" + t["config"])[1].str.endswith("/chosen")] += plant
        shared = 0.5 * rng.standard_normal(n_prompts)[t["prompt_id"].to_numpy()]
        t[metric] = np.where(is_base, 0.0, own[ent] + shared + rng.standard_normal(len(t)))
    return t


def heads_run(rng: np.random.Generator, *, tau: float, dist: str, plant: float = 0.0, k: int = 20,
              methods: tuple[str, ...] = ("zero",), metrics: tuple[str, ...] = ("proj_gen", "target_score"),
              test: str = "interval") -> list:
    from emoscope.heads.findings import intervention_findings

    t = heads_table(rng, tau=tau, dist=dist, plant=plant, k=k, methods=methods, metrics=metrics)
    findings, _ = intervention_findings(t, list(methods), list(metrics), heads="decoy", chosen_from="a decoy draw",
                                        max_new_tokens=16, n_boot=0, seed=int(rng.integers(1 << 30)), test=test)
    return findings


def heads_draw_sd(t: pd.DataFrame) -> float:
    from emoscope.heads.effects import effect_row

    return float(effect_row(t, "zero", "proj_gen", n_boot=0)["draws"].sd)


# -- patching ---------------------------------------------------------------------------------------
PATCH_CELLS = [(3, "last"), (3, "all"), (5, "last"), (5, "all")]


def patching_table(rng: np.random.Generator, *, tau: float, dist: str, plant: float = 0.0, n_prompts: int = 40,
                   k: int = 16):
    """A patch sweep table: the source patch (the decoy), a neutral patch and ``k`` isotropic random
    patches per cell, every patch with its own ``tau * D`` effect per cell (the neutral one too)."""
    from emoscope.patching.effects import cell_table  # noqa: F401  (the stage's own tables read this schema)
    from emoscope.patching.sweep import PatchResult
    from emoscope.steering import RegimeThresholds

    names = [("patch", "decoy"), ("neutral", "neutral")] + [("random", f"random-{j}") for j in range(k)]
    E, U, C = len(names), n_prompts, len(PATCH_CELLS)
    own = tau * draws(rng, dist, (E, C))
    own[0] += plant
    shared = 0.5 * rng.standard_normal((U, C))
    change = own[:, None, :] + shared[None] + rng.standard_normal((E, U, C))
    step1 = own[:, None, :] + rng.standard_normal((E, U, C))
    e, u, c = (a.ravel() for a in np.meshgrid(np.arange(E), np.arange(U), np.arange(C), indexing="ij"))
    df = pd.DataFrame({"kind": np.array([n[0] for n in names])[e], "source": np.array([n[1] for n in names])[e],
                       "layer": np.array([x[0] for x in PATCH_CELLS])[c],
                       "positions": np.array([x[1] for x in PATCH_CELLS])[c], "prompt_id": u,
                       "target_change": change.ravel(), "step1_change": step1.ravel()})
    df["random_kind"] = np.where(df["kind"] == "random", "isotropic", "")
    base = pd.DataFrame({"kind": "baseline", "source": "baseline", "layer": -1, "positions": "",
                         "prompt_id": np.arange(U), "target_change": 0.0, "step1_change": 0.0, "random_kind": ""})
    t = pd.concat([base, df], ignore_index=True)
    t["seed"], t["strength"] = 0, np.where(t["kind"] == "baseline", 0.0, 1.0)
    t["target_score"] = 0.1 + t["target_change"]
    t["regime"], t["n_tokens"], t["ppl_ratio"] = "no effect", 16, 1.0
    t["n_patched"], t["unpatched_target"], t["unused_source"], t["delta_norm"] = 1, 0, 0, 1.0
    meta = {"source": "decoy", "neutral": "neutral", "pairing": "class_mean", "generated": False}
    return PatchResult(table=t, cells=pd.DataFrame(), target="target", thresholds=RegimeThresholds(), meta=meta)


def patching_run(rng: np.random.Generator, *, tau: float, dist: str, plant: float = 0.0, k: int = 16,
                 test: str = "interval") -> list:
    from emoscope.patching.findings import patching_findings

    res = patching_table(rng, tau=tau, dist=dist, plant=plant, k=k)
    findings, _ = patching_findings(res, seed=int(rng.integers(1 << 30)), max_new_tokens=16, n_boot=200, n_seeds=3,
                                    test=test)
    return findings


def patching_draw_sd(result: Any) -> float:
    from emoscope.patching.effects import steering_view
    from emoscope.steering.findings import entity_table, search_draws

    d = search_draws(entity_table(steering_view(result.table), "decoy", ["isotropic"]), n_boot=0)
    return d.tests["isotropic"].sd


# -- introspection ----------------------------------------------------------------------------------
INTRO_CELLS = [(la, s) for la in (4, 8, 12, 16) for s in (2.0, 4.0, 8.0)]


def introspection_table(rng: np.random.Generator, *, tau: float, dist: str, plant: float = 0.0, n_concepts: int = 24,
                        k: int = 10) -> pd.DataFrame:
    """A per-vector table: ``n_concepts`` decoy "concepts" and ``k`` random vectors of each kind,
    every vector with its own ``tau * D`` score per cell, a cell effect shared by all vectors, and
    unit trial noise; control shifts are small noise."""
    conds = [("concept", n_concepts), ("random", k), ("random_cov", k)]
    cell_effect = rng.standard_normal(len(INTRO_CELLS))
    rows = []
    for cond, n in conds:
        own = tau * draws(rng, dist, (n, len(INTRO_CELLS)))
        det = own + cell_effect[None] + rng.standard_normal((n, len(INTRO_CELLS)))
        if cond == "concept":
            det = det + plant
        ctl = 0.1 * rng.standard_normal((n, len(INTRO_CELLS)))
        for i in range(n):
            for c, (layer, s) in enumerate(INTRO_CELLS):
                rows.append((cond, f"{cond}:{i}", layer, layer / 20, s, det[i, c] + ctl[i, c], ctl[i, c], det[i, c]))
    return pd.DataFrame(rows, columns=["condition", "vector", "layer", "relative_depth", "strength",
                                       "detection_shift", "control_shift", "score"])


def introspection_run(rng: np.random.Generator, *, tau: float, dist: str, plant: float = 0.0, k: int = 10,
                      test: str = "interval") -> list:
    from emoscope.introspection.heldout import heldout_finding
    from emoscope.introspection.stage import introspection_finding

    pv = introspection_table(rng, tau=tau, dist=dist, plant=plant, k=k)
    h = heldout_finding(pv, seed=int(rng.integers(1 << 30)), n_boot=200)
    return [introspection_finding(h, claim="the model reports injected concepts")]


def introspection_draw_sd(pv: pd.DataFrame) -> float:
    # the spread of one vector's score at a cell: what "one draw" of the null varies by
    r = pv[pv.condition == "random"]
    return float(r.groupby(["layer", "strength"])["score"].std().mean())


RUNS: dict[str, Callable[..., list]] = {"steering": steering_run, "heads": heads_run, "patching": patching_run,
                                        "introspection": introspection_run}


@functools.lru_cache(maxsize=64)
def draw_sd(kind: str, tau: float, dist: str, n: int = 20) -> float:
    """The sd of the draws' held-out values in null runs of this configuration (the unit of ``plant``)."""
    rng = np.random.default_rng([7, int(tau * 100), DISTS.index(dist), KINDS.index(kind)])
    sds = []
    for _ in range(n):
        if kind == "steering":
            sds.append(steering_draw_sd(steering_table(rng, tau=tau, dist=dist)))
        elif kind == "heads":
            sds.append(heads_draw_sd(heads_table(rng, tau=tau, dist=dist)))
        elif kind == "patching":
            sds.append(patching_draw_sd(patching_table(rng, tau=tau, dist=dist)))
        else:
            sds.append(introspection_draw_sd(introspection_table(rng, tau=tau, dist=dist)))
    return float(np.mean(sds))


def ship_rate(kind: str, *, tau: float, dist: str, plant_sd: float = 0.0, n_seeds: int = 200, seed: int = 0,
              **kw: Any) -> dict:
    """Over ``n_seeds`` simulated runs: how often any claim ships after the run's correction, and
    how often the random control alone passes."""
    plant = plant_sd * draw_sd(kind, tau, dist) if plant_sd else 0.0
    ships = random_pass = 0
    for s in range(n_seeds):
        rng = np.random.default_rng([seed, s, int(tau * 100), DISTS.index(dist), KINDS.index(kind)])
        fs = correct_run(RUNS[kind](rng, tau=tau, dist=dist, plant=plant, **kw)).findings
        ships += any(f.verdict == "ships" for f in fs)
        random_pass += any(c.name in ("random_vectors", "random_heads", "random_patch") and c.passed is True
                           for f in fs for c in f.controls)
    iv = binomial_interval(ships, n_seeds)
    return {"kind": kind, "tau": tau, "dist": dist, "plant_sd": plant_sd, "n": n_seeds, "ships": ships,
            "rate": iv.point, "lo": iv.lo, "hi": iv.hi, "random_control_passes": random_pass}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    rows = []
    t0 = time.perf_counter()
    for kind in args.kinds:
        for dist in DISTS:
            for tau in TAUS:
                r = ship_rate(kind, tau=tau, dist=dist, n_seeds=args.seeds)
                rows.append(r)
                print(f"{kind:13s} {dist:6s} tau {tau:<4g} decoy ships {r['ships']:3d}/{r['n']} = {r['rate']:.3f} "
                      f"[{r['lo']:.3f}, {r['hi']:.3f}]  (random control passes {r['random_control_passes']})",
                      flush=True)
        r = ship_rate(kind, tau=1.0, dist="normal", plant_sd=4.0, n_seeds=args.seeds)
        rows.append(r)
        print(f"{kind:13s} power: planted +4 draw-sd (tau 1, normal) ships {r['ships']}/{r['n']} = {r['rate']:.3f} "
              f"[{r['lo']:.3f}, {r['hi']:.3f}]", flush=True)
    if "heads" in args.kinds:
        six = ship_rate("heads", tau=1.0, dist="normal", n_seeds=args.seeds, methods=("zero", "mean", "patch"))
        six["note"] = "6 null tests in one run (3 methods x 2 metrics), Holm over them"
        rows.append(six)
        print(f"heads, 6 null tests per run: a false claim ships in {six['ships']}/{six['n']} = {six['rate']:.3f} "
              f"[{six['lo']:.3f}, {six['hi']:.3f}]")
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.out:
        from emoscope._io import atomic_write_text

        atomic_write_text(args.out, json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
