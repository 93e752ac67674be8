"""KV-cache helpers: both names transformers has used for the cache (``past_key_values`` before
5.24, ``cache`` after) are read and passed correctly."""

from __future__ import annotations

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
