"""The interventions layer under ``emoscope.models``: per-head split of the attention output,
forking a shared KV cache, and padding / position ids, each against an independent computation
on tiny random models."""

from __future__ import annotations

import functools

import pytest
import torch
from benchmarks._tiny import random_lm

from emoscope.models.batching import pad_batch, positions_from_mask
from emoscope.models.head_outputs import head_bias, head_contributions, head_outputs, head_shape
from emoscope.models.interventions import (
    EditHook,
    PositionTracker,
    Window,
    edit_residual,
    installed,
)
from emoscope.models.kvcache import cache_kwargs, fork_cache, new_cache, output_cache, past_length

from .conftest import FAMILIES, tiny_model, tiny_tokenizer

PROMPTS = ["Thank you so much for the", "The meeting is", "Rain is expected tomorrow afternoon across"]


@functools.cache
def wide_gqa_model():
    """Llama with 4 query heads sharing 2 KV heads, and head_dim 16 (so o_proj maps 64 -> 32)."""
    import transformers as tf

    from emoscope.models import wrap_model

    tok = tiny_tokenizer()
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
    return wrap_model(random_lm(cfg, seed=1), tok, name="tiny-llama-wide-gqa")


def _model(name):
    return wide_gqa_model() if name == "wide_gqa" else tiny_model(name)


def _ids(model, prompts=PROMPTS):
    return [model.tokenizer(p)["input_ids"] for p in prompts]


# ---- per-head split ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["wide_gqa", *FAMILIES])
def test_head_contributions_sum_to_the_output_projection(name):
    model = _model(name)
    layer = 1
    proj = model.attn_out(layer)
    seen = []
    grab = proj.register_forward_hook(lambda _m, _i, o: seen.append(o.detach().clone()))
    ids, mask, pos, _ = pad_batch(_ids(model), model.tokenizer.pad_token_id, "left")
    try:
        with torch.inference_mode(), head_outputs(model, layer) as cap:
            model.base(input_ids=ids, attention_mask=mask, position_ids=pos)
    finally:
        grab.remove()
    n_heads, head_dim = head_shape(model, layer)
    assert n_heads == model.n_heads == 4  # query heads, also where KV heads are fewer
    assert cap.calls == 1 and cap.z.shape == (*ids.shape, n_heads, head_dim)
    per_head = head_contributions(model, layer, cap.z)  # (batch, seq, n_heads, d_model)
    assert per_head.shape == (*ids.shape, n_heads, model.d_model)
    total = per_head.sum(2)
    bias = head_bias(model, layer)
    if bias is not None:
        total = total + bias
    torch.testing.assert_close(total, seen[0], atol=1e-5, rtol=1e-5)
    # the flat input gives the same split, and a single head is W_O[:, h*hd:(h+1)*hd] @ z_h
    torch.testing.assert_close(head_contributions(model, layer, cap.z.flatten(2)), per_head)
    if isinstance(proj, torch.nn.Linear):
        h = 2
        manual = cap.z[..., h, :] @ proj.weight.detach()[:, h * head_dim:(h + 1) * head_dim].T
        torch.testing.assert_close(per_head[..., h, :], manual, atol=1e-5, rtol=1e-5)
    assert not proj._forward_pre_hooks  # the capture hook is gone


def test_wide_gqa_model_is_really_grouped_with_a_non_square_output_projection():
    model = wide_gqa_model()
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert tuple(model.attn_out(0).weight.shape) == (model.d_model, 4 * 16)
    assert head_shape(model, 0) == (4, 16)


# ---- forking a shared KV cache -----------------------------------------------------------------
def _prefill(model, seqs):
    ids, mask, pos, _ = pad_batch(seqs, model.tokenizer.pad_token_id, "left")
    out = model.hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                   **cache_kwargs(model.hf, new_cache(model)))
    return output_cache(out), mask


def _step(model, cache, mask, nxt):
    """One cached forward of token ``nxt[r]`` after each row: the logits ``(rows, vocab)``."""
    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    pos = positions_from_mask(mask)[:, -1:]
    out = model.hf(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                   **cache_kwargs(model.hf, cache))
    return out.logits[:, -1]


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2"])
def test_fork_cache_by_index_matches_recomputing_those_rows_and_leaves_the_source_intact(name):
    model = _model(name)
    prompts = _ids(model)
    rows = torch.tensor([2, 0, 2, 1])
    nxt = torch.tensor([7, 11, 13, 17])
    with torch.inference_mode():
        shared, mask = _prefill(model, prompts)
        keys = [layer.keys.clone() for layer in shared.layers]
        length = past_length(shared)
        first = _step(model, fork_cache(shared, rows), mask[rows], nxt)
        second = _step(model, fork_cache(shared, rows.tolist()), mask[rows], nxt)
        # from scratch: each row's prompt plus its next token, alone, no cache, no padding
        want = torch.stack([model.hf(input_ids=torch.tensor([[*prompts[r], int(t)]])).logits[0, -1]
                            for r, t in zip(rows.tolist(), nxt, strict=True)])
    assert torch.equal(first, second)  # forking again from the same source gives the same numbers
    torch.testing.assert_close(first, want, atol=1e-4, rtol=1e-4)
    assert past_length(shared) == length
    assert all(torch.equal(k, layer.keys) for k, layer in zip(keys, shared.layers, strict=True))


def test_fork_cache_expands_one_row_as_a_view_and_passes_none_through():
    model = tiny_model("llama")
    with torch.inference_mode():
        shared, _ = _prefill(model, _ids(model)[:1])
        forked = fork_cache(shared, 3)
    assert forked is not shared and forked.layers[0] is not shared.layers[0]
    assert forked.layers[0].keys.shape[0] == 3
    assert forked.layers[0].keys.data_ptr() == shared.layers[0].keys.data_ptr()  # no copy
    assert fork_cache(None, 3) is None
    with pytest.raises(ValueError, match="1-D"):
        fork_cache(shared, torch.zeros(2, 2, dtype=torch.long))


# ---- padding and position ids ------------------------------------------------------------------
def test_pad_batch_follows_generate_positions():
    ids, mask, pos, start = pad_batch([[1, 2, 3], [4]], pad_id=0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [1, 1, 0]] and start.tolist() == [0, 2]
    ids, mask, pos, start = pad_batch([[1, 2, 3], [4]], pad_id=9, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]]
    assert pos.tolist() == [[0, 1, 2], [0, 1, 1]] and start.tolist() == [0, 0]
    assert torch.equal(positions_from_mask(mask), pos)


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma3_text"])
def test_left_and_right_padding_give_the_same_last_token_states(name):
    model = _model(name)
    seqs = _ids(model)
    last = {}
    with torch.inference_mode():
        for side in ("left", "right"):
            ids, mask, pos, start = pad_batch(seqs, model.tokenizer.pad_token_id, side)
            h = model.base(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
            end = start + mask.sum(1) - 1  # (batch,) column of each row's last real token
            last[side] = h[torch.arange(len(seqs)), end]
        alone = torch.stack([model.base(input_ids=torch.tensor([s])).last_hidden_state[0, -1] for s in seqs])
    torch.testing.assert_close(last["left"], last["right"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last["left"], alone, atol=1e-5, rtol=1e-5)


# ---- edits and hooks ---------------------------------------------------------------------------
def test_zero_edit_is_the_same_object_and_a_window_edit_touches_only_its_columns():
    h = torch.randn(2, 5, 8)
    assert edit_residual(h) is h and edit_residual(h, torch.zeros(8)).equal(h)
    u = torch.nn.functional.normalize(torch.randn(8), dim=0)
    ablated = edit_residual(h, direction=u, ablate=1.0)
    torch.testing.assert_close(ablated @ u, torch.zeros(2, 5), atol=1e-5, rtol=0)
    model = tiny_model("llama")
    ids = torch.tensor([model.tokenizer(PROMPTS[0])["input_ids"]])
    before = (len(model.base._forward_pre_hooks), len(model.blocks[1]._forward_hooks))
    tracker = PositionTracker()
    hook = EditHook(tracker, Window("from", 3), delta=torch.ones(model.d_model))
    with torch.inference_mode():
        base = model.base(input_ids=ids).last_hidden_state
        with installed(model, {1: hook}, tracker):
            edited = model.base(input_ids=ids).last_hidden_state
    assert torch.equal(edited[:, :3], base[:, :3]) and not torch.allclose(edited[:, 3:], base[:, 3:])
    assert (len(model.base._forward_pre_hooks), len(model.blocks[1]._forward_hooks)) == before
