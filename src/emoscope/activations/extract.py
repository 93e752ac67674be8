"""Batched, padding-aware extraction of ``resid[l]`` (the output of decoder block ``l``).

Fast by construction: ``torch.inference_mode``; texts sorted by token length so batches carry
little padding; the decoder is called without its LM head, so no logits are computed; and a
hook on the last requested block stops the forward there, so later blocks never run. Pooling
happens inside the hooks, so full ``(batch, seq, d_model)`` states are never kept.

Padding and position ids come from ``emoscope.models.batching.pad_batch``: position ids are
derived from the attention mask, so left and right padding give the same numbers (this matters
for absolute-position models such as GPT-2).

Texts longer than the model's context window (``max_position_embeddings``, or ``max_length``
when smaller) are truncated with a ``ContextWarning``, not a crash, and the manifest counts
them (``n_truncated``). The end is kept, with a leading BOS: the default readout is the last
token, whose state should summarise the end of the text with as much context as fits. Only
``token:I`` with ``I >= 0`` keeps the start instead, so token ``I`` is still the text's token ``I``.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoscope._io import sha256_json
from emoscope._progress import progress as _progress_bar
from emoscope.activations.positions import Position, parse_position
from emoscope.activations.result import Activations
from emoscope.errors import InputError
from emoscope.models.batching import fit_model_context, pad_batch
from emoscope.models.standard import StandardModel, block_output

__all__ = ["extract", "tokenize_texts", "dataset_sha256", "truncation_side"]

_STORE_DTYPES = {"float32": np.float32, "float16": np.float16}


class _StopForward(Exception):
    """Raised by the hook on the last requested block: nothing after it needs to run."""


def dataset_sha256(texts: Sequence[str]) -> str:
    return sha256_json(list(texts))


def tokenize_texts(model: StandardModel, texts: Sequence[str], *, add_special_tokens: bool = True,
                   max_length: int | None = None, keep: str = "end") -> list[list[int]]:
    """Token ids per text (no padding), cut to the model's context window (and ``max_length``)
    keeping the ``keep`` end (``ContextWarning``). Empty texts are an ``InputError``."""
    return _tokenize(model, texts, add_special_tokens, max_length, keep)[0]


def truncation_side(position: str | Position) -> str:
    """Which end of an over-long text a readout at ``position`` keeps (see the module doc).

    >>> truncation_side("last"), truncation_side("token:3"), truncation_side("token:-1")
    ('end', 'start', 'end')
    """
    pos = parse_position(position)
    return "start" if pos.kind == "token" and pos.arg >= 0 else "end"


_keep = truncation_side


def _tokenize(model: StandardModel, texts: Sequence[str], add_special_tokens: bool, max_length: int | None,
              keep: str) -> tuple[list[list[int]], int]:
    """``(token ids per text, how many were truncated)``."""
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, not a single string")
    texts = list(texts)
    if not texts:
        raise InputError("no texts given (the list is empty)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text {i} is {type(t).__name__}, not a string")
        if not t.strip():
            raise InputError(f"text {i} is empty")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"text {i} is not valid Unicode (a lone surrogate {t[e.start]!r} at character {e.start}); "
                             "fix the text's encoding") from None
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise InputError(f"max_length must be a positive number of tokens, got {max_length!r}")
    full = [list(ids) for ids in model.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
    ids = fit_model_context(model, full, limit=max_length, keep=keep)
    return ids, sum(len(a) != len(b) for a, b in zip(full, ids, strict=True))


def _cache_key(model: StandardModel, texts_sha: str, layers: list[int], pos: Position, store: str,
               add_special_tokens: bool, max_length: int | None, n_cut: int = 0) -> str:
    from emoscope import __version__

    return sha256_json({
        "weights": model.weights_sha256, "dataset": texts_sha, "layers": layers, "position": pos.spec,
        "dtype": store, "model_dtype": str(model.dtype), "special": add_special_tokens,
        "max_length": max_length, "version": __version__, "format": 1,
        # user max_length once kept the start, and over-long texts were once read whole: the
        # truncation rule gets keys of its own (keys of texts that fit are unchanged)
        **({"keep": _keep(pos)} if max_length is not None or n_cut else {}),
        **({"n_truncated": n_cut} if n_cut else {}),
    })


def _default_cache_root() -> Path:
    from emoscope.models.loading import cache_dir

    return cache_dir() / "activations"


def extract(model: StandardModel, texts: Sequence[str], layers: Any = "all", position: str | Position = "last", *,
            batch_size: int = 32, dtype: str = "float32", padding_side: str = "right",
            add_special_tokens: bool = True, max_length: int | None = None,
            cache: bool | str | os.PathLike[str] = True, out: str | os.PathLike[str] | None = None,
            progress: bool = True) -> Activations:
    """Read ``resid[l]`` for each text at ``position`` for the requested layers.

    ``layers``: ``"all"``, an int, a list, ``"0,5,-1"``, ``"0-14"`` or relative depths
    (floats in [0, 1]). ``dtype`` is the storage dtype (float32 unless asked otherwise);
    the model runs in its own dtype. ``cache=True`` stores results under
    ``$EMOSCOPE_CACHE/activations/<key>``, keyed by the weights hash, the texts, layers,
    position, dtype and emoscope version; a repeat request is read back from there.
    ``out`` additionally writes the result into a directory of your choice.

    >>> acts = extract(model, ["What a lovely gift!", "The bus is late."],
    ...                layers=[0, 15], position="mean")              # doctest: +SKIP
    >>> acts.get(15).shape                                          # doctest: +SKIP
    (2, 576)
    """
    layer_list = model.resolve_layers(layers)
    pos = parse_position(position)
    if dtype not in _STORE_DTYPES:
        raise InputError(f"storage dtype {dtype!r} not supported; use {' or '.join(_STORE_DTYPES)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if out is not None:
        from emoscope._io import ensure_writable_dir

        ensure_writable_dir(out)  # fail before the slow part
    ids, n_cut = _tokenize(model, texts, add_special_tokens, max_length, _keep(pos))
    lengths = [len(s) for s in ids]
    pos.check_lengths(lengths, list(texts))
    texts_sha = dataset_sha256(texts)
    key = _cache_key(model, texts_sha, layer_list, pos, dtype, add_special_tokens, max_length, n_cut)

    cache_root: Path | None = None
    if cache:
        cache_root = _default_cache_root() if cache is True else Path(cache)
        hit_dir = cache_root / key
        if (hit_dir / "manifest.json").is_file():
            acts = Activations.load(hit_dir)
            acts.cache_hit = True
            if out is not None:
                acts.save(out)
            return acts

    data, offsets = _forward_all(model, ids, layer_list, pos, batch_size, padding_side,
                                 _STORE_DTYPES[dtype], progress)
    from emoscope import __version__

    manifest = {
        "model": model.name, "model_source": model.source, "architecture": model.architecture,
        "weights_sha256": model.weights_sha256, "dataset_sha256": texts_sha, "n_texts": len(ids),
        "layers": layer_list, "n_layers": model.n_layers, "d_model": model.d_model,
        "position": pos.spec, "dtype": dtype, "model_dtype": str(model.dtype).replace("torch.", ""),
        "padding_side": padding_side, "batch_size": batch_size, "add_special_tokens": add_special_tokens,
        "max_length": max_length, "n_truncated": n_cut, "truncation_kept": _keep(pos),
        "emoscope_version": __version__, "cache_key": key,
        "resid_convention": "resid[l] = output of decoder block l, before the final norm",
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    acts = Activations(data=data, token_counts=np.asarray(lengths, dtype=np.int64), position=pos.spec,
                       manifest=manifest, offsets=offsets)
    if cache_root is not None:
        acts.save(cache_root / key)
    if out is not None:
        acts.save(out)
    return acts


@torch.inference_mode()
def _forward_all(model: StandardModel, ids: list[list[int]], layers: list[int], pos: Position, batch_size: int,
                 padding_side: str, store: type, progress: bool) -> tuple[dict[int, np.ndarray], np.ndarray | None]:
    n = len(ids)
    order = sorted(range(n), key=lambda i: len(ids[i]))
    last = max(layers)
    pad_id = model.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    pooled = {layer: np.empty((n, model.d_model), dtype=store) for layer in layers} if pos.pooled else None
    ragged: dict[int, list[np.ndarray | None]] = {layer: [None] * n for layer in layers}
    state: dict[str, Any] = {}

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            out = pos.reduce(block_output(output), state["mask"], state["start"])
            state[layer] = out.float().cpu().numpy()
            if layer == last:
                raise _StopForward
        return hook

    handles = [model.blocks[layer].register_forward_hook(make_hook(layer)) for layer in layers]
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    try:
        for batch in _progress_bar(batches, desc="extract", unit="batch") if progress else batches:
            input_ids, mask, pos_ids, start = pad_batch([ids[i] for i in batch], pad_id, padding_side, model.device)
            state.update(mask=mask, start=start)
            try:
                model.base(input_ids=input_ids, attention_mask=mask, position_ids=pos_ids, use_cache=False)
            except _StopForward:
                pass
            for layer in layers:
                out = state.pop(layer)
                if pooled is not None:
                    pooled[layer][batch] = out
                else:
                    counts = [len(ids[i]) for i in batch]
                    for i, chunk in zip(batch, np.split(out, np.cumsum(counts)[:-1]), strict=True):
                        ragged[layer][i] = chunk.astype(store)
    finally:
        for h in handles:
            h.remove()
    if pooled is not None:
        return pooled, None
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in ids])]).astype(np.int64)
    return {layer: np.concatenate(ragged[layer]) for layer in layers}, offsets
