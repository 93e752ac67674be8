"""KV-cache helpers: both names transformers has used for the cache (``past_key_values`` before
5.24, ``cache`` after) are read and passed correctly."""

from __future__ import annotations

import pytest
import torch

from emoscope.models.kvcache import (
    cache_kwargs,
    common_prefix_length,
    fork_cache,
    input_cache,
    new_cache,
    output_cache,
    past_length,
    prefix_cache,
)

from .conftest import tiny_model


def test_cache_under_either_name_and_a_cached_forward_matches_a_full_one():
    model = tiny_model("llama")
    ids = torch.tensor([[5, 9, 13, 21, 8]])
    with torch.inference_mode():
        full = model.hf(input_ids=ids).logits[0, -1]
        first = model.hf(input_ids=ids[:, :4], use_cache=True, **cache_kwargs(model.hf, new_cache(model)))
        cache = output_cache(first)
        assert past_length(cache) == 4
        nxt = model.hf(input_ids=ids[:, 4:], use_cache=True, **cache_kwargs(model.hf, cache)).logits[0, -1]
    assert torch.allclose(full, nxt, atol=1e-5)
    sentinel = object()
    assert input_cache({"cache": sentinel}) is sentinel
    assert input_cache({"past_key_values": sentinel, "cache": None}) is sentinel
    assert input_cache({}) is None and past_length(None) == 0
    assert output_cache({"logits": 1}) is None


def test_fork_cache_expands_rows_without_touching_the_original():
    model = tiny_model("llama")
    with torch.inference_mode():
        cache = output_cache(model.hf(input_ids=torch.tensor([[3, 4, 5]]), use_cache=True,
                                      **cache_kwargs(model.hf, new_cache(model))))
        keys = [layer.keys.clone() for layer in cache.layers]
        forked = fork_cache(cache, 3)
        out = model.hf(input_ids=torch.tensor([[6], [7], [8]]), use_cache=True, **cache_kwargs(model.hf, forked))
    assert out.logits.shape[0] == 3 and past_length(output_cache(out)) == 4
    assert all(torch.equal(a, layer.keys) for a, layer in zip(keys, cache.layers, strict=True))
    assert past_length(cache) == 3


def test_prefix_cache_shared_over_a_batch_matches_full_forwards():
    model = tiny_model("llama")
    seqs = [[3, 4, 5, 6, 9], [3, 4, 5, 7, 2], [3, 4, 5, 8, 1]]
    n = common_prefix_length(seqs)
    assert n == 3 and common_prefix_length([[1, 2], [1, 2, 3]]) == 2 and common_prefix_length([[1], [2]]) == 0
    with torch.inference_mode():
        cache = prefix_cache(model, seqs[0][:n])
        suffix = torch.tensor([s[n:] for s in seqs])
        got = model.base(input_ids=suffix, use_cache=True,
                         **cache_kwargs(model.base, fork_cache(cache, len(seqs)))).last_hidden_state[:, -1]
        want = model.base(input_ids=torch.tensor(seqs)).last_hidden_state[:, -1]
    assert torch.allclose(got, want, atol=1e-5)
    assert past_length(cache) == n and prefix_cache(model, []) is None


def _rows(out):
    return (out[0] if isinstance(out, tuple) else out).shape[0]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
@pytest.mark.parametrize("split", [1, 2])
def test_prefill_below_equals_a_full_prefill_and_its_merged_cache_decodes_the_same(family, split):
    """Blocks below ``split`` once per unique prompt, the rest per row, caches merged: the same
    logits as a full left-padded prefill, and the next cached step agrees too (gemma3's sliding
    layers included: its window of 6 is shorter than the prompts)."""
    from emoscope.models.batching import pad_batch, positions_from_mask
    from emoscope.models.prefill import prefill_below

    model = tiny_model(family)
    prompts = [[5, 9, 13, 21, 8, 30, 31, 40], [7, 7, 12], [5, 9, 13, 21, 8, 30, 31, 41, 50]]
    rows = [0, 1, 2, 1, 0, 2, 2]  # several rows per prompt, interleaved
    ids, mask, pos, _ = pad_batch([prompts[p] for p in rows], 0, "left", torch.device("cpu"))
    blk = []
    handle = model.blocks[0].register_forward_hook(lambda _m, _i, o: blk.append(_rows(o)))
    try:
        with torch.inference_mode():
            logits, cache, inv = prefill_below(model, ids, mask, pos, torch.tensor(rows), split)
            full = model.hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                            **cache_kwargs(model.hf, new_cache(model)))
            nxt = torch.full((len(rows), 1), 17)
            mask2 = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos2 = positions_from_mask(mask2)[:, -1:]
            a = model.hf(input_ids=nxt, attention_mask=mask2, position_ids=pos2, use_cache=True,
                         **cache_kwargs(model.hf, cache)).logits[:, -1]
            b = model.hf(input_ids=nxt, attention_mask=mask2, position_ids=pos2, use_cache=True,
                         **cache_kwargs(model.hf, output_cache(full))).logits[:, -1]
    finally:
        handle.remove()
    assert blk[0] == 3  # block 0 ran once per unique prompt in the prefill ...
    assert inv.tolist() == [0, 1, 2, 1, 0, 2, 2]
    torch.testing.assert_close(logits, full.logits[:, -1].float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert past_length(cache) == ids.shape[1] + 1  # ... and the merged cache holds every column


def test_merge_caches_takes_lower_blocks_from_one_cache_and_upper_from_the_other():
    from emoscope.models.kvcache import merge_caches

    model = tiny_model("llama")
    with torch.inference_mode():
        x = output_cache(model.hf(input_ids=torch.tensor([[5, 9, 13]]), use_cache=True,
                                  **cache_kwargs(model.hf, new_cache(model))))
        y = output_cache(model.hf(input_ids=torch.tensor([[7, 8, 9]]), use_cache=True,
                                  **cache_kwargs(model.hf, new_cache(model))))
    m = merge_caches(x, y, 1)
    assert m.layers[0] is x.layers[0] and m.layers[1] is y.layers[1] and m.layers[2] is y.layers[2]
    assert y.layers[0] is not x.layers[0] and len(y.layers) == 3  # the inputs are unchanged
