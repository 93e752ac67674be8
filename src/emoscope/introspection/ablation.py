"""Ablating a direction in injection cells: the checked unit directions and the hooks that
remove their projection over the injection window.

With ``score_cells(..., ablate={layer: u})`` (``emoscope.introspection.cells``), a cell with
``Injection.ablate`` has, at its layer and over the same window as the injection, the projection
on the unit direction ``u`` removed *after* the vector is added,
``h' = (h + delta) - ((h + delta) . u) u``; at that layer only, so later blocks may write the
direction back (the ablation removes what reaches them from the injected layer, not what they
compute). A cell with ``ablate=True`` and ``scale=0`` is the ablated baseline at that layer.

- ``ablation_directions``: unit directions per layer from a ``ConceptVector`` (re-exported by
  ``cells``);
- ``AblationHooks``: the forward hooks, for forwards that run every block;
- ``ablate_rows`` / ``ablation_masks``: the same edit on a known residual (the early-block replay).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emoscope.errors import InputError
from emoscope.models.interventions import replace_block_output
from emoscope.models.standard import StandardModel, block_output

if TYPE_CHECKING:
    from emoscope.introspection.cells import Injection

__all__ = ["ablation_directions", "AblationHooks", "ablate_rows", "ablation_masks"]


def ablation_directions(vector: Any, layers: Sequence[int], d_model: int,
                        name: str = "ablate") -> dict[int, np.ndarray]:
    """Unit ``(d_model,)`` directions per layer from a ``ConceptVector`` (or ``{layer: array}``),
    checked: width ``d_model``, every one of ``layers`` present and non-zero. One-line
    ``InputError`` otherwise.

    >>> ablation_directions({1: np.array([3.0, 4.0])}, [1], 2)[1].astype(float).round(3).tolist()
    [0.6, 0.8]
    """
    vecs = getattr(vector, "vectors", vector)
    label = getattr(vector, "name", name)
    if not isinstance(vecs, dict) or not vecs:
        raise InputError(f"{name} vector must be a ConceptVector (one direction per layer), got {type(vector).__name__}")
    out = {}
    for layer in layers:
        if int(layer) not in vecs:
            raise InputError(f"{name} vector {label!r} has no layer {int(layer)} (it has {sorted(vecs)}); "
                             f"build it with the swept layers {list(layers)}")
        u = np.asarray(vecs[int(layer)], dtype=np.float64)
        if u.ndim != 1 or u.shape[0] != d_model:
            raise InputError(f"{name} vector {label!r} has width {u.shape[-1] if u.ndim else 0} at layer {int(layer)}, "
                             f"the model has d_model={d_model}; use a vector fitted on this model")
        norm = np.linalg.norm(u)
        if not np.isfinite(norm) or norm == 0:
            raise InputError(f"{name} vector {label!r} is zero or not finite at layer {int(layer)}")
        out[int(layer)] = (u / norm).astype(np.float32)
    return out


def ablation_masks(rows: Sequence[Injection], window: torch.Tensor) -> dict[int, torch.Tensor]:
    """``{layer: (B, S)}``: the window of the rows ablated at ``layer``, zeros elsewhere."""
    out = {}
    for layer in sorted({c.layer for c in rows if c.ablate}):
        flag = torch.tensor([float(c.ablate and c.layer == layer) for c in rows], device=window.device)
        out[layer] = window * flag[:, None]
    return out


def ablate_rows(h: torch.Tensor, u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``h - ((h . u) u)`` where ``mask`` (``(B, S)``) is 1; ``h`` unchanged elsewhere."""
    u = u.to(device=h.device, dtype=h.dtype)
    return h - ((h * u).sum(-1, keepdim=True) * mask[..., None].to(device=h.device, dtype=h.dtype)) * u


class AblationHooks:
    """Forward hooks that ablate ``dirs[layer]`` for the rows of the current forward (``state``:
    ``{layer: (delta or None, (B, S) mask)}``). They run before the Injector adds ``delta``, so
    they remove ``((h + delta) . u) u``: the same as adding first, then ablating."""

    def __init__(self, dirs: dict[int, torch.Tensor]) -> None:
        self.dirs = dirs
        self.state: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}

    def _hook(self, layer: int):  # noqa: ANN202
        def hook(_module, _inputs, output):  # noqa: ANN001, ANN202
            if layer not in self.state:
                return None
            delta, mask = self.state[layer]
            h = block_output(output)
            u = self.dirs[layer].to(device=h.device, dtype=h.dtype)  # the block's device (sharded models)
            full = h if delta is None else h + delta.to(device=h.device, dtype=h.dtype)
            m = mask[..., None].to(device=h.device, dtype=h.dtype)
            return replace_block_output(output, h - ((full * u).sum(-1, keepdim=True) * m) * u)
        return hook

    @contextlib.contextmanager
    def installed(self, model: StandardModel) -> Iterator[None]:
        handles = [model.blocks[layer].register_forward_hook(self._hook(layer)) for layer in self.dirs]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self.state = {}

