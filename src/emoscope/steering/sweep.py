"""``SteeringSweep``: vectors x layers x strengths x prompts x seeds in a few batched decodes.

Every row of the batch carries its own vector, layer and strength (a per-row delta applied by
one hook per layer), so the whole sweep is one decode loop over ``batch_rows`` rows at a time.
Controls run in the same batch, always:

- strength 0: one unsteered row per (prompt, seed), the baseline every other row is compared to;
- the negated vector: the strength grid is made symmetric (``s`` and ``-s``), and the vector at
  ``-s`` *is* the negated vector at ``s``;
- ``n_random`` random directions per layer and kind (seeded by ``seed``) at every strength,
  with the same norm as the vector (in a measured unit every delta at strength ``s`` has norm
  ``s * unit[l]``, see ``emoscope.vectors.strength``; in ``unit="raw"`` random vectors are scaled to
  ``||v[l]||``). ``random_kind`` picks the kinds: ``isotropic`` (every direction equally likely;
  rows ``random-k``), ``covariance`` (drawn from the covariance of neutral activations,
  ``emoscope.vectors.strength.neutral_covariance``, so they fall where activations vary; rows
  ``random-cov-k``) or ``both`` (the default). Rows carry ``kind="random"`` and the column
  ``random_kind``. On a model with massive dimensions neither kind is neutral: isotropic draws
  avoid those dimensions, covariance-matched ones land on them.

>>> sweep = SteeringSweep(model, joy, layers=[10, 15], strengths=[2, 4], prompts=prompts,
...                       max_new_tokens=32)                       # doctest: +SKIP
>>> result = sweep.run()                                           # doctest: +SKIP
>>> result.success[["layer", "strength", "effect", "p_value"]]     # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from emoscope.core.directions import random_layer_directions
from emoscope.errors import InputError
from emoscope.models.batching import eos_ids
from emoscope.models.decode import RowEdits, Sampling, stack_rows
from emoscope.models.interventions import parse_window
from emoscope.models.units import decode_units
from emoscope.steering.hooks import MODES
from emoscope.steering.regimes import (
    RANDOM_KINDS,
    RegimeThresholds,
    classify_regimes,
    regime_shares,
    success_table,
)
from emoscope.steering.scorers import DEFAULT_SCORERS, words
from emoscope.steering.strength import (
    STEERING_UNITS,
    as_strength,
    layer_vectors,
    unit_deltas,
    unit_norms,
)

__all__ = ["SteeringSweep", "SteeringResult", "default_target", "RANDOM_KIND_CHOICES"]

RANDOM_KIND_CHOICES = (*RANDOM_KINDS, "both")


@functools.cache
def _targets() -> dict[str, str]:
    return dict(yaml.safe_load(resources.files("emoscope.steering").joinpath("targets.yaml").read_text("utf-8")))


def default_target(concept: str) -> str:
    """The scorer column a vector named ``concept`` should move (``targets.yaml``; else ``valence``).

    >>> default_target("joy"), default_target("-joy"), default_target("curiosity")
    ('nrc_joy', 'nrc_joy', 'valence')
    """
    return _targets().get(concept.lstrip("-").strip().lower(), "valence")


@dataclass
class SteeringResult:
    """A finished sweep: ``table`` (one row per output, with text, scores, regime),
    ``success`` (per vector, layer and strength against the random control), and ``meta``."""

    table: pd.DataFrame
    success: pd.DataFrame
    target: str
    thresholds: RegimeThresholds
    meta: dict[str, Any] = field(default_factory=dict)
    tokens: list[list[int]] = field(default_factory=list)  # new token ids per table row

    def regime_shares(self, kind: str = "vector") -> pd.DataFrame:
        """Share of each regime per (layer, strength) for one kind of row, on the prompts whose
        unsteered output is intact (``regimes.regime_shares``)."""
        return regime_shares(self.table, kind)

    def dose_response(self) -> pd.DataFrame:
        """Mean target score per (kind, vector, layer, strength); baseline rows have layer -1."""
        return (self.table.groupby(["kind", "vector", "layer", "strength"])["target_score"]
                .agg(["mean", "std", "count"]).reset_index())

    def save(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """Write ``outputs.csv`` (every generation with its scores and regime), ``success.csv``,
        ``regimes.csv``, ``dose_response.csv``, ``summary.json`` and the two figures (PNG + SVG)
        into ``out_dir``; each file atomically."""
        from emoscope._io import atomic_write_json, atomic_write_text, ensure_writable_dir
        from emoscope.core.figures import save_figure
        from emoscope.steering.plots import dose_response_figure, regime_map_figure

        out = ensure_writable_dir(out_dir)
        written = []
        for name, df in (("outputs", self.table), ("success", self.success),
                         ("regimes", self.regime_shares()), ("dose_response", self.dose_response())):
            written.append(atomic_write_text(out / f"{name}.csv", df.to_csv(index=False)))
        written.append(atomic_write_json(out / "summary.json", {**self.meta, "target": self.target}))
        for name, fig in (("dose_response", dose_response_figure(self)), ("regime_map", regime_map_figure(self))):
            png = save_figure(fig, out / name)
            written += [png, png.with_suffix(".svg")]
        return written


def _named_vectors(vectors: Any) -> list[tuple[str, Any]]:
    if hasattr(vectors, "vectors") and hasattr(vectors, "name"):
        return [(vectors.name, vectors)]
    if isinstance(vectors, Mapping) and vectors and all(isinstance(k, str) for k in vectors):
        return list(vectors.items())
    if isinstance(vectors, (list, tuple)) and vectors and all(hasattr(v, "name") for v in vectors):
        return [(v.name, v) for v in vectors]
    if isinstance(vectors, (np.ndarray, torch.Tensor)) or (isinstance(vectors, Mapping) and vectors):
        return [("vector", vectors)]
    raise InputError("vectors must be a ConceptVector, a list of them, or a dict {name: vector}")


class SteeringSweep:
    """Steered generation over vectors x layers x strengths x prompts x seeds, with controls.

    ``prompts`` are user messages, wrapped in the chat template when the model has one
    (``chat="auto"``). ``positions="generated"`` (the default) steers generated tokens only, so
    the prompt reads the same in every configuration and its KV cache is computed once and shared.
    ``temperature=0`` is greedy (one output per prompt; extra seeds are dropped); otherwise each
    (prompt, seed) has its own random stream, the same in every configuration.
    Inputs are checked here, before anything slow runs. ``execution``: where the rows' work units
    (one per ``batch_rows`` rows) run and are stored (``emoscope.core.executor``; default in
    process); a run gives its stage one, so ``--resume`` keeps finished batches of rows.
    """

    def __init__(self, model: Any, vectors: Any, layers: Any, strengths: Sequence[float], prompts: Sequence[str],
                 seeds: Sequence[int] = (0,), max_new_tokens: int = 48, *, positions: str = "generated",
                 mode: str = "add", unit: str = "token_norm", norms: Mapping[int, float] | None = None,
                 n_random: int = 10, random_kind: str = "both", seed: int = 0, negate: bool = True,
                 temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, chat: bool | str = "auto", batch_rows: int = 256,
                 scorers: Sequence[str | tuple] = DEFAULT_SCORERS, target: str | None = None,
                 thresholds: RegimeThresholds | None = None, progress: bool = True, execution: Any = None) -> None:
        self.model, self.execution = model, execution
        self.vectors = _named_vectors(vectors)
        names = [n for n, _ in self.vectors]
        if len(set(names)) != len(names) or any(n.startswith("random-") or n == "baseline" for n in names):
            raise InputError(f"vector names must be unique and not 'baseline' or 'random-*'; got {names}")
        self.layers = model.resolve_layers(layers)
        for _, v in self.vectors:
            layer_vectors(model, v, self.layers)  # width and layer checks, before anything runs
        if isinstance(strengths, (str, bytes)) or not isinstance(strengths, Sequence) or not len(strengths):
            raise InputError("strengths must be a non-empty list of numbers, e.g. [-4, -2, 0, 2, 4]")
        self.strengths = [as_strength(s) for s in strengths]
        if isinstance(prompts, str) or not prompts:
            raise InputError("no prompts given: pass a non-empty list of prompt strings")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise InputError(f"prompt {i} is empty or not a string")
        self.prompts = list(prompts)
        if not seeds:
            raise InputError("seeds must list at least one integer")
        self.seeds = [int(s) for s in seeds]
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        self.max_new_tokens = max_new_tokens
        self.window = parse_window(positions)
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "ablate":
            raise InputError("mode 'ablate' ignores strength, so a strength sweep means nothing; use "
                             "steer(..., mode='ablate') or mode='ablate_add' here")
        self.mode, self.unit, self.norms = mode, unit, norms
        if unit not in STEERING_UNITS:
            raise InputError(f"unit must be one of {STEERING_UNITS}, got {unit!r}")
        if n_random < 0:
            raise InputError(f"n_random must be >= 0, got {n_random}")
        self.n_random, self.seed, self.negate = int(n_random), int(seed), bool(negate)
        if random_kind not in RANDOM_KIND_CHOICES:
            raise InputError(f"random_kind must be one of {RANDOM_KIND_CHOICES}, got {random_kind!r}")
        self.random_kind = random_kind
        self.sampling = Sampling(float(temperature), int(top_k), float(top_p))
        self.chat = model.has_chat_template if chat == "auto" else bool(chat)
        if batch_rows < 1:
            raise InputError(f"batch_rows must be positive, got {batch_rows}")
        self.batch_rows = int(batch_rows)
        self.scorers = list(scorers)
        targets = {target} if target else {default_target(n) for n in names}
        if len(targets) != 1:
            raise InputError(f"the vectors map to different target scores {sorted(targets)}; pass target=")
        self.target = targets.pop()
        self.thresholds = thresholds or RegimeThresholds()
        self.progress = progress

    # -- the plan -------------------------------------------------------------------------------
    @property
    def grid(self) -> list[float]:
        """Non-zero strengths actually run (made symmetric when ``negate``)."""
        s = {x for x in self.strengths if x != 0}
        if self.negate:
            s |= {-x for x in s}
        return sorted(s)

    @property
    def run_seeds(self) -> list[int]:
        return self.seeds[:1] if self.sampling.greedy else self.seeds

    @property
    def random_kinds(self) -> list[str]:
        """The kinds of random vectors run (none when ``n_random`` is 0)."""
        if not self.n_random:
            return []
        return list(RANDOM_KINDS) if self.random_kind == "both" else [self.random_kind]

    def _unit_norms(self) -> dict[int, float] | None:
        return None if self.unit == "raw" else unit_norms(self.model, self.vectors[0][1], self.layers, self.unit, self.norms)

    def plan(self) -> tuple[pd.DataFrame, list[dict[int, np.ndarray]], list[dict[int, np.ndarray]]]:
        """The rows to run: a table of (kind, vector, layer, strength, prompt_id, seed, random_kind)
        and, per row, its delta and direction ``{layer: (d,)}``."""
        norms = self._unit_norms()
        self.unit_norms_ = norms
        rows: list[dict[str, Any]] = []
        deltas: list[dict[int, np.ndarray]] = []
        dirs: list[dict[int, np.ndarray]] = []

        def add(kind: str, name: str, layer: int, s: float, delta: np.ndarray | None, u: np.ndarray | None,
                rkind: str = "") -> None:
            for seed in self.run_seeds:
                for p in range(len(self.prompts)):
                    rows.append({"kind": kind, "vector": name, "layer": layer, "strength": s, "prompt_id": p,
                                 "seed": seed, "random_kind": rkind})
                    deltas.append({} if delta is None else {layer: s * delta})
                    dirs.append({} if u is None else {layer: u})

        add("baseline", "baseline", -1, 0.0, None, None)
        randoms: dict[str, tuple[str, dict[int, np.ndarray]]] = {}
        cov = None
        if "covariance" in self.random_kinds:
            from emoscope.vectors.strength import neutral_covariance

            cov = neutral_covariance(self.model, self.layers)
        for vi, (name, vec) in enumerate(self.vectors):
            vecs = layer_vectors(self.model, vec, self.layers)
            d1, u1 = unit_deltas(self.model, vec, self.layers, self.unit, norms)
            for layer in self.layers:
                for s in self.grid:
                    add("vector", name, layer, s, d1[layer], u1[layer])
            # norm units: every vector's random control is the same, so run it once
            shared = self.unit != "raw"
            for rkind in self.random_kinds:
                base = self.seed + (0 if shared else vi)
                # covariance draws come from their own stream: the same normals through the
                # covariance factor would correlate them with the isotropic draws
                draws = (random_layer_directions(self.model.d_model, self.layers, self.n_random, base)
                         if rkind == "isotropic" else
                         random_layer_directions(self.model.d_model, self.layers, self.n_random,
                                                 np.random.default_rng([base, 1]), cov=cov))
                stem = "random-" if rkind == "isotropic" else "random-cov-"
                for k, draw in enumerate(draws):
                    key = f"{stem}{k}" if shared else f"{stem}{k}:{name}"
                    if key not in randoms:  # both unit directions scaled to the vector's norm
                        randoms[key] = (rkind, {layer: draw[layer] * np.linalg.norm(vecs[layer])
                                                for layer in self.layers})
        for key, (rkind, rvec) in randoms.items():
            d1, u1 = unit_deltas(self.model, rvec, self.layers, self.unit, norms)
            for layer in self.layers:
                for s in self.grid:
                    add("random", key, layer, s, d1[layer], u1[layer], rkind)
        return pd.DataFrame(rows), deltas, dirs

    def _prompt_ids(self) -> tuple[list[str], list[list[int]]]:
        tok = self.model.tokenizer
        if self.chat:
            texts = [self.model.chat(p) for p in self.prompts]
            ids = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        else:
            texts = list(self.prompts)
            ids = [list(tok(t)["input_ids"]) for t in texts]
        from emoscope.models.batching import fit_model_context

        return texts, fit_model_context(self.model, ids, reserve=self.max_new_tokens, what="prompt")

    # -- running --------------------------------------------------------------------------------
    def run(self) -> SteeringResult:
        """Generate every row, score the outputs, classify regimes, compare against the controls."""
        table, deltas, dirs = self.plan()
        formatted, ids = self._prompt_ids()
        model = self.model
        edits = RowEdits(delta=stack_rows(deltas, self.layers, model.d_model, model))
        if self.mode == "ablate_add":
            edits.direction = stack_rows(dirs, self.layers, model.d_model, model)
            edits.ablate = {layer: torch.as_tensor([1.0 if layer in d else 0.0 for d in dirs], dtype=model.dtype,
                                                   device=model.device) for layer in self.layers}
        row_prompt = table["prompt_id"].tolist()
        row_seeds = [s * 100_003 + p for s, p in zip(table["seed"], table["prompt_id"], strict=True)]
        # the perplexity under the unsteered model comes with the decode: blocks up to each row's layer are
        # already the unsteered ones there (models.rescore), so only the blocks above it run again
        clean = "perplexity" in self.scorers
        dec = decode_units(model, ids, row_prompt, edits, self.window, max_new_tokens=self.max_new_tokens,
                           sampling=self.sampling, row_seeds=row_seeds, batch_rows=self.batch_rows,
                           clean_perplexity=clean, execution=self.execution, name="steer-rows",
                           progress=self.progress)
        stop = eos_ids(model)
        table["text"] = [model.tokenizer.decode([t for t in toks if t not in stop], skip_special_tokens=True)
                         for toks in dec.tokens]
        table["n_tokens"] = [len(t) for t in dec.tokens]
        table["token_ids"] = [" ".join(map(str, t)) for t in dec.tokens]  # so outputs.csv can be re-scored
        table["n_words"] = [len(words(t)) for t in table["text"]]
        table["min_logit_gap"] = [float(g.min()) if len(g) else np.nan for g in dec.gaps]
        table["prompt"] = [self.prompts[p] for p in row_prompt]
        self._score(table, [ids[p] for p in row_prompt], dec.tokens,
                    {"perplexity": dec.perplexity} if clean else None)
        self._compare(table, dec.tokens)
        success = success_table(table, self.target, seed=self.seed) if self.scorers else pd.DataFrame()
        meta = {
            "model": getattr(model, "name", ""), "weights_sha256": getattr(model, "weights_sha256", ""),
            "vectors": [n for n, _ in self.vectors], "layers": self.layers, "strengths": self.strengths,
            "grid": self.grid, "positions": self.window.spec, "mode": self.mode, "unit": self.unit,
            "unit_norms": self.unit_norms_, "n_random": self.n_random, "random_kinds": self.random_kinds,
            "seed": self.seed,
            "seeds": self.run_seeds, "temperature": self.sampling.temperature, "top_k": self.sampling.top_k, "top_p": self.sampling.top_p,
            "max_new_tokens": self.max_new_tokens, "chat_template": self.chat, "target": self.target,
            "scorers": [str(s) for s in self.scorers], "n_rows": len(table), "decode_seconds": dec.seconds,
            "prefill_rows": dec.prefill_rows, "batches": dec.batches, "thresholds": self.thresholds.as_dict(),
            "formatted_prompt_example": formatted[0],
        }
        return SteeringResult(table=table, success=success, target=self.target, thresholds=self.thresholds, meta=meta,
                           tokens=dec.tokens)

    def _score(self, table: pd.DataFrame, prompt_ids: list[list[int]], output_ids: list[list[int]],
               given: dict[str, Any] | None = None) -> None:
        from emoscope.steering.scorers import score_table

        score_table(table, self.model, self.scorers, self.target, prompt_ids, output_ids, given)

    def _compare(self, table: pd.DataFrame, tokens: list[list[int]]) -> None:
        """Each row against the baseline row of the same prompt and seed."""
        base = table[table["kind"] == "baseline"]
        key = list(zip(table["prompt_id"], table["seed"], strict=True))
        pos = {k: i for i, k in zip(base.index, zip(base["prompt_id"], base["seed"], strict=True), strict=True)}
        bi = np.array([pos[k] for k in key])
        table["target_score"] = table[self.target].to_numpy(float)
        table["target_change"] = table["target_score"].to_numpy() - table["target_score"].to_numpy()[bi]
        if "perplexity" in table:
            table["ppl_ratio"] = table["perplexity"].to_numpy(float) / table["perplexity"].to_numpy(float)[bi]
        table["changed"] = [tokens[i] != tokens[b] for i, b in enumerate(bi)]
        table["regime"] = classify_regimes(table, "target_score", self.thresholds)
