"""Concept injection ("introspection"): does the model report a thought we add to its
residual stream, beyond what the same injection does to unrelated yes/no questions?

The measure is the yes-minus-no logit difference at the answer position (probabilities are
shown beside it, never instead). Every concept × layer × strength cell is run on the detection
question and on the control questions at the same layer and strength, against the
no-injection baseline and random vectors of the same norm (isotropic and covariance-matched,
10 of each by default); the introspection score is the detection shift minus the control shift,
with a bootstrap interval over concepts. The finding reports one (layer, strength) cell chosen
on half the concepts and measured on the other half, tested against the random vectors as a
distribution (``heldout.py``).
``InjectionSweep(...).run()`` has the shape of ``SteeringSweep``; ``stage.py`` is the
``introspect`` run stage. Injection hooks and KV-cache forks come from ``emoscope.models``.

>>> from emoscope.models import load_model
>>> from emoscope.introspection import run_sweep
>>> model = load_model("smollm2-135m")                                        # doctest: +SKIP
>>> res = run_sweep(model, layers=[0.5, 0.67], strengths=[2, 4, 8])           # doctest: +SKIP
>>> res.focus()[["detection_shift", "control_shift", "score"]]                 # doctest: +SKIP
>>> res.save("runs/intro1")                                                    # doctest: +SKIP
"""

from __future__ import annotations

from emoscope.introspection.concepts import concept_vectors
from emoscope.introspection.freetext import grade_answer, run_free_text
from emoscope.introspection.measure import yes_no_diff
from emoscope.introspection.sweep import InjectionSweep, run_sweep
from emoscope.introspection.trials import build_trials

__all__ = [
    "InjectionSweep",
    "run_sweep",
    "build_trials",
    "concept_vectors",
    "yes_no_diff",
    "run_free_text",
    "grade_answer",
]
