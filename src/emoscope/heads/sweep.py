"""``HeadSweep``: head ablation or head patching configurations as rows of one batched decode.

Every row of the batch is (configuration, prompt, seed). A configuration is a set of heads and a
method:

- ``none``: the unedited baseline (one row per prompt and seed, the reference of every change);
- ``zero``: the heads' outputs (their slices of the ``o_proj`` input) set to 0;
- ``mean``: set to their mean over neutral text (``mean_head_outputs``: every token of
  ``neutral-corpus`` but each text's first, averaged over positions and texts);
- ``patch``: set, at the last ``K`` prompt tokens (aligned from the end: the last prompt token
  takes the source's last token), to their outputs recorded on a source prompt
  (``record_head_outputs``); generated tokens are not patched, they see the patched prompt
  through the KV cache.

Ablation edits every column of the ``positions`` window (``all`` by default: prompt and
generated tokens). With ``positions="generated"`` the prompt is not edited, so the unique prompts
are prefilled once per chunk and their KV cache is shared by every row (much less work when the
prompts are long against the generation; the first generated token then comes from the unedited
prompt). When the prompt is edited (``all``, ``prompt``, ``from:K``, head patching), no
configuration edits anything below the chunk's lowest edited layer ``L``, so the blocks ``0..L-1``
of the prefill run once per unique prompt and their states and KV cache are forked to the rows
(``models.prefill.prefill_below``; ``share_below=False`` prefills every block per row): with
layer-matched random heads (or heads of the chosen set's layer band, the fallback), ``L`` is the
chosen heads' lowest layer for every configuration.
The chosen heads and every random set of the same size run in the same
batch (``kind`` = ``chosen`` / ``random``), so the random-head control costs rows, not passes.

One forward pre-hook per edited block (``models.head_outputs.edit_heads``) carries a per-row
``(rows, n_heads)`` mask, so a chunk of ``batch_rows`` rows mixing any configurations is one
decode (``models.decode.decode_rows``, called per chunk with its own rows). Greedy outputs
equal running each configuration alone (``tests/test_heads_sweep.py``).

Probe projections, read during the same decode from ``resid[probe_layer]`` (the output of that
block) along the unit vector ``u``: ``proj_last`` = ``resid . u`` at the last prompt token;
``proj_gen`` = its mean over the generated tokens the model read back (every generated token
but the last, which is never fed back, and no end-of-sequence token). Heads of blocks above the
probe layer cannot change ``proj_last``; they reach ``proj_gen`` only through the tokens chosen.

>>> sweep = HeadSweep(model, configs, prompts, max_new_tokens=16, probe=(20, u))   # doctest: +SKIP
>>> result = sweep.run()                                                             # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from emoscope.errors import InputError
from emoscope.heads.select import Head, format_heads
from emoscope.heads.units import decode_configs
from emoscope.models.batching import eos_ids, pad_batch, pad_token_id
from emoscope.models.decode import Sampling
from emoscope.models.head_outputs import head_outputs
from emoscope.models.interventions import parse_window

__all__ = ["HeadConfig", "plan_configs", "HeadSweep", "HeadSweepResult", "mean_head_outputs",
           "record_head_outputs", "decode_configs", "METHODS"]

METHODS = ("zero", "mean", "patch")


@dataclass(frozen=True)
class HeadConfig:
    """``kind``: baseline | chosen | random; ``method``: none | zero | mean | patch."""

    kind: str
    name: str
    method: str
    heads: tuple[Head, ...] = ()


def plan_configs(chosen: Sequence[Head], random_sets: Sequence[Sequence[Head]], methods: Sequence[str]) -> list[HeadConfig]:
    """The baseline, then per method the chosen heads and every random set (``random-j``).

    >>> [c.name for c in plan_configs([(0, 1)], [[(0, 2)], [(0, 3)]], ["zero"])]
    ['baseline', 'chosen', 'random-0', 'random-1']
    """
    out = [HeadConfig("baseline", "baseline", "none")]
    for m in methods:
        if m not in METHODS:
            raise InputError(f"head method {m!r} unknown; use one of {METHODS}")
        out.append(HeadConfig("chosen", "chosen", m, tuple(sorted(chosen))))
        out += [HeadConfig("random", f"random-{j}", m, tuple(sorted(s))) for j, s in enumerate(random_sets)]
    return out


@torch.inference_mode()
def mean_head_outputs(model: Any, layers: Sequence[int], texts: Sequence[str] | None = None, *,
                      batch_size: int = 32) -> dict[int, torch.Tensor]:
    """``{layer: (n_heads, head_dim)}``: each head's output averaged over every token of ``texts``
    (default ``neutral-corpus``) except each text's first (the attention sink), in float32."""
    if texts is None:
        from emoscope.datasets import load_dataset

        texts = list(load_dataset("neutral-corpus").texts)
    layers = sorted({model.check_layer(int(x)) for x in layers})
    if not layers:
        return {}
    from emoscope.models.batching import fit_model_context

    ids = fit_model_context(model, [list(x) for x in model.tokenizer(list(texts))["input_ids"]])
    pad = model.tokenizer.pad_token_id
    pad = 0 if pad is None else int(pad)
    sums = {layer: None for layer in layers}
    count = 0
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    with contextlib.ExitStack() as stack:
        caps = {layer: stack.enter_context(head_outputs(model, layer)) for layer in layers}
        for lo in range(0, len(order), batch_size):
            batch = [ids[i] for i in order[lo: lo + batch_size]]
            x, mask, pos, start = pad_batch(batch, pad, "right", model.device)
            keep = mask.clone()
            keep[torch.arange(len(batch)), start] = 0  # the first token of every text
            if not bool(keep.any()):
                keep = mask
            model.base(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=False)
            w = keep.to(torch.float32)[..., None, None]  # (batch, seq, 1, 1)
            for layer in layers:
                s = (caps[layer].z.float() * w).sum((0, 1))  # (n_heads, head_dim)
                sums[layer] = s if sums[layer] is None else sums[layer] + s
            count += int(keep.sum())
    return {layer: (sums[layer] / max(count, 1)).cpu() for layer in layers}


@torch.inference_mode()
def record_head_outputs(model: Any, prompt_ids: Sequence[Sequence[int]], layers: Sequence[int], tokens: int = 1,
                        *, batch_size: int = 32) -> dict[int, torch.Tensor]:
    """``{layer: (n_prompts, tokens, n_heads, head_dim)}``: every head's output at the last
    ``tokens`` tokens of each prompt (``[:, -1]`` = the last token), unedited, float32 on the CPU."""
    layers = sorted({model.check_layer(int(x)) for x in layers})
    short = [i for i, p in enumerate(prompt_ids) if len(p) < tokens]
    if short:
        raise InputError(f"source prompt {short[0]} has {len(prompt_ids[short[0]])} tokens, fewer than the "
                         f"{tokens} patched")
    pad = pad_token_id(model)
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    with contextlib.ExitStack() as stack:
        caps = {layer: stack.enter_context(head_outputs(model, layer)) for layer in layers}
        for lo in range(0, len(prompt_ids), batch_size):
            batch = [list(p) for p in prompt_ids[lo: lo + batch_size]]
            x, mask, pos, _ = pad_batch(batch, pad, "left", model.device)  # left: the last tokens line up
            model.base(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=False)
            for layer in layers:
                out[layer].append(caps[layer].z[:, -tokens:].float().cpu())
    return {layer: torch.cat(v) for layer, v in out.items()}


@dataclass
class HeadSweepResult:
    """``table``: one row per generation (configuration, prompt, seed, text, scores, regime,
    probe projections); ``configs``; ``meta``; ``tokens`` (new token ids per table row)."""

    table: pd.DataFrame
    configs: list[HeadConfig]
    meta: dict[str, Any] = field(default_factory=dict)
    tokens: list[list[int]] = field(default_factory=list)


class HeadSweep:
    """Head ablation / patching configurations x prompts x seeds as a few batched decodes, scored.

    ``prompts`` are user messages, wrapped in the chat template when ``chat`` (and the model has
    one). ``scorers`` are the steering scorers (``emoscope.steering.scorers``); ``target`` names the
    score column whose change is the target score. Changes are taken against the baseline row of
    the same prompt and seed; the regime of an output follows ``steering.regimes`` with either
    direction of target change counting as an effect (there is no intended sign here).
    """

    def __init__(self, model: Any, configs: Sequence[HeadConfig], prompts: Sequence[str], *, max_new_tokens: int = 32,
                 chat: bool | str = "auto", positions: str = "all", mean_values: Mapping[int, torch.Tensor] | None = None,
                 patch_values: Mapping[int, torch.Tensor] | None = None, patch_tokens: int = 1,
                 probe: tuple[int, np.ndarray] | None = None, seeds: Sequence[int] = (0,), temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, batch_rows: int = 256,
                 scorers: Sequence[str | tuple] = ("nrc", "vader", "perplexity", "repetition", "script"),
                 target: str = "valence", thresholds: Any = None, progress: bool = True,
                 execution: Any = None) -> None:
        self.execution = execution  # where the chunks of rows run as work units (emoscope.core.executor)
        if not configs:
            raise InputError("no head configurations to run")
        if isinstance(prompts, str) or not prompts:
            raise InputError("no prompts given: pass a non-empty list of prompt strings")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise InputError(f"prompt {i} is empty or not a string")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not seeds:
            raise InputError("seeds must list at least one integer")
        self.model, self.configs, self.prompts = model, list(configs), list(prompts)
        self.max_new_tokens, self.positions = max_new_tokens, parse_window(positions).spec
        self.chat = model.has_chat_template if chat == "auto" else bool(chat)
        self.mean_values, self.patch_values, self.patch_tokens = mean_values, patch_values, int(patch_tokens)
        self.probe = probe
        self.sampling = Sampling(float(temperature), int(top_k), float(top_p))
        self.seeds = [int(s) for s in seeds]
        self.batch_rows, self.scorers, self.target = int(batch_rows), list(scorers), target
        if thresholds is None:
            from emoscope.steering.regimes import RegimeThresholds

            thresholds = RegimeThresholds()
        self.thresholds, self.progress = thresholds, progress

    @property
    def run_seeds(self) -> list[int]:
        return self.seeds[:1] if self.sampling.greedy else self.seeds

    def prompt_ids(self) -> tuple[list[str], list[list[int]]]:
        from emoscope.models.batching import fit_model_context

        tok = self.model.tokenizer
        if self.chat:
            texts = [self.model.chat(p) for p in self.prompts]
            ids = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        else:
            texts, ids = list(self.prompts), [list(tok(t)["input_ids"]) for t in self.prompts]
        return texts, fit_model_context(self.model, ids, reserve=self.max_new_tokens, what="prompt")

    def plan(self) -> pd.DataFrame:
        rows = []
        for seed in self.run_seeds:
            for ci, c in enumerate(self.configs):
                for p in range(len(self.prompts)):
                    rows.append({"kind": c.kind, "config": c.name, "method": c.method, "n_heads": len(c.heads),
                                 "heads": format_heads(c.heads), "prompt_id": p, "seed": seed, "_config": ci})
        return pd.DataFrame(rows)

    def run(self) -> HeadSweepResult:
        from emoscope.steering.scorers import words

        table = self.plan()
        formatted, ids = self.prompt_ids()
        if self.patch_values is not None:
            short = [i for i, p in enumerate(ids) if len(p) < self.patch_tokens]
            if short:
                raise InputError(f"target prompt {short[0]} has fewer tokens than the {self.patch_tokens} patched")
        model = self.model
        row_seeds = [s * 100_003 + p for s, p in zip(table["seed"], table["prompt_id"], strict=True)]
        dec = decode_configs(model, self.configs, ids, table["_config"].tolist(), table["prompt_id"].tolist(),
                             max_new_tokens=self.max_new_tokens, positions=self.positions,
                             mean_values=self.mean_values, patch_values=self.patch_values,
                             patch_tokens=self.patch_tokens, probe=self.probe, sampling=self.sampling,
                             row_seeds=row_seeds, batch_rows=self.batch_rows, progress=self.progress,
                             execution=self.execution)
        table = table.drop(columns="_config")
        stop = eos_ids(model)
        table["text"] = [model.tokenizer.decode([t for t in toks if t not in stop], skip_special_tokens=True)
                         for toks in dec.tokens]
        table["n_tokens"] = [len(t) for t in dec.tokens]
        table["token_ids"] = [" ".join(map(str, t)) for t in dec.tokens]
        table["n_words"] = [len(words(t)) for t in table["text"]]
        table["min_logit_gap"] = [float(g.min()) if len(g) else np.nan for g in dec.gaps]
        table["prompt"] = [self.prompts[p] for p in table["prompt_id"]]
        if self.probe is not None:
            table["proj_last"], table["proj_gen"] = dec.proj_last, dec.proj_gen
        self._score(table, [ids[p] for p in table["prompt_id"]], dec.tokens)
        self._compare(table, dec.tokens)
        meta = {
            "model": getattr(model, "name", ""), "weights_sha256": getattr(model, "weights_sha256", ""),
            "configs": len(self.configs), "n_rows": len(table), "positions": self.positions,
            "max_new_tokens": self.max_new_tokens, "chat_template": self.chat, "target": self.target,
            "seeds": self.run_seeds, "temperature": self.sampling.temperature, "top_k": self.sampling.top_k,
            "top_p": self.sampling.top_p, "scorers": [str(s) for s in self.scorers], "decode_seconds": dec.seconds,
            "batches": dec.batches, "patch_tokens": self.patch_tokens if self.patch_values is not None else 0,
            "probe_layer": int(self.probe[0]) if self.probe is not None else None,
            "thresholds": self.thresholds.as_dict(), "formatted_prompt_example": formatted[0],
        }
        return HeadSweepResult(table=table, configs=self.configs, meta=meta, tokens=dec.tokens)

    def _score(self, table: pd.DataFrame, prompt_ids: list[list[int]], output_ids: list[list[int]]) -> None:
        from emoscope.steering.scorers import score_table

        score_table(table, self.model, self.scorers, self.target, prompt_ids, output_ids)

    def _compare(self, table: pd.DataFrame, tokens: list[list[int]]) -> None:
        """Each row against the baseline row of the same prompt and seed (NaN without one)."""
        from emoscope.steering.regimes import classify_regimes

        base = table[table["kind"] == "baseline"]
        pos = {k: i for i, k in zip(base.index, zip(base["prompt_id"], base["seed"], strict=True), strict=True)}
        bi = np.array([pos.get(k, -1) for k in zip(table["prompt_id"], table["seed"], strict=True)])
        has = bi >= 0
        table["target_score"] = table[self.target].to_numpy(float)
        ref = np.where(has, table["target_score"].to_numpy()[np.maximum(bi, 0)], np.nan)
        table["target_change"] = table["target_score"].to_numpy() - ref
        if "perplexity" in table:
            ppl = table["perplexity"].to_numpy(float)
            table["ppl_ratio"] = ppl / np.where(has, ppl[np.maximum(bi, 0)], np.nan)
        table["changed"] = [bool(has[i]) and tokens[i] != tokens[bi[i]] for i in range(len(table))]
        # no intended sign: a change of the target either way counts (the rule random rows follow)
        table["regime"] = classify_regimes(table.assign(kind="random"), "target_score", self.thresholds).to_numpy()
        table["broken"] = table["regime"].isin(["repetitive collapse", "explosive"]).astype(float)
