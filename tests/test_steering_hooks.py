"""``steer`` and ``patch`` against raw hooks and identities: strength 0 is the baseline, ablation
removes the projection, the KV cache does not move position windows, hooks always go away."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoscope.errors import InputError, LayerError, PositionError
from emoscope.models.interventions import parse_window
from emoscope.models.standard import block_output
from emoscope.steering import patch, steer
from emoscope.vectors.strength import measure_unit

from .conftest import tiny_model

PROMPTS = ["Thank you so much for the", "The meeting is", "Rain is expected tomorrow afternoon across"]
FAMILIES = ["llama", "gpt2", "gemma3_text"]


def _enc(model, prompts=PROMPTS):
    tok = model.tokenizer
    side, tok.padding_side = tok.padding_side, "left"
    try:
        return tok(prompts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side


def _generate(model, enc, n=10, **kw):
    out = model.hf.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=model.tokenizer.pad_token_id, **kw)
    return out[:, enc["input_ids"].shape[1]:]


def _vec(model, seed=0):
    v = np.random.default_rng(seed).standard_normal(model.d_model)
    return v / np.linalg.norm(v)


def _grab(model, layer, fn):
    """Run ``fn`` with a plain forward hook on block ``layer``; registered inside any ``steer`` block
    it runs after steer's hook, so it sees the edited resid[layer]. Returns what it saw."""
    seen = []
    h = model.blocks[layer].register_forward_hook(lambda _m, _i, o: seen.append(block_output(o).detach().clone()))
    try:
        with torch.no_grad():
            fn()
    finally:
        h.remove()
    return seen


def _ours(hooks):
    # transformers installs its own output-capturing hooks the first time hidden states are asked for
    # (other tests do that on the same cached tiny model); only count hooks that are not those
    return [h for h in hooks.values() if "output_capturing" not in getattr(h, "__qualname__", "")]


def _no_hooks(model):
    return not _ours(model.base._forward_pre_hooks) and all(not _ours(b._forward_hooks) for b in model.blocks)


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_zero_is_exactly_the_unsteered_output(family):
    model = tiny_model(family)
    enc = _enc(model)
    base = _generate(model, enc, 12)
    for positions in ("all", "generated", "from:1"):
        with steer(model, _vec(model), [0, 1], 0.0, positions=positions, unit="raw"):
            assert torch.equal(_generate(model, enc, 12), base)
    with steer(model, _vec(model), [1], 3.0, positions="all", unit="raw"):
        assert not torch.equal(_generate(model, enc, 12), base)  # the test can fail
    assert _no_hooks(model)


def test_add_equals_a_raw_hook_and_norm_unit_scales_by_token_norm():
    model = tiny_model("llama")
    v = 3.0 * _vec(model)
    ids = _enc(model)
    (base,) = _grab(model, 1, lambda: model.hf(**ids))
    with steer(model, v, [1], 2.0, unit="raw"):
        (raw,) = _grab(model, 1, lambda: model.hf(**ids))
    with steer(model, v, [1], 2.0, unit="token_norm", norms={1: 5.0}):
        (normed,) = _grab(model, 1, lambda: model.hf(**ids))
    assert torch.allclose(raw - base, torch.tensor(2.0 * v, dtype=torch.float32).expand_as(base), atol=1e-5)
    # unit "token_norm": delta = strength * token_norm * v / ||v|| -> norm 2 * 5 = 10 at every token
    assert torch.allclose((normed - base).norm(dim=-1), torch.full(base.shape[:2], 10.0), atol=1e-4)


def test_ablation_removes_the_projection_at_the_hooked_layer():
    model = tiny_model("llama")
    u = torch.tensor(_vec(model, 3), dtype=torch.float32)
    enc = _enc(model)
    (base,) = _grab(model, 1, lambda: model.hf(**enc))
    with steer(model, u.numpy(), [1], mode="ablate"):
        (ablated,) = _grab(model, 1, lambda: model.hf(**enc))
    with steer(model, u.numpy(), [1], 2.5, mode="ablate_add", unit="raw"):
        (set_to,) = _grab(model, 1, lambda: model.hf(**enc))
    assert (base @ u).abs().max() > 0.1  # there was a projection to remove
    assert (ablated @ u).abs().max() < 1e-5
    assert torch.allclose(ablated, base - (base @ u)[..., None] * u, atol=1e-5)  # nothing else moved
    assert torch.allclose(set_to @ u, torch.full(base.shape[:2], 2.5), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_generated_window_with_cache_equals_recomputation_without_cache(family):
    model = tiny_model(family)
    enc = _enc(model)
    v, width = _vec(model, 1), enc["input_ids"].shape[1]
    with steer(model, v, [1], 2.0, positions="generated", unit="raw"):
        cached = _generate(model, enc, 10)
        uncached = _generate(model, enc, 10, use_cache=False)
    assert torch.equal(cached, uncached)
    # and equal to one full forward over prompt + output with the window given as columns
    full = torch.cat([enc["input_ids"], cached], dim=1)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(cached)], dim=1)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    start = int((enc["attention_mask"] == 0).sum(1).min())  # every row: generated tokens start at `width`
    with torch.no_grad(), steer(model, v, [1], 2.0, positions="generated", unit="raw") as tracker:
        model.hf(input_ids=full[:, :width], attention_mask=mask[:, :width], position_ids=pos[:, :width])
        tracker.prompt_len = width  # a one-shot forward has no "generated" part; name it
        logits = model.hf(input_ids=full, attention_mask=mask, position_ids=pos).logits
    greedy = logits[:, width - 1:-1].argmax(-1)
    ok = enc["attention_mask"].sum(1) > 0
    assert start >= 0 and torch.equal(greedy[ok], cached[ok])
    assert not torch.equal(cached, _generate(model, enc, 10))  # steering did something


def test_positions_windows_touch_only_their_columns():
    model = tiny_model("llama")
    enc = _enc(model)  # left padded: row starts differ
    first = (enc["attention_mask"] == 0).sum(1)  # (batch,)
    width = enc["input_ids"].shape[1]
    v = _vec(model)
    (base,) = _grab(model, 1, lambda: model.hf(**enc))
    for spec in ("all", "prompt", "generated", "from:2"):
        with steer(model, v, [1], 1.0, positions=spec, unit="raw"):
            seen = _grab(model, 1, lambda: model.hf(**enc))
        moved = (seen[0] - base).norm(dim=-1) > 1e-6  # (batch, width)
        cols = torch.arange(width)[None, :].expand_as(moved)
        want = {"all": torch.ones_like(moved), "prompt": torch.ones_like(moved),
                "generated": torch.zeros_like(moved), "from:2": cols - first[:, None] >= 2}[spec]
        assert torch.equal(moved, want), spec
    # during cached decoding: a hook registered before steer's sees each step unedited, one after it
    # sees it edited; "prompt" edits no generated token, "generated" edits each one, "from:K" too
    for spec, expect in (("prompt", False), ("generated", True), ("from:3", True)):
        before = []
        h = model.blocks[1].register_forward_hook(lambda _m, _i, o, seen=before: seen.append(block_output(o).clone()))
        try:
            with steer(model, v, [1], 1.0, positions=spec, unit="raw"):
                after = _grab(model, 1, lambda: _generate(model, enc, 4))
        finally:
            h.remove()
        assert len(after) == 4 and after[1].shape[1] == 1
        edited = [bool((a - b).norm(dim=-1).max() > 1e-6) for a, b in zip(after[1:], before[1:], strict=True)]
        assert edited == [expect] * 3, spec


def test_hooks_are_removed_after_an_exception():
    model = tiny_model("llama")
    with pytest.raises(RuntimeError, match="boom"), steer(model, _vec(model), [0, 2], 1.0, unit="raw"):
        assert not _no_hooks(model)
        raise RuntimeError("boom")
    assert _no_hooks(model)
    with pytest.raises(RuntimeError, match="boom"), patch(model, "Thank you", [1]):
        raise RuntimeError("boom")
    assert _no_hooks(model)


def test_patch_last_layer_transplants_the_source_prediction():
    model = tiny_model("llama")
    last = model.n_layers - 1
    src = "Thank you so much for the"
    src_ids = model.tokenizer(src, return_tensors="pt")
    with torch.no_grad():
        want = model.hf(**src_ids).logits[0, -1]
        enc = _enc(model, ["The meeting is", "Rain"])
        with patch(model, src, [last], positions="last"):
            got = model.hf(**enc).logits[:, -1]
        with patch(model, src, [0], positions="all") as rec:
            same = model.hf(**src_ids).logits[0, -1]
    assert torch.allclose(got, want.expand_as(got), atol=1e-4)  # after the last block only the head runs
    assert torch.allclose(same, want, atol=1e-5) and rec[0].shape[0] == src_ids["input_ids"].shape[1]


def test_token_norms_leave_out_the_first_token():
    model = tiny_model("llama")
    texts = ["Thank you so much for the lovely gift.", "The meeting is at three."]
    got = measure_unit(model, [1], texts=texts).values
    norms = []
    seen = _grab(model, 1, lambda: [model.hf(**model.tokenizer(t, return_tensors="pt")) for t in texts])
    for s in seen:
        norms.extend(s[0, 1:].norm(dim=-1).tolist())
    assert got[1] == pytest.approx(float(np.mean(norms)), rel=1e-5)


def test_bad_inputs_are_one_line_errors():
    model = tiny_model("llama")
    with pytest.raises(InputError, match="d_model=32"), steer(model, np.ones(7), [1], 1.0):
        pass
    with pytest.raises(LayerError, match="out of range"), steer(model, np.ones(32), [9], 1.0):
        pass
    with pytest.raises(InputError, match="strength must be a number"), steer(model, np.ones(32), [1], "lots"):
        pass
    with pytest.raises(PositionError), steer(model, np.ones(32), [1], 1.0, positions="from:-1"):
        pass
    with pytest.raises(InputError, match="zero"), steer(model, np.zeros(32), [1], 1.0):
        pass
    assert parse_window("from:3").spec == "from:3"
    assert _no_hooks(model)
