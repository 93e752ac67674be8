"""Multi-token activation patching: identities, raw-hook references, alignment from the end,
norm-matched random patches, and the batched decode with a replacement edit per row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoscope.errors import InputError, PositionError
from emoscope.models.batching import eos_ids
from emoscope.models.interventions import PositionTracker, ReplaceHook, installed
from emoscope.patching import PatchSweep
from emoscope.patching.positions import align_from_end, parse_position_list, parse_positions
from emoscope.patching.record import class_mean, record_states
from emoscope.patching.sweep import step1_token_sets

from .conftest import tiny_model
from .greedy import same_or_near_tie, trim

TARGETS = ["The meeting is", "Rain is expected tomorrow afternoon across", "She walked to the market and bought",
           "Thank you so much for the"]
SOURCES = ["I cannot believe they cancelled the train again without any notice!", "I am sorry I forgot",
           "Thank you so much for the lovely gift, it made my whole week."]
NEUTRAL = ["The meeting is scheduled for three o'clock in room twelve.", "Rain is expected tomorrow."]
CHEAP = ["vader", "repetition", "script"]
N_NEW = 8


def _sweep(model, positions, **kw):
    kw.setdefault("sources", SOURCES)
    kw.setdefault("targets", TARGETS)
    kw.setdefault("layers", [1])
    args = dict(source_name="anger", max_new_tokens=N_NEW, scorers=CHEAP, target="valence", progress=False,
                n_random=0, self_rows=False)
    args.update(kw)
    return PatchSweep(model, args.pop("sources"), args.pop("targets"), args.pop("layers"), positions, **args)


# -- positions -----------------------------------------------------------------------------------
def test_positions_parse_and_align_from_the_end():
    assert parse_positions("last").spec == "last" and parse_positions(" Window:3 ").spec == "window:3"
    assert [p.spec for p in parse_position_list("last,all,last,window:2")] == ["last", "all", "window:2"]
    for bad in ("middle", "window:0", "window:x", "window:", "first:2"):
        with pytest.raises(PositionError, match="not understood"):
            parse_positions(bad)
    with pytest.raises(PositionError):
        parse_position_list([" "])
    a = parse_positions("all")
    assert align_from_end(12, 9, a) == (9, 3, 0) and align_from_end(5, 9, a) == (5, 0, 4)
    assert align_from_end(7, 7, a).dropped == 0
    w = parse_positions("window:4")
    assert align_from_end(12, 9, w) == (4, 0, 0) and align_from_end(3, 9, w) == (3, 0, 1)
    assert align_from_end(12, 2, w) == (2, 2, 0)
    assert align_from_end(12, 9, parse_positions("last")) == (1, 0, 0)


# -- the replacement edit ------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_replace_hook_is_the_same_with_and_without_the_kv_cache(family):
    model = tiny_model(family)
    tok = model.tokenizer
    tok.padding_side = "left"
    enc = tok(TARGETS[:3], return_tensors="pt", padding=True)
    tok.padding_side = "right"
    rows, d = 3, model.d_model
    g = torch.Generator().manual_seed(0)
    value = 3 * torch.randn(rows, 2, d, generator=g)
    mask = torch.tensor([[True, True], [False, True], [True, False]])
    gen = 3 * torch.randn(rows, d, generator=g)
    outs = []
    for cache in (True, False):
        tracker = PositionTracker()
        hook = ReplaceHook(tracker, value, mask, gen, torch.tensor([True, False, True]))
        with torch.no_grad(), installed(model, {1: hook}, tracker):
            outs.append(model.hf.generate(**enc, max_new_tokens=6, do_sample=False, use_cache=cache,
                                          pad_token_id=tok.pad_token_id)[:, enc["input_ids"].shape[1]:])
    assert torch.equal(outs[0], outs[1])
    plain = model.hf.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert not torch.equal(outs[0], plain[:, enc["input_ids"].shape[1]:])  # the edit did something
    with pytest.raises(InputError, match="both value and mask"):
        ReplaceHook(PositionTracker(), value)


# -- identities ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
def test_patching_a_prompt_into_itself_is_the_identity(family):
    model = tiny_model(family)
    res = _sweep(model, ["last", "all", "window:3"], sources=TARGETS, pairing="per_target", layers=[0, 2],
                 self_rows=True).run()
    t = res.table
    base = {int(r.prompt_id): res.tokens[i] for i, r in t[t.kind == "baseline"].iterrows()}
    for kind in ("patch", "self"):
        rows = t[t.kind == kind]
        assert len(rows) == len(TARGETS) * 2 * 3
        for i, r in rows.iterrows():
            assert res.tokens[i] == base[int(r.prompt_id)], (kind, r.layer, r.positions)
        assert (rows.delta_norm < 1e-4).all() and (rows.unpatched_target == 0).all()
        assert not rows.changed.any() and (rows.step1_change.abs() < 1e-4).all()
    assert res.meta["self_rows_identical"] == res.meta["self_rows"] == len(TARGETS) * 6
    # and the patch does something when the source is another text
    other = _sweep(model, ["all"], layers=[1], pairing="per_target").run().table
    assert other.loc[other.kind == "patch", "changed"].any()


# -- against raw hooks -----------------------------------------------------------------------------
def _raw_states(model, ids, layer):
    seen = []
    h = model.blocks[layer].register_forward_hook(lambda _m, _i, o: seen.append(
        (o[0] if isinstance(o, tuple) else o)[0].detach().clone()))
    try:
        with torch.no_grad():
            model.hf(input_ids=torch.tensor([ids]))
    finally:
        h.remove()
    return seen[0]  # (len, d)


def _reference(model, target_ids, source_states, layer, n, generated, n_new):
    """Greedy ``generate`` of one target prompt with a raw forward hook on block ``layer``: the
    prefill (width = prompt length) gets the last ``n`` source states at its last ``n`` columns,
    each cached decode step (width 1) the source's last state when ``generated``."""
    width = len(target_ids)

    def hook(_m, _i, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        if h.shape[1] == width:
            h[0, width - n:] = source_states[len(source_states) - n:]
        elif generated:
            h[0, :] = source_states[-1]
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = model.blocks[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model.hf.generate(input_ids=torch.tensor([target_ids]), attention_mask=torch.ones(1, width,
                                    dtype=torch.long), max_new_tokens=n_new, do_sample=False,
                                    pad_token_id=model.tokenizer.pad_token_id, output_scores=True,
                                    return_dict_in_generate=True)
    finally:
        handle.remove()
    return out.sequences[0, width:].tolist(), torch.stack(out.scores, dim=1)[0]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
@pytest.mark.parametrize("positions, generated, pairing", [
    ("last", False, "per_target"), ("all", False, "per_target"), ("window:3", False, "per_target"),
    ("last", True, "per_target"), ("all", True, "per_target"), ("all", False, "class_mean"),
    ("last", True, "class_mean"),
])
def test_patched_generation_equals_a_raw_hook_reference(family, positions, generated, pairing):
    model = tiny_model(family)
    layer = 1
    sweep = _sweep(model, [positions], layers=[layer], generated=generated, pairing=pairing, neutral=NEUTRAL,
                   n_random=2)
    res = sweep.run()
    t = res.table
    tok = model.tokenizer
    stop = eos_ids(model)
    src_ids = [tok(s)["input_ids"] for s in SOURCES]
    raw = [_raw_states(model, ids, layer) for ids in src_ids]
    if pairing == "class_mean":
        n_min = min(len(r) for r in raw)
        mean = torch.stack([r[-n_min:] for r in raw]).mean(0)
    sets = step1_token_sets(model, "valence")
    outcomes = []
    for i, r in t[t.kind == "patch"].iterrows():
        p = int(r.prompt_id)
        tgt = tok(TARGETS[p])["input_ids"]
        src = mean if pairing == "class_mean" else raw[p % len(SOURCES)]
        n = align_from_end(len(tgt), len(src), parse_positions(positions)).n_patched
        assert int(r.n_patched) == n
        ref, scores = _reference(model, tgt, src, layer, n, generated, N_NEW)
        outcomes.append(same_or_near_tie(trim(res.tokens[i], stop), ref, scores, stop))
        lp = torch.log_softmax(scores[0].float(), -1)  # the next-token view of the same patched forward
        want = float(torch.logsumexp(lp[sets[0]], -1) - torch.logsumexp(lp[sets[1]], -1))
        assert r.step1 == pytest.approx(want, abs=1e-3)
    assert outcomes.count("same") >= len(outcomes) - 1
    assert t.loc[t.kind == "patch", "changed"].any()  # the reference can fail: the patch changes outputs
    # the batch holds its controls: baseline, neutral and random rows alongside
    assert set(t.kind) == {"baseline", "patch", "neutral", "random"}


# -- alignment and the random control ------------------------------------------------------------
def test_unequal_lengths_align_from_the_end_and_count_dropped_tokens():
    model = tiny_model("llama")
    sweep = _sweep(model, ["all", "window:4", "last"], pairing="per_target", layers=[2])
    plan = sweep.plan()
    t = plan.table
    tok = model.tokenizer
    t_len = [len(tok(x)["input_ids"]) for x in TARGETS]
    s_len = [len(tok(x)["input_ids"]) for x in SOURCES]
    src_states = record_states(model, [tok(x)["input_ids"] for x in SOURCES], [2])
    assert any(a > b for a, b in zip(t_len, s_len, strict=False)) and any(a < b for a, b in zip(t_len, s_len, strict=False))
    for r, row in t[t.kind == "patch"].iterrows():
        p = int(row.prompt_id)
        tl, sl = t_len[p], s_len[p % len(SOURCES)]
        want = {"all": (min(tl, sl), max(0, tl - sl), max(0, sl - tl)),
                "window:4": (min(4, tl, sl), min(4, tl) - min(4, tl, sl), min(4, sl) - min(4, tl, sl)),
                "last": (1, 0, 0)}[row.positions]
        assert (row.n_patched, row.unpatched_target, row.unused_source) == want, row.positions
        n = want[0]
        # what the row writes: the source's last n states, end-aligned
        assert torch.allclose(plan.values[r], src_states[p % len(SOURCES)][2][sl - n:])
        mask = plan.edits.replace_mask[2][r]
        assert int(mask.sum()) == n and bool(mask[-n:].all())
        assert torch.allclose(plan.edits.replace[2][r, -n:], plan.values[r])
    # class mean: as long as the shortest source, every position a mean over all sources
    mean = class_mean(src_states)
    assert mean[2].shape[0] == min(s_len)
    assert torch.allclose(mean[2][-1], torch.stack([s[2][-1] for s in src_states]).mean(0))


@pytest.mark.parametrize("generated", [False, True])
def test_random_patches_have_the_norm_of_the_delta_they_replace(generated):
    model = tiny_model("llama")
    sweep = _sweep(model, ["all", "last"], layers=[1, 2], n_random=4, generated=generated, seed=3)
    plan = sweep.plan()
    t = plan.table
    for (p, layer, pos), g in t[t.kind.isin(["patch", "random"])].groupby(["prompt_id", "layer", "positions"]):
        pr = g.index[g.kind == "patch"][0]
        want = (plan.values[pr] - plan.clean[pr]).norm(dim=-1)  # per column
        rnd = g.index[g.kind == "random"]
        assert len(rnd) == 4
        deltas = []
        for r in rnd:
            delta = plan.values[r] - plan.clean[r]
            assert torch.allclose(plan.clean[r], plan.clean[pr])
            assert torch.allclose(delta.norm(dim=-1), want, rtol=1e-4), (p, layer, pos)
            assert t.loc[r, "delta_norm"] == pytest.approx(t.loc[pr, "delta_norm"], rel=1e-4)
            deltas.append(delta[-1] / delta[-1].norm())
            if generated:  # an additive delta at generated positions, of the last prompt token's delta norm
                gen = plan.edits.delta[layer][r].float()
                src_last = plan.edits.replace_generated[layer][pr]
                clean_last = plan.clean[pr][-1]
                assert float(gen.norm()) == pytest.approx(float((src_last - clean_last).norm()), rel=1e-4)
        cos = torch.stack(deltas) @ torch.stack(deltas).T
        assert (cos - torch.eye(4)).abs().max() < 0.9  # different directions per draw
    assert not generated or (t.kind == "random").sum() == int(plan.edits.delta[1].abs().sum(1).gt(0).sum()
                                                            + plan.edits.delta[2].abs().sum(1).gt(0).sum())
    again = _sweep(model, ["all", "last"], layers=[1, 2], n_random=4, generated=generated, seed=3).plan()
    assert all(torch.equal(a, b) for a, b in zip(plan.values[1:], again.values[1:], strict=True) if a is not None)
    other = _sweep(model, ["all", "last"], layers=[1, 2], n_random=4, generated=generated, seed=4).plan()
    r = int(t.index[t.kind == "random"][0])
    assert not torch.allclose(plan.values[r], other.values[r])


def test_bad_sweep_input_fails_before_anything_runs():
    model = tiny_model("llama")
    with pytest.raises(PositionError):
        _sweep(model, ["middle"])
    with pytest.raises(InputError, match="pairing"):
        _sweep(model, ["last"], pairing="zip")
    with pytest.raises(InputError, match="target prompts"):
        _sweep(model, ["last"], targets=[])
    with pytest.raises(InputError, match="reserved"):
        _sweep(model, ["last"], source_name="random-1")
    from emoscope.errors import LayerError

    with pytest.raises(LayerError, match="out of range"):
        _sweep(model, ["last"], layers=[7])


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
def test_sharing_the_unpatched_prompt_heads_changes_nothing(family):
    """Rows that patch only the last few prompt tokens run those tokens on a shared prefill of the
    rest (decode_rows(shared_prefix=...)): the same outputs and step-1 view as a full prefill per row."""
    model = tiny_model(family)
    kw = dict(layers=[1, 2], n_random=2, neutral=NEUTRAL, self_rows=True, generated=True, batch_rows=7)
    shared = _sweep(model, ["last", "window:3", "all"], **kw)
    res = shared.run()
    full = _sweep(model, ["last", "window:3", "all"], share_prefix=False, **kw).run()
    assert res.tokens == full.tokens
    assert np.allclose(res.table.step1, full.table.step1, atol=1e-4)
    # the plan really shares: every row but the full-prompt ones runs a tail shorter than its prompt
    t = res.table
    tail = t.target_tokens - t.n_patched.clip(lower=1)
    assert (tail[t.positions.isin(["last", "window:3"]) | (t.kind == "baseline")] > 0).all()


def test_covariance_matched_random_patches_sit_beside_the_isotropic_ones():
    """``random_kind="both"``: isotropic rows ``random-k`` and covariance-matched rows
    ``random-cov-k``, each with the norm of the delta it replaces; the covariance directions are the
    seeded draws from the neutral covariance (recomputed here), and the steering view labels both."""
    from emoscope.core.directions import random_layer_directions
    from emoscope.patching.effects import steering_view
    from emoscope.vectors.strength import neutral_covariance

    model = tiny_model("llama")
    plan = _sweep(model, ["last"], layers=[1, 2], n_random=3, seed=5, random_kind="both").plan()
    t = plan.table
    rnd = t[t.kind == "random"]
    assert sorted(rnd.source.unique()) == ["random-0", "random-1", "random-2", "random-cov-0", "random-cov-1",
                                           "random-cov-2"]
    assert set(rnd.random_kind) == {"isotropic", "covariance"} and set(t.random_kind[t.kind != "random"]) == {""}
    want = random_layer_directions(model.d_model, [1, 2], 3, np.random.default_rng([5, 1]),
                                   cov=neutral_covariance(model, [1, 2]))
    for r in rnd.index[rnd.random_kind == "covariance"]:
        k, layer = int(t.at[r, "source"].rsplit("-", 1)[1]), int(t.at[r, "layer"])
        pr = t.index[(t.kind == "patch") & (t.prompt_id == t.at[r, "prompt_id"]) & (t.layer == layer)][0]
        delta = (plan.values[r] - plan.clean[r])[-1]
        assert float(delta.norm()) == pytest.approx(float((plan.values[pr] - plan.clean[pr])[-1].norm()), rel=1e-4)
        u = torch.as_tensor(want[k][layer], dtype=torch.float32)
        assert float(delta @ u) / float(delta.norm()) == pytest.approx(1.0, abs=1e-4)  # along the seeded draw
    view = steering_view(t.assign(target_change=0.0))
    assert set(view.loc[view.kind == "random", "random_kind"]) == {"isotropic", "covariance"}
    with pytest.raises(InputError, match="random_kind"):
        _sweep(model, ["last"], random_kind="gaussian")
