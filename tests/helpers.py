"""Helpers shared by several test files (fixtures live in ``conftest.py``).

- ``intro_model`` / ``merging_tokenizer``: tiny random models with a tokenizer that merges
  ".\\n\\n" into one token and has single-token yes/no spellings (concept injection tests);
  ``QUESTIONS``, ``intro_setup`` and ``reference_diff`` (a full forward with a plain hook);
- ``reference`` / ``pool`` / ``rel_err`` / ``POSITIONS``: residual states read by plain forward
  hooks on the full model, the independent reference for extraction;
- ``tally``: counters a test adds to, printed once at the end of the session by the
  ``pytest_terminal_summary`` hook in ``conftest.py``.
"""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import torch
from benchmarks._tiny import random_lm

from emoscope.activations import parse_position
from emoscope.datasets import load_control_questions
from emoscope.introspection import build_trials, yes_no_diff
from emoscope.introspection.measure import answer_tokens
from emoscope.models.standard import block_output

TALLIES: dict[str, Counter] = {}


def tally(topic: str, name: str) -> None:
    """Count one ``name`` under ``topic``; the session's counts are printed in the terminal summary."""
    TALLIES.setdefault(topic, Counter())[name] += 1


# -- concept injection on tiny models ----------------------------------------------------------
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@functools.cache
def merging_tokenizer(chat: bool = False):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from emoscope.datasets import load_control_questions, load_word_list
    from emoscope.introspection.trials import DETECTION_QUESTION, trial_messages

    def plain(msgs):
        return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in msgs) + "\n\nAssistant:"

    questions = [q.text for q in load_control_questions()] + [DETECTION_QUESTION]
    corpus = [plain(trial_messages(q)) for q in questions]
    corpus += ["Yes. yes, no. No, Yes I do. No I do not. yes no"] * 20
    corpus += [f"User: Tell me about {w.word}.\n\nAssistant:"
               for w in load_word_list("concepts") + load_word_list("baseline-words")]
    tok = Tokenizer(models.BPE(unk_token=None))
    # ".\n\n" is isolated before byte-level BPE, so training merges it into one token
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\.\n\n|\n\n| ?[A-Za-z]+| ?[0-9]+|[^A-Za-z0-9\s]|\s"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<bos>", "<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    if chat:
        out.chat_template = CHAT_TEMPLATE
    return out


@functools.cache
def intro_model(family: str = "llama", chat: bool = False):
    """A 3-layer random model of ``family`` with the merging tokenizer."""
    import transformers as tf

    from emoscope.models import wrap_model

    tok = merging_tokenizer(chat)
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=512)
    cfg = {
        "llama": lambda: tf.LlamaConfig(num_key_value_heads=2, **common),
        "gemma3_text": lambda: tf.Gemma3TextConfig(
            num_key_value_heads=2, head_dim=8, sliding_window=16,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"], **common),
        "gpt2": lambda: tf.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=3, n_head=4, n_positions=512),
        "gpt_neo": lambda: tf.GPTNeoConfig(  # its blocks return tuples
            vocab_size=len(tok), hidden_size=32, num_layers=3, num_heads=4, window_size=6,
            attention_types=[[["global", "local"], 1], [["global"], 1]], max_position_embeddings=512),
    }[family]()
    return wrap_model(random_lm(cfg), tok, name=f"intro-{family}{'-chat' if chat else ''}")


QUESTIONS = load_control_questions()[:3]


def reference_diff(model, trial, cell, bank, tokens):
    """Independent computation: one full forward of the whole prompt through ``model.hf`` with
    a plain hook that adds the vector from the window start on."""
    import torch

    def hook(_m, _i, out):
        h = block_output(out).clone()
        h[:, trial.window_start:] += cell.scale * torch.as_tensor(bank[cell.vector])
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = model.blocks[cell.layer].register_forward_hook(hook) if cell.layer is not None else None
    try:
        with torch.no_grad():
            logits = model.hf(torch.tensor([trial.ids])).logits[0, -1]
    finally:
        if handle is not None:
            handle.remove()
    return float(yes_no_diff(logits, tokens))



def intro_setup(family="llama", chat=False, window="before_trial", n_vectors=2):
    model = intro_model(family, chat)
    trials = build_trials(model, QUESTIONS, window=window)
    tokens = answer_tokens(model.tokenizer)
    bank = np.random.default_rng(0).standard_normal((n_vectors, model.d_model)).astype(np.float32)
    return model, trials, tokens, bank


# -- extraction: the plain-hook reference --------------------------------------------------------
POSITIONS = ["last", "mean", "mean_from:2", "token:1", "token:-2", "all"]


def reference(model, texts, layers):
    """Independent reference: each text (a string, or a list of token ids) alone through the
    *full* causal LM, states read by plain forward hooks on the blocks (no padding, no early
    stop, no emoscope code). Returns ``{layer: [(seq, d) array per text]}``."""
    out = {layer: [] for layer in layers}
    for text in texts:
        ids = (model.tokenizer(text, return_tensors="pt")["input_ids"] if isinstance(text, str)
               else torch.tensor([list(text)]))
        grabbed = {}
        hooks = [model.blocks[layer].register_forward_hook(
            lambda _m, _i, o, layer=layer, grabbed=grabbed: grabbed.__setitem__(layer, (o[0] if isinstance(o, tuple) else o)[0].clone()))
            for layer in layers]
        try:
            with torch.no_grad():
                model.hf(input_ids=ids)
        finally:
            for h in hooks:
                h.remove()
        for layer in layers:
            out[layer].append(grabbed[layer].numpy())  # (seq, d)
    return out


def pool(states, spec):
    pos = parse_position(spec)
    if pos.kind == "last":
        return states[-1]
    if pos.kind == "mean":
        return states.mean(0)
    if pos.kind == "mean_from":
        return states[pos.arg:].mean(0)
    if pos.kind == "token":
        return states[pos.arg]
    return states


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


