"""Seeded random directions: the one generator behind every random-vector control.

Two kinds:

- ``isotropic``: Gaussian draws, normalised. Every direction of the space is equally likely.
- covariance-matched (pass ``cov``): ``x = A z`` with ``A A^T = cov``, normalised, so random
  directions fall where the activations actually vary. On a model with massive activations
  (Gemma-3: one dimension carries most of ``||resid||^2``) neither kind is neutral: isotropic
  draws almost never point along that dimension, covariance-matched ones almost always do.
  A finding should say which it used, or report both.

Scaling to a norm is the caller's business (steering scales to the strength unit, injection to
the concept vector's norm): these are unit vectors.

>>> import numpy as np
>>> r = random_directions(4, 3, seed=0)
>>> r.shape, np.allclose(np.linalg.norm(r, axis=1), 1.0)
((3, 4), True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from emoscope.core.stats import rng_from
from emoscope.errors import InputError

__all__ = ["random_directions", "random_layer_directions", "random_subspaces", "covariance_factor"]


def covariance_factor(cov: np.ndarray) -> np.ndarray:
    """``A`` with ``A A^T = cov`` (symmetric square root; negative eigenvalues from rounding
    are clipped to 0), ``(d, d)``."""
    c = np.asarray(cov, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise InputError(f"covariance must be a square matrix, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise InputError("covariance has NaN or infinite entries")
    w, v = np.linalg.eigh((c + c.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(n == 0):
        raise InputError("a random direction came out zero (the covariance has rank 0?)")
    return x / n


def random_directions(d: int, n: int, *, seed: int | np.random.Generator | None = 0,
                      cov: np.ndarray | None = None) -> np.ndarray:
    """``n`` random unit directions in ``d`` dimensions, ``(n, d)``.

    ``cov`` (``(d, d)``) draws covariance-matched directions instead of isotropic ones.

    >>> random_directions(3, 2, seed=1).shape
    (2, 3)
    """
    if d < 1 or n < 0:
        raise InputError(f"random_directions needs d >= 1 and n >= 0, got d={d}, n={n}")
    z = rng_from(seed).standard_normal((int(n), int(d)))  # (n, d)
    if cov is not None:
        a = covariance_factor(cov)
        if a.shape[0] != d:
            raise InputError(f"covariance is {a.shape[0]}-dimensional but the directions have d={d}")
        z = z @ a.T
    return _normalise(z)


def random_layer_directions(d: int, layers: Sequence[int], k: int, seed: int | np.random.Generator | None = 0, *,
                            cov: Mapping[int, np.ndarray] | None = None) -> list[dict[int, np.ndarray]]:
    """``k`` draws, each ``{layer: (d,) unit direction}``: one independent direction per layer
    and draw, reproducible from ``seed`` (the stream runs draw by draw, layer by layer).

    ``cov`` maps each layer to its activation covariance for covariance-matched draws.

    >>> r = random_layer_directions(4, [0, 1], k=2, seed=0)
    >>> len(r), sorted(r[0]), round(float(np.linalg.norm(r[0][1])), 6)
    (2, [0, 1], 1.0)
    """
    layers = [int(x) for x in layers]
    z = rng_from(seed).standard_normal((int(k), len(layers), int(d)))  # (k, layers, d)
    if cov is not None:
        missing = [x for x in layers if x not in cov]
        if missing:
            raise InputError(f"no covariance given for layers {missing}")
        for j, layer in enumerate(layers):
            z[:, j] = z[:, j] @ covariance_factor(cov[layer]).T
    z = _normalise(z)
    return [{layer: z[i, j] for j, layer in enumerate(layers)} for i in range(int(k))]


def random_subspaces(d: int, k: int, n_draws: int, seed: int | np.random.Generator | None = 0) -> np.ndarray:
    """``n_draws`` orthonormal blocks of ``k`` isotropic random directions side by side:
    ``(d, n_draws * k)`` (the random-subspace control of a probe that uses ``k`` directions).

    >>> q = random_subspaces(5, 2, 3, seed=0)
    >>> q.shape, np.allclose(q[:, :2].T @ q[:, :2], np.eye(2))
    ((5, 6), True)
    """
    rng = rng_from(seed)
    blocks = []
    for _ in range(int(n_draws)):
        q, _ = np.linalg.qr(rng.standard_normal((int(d), int(k))))
        blocks.append(q)
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((int(d), 0))
