"""Concept injection on the embedded SmolLM2-135M (marked ``real``; slow on CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from emoscope.datasets import load_control_questions
from emoscope.introspection import build_trials, run_sweep
from emoscope.introspection.cells import Injection, score_cells
from emoscope.introspection.measure import answer_tokens
from tests.helpers import reference_diff

pytestmark = pytest.mark.real


def test_smollm_window_and_batched_parity(smollm):
    trials = build_trials(smollm, load_control_questions()[:2])
    tokens = answer_tokens(smollm.tokenizer)
    assert tokens.yes_text == ("yes", "Yes", " yes", " Yes")
    for t in trials:
        assert t.window_text(smollm.tokenizer).startswith("\n\nTrial 1: ")
        assert smollm.tokenizer.convert_ids_to_tokens(t.ids[t.window_start]) == "Ċ"
    bank = np.random.default_rng(0).standard_normal((1, smollm.d_model)).astype(np.float32)
    bank /= np.linalg.norm(bank)
    cells = [Injection(0), Injection(0, 15, 0, 40.0), Injection(1, 20, 0, 80.0)]
    got = score_cells(smollm, trials, cells, bank, tokens)
    want = [reference_diff(smollm, trials[c.trial], c, bank, tokens) for c in cells]
    np.testing.assert_allclose(got.logit_diff, want, atol=1e-4)
    np.testing.assert_allclose(got.lens[:, -1], got.logit_diff, atol=1e-4)


def test_smollm_small_sweep(smollm):
    res = run_sweep(smollm, concepts=["ocean", "justice"], controls=load_control_questions()[:2], layers=[0.5],
                    strengths=[4], n_random=1, heads=True, n_boot=200)
    s = res.summary
    assert set(s.condition) == {"concept", "random", "random_cov"} and len(s) == 3
    assert res.heldout.n == 2 and res.heldout.n_searched == 1  # one cell swept: nothing searched
    assert np.isfinite(s[["detection_shift", "control_shift", "score"]].to_numpy()).all()
    assert res.heads.shape[0] == smollm.n_layers * smollm.n_heads
    for col in ("detection_injected", "control_injected", "detection_baseline", "random_detection_injected"):
        assert 0 <= res.heads[col].min() and res.heads[col].max() <= 1 + 1e-5
    assert set(res.flips.condition) == {"concept", "random", "random_cov"} and len(res.flips) == 4
    assert res.meta["shared_prefix_tokens"] == res.meta["window_start_token"] > 100
