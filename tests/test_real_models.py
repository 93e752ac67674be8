"""Real-model checks on the embedded SmolLM2-135M (marked ``real``; select with ``-m real``).

Kept few: each loads a 135M model on CPU. The model fixture is session-scoped.
"""

from __future__ import annotations

import numpy as np
import pytest

from emoscope.activations import extract
from tests.helpers import POSITIONS, pool, reference, rel_err

pytestmark = pytest.mark.real

TEXTS = [
    "Thank you so much, that really made my day.",
    "The train leaves at seven.",
    "I can't believe you broke it again, this is the third time this week!",
    "Sorry about all of that.",
]


def test_smollm_loads_with_expected_shape(smollm):
    assert (smollm.n_layers, smollm.d_model, smollm.n_heads) == (30, 576, 9)
    assert smollm.architecture == "llama" and smollm.has_chat_template
    assert smollm.source["kind"] == "embedded" and len(smollm.weights_sha256) == 64
    text = smollm.chat("Tell me about joy.")
    assert "Tell me about joy." in text and text.rstrip().endswith("assistant")


def test_smollm_extract_matches_hooks(smollm):
    layers = list(range(smollm.n_layers))
    ref = reference(smollm, TEXTS, layers)
    for position in POSITIONS:
        for side in ("right", "left"):
            acts = extract(smollm, TEXTS, layers="all", position=position, batch_size=3, padding_side=side,
                           cache=False, progress=False)
            for layer in layers:
                want = np.concatenate(ref[layer]) if position == "all" else np.stack([pool(s, position) for s in ref[layer]])
                assert rel_err(acts.get(layer), want) < 1e-5, (position, side, layer)


def test_smollm_batched_equals_single_and_cache(smollm, tmp_path):
    batched = extract(smollm, TEXTS, layers=[0, 14, 29], position="last", batch_size=4, cache=tmp_path,
                      progress=False)
    for i, text in enumerate(TEXTS):
        single = extract(smollm, [text], layers=[0, 14, 29], position="last", batch_size=1, cache=False,
                         progress=False)
        for layer in (0, 14, 29):
            assert rel_err(batched.get(layer)[i], single.get(layer)[0]) < 1e-5
    again = extract(smollm, TEXTS, layers=[0, 14, 29], position="last", cache=tmp_path, progress=False)
    assert again.cache_hit and np.array_equal(again.get(29), batched.get(29))
    # Residual norms grow with depth in this model (a sanity check on layer order).
    norms = {layer: float(np.linalg.norm(batched.get(layer), axis=1).mean()) for layer in (0, 14, 29)}
    assert norms[0] < norms[14] < norms[29]
