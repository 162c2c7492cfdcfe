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

__all__ = ["fcnnls"]

_EPS = float(np.finfo(np.float64).eps)


def _inverse(G: np.ndarray) -> np.ndarray:
    """G^-1 of a symmetric positive (semi)definite k x k G: from its Cholesky factor, or the pseudo-inverse
    (minimum-norm least squares) when G is singular or too ill-conditioned for the explicit inverse.

    The columns of a passive set are solved as one product with G^-1: with
    k << columns, LAPACK's triangular solves with thousands of right-hand
    sides are 2-30x slower than the product (slowest for Fortran-ordered ones).
    """
    k = G.shape[0]
    try:
        c, low = scipy.linalg.cho_factor(G, check_finite=False)
        d = np.abs(np.diag(c))
        if d.min() ** 2 > 1e3 * k * _EPS * d.max() ** 2:
            return scipy.linalg.cho_solve((c, low), np.eye(k), check_finite=False)
    except np.linalg.LinAlgError:
        pass
    return np.linalg.pinv(G, hermitian=True)


class _Solver:
    """Passive-set solves of one Gram, row layout (right-hand sides as rows), inverses cached per passive set."""

    def __init__(self, G: np.ndarray):
        self.G = G
        self.k = G.shape[0]
        self.bits = np.int64(1) << np.arange(self.k, dtype=np.int64) if self.k <= 62 else None
        self.cache: dict = {}

    def inv(self, key, vars_: np.ndarray) -> np.ndarray:
        if key not in self.cache:
            self.cache[key] = _inverse(self.G[np.ix_(vars_, vars_)])
        return self.cache[key]

    def solve(self, B: np.ndarray, P: np.ndarray | None = None) -> np.ndarray:
        """Rows x_i solving G[P_i, P_i] x_i = b_i[P_i] on P_i, 0 elsewhere; B, P (n, k)."""
        n, k = B.shape
        if P is None or P.all():
            return B @ self.inv("all", np.arange(k)) if n else np.zeros((0, k))
        X = np.zeros((n, k))
        if n == 0:
            return X
        if self.bits is not None:  # each passive set as the bits of one integer: a 1-D sort
            codes = P.astype(np.int64) @ self.bits
            order = np.argsort(codes, kind="stable")
            sc = codes[order]
            starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])
            keys = [int(c) for c in sc[starts]]
        else:
            sets, group = np.unique(P, axis=0, return_inverse=True)
            order = np.argsort(group.ravel(), kind="stable")
            starts = np.searchsorted(group.ravel()[order], np.arange(len(sets)))
            keys = [s.tobytes() for s in sets]
        bounds = np.r_[starts, n]
        for g, key in enumerate(keys):
            rows = order[bounds[g] : bounds[g + 1]]
            vars_ = np.flatnonzero(P[rows[0]])
            if vars_.size == 0:
                continue
            X[np.ix_(rows, vars_)] = B[np.ix_(rows, vars_)] @ self.inv(key, vars_)
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
    squares, and the objective (not necessarily x) is optimal. Internally the
    right-hand sides are rows (contiguous gathers of the columns in play).

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
    B = np.ascontiguousarray(CtA.T)  # (n, k): one right-hand side per row
    scale_b = np.abs(B).max(1) if n else np.zeros(0)
    solver = _Solver(CtC)

    K = solver.solve(B)  # the unconstrained solution, negative entries set to 0: the first feasible point
    P = K > 0
    K[~P] = 0.0
    D = K.copy()  # the last feasible iterate of each right-hand side
    F = np.flatnonzero(~P.all(1))  # right-hand sides not yet known optimal
    steps = 0
    while F.size and steps < limit:
        K[F] = solver.solve(B[F], P[F])
        H = F[(K[F] < 0).any(1)]
        while H.size and steps < limit:  # infeasible ones: step back towards D until a variable leaves
            steps += 1
            Kh, Dh, Ph = K[H], D[H], P[H]
            neg = Ph & (Kh < 0)
            alpha = np.full(Kh.shape, np.inf)
            alpha[neg] = Dh[neg] / (Dh[neg] - Kh[neg])
            leave = alpha.argmin(1)
            rows = np.arange(H.size)
            a = alpha[rows, leave]
            Dh = Dh - a[:, None] * (Dh - Kh)
            Dh[rows, leave] = 0.0
            Ph[rows, leave] = False
            D[H], P[H] = Dh, Ph
            K[H] = solver.solve(B[H], Ph)
            H = H[(K[H] < 0).any(1)]
        if H.size:  # the step bound was reached inside: keep the feasible iterate
            K[H] = np.maximum(D[H], 0.0)
            break
        steps += 1
        W = B[F] - K[F] @ CtC
        tol = 10 * k * _EPS * (scale_b[F] + scale_c * np.abs(K[F]).max(1))
        grad = np.where(P[F], -np.inf, W)
        best = grad.argmax(1)
        improve = grad[np.arange(F.size), best] > tol
        F, best = F[improve], best[improve]
        if F.size:  # the variable of steepest descent of each non-optimal right-hand side enters its passive set
            P[F, best] = True
            D[F] = K[F]
    np.maximum(K, 0.0, out=K)  # -0.0 and round-off below zero of passive variables at a bound
    return K[0].copy() if vector else np.ascontiguousarray(K.T)
