"""Multi-token activation patching: residuals recorded on source prompts, written into target
prompts while the model generates, against random-patch and neutral-source controls.

- ``PatchSweep(...).run()``: layers x positions x target prompts in one batched decode with a
  replacement edit per row (``emoscope.models.interventions.ReplaceHook``), plus unpatched,
  self-patch (strength 0), neutral-source and norm-matched random-patch rows; outputs scored by the
  steering scorers, regimes by ``emoscope.steering.regimes``; every row also carries the step-1
  view (log-odds of target tokens at the first generated token).
- Positions (``positions.py``): ``last``, ``all``, ``window:K``, aligned from the end, with the
  tokens dropped by unequal lengths counted.
- Findings (``findings.py``): the (layer, positions) cell chosen on half the target prompts and
  reported on the other, with the random-patch, neutral-source, multi-token, fluency and
  seed-spread controls.
- The ``patch`` run stage (``stage.py``) and ``emoscope patch``.

Single forward passes with a recorded source are ``emoscope.steering.replace_residual``.

>>> from emoscope.patching import PatchSweep                               # doctest: +SKIP
>>> res = PatchSweep(model, anger_texts, prompts, layers=[9, 15], neutral=neutral_texts,
...                  source_name="anger").run()                            # doctest: +SKIP
"""

from __future__ import annotations

from emoscope.patching.sweep import PatchResult, PatchSweep

__all__ = [
    "PatchSweep",
    "PatchResult",
]
