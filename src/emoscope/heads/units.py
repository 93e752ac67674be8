"""Head-edited batched decoding (``decode_configs``), one work unit per chunk of rows.

Each chunk of ``batch_rows`` rows is one decode with per-row head masks (see the module doc of
``emoscope.heads.sweep``) and one work unit (``emoscope.core.executor``): a run stores each
finished chunk, so ``--resume`` keeps the configurations already decoded and ``--executor ray``
spreads the chunks over workers. A unit's id hashes the model, the prompts, the window, the
sampling settings, the mean or patched head outputs, the probe and the chunk's rows
(configurations, prompts, seeds).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emoscope.core.executor import Execution, Result, Task, Unit, run_units, unit_id
from emoscope.errors import InputError
from emoscope.heads.select import Head
from emoscope.models.batching import eos_ids, keeps_logits
from emoscope.models.decode import RowEdits, Sampling, decode_rows
from emoscope.models.head_outputs import HeadEdit, edit_heads, head_shape
from emoscope.models.interventions import Window, parse_window
from emoscope.models.prefill import prefill_below
from emoscope.models.standard import block_output

if TYPE_CHECKING:
    from emoscope.heads.sweep import HeadConfig

__all__ = ["decode_configs"]


def _layers_of(heads: Sequence[Head]) -> list[int]:
    return sorted({a for a, _ in heads})


@dataclass
class _Decoded:
    tokens: list[list[int]]
    gaps: list[np.ndarray]
    proj_last: np.ndarray
    proj_gen: np.ndarray
    seconds: float = 0.0
    batches: int = 0


class _Probe:
    """Forward hook on one block: ``resid . u`` for every column of every forward."""

    def __init__(self, u: torch.Tensor) -> None:
        self.u = u
        self.calls: list[torch.Tensor] = []

    def __call__(self, _module: Any, _inputs: Any, output: Any) -> None:
        h = block_output(output)
        self.calls.append((h.float() @ self.u.to(h.device)).cpu())  # (rows, width)


@dataclass
class _Shared:
    """What every chunk of one ``decode_configs`` call needs (CPU tensors)."""

    configs: list[Any]
    prompt_ids: list[list[int]]
    rc: np.ndarray
    rp: np.ndarray
    layers: list[int]
    n_heads: int
    head_dim: int
    window: Window
    share: bool
    patching: bool
    mean_values: dict[int, torch.Tensor] | None
    patch_values: dict[int, torch.Tensor] | None
    patch_tokens: int
    probe_layer: int | None
    u: torch.Tensor | None
    sampling: Sampling
    seeds: list[int]
    max_new_tokens: int
    share_below: bool


def _chunk_edits(sh: _Shared, idx: np.ndarray) -> dict[int, HeadEdit]:
    rows = len(idx)
    edits: dict[int, HeadEdit] = {}
    for layer in sh.layers:
        mask = torch.zeros(rows, sh.n_heads, dtype=torch.bool)
        is_mean = torch.zeros(rows, dtype=torch.bool)
        for j, r in enumerate(idx):
            cfg = sh.configs[sh.rc[r]]
            for a, b in cfg.heads:
                if a == layer:
                    mask[j, b] = True
            is_mean[j] = cfg.method == "mean"
        if not bool(mask.any()):
            continue
        if sh.patching:
            value = sh.patch_values[layer][torch.as_tensor(sh.rp[idx])]  # (rows, K, n_heads, head_dim)
            edits[layer] = HeadEdit(mask, value, last_prompt_tokens=int(sh.patch_tokens))
        elif bool((is_mean[:, None] & mask).any()):
            value = torch.zeros(rows, sh.n_heads, sh.head_dim)
            value[is_mean] = sh.mean_values[layer].float()
            edits[layer] = HeadEdit(mask, value, window=sh.window)
        else:
            edits[layer] = HeadEdit(mask, None, window=sh.window)
    return edits


def _cpu(d: Mapping[int, torch.Tensor] | None) -> dict[int, torch.Tensor] | None:
    return None if d is None else {int(k): v.detach().cpu() for k, v in d.items()}


def _decode_chunk(model: Any, sh: _Shared, bounds: tuple[int, int]) -> Result:
    """One chunk of rows: its head edits, one decode, the probe readings."""
    t0 = time.perf_counter()
    idx = np.arange(*bounds)
    rows = len(idx)
    rp = sh.rp
    edits = _chunk_edits(sh, idx)
    probe_hook = _Probe(sh.u) if sh.u is not None else None
    split = min((a for a, e in edits.items() if bool(e.mask.any())), default=0)
    lower = _Lower(model, split) if (sh.share_below and not sh.share and split > 0
                                     and len(set(rp[idx].tolist())) < rows) else None
    with contextlib.ExitStack() as stack:
        stack.enter_context(edit_heads(model, edits))
        if probe_hook is not None:
            handle = model.blocks[model.check_layer(int(sh.probe_layer))].register_forward_hook(probe_hook)
            stack.callback(handle.remove)
        dec = decode_rows(model, sh.prompt_ids, rp[idx].tolist(), RowEdits(), Window("generated" if sh.share else "all"),
                          max_new_tokens=sh.max_new_tokens, sampling=sh.sampling, row_seeds=[sh.seeds[i] for i in idx],
                          batch_rows=rows, share_prefill=sh.share, prefill=lower)
    p_last = np.full(rows, np.nan)
    p_gen = np.full(rows, np.nan)
    if probe_hook is not None and probe_hook.calls:
        stop = eos_ids(model)
        first = probe_hook.calls[0]  # the prefill, left padded: its last column is the last prompt token
        if sh.share:  # one prefill of the unique prompts, in prompt order
            first = first[torch.as_tensor(rp[idx])]
        elif lower is not None and int(sh.probe_layer) < split:  # read once per unique prompt, below the split
            first = first[lower.inv]
        p_last[:] = first[:, -1].double().numpy()
        gen = probe_hook.calls[1:]
        if gen:
            g = torch.cat(gen, dim=1).double().numpy()  # (rows, fed steps)
            for j in range(rows):
                toks = dec.tokens[j][: g.shape[1]]
                keep = [s for s, t in enumerate(toks) if t not in stop]
                if keep:
                    p_gen[j] = float(g[j, keep].mean())
    return {"tokens": np.asarray([t for toks in dec.tokens for t in toks], dtype=np.int64),
            "lengths": np.asarray([len(t) for t in dec.tokens], dtype=np.int64),
            "gaps": np.concatenate([np.asarray(x, np.float32) for x in dec.gaps]),
            "p_last": p_last, "p_gen": p_gen, "seconds": np.asarray(time.perf_counter() - t0)}


def decode_configs(model: Any, configs: Sequence[HeadConfig], prompt_ids: Sequence[Sequence[int]],
                   row_config: Sequence[int], row_prompt: Sequence[int], *, max_new_tokens: int,
                   positions: str | Window = "all", mean_values: Mapping[int, torch.Tensor] | None = None,
                   patch_values: Mapping[int, torch.Tensor] | None = None, patch_tokens: int = 1,
                   probe: tuple[int, np.ndarray] | None = None, sampling: Sampling | None = None,
                   row_seeds: Sequence[int] | None = None, batch_rows: int = 256, progress: bool = False,
                   share_below: bool = True, execution: Execution | None = None) -> _Decoded:
    """Decode row ``r`` = ``configs[row_config[r]]`` on ``prompt_ids[row_prompt[r]]``, ``batch_rows``
    rows per decode, each chunk with its own per-row head masks. ``patch_values``:
    ``{layer: (n_prompts, K, n_heads, head_dim)}``, the source outputs for each target prompt.

    ``share_below``: when a chunk's prompts are edited (any window but ``generated``) and several
    rows share a prompt, the blocks below the chunk's lowest edited layer are prefilled once per
    unique prompt (``models.prefill.prefill_below``); the outputs are those of a full prefill.
    ``execution``: where the chunks run as work units (default in process, nothing stored)."""
    window = parse_window(positions)
    sampling = sampling if sampling is not None else Sampling()
    n_rows = len(row_config)
    if len(row_prompt) != n_rows:
        raise InputError(f"{n_rows} row configurations but {len(row_prompt)} row prompts")
    if batch_rows < 1:
        raise InputError(f"batch_rows must be positive, got {batch_rows}")
    layers = sorted({a for c in configs for a in _layers_of(c.heads)})
    n_heads, head_dim = head_shape(model, layers[0]) if layers else (int(model.n_heads), 0)
    if any(c.method == "mean" and c.heads for c in configs):
        missing = [x for x in layers if mean_values is None or x not in mean_values]
        if missing:
            raise InputError(f"mean ablation needs mean head outputs for layers {missing}")
    patching = any(c.method == "patch" and c.heads for c in configs)
    if patching:
        missing = [x for x in layers if patch_values is None or x not in patch_values]
        if missing:
            raise InputError(f"head patching needs source head outputs for layers {missing}")
        if any(c.method in ("zero", "mean") and c.heads for c in configs):
            raise InputError("run head patching and head ablation as separate sweeps")
    seeds = [int(s) for s in row_seeds] if row_seeds is not None else [0] * n_rows
    sh = _Shared(list(configs), [list(map(int, p)) for p in prompt_ids], np.asarray(row_config), np.asarray(row_prompt),
                 layers, int(n_heads), int(head_dim), window,
                 # only generated tokens edited: the unedited prompts are prefilled once per chunk and shared
                 window.kind == "generated" and not patching, patching, _cpu(mean_values), _cpu(patch_values),
                 int(patch_tokens), None if probe is None else int(probe[0]),
                 None if probe is None else torch.as_tensor(np.asarray(probe[1], dtype=np.float32)),
                 sampling, seeds, int(max_new_tokens), bool(share_below))
    fingerprint = unit_id("heads-rows", getattr(model, "name", ""), getattr(model, "weights_sha256", ""), sh.prompt_ids,
                          window.spec, sh.max_new_tokens, [sampling.temperature, sampling.top_k, sampling.top_p],
                          sh.mean_values or {}, sh.patch_values or {}, sh.patch_tokens, sh.probe_layer, sh.u,
                          sh.share_below)
    units = []
    for lo in range(0, n_rows, batch_rows):
        hi = min(lo + batch_rows, n_rows)
        content = [[sh.configs[c] for c in sh.rc[lo:hi]], sh.rp[lo:hi], seeds[lo:hi]]
        units.append(Unit(unit_id(fingerprint, content), (lo, hi), size=hi - lo))
    t0 = time.perf_counter()
    results = run_units(Task("heads-rows", _decode_chunk, sh, state=model), units, execution, progress=bool(progress))
    tokens: list[list[int]] = []
    gaps: list[np.ndarray] = []
    for r in results:
        ends = np.cumsum(r["lengths"])
        for a, b in zip(ends - r["lengths"], ends, strict=True):
            tokens.append(r["tokens"][a:b].tolist())
            gaps.append(r["gaps"][a:b])
    p_last = np.concatenate([r["p_last"] for r in results]) if results else np.zeros(0)
    p_gen = np.concatenate([r["p_gen"] for r in results]) if results else np.zeros(0)
    return _Decoded(tokens, gaps, p_last, p_gen, time.perf_counter() - t0, len(units))


class _Lower:
    """``decode_rows``' prefill: blocks below ``split`` once per unique prompt (``prefill_below``);
    keeps ``inv`` (row -> unique prompt) for reading probes below the split."""

    def __init__(self, model: Any, split: int) -> None:
        self.model, self.split = model, int(split)
        self.inv: torch.Tensor | None = None

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                 row_prompt: torch.Tensor) -> tuple[torch.Tensor, Any]:
        keep = {"logits_to_keep": 1} if keeps_logits(self.model) else {}
        logits, cache, self.inv = prefill_below(self.model, ids, mask, pos, row_prompt, self.split, keep)
        return logits, cache

