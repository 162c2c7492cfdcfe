"""Non-negative least squares for many right-hand sides sharing one Gram matrix: :func:`fcnnls`.

The fast combinatorial NNLS of Van Benthem & Keenan (2004): the active-set
method of Lawson & Hanson run on all right-hand sides at once, from the normal
equations (only the k x k Gram C^T C and the k x n cross products C^T A are
needed, never C or A), and in every step the columns that share a passive set
solve their unconstrained subproblem with one factorisation. In factored
MCR-ALS every pixel of a tile (or every channel) is a right-hand side of the
same k x k Gram, so a whole unit's concentrations are one call.

References
----------
Van Benthem, M. H. & Keenan, M. R. (2004). Fast algorithm for the solution of
large-scale non-negativity-constrained least squares problems. J. Chemometrics
18, 441-450. doi:10.1002/cem.889
Lawson, C. L. & Hanson, R. J. (1974). Solving Least Squares Problems,
Prentice-Hall, ch. 23 (NNLS).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

__all__ = ["fcnnls", "passive_solve"]

_EPS = float(np.finfo(np.float64).eps)


def _solve(G: np.ndarray, B: np.ndarray) -> np.ndarray:
    """G X = B for a symmetric positive (semi)definite k x k G and many columns of B.

    Through G^-1 from its Cholesky factor (k x k) and one matrix product: with
    k << columns, LAPACK's triangular solves with thousands of right-hand
    sides are 2-30x slower than the product (and slowest for Fortran-ordered
    B). A singular G: the pseudo-inverse (minimum-norm least squares).
    """
    k = G.shape[0]
    Ginv = None
    try:
        c, low = scipy.linalg.cho_factor(G, check_finite=False)
        d = np.abs(np.diag(c))
        if d.min() ** 2 > 1e3 * k * _EPS * d.max() ** 2:  # well enough conditioned for the explicit inverse
            Ginv = scipy.linalg.cho_solve((c, low), np.eye(k), check_finite=False)
    except np.linalg.LinAlgError:
        pass
    if Ginv is None:
        Ginv = np.linalg.pinv(G, hermitian=True)
    return Ginv @ B


def passive_solve(CtC: np.ndarray, CtA: np.ndarray, passive: np.ndarray | None = None) -> np.ndarray:
    """Unconstrained least squares restricted to each column's passive set (CSSLS of Van Benthem & Keenan).

    Column j of the result solves ``CtC[P_j, P_j] x = CtA[P_j, j]`` on its
    passive variables ``P_j = passive[:, j]`` and is 0 elsewhere; the columns
    are grouped by passive set, so each distinct set is factorised once.

    Parameters
    ----------
    CtC : ndarray, shape (k, k)
        The Gram matrix C^T C.
    CtA : ndarray, shape (k, n)
        C^T A, one column per right-hand side.
    passive : ndarray of bool, shape (k, n), optional
        The passive sets (default: every variable).

    Returns
    -------
    ndarray, shape (k, n)
    """
    k, n = CtA.shape
    if passive is None or passive.all():
        return _solve(CtC, CtA) if n else np.zeros((k, 0))
    X = np.zeros((k, n))
    if n == 0:
        return X
    sets, group = np.unique(passive.T, axis=0, return_inverse=True)
    group = group.ravel()
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(len(sets) + 1))
    for g, pattern in enumerate(sets):
        vars_ = np.flatnonzero(pattern)
        if vars_.size == 0:
            continue
        cols = order[bounds[g] : bounds[g + 1]]
        X[np.ix_(vars_, cols)] = _solve(CtC[np.ix_(vars_, vars_)], CtA[np.ix_(vars_, cols)])
    return X


def fcnnls(CtC: np.ndarray, CtA: np.ndarray, *, max_iter: int | None = None) -> np.ndarray:
    """min ||C x_j - a_j||^2 subject to x_j >= 0, for every column j, from the normal equations.

    Exact (an active-set method: the result is the NNLS optimum up to
    round-off), vectorised over the right-hand sides: the work per step is one
    factorisation per distinct passive set, not per column.

    Parameters
    ----------
    CtC : array_like, shape (k, k)
        The Gram matrix C^T C (symmetric positive semidefinite).
    CtA : array_like, shape (k, n) or (k,)
        C^T A: the cross products with the n right-hand sides.
    max_iter : int, optional
        Bound on the active-set steps (outer and inner together; default
        ``30 k + 100``). The bound is a guard against cycling at round-off: on
        reaching it the current feasible iterate is returned.

    Returns
    -------
    ndarray, shape (k, n) or (k,)
        X >= 0, column j the solution for right-hand side j.

    Notes
    -----
    The optimality test is the Karush-Kuhn-Tucker condition on the gradient
    W = C^T a - C^T C x of the active variables, W <= tol with tol = 10 k eps
    (max|C^T a_j| + max|C^T C| max|x_j|) per column. A rank-deficient Gram
    makes the optimum non-unique; the subproblems are then solved by least
    squares, and the objective (not necessarily x) is optimal.

    References
    ----------
    Van Benthem & Keenan (2004), doi:10.1002/cem.889.
    """
    CtC = np.asarray(CtC, dtype=np.float64)
    CtA = np.asarray(CtA, dtype=np.float64)
    vector = CtA.ndim == 1
    if vector:
        CtA = CtA[:, None]
    k, n = CtA.shape
    if CtC.shape != (k, k):
        raise ValueError(f"CtC has shape {CtC.shape}; expected ({k}, {k}) for CtA of shape {CtA.shape}")
    limit = 30 * k + 100 if max_iter is None else int(max_iter)
    scale_c = np.abs(CtC).max() if CtC.size else 0.0
    scale_a = np.abs(CtA).max(0) if n else np.zeros(0)

    K = passive_solve(CtC, CtA)  # the unconstrained solution, negative entries set to 0: the first feasible point
    P = K > 0
    K[~P] = 0.0
    D = K.copy()  # the last feasible iterate of each column
    F = np.flatnonzero(~P.all(0))  # columns not yet known optimal
    steps = 0
    while F.size and steps < limit:
        K[:, F] = passive_solve(CtC, CtA[:, F], P[:, F])
        H = F[(K[:, F] < 0).any(0)]
        while H.size and steps < limit:  # infeasible columns: step back towards D until a variable leaves
            steps += 1
            Kh, Dh, Ph = K[:, H], D[:, H], P[:, H]
            neg = Ph & (Kh < 0)
            alpha = np.full(Kh.shape, np.inf)
            alpha[neg] = Dh[neg] / (Dh[neg] - Kh[neg])
            leave = alpha.argmin(0)
            cols = np.arange(H.size)
            a = alpha[leave, cols]
            Dh = Dh - a[None, :] * (Dh - Kh)
            Dh[leave, cols] = 0.0
            Ph[leave, cols] = False
            D[:, H], P[:, H] = Dh, Ph
            K[:, H] = passive_solve(CtC, CtA[:, H], Ph)
            H = H[(K[:, H] < 0).any(0)]
        if H.size:  # the step bound was reached inside: keep the feasible iterate
            K[:, H] = np.maximum(D[:, H], 0.0)
            break
        steps += 1
        W = CtA[:, F] - CtC @ K[:, F]
        tol = 10 * k * _EPS * (scale_a[F] + scale_c * np.abs(K[:, F]).max(0))
        grad = np.where(P[:, F], -np.inf, W)
        best = grad.argmax(0)
        improve = grad[best, np.arange(F.size)] > tol
        F, best = F[improve], best[improve]
        if F.size:  # the variable of steepest descent of each non-optimal column enters its passive set
            P[best, F] = True
            D[:, F] = K[:, F]
    np.maximum(K, 0.0, out=K)  # -0.0 and round-off below zero of passive variables at a bound
    return K[:, 0] if vector else K
