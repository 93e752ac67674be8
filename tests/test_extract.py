"""Extraction parity: ``extract`` equals a plain forward hook on each block, for every family,
layer and position mode; batched equals one-at-a-time; padding side does not matter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emoscope.activations import Activations, extract
from emoscope.errors import InputError, LayerError, OutputError, PositionError
from tests.helpers import POSITIONS, pool, reference, rel_err

TEXTS = [
    "Thank you so much for the lovely gift!",
    "The meeting is at three.",
    "I am sorry I forgot your birthday; it will not happen again, I promise you.",
    "Rain tomorrow.",
    "She walked to the market and bought apples, bread and cheese for the picnic.",
]


@pytest.mark.parametrize("position", POSITIONS)
def test_extract_matches_hooks_every_family(family_model, position):
    model = family_model
    layers = list(range(model.n_layers))
    ref = reference(model, TEXTS, layers)
    for side in ("right", "left"):
        acts = extract(model, TEXTS, layers="all", position=position, batch_size=2, padding_side=side,
                       cache=False, progress=False)
        assert acts.layers == layers
        for layer in layers:
            if position == "all":
                want = np.concatenate(ref[layer])
                assert acts.get(layer).shape == want.shape
            else:
                want = np.stack([pool(s, position) for s in ref[layer]])
                assert acts.get(layer).shape == (len(TEXTS), model.d_model)
            assert rel_err(acts.get(layer), want) < 1e-5, (model.name, side, layer)
    assert acts.token_counts.tolist() == [len(s) for s in ref[0]]


def test_layers_differ_and_last_block_is_not_final_norm(family_model):
    """resid[-1] is the raw block output: it differs from hidden_states[-1] (final norm applied)."""
    model = family_model
    acts = extract(model, TEXTS[:2], layers="all", position="last", cache=False, progress=False)
    assert rel_err(acts.get(0), acts.get(1)) > 1e-3
    ids = model.tokenizer(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hs = model.hf(input_ids=ids, output_hidden_states=True).hidden_states
    n = model.n_layers
    assert rel_err(acts.get(n - 2)[0], hs[n - 1][0, -1].numpy()) < 1e-5  # hidden_states[l+1] == resid[l]
    assert rel_err(acts.get(n - 1)[0], hs[n][0, -1].numpy()) > 1e-3      # hidden_states[-1] is normed


def test_batched_equals_one_at_a_time(family_model):
    model = family_model
    batched = extract(model, TEXTS, layers="all", position="mean", batch_size=len(TEXTS), cache=False, progress=False)
    for i, text in enumerate(TEXTS):
        single = extract(model, [text], layers="all", position="mean", batch_size=1, cache=False, progress=False)
        for layer in batched.layers:
            assert rel_err(batched.get(layer)[i], single.get(layer)[0]) < 1e-5


def test_forward_stops_after_last_requested_layer():
    from tests.conftest import tiny_model

    model = tiny_model("llama")
    ran = []
    hooks = [b.register_forward_hook(lambda *_a, i=i: ran.append(i)) for i, b in enumerate(model.blocks)]
    head_calls = []
    hooks.append(model.unembed.register_forward_hook(lambda *_a: head_calls.append(1)))
    try:
        extract(model, TEXTS[:2], layers=[0], position="last", cache=False, progress=False)
    finally:
        for h in hooks:
            h.remove()
    assert ran == [0] and head_calls == []


def test_cache_hit_and_disk_roundtrip(tmp_path):
    from tests.conftest import tiny_model

    model = tiny_model("gpt2")
    cache = tmp_path / "cache"
    first = extract(model, TEXTS, layers=[0, 2], position="all", cache=cache, out=tmp_path / "out", progress=False)
    assert not first.cache_hit
    second = extract(model, TEXTS, layers=[0, 2], position="all", cache=cache, progress=False)
    assert second.cache_hit
    for layer in (0, 2):
        np.testing.assert_array_equal(first.get(layer), second.get(layer))
    np.testing.assert_array_equal(first.offsets, second.offsets)
    loaded = Activations.load(tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    for key in ("model", "weights_sha256", "dataset_sha256", "layers", "position", "emoscope_version", "created_at"):
        assert key in manifest
    assert manifest["layers"] == [0, 2] and loaded.position == "all"
    np.testing.assert_array_equal(loaded.per_text(2, 3), first.get(2)[first.offsets[3]:first.offsets[4]])
    # Another position is another key: a miss.
    third = extract(model, TEXTS, layers=[0, 2], position="last", cache=cache, progress=False)
    assert not third.cache_hit


@pytest.mark.parametrize("texts,exc,needle", [
    ([], InputError, "empty"),
    (["fine", "  "], InputError, "text 1 is empty"),
    ("just a string", InputError, "list"),
])
def test_bad_texts(texts, exc, needle):
    from tests.conftest import tiny_model

    with pytest.raises(exc, match=needle):
        extract(tiny_model("llama"), texts, cache=False, progress=False)


def test_bad_layers_and_positions(tmp_path):
    from tests.conftest import tiny_model

    model = tiny_model("llama")
    with pytest.raises(LayerError, match="out of range"):
        extract(model, TEXTS, layers=[7], cache=False, progress=False)
    with pytest.raises(PositionError, match="unknown position"):
        extract(model, TEXTS, position="middle", cache=False, progress=False)
    with pytest.raises(PositionError, match="needs at least"):
        extract(model, TEXTS, position="token:500", cache=False, progress=False)
    assert model.resolve_layers("0-1,-1") == [0, 1, 2]
    assert model.resolve_layers(0.5) == [2] or model.resolve_layers(0.5) == [1]


def test_unwritable_output_leaves_nothing(tmp_path):
    from tests.conftest import tiny_model

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if __import__("os").access(ro, __import__("os").W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(OutputError, match="not writable"):
            extract(tiny_model("llama"), TEXTS, out=ro / "x", cache=False, progress=False)
    finally:
        ro.chmod(0o700)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        extract(tiny_model("llama"), TEXTS, out=blocker / "sub", cache=False, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ro"]
