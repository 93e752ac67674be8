"""Edits go to the device of the block they touch (models sharded with ``device_map``).

No GPU is needed: the model is split over two "devices" faked at the module level. Blocks
``0..1`` stay on the CPU; blocks ``2..3`` and the final norm move to PyTorch's ``meta``
device, each with a forward pre-hook that moves its inputs there (what accelerate's
``device_map`` hooks do between GPUs). Meta tensors have shapes but no data, and any
operation that mixes a CPU tensor with a meta tensor raises, so an edit, vector, mask or
gather index left on the CPU at a meta block fails the forward, as it would at a block on a
second GPU. A reference hook that does not move its delta is shown to fail the same way, so the
fake catches the bug it is here for.
"""

from __future__ import annotations

import pytest
import torch

from emoscope.models import wrap_model
from emoscope.models.decode import RowEdits
from emoscope.models.interventions import (
    EditHook,
    Injector,
    PositionTracker,
    ReplaceHook,
    installed,
    parse_window,
    replace_block_output,
)
from emoscope.models.standard import block_output
from tests.conftest import tiny_tokenizer

SPLIT = 2  # blocks >= SPLIT live on the second device


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, tuple):
        return tuple(_to(v, device) for v in x)
    if isinstance(x, list):
        return [_to(v, device) for v in x]
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _moves_inputs(device):
    def hook(_module, args, kwargs):
        return _to(args, device), _to(kwargs, device)
    return hook


@pytest.fixture()
def sharded():
    import transformers as tf

    tok = tiny_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, max_position_embeddings=256)
    hf = tf.AutoModelForCausalLM.from_config(tf.LlamaConfig(num_key_value_heads=2, **common), dtype=torch.float32)
    model = wrap_model(hf, tok, name="tiny-sharded")
    for i, blk in enumerate(model.blocks):
        if i >= SPLIT:
            blk.to("meta")
            blk.register_forward_pre_hook(_moves_inputs("meta"), with_kwargs=True)
    model.final_norm.to("meta")
    model.final_norm.register_forward_pre_hook(_moves_inputs("meta"), with_kwargs=True)
    assert model.device == torch.device("cpu")  # the model's "device" is its first shard's
    return model


def _ids(model, batch=2):
    return torch.tensor([model.tokenizer("Thank you so much for the gift")["input_ids"]] * batch)


def test_the_fake_second_device_catches_an_edit_left_on_the_first(sharded):
    delta = torch.ones(sharded.d_model)  # on the CPU, where the model's first shard is

    def naive(_m, _i, out):  # what an edit that is not moved does
        return replace_block_output(out, block_output(out) + delta)

    handle = sharded.blocks[3].register_forward_hook(naive)
    try:
        with pytest.raises(RuntimeError, match="meta|device"):
            sharded.base(input_ids=_ids(sharded), use_cache=False)
    finally:
        handle.remove()


@pytest.mark.parametrize("layer", [1, 3])
def test_steering_and_ablation_edits_follow_the_block(sharded, layer):
    B = 2
    tracker = PositionTracker()
    d = sharded.d_model
    hooks = {layer: EditHook(tracker, parse_window("all"), delta=torch.randn(B, d), direction=torch.randn(B, d),
                             ablate=torch.tensor([1.0, 0.0]))}
    with torch.no_grad(), installed(sharded, hooks, tracker):
        out = sharded.base(input_ids=_ids(sharded, B), use_cache=False)
    assert out.last_hidden_state.device.type == "meta"


def test_decode_row_edits_and_replacement_follow_the_block(sharded):
    B, d = 2, sharded.d_model
    edits = RowEdits(delta={3: torch.randn(B, d)}, direction={3: torch.randn(B, d)},
                     ablate={3: torch.tensor([1.0, 0.0])})
    tracker = PositionTracker()
    hooks = {3: edits.hook(tracker, parse_window("generated"), 3)}
    ids = _ids(sharded, B)
    hooks[2] = ReplaceHook(tracker, value=torch.randn(B, 2, d), mask=torch.ones(B, 2, dtype=torch.bool))
    with torch.no_grad(), installed(sharded, hooks, tracker):
        out = sharded.base(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    assert out.last_hidden_state.device.type == "meta"


def test_injector_deltas_and_gather_follow_the_block(sharded):
    B, d = 2, sharded.d_model
    ids = _ids(sharded, B)
    with torch.no_grad(), Injector(sharded) as inj:
        inj.deltas = {1: torch.randn(B, 1, d), 3: torch.randn(B, 1, d)}
        inj.gather = torch.full((B,), ids.shape[1] - 1)
        sharded.base(input_ids=ids, use_cache=False)
        devices = [c.device.type for c in inj.captured]
    assert devices == ["cpu"] * SPLIT + ["meta"] * (sharded.n_layers - SPLIT)


def test_spec_and_cli_carry_device_map_and_dtype_to_the_loader(monkeypatch, tmp_path):
    import emoscope.models as models
    from emoscope.cli.main import main
    from emoscope.runs import parse_spec
    from emoscope.runs.context import ModelCache

    plain = parse_spec({"name": "t", "model": "m", "stages": ["extract"]})
    spec = parse_spec({"name": "t", "model": "m", "stages": ["extract"], "device_map": "auto",
                       "model_dtype": "bfloat16"})
    assert spec.device_map == "auto" and "device_map" in spec.to_dict() and "device_map" not in plain.to_dict()
    assert spec.hash != plain.hash
    seen = []
    monkeypatch.setattr(models, "load_model", lambda name, **kw: seen.append((name, kw)) or object())
    cache = ModelCache(dtype=spec.model_dtype, device_map=spec.device_map)
    cache.model("m")
    assert seen == [("m", {"dtype": "bfloat16", "device_map": "auto"})]
    setup, key = cache.setup("m")  # what a Ray worker calls: the same loader, the same placement
    setup()
    assert seen[-1] == seen[0] and "auto" in key
    # the one-stage commands take --device-map and --dtype; a bad dtype is one line before any load
    rc = main(["--quiet", "extract", "--model", "smollm2-135m", "--dataset", "emotions-12", "--device-map", "auto",
               "--dtype", "float7", "--out", str(tmp_path / "x")])
    assert rc == 2 and not (tmp_path / "x").exists()
