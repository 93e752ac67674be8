"""Steering: edit the residual stream while the model generates, with controls in the same batch.

- ``steer(model, vector, layers, strength, positions=..., mode=..., unit=...)``: a context
  manager that adds / ablates / ablates-then-adds a vector at chosen layers and token windows,
  correct under the KV cache; ``replace_residual(model, source, layers, positions)``: write the
  residual recorded on a source prompt (single-forward patching; ``patch`` is its old name).
- ``SteeringSweep(...).run()``: vectors x layers x strengths x prompts x seeds as a few batched
  decodes with one delta per row, plus strength-0, negated and random matched-norm controls
  (isotropic and covariance-matched), real scorers, regimes and success rates against the
  random control.
- Findings (``findings.py``): the best (layer, strength) cell chosen on half the prompts and
  reported on the other half, with its random-vector, held-out, multi-token, fluency and
  seed-spread controls.
- Scorers in one registry (``register_scorer``): NRC lexicon, VADER valence, text classifiers,
  perplexity under the unsteered model, repetition, script leakage.
- The ``steer`` run stage (``stage.py``). The hooks, windows and decode loop themselves live in
  ``emoscope.models`` (shared with injection and patching), statistics in ``emoscope.core``.

>>> from emoscope.steering import steer, SteeringSweep                  # doctest: +SKIP
>>> with steer(model, joy, layers=[15], strength=4.0, positions="generated"):  # doctest: +SKIP
...     out = model.hf.generate(**enc, max_new_tokens=32)
"""

from __future__ import annotations

from emoscope.steering.hooks import patch, replace_residual, steer
from emoscope.steering.regimes import RegimeThresholds
from emoscope.steering.scorers import known_scorers, register_scorer, score_texts
from emoscope.steering.sweep import SteeringResult, SteeringSweep

__all__ = [
    "steer",
    "replace_residual",
    "patch",
    "SteeringSweep",
    "SteeringResult",
    "register_scorer",
    "known_scorers",
    "score_texts",
    "RegimeThresholds",
]
