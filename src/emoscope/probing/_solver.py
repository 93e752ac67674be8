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

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["BatchFit", "fit_batch", "lbfgs_batch", "subspace_basis", "blas_threads"]


def blas_threads(n: int | None) -> contextlib.AbstractContextManager[object]:
    """Limit BLAS threads to ``n`` inside the block (``None``: leave them alone).

    Probe matrices are small (hundreds of rows), where BLAS threads cost more in
    synchronisation than they save; on a shared machine they cost several times over.
    """
    if n is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(n), user_api="blas")


def lbfgs_batch(
    fg: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    x0: np.ndarray,
    max_iter: int = 300,
    tol: float = 1e-5,
    memory: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise ``P`` independent smooth functions at once.

    ``fg(x (m, D), idx (m,)) -> (f (m,), g (m, D))`` evaluates the problems ``idx``.
    Returns ``(x, n_iter (P,))``. A problem stops when its largest gradient entry is below
    ``tol``, its loss stops changing, or its line search stalls; finished problems are
    dropped from later evaluations, so a batch costs what its problems cost, not
    ``P`` times its slowest one.
    """
    x = np.array(x0, dtype=np.float64)  # (P, D)
    P, D = x.shape
    n_iter = np.zeros(P, dtype=int)
    idx = np.arange(P)
    f, g = fg(x, idx)
    keep = np.abs(g).max(1) > tol
    idx, xa, f, g = idx[keep], x[keep], f[keep], g[keep]
    S = np.zeros((memory, idx.size, D))
    Yh = np.zeros((memory, idx.size, D))
    rho = np.zeros((memory, idx.size))
    gamma = np.ones(idx.size)
    first = np.ones(idx.size, dtype=bool)
    n_pairs = head = 0
    for _ in range(max_iter):
        if idx.size == 0:
            break
        # Two-loop recursion, newest pair first.
        q = g.copy()
        order = [(head - 1 - i) % memory for i in range(min(n_pairs, memory))]
        alpha = np.zeros((memory, idx.size))
        for i in order:
            alpha[i] = rho[i] * np.einsum("pd,pd->p", S[i], q)
            q -= alpha[i][:, None] * Yh[i]
        q *= gamma[:, None]
        for i in reversed(order):
            beta = rho[i] * np.einsum("pd,pd->p", Yh[i], q)
            q += S[i] * (alpha[i] - beta)[:, None]
        d = np.negative(q, out=q)
        gd = np.einsum("pd,pd->p", g, d)
        bad = gd >= 0  # not a descent direction: fall back to steepest descent
        if bad.any():
            d[bad] = -g[bad]
            gd[bad] = -np.einsum("pd,pd->p", g[bad], g[bad])
            first |= bad
        t = np.ones(idx.size)
        t[first] = np.minimum(1.0, 1.0 / np.maximum(np.linalg.norm(g[first], axis=1), 1e-12))
        for _ls in range(30):
            xn = xa + t[:, None] * d
            fn, gn = fg(xn, idx)
            ok = (fn <= f + 1e-4 * t * gd) & np.isfinite(fn)
            if ok.all():
                break
            t = np.where(ok, t, t * 0.5)
        s, yv = S[head], Yh[head]  # write the new pair straight into the ring buffer
        np.subtract(xn, xa, out=s)
        np.subtract(gn, g, out=yv)
        small_step = np.abs(f - fn) <= 1e-12 * np.maximum(np.abs(fn), 1.0)
        if ok.all():
            xa, f, g = xn, fn, gn
        else:
            s[~ok] = 0.0
            yv[~ok] = 0.0
            xa = np.where(ok[:, None], xn, xa)
            f = np.where(ok, fn, f)
            g = np.where(ok[:, None], gn, g)
        n_iter[idx] += ok
        sy = np.einsum("pd,pd->p", s, yv)
        yy = np.einsum("pd,pd->p", yv, yv)
        valid = ok & (sy > 1e-12 * np.maximum(yy, 1e-300))
        rho[head] = np.where(valid, 1.0 / np.where(valid, sy, 1.0), 0.0)
        gamma = np.where(valid, sy / np.where(valid, yy, 1.0), gamma)
        head = (head + 1) % memory
        n_pairs += 1
        first &= ~valid
        go_on = ok & (np.abs(g).max(1) > tol) & ~small_step
        if not go_on.all():
            x[idx] = xa
            idx, xa, f, g = idx[go_on], xa[go_on], f[go_on], g[go_on]
            S, Yh, rho = S[:, go_on], Yh[:, go_on], rho[:, go_on]
            gamma, first = gamma[go_on], first[go_on]
    x[idx] = xa
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
    standardize: bool = True,
) -> BatchFit:
    """Fit ``P`` standardised multinomial logistic probes that share the rows of ``X``.

    ``X (n, d)``; ``labels (P, n)`` integer classes (each problem may have its own, e.g.
    permutations); ``train (P, n)`` bool rows each problem learns from. Each problem
    standardises with the mean and sd of its own training rows. Optional constraints:
    ``cols (P, d)`` bool features a problem may use; ``remove[p] (d, r)`` orthonormal
    directions (in standardised coordinates) its weights must avoid, which is the same
    as training on data with those directions projected out. ``standardize=False`` uses
    ``X`` as given (already standardised).

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
    if standardize:
        # Centre globally first so E[x^2] - m^2 does not cancel catastrophically.
        shift = X.mean(0)  # (d,)
        X = X - shift
        mean = (w_rows @ X) / n_tr[:, None]  # (P, d)
        var = (w_rows @ (X * X)) / n_tr[:, None] - mean**2
        sd = np.sqrt(np.maximum(var, 0.0))
        scale = np.where(sd > 1e-8 * np.maximum(np.abs(mean + shift), 1.0), sd, 1.0)  # (P, d)
    else:
        shift = np.zeros(d)
        mean, scale = np.zeros((P, d)), np.ones((P, d))
    # Layout (P, K, n): reductions over the K classes run across contiguous rows, and
    # both products are plain GEMMs with no transposes.
    Y = np.zeros((P, K, n))
    Y[np.arange(P)[:, None], labels, np.arange(n)[None, :]] = 1.0
    Y *= train[:, None, :]  # rows outside a problem's training set carry no loss
    mask = train[:, None, :].astype(np.float64)  # (P, 1, n)
    inv_c = 1.0 / float(C)
    col_mask = None if cols is None else np.asarray(cols, dtype=np.float64)[:, None, :]
    rem = remove if remove is not None and any(r is not None for r in remove) else None
    DK = d * K
    # float32 for the two big products halves their cost; the optimiser stays in float64.
    X32 = np.ascontiguousarray(X, dtype=np.float32)  # (n, d)
    X32T = np.ascontiguousarray(X32.T)  # (d, n)

    def project(gW: np.ndarray, idx: np.ndarray) -> np.ndarray:  # gW (m, K, d)
        if col_mask is not None:
            gW = gW * col_mask[idx]
        if rem is not None:
            for j, p in enumerate(idx):
                Q = rem[p]
                if Q is not None and Q.size:
                    gW[j] -= (gW[j] @ Q) @ Q.T
        return gW

    def fg(theta: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = idx.size
        full = m == P
        sc, mu, msk, Yp, ntr = (
            (scale, mean, mask, Y, n_tr) if full else (scale[idx], mean[idx], mask[idx], Y[idx], n_tr[idx])
        )
        W = theta[:, :DK].reshape(m, K, d)
        b = theta[:, DK:]  # (m, K)
        V = (W / sc[:, None, :]).reshape(m * K, d).astype(np.float32)
        off = np.einsum("pd,pkd->pk", mu / sc, W) - b  # (m, K)
        Sc = (V @ X32T).reshape(m, K, n).astype(np.float64) - off[:, :, None]  # (m, K, n)
        Sc -= Sc.max(1, keepdims=True)
        E = np.exp(Sc)
        Z = E.sum(1, keepdims=True)  # (m, 1, n)
        loss = -(Yp * Sc).sum((1, 2)) + (msk * np.log(Z)).sum((1, 2)) + 0.5 * inv_c * (W * W).sum((1, 2))
        G = E * (msk / Z) - Yp  # (m, K, n)
        XtG = (G.reshape(m * K, n).astype(np.float32) @ X32).reshape(m, K, d)
        Gs = G.sum(2)  # (m, K)
        gW = (XtG - Gs[:, :, None] * mu[:, None, :]) / sc[:, None, :] + inv_c * W
        gW = project(gW, idx)
        grad = np.concatenate([gW.reshape(m, DK), Gs], axis=1)
        return loss / ntr, grad / ntr[:, None]

    theta, n_iter = lbfgs_batch(fg, np.zeros((P, DK + K)), max_iter=max_iter, tol=tol)
    W = theta[:, :DK].reshape(P, K, d).transpose(0, 2, 1)  # (P, d, K)
    return BatchFit(np.ascontiguousarray(W), theta[:, DK:], mean + shift, scale, n_iter)


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
