"""A lean batched decode loop where every row carries its own residual edit.

Shared by steering sweeps (``emoscope.steering``), free-text concept injection
(``emoscope.introspection.freetext``) and activation patching (``emoscope.patching``); the edits
are ``emoscope.models.interventions.EditHook`` (add / ablate, inside ``window``) and, for patching,
``ReplaceHook`` (per-row replacement values aligned to the end of the prompt, and optionally one
state per row written at every generated position). On a block with both, the additive edit runs
first and the replacement second.

Why not ``generate``: a sweep needs one delta per row (a different vector, layer and strength on
each row), the prompt's KV cache shared across rows when only generated tokens are steered,
and the logit gap of every greedy choice (to tell a floating-point near-tie from a bug when a
batched output differs from the same configuration run alone). The loop is the plain one:
prefill, then one token per step with the KV cache, logits of the last position only.

Positions and padding follow ``transformers.generate`` exactly (left padding,
``position_ids = cumsum(mask) - 1`` with padding set to 1, finished rows fed the pad token),
so greedy outputs agree with ``generate`` under the same hooks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from emoscope.errors import InputError
from emoscope.models.batching import (
    eos_ids,
    keeps_logits,
    pad_batch,
    pad_token_id,
    positions_from_mask,
)
from emoscope.models.interventions import (
    EditHook,
    PositionTracker,
    ReplaceHook,
    Window,
    chain_hooks,
    installed,
)
from emoscope.models.kvcache import cache_kwargs, fork_cache, new_cache, output_cache, reserve_cache
from emoscope.models.logits import unembed
from emoscope.models.rescore import CleanStates, row_layers
from emoscope.models.rescore import clean_perplexity as clean_perplexity_of

__all__ = ["Sampling", "RowEdits", "Decoded", "decode_rows", "stack_rows"]


@dataclass(frozen=True)
class Sampling:
    """``temperature=0`` is greedy; otherwise sample with optional ``top_k`` / ``top_p``.

    >>> Sampling().greedy, Sampling(temperature=0.7, top_p=0.9).greedy
    (True, False)
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise InputError(f"top_k must be >= 0 and top_p in (0, 1], got {self.top_k}, {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class RowEdits:
    """Per-row edits: ``delta[l]`` ``(rows, d)``; with ablation also ``direction[l]`` ``(rows, d)``
    and ``ablate[l]`` ``(rows,)`` of 0/1. Rows not steered at layer ``l`` hold zeros there.

    Replacement (activation patching, ``ReplaceHook``): ``replace[l]`` ``(rows, V, d)`` with
    ``replace_mask[l]`` ``(rows, V)`` bool, aligned to the end of the prompt (``[:, -1]`` is the
    last prompt token); ``replace_generated[l]`` ``(rows, d)`` written at every generated position
    of the rows where ``replace_generated_mask[l]`` ``(rows,)`` is True. These may stay on the CPU."""

    delta: dict[int, torch.Tensor] = field(default_factory=dict)
    direction: dict[int, torch.Tensor] = field(default_factory=dict)
    ablate: dict[int, torch.Tensor] = field(default_factory=dict)
    replace: dict[int, torch.Tensor] = field(default_factory=dict)
    replace_mask: dict[int, torch.Tensor] = field(default_factory=dict)
    replace_generated: dict[int, torch.Tensor] = field(default_factory=dict)
    replace_generated_mask: dict[int, torch.Tensor] = field(default_factory=dict)

    def take(self, idx: torch.Tensor) -> RowEdits:
        def sub(d: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
            return {k: v[idx.to(v.device)] for k, v in d.items()}

        return RowEdits(sub(self.delta), sub(self.direction), sub(self.ablate), sub(self.replace),
                        sub(self.replace_mask), sub(self.replace_generated), sub(self.replace_generated_mask))

    @property
    def layers(self) -> list[int]:
        return sorted(set(self.delta) | set(self.direction) | set(self.replace) | set(self.replace_generated))

    @property
    def replaces_prompt(self) -> bool:
        """Whether any row's prompt is patched (then the prompt cannot be prefilled once for all rows)."""
        return bool(self.replace)

    def hook(self, tracker: PositionTracker, window: Window, layer: int):  # noqa: ANN201
        """The forward hook of block ``layer``: the additive edit, then the replacement."""
        edit = None
        if layer in self.delta or layer in self.direction:
            edit = EditHook(tracker, window, delta=self.delta.get(layer), direction=self.direction.get(layer),
                            ablate=self.ablate.get(layer, 0.0))
        repl = None
        if layer in self.replace or layer in self.replace_generated:
            repl = ReplaceHook(tracker, self.replace.get(layer), self.replace_mask.get(layer) if layer in self.replace
                               else None, self.replace_generated.get(layer), self.replace_generated_mask.get(layer))
        return chain_hooks(edit, repl)


@dataclass
class Decoded:
    """``tokens[r]``: new token ids of row ``r`` (through the first end-of-sequence token);
    ``gaps[r]``: top-1 minus top-2 logit at each greedy step; ``seconds``: wall time."""

    tokens: list[list[int]]
    gaps: list[np.ndarray]
    seconds: float = 0.0
    prefill_rows: int = 0
    batches: int = 0
    first: np.ndarray | None = None  # per row, ``decode_units(first_value=...)`` of the first step's logits
    perplexity: np.ndarray | None = None  # per row, under the unedited model (``clean_perplexity=True``)


class _Chooser:
    """Greedy argmax, or seeded sampling with one generator per row."""

    def __init__(self, sampling: Sampling, seeds: Sequence[int]) -> None:
        self.s = sampling
        self.gens = None
        if not sampling.greedy:
            self.gens = [torch.Generator().manual_seed(int(x)) for x in seeds]

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits: (rows, vocab) float32 -> (next token (rows,), top1 - top2 gap (rows,))."""
        top = torch.topk(logits, 2, dim=-1)  # (rows, 2): the greedy token and the gap in one pass
        gap = top.values[:, 0] - top.values[:, 1]
        if self.gens is None:
            # argmax picks the first of equal maxima (as generate does); topk's order among ties is unspecified
            tie = gap == 0
            return (torch.where(tie, logits.argmax(-1), top.indices[:, 0]) if bool(tie.any())
                    else top.indices[:, 0]), gap
        z = logits / self.s.temperature
        if self.s.top_k > 0:
            kth = torch.topk(z, min(self.s.top_k, z.shape[-1]), dim=-1).values[:, -1:]
            z = z.masked_fill(z < kth, float("-inf"))
        if self.s.top_p < 1.0:
            srt, order = torch.sort(z, descending=True, dim=-1)
            cum = srt.softmax(-1).cumsum(-1)
            drop = cum - srt.softmax(-1) > self.s.top_p  # keep the smallest prefix reaching top_p
            z = z.scatter(-1, order, srt.masked_fill(drop, float("-inf")))
        probs = z.softmax(-1).cpu()
        out = torch.stack([torch.multinomial(probs[r], 1, generator=g)[0] for r, g in enumerate(self.gens)])
        return out.to(logits.device), gap


@torch.inference_mode()
def decode_rows(model, prompts: Sequence[Sequence[int]], row_prompt: Sequence[int], edits: RowEdits, window: Window, *,
                max_new_tokens: int, sampling: Sampling = Sampling(), row_seeds: Sequence[int] | None = None,
                batch_rows: int = 256, share_prefill: bool | None = None, progress=None,
                first_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
                shared_prefix: Sequence[int] | None = None,
                prefill: Callable[..., tuple[torch.Tensor, object]] | None = None,
                clean_perplexity: bool = False) -> Decoded:
    """Generate for every row ``r`` from ``prompts[row_prompt[r]]`` with its own edits.

    ``prompts``: token ids per unique prompt. When the window is ``generated`` (and no row's
    prompt is patched) the prompts are prefilled once, unsteered, and their KV cache is forked to
    every row that uses them (``share_prefill``, on by default there). Rows are run ``batch_rows``
    at a time. ``first_step(rows, logits)``, when given, is called once per chunk with the chunk's
    row indices ``(rows,)`` and the float32 logits of the first generated token ``(rows, vocab)``
    (the next-token view of the same edited forward).

    ``shared_prefix[r]``, when given, promises that no edit of row ``r`` touches the first
    ``shared_prefix[r]`` tokens of its prompt (activation patching that writes only the last few
    prompt tokens). Rows are then grouped by the length ``W`` of the prompt tail they must run
    (``len(prompt) - shared_prefix``, at least 1, at most the shared head: rows with a longer tail
    are prefilled in full); for each group the heads ``prompt[:-W]`` of its
    prompts are prefilled once, unedited, their KV cache is forked to the group's rows, and only
    the last ``W`` tokens of each prompt run under the edits. The real tokens stay contiguous
    (left padding only), so positions, sliding windows and greedy outputs are those of a full
    prefill. Rows whose tail would be the whole prompt are prefilled as usual.

    ``prefill(ids, mask, pos, row_prompt)``, when given, replaces the full prefill of a chunk's
    padded prompts (``row_prompt``: the chunk's prompt index per row) and returns ``(last-column
    logits (rows, vocab) float32, KV cache)``, e.g. ``models.prefill.prefill_below``.

    ``clean_perplexity``: also the perplexity of every row's output under the unedited model
    (``Decoded.perplexity``), from the states the decode computed below each row's lowest edited
    block (``emoscope.models.rescore``); for residual edits at block outputs only.

    >>> dec = decode_rows(model, [[1, 2, 3]], [0, 0], edits, Window("generated"),
    ...                   max_new_tokens=8)                                   # doctest: +SKIP
    """
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError("every prompt needs at least one token")
    n_rows = len(row_prompt)
    if share_prefill is None:
        share_prefill = window.kind == "generated" and not edits.replaces_prompt
    if share_prefill and window.kind != "generated":
        raise InputError("share_prefill needs positions='generated' (the prompt must be unsteered)")
    if share_prefill and edits.replaces_prompt:
        raise InputError("share_prefill cannot be used when prompts are patched (the prompt must be unedited)")
    if shared_prefix is not None and share_prefill:
        raise InputError("shared_prefix and share_prefill cannot be combined")
    if shared_prefix is not None and len(shared_prefix) != n_rows:
        raise InputError(f"shared_prefix has {len(shared_prefix)} entries for {n_rows} rows")
    if clean_perplexity and (edits.replace or edits.replace_generated or shared_prefix is not None
                             or prefill is not None):
        raise InputError("clean_perplexity covers residual edits at block outputs only (no patching, "
                         "shared prompt heads or custom prefill)")
    seeds = list(row_seeds) if row_seeds is not None else [0] * n_rows
    device, pad, stop = model.device, pad_token_id(model), eos_ids(model)
    keep = {"logits_to_keep": 1} if keeps_logits(model) else {}
    row_prompt_t = torch.as_tensor(list(row_prompt), dtype=torch.long)
    t0 = time.perf_counter()
    tokens: list[list[int]] = [[] for _ in range(n_rows)]
    gaps: list[Any] = [[] for _ in range(n_rows)]

    shared = None
    if share_prefill:  # one unsteered prefill of the unique prompts, shared by all rows
        ids, mask, pos, _ = pad_batch(prompts, pad, "left", device)  # (prompts, width)
        out = model.hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                       **cache_kwargs(model.hf, new_cache(model)), **keep)
        shared = (output_cache(out), out.logits[:, -1].float(), mask)
    plain, layer_of, ppl = shared, None, None
    if clean_perplexity:
        layer_of, ppl = row_layers(edits, n_rows), np.full(n_rows, np.nan)
        if plain is None:  # the prompts are edited in the decode: the unedited ones once, for the rescoring
            ids, mask, pos, _ = pad_batch(prompts, pad, "left", device)
            o = model.base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                           **cache_kwargs(model.base, new_cache(model)))
            plain = (output_cache(o), unembed(model, o.last_hidden_state[:, -1]).float(), mask)
    chunks, heads = _chunks(prompts, row_prompt, shared_prefix, batch_rows)
    prefixes: dict[int, tuple] = {}
    for tail, uniq in heads.items():  # unedited prefills of the prompt heads, one per tail length
        ids, mask, pos, _ = pad_batch([prompts[p][: len(prompts[p]) - tail] for p in uniq], pad, "left", device)
        out = model.base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         **cache_kwargs(model.base, new_cache(model)))  # no logits: nothing reads them
        prefixes[tail] = (output_cache(out), mask, {p: i for i, p in enumerate(uniq)})
    batches = 0
    for idx, tail in chunks:
        rows = idx.tolist()
        sub = row_prompt_t[idx]
        tracker = PositionTracker(continues_prompt=tail > 0)
        chunk_edits = edits.take(idx)
        hooks = {layer: chunk_edits.hook(tracker, window, layer) for layer in chunk_edits.layers}
        rec = None
        if clean_perplexity:  # the clean states first in each recorded block's chain, before its edit
            rec = CleanStates(sorted(set(layer_of[rows].tolist()) - {-1}) or [model.n_layers - 1])
            hooks = {**hooks, **{x: chain_hooks(rec.hook(x), hooks.get(x)) for x in rec.layers}}
        choose = _Chooser(sampling, [seeds[i] for i in rows])
        with installed(model, hooks, tracker):
            if shared is not None:  # this chunk's rows of the shared prompt cache (the source stays intact)
                cache = fork_cache(shared[0], sub.to(device))
                logits, mask = shared[1][sub.to(device)], shared[2][sub.to(device)]
            elif tail > 0:  # the shared heads from the cache, then each prompt's last `tail` tokens under the edits
                pre_cache, pre_mask, at = prefixes[tail]
                which = torch.as_tensor([at[p] for p in sub.tolist()], device=device)
                cache = fork_cache(pre_cache, which)
                ids = torch.as_tensor([list(prompts[p][len(prompts[p]) - tail:]) for p in sub.tolist()],
                                      dtype=torch.long, device=device)  # (rows, tail)
                mask = torch.cat([pre_mask[which], torch.ones_like(ids)], dim=1)
                pos = positions_from_mask(mask)[:, -tail:]
                out = model.hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                               **cache_kwargs(model.hf, cache), **keep)
                cache, logits = output_cache(out), out.logits[:, -1].float()
            else:
                ids, mask, pos, _ = pad_batch([prompts[i] for i in sub.tolist()], pad, "left", device)
                if prefill is not None:
                    logits, cache = prefill(ids, mask, pos, sub)
                else:
                    out = model.hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                                   **cache_kwargs(model.hf, new_cache(model)), **keep)
                    cache, logits = output_cache(out), out.logits[:, -1].float()
            if first_step is not None:
                first_step(idx, logits)
            fed, got_gap, n_kept = _steps(model, cache, logits, mask, choose, max_new_tokens, pad, stop, keep,
                                          progress, rec)
        got = fed.tolist()
        for j, r in enumerate(rows):
            tokens[r], gaps[r] = got[j][: n_kept[j]], got_gap[j][: n_kept[j]]
        if rec is not None:
            ppl[rows] = clean_perplexity_of(model, rec, layer_of[rows], [tokens[r] for r in rows], fed, plain,
                                            sub.to(device))
        batches += 1
    return Decoded(tokens=tokens, gaps=[np.asarray(g, dtype=np.float32) for g in gaps],
                   seconds=time.perf_counter() - t0, perplexity=ppl,
                   prefill_rows=len(prompts) if share_prefill else n_rows, batches=batches)


def _steps(model, cache: Any, logits: torch.Tensor, mask: torch.Tensor, choose: _Chooser, max_new_tokens: int,
           pad: int, stop: set[int], keep: Mapping[str, Any], progress: Any,
           rec: CleanStates | None = None) -> tuple[torch.Tensor, np.ndarray, list[int]]:
    """The token-by-token loop of one chunk after its prefill: ``logits`` ``(rows, vocab)`` of the
    prompts' last column. Returns per row the chosen tokens, their gaps and how many of them are the
    row's own (through its first end-of-sequence token; later steps feed it the pad token); the
    tokens ``(rows, steps)`` stay on the device. ``rec`` records the clean states of the step forwards.

    The KV cache gets room for every step up front (``reserve_cache``: in-place writes, no copy of
    the whole cache per step) and the tokens stay on the device until the loop ends (one host sync
    per step, for "is every row done?").
    """
    rows, device = logits.shape[0], logits.device
    cache = reserve_cache(cache, max_new_tokens - 1)
    pos = positions_from_mask(mask)[:, -1:]  # (rows, 1)
    stop_t = torch.as_tensor(sorted(stop), dtype=torch.long, device=device)
    toks = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=device)  # (rows, steps)
    gaps = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
    n_kept = torch.zeros(rows, dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        nxt, gap = choose(logits)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        toks[:, step], gaps[:, step] = nxt, gap
        n_kept += (~done).long()
        done = done | torch.isin(nxt, stop_t)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos + 1
        if rec is not None:
            rec.active = True
        out = model.hf(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                       **cache_kwargs(model.hf, cache), **keep)
        if rec is not None:
            rec.active = False
        cache, logits = output_cache(out), out.logits[:, -1].float()
        if progress is not None:
            progress.update(rows)
    return toks, gaps.cpu().numpy(), n_kept.tolist()


def _chunks(prompts: Sequence[Sequence[int]], row_prompt: Sequence[int], shared_prefix: Sequence[int] | None,
            batch_rows: int) -> tuple[list[tuple[torch.Tensor, int]], dict[int, list[int]]]:
    """The chunks of rows to decode, each ``(row indices, tail)`` (``tail`` 0: a full prefill),
    and per tail length the prompts whose heads are prefilled once."""
    n_rows = len(row_prompt)
    if shared_prefix is None:
        return [(torch.arange(lo, min(lo + batch_rows, n_rows)), 0) for lo in range(0, n_rows, batch_rows)], {}
    groups: dict[int, list[int]] = {}
    for r in range(n_rows):
        n = len(prompts[row_prompt[r]])
        keep = min(max(int(shared_prefix[r]), 0), n - 1)  # at least the last token runs under the edits
        # share only a head at least as long as the tail: every tail length is a group of its own
        # (one more decode loop), which pays only when most of the prompt is shared
        groups.setdefault(n - keep if 0 < n - keep <= keep else 0, []).append(r)
    chunks, heads = [], {}
    for tail in sorted(groups):
        rows = groups[tail]
        if tail:
            heads[tail] = sorted({int(row_prompt[r]) for r in rows})
        chunks += [(torch.as_tensor(rows[lo: lo + batch_rows], dtype=torch.long), tail)
                   for lo in range(0, len(rows), batch_rows)]
    return chunks, heads


def stack_rows(per_row: Sequence[Mapping[int, np.ndarray]], layers: Sequence[int], d: int, model) -> dict[int, torch.Tensor]:
    """``[{layer: (d,)}] * rows`` -> ``{layer: (rows, d)}`` on the model's device and dtype, zeros where absent."""
    out = {}
    for layer in layers:
        arr = np.zeros((len(per_row), d), dtype=np.float64)
        for r, m in enumerate(per_row):
            if layer in m:
                arr[r] = m[layer]
        out[layer] = torch.as_tensor(arr, dtype=model.dtype, device=model.device)
    return out
