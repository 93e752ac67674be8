"""The decode loop's fast paths keep its numbers.

- The preallocated KV cache (``kvcache.reserve_cache``): in-place writes give the same logits, bit
  for bit, as the plain concatenating ``DynamicCache``; a fork taken from a reserved cache never
  sees its later writes; past its capacity it falls back to concatenation.
- The perplexity under the unedited model from the decode's own clean states
  (``decode_rows(clean_perplexity=True)``, ``models.rescore``) equals the perplexity scorer run from
  scratch (``steering.scorers.output_perplexity``, itself checked against full logits in
  ``test_logits_where_read.py``), for rows edited at different layers, unedited rows, rows that
  stop early, both windows, greedy and sampled, on four layout families.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoscope.errors import InputError
from emoscope.models.batching import pad_batch, positions_from_mask
from emoscope.models.decode import RowEdits, Sampling, decode_rows
from emoscope.models.interventions import Window
from emoscope.models.kvcache import cache_kwargs, fork_cache, new_cache, output_cache, reserve_cache
from emoscope.steering.scorers import output_perplexity

from .conftest import tiny_model


def _steps(model, cache, mask, first, n):
    """``n`` greedy steps from ``first`` (rows,) with ``cache``; the logits of every step."""
    out, nxt, pos = [], first, positions_from_mask(mask)[:, -1:]
    for _ in range(n):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        pos = pos + 1
        o = model.hf(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                     **cache_kwargs(model.hf, cache))
        cache, logits = output_cache(o), o.logits[:, -1]
        out.append(logits)
        nxt = logits.argmax(-1)
    return torch.stack(out, 1), cache


def _prefill(model):
    ids, mask, pos, _ = pad_batch([[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]], model.tokenizer.pad_token_id,
                                  "left")
    o = model.hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                 **cache_kwargs(model.hf, new_cache(model)))
    return output_cache(o), mask, o.logits[:, -1].argmax(-1)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("extra", [12, 3])  # room for every step, and too little (falls back to concatenation)
def test_reserved_cache_gives_the_same_logits_bit_for_bit(family, extra):
    model = tiny_model(family)
    with torch.inference_mode():
        cache, mask, first = _prefill(model)
        plain, _ = _steps(model, fork_cache(cache, torch.arange(3)), mask, first, 10)
        reserved = reserve_cache(fork_cache(cache, torch.arange(3)), extra)
        kinds = {type(layer).__name__ for layer in reserved.layers}
        got, _ = _steps(model, reserved, mask, first, 10)
    assert torch.equal(got, plain)
    if family != "gemma3_text":
        assert kinds == {"ReservedLayer"}
    else:  # sliding-window layers keep their own class; the full-attention one is reserved
        assert "ReservedLayer" in kinds and len(kinds) == 2


def test_fork_of_a_reserved_cache_is_not_touched_by_its_later_writes():
    model = tiny_model("llama")
    with torch.inference_mode():
        cache, mask, first = _prefill(model)
        reserved = reserve_cache(cache, 8)
        snap = fork_cache(reserved, torch.tensor([2, 0]))  # rows 2 and 0 of what it holds now
        before = [layer.keys.clone() for layer in snap.layers]
        _, after = _steps(model, reserved, mask, first, 4)  # writes 4 more columns in place
        assert after.layers[0].keys.shape[-2] == cache.layers[0].keys.shape[-2] + 4
        assert all(torch.equal(a.keys, b) for a, b in zip(snap.layers, before, strict=True))
        # and the source of the reserved cache is unchanged too
        assert cache.layers[0].keys.shape[-2] == mask.shape[1]
        ref, _ = _steps(model, fork_cache(cache, torch.tensor([2, 0])), mask[[2, 0]], first[[2, 0]], 3)
        got, _ = _steps(model, snap, mask[[2, 0]], first[[2, 0]], 3)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2", "gpt_neo"])
def test_clean_perplexity_equals_the_scorer_from_scratch(family, monkeypatch):
    model = tiny_model(family)
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14]]
    rows = [0, 1, 2, 0, 1, 2, 0, 1]
    d = torch.randn(len(rows), model.d_model, generator=torch.Generator().manual_seed(0)) * 3
    delta = {1: d.clone(), 2: d.clone()}
    delta[1][[0, 1, 2, 6]] = 0  # row 0 unedited; rows 1, 2, 6 at layer 2; rows 3, 4, 5 at layer 1; row 7 at both
    delta[2][[0, 3, 4, 5]] = 0
    for window in ("generated", "all"):
        # tokens that two rows of this greedy decode choose at steps 2 and 4 count as end-of-sequence,
        # so some rows stop early
        first = decode_rows(model, prompts, rows, RowEdits(delta=dict(delta)), Window(window), max_new_tokens=7)
        monkeypatch.setattr(model.hf.generation_config, "eos_token_id",
                            sorted({first.tokens[1][2], first.tokens[4][4]}))
        for sampling in (Sampling(), Sampling(temperature=1.0)):
            dec = decode_rows(model, prompts, rows, RowEdits(delta=dict(delta)), Window(window), max_new_tokens=7,
                              sampling=sampling, row_seeds=list(range(8)), clean_perplexity=True)
            ref = output_perplexity(model, [prompts[r] for r in rows], dec.tokens)
            np.testing.assert_allclose(dec.perplexity, ref, rtol=1e-5)
            if sampling.greedy:
                assert len({len(t) for t in dec.tokens}) > 1  # rows of different lengths
        monkeypatch.undo()


def test_clean_perplexity_refuses_replacement_edits():
    model = tiny_model("llama")
    edits = RowEdits(replace={1: torch.zeros(2, 1, model.d_model)}, replace_mask={1: torch.ones(2, 1, dtype=bool)})
    with pytest.raises(InputError, match="block outputs only"):
        decode_rows(model, [[5, 6, 7]], [0, 0], edits, Window("generated"), max_new_tokens=3, share_prefill=False,
                    clean_perplexity=True)


def test_steering_sweep_perplexity_equals_the_scorer_from_scratch():
    from emoscope.steering import SteeringSweep

    model = tiny_model("llama")
    rng = np.random.default_rng(0)
    vec = {layer: rng.standard_normal(model.d_model) for layer in (1, 2)}
    res = SteeringSweep(model, vec, [1, 2], [-2.0, 2.0], ["The weather today", "Tell me about apples"],
                        max_new_tokens=6, n_random=1, scorers=("perplexity", "repetition"), target="rep4",
                        progress=False).run()
    ids = [list(model.tokenizer(p)["input_ids"]) for p in res.table["prompt"]]
    want = output_perplexity(model, ids, res.tokens)
    np.testing.assert_allclose(res.table["perplexity"].to_numpy(), want, rtol=1e-5)
    assert list(res.table.columns).index("perplexity") < list(res.table.columns).index("distinct_1")
