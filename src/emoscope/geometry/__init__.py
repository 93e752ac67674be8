"""Geometry of concept vectors: cosines with a null and a length control, anisotropy,
principal angles, CKA (debiased), PCA of emotion vectors against valence/arousal, and
cross-model alignment fitted on neutral text with a shuffled-pairing control.

>>> import numpy as np
>>> from emoscope.geometry import cosine_matrix
>>> cosine_matrix({"a": np.array([1.0, 0.0]), "b": np.array([0.0, 2.0])})[1].tolist()
[[1.0, 0.0], [0.0, 1.0]]
"""

from emoscope.geometry.alignment import (
    AlignmentResult,
    LinearMap,
    evaluate_alignment,
    lstsq_align,
    procrustes_align,
)
from emoscope.geometry.cka import cka_matrix, debiased_cka
from emoscope.geometry.cosine import (
    CosineNull,
    LengthControlledCosines,
    anisotropy,
    cosine_matrix,
    cosine_null,
    length_controlled_cosines,
)
from emoscope.geometry.crossmodel import compare_vectors, fit_neutral_maps
from emoscope.geometry.emotion_space import denoise_vectors, emotion_space, load_valence_arousal
from emoscope.geometry.subspace import EmotionPCA, emotion_pca, linear_cka, principal_angles

__all__ = [
    "cosine_matrix",
    "cosine_null",
    "CosineNull",
    "length_controlled_cosines",
    "LengthControlledCosines",
    "anisotropy",
    "principal_angles",
    "linear_cka",
    "emotion_pca",
    "EmotionPCA",
    "LinearMap",
    "procrustes_align",
    "lstsq_align",
    "evaluate_alignment",
    "AlignmentResult",
    "debiased_cka",
    "cka_matrix",
    "fit_neutral_maps",
    "compare_vectors",
    "emotion_space",
    "load_valence_arousal",
    "denoise_vectors",
]
