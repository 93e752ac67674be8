"""The tiny random model every benchmark's ``--smoke`` mode runs on (so ``make test`` runs every
benchmark end to end in seconds and ``make bench`` cannot rot).

A 3-block Llama (d=32, 4 query heads on 2 KV heads) with a byte-level BPE tokenizer trained here
on the built-in texts (the introspection trials, so "Yes"/"No" are single tokens, the concept
words, the emotion and neutral prompts) and a small chat template. Weights are random, scaled up so
blocks differ; nothing is downloaded. It is written once per process to a temporary directory and
loaded from there with ``emoscope.models.load_model`` like any local model.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def random_lm(cfg, seed: int = 0):  # noqa: ANN001, ANN201 - a transformers config and model
    """A causal LM with random float32 weights from ``cfg`` (seeded), every matrix scaled by 4 so the
    blocks produce distinct, non-trivial states (the default init is small). The one builder of the
    tiny random models: the benchmarks' ``--smoke`` model and the test suite's (``tests/helpers``)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    hf = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    return hf


def _corpus() -> list[str]:
    from emoscope.datasets import load_control_questions, load_dataset, load_word_list
    from emoscope.introspection.trials import DETECTION_QUESTION, trial_messages

    texts = [f"{m['role']}: {m['content']}" for q in [c.text for c in load_control_questions()] + [DETECTION_QUESTION]
             for m in trial_messages(q)]
    texts += ["Yes. yes, no. No, Yes I do. No I do not. yes no"] * 20
    texts += [f"Tell me about {w.word}." for w in load_word_list("concepts") + load_word_list("baseline-words")]
    for name in ("emotions-basic", "neutral-starts"):
        texts += load_dataset(name).texts[:200]
    return texts


@functools.cache
def tiny_model_dir() -> Path:
    """Directory of the tiny chat Llama (built on first call in this process)."""
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = Path(tempfile.mkdtemp(prefix="emoscope-bench-tiny-"))
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<bos>", "<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    cfg = tf.LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         eos_token_id=fast.eos_token_id, bos_token_id=fast.bos_token_id,
                         pad_token_id=fast.pad_token_id)
    hf = random_lm(cfg)
    hf.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    return out


def smoke_model(args) -> str:  # noqa: ANN001
    """The model a benchmark loads: the tiny one under ``--smoke``, else ``args.model``; with
    ``--smoke`` the activation cache goes to a temporary folder too (unless one is set)."""
    if not getattr(args, "smoke", False):
        return args.model
    os.environ.setdefault("EMOSCOPE_CACHE", str(Path(tempfile.gettempdir()) / "emoscope-bench-smoke-cache"))
    return str(tiny_model_dir())
