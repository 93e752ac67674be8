"""Logits only where they are read: every scoring path projects onto the whole vocabulary only at
the positions it reads, and its numbers equal the full-logits path (``model.hf(...).logits`` of
every position, then ``log_softmax``), computed here one row at a time without any cache.

The count comes from a forward hook on the model's unembedding module (``lm_head``), through which
every full-vocabulary projection goes (``emoscope.models.logits.unembed``): the positions it saw
are summed and compared with the positions the scorer reads."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from emoscope.activations import extract
from emoscope.introspection import build_trials
from emoscope.introspection.cells import Injection, score_cells
from emoscope.introspection.freetext import answer_perplexity
from emoscope.introspection.measure import answer_tokens
from emoscope.models.decode import RowEdits, decode_rows
from emoscope.models.interventions import Window
from emoscope.steering.scorers import output_perplexity
from tests.conftest import tiny_model
from tests.helpers import QUESTIONS, intro_model


@contextlib.contextmanager
def projected(model):
    """Yields a list that gets, per call of the unembedding module, the number of positions it projected."""
    seen: list[int] = []
    h = model.unembed.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].numel() // inp[0].shape[-1]))
    try:
        yield seen
    finally:
        h.remove()


def _full_logprobs(model, ids):
    """log-softmax of ``model.hf``'s logits at every position of one sequence, no cache."""
    with torch.inference_mode():
        return model.hf(input_ids=torch.tensor([list(ids)])).logits[0].float().log_softmax(-1)


def _reference_perplexity(model, prompt, output):
    lp = _full_logprobs(model, [*prompt, *output])
    n = len(prompt)
    nll = [-float(lp[n - 1 + k, t]) for k, t in enumerate(output)]
    return float(np.exp(np.mean(nll)))


def test_output_perplexity_projects_only_read_positions_and_equals_full_logits():
    model = tiny_model("llama")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 250, n).tolist() for n in (5, 8)]
    outputs = [rng.integers(3, 250, n).tolist() for n in (1, 4, 7, 7, 3, 0)]  # uneven: padding in every batch
    pids = [prompts[i % 2] for i in range(len(outputs))]
    with projected(model) as seen:
        got = output_perplexity(model, pids, outputs, batch_size=3)
    want = [_reference_perplexity(model, p, o) if o else np.nan for p, o in zip(pids, outputs, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.isnan(got[-1])
    # the two prompts' last positions, then per output every position that predicts a real next token
    assert sum(seen) == len(prompts) + sum(max(len(o) - 1, 0) for o in outputs)


def test_answer_perplexity_projects_only_read_positions_and_equals_full_logits():
    model = intro_model("llama")
    trial = build_trials(model, QUESTIONS)[0]
    rng = np.random.default_rng(1)
    answers = [rng.integers(3, 300, n).tolist() for n in (2, 6, 1, 4)]
    with projected(model) as seen:
        got = answer_perplexity(model, trial, answers, batch_size=3)
    want = [_reference_perplexity(model, trial.ids, a) for a in answers]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert sum(seen) == sum(len(a) for a in answers)  # each answer token, from the position before it


def test_injection_grid_projects_the_answer_position_only():
    model = intro_model("llama", chat=True)
    trials = build_trials(model, QUESTIONS)
    tokens = answer_tokens(model.tokenizer)
    bank = np.random.default_rng(0).standard_normal((2, model.d_model)).astype(np.float32)
    cells = [Injection(t) for t in range(len(trials))] + [
        Injection(t, layer, v, 3.0) for t in range(len(trials)) for layer in (0, 2) for v in (0, 1)]
    with projected(model) as seen:
        got = score_cells(model, trials, cells, bank, tokens, batch_size=4)
    assert sum(seen) == len(cells)  # one row of the vocabulary per cell; the lens reads its 6 yes/no rows only
    # the baseline cells against the full logits of an unhooked forward (the answer is the last position)
    for t, trial in enumerate(trials):
        lp = _full_logprobs(model, trial.ids)[-1]
        want = torch.logsumexp(lp[list(tokens.yes_ids)], 0) - torch.logsumexp(lp[list(tokens.no_ids)], 0)
        assert abs(got.logit_diff[t] - float(want)) < 1e-4
        assert abs(got.p_yes[t] - float(lp[list(tokens.yes_ids)].exp().sum())) < 1e-5


def test_extraction_never_unembeds():
    model = tiny_model("llama")
    with projected(model) as seen:
        acts = extract(model, ["I am so happy today.", "Rain again, sadly."], "all", "last", cache=False,
                       progress=False)
    assert seen == [] and acts.get(0).shape == (2, model.d_model)


def test_decode_projects_one_position_per_row_and_step():
    model = tiny_model("llama")
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    rows = [0, 1, 0, 1, 0]
    delta = {1: torch.randn(len(rows), model.d_model)}
    for window, shared in (("generated", None), ("all", None), ("generated", [2, 1, 2, 1, 2])):
        with projected(model) as seen:
            dec = decode_rows(model, prompts, rows, RowEdits(delta=dict(delta)), Window(window), max_new_tokens=6,
                              share_prefill=False if shared else None, shared_prefix=shared)
        steps = max(len(t) for t in dec.tokens)
        # the prompts' last column (once per unique prompt when shared, once per row otherwise), then each step;
        # the shared prompt heads are prefilled without any logits
        first = len(prompts) if window == "generated" and shared is None else len(rows)
        assert sum(seen) == first + (steps - 1) * len(rows), (window, shared, seen)
