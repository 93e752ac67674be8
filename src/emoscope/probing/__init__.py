"""Per-layer linear probes with controls that run by default.

>>> import numpy as np
>>> from emoscope.probing import probe_layers, ProbeControls
>>> rng = np.random.default_rng(0)
>>> y = np.repeat(["joy", "neutral"], 50)
>>> acts = {0: rng.normal(size=(100, 8)) + (y == "joy")[:, None]}
>>> rep = probe_layers(acts, y, texts=None, token_counts=None, n_layers_total=1,
...                    controls=ProbeControls(bow=False, length_only=False, n_permutations=10))
>>> rep.peak_layer
0
"""

from __future__ import annotations

from emoscope.probing.controls import ProbeControls
from emoscope.probing.layers import probe_layers
from emoscope.probing.probe import LayerProbe
from emoscope.probing.probe_report import ProbeReport

__all__ = [
    "LayerProbe",
    "ProbeControls",
    "ProbeReport",
    "probe_layers",
]
