"""Heads: the screen's per-head split against the o_proj output, head specs, random draws,
the vectorised permutation null, and head edits as exact identities (GQA and not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoscope.core.stats import permutation_pvalue
from emoscope.errors import InputError
from emoscope.heads.screen import (
    head_projections,
    label_contrast,
    rank_heads,
    screen_directions,
    screen_heads,
)
from emoscope.heads.select import check_heads, parse_heads, random_head_sets
from emoscope.models.batching import pad_batch
from emoscope.models.head_outputs import HeadEdit, edit_heads, head_bias, head_readout, head_shape
from emoscope.vectors import ConceptVector

from .conftest import tiny_model

TEXTS = ["Thank you so much for the lovely gift.", "The meeting is at three.", "I cannot believe it!",
         "Rain is expected tomorrow afternoon across the region.", "She walked to the market."]
GQA_AND_NOT = ["llama", "gpt2", "gemma3_text"]  # llama / gemma: 4 query heads on 2 KV heads; gpt2: Conv1D, MHA


def _vec(model, layers=(1, 2), seed=3, name="anger"):
    rng = np.random.default_rng(seed)
    return ConceptVector(name, {x: rng.standard_normal(model.d_model).astype(np.float32) for x in layers})


# ---- screening: the split sums to the o_proj output along the vector ---------------------------
@pytest.mark.parametrize("family", GQA_AND_NOT)
@pytest.mark.parametrize("position", ["last", "mean", "token:1"])
def test_screened_heads_sum_to_the_output_projection_along_the_vector(family, position):
    model = tiny_model(family)
    if family != "gpt2":
        assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query attention
    vec = _vec(model)
    dirs = screen_directions(model, vec)  # blocks 0, 1 read against layer 1's vector, block 2 against layer 2's
    assert {b: layer for b, (layer, _) in dirs.items()} == {0: 1, 1: 1, 2: 2}
    ids = [list(x) for x in model.tokenizer(TEXTS)["input_ids"]]
    proj = head_projections(model, ids, {b: u for b, (_, u) in dirs.items()}, position=position, batch_size=2)
    assert proj.shape == (len(TEXTS), 3, head_shape(model, 0)[0])

    # reference: a plain forward hook on each o_proj output, pooled the same way, projected on u
    from emoscope.activations.positions import parse_position

    pos = parse_position(position)
    outs = {}
    handles = [model.attn_out(b).register_forward_hook(
        lambda _m, _i, o, b=b: outs.__setitem__(b, o.detach())) for b in dirs]
    try:
        x, mask, pid, start = pad_batch(ids, model.tokenizer.pad_token_id, "right")
        with torch.inference_mode():
            model.base(input_ids=x, attention_mask=mask, position_ids=pid)
    finally:
        for h in handles:
            h.remove()
    for j, (b, (_, u)) in enumerate(sorted(dirs.items())):
        ut = torch.as_tensor(u, dtype=torch.float32)
        along = outs[b].float() @ ut  # (batch, seq)
        ref = pos.reduce(along[..., None], mask, start)[:, 0].double().numpy()
        bias = head_bias(model, b)
        total = proj[:, j].sum(-1) + (float(bias.detach().float() @ ut) if bias is not None else 0.0)
        np.testing.assert_allclose(total, ref, atol=1e-5, rtol=1e-5)


def test_head_readout_matches_the_per_head_contribution():
    from emoscope.models.head_outputs import head_contributions

    model = tiny_model("llama")
    u = torch.randn(model.d_model)
    z = torch.randn(2, 3, *head_shape(model, 1))
    per_head = head_contributions(model, 1, z) @ u  # (2, 3, n_heads)
    fast = (z * head_readout(model, 1, u)).sum(-1)
    torch.testing.assert_close(fast, per_head, atol=1e-5, rtol=1e-5)


def test_screen_table_is_ranked_and_consistent():
    """Every head of blocks up to the vector's layer, ranked by diff, with permutation p-values."""
    model = tiny_model("llama")
    from emoscope.datasets import load_dataset

    ds = load_dataset("emotions-basic")
    keep = [i for i, y in enumerate(ds.labels) if y in ("anger", "neutral")][:40]
    texts, labels = [ds.texts[i] for i in keep], [ds.labels[i] for i in keep]
    vec = _vec(model, layers=(2,))
    res = screen_heads(model, vec, texts, labels, "anger", "neutral", n_permutations=199, seed=0)
    t = res.table
    assert len(t) == 3 * 4 and set(t["direction_layer"]) == {2}
    assert sorted(t["rank"]) == list(range(1, 13))
    top = t.sort_values("rank").iloc[0]
    assert top["diff"] == t["diff"].max()  # ranked greater: the largest difference first
    assert (t["p"] >= 1 / 200).all() and (t["p_holm"] >= t["p"]).all()
    np.testing.assert_allclose(t["diff"], t["mean_emotion"] - t["mean_baseline"], atol=1e-12)


def test_vectorised_permutation_null_matches_the_per_head_rule():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(30, 5))
    v[:15, 0] += 2.0  # column 0 separates the groups
    a = np.r_[np.ones(15, bool), np.zeros(15, bool)]
    diff, null = label_contrast(v, a, 300, seed=0)
    np.testing.assert_allclose(diff, v[:15].mean(0) - v[15:].mean(0))
    assert null.shape == (300, 5)
    from emoscope.heads.screen import _pvalues

    p = _pvalues(diff, null, "greater")
    for j in range(5):
        assert p[j] == pytest.approx(permutation_pvalue(diff[j], null[:, j], "greater"))
    assert p[0] == pytest.approx(1 / 301)
    assert rank_heads(np.array([0.1, -3.0, 2.0]), "two-sided").tolist() == [3, 1, 2]
    assert rank_heads(np.array([0.1, -3.0, 2.0]), "greater").tolist() == [2, 3, 1]


def test_screen_directions_single_layer_and_bad_vectors():
    model = tiny_model("llama")
    vec = _vec(model, layers=(1, 2))
    d = screen_directions(model, vec, direction_layer=1)
    assert sorted(d) == [0, 1] and {x for x, _ in d.values()} == {1}  # block 2 writes above layer 1: not screened
    with pytest.raises(InputError, match="d_model"):
        screen_directions(model, ConceptVector("x", {1: np.ones(5, np.float32)}))
    with pytest.raises(InputError, match="not a layer of the vector"):
        screen_directions(model, vec, direction_layer=0)


# ---- head specs and random heads -------------------------------------------------------------------
@pytest.mark.parametrize("spec, want", [("top:8", (8, ())), ("TOP: 3", (3, ())), ("3.1,12.4", (0, ((3, 1), (12, 4)))),
                                        ("3:1", (0, ((3, 1),))), (" 2.0 , 5:3 ", (0, ((2, 0), (5, 3))))])
def test_parse_heads_accepts_the_three_forms(spec, want):
    hs = parse_heads(spec)
    assert (hs.top, hs.heads) == want


@pytest.mark.parametrize("spec", ["top:", "top:x", "top:0", "3.x", "3", "a.b", "3.1;4.2", "", "1.-2", "top8"])
def test_parse_heads_rejects_malformed_specs(spec):
    with pytest.raises(InputError, match="top:K"):
        parse_heads(spec)


def test_check_heads_names_the_range():
    assert check_heads([(2, 3), (0, 0)], 3, 4) == [(0, 0), (2, 3)]
    with pytest.raises(InputError, match=r"head 1\.4 is out of range .* heads 0\.\.3 in layers 0\.\.2"):
        check_heads([(1, 4)], 3, 4)
    with pytest.raises(InputError, match=r"head 3\.0"):
        check_heads([(3, 0)], 3, 4)


def test_random_heads_are_seeded_layer_matched_and_never_chosen():
    chosen = [(2, 1), (2, 5), (7, 0)]
    a, how = random_head_sets(chosen, 20, n_layers=10, n_heads=9, seed=4)
    b, _ = random_head_sets(chosen, 20, n_layers=10, n_heads=9, seed=4)
    c, _ = random_head_sets(chosen, 20, n_layers=10, n_heads=9, seed=5)
    assert a == b and a != c and how == "layer" and len(a) == 20
    assert len(set(a)) == 20  # distinct sets
    for s in a:
        assert len(s) == 3 and not set(s) & set(chosen)
        assert sorted(x for x, _ in s) == [2, 2, 7]  # as many heads per layer as the chosen set
    anyl, how = random_head_sets(chosen, 30, n_layers=10, n_heads=9, seed=0, match="any")
    assert how == "any" and all(not set(s) & set(chosen) for s in anyl)
    assert len({x for s in anyl for x, _ in s}) > 3  # any layer
    # a layer with too few other heads: falls back to any layer, still never a chosen head
    full = [(0, h) for h in range(4)]
    fb, how = random_head_sets(full[:3], 5, n_layers=2, n_heads=4, seed=0)
    assert how == "any" and all(not set(s) & set(full[:3]) for s in fb)
    with pytest.raises(InputError, match="too few"):
        random_head_sets(full, 2, n_layers=1, n_heads=4, seed=0)


def test_random_heads_fall_back_to_the_chosen_layers_band_before_any_layer():
    # layer 8 holds 5 chosen heads of 9 (4 others): layer matching is impossible, so the sets come from
    # layers 3..8 (the band the chosen heads span), never below or above it, never a chosen head
    chosen = [(8, h) for h in range(5)] + [(3, 2)]
    sets, how = random_head_sets(chosen, 40, n_layers=12, n_heads=9, seed=1)
    assert how == "band" and len(sets) == 40 and len(set(sets)) == 40
    layers = [a for s in sets for a, _ in s]
    assert min(layers) == 3 and max(layers) == 8 and len(set(layers)) == 6  # the whole band is used
    assert all(len(s) == 6 and not set(s) & set(chosen) for s in sets)
    # the band restricted to a pool with too few heads in it: any layer of the pool
    pool = [(a, h) for a in (0, 1, 8) for h in range(9)]
    anyl, how = random_head_sets(chosen, 5, n_layers=12, n_heads=9, seed=1, pool=pool)
    assert how == "any" and {a for s in anyl for a, _ in s} <= {0, 1, 8}
    assert random_head_sets(chosen, 5, n_layers=12, n_heads=9, seed=1, match="band")[1] == "band"


# ---- head edits: identities ------------------------------------------------------------------------
@pytest.mark.parametrize("family", GQA_AND_NOT)
def test_editing_no_heads_is_an_exact_identity(family):
    model = tiny_model(family)
    ids = torch.tensor([list(model.tokenizer("The meeting is at three.")["input_ids"])] * 2)
    with torch.inference_mode():
        ref = model.hf(input_ids=ids).logits
        none = torch.zeros(2, head_shape(model, 0)[0], dtype=torch.bool)
        with edit_heads(model, {layer: HeadEdit(none) for layer in range(model.n_layers)}):
            got = model.hf(input_ids=ids).logits
    assert torch.equal(got, ref)


@pytest.mark.parametrize("family", GQA_AND_NOT)
def test_zero_edit_of_one_head_equals_zeroing_its_slice(family):
    model = tiny_model(family)
    n_heads, hd = head_shape(model, 1)
    ids = torch.tensor([list(model.tokenizer("Rain is expected tomorrow.")["input_ids"])] * 2)

    def raw(_m, args):
        x = args[0].clone()
        x[0, :, 2 * hd:3 * hd] = 0.0  # row 0 only
        return (x,)

    with torch.inference_mode():
        h = model.attn_out(1).register_forward_pre_hook(raw)
        try:
            ref = model.hf(input_ids=ids).logits
        finally:
            h.remove()
        mask = torch.zeros(2, n_heads, dtype=torch.bool)
        mask[0, 2] = True
        with edit_heads(model, {1: HeadEdit(mask)}):
            got = model.hf(input_ids=ids).logits
    assert torch.equal(got, ref)
    assert not torch.equal(got[0], got[1])  # the edit reached row 0 only


def test_head_edit_rejects_mismatched_shapes():
    model = tiny_model("llama")
    n_heads, hd = head_shape(model, 0)
    with pytest.raises(InputError, match="heads"):
        with edit_heads(model, {0: HeadEdit(torch.zeros(2, n_heads + 1, dtype=torch.bool))}):
            pass
    with pytest.raises(InputError, match="last_prompt_tokens"):
        HeadEdit(torch.zeros(2, n_heads, dtype=torch.bool), torch.zeros(2, 1, n_heads, hd))
    mask = torch.ones(3, n_heads, dtype=torch.bool)
    with pytest.raises(InputError, match="rows"), torch.inference_mode(), edit_heads(model, {0: HeadEdit(mask)}):
        model.hf(input_ids=torch.tensor([[5, 6, 7]]))
