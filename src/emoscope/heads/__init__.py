"""Heads: which attention heads write a direction, and what removing or transplanting them does.

- ``screen_heads`` (``screen.py``): every head's direct contribution to a vector's direction at
  a read position (the ``o_proj`` input split per head, one batched pass per batch of texts),
  emotion texts against baseline texts, label-permutation p-values, Holm across heads.
- ``HeadSweep`` (``sweep.py``): zero / mean ablation or head patching of chosen heads while
  generating, with seeded random head sets of the same size as rows of the same batched decode,
  scored by the steering scorers and probe projections.
- ``effect_table`` (``effects.py``): chosen heads against the random-head mean, per prompt,
  with intervals, paired tests and the rank among random sets; ``heads.findings``: findings of
  kind ``heads``.
- Head specs and random draws (``select.py``): ``top:K``, ``L.H,L.H``, ``L:H``.
- The ``heads`` run stage (``stage.py``) and ``emoscope heads {screen,ablate,patch}``.

The hooks themselves live in ``emoscope.models.head_outputs`` (``head_outputs``, ``head_readout``,
``HeadEdit`` / ``edit_heads``), shared with the rest of emoscope.
"""

from __future__ import annotations

from emoscope.heads.effects import effect_table
from emoscope.heads.screen import screen_heads
from emoscope.heads.select import parse_heads, random_head_sets
from emoscope.heads.sweep import HeadSweep, mean_head_outputs, plan_configs, record_head_outputs

__all__ = [
    "screen_heads",
    "parse_heads",
    "random_head_sets",
    "plan_configs",
    "mean_head_outputs",
    "record_head_outputs",
    "HeadSweep",
    "effect_table",
]
