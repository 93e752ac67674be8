"""Steering on the embedded SmolLM2-135M (marked ``real``; about a minute on two CPU cores).

Identities checked on the real model: the unsteered rows of a batched sweep are exactly what plain
``generate`` writes, and a joy vector (difference of means on ``emotions-12``) and its negation, at
the same layer and a small strength (1/8 of the typical residual norm: larger ones collapse the
text on this model, see ``emoscope steer``), move the target score (NRC joy) in opposite directions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoscope.activations import extract
from emoscope.datasets import load_dataset
from emoscope.models.batching import eos_ids
from emoscope.steering import SteeringSweep
from emoscope.vectors import ConceptVector, DiffMeans

pytestmark = pytest.mark.real

LAYER, STRENGTH, N_PROMPTS, N_TOKENS = 20, 0.125, 16, 24


@pytest.fixture(scope="module")
def joy(smollm):
    ds = load_dataset("emotions-12")
    keep = [i for i, y in enumerate(ds.labels) if y in ("joy", "neutral")]
    acts = extract(smollm, [ds.texts[i] for i in keep], [LAYER], position="mean_from:1", cache=False, progress=False)
    y = [ds.labels[i] for i in keep]
    return ConceptVector("joy", {LAYER: DiffMeans("joy").fit(acts.get(LAYER), y).vector_})


def test_smollm_vector_and_negation_move_the_target_in_opposite_directions(smollm, joy):
    prompts = load_dataset("neutral-starts").texts[:N_PROMPTS]
    res = SteeringSweep(smollm, joy, [LAYER], [STRENGTH], prompts, max_new_tokens=N_TOKENS, n_random=0,
                        scorers=["nrc"], progress=False).run()
    t = res.table
    assert res.target == "nrc_joy"
    plus = t[(t.kind == "vector") & (t.strength == STRENGTH)]
    minus = t[(t.kind == "vector") & (t.strength == -STRENGTH)]
    assert len(plus) == len(minus) == N_PROMPTS
    # every steered row is scored against the unsteered row of its own prompt
    assert plus.target_change.mean() > 0 > minus.target_change.mean()
    assert plus.target_score.mean() > minus.target_score.mean()

    # strength 0 is exactly the unsteered greedy output: the baseline rows equal plain generate
    tok, stop = smollm.tokenizer, eos_ids(smollm)
    for _, row in t[t.kind == "baseline"].head(2).iterrows():
        ids = tok(smollm.chat(prompts[row.prompt_id]), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = smollm.hf.generate(ids, max_new_tokens=N_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
        ref = out[0, ids.shape[1]:].tolist()
        got = res.tokens[row.name]
        assert got == ref[: len(got)] and (len(got) == N_TOKENS or got[-1] in stop)
    assert np.isfinite(t.target_score).all()
