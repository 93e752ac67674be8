"""Patching on the embedded SmolLM2-135M (marked ``real``; about two minutes on two CPU cores).

Identities checked on the real model, chat template included: patching a prompt into itself gives
the unpatched outputs, and a patched row of the batched decode (the unpatched heads of the prompts
shared) is what one ``generate`` call with a raw forward hook writes.
"""

from __future__ import annotations

import pytest
import torch

from emoscope.datasets import load_dataset
from emoscope.models.batching import eos_ids
from emoscope.patching import PatchSweep

pytestmark = pytest.mark.real

N_TOKENS = 8


def test_smollm_self_patch_is_identity_and_rows_match_generate(smollm):
    ds = load_dataset("emotions-basic")
    anger = [t for t, y in zip(ds.texts, ds.labels, strict=True) if y == "anger"][:6]
    prompts = load_dataset("neutral-starts").texts[:3]
    ident = PatchSweep(smollm, prompts, prompts, [12], ["last", "all"], source_name="anger", pairing="per_target",
                       n_random=0, max_new_tokens=N_TOKENS, scorers=["nrc"], progress=False).run()
    t = ident.table
    base = {int(r.prompt_id): ident.tokens[i] for i, r in t[t.kind == "baseline"].iterrows()}
    for i, r in t[t.kind.isin(["patch", "self"])].iterrows():
        assert ident.tokens[i] == base[int(r.prompt_id)], (r.kind, r.positions)

    sweep = PatchSweep(smollm, anger, prompts, [12], ["window:4"], source_name="anger", n_random=1,
                       max_new_tokens=N_TOKENS, generated=True, scorers=["nrc"], progress=False)
    plan = sweep.plan()
    res = sweep.run()
    ids = sweep.token_ids(prompts)
    stop = eos_ids(smollm)
    t = res.table
    assert res.meta["chat_template"] and t.loc[t.kind == "patch", "changed"].any()
    for r in t.index[t.kind == "patch"]:
        p = int(t.at[r, "prompt_id"])
        value, last = plan.values[r], plan.edits.replace_generated[12][r]
        width = len(ids[p])

        def hook(_m, _i, out, value=value, last=last, width=width):
            h = (out[0] if isinstance(out, tuple) else out).clone()
            if h.shape[1] == width:
                h[0, width - len(value):] = value.to(h.dtype)
            else:
                h[0, :] = last.to(h.dtype)
            return (h, *out[1:]) if isinstance(out, tuple) else h

        handle = smollm.blocks[12].register_forward_hook(hook)
        try:
            with torch.inference_mode():
                out = smollm.hf.generate(input_ids=torch.tensor([ids[p]]), attention_mask=torch.ones(1, width,
                                         dtype=torch.long), max_new_tokens=N_TOKENS, do_sample=False,
                                         pad_token_id=smollm.tokenizer.pad_token_id)
        finally:
            handle.remove()
        ref = []
        for tok in out[0, width:].tolist():
            ref.append(tok)
            if tok in stop:
                break
        assert res.tokens[r] == ref
