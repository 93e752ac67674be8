"""Head ablation and patching in multi-token generation: identities, raw-hook references through
``transformers.generate``, and the batched sweep against each configuration run alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoscope.heads.sweep import (
    HeadConfig,
    HeadSweep,
    decode_configs,
    mean_head_outputs,
    plan_configs,
    record_head_outputs,
)
from emoscope.models.batching import eos_ids
from emoscope.models.head_outputs import head_shape

from .conftest import tiny_model
from .greedy import NEAR_TIE, first_difference, same_or_near_tie, trim

PROMPTS = ["Thank you so much for the", "The meeting is", "Rain is expected tomorrow afternoon across",
           "She walked to the market"]
FAMILIES = ["llama", "gpt2", "gemma3_text"]  # GQA (llama, gemma3) and not (gpt2, Conv1D)


def _ids(model, prompts=PROMPTS):
    return [list(model.tokenizer(p)["input_ids"]) for p in prompts]


def _generate_with(model, ids, n, pre_hooks):
    """Reference: one prompt through ``transformers.generate`` with raw o_proj pre-hooks."""
    handles = [model.attn_out(layer).register_forward_pre_hook(fn) for layer, fn in pre_hooks.items()]
    try:
        with torch.inference_mode():
            out = model.hf.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=n, do_sample=False, pad_token_id=model.tokenizer.pad_token_id,
                                    output_scores=True, return_dict_in_generate=True)
    finally:
        for h in handles:
            h.remove()
    return out.sequences[0, len(ids):].tolist(), torch.stack(out.scores, dim=1)[0]  # (steps, vocab)


def _differ_from_alone(model, configs, ids, batched, **kw):
    """How many rows of ``batched`` (configuration-major: row ``c * n + p``) differ from
    configuration ``c`` decoded alone on the prompts; each difference must be a near-tie of the
    configuration run alone (its logit gap at the first differing step below ``NEAR_TIE``)."""
    stop, n = eos_ids(model), len(ids)
    differ = 0
    for c, cfg in enumerate(configs):
        alone = decode_configs(model, [cfg], ids, [0] * n, list(range(n)), **kw)
        for p in range(n):
            got, ref = trim(batched.tokens[c * n + p], stop), trim(alone.tokens[p], stop)
            if got != ref:
                step = first_difference(got, ref)
                assert alone.gaps[p][step] < NEAR_TIE, f"{cfg.name} {cfg.method} prompt {p} differs at step {step}"
                differ += 1
    return differ


def _zero_slice(head, hd, value=None):
    def hook(_m, args):
        x = args[0].clone()
        x[..., head * hd:(head + 1) * hd] = 0.0 if value is None else value.to(x.dtype)
        return (x,)
    return hook


@pytest.mark.parametrize("family", FAMILIES)
def test_ablating_no_heads_is_an_identity(family):
    """The same decode with the head-edit machinery installed but no head chosen: bitwise the same
    tokens, logit gaps and probe projections as the unedited decode."""
    model = tiny_model(family)
    u = np.random.default_rng(0).standard_normal(model.d_model)
    ids = _ids(model)
    n = len(ids)
    mv = mean_head_outputs(model, [0, 1, 2], PROMPTS)
    runs = []
    for cfg in (HeadConfig("baseline", "baseline", "none"), HeadConfig("chosen", "none-zero", "zero", ()),
                HeadConfig("chosen", "none-mean", "mean", ())):
        runs.append(decode_configs(model, [cfg], ids, [0] * n, list(range(n)), max_new_tokens=8, mean_values=mv,
                                   probe=(2, u / np.linalg.norm(u))))
    ref = runs[0]
    for dec in runs[1:]:
        assert dec.tokens == ref.tokens
        for a, b in zip(dec.gaps, ref.gaps, strict=True):
            assert np.array_equal(a, b)  # the logits' top-2 gaps, bitwise
        assert np.array_equal(dec.proj_last, ref.proj_last) and np.array_equal(dec.proj_gen, ref.proj_gen)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["zero", "mean"])
def test_ablation_equals_a_raw_hook_in_multi_token_generation(family, method):
    model = tiny_model(family)
    n_heads, hd = head_shape(model, 0)
    stop = eos_ids(model)
    heads = ((0, 1), (2, 3))
    mv = mean_head_outputs(model, [0, 2], PROMPTS[:2]) if method == "mean" else None
    configs = plan_configs(heads, [((0, 2), (2, 0))], [method])  # baseline, chosen, one random set: one batch
    ids = _ids(model)
    n = len(ids)
    rows = [c for c in range(len(configs)) for _ in ids]
    dec = decode_configs(model, configs, ids, rows, [p for _ in configs for p in range(n)], max_new_tokens=10,
                         mean_values=mv)
    for p in range(n):
        hooks = {a: _zero_slice(b, hd, None if mv is None else mv[a][b]) for a, b in heads}
        ref, scores = _generate_with(model, ids[p], 10, hooks)
        same_or_near_tie(dec.tokens[n + p], ref, scores, stop)  # the chosen configuration's row
        base, bscores = _generate_with(model, ids[p], 10, {})
        same_or_near_tie(dec.tokens[p], base, bscores, stop)
    assert any(dec.tokens[n + p] != dec.tokens[p] for p in range(n))  # the ablation changed something


def test_mean_head_outputs_are_the_token_mean_without_the_first_token():
    model = tiny_model("llama")
    from emoscope.models.head_outputs import head_outputs

    texts = ["The meeting is at three.", "Rain is expected tomorrow afternoon."]
    got = mean_head_outputs(model, [1], texts, batch_size=1)[1]
    zs = []
    for t in texts:
        with torch.inference_mode(), head_outputs(model, 1) as cap:
            model.base(input_ids=torch.tensor([model.tokenizer(t)["input_ids"]]))
        zs.append(cap.z[0, 1:].float())
    torch.testing.assert_close(got, torch.cat(zs).mean(0), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_head_sweep_equals_each_configuration_alone(family):
    model = tiny_model(family)
    mv = mean_head_outputs(model, [0, 1, 2], PROMPTS)
    configs = plan_configs([(1, 0), (2, 2)], [((1, 1), (2, 0)), ((1, 3), (2, 1)), ((1, 2), (2, 3))], ["zero", "mean"])
    ids = _ids(model)
    n = len(ids)
    rows = [c for c in range(len(configs)) for _ in ids]
    prompts = [p for _ in configs for p in range(n)]
    batched = decode_configs(model, configs, ids, rows, prompts, max_new_tokens=10, mean_values=mv, batch_rows=11)
    assert batched.batches == 4  # 9 configurations x 4 prompts = 36 rows in chunks of 11
    assert _differ_from_alone(model, configs, ids, batched, max_new_tokens=10, mean_values=mv) <= 1


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_head_patching_equals_a_raw_hook_and_self_patching_is_a_no_op(family):
    model = tiny_model(family)
    n_heads, hd = head_shape(model, 0)
    stop = eos_ids(model)
    ids = _ids(model)
    n = len(ids)
    sources = [ids[(p + 1) % n] for p in range(n)]  # prompt p takes prompt p+1's head outputs
    heads = ((1, 2), (2, 0))
    values = record_head_outputs(model, sources, [1, 2], tokens=1)
    configs = plan_configs(heads, [], ["patch"])
    dec = decode_configs(model, configs, ids, [0] * n + [1] * n, list(range(n)) * 2, max_new_tokens=8,
                         patch_values=values, patch_tokens=1)

    for p in range(n):
        def at_last(layer, head, p=p):
            def hook(_m, args):
                x = args[0]
                if x.shape[1] == 1 and x.shape[1] != len(ids[p]):  # a cached decode step: untouched
                    return None
                x = x.clone()
                x[:, -1, head * hd:(head + 1) * hd] = values[layer][p, -1, head].to(x.dtype)
                return (x,)
            return hook
        ref, scores = _generate_with(model, ids[p], 8, {a: at_last(a, b) for a, b in heads})
        same_or_near_tie(dec.tokens[n + p], ref, scores, stop)
    assert any(dec.tokens[n + p] != dec.tokens[p] for p in range(n))  # the patch changed something

    own = record_head_outputs(model, ids, [1, 2], tokens=2)  # each prompt patched with its own outputs
    same = decode_configs(model, configs, ids, [0] * n + [1] * n, list(range(n)) * 2, max_new_tokens=8,
                          patch_values=own, patch_tokens=2)
    for p in range(n):
        assert trim(same.tokens[n + p], stop) == trim(same.tokens[p], stop)


def test_probe_projection_reads_the_residual_at_the_last_prompt_token():
    model = tiny_model("llama")
    u = np.random.default_rng(2).standard_normal(model.d_model)
    u /= np.linalg.norm(u)
    ids = _ids(model)
    dec = decode_configs(model, [HeadConfig("baseline", "baseline", "none")], ids, [0] * len(ids),
                         list(range(len(ids))), max_new_tokens=4, probe=(1, u))
    for p, seq in enumerate(ids):
        with torch.inference_mode():
            hs = model.hf(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states
        ref = float(hs[2][0, -1].float() @ torch.as_tensor(u, dtype=torch.float32))  # resid[1] = hidden_states[2]
        assert dec.proj_last[p] == pytest.approx(ref, abs=1e-4)
        assert np.isfinite(dec.proj_gen[p])


def test_head_sweep_scores_rows_against_their_baseline():
    model = tiny_model("llama")
    u = np.random.default_rng(0).standard_normal(model.d_model)
    configs = plan_configs([(1, 0)], [((1, 1),), ((1, 2),)], ["zero"])
    res = HeadSweep(model, configs, PROMPTS[:3], max_new_tokens=5, chat=False, probe=(2, u / np.linalg.norm(u)),
                    scorers=["vader", "repetition", "script"], target="valence", progress=False).run()
    t = res.table
    assert len(t) == 3 * 4 and list(t["kind"].unique()) == ["baseline", "chosen", "random"]
    base = t[t.kind == "baseline"].set_index("prompt_id")
    assert (t.loc[t.kind == "baseline", "target_change"] == 0).all()
    row = t[t.kind == "chosen"].iloc[0]
    assert row["target_change"] == pytest.approx(row["valence"] - base.loc[row.prompt_id, "valence"])
    assert {"proj_last", "proj_gen", "regime", "broken", "heads", "text"} <= set(t.columns)
    assert t.loc[t.kind == "chosen", "heads"].iloc[0] == "1.0"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generated_window_shares_the_prefill_and_equals_a_raw_hook_on_decode_steps(family):
    model = tiny_model(family)
    n_heads, hd = head_shape(model, 0)
    stop = eos_ids(model)
    ids = _ids(model)
    n = len(ids)
    u = np.random.default_rng(1).standard_normal(model.d_model)
    configs = plan_configs(((1, 1),), [((1, 2),)], ["zero"])
    dec = decode_configs(model, configs, ids, [c for c in range(3) for _ in ids], list(range(n)) * 3,
                         max_new_tokens=8, positions="generated", probe=(2, u / np.linalg.norm(u)))
    assert np.array_equal(dec.proj_last[n:2 * n], dec.proj_last[:n])  # the prompt itself is not edited

    def on_decode_steps(_m, args):
        x = args[0]
        if x.shape[1] != 1:  # the prompt forward: untouched
            return None
        x = x.clone()
        x[..., 1 * hd:2 * hd] = 0.0
        return (x,)

    for p in range(n):
        ref, scores = _generate_with(model, ids[p], 8, {1: on_decode_steps})
        same_or_near_tie(dec.tokens[n + p], ref, scores, stop)


@pytest.mark.parametrize("family", FAMILIES)
def test_sharing_the_blocks_below_the_lowest_ablated_layer_equals_each_configuration_alone(family):
    """``share_below`` (the default): the rows' prompts run blocks below the lowest edited layer
    once per unique prompt. Greedy outputs equal every configuration run alone (one decode per
    configuration, the reference the benchmark times), and equal the same batch with a full
    prefill per row; probes below and above the split read the same values."""
    model = tiny_model(family)
    mv = mean_head_outputs(model, [1, 2], PROMPTS)
    configs = plan_configs([(1, 0), (2, 2)], [((1, 1), (2, 0)), ((1, 3), (2, 1))], ["zero", "mean"])
    ids = _ids(model)
    n = len(ids)
    rows = [c for c in range(len(configs)) for _ in ids]
    prompts = [p for _ in configs for p in range(n)]
    u = np.random.default_rng(3).standard_normal(model.d_model)
    u /= np.linalg.norm(u)
    seen = []
    handle = model.blocks[0].register_forward_hook(lambda _m, _i, o: seen.append((o[0] if isinstance(o, tuple)
                                                                                   else o).shape))
    try:
        shared = decode_configs(model, configs, ids, rows, prompts, max_new_tokens=10, mean_values=mv, probe=(0, u))
    finally:
        handle.remove()
    assert seen[0][0] == n  # the prefill ran block 0 once per unique prompt, not once per row
    full = decode_configs(model, configs, ids, rows, prompts, max_new_tokens=10, mean_values=mv, probe=(0, u),
                          share_below=False)
    assert shared.tokens == full.tokens
    for a, b in zip(shared.gaps, full.gaps, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(shared.proj_last, full.proj_last, atol=1e-5)
    above = decode_configs(model, configs, ids, rows, prompts, max_new_tokens=10, mean_values=mv, probe=(2, u))
    np.testing.assert_allclose(above.proj_last, decode_configs(model, configs, ids, rows, prompts, max_new_tokens=10,
                               mean_values=mv, probe=(2, u), share_below=False).proj_last, atol=1e-5)
    assert _differ_from_alone(model, configs, ids, shared, max_new_tokens=10, mean_values=mv) <= 1
