"""Score many injection cells with batched forwards over a shared prefix; no generation.

A cell is a trial (prompt) plus an optional injection: a vector from a bank, a layer and a
scale (the norm of the added vector, raw units). For every cell the answer position gives
the yes-minus-no logit difference, the yes/no probabilities beside it, and the logit lens of
the difference at every layer (final norm and unembedding applied to ``resid[l]``). With
``attention=True`` a second pass in eager attention records, per layer and head, the share of
attention that the answer position pays to the injection window.

Ablation (``Injection.ablate`` with ``score_cells(..., ablate={layer: u})``): at the cell's layer,
over the same window as the injection, the projection on a unit direction is removed after the
vector is added; the directions and hooks are in ``emoscope.introspection.ablation``, which says how.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emoscope._progress import progress as _progress
from emoscope.errors import InputError, LayerError
from emoscope.introspection.ablation import (
    AblationHooks,
    ablate_rows,
    ablation_directions,
    ablation_masks,
)
from emoscope.introspection.measure import AnswerTokens, yes_no_diff
from emoscope.introspection.trials import Trial
from emoscope.models.batching import pad_batch
from emoscope.models.interventions import (
    Injector,
    eager_attention,
    replay_blocks,
)
from emoscope.models.kvcache import cache_kwargs, common_prefix_length, fork_cache, prefix_cache
from emoscope.models.logits import unembed
from emoscope.models.standard import StandardModel

__all__ = ["Injection", "CellScores", "CellScorer", "cell_batches", "score_cells", "shared_prefix_length", "logits_from_final",
           "ablation_directions"]


@dataclass(frozen=True)
class Injection:
    """One cell: ``trial`` (index into the trials), and what is added: row ``vector`` of the
    bank times ``scale`` at block ``layer``, over the trial's window. ``layer=None``: no
    injection (the baseline). ``ablate``: then remove the projection on ``score_cells``'s
    ablation direction at ``layer`` over the same window (see the module doc).

    >>> Injection(trial=0).layer is None, Injection(1, layer=12, vector=3, scale=40.0).scale
    (True, 40.0)
    """

    trial: int
    layer: int | None = None
    vector: int | None = None
    scale: float = 0.0
    ablate: bool = False


@dataclass
class CellScores:
    """Per cell: ``logit_diff`` (n,), ``p_yes``/``p_no`` (n,), ``lens`` (n, n_layers) and, when
    asked, ``attention`` (n, n_layers, n_heads): attention mass from the answer to the window;
    with ``keep_resid``, ``resid`` (n, n_layers, d_model): ``resid[l]`` at the answer position
    (after any injection and ablation)."""

    logit_diff: np.ndarray
    p_yes: np.ndarray
    p_no: np.ndarray
    lens: np.ndarray
    attention: np.ndarray | None = None
    prefix_length: int = 0
    resid: np.ndarray | None = None


def shared_prefix_length(trials: Sequence[Trial]) -> int:
    """Tokens before every window that all trials share: the part computed once."""
    return min(common_prefix_length([t.ids for t in trials]), min(t.window_start for t in trials))


#: the unembedding of final-normed states (``emoscope.models.logits.unembed``), under its old name
logits_from_final = unembed


def _check(model: StandardModel, trials: Sequence[Trial], cells: Sequence[Injection], bank: torch.Tensor,
           ablate: dict[int, torch.Tensor]) -> None:
    if not trials or not cells:
        raise InputError("nothing to score: no trials or no cells")
    for c in cells:
        if not 0 <= c.trial < len(trials):
            raise InputError(f"cell refers to trial {c.trial}, but there are {len(trials)} trials")
        if c.layer is not None:
            if not 0 <= c.layer < model.n_layers:
                raise LayerError(f"layer {c.layer} is out of range for {model.name} (0..{model.n_layers - 1})")
            if c.vector is None or not 0 <= c.vector < bank.shape[0]:
                raise InputError(f"cell at layer {c.layer} needs a vector index in 0..{bank.shape[0] - 1}")
        if c.ablate and (c.layer is None or c.layer not in ablate):
            raise InputError(f"an ablated cell needs a layer with an ablation direction (given for layers "
                             f"{sorted(ablate)}), got layer {c.layer}")


@torch.inference_mode()
def score_cells(model: StandardModel, trials: Sequence[Trial], cells: Sequence[Injection],
                bank: torch.Tensor | np.ndarray | None, tokens: AnswerTokens, *, batch_size: int = 64,
                share_prefix: bool = True, skip_early: bool = True, attention: bool = False,
                ablate: Any = None, keep_resid: bool = False, progress: bool = False) -> CellScores:
    """Score ``cells`` in batches. ``bank``: ``(n_vectors, d_model)`` rows the cells index.
    ``ablate``: ``{layer: (d_model,) direction}`` (normalised here) for the cells with
    ``ablate=True`` (see the module doc). ``keep_resid``: also return ``resid[l]`` at the answer
    position of every cell (``CellScores.resid``; memory ``n × n_layers × d_model``).

    Two exact shortcuts, both on by default:

    - ``share_prefix``: the tokens before every window (identical for all trials) run once;
      their KV cache is expanded over each batch.
    - ``skip_early``: an injection at layer ``l`` leaves blocks ``0..l`` unchanged, so their
      residual comes from one uninjected pass per trial and only blocks after ``l`` run per
      cell (batches then hold one layer each). Not used for the attention pass.

    Switching them off gives the same numbers to float precision, slower.

    >>> cells = [Injection(0), Injection(0, layer=12, vector=0, scale=50.0)]   # doctest: +SKIP
    >>> score_cells(model, trials, cells, bank, answer_tokens(model.tokenizer)).logit_diff  # doctest: +SKIP
    array([-1.9, 0.4], dtype=float32)
    """
    scorer = CellScorer(model, trials, bank, tokens, share_prefix=share_prefix, skip_early=skip_early,
                        attention=attention, ablate=ablate)
    return scorer.score(cells, batch_size=batch_size, keep_resid=keep_resid, progress=progress)


class CellScorer:
    """``score_cells`` in two steps, so that many calls on the same trials and bank (the work
    units of a sweep) share one setup: the prefix KV cache and the uninjected pass over every
    trial are computed once, on the first :meth:`score`. Same arguments as ``score_cells``."""

    @torch.inference_mode()
    def __init__(self, model: StandardModel, trials: Sequence[Trial], bank: torch.Tensor | np.ndarray | None,
                 tokens: AnswerTokens, *, share_prefix: bool = True, skip_early: bool = True,
                 attention: bool = False, ablate: Any = None) -> None:
        if bank is None:
            bank = torch.zeros(1, model.d_model)
        bank = torch.as_tensor(np.asarray(bank) if not isinstance(bank, torch.Tensor) else bank)
        bank = bank.to(device=model.device, dtype=torch.float32)
        if bank.dim() != 2 or bank.shape[1] != model.d_model:
            raise InputError(f"vector bank must be (n, {model.d_model}), got {tuple(bank.shape)}")
        dirs = {int(k): torch.as_tensor(v, dtype=torch.float32, device=model.device)
                for k, v in ablation_directions(ablate, getattr(ablate, "layers", None) or sorted(ablate),
                                                model.d_model).items()} if ablate is not None else {}
        self.model, self.trials, self.bank, self.dirs = model, trials, bank, dirs
        self.skip, self.attention = skip_early and not attention, attention
        plen = shared_prefix_length(trials) if share_prefix else 0
        self.run = _Run(model, trials, bank, tokens, plen, prefix_cache(model, trials[0].ids[:plen]), attention)
        self.run.ablation = AblationHooks(dirs)
        self._residuals = False

    @torch.inference_mode()
    def score(self, cells: Sequence[Injection], *, batch_size: int = 64, keep_resid: bool = False,
              progress: bool = False) -> CellScores:
        model, trials, run, skip = self.model, self.trials, self.run, self.skip
        _check(model, trials, cells, self.bank, self.dirs)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        n = len(cells)
        out = CellScores(np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32),
                         np.empty((n, model.n_layers), np.float32),
                         np.empty((n, model.n_layers, model.n_heads), np.float32) if self.attention else None,
                         run.plen,
                         np.empty((n, model.n_layers, model.d_model), np.float32) if keep_resid else None)
        batches = cell_batches(cells, trials, batch_size, skip)
        # the ablation hooks go on before the Injector's, so they run first and the Injector's capture
        # (the logit lens) sees the ablated residual
        with run.ablation.installed(model), Injector(model) as inj, (
                eager_attention(model) if self.attention else contextlib.nullcontext()):
            if skip and not self._residuals:
                run.cache_residuals(inj)
                self._residuals = True
            for batch in _progress(batches, desc="introspect", unit="batch") if progress else batches:
                run.batch(inj, [cells[i] for i in batch], batch, out, skip)
        return out


def cell_batches(cells: Sequence[Injection], trials: Sequence[Trial], batch_size: int, skip: bool = True) -> list[list[int]]:
    """The batches ``score_cells`` runs, as lists of cell indices: with ``skip`` (early blocks
    replayed) one layer per batch; cells of the same prompt together (little padding)."""
    key = (lambda i: (-1 if cells[i].layer is None else cells[i].layer, len(trials[cells[i].trial].ids),
                      cells[i].trial)) if skip else (lambda i: (len(trials[cells[i].trial].ids), cells[i].trial))
    batches: list[list[int]] = []
    for i in sorted(range(len(cells)), key=key):
        same = skip and batches and cells[batches[-1][0]].layer == cells[i].layer
        if batches and len(batches[-1]) < batch_size and (same or not skip):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class _Run:
    """State shared by the batches of one ``score_cells`` call."""

    def __init__(self, model: StandardModel, trials: Sequence[Trial], bank: torch.Tensor, tokens: AnswerTokens,
                 plen: int, cache: object, attention: bool) -> None:
        self.model, self.trials, self.bank, self.tokens = model, trials, bank, tokens
        self.plen, self.cache, self.attention = plen, cache, attention
        self.rows = torch.tensor(tokens.ids, device=model.device)
        self.resid: list[list[torch.Tensor]] = []   # [layer][trial] -> (suffix_len, d), uninjected
        self.forms: dict[int, int] = {}
        self.ablation = AblationHooks({})

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> object:
        B = ids.shape[0]
        full = torch.cat([torch.ones(B, self.plen, dtype=mask.dtype, device=mask.device), mask], 1)
        return self.model.base(input_ids=ids, attention_mask=full, use_cache=self.cache is not None,
                               output_attentions=self.attention,
                               **cache_kwargs(self.model.base, fork_cache(self.cache, B)))

    def cache_residuals(self, inj: Injector) -> None:
        """One uninjected pass over every trial; keep ``resid[l]`` at every suffix position."""
        suffix = [t.ids[self.plen:] for t in self.trials]
        ids, mask, _, _ = pad_batch(suffix, self.model.tokenizer.pad_token_id or 0, "right", self.model.device)
        inj.deltas, inj.gather = {}, torch.arange(ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
        self.forward(ids, mask)
        self.forms = dict(inj.forms)
        self.resid = [[inj.captured[layer][t, :len(s)] for t, s in enumerate(suffix)]
                      for layer in range(self.model.n_layers)]

    def batch(self, inj: Injector, rows: Sequence[Injection], where: list[int], out: CellScores, skip: bool) -> None:
        model, plen, dev = self.model, self.plen, self.model.device
        suffix = [self.trials[c.trial].ids[plen:] for c in rows]
        ids, mask, _, _ = pad_batch(suffix, model.tokenizer.pad_token_id or 0, "right", dev)
        B, S = ids.shape
        length = mask.sum(1)                                                   # (B,)
        ans = length - 1                                                       # answer index in the suffix
        start = torch.tensor([self.trials[c.trial].window_start - plen for c in rows], device=dev)
        pos = torch.arange(S, device=dev)
        window = ((pos[None] >= start[:, None]) & (pos[None] < length[:, None])).float()   # (B, S)
        deltas = _deltas(rows, self.bank, window)
        masks = ablation_masks(rows, window)
        inj.captured = [None] * model.n_layers
        inj.gather = ans
        layer = rows[0].layer
        if skip and layer is not None:
            # blocks 0..layer are the uninjected pass plus, at `layer`, the injection (and ablation)
            dtype, at = self.resid[layer][0].dtype, self.resid[layer][0].device  # the block's device
            value = torch.zeros(B, S, model.d_model, device=at, dtype=dtype)
            for r, c in enumerate(rows):
                value[r, :len(suffix[r])] = self.resid[layer][c.trial]
            value = value + deltas[layer].to(device=at, dtype=dtype)
            if layer in masks:
                value = ablate_rows(value, self.ablation.dirs[layer], masks[layer])
            inj.deltas, self.ablation.state = {}, {}
            with replay_blocks(model, layer, value, self.forms):
                o = self.forward(ids, mask)
            for i in range(layer):
                inj.captured[i] = torch.stack([self.resid[i][c.trial][int(a)] for c, a in zip(rows, ans, strict=True)])
            inj.captured[layer] = value[torch.arange(B, device=at), ans.to(at)]
        else:
            inj.deltas = deltas
            self.ablation.state = {layer: (deltas.get(layer), m) for layer, m in masks.items()}
            o = self.forward(ids, mask)
            self.ablation.state = {}
        last = o.last_hidden_state                                             # on the final block's device
        final = last[torch.arange(B, device=last.device), ans.to(last.device)]  # (B, d)
        logp = unembed(model, final).float().log_softmax(-1)  # the answer position only: p_yes, p_no need the whole row
        sub = logp[:, self.rows]
        ny = len(self.tokens.yes_ids)
        out.logit_diff[where] = (sub[:, :ny].logsumexp(-1) - sub[:, ny:].logsumexp(-1)).cpu().numpy()
        out.p_yes[where] = sub[:, :ny].exp().sum(-1).cpu().numpy()
        out.p_no[where] = sub[:, ny:].exp().sum(-1).cpu().numpy()
        resid = torch.stack([c.to(dev) for c in inj.captured], 1)              # (B, L, d)
        lens_logits = unembed(model, model.final_norm(resid), self.rows)  # the yes/no rows only
        out.lens[where] = yes_no_diff(lens_logits, _local(self.tokens)).cpu().numpy()
        if out.attention is not None:
            out.attention[where] = _window_attention(o.attentions, ans, start, plen).cpu().numpy()
        if out.resid is not None:
            out.resid[where] = resid.float().cpu().numpy()


def _deltas(rows: Sequence[Injection], bank: torch.Tensor, window: torch.Tensor) -> dict[int, torch.Tensor]:
    """One ``(B, S, d)`` delta per injected layer; rows injected elsewhere get zeros."""
    out = {}
    for layer in sorted({c.layer for c in rows if c.layer is not None}):
        coef = torch.tensor([c.scale if c.layer == layer else 0.0 for c in rows], device=bank.device)
        idx = torch.tensor([c.vector if c.layer == layer else 0 for c in rows], device=bank.device)
        out[layer] = (coef[:, None] * bank[idx])[:, None, :] * window[:, :, None]
    return out


def _local(tokens: AnswerTokens) -> AnswerTokens:
    """The same yes/no split, indexing the columns of a ``tokens.ids`` slice."""
    ny = len(tokens.yes_ids)
    return AnswerTokens(tuple(range(ny)), tuple(range(ny, ny + len(tokens.no_ids))), tokens.yes_text, tokens.no_text)


def _window_attention(attentions: Sequence[torch.Tensor], ans: torch.Tensor, start: torch.Tensor,
                      plen: int) -> torch.Tensor:
    """``(B, L, H)``: attention mass from each row's answer position to its window.

    Key columns are the last ``ncols`` absolute positions (sliding-window layers keep fewer)."""
    if not attentions or attentions[0] is None:
        raise InputError("the model returned no attention weights; it needs eager attention support")
    out = []
    for a in attentions:                                  # (B, H, S, ncols)
        B, _, S, ncols = a.shape
        abs_pos = torch.arange(ncols, device=a.device) + (plen + S - ncols)
        lo = (start + plen)[:, None]
        hi = (ans + plen)[:, None]
        keep = ((abs_pos[None] >= lo) & (abs_pos[None] <= hi)).to(a.dtype)         # (B, ncols)
        q = a[torch.arange(B, device=a.device), :, ans]                             # (B, H, ncols)
        out.append((q * keep[:, None, :]).sum(-1).float())
    return torch.stack(out, 1)
