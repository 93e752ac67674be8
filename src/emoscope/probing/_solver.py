"""Batched multinomial logistic regression for probe sweeps.

A probe sweep makes thousands of small fits (layers x seeds x folds x permutations) on a
few hundred rows. scikit-learn spends more time on per-call checks than on optimisation
there, so this module fits ``P`` independent problems at once: every problem shares one
activation matrix ``X (n, d)``, has its own training rows, labels and standardisation
(folded into the weights), and one ``X @ V`` per iteration serves them all. The
optimiser is L-BFGS vectorised over problems (separate histories, line searches and
stopping), so each problem reaches the same optimum as a separate fit of

    sum_i CE_i + ||W||^2 / (2 C)   (intercept unpenalised, features standardised)

which is scikit-learn's ``LogisticRegression(C=C)`` objective; the test suite checks the
two against each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["BatchFit", "fit_batch", "lbfgs_batch", "subspace_basis"]


def lbfgs_batch(
    fg: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    x0: np.ndarray,
    max_iter: int = 300,
    tol: float = 1e-5,
    memory: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise ``P`` independent smooth functions at once.

    ``fg(x (P, D)) -> (f (P,), g (P, D))``. Returns ``(x, n_iter (P,))``. Each problem
    stops when its largest gradient entry is below ``tol`` or its line search stalls.
    """
    x = np.array(x0, dtype=np.float64)  # (P, D)
    P, D = x.shape
    f, g = fg(x)
    S = np.zeros((memory, P, D))
    Yh = np.zeros((memory, P, D))
    rho = np.zeros((memory, P))
    gamma = np.ones(P)
    n_pairs = 0
    head = 0  # next slot in the ring buffer
    n_iter = np.zeros(P, dtype=int)
    active = np.abs(g).max(1) > tol
    first = np.ones(P, dtype=bool)
    for _ in range(max_iter):
        if not active.any():
            break
        # Two-loop recursion, newest pair first.
        q = g.copy()
        order = [(head - 1 - i) % memory for i in range(min(n_pairs, memory))]
        alpha = np.zeros((memory, P))
        for i in order:
            alpha[i] = rho[i] * np.einsum("pd,pd->p", S[i], q)
            q -= alpha[i][:, None] * Yh[i]
        r = gamma[:, None] * q
        for i in reversed(order):
            beta = rho[i] * np.einsum("pd,pd->p", Yh[i], r)
            r += S[i] * (alpha[i] - beta)[:, None]
        d = -r
        gd = np.einsum("pd,pd->p", g, d)
        bad = gd >= 0  # not a descent direction: fall back to steepest descent
        if bad.any():
            d[bad] = -g[bad]
            gd[bad] = -np.einsum("pd,pd->p", g[bad], g[bad])
            first |= bad
        d[~active] = 0.0
        t = np.ones(P)
        t[first] = np.minimum(1.0, 1.0 / np.maximum(np.linalg.norm(g[first], axis=1), 1e-12))
        accepted = ~active
        for _ls in range(30):
            xn = x + t[:, None] * d
            fn, gn = fg(xn)
            ok = (fn <= f + 1e-4 * t * gd) & np.isfinite(fn)
            accepted = ok | ~active
            if accepted.all():
                break
            t = np.where(accepted, t, t * 0.5)
        stalled = active & ~accepted
        upd = active & accepted
        s = np.where(upd[:, None], xn - x, 0.0)
        yv = np.where(upd[:, None], gn - g, 0.0)
        f_old = f
        x = np.where(upd[:, None], xn, x)
        f = np.where(upd, fn, f)
        g = np.where(upd[:, None], gn, g)
        n_iter += upd
        sy = np.einsum("pd,pd->p", s, yv)
        yy = np.einsum("pd,pd->p", yv, yv)
        valid = upd & (sy > 1e-12 * np.maximum(yy, 1e-300))
        S[head], Yh[head] = s, yv
        rho[head] = np.where(valid, 1.0 / np.where(valid, sy, 1.0), 0.0)
        gamma = np.where(valid, sy / np.where(valid, yy, 1.0), gamma)
        head = (head + 1) % memory
        n_pairs += 1
        first &= ~valid
        small_step = np.abs(f_old - f) <= 1e-12 * np.maximum(np.abs(f), 1.0)
        active &= ~stalled & (np.abs(g).max(1) > tol) & ~(upd & small_step)
    return x, n_iter


@dataclass
class BatchFit:
    """Weights of ``P`` fitted probes in standardised coordinates, with their scalers."""

    W: np.ndarray  # (P, d, K)
    b: np.ndarray  # (P, K)
    mean: np.ndarray  # (P, d)
    scale: np.ndarray  # (P, d)
    n_iter: np.ndarray  # (P,)

    def scores(self, X: np.ndarray) -> np.ndarray:
        """Logits of every problem on every row of ``X``: ``(n, P, K)``."""
        P, d, K = self.W.shape
        V = (self.W / self.scale[:, :, None]).transpose(1, 0, 2).reshape(d, P * K)
        off = np.einsum("pd,pdk->pk", self.mean / self.scale, self.W)
        return (np.asarray(X, dtype=np.float64) @ V).reshape(-1, P, K) - off + self.b

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, P, K)``."""
        S = self.scores(X)
        S -= S.max(2, keepdims=True)
        E = np.exp(S)
        return E / E.sum(2, keepdims=True)


def fit_batch(
    X: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    n_classes: int,
    C: float = 1.0,
    max_iter: int = 300,
    tol: float = 1e-5,
    cols: np.ndarray | None = None,
    remove: list[np.ndarray | None] | None = None,
) -> BatchFit:
    """Fit ``P`` standardised multinomial logistic probes that share the rows of ``X``.

    ``X (n, d)``; ``labels (P, n)`` integer classes (each problem may have its own, e.g.
    permutations); ``train (P, n)`` bool rows each problem learns from. Each problem
    standardises with the mean and sd of its own training rows. Optional constraints:
    ``cols (P, d)`` bool features a problem may use; ``remove[p] (d, r)`` orthonormal
    directions (in standardised coordinates) its weights must avoid, which is the same
    as training on data with those directions projected out.

    >>> import numpy as np
    >>> X = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    >>> fit = fit_batch(X, np.array([[0, 0, 1, 1]]), np.ones((1, 4), bool), 2)
    >>> fit.proba(X)[:, 0].argmax(1).tolist()
    [0, 0, 1, 1]
    """
    X = np.asarray(X, dtype=np.float64)  # (n, d)
    n, d = X.shape
    labels = np.asarray(labels)
    train = np.asarray(train, dtype=bool)
    P, K = train.shape[0], int(n_classes)
    w_rows = train.astype(np.float64)  # (P, n)
    n_tr = np.maximum(w_rows.sum(1), 1.0)  # (P,)
    mean = (w_rows @ X) / n_tr[:, None]  # (P, d)
    var = (w_rows @ (X * X)) / n_tr[:, None] - mean**2
    sd = np.sqrt(np.maximum(var, 0.0))
    scale = np.where(sd > 1e-12 * np.maximum(np.abs(mean), 1.0), sd, 1.0)  # (P, d)
    Y = np.zeros((n, P, K))
    Y[np.arange(n)[:, None], np.arange(P)[None, :], labels.T] = 1.0
    Y *= train.T[:, :, None]  # rows outside a problem's training set carry no loss
    mask = train.T[:, :, None].astype(np.float64)  # (n, P, 1)
    inv_c = 1.0 / float(C)
    ms = mean / scale  # (P, d)
    col_mask = None if cols is None else np.asarray(cols, dtype=np.float64)[:, :, None]
    rem = remove if remove is not None and any(r is not None for r in remove) else None
    DK = d * K

    def project(gW: np.ndarray) -> np.ndarray:
        if col_mask is not None:
            gW = gW * col_mask
        if rem is not None:
            for p, Q in enumerate(rem):
                if Q is not None and Q.size:
                    gW[p] -= Q @ (Q.T @ gW[p])
        return gW

    def fg(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        W = theta[:, :DK].reshape(P, d, K)
        b = theta[:, DK:]  # (P, K)
        V = (W / scale[:, :, None]).transpose(1, 0, 2).reshape(d, P * K)
        Sc = (X @ V).reshape(n, P, K) - np.einsum("pd,pdk->pk", ms, W) + b
        Sc -= Sc.max(2, keepdims=True)
        logp = Sc - np.log(np.exp(Sc).sum(2, keepdims=True))  # (n, P, K)
        G = (np.exp(logp) * mask) - Y  # (n, P, K)
        loss = -(Y * logp).sum((0, 2)) + 0.5 * inv_c * (W * W).sum((1, 2))  # (P,)
        XtG = (X.T @ G.reshape(n, P * K)).reshape(d, P, K).transpose(1, 0, 2)  # (P, d, K)
        Gs = G.sum(0)  # (P, K)
        gW = (XtG - mean[:, :, None] * Gs[:, None, :]) / scale[:, :, None] + inv_c * W
        gW = project(gW)
        grad = np.concatenate([gW.reshape(P, DK), Gs], axis=1)
        return loss / n_tr, grad / n_tr[:, None]

    theta, n_iter = lbfgs_batch(fg, np.zeros((P, DK + K)), max_iter=max_iter, tol=tol)
    return BatchFit(theta[:, :DK].reshape(P, d, K), theta[:, DK:], mean, scale, n_iter)


def subspace_basis(W: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """Orthonormal basis ``(d, r)`` of the directions one softmax probe ``W (d, K)`` uses.

    Softmax is unchanged when one vector is added to every class column, so the column
    mean is removed first: ``K`` classes span at most ``K - 1`` directions.

    >>> import numpy as np
    >>> subspace_basis(np.array([[1.0, -1.0], [0.0, 0.0]])).shape
    (2, 1)
    """
    Wc = W - W.mean(1, keepdims=True)  # (d, K)
    U, s, _ = np.linalg.svd(Wc, full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return U[:, :0]
    return U[:, s > tol * s[0]]
