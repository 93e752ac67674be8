"""The rows of a patching sweep before decoding: ``PatchPlan`` (every row and its edit), the
random-patch directions, and the per-row edits as decode tensors (``models.decode.RowEdits``).

``PatchSweep.plan`` (``emoscope.patching.sweep``, which re-exports ``PatchPlan``) lays the rows
out and calls :func:`random_patch_directions` and :func:`plan_edits`; the module doc there says
what each row writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from emoscope.core.directions import random_layer_directions
from emoscope.models.decode import RowEdits

__all__ = ["PatchPlan", "random_patch_directions", "plan_edits"]


@dataclass
class PatchPlan:
    """The rows of a sweep before decoding: ``table`` (one row per output: kind, source, layer,
    positions, prompt_id, alignment counts, delta norm) and the per-row ``edits``. ``values[r]``
    holds what row ``r`` writes at its layer (``(n, d)`` prompt states, end-aligned) and
    ``clean[r]`` the target's clean states at those columns, for checks."""

    table: pd.DataFrame
    edits: RowEdits
    values: list[torch.Tensor | None]
    clean: list[torch.Tensor | None]


def random_patch_directions(model: Any, layers: Sequence[int], n_random: int, seed: int, random_kind: str,
                            d: int) -> list[tuple[str, str, dict[int, torch.Tensor]]]:
    """``(row name, random kind, {layer: unit direction})`` per random draw. Covariance-matched
    draws come from their own seeded stream (the same normals through the covariance factor
    would correlate them with the isotropic draws), as in the steering sweep."""
    if not n_random:
        return []
    out = []
    kinds = ["isotropic", "covariance"] if random_kind == "both" else [random_kind]
    for rkind in kinds:
        if rkind == "isotropic":
            draws = random_layer_directions(d, layers, n_random, seed)
        else:
            from emoscope.vectors.strength import neutral_covariance

            cov = neutral_covariance(model, layers)
            draws = random_layer_directions(d, layers, n_random, np.random.default_rng([seed, 1]),
                                            cov=cov)
        stem = "random-" if rkind == "isotropic" else "random-cov-"
        out += [(f"{stem}{k}", rkind, {layer: torch.as_tensor(dr[layer], dtype=torch.float32)
                                       for layer in layers}) for k, dr in enumerate(draws)]
    return out


def plan_edits(model: Any, layers: Sequence[int], table: pd.DataFrame, values: list, gens: list, adds: list,
               d: int) -> RowEdits:
    """The per-row edits of ``table``'s rows at each of ``layers``: ``values[r]`` (``(n, d)``,
    end-aligned) replaces the prompt states, ``gens[r]`` (``(d,)``) every generated state, and
    ``adds[r]`` (``(d,)``) is added at every generated position; ``None`` leaves a row alone."""
    n_rows = len(table)
    edits = RowEdits()
    layer_of = table["layer"].to_numpy()
    # kept on the CPU in the model's dtype (what the hook writes); moved to the device per chunk
    store = model.dtype if model.dtype in (torch.float16, torch.bfloat16) else torch.float32
    for layer in layers:
        rows = [r for r in range(n_rows) if layer_of[r] == layer]
        width = max([len(values[r]) for r in rows if values[r] is not None] + [0])
        if width:
            val = torch.zeros(n_rows, width, d, dtype=store)
            mask = torch.zeros(n_rows, width, dtype=torch.bool)
            for r in rows:
                v = values[r]
                if v is not None and len(v):
                    val[r, width - len(v):] = v
                    mask[r, width - len(v):] = True
            edits.replace[layer], edits.replace_mask[layer] = val, mask
        if any(gens[r] is not None for r in rows):
            g = torch.zeros(n_rows, d)
            gm = torch.zeros(n_rows, dtype=torch.bool)
            for r in rows:
                if gens[r] is not None:
                    g[r], gm[r] = gens[r], True
            edits.replace_generated[layer], edits.replace_generated_mask[layer] = g, gm
        if any(adds[r] is not None for r in rows):
            delta = torch.zeros(n_rows, d)
            for r in rows:
                if adds[r] is not None:
                    delta[r] = adds[r]
            edits.delta[layer] = delta.to(device=model.device, dtype=model.dtype)
    return edits
