"""Screening: every head's direct contribution to a vector's direction, emotion texts vs baseline.

For a text and a head ``h`` of block ``l``, the head's direct contribution along the unit
direction ``u`` is ``c = (W_O^h z_h) . u = z_h . (W_O^h)^T u`` at the read position (``last``
token by default; ``token:I``, ``mean`` and ``mean_from:K`` pool ``c`` the same way activations
are pooled). ``(W_O^h)^T u`` is computed once per head (``models.head_outputs.head_readout``), so one
forward per batch of texts, with a pre-hook on each screened block's ``o_proj``, gives every head
at once; no loop over heads, and the forward stops after the deepest screened block.

Which direction a head is read against. A vector has one direction per layer it was fitted at.
Head ``(l, h)`` writes into ``resid[l]`` and, through the skip connections, into every later
``resid[L]``; its contribution is measured against:

- ``direction_layer=None`` (default): the vector of block ``l`` itself when the vector has that
  layer, else the vector of the next layer above ``l`` that it has (the first residual layer with
  a direction that the head's write reaches). Heads of blocks above the deepest vector layer write
  into no residual layer that has a direction and are not screened;
- ``direction_layer=L``: the vector of layer ``L`` for every head of blocks ``0..L``.

The table records, per head, the layer whose vector it was read against (``direction_layer``).
Contributions are in residual units along a unit vector, so heads of one block compare directly;
across blocks the residual norm grows with depth, which a ranking by ``diff`` reflects.

Statistic: ``diff`` = mean contribution over the emotion class minus over the baseline class
(``neutral``; ``all``: every other text of the dataset). Null: the same difference with the
labels permuted (class sizes kept), all heads at once per permutation (a matrix product);
``p`` counts the observed value as one permutation (``core.stats.permutation_pvalue``'s rule);
``p_holm`` is Holm across the screened heads. A permutation p cannot go below ``1 / (n + 1)``, so
Holm over ``M`` heads cannot go below ``M / (n + 1)``: by default (``n_permutations=None``) ``n``
is chosen so that this floor is ``alpha / 2`` (at least 1000, rounded up to a thousand), and
the meta records the floor either way. ``rank`` orders the heads by ``diff`` (descending
for ``alternative="greater"``, ascending for ``less``, by ``|diff|`` for ``two-sided``).

>>> res = screen_heads(model, anger, texts, labels, "anger", "neutral")    # doctest: +SKIP
>>> res.table.head(8)                                                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from emoscope.activations.positions import parse_position
from emoscope.core.stats import holm, rng_from
from emoscope.errors import InputError, PositionError
from emoscope.models.batching import pad_batch
from emoscope.models.head_outputs import head_readout, head_shape

__all__ = ["ScreenResult", "screen_directions", "head_projections", "label_contrast", "screen_heads",
           "rank_heads", "enough_permutations", "save_screen", "load_screen", "SCREEN_TABLE", "ALTERNATIVES"]

SCREEN_TABLE = "heads_screen"
ALTERNATIVES = ("greater", "less", "two-sided")


class _Stop(Exception):
    """Raised after the deepest screened block: nothing later needs to run."""


def _layer_arrays(vector: Any) -> dict[int, np.ndarray]:
    vecs = getattr(vector, "vectors", vector)
    if not isinstance(vecs, Mapping) or not vecs:
        raise InputError("the vector must be a ConceptVector or a non-empty {layer: (d,) array} dict")
    return {int(k): np.asarray(v, dtype=np.float64).reshape(-1) for k, v in vecs.items()}


def screen_directions(model: Any, vector: Any, layers: Any = "all",
                      direction_layer: int | None = None) -> dict[int, tuple[int, np.ndarray]]:
    """``{block: (vector layer, unit direction (d,))}`` for the blocks whose heads are screened
    (see the module docstring). ``layers``: the blocks asked for (``"all"``, a list, ...)."""
    vecs = _layer_arrays(vector)
    widths = {v.size for v in vecs.values()}
    if widths != {model.d_model}:
        raise InputError(f"the vector has d_model={sorted(widths)} but {model.name} has d_model={model.d_model}; "
                         "use a vector fitted on this model")
    bad = [layer for layer in vecs if not 0 <= layer < model.n_layers]
    if bad:
        raise InputError(f"the vector has layers {bad} outside {model.name} (layers 0..{model.n_layers - 1})")
    blocks = model.resolve_layers(layers)
    have = sorted(vecs)
    out: dict[int, tuple[int, np.ndarray]] = {}
    if direction_layer is not None:
        dl = model.check_layer(int(direction_layer))
        if dl not in vecs:
            raise InputError(f"direction layer {dl} is not a layer of the vector (it has {have})")
        picks = {b: dl for b in blocks if b <= dl}
    else:
        picks = {}
        for b in blocks:
            above = [x for x in have if x >= b]
            if above:
                picks[b] = above[0]
    for b, layer in picks.items():
        v = vecs[layer]
        norm = float(np.linalg.norm(v))
        if norm == 0:
            raise InputError(f"the vector is zero at layer {layer}: it has no direction")
        out[b] = (layer, v / norm)
    if not out:
        raise InputError(f"no screened block lies at or below a layer of the vector (vector layers {have}, "
                         f"blocks asked for {blocks[0]}..{blocks[-1]})")
    return out


@torch.inference_mode()
def head_projections(model: Any, ids: Sequence[Sequence[int]], directions: Mapping[int, Any], *,
                     position: str = "last", batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """``(n_texts, n_blocks, n_heads)``: each head's direct contribution along ``directions[block]``
    (a ``(d,)`` direction per block, used as given) at ``position``, blocks in sorted order.

    Texts run ``batch_size`` at a time, sorted by length, right padded; the forward stops after
    the deepest block asked for. Float32 math for the projection whatever the model dtype.
    """
    from emoscope._progress import progress as bar

    pos = parse_position(position)
    if not pos.pooled:
        raise PositionError("screening needs one value per text: use last, token:I, mean or mean_from:K, not all")
    if not ids or any(len(s) == 0 for s in ids):
        raise InputError("every screened text needs at least one token")
    pos.check_lengths([len(s) for s in ids])
    blocks = sorted(int(b) for b in directions)
    n_heads = head_shape(model, blocks[0])[0]
    readout = {b: head_readout(model, b, directions[b]).float() for b in blocks}  # (n_heads, head_dim)
    out = np.zeros((len(ids), len(blocks), n_heads), dtype=np.float64)
    state: dict[str, Any] = {}
    last = blocks[-1]

    def make_hook(j: int, block: int):  # noqa: ANN202
        r = readout[block]

        def hook(_module, args, kwargs):  # noqa: ANN001, ANN202
            x = args[0] if args else next(iter(kwargs.values()))  # (batch, seq, n_heads * head_dim)
            z = x.reshape(*x.shape[:2], n_heads, -1).float()
            c = torch.einsum("bshk,hk->bsh", z, r.to(z.device))  # (batch, seq, n_heads)
            state[j] = pos.reduce(c, state["mask"], state["start"]).double().cpu().numpy()
            if block == last:
                raise _Stop
        return hook

    pad = model.tokenizer.pad_token_id
    pad = 0 if pad is None else int(pad)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    handles = [model.attn_out(b).register_forward_pre_hook(make_hook(j, b), with_kwargs=True)
               for j, b in enumerate(blocks)]
    try:
        for batch in bar(batches, desc="heads screen", unit="batch") if progress else batches:
            x, mask, pos_ids, start = pad_batch([ids[i] for i in batch], pad, "right", model.device)
            state.update(mask=mask, start=start)
            try:
                model.base(input_ids=x, attention_mask=mask, position_ids=pos_ids, use_cache=False)
            except _Stop:
                pass
            for j in range(len(blocks)):
                out[batch, j] = state.pop(j)
    finally:
        for h in handles:
            h.remove()
    return out


def label_contrast(values: np.ndarray, is_a: Sequence[bool], n_perm: int, *,
                   seed: int | np.random.Generator | None = 0, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``diff`` ``(M,)`` = mean of ``values`` ``(n, M)`` over rows with ``is_a`` minus over the
    others, and its label-permutation null ``(n_perm, M)``: every column at once per permutation."""
    v = np.asarray(values, dtype=np.float64)
    a = np.asarray(is_a, dtype=bool)
    if v.ndim != 2 or a.shape != (v.shape[0],):
        raise InputError(f"label_contrast needs (n, M) values and n labels, got {v.shape} and {a.shape}")
    n_a, n_b = int(a.sum()), int((~a).sum())
    if n_a < 1 or n_b < 1:
        raise InputError(f"both groups need texts: {n_a} in the class, {n_b} in the baseline")
    diff = v[a].mean(0) - v[~a].mean(0)
    rng = rng_from(seed)
    total = v.sum(0)  # (M,)
    null = np.empty((int(n_perm), v.shape[1]), dtype=np.float64)
    for lo in range(0, int(n_perm), chunk):
        m = min(chunk, int(n_perm) - lo)
        perms = rng.permuted(np.tile(a.astype(np.float64), (m, 1)), axis=1)  # (m, n): one permutation per row
        s_a = perms @ v  # (m, M)
        null[lo: lo + m] = s_a / n_a - (total - s_a) / n_b
    return diff, null


def enough_permutations(n_tests: int, alpha: float = 0.05) -> int:
    """Permutations for which Holm over ``n_tests`` can reach ``alpha / 2``: at least 1000, in thousands.

    >>> enough_permutations(270)
    11000
    """
    need = int(np.ceil(2.0 * n_tests / alpha))
    return max(1000, int(np.ceil(need / 1000.0)) * 1000)


def _pvalues(diff: np.ndarray, null: np.ndarray, alternative: str) -> np.ndarray:
    """Per column, ``(1 + #{null as extreme as diff}) / (1 + n_perm)`` (``permutation_pvalue``'s rule)."""
    if alternative == "greater":
        hits = (null >= diff[None] - 1e-12).sum(0)
    elif alternative == "less":
        hits = (null <= diff[None] + 1e-12).sum(0)
    else:
        hits = (np.abs(null) >= np.abs(diff)[None] - 1e-12).sum(0)
    return (1.0 + hits) / (1.0 + null.shape[0])


def rank_heads(diff: np.ndarray, alternative: str) -> np.ndarray:
    """Rank (1 = top) by ``diff``: descending (greater), ascending (less) or by ``|diff|`` (two-sided)."""
    d = np.asarray(diff, dtype=np.float64)
    key = -d if alternative == "greater" else d if alternative == "less" else -np.abs(d)
    order = np.argsort(key, kind="stable")
    rank = np.empty(d.size, dtype=np.int64)
    rank[order] = np.arange(1, d.size + 1)
    return rank


@dataclass
class ScreenResult:
    """``table``: one row per screened head (``layer, head, diff, p, p_holm, rank`` and more);
    ``contributions`` ``(n_texts, n_heads_screened)`` in the table's row order; ``is_emotion``
    per text; ``meta``."""

    table: pd.DataFrame
    contributions: np.ndarray
    is_emotion: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int) -> list[tuple[int, int]]:
        t = self.table.sort_values("rank").head(int(k))
        return [(int(a), int(b)) for a, b in zip(t["layer"], t["head"], strict=True)]


def screen_heads(model: Any, vector: Any, texts: Sequence[str], labels: Sequence[str], emotion: str,
                 baseline: str = "neutral", *, layers: Any = "all", direction_layer: int | None = None,
                 position: str = "last", n_permutations: int | None = None, alternative: str = "greater",
                 alpha: float = 0.05,
                 seed: int | np.random.Generator | None = 0, batch_size: int = 32,
                 progress: bool = False) -> ScreenResult:
    """Screen every head (see the module docstring) on the ``emotion`` texts against ``baseline``
    (a class, or ``"all"``: every other text). Texts are tokenised like activation extraction
    (special tokens added, no chat template), the way the vector was fitted."""
    if alternative not in ALTERNATIVES:
        raise InputError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    if n_permutations is not None and n_permutations < 1:
        raise InputError(f"n_permutations must be at least 1, got {n_permutations}")
    labels = [str(y) for y in labels]
    if len(labels) != len(texts):
        raise InputError(f"{len(texts)} texts but {len(labels)} labels")
    classes = sorted(set(labels))
    if emotion not in classes:
        raise InputError(f"class {emotion!r} is not among the labels ({', '.join(classes)})")
    if baseline != "all" and baseline not in classes:
        raise InputError(f"baseline {baseline!r} is not among the labels ({', '.join(classes)}); give a class or 'all'")
    keep = [i for i, y in enumerate(labels) if y == emotion or baseline == "all" or y == baseline]
    is_a = np.array([labels[i] == emotion for i in keep])
    if is_a.all():
        raise InputError(f"no baseline texts to contrast {emotion!r} with")
    dirs = screen_directions(model, vector, layers, direction_layer)
    blocks = sorted(dirs)
    from emoscope.activations.extract import truncation_side
    from emoscope.models.batching import fit_model_context

    ids = fit_model_context(model, [list(x) for x in model.tokenizer([texts[i] for i in keep])["input_ids"]],
                            keep=truncation_side(position))
    proj = head_projections(model, ids, {b: dirs[b][1] for b in blocks}, position=position, batch_size=batch_size,
                            progress=progress)  # (n, blocks, heads)
    n_heads = proj.shape[2]
    flat = proj.reshape(len(keep), -1)  # (n, blocks * heads), block-major
    if n_permutations is None:
        n_permutations = enough_permutations(flat.shape[1], alpha)
    diff, null = label_contrast(flat, is_a, n_permutations, seed=seed)
    p = _pvalues(diff, null, alternative)
    sd = null.std(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, (diff - null.mean(0)) / sd, np.nan)
    table = pd.DataFrame({
        "layer": np.repeat(blocks, n_heads), "head": np.tile(np.arange(n_heads), len(blocks)),
        "diff": diff, "p": p, "p_holm": holm(p), "rank": rank_heads(diff, alternative),
        "z": z, "mean_emotion": flat[is_a].mean(0), "mean_baseline": flat[~is_a].mean(0),
        "direction_layer": np.repeat([dirs[b][0] for b in blocks], n_heads),
        "n_emotion": int(is_a.sum()), "n_baseline": int((~is_a).sum()),
    })
    meta = {"emotion": emotion, "baseline": baseline, "position": parse_position(position).spec,
            "direction_layer": direction_layer, "blocks": blocks, "vector_layers": sorted(_layer_arrays(vector)),
            "n_permutations": int(n_permutations), "alternative": alternative, "n_heads": int(n_heads),
            "n_layers": int(model.n_layers), "n_texts": len(keep), "n_screened": int(flat.shape[1]),
            "min_p": 1.0 / (1 + int(n_permutations)),
            "min_p_holm": min(1.0, flat.shape[1] / (1 + int(n_permutations)))}
    return ScreenResult(table=table, contributions=flat, is_emotion=is_a, meta=meta)


# -- a screen on disk: `--from RUN` ------------------------------------------------------------------
def save_screen(run_root: str | os.PathLike[str], meta: Mapping[str, Any], vector: Any | None) -> Path:
    """Write ``RUN/heads/screen.json`` (and the vector it screened with, ``RUN/heads/vector.safetensors``)."""
    from emoscope._io import atomic_write_json

    out = Path(run_root) / "heads"
    out.mkdir(parents=True, exist_ok=True)
    if vector is not None and hasattr(vector, "save"):
        vector.save(out / "vector.safetensors")
    return atomic_write_json(out / "screen.json", json.loads(json.dumps(dict(meta), default=str)))


def load_screen(run_root: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``(heads_screen table, screen meta)`` of a finished run with a heads screen; a one-line
    error (``RunDirError`` / ``InputError``) when ``run_root`` is not one."""
    from emoscope.core.rundir import RunDir

    rd = RunDir.open(run_root)
    table_path = rd.tables / f"{SCREEN_TABLE}.csv"
    meta_path = rd.root / "heads" / "screen.json"
    if not table_path.is_file() or not meta_path.is_file():
        raise InputError(f"{rd.root} has no heads screen (tables/{SCREEN_TABLE}.csv and heads/screen.json); "
                         f"run `emoscope heads screen ... --out {rd.root}` first")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        table = pd.read_csv(table_path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the heads screen of {rd.root}: {e}") from None
    missing = {"layer", "head", "diff", "rank"} - set(table.columns)
    if missing:
        raise InputError(f"{table_path} lacks columns {sorted(missing)}; re-run the heads screen")
    return table, meta
