"""Geometry of concept vectors: cosines with a null and a length control, anisotropy,
principal angles, CKA (debiased), PCA of emotion vectors against valence/arousal, and
cross-model alignment fitted on neutral text with a shuffled-pairing control.

>>> import numpy as np
>>> from emoscope.geometry import cosine_matrix
>>> cosine_matrix({"a": np.array([1.0, 0.0]), "b": np.array([0.0, 2.0])})[1].tolist()
[[1.0, 0.0], [0.0, 1.0]]
"""

from emoscope.geometry.alignment import evaluate_alignment, lstsq_align, procrustes_align
from emoscope.geometry.cka import debiased_cka
from emoscope.geometry.cosine import (
    anisotropy,
    cosine_matrix,
    cosine_null,
    length_controlled_cosines,
)
from emoscope.geometry.emotion_space import emotion_space
from emoscope.geometry.subspace import emotion_pca, principal_angles

__all__ = [
    "cosine_matrix",
    "cosine_null",
    "length_controlled_cosines",
    "anisotropy",
    "principal_angles",
    "emotion_pca",
    "procrustes_align",
    "lstsq_align",
    "evaluate_alignment",
    "debiased_cka",
    "emotion_space",
]
