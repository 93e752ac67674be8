"""``PatchSweep``: multi-token activation patching with its controls in one batched decode.

Residuals recorded on **source** prompts are written into **target** prompts at chosen layers and
prompt positions, and the model then generates many tokens; the outputs are scored by the
steering scorers (``emoscope.steering.scorers``) and classified into regimes
(``emoscope.steering.regimes.classify_regimes``), exactly like a steering sweep. One cell is a
(layer, positions) pair; each row patches one cell (a single layer).

Source states
-------------
``pairing="class_mean"`` (the default): the end-aligned mean of every source text's states
(``emoscope.patching.record.class_mean``: as long as the shortest source, each position a mean
over the class). ``pairing="per_target"``: target ``i`` gets source ``i mod n_sources`` (paired in
order, cycling). Sources and targets are formatted the same way (the chat template when the model
has one and ``chat`` is on), so with ``last`` the state of the same template token moves.

The edit
--------
A **replacement**, ``h = where(mask, value, h)`` (``emoscope.models.interventions.ReplaceHook``):
the target's last ``n`` prompt tokens get the source's last ``n`` states (aligned from the end,
``emoscope.patching.positions``). With ``generated=True`` every generated position also gets the
source's **last-token state** at that layer (a replacement too: whatever the model computed there
is overwritten by the state of the source's final prompt token).

Rows (all in one batched decode, one edit per row)
--------------------------------------------------
- ``baseline``: unpatched, once per target (layer -1);
- ``self`` (``self_rows``): the target patched with its own clean states at the same prompt
  positions, the "strength 0" row: an identity up to floating point (it never touches generated
  positions);
- ``patch``: the source class (``source`` column: its name);
- ``neutral``: the same patch from the neutral source (its class mean, or paired the same way);
- ``random`` (``n_random`` draws, ``random-k``): the target's clean state plus a random delta
  with the **same norm as the (source - clean target) delta it replaces**, column by column:
  ``clean_j + ||source_j - clean_j|| u_k``, with ``u_k`` the k-th seeded unit direction of
  ``core.directions.random_layer_directions`` (one per draw and layer, shared by every prompt
  and column, like a random steering vector). With ``generated=True`` random rows add
  ``||source_last - clean_last|| u_k`` at every generated position (an additive delta: the clean
  generated states are not known in advance). ``random_kind``: ``isotropic`` (the default;
  ``random_kind`` column ``isotropic``, rows ``random-k``), ``covariance`` (``u_k`` drawn from the
  covariance of neutral activations, ``vectors.strength.neutral_covariance``, so the delta falls
  where activations vary; rows ``random-cov-k``) or ``both``. Effects are judged against the
  isotropic draws when they ran; the covariance-matched ones are reported beside them (``_cov``).

The next-token view
-------------------
Every row also carries ``step1``, the log-odds that the first generated token is a target token,
and ``step1_change`` against the baseline row of the same prompt (``next_token.py`` says which tokens).
A one-step view and the multi-token effect can disagree; ``patch_cells`` shows both per cell.

>>> sweep = PatchSweep(model, anger_texts, prompts, layers=[9, 15], positions=["last"],
...                    neutral=neutral_texts, source_name="anger")      # doctest: +SKIP
>>> res = sweep.run()                                                   # doctest: +SKIP
>>> res.cells[["layer", "positions", "effect", "step1_effect"]]         # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from emoscope.errors import InputError
from emoscope.models.batching import eos_ids
from emoscope.models.interventions import Window
from emoscope.models.units import decode_units
from emoscope.patching.next_token import step1_token_sets, step1_value
from emoscope.patching.positions import PatchPositions, align_from_end, parse_position_list
from emoscope.patching.record import class_mean, record_states
from emoscope.patching.rows import PatchPlan, plan_edits, random_patch_directions
from emoscope.steering.regimes import RegimeThresholds, classify_regimes
from emoscope.steering.scorers import DEFAULT_SCORERS, words
from emoscope.steering.sweep import default_target

__all__ = ["PatchSweep", "PatchResult", "PatchPlan", "PAIRINGS", "RANDOM_KINDS", "step1_token_sets"]

PAIRINGS = ("class_mean", "per_target")
RANDOM_KINDS = ("isotropic", "covariance", "both")


@dataclass
class PatchResult:
    """A finished sweep: ``table`` (one row per output: text, scores, regime, step-1 view),
    ``cells`` (per layer and positions: the multi-token effect beside the step-1 view, against
    the random and neutral controls) and ``meta``."""

    table: pd.DataFrame
    cells: pd.DataFrame
    target: str
    thresholds: RegimeThresholds
    meta: dict[str, Any] = field(default_factory=dict)
    tokens: list[list[int]] = field(default_factory=list)

    def save(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """Write ``outputs.csv``, ``cells.csv``, ``summary.json`` and the effect-per-layer figure."""
        from emoscope._io import atomic_write_json, atomic_write_text, ensure_writable_dir
        from emoscope.core.figures import save_figure
        from emoscope.patching.plots import effect_by_layer_figure

        out = ensure_writable_dir(out_dir)
        written = [atomic_write_text(out / "outputs.csv", self.table.to_csv(index=False)),
                   atomic_write_text(out / "cells.csv", self.cells.to_csv(index=False)),
                   atomic_write_json(out / "summary.json", {**self.meta, "target": self.target})]
        png = save_figure(effect_by_layer_figure(self), out / "effect_by_layer")
        return [*written, png, png.with_suffix(".svg")]


def _texts(texts: Any, what: str) -> list[str]:
    if isinstance(texts, str) or not texts:
        raise InputError(f"no {what} given: pass a non-empty list of strings")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"{what} {i} is empty or not a string")
    return out


class PatchSweep:
    """Patch ``sources`` into ``targets`` at ``layers`` x ``positions``, generate, score, compare.

    ``neutral``: texts of the neutral source (``None``: no neutral-source control). ``chat="auto"``
    wraps sources, neutral texts and targets in the model's chat template when it has one.
    Greedy decoding. Inputs are checked here, before anything slow runs. ``share_prefix``: the
    prompt tokens before the patched ones are prefilled once per prompt and shared by its rows
    (``emoscope.models.decode.decode_rows``); the outputs are the same as prefilling every row.
    """

    def __init__(self, model: Any, sources: Sequence[str], targets: Sequence[str], layers: Any,
                 positions: Sequence[str] | str = ("last",), *, source_name: str = "source",
                 neutral: Sequence[str] | None = None, neutral_name: str = "neutral", pairing: str = "class_mean",
                 generated: bool = False, max_new_tokens: int = 32, n_random: int = 16, seed: int = 0,
                 chat: bool | str = "auto", self_rows: bool = True, scorers: Sequence[str | tuple] = DEFAULT_SCORERS,
                 target: str | None = None, thresholds: RegimeThresholds | None = None, batch_rows: int = 256,
                 record_batch: int = 32, share_prefix: bool = True, progress: bool = True, execution: Any = None,
                 random_kind: str = "isotropic") -> None:
        self.model, self.execution = model, execution  # execution: where the rows' work units run
        self.sources = _texts(sources, "source texts")
        self.targets = _texts(targets, "target prompts")
        self.neutral = None if neutral is None else _texts(neutral, "neutral source texts")
        self.layers = model.resolve_layers(layers)
        self.positions: list[PatchPositions] = parse_position_list(positions)
        if pairing not in PAIRINGS:
            raise InputError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        self.pairing = pairing
        if not source_name or source_name in ("baseline", "self", "neutral") or source_name.startswith("random-"):
            raise InputError(f"source name {source_name!r} is reserved; name the source class")
        self.source_name, self.neutral_name = str(source_name), str(neutral_name)
        self.generated = bool(generated)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        self.max_new_tokens = max_new_tokens
        if n_random < 0:
            raise InputError(f"n_random must be >= 0, got {n_random}")
        self.n_random, self.seed = int(n_random), int(seed)
        if random_kind not in RANDOM_KINDS:
            raise InputError(f"random_kind must be one of {RANDOM_KINDS}, got {random_kind!r}")
        self.random_kind = random_kind
        self.chat = model.has_chat_template if chat == "auto" else bool(chat)
        self.self_rows = bool(self_rows)
        self.scorers = list(scorers)
        self.target = target or default_target(self.source_name)
        self.thresholds = thresholds or RegimeThresholds()
        if batch_rows < 1 or record_batch < 1:
            raise InputError(f"batch_rows and record_batch must be positive, got {batch_rows}, {record_batch}")
        self.batch_rows, self.record_batch = int(batch_rows), int(record_batch)
        self.share_prefix = bool(share_prefix)
        self.progress = progress

    # -- inputs ---------------------------------------------------------------------------------
    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids as the sweep feeds them (chat-formatted when ``chat``)."""
        from emoscope.models.batching import fit_model_context

        tok = self.model.tokenizer
        if self.chat:
            ids = [list(tok(self.model.chat(t), add_special_tokens=False)["input_ids"]) for t in texts]
        else:
            ids = [list(tok(t)["input_ids"]) for t in texts]
        return fit_model_context(self.model, ids, reserve=self.max_new_tokens, what="prompt")

    @property
    def cells(self) -> list[tuple[int, PatchPositions]]:
        return [(layer, p) for layer in self.layers for p in self.positions]

    def _states(self, texts: Sequence[str]) -> list[dict[int, torch.Tensor]]:
        return record_states(self.model, self.token_ids(texts), self.layers, batch_size=self.record_batch)

    def _source_for(self, states: list[dict[int, torch.Tensor]], mean: dict[int, torch.Tensor] | None,
                    p: int) -> dict[int, torch.Tensor]:
        return mean if mean is not None else states[p % len(states)]

    # -- the plan -------------------------------------------------------------------------------
    def plan(self) -> PatchPlan:
        """Record the states, then lay out every row and its edit (no generation yet)."""
        tgt_ids = self.token_ids(self.targets)
        clean = record_states(self.model, tgt_ids, self.layers, batch_size=self.record_batch)
        src = self._states(self.sources)
        src_mean = class_mean(src) if self.pairing == "class_mean" else None
        neu = self._states(self.neutral) if self.neutral is not None else None
        neu_mean = class_mean(neu) if neu is not None and self.pairing == "class_mean" else None
        d = int(self.model.d_model)
        dirs = random_patch_directions(self.model, self.layers, self.n_random, self.seed, self.random_kind, d)

        rows: list[dict[str, Any]] = []
        values: list[torch.Tensor | None] = []
        cleans: list[torch.Tensor | None] = []
        gens: list[torch.Tensor | None] = []  # replacement at generated positions, (d,)
        adds: list[torch.Tensor | None] = []  # additive delta at generated positions, (d,)

        def add(row: dict[str, Any], value: torch.Tensor | None = None, clean_cols: torch.Tensor | None = None,
                gen: torch.Tensor | None = None, add_gen: torch.Tensor | None = None) -> None:
            norm = float((value - clean_cols).norm(dim=-1).mean()) if value is not None and len(value) else np.nan
            rows.append({"strength": 0.0 if row["kind"] in ("baseline", "self") else 1.0, "seed": 0,
                         "delta_norm": norm, **row})
            values.append(value)
            cleans.append(clean_cols)
            gens.append(gen)
            adds.append(add_gen)

        for p, ids in enumerate(tgt_ids):
            t_len = len(ids)
            base = {"prompt_id": p, "target_tokens": t_len}
            add({"kind": "baseline", "source": "baseline", "layer": -1, "positions": "", "source_tokens": 0,
                 "n_patched": 0, "unpatched_target": 0, "unused_source": 0, **base})
            s_states = self._source_for(src, src_mean, p)
            s_len = src_tokens = len(next(iter(s_states.values())))
            for layer, pos in self.cells:
                cl = clean[p][layer]  # (t_len, d)
                cell = {"layer": layer, "positions": pos.spec, **base}
                if self.self_rows:
                    n = pos.requested(t_len)
                    add({"kind": "self", "source": "self", "source_tokens": t_len, "n_patched": n,
                         "unpatched_target": 0, "unused_source": 0, **cell}, cl[t_len - n:], cl[t_len - n:])
                a = align_from_end(t_len, s_len, pos)
                n = a.n_patched
                c_cols = cl[t_len - n:]
                s_cols = s_states[layer][s_len - n:]
                s_last = s_states[layer][-1]
                add({"kind": "patch", "source": self.source_name, "source_tokens": src_tokens, "n_patched": n,
                     "unpatched_target": a.unpatched_target, "unused_source": a.unused_source, **cell},
                    s_cols, c_cols, s_last if self.generated else None)
                if neu is not None:
                    nst = self._source_for(neu, neu_mean, p)
                    n_len = len(next(iter(nst.values())))
                    an = align_from_end(t_len, n_len, pos)
                    add({"kind": "neutral", "source": self.neutral_name, "source_tokens": n_len,
                         "n_patched": an.n_patched, "unpatched_target": an.unpatched_target,
                         "unused_source": an.unused_source, **cell},
                        nst[layer][n_len - an.n_patched:], cl[t_len - an.n_patched:],
                        nst[layer][-1] if self.generated else None)
                col_norms = (s_cols - c_cols).norm(dim=-1, keepdim=True)  # (n, 1): the delta each column replaces
                gen_norm = (s_last - cl[-1]).norm()
                for name, rkind, u in dirs:
                    add({"kind": "random", "source": name, "random_kind": rkind, "source_tokens": src_tokens,
                         "n_patched": n,
                         "unpatched_target": a.unpatched_target, "unused_source": a.unused_source, **cell},
                        c_cols + col_norms * u[layer][None, :], c_cols, None,
                        gen_norm * u[layer] if self.generated else None)
        table = pd.DataFrame(rows)
        table["random_kind"] = table["random_kind"].fillna("") if "random_kind" in table else ""
        cols = ["kind", "source", "random_kind", "layer", "positions", "strength", "prompt_id", "seed", "target_tokens",
                "source_tokens", "n_patched", "unpatched_target", "unused_source", "delta_norm"]
        table = table[cols]
        return PatchPlan(table, plan_edits(self.model, self.layers, table, values, gens, adds, d), values, cleans)


    # -- running --------------------------------------------------------------------------------
    def run(self) -> PatchResult:
        """Generate every row, score it, compare it with its prompt's baseline, summarise per cell."""
        import time

        from emoscope.patching.effects import cell_table

        t0 = time.perf_counter()
        plan = self.plan()
        table = plan.table
        model = self.model
        tgt_ids = self.token_ids(self.targets)
        sets = step1_token_sets(model, self.target)
        step1 = np.full(len(table), np.nan)

        row_prompt = table["prompt_id"].tolist()
        # every edit writes only the last n_patched prompt tokens (and generated positions): the heads
        # of the prompts are prefilled once and shared (models.decode, shared_prefix)
        untouched = (table["target_tokens"] - np.maximum(table["n_patched"], 1)).tolist()
        dec = decode_units(model, tgt_ids, row_prompt, plan.edits, Window("generated"),
                           max_new_tokens=self.max_new_tokens, batch_rows=self.batch_rows,
                           shared_prefix=untouched if self.share_prefix else None, share_prefill=False,
                           first_value=None if sets is None else functools.partial(step1_value, sets),
                           execution=self.execution, name="patch-rows", progress=self.progress)
        if dec.first is not None:
            step1 = dec.first
        stop = eos_ids(model)
        tok = model.tokenizer
        table["text"] = [tok.decode([t for t in toks if t not in stop], skip_special_tokens=True) for toks in dec.tokens]
        table["n_tokens"] = [len(t) for t in dec.tokens]
        table["token_ids"] = [" ".join(map(str, t)) for t in dec.tokens]
        table["first_token"] = [tok.decode(t[:1]) for t in dec.tokens]
        table["n_words"] = [len(words(t)) for t in table["text"]]
        table["min_logit_gap"] = [float(g.min()) if len(g) else np.nan for g in dec.gaps]
        table["prompt"] = [self.targets[p] for p in row_prompt]
        table["step1"] = step1
        self._score(table, [tgt_ids[p] for p in row_prompt], dec.tokens)
        self._compare(table, dec.tokens)
        cells = cell_table(table, seed=self.seed)
        meta = self._meta(table, dec, time.perf_counter() - t0, sets is not None, tgt_ids)
        return PatchResult(table=table, cells=cells, target=self.target, thresholds=self.thresholds, meta=meta,
                           tokens=dec.tokens)

    def _score(self, table: pd.DataFrame, prompt_ids: list[list[int]], output_ids: list[list[int]]) -> None:
        from emoscope.steering.scorers import score_table

        score_table(table, self.model, self.scorers, self.target, prompt_ids, output_ids)

    def _compare(self, table: pd.DataFrame, tokens: list[list[int]]) -> None:
        """Each row against the baseline row of the same prompt."""
        base = table[table["kind"] == "baseline"]
        at = dict(zip(base["prompt_id"], base.index, strict=True))
        bi = np.array([at[p] for p in table["prompt_id"]])
        table["target_score"] = table[self.target].to_numpy(float)
        table["target_change"] = table["target_score"].to_numpy() - table["target_score"].to_numpy()[bi]
        if "perplexity" in table:
            table["ppl_ratio"] = table["perplexity"].to_numpy(float) / table["perplexity"].to_numpy(float)[bi]
        table["step1_change"] = table["step1"].to_numpy(float) - table["step1"].to_numpy(float)[bi]
        table["changed"] = [tokens[i] != tokens[b] for i, b in enumerate(bi)]
        table["regime"] = classify_regimes(table, "target_score", self.thresholds)

    def _meta(self, table: pd.DataFrame, dec: Any, seconds: float, has_step1: bool,
              tgt_ids: list[list[int]]) -> dict[str, Any]:
        model = self.model
        selfr = table[table["kind"] == "self"]
        same = int((~selfr["changed"]).sum()) if len(selfr) else 0
        align = []
        for kind in ("patch", "neutral"):
            g = table[table["kind"] == kind]
            for spec, h in g.groupby("positions", sort=False):
                align.append({"kind": kind, "positions": spec, "rows": len(h),
                              "rows_with_drops": int(((h["unpatched_target"] + h["unused_source"]) > 0).sum()),
                              "unpatched_target_tokens": int(h["unpatched_target"].sum()),
                              "unused_source_tokens": int(h["unused_source"].sum()),
                              "mean_patched": float(h["n_patched"].mean())})
        return {
            "model": getattr(model, "name", ""), "weights_sha256": getattr(model, "weights_sha256", ""),
            "source": self.source_name, "neutral": self.neutral_name if self.neutral is not None else None,
            "n_sources": len(self.sources), "n_neutral": len(self.neutral or []), "n_targets": len(self.targets),
            "pairing": self.pairing, "layers": self.layers, "positions": [p.spec for p in self.positions],
            "generated": self.generated, "n_random": self.n_random, "random_kind": self.random_kind, "seed": self.seed,
            "max_new_tokens": self.max_new_tokens, "chat_template": self.chat, "target": self.target,
            "scorers": [str(s) for s in self.scorers], "n_rows": len(table), "decode_seconds": dec.seconds,
            "seconds": seconds, "batches": dec.batches, "thresholds": self.thresholds.as_dict(),
            "step1": "log-odds of target tokens at the first generated token" if has_step1 else None,
            "self_rows": len(selfr), "self_rows_identical": same, "alignment": align,
            "target_tokens": [min(map(len, tgt_ids)), max(map(len, tgt_ids))],
        }
