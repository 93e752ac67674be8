"""Shared fixtures: tiny random models of every layout family, and the embedded real model.

Tiny models are built from configs (hidden size 32, 3 layers) with a small byte-level BPE
tokenizer trained here, so unit tests run in seconds and never touch a hub. ``tiny_dir`` saves
the tiny llama to a directory (for the CLI and specs, which take a model path). Helpers that are
not fixtures (the introspection model, the plain-hook extraction reference, ``tally``) live in
``tests/helpers.py``; the counts tests ``tally`` are printed once at the end of the session.
"""

from __future__ import annotations

import functools
import os

import pytest
from benchmarks._tiny import random_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "Thank you so much for the lovely gift, it made my whole week.",
    "I cannot believe they cancelled the train again without any notice!",
    "I am sorry I forgot your birthday; it will not happen again.",
    "The meeting is scheduled for three o'clock in room twelve.",
    "Rain is expected tomorrow afternoon across the northern region.",
    "She walked to the market and bought apples, bread and cheese.",
] * 4


@functools.cache
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def _configs(vocab: int) -> dict[str, object]:
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=256)
    return {
        "llama": tf.LlamaConfig(num_key_value_heads=2, **common),
        "mistral": tf.MistralConfig(num_key_value_heads=2, sliding_window=None, **common),
        "qwen2": tf.Qwen2Config(num_key_value_heads=2, **common),
        "gemma3_text": tf.Gemma3TextConfig(num_key_value_heads=2, head_dim=8, sliding_window=6,
                                           layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                           **common),
        "gpt2": tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, n_positions=256),
        "gpt_neox": tf.GPTNeoXConfig(**common),
        "gpt_neo": tf.GPTNeoConfig(vocab_size=vocab, hidden_size=32, num_layers=3, num_heads=4,
                                   attention_types=[[["global", "local"], 1], [["global"], 1]], window_size=6,
                                   max_position_embeddings=256),
    }


FAMILIES = ["llama", "mistral", "qwen2", "gemma3_text", "gpt2", "gpt_neox", "gpt_neo"]


@functools.cache
def tiny_model(family: str):
    from emoscope.models import wrap_model

    tok = tiny_tokenizer()
    hf = random_lm(_configs(len(tok))[family])  # random init, scaled up so layers differ
    return wrap_model(hf, tok, name=f"tiny-{family}")


@pytest.fixture(params=FAMILIES)
def family_model(request):
    return tiny_model(request.param)


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the input must be refused before it."""
    import emoscope.models

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(emoscope.models, "load_model", boom)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny llama saved as a local model directory (safetensors and tokenizer)."""
    d = tmp_path_factory.mktemp("tiny-llama")
    m = tiny_model("llama")
    m.hf.save_pretrained(d, safe_serialization=True)
    m.tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def smollm():
    from emoscope.models import load_model

    return load_model("smollm2-135m")


def pytest_terminal_summary(terminalreporter):
    """What the tests counted with ``tests.helpers.tally`` (e.g. how many hostile inputs the
    property tests tried, and how they ended), one line per topic."""
    import sys

    helpers = sys.modules.get("tests.helpers")
    tallies = getattr(helpers, "TALLIES", {})
    for topic, counts in tallies.items():
        if counts:
            terminalreporter.write_line(f"{topic}: {sum(counts.values())}: "
                                        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
