"""Geometry of concept vectors: cosines with a null and a length control, anisotropy,
principal angles, CKA, PCA of emotion vectors, and cross-model alignment.

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
from emoscope.geometry.cosine import (
    CosineNull,
    LengthControlledCosines,
    anisotropy,
    cosine_matrix,
    cosine_null,
    length_controlled_cosines,
)
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
]
