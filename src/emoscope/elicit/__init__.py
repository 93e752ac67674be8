"""Generation-based data: the model writes texts for each emotion, and the extraction modes that
compare writing with reading.

- ``elicit(model, emotions, n)``: one seeded, batched decode over emotions x samples; texts that
  name the emotion are rejected; the states at the written tokens can be captured as they are
  written (``layers=``). ``save_elicited`` writes a JSONL dataset with a card.
- Stage ``elicit`` (``emoscope elicit``, ``elicit/stage.py``): ``elicit`` as a run, the dataset
  written to ``RUN/elicit/NAME.jsonl``.
- Stage ``modes`` (``emoscope run extraction-modes``): the 2x2 of generated vs human text and
  instruction in context vs read plainly, plus token-based vectors, compared over emotions with
  a paired Wilcoxon signed-rank test; steering success against random vectors.
- Stage ``leakage``: share of tokens and characters outside the prompt's script under steering,
  against random vectors of the same norm and the negated vector.

>>> from emoscope.elicit import check_emotions
>>> check_emotions("joy,fear")
['joy', 'fear']
"""

from __future__ import annotations

from emoscope.elicit.dataset import save_elicited
from emoscope.elicit.generate import Elicited, elicit
from emoscope.elicit.prompts import check_emotions, forbidden_for, rejects

__all__ = ["elicit", "Elicited", "save_elicited", "check_emotions", "forbidden_for", "rejects"]
