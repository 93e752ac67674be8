"""Concept vectors: estimators that find one direction per concept, preprocessing, and the
``ConceptVector`` value that carries a direction per layer; the strength unit (``strength.py``:
what "strength 1" means, measured once and stored with the vector); the ``vectors`` run stage.

>>> import numpy as np
>>> from emoscope.vectors import DiffMeans, fit_vectors
>>> X = np.r_[np.zeros((4, 3)), np.eye(3)[[0, 0, 0, 0]]]
>>> DiffMeans("joy").fit(X, ["neutral"] * 4 + ["joy"] * 4).direction_.tolist()
[1.0, 0.0, 0.0]
"""

from __future__ import annotations

from emoscope.vectors.concept import ConceptVector
from emoscope.vectors.estimators import DiffMeans, PCADiff, ProbeDirection, TokenDiff
from emoscope.vectors.fit import fit_vectors
from emoscope.vectors.preprocess import Centerer, LengthNormalizer, NeutralNullspace
from emoscope.vectors.strength import measure_unit

__all__ = [
    "ConceptVector",
    "fit_vectors",
    "DiffMeans",
    "PCADiff",
    "ProbeDirection",
    "TokenDiff",
    "LengthNormalizer",
    "Centerer",
    "NeutralNullspace",
    "measure_unit",
]
