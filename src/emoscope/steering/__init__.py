"""Steering: edit the residual stream while the model generates, with controls in the same batch.

- ``steer(model, vector, layers, strength, positions=..., mode=..., unit=...)``: a context
  manager that adds / ablates / ablates-then-adds a vector at chosen layers and token windows,
  correct under the KV cache; ``patch(model, source, layers, positions)``: activation patching.
- ``SteeringSweep(...).run()``: vectors x layers x strengths x prompts x seeds as a few batched
  decodes with one delta per row, plus strength-0, negated and random matched-norm controls,
  real scorers, regimes and success rates against the random control.
- Scorers in one registry (``register_scorer``): NRC lexicon, VADER valence, text classifiers,
  perplexity under the unsteered model, repetition, script leakage.

>>> from emoscope.steering import steer, SteeringSweep                  # doctest: +SKIP
>>> with steer(model, joy, layers=[15], strength=4.0, positions="generated"):  # doctest: +SKIP
...     out = model.hf.generate(**enc, max_new_tokens=32)
"""

from emoscope.models.decode import Sampling, decode_rows
from emoscope.models.interventions import Window, parse_window
from emoscope.steering.hooks import MODES, patch, steer
from emoscope.steering.plots import dose_response_figure, regime_map_figure
from emoscope.steering.regimes import (
    REGIMES,
    RegimeThresholds,
    classify_regimes,
    regime_switches,
    success_table,
)
from emoscope.steering.scorers import (
    DEFAULT_SCORERS,
    ScoreBatch,
    known_scorers,
    make_scorer,
    register_scorer,
    score_texts,
)
from emoscope.steering.sweep import SteeringResult, SteeringSweep, default_target

__all__ = [
    "steer",
    "patch",
    "MODES",
    "Window",
    "parse_window",
    "SteeringSweep",
    "SteeringResult",
    "Sampling",
    "decode_rows",
    "default_target",
    "register_scorer",
    "make_scorer",
    "known_scorers",
    "score_texts",
    "ScoreBatch",
    "DEFAULT_SCORERS",
    "RegimeThresholds",
    "REGIMES",
    "classify_regimes",
    "regime_switches",
    "success_table",
    "dose_response_figure",
    "regime_map_figure",
]
