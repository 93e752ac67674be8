"""Texts longer than the model's context window are truncated with a ``ContextWarning``, not a
crash: the end is kept (with a leading special token such as BOS) for end readouts, the start
for ``token:I``. Checked against a raw forward of the hand-truncated ids on tiny models whose
window is 12 tokens (GPT-2, whose learned position table would index out of range, and Llama)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emoscope.activations import extract
from emoscope.errors import InputError
from emoscope.models.batching import (
    ContextWarning,
    context_length,
    fit_context,
    fit_model_context,
    pad_batch,
)

from .conftest import tiny_tokenizer

WINDOW = 12
LONG = "Thank you so much for the lovely gift, it made my whole week. " * 6
SHORT = "Rain tomorrow."


def _small_window_model(family: str):
    import transformers as tf

    from emoscope.models import wrap_model

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=WINDOW)
    else:
        cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=WINDOW)
    hf = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return wrap_model(hf, tok, name=f"tiny-window-{family}")


def _raw_last_block(model, ids: list[int], layer: int) -> np.ndarray:
    """Block ``layer``'s output for ``ids`` alone, by a plain hook (no emoscope code)."""
    got = {}
    h = model.blocks[layer].register_forward_hook(lambda _m, _i, o: got.__setitem__("x", (o[0] if isinstance(o, tuple)
                                                                                         else o)[0].clone()))
    try:
        with torch.no_grad():
            model.hf(input_ids=torch.tensor([ids]))
    finally:
        h.remove()
    return got["x"].numpy()  # (seq, d)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_long_texts_are_truncated_keeping_the_end_with_a_warning(family, tmp_path):
    model = _small_window_model(family)
    assert context_length(model) == WINDOW
    full = model.tokenizer(LONG)["input_ids"]
    assert len(full) > 3 * WINDOW
    with pytest.warns(ContextWarning, match=r"1 of 2 texts longer than the context window of 12 tokens"):
        acts = extract(model, [LONG, SHORT], layers=[1], position="last", cache=False, progress=False)
    want = _raw_last_block(model, full[-WINDOW:], 1)[-1]  # the tiny tokenizer adds no BOS: the plain tail
    np.testing.assert_allclose(acts.get(1)[0], want, rtol=1e-5, atol=1e-5)
    assert acts.token_counts.tolist() == [WINDOW, len(model.tokenizer(SHORT)["input_ids"])]
    assert acts.manifest["n_truncated"] == 1 and acts.manifest["truncation_kept"] == "end"
    # token:I counts from the start, so it keeps the start
    with pytest.warns(ContextWarning):
        first = extract(model, [LONG], layers=[1], position="token:2", cache=False, progress=False)
    np.testing.assert_allclose(first.get(1)[0], _raw_last_block(model, full[:WINDOW], 1)[2], rtol=1e-5, atol=1e-5)


def test_max_length_below_the_window_and_all_tokens(tmp_path):
    model = _small_window_model("llama")
    full = model.tokenizer(LONG)["input_ids"]
    with pytest.warns(ContextWarning, match="window of 5 tokens"):
        acts = extract(model, [LONG], layers=[0], position="all", max_length=5, cache=tmp_path, progress=False)
    np.testing.assert_allclose(acts.get(0), _raw_last_block(model, full[-5:], 0), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="max_length"):
        extract(model, [LONG], layers=[0], max_length=0, cache=False, progress=False)


def test_fit_context_keeps_the_leading_special_token_and_the_end():
    with pytest.warns(ContextWarning, match="2 of 3 prompts"):
        out = fit_context([[1, 2, 3, 4, 5, 6], [1, 7], [8, 9, 10, 11]], 3, special_ids={1}, what="prompt")
    assert out == [[1, 5, 6], [1, 7], [9, 10, 11]]
    with pytest.warns(ContextWarning, match="kept the first tokens"):
        assert fit_context([[1, 2, 3, 4]], 2, keep="start", special_ids={1}) == [[1, 2]]
    with pytest.warns(ContextWarning):  # at least one token of the end survives
        assert fit_context([[1] * 5], 2, special_ids={1}) == [[1, 1]]
    assert fit_context([[5, 6]], None) == [[5, 6]]
    with pytest.raises(InputError):
        fit_context([[5, 6]], 0)


def test_pad_batch_max_length_and_generation_reserve():
    model = _small_window_model("gpt2")
    with pytest.warns(ContextWarning):
        ids, mask, pos, start = pad_batch([list(range(20)), [3, 4]], 0, "left", max_length=WINDOW)
    assert ids.shape == (2, WINDOW) and ids[0].tolist() == list(range(8, 20)) and pos[0].tolist() == list(range(WINDOW))
    with pytest.warns(ContextWarning, match="window of 8 tokens"):  # room left for 4 generated tokens
        cut = fit_model_context(model, [list(range(20, 40))], reserve=4, what="prompt")
    assert cut == [list(range(32, 40))]  # (ids 0 and 1 are the tiny tokenizer's special tokens)
    with pytest.warns(ContextWarning):  # a leading special token (here <eos> as a BOS) survives the cut
        assert fit_model_context(model, [[0, *range(20, 40)]]) == [[0, *range(29, 40)]]
    with pytest.raises(InputError, match="do not fit"):
        fit_model_context(model, [[1]], reserve=WINDOW)


def test_extract_through_the_cli_warns_on_one_line_and_runs(tmp_path, monkeypatch, capsys):
    """A dataset with one over-long text through ``emoscope extract`` on a small-window model:
    exit 0, a one-line warning naming the truncation, activations written."""
    import emoscope.models
    from emoscope.cli.main import main

    model = _small_window_model("gpt2")
    monkeypatch.setattr(emoscope.models, "load_model", lambda *a, **k: model)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in ((LONG, "joy"), (SHORT, "neutral"))))
    rc = main(["-q", "extract", "--model", "tiny", "--dataset", str(data), "--layers", "0,1",
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 0, err
    warned = [ln for ln in err.splitlines() if "context window" in ln]
    assert len(warned) == 1 and warned[0].startswith("emoscope: warning: 1 of 2 texts longer than the context window")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_steering_a_prompt_longer_than_the_window_generates_from_its_end(family):
    """GPT-2's position table used to raise IndexError here. Now the prompt is cut to the window
    minus ``max_new_tokens`` (warning), and the unsteered row equals ``generate`` on the cut ids."""
    from emoscope.steering import SteeringSweep
    from emoscope.vectors import ConceptVector

    model = _small_window_model(family)
    new = 3
    vector = ConceptVector("joy", {1: np.ones(model.d_model, np.float32)})
    with pytest.warns(ContextWarning, match=f"1 of 2 prompts longer than the context window of {WINDOW - new}"):
        res = SteeringSweep(model, vector, [1], [1.0], prompts=[LONG, SHORT], max_new_tokens=new, n_random=0,
                            chat=False, unit="raw", scorers=["nrc", "repetition"], progress=False).run()
    base = res.table[(res.table.kind == "baseline") & (res.table.prompt_id == 0)].iloc[0]
    cut = model.tokenizer(LONG)["input_ids"][-(WINDOW - new):]
    with torch.no_grad():
        want = model.hf.generate(input_ids=torch.tensor([cut]), attention_mask=torch.ones(1, len(cut), dtype=torch.long),
                                 max_new_tokens=new, do_sample=False, pad_token_id=0)[0, len(cut):].tolist()
    assert [int(t) for t in base.token_ids.split()] == want
