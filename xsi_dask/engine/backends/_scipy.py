"""The ``"scipy"`` kernel backend: a slow, plain reference on SciPy sparse products and vectorised NumPy.

Every kernel here is written the obvious way, independently of the compiled
ones of :mod:`._numba_kernels`: the rows the pointers address are wrapped in a
``scipy.sparse.csr_array`` (float64 data, pointers shifted to start at 0, so a
row block ``tile_indptr[a:b + 1]`` works as the whole tile does), the products
are SciPy's, and WH is evaluated only at the stored values, as the row-wise dot
of ``W[row]`` and ``Ht[channel]`` for each one (never as a dense product).

It is the reference the numba kernels are tested against
(``tests/test_backends.py``), not a fast path: it makes several passes over the
rows and allocates temporaries the size of the tile's non-zeros times the
number of components, where the fused kernels stream each row through the cache. Select it
with ``dask.config.set({"xsi-dask.backend": "scipy"})``. See
:mod:`xsi_dask.engine.backends` for the interface.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["colsum_frob", "csr_dense", "fro_mu_step", "gram_apply", "gram_block", "kl_mu_step", "nmf_loss_terms"]

name = "scipy"

# WH is clipped below at float32's eps, as in scikit-learn's MU solver (and the numba kernels)
EPSILON = float(np.finfo(np.float32).eps)


def _rows(indptr, indices, data, channels, values=None):
    """The rows ``indptr`` addresses as a float64 csr_array (rows, channels); ``values`` replaces the counts."""
    ptr = np.asarray(indptr, dtype=np.int64)
    lo, hi = int(ptr[0]), int(ptr[-1])
    if values is None:
        values = np.asarray(data[lo:hi], dtype=np.float64)
    return sp.csr_array((values, np.asarray(indices[lo:hi], dtype=np.int64), ptr - lo), shape=(ptr.size - 1, channels))


def _nonzeros(indptr, indices, data):
    """(row, channel, value) of each stored value of the rows ``indptr`` addresses; value as float64."""
    ptr = np.asarray(indptr, dtype=np.int64)
    lo, hi = int(ptr[0]), int(ptr[-1])
    row = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
    col = np.asarray(indices[lo:hi], dtype=np.int64)
    return row, col, np.asarray(data[lo:hi], dtype=np.float64)


def _wh(W, Ht, row, col):
    """(W H)[row, col] for each stored value: the row-wise dot of W[row] and Ht[col]."""
    return np.einsum("pk,pk->p", W[row], Ht[col])


def gram_apply(indptr, indices, data, s, Xh):
    Xh = np.asarray(Xh, dtype=np.float64)
    D = _rows(indptr, indices, data, Xh.shape[0])
    s = np.asarray(s, dtype=np.float64)
    return D.T @ (s[:, None] * (D @ Xh))


def colsum_frob(indptr, indices, data, s, channels):
    s = np.asarray(s, dtype=np.float64)
    D = _rows(indptr, indices, data, channels)
    D2 = _rows(indptr, indices, data, channels, values=D.data * D.data)
    return np.stack([D.T @ np.sqrt(s), D2.T @ s])


def gram_block(indptr, indices, data, s, channels):
    s = np.asarray(s, dtype=np.float64)
    D = _rows(indptr, indices, data, channels)
    row, _, v = _nonzeros(indptr, indices, data)
    Ds = _rows(indptr, indices, data, channels, values=v * s[row])
    return np.asarray((D.T @ Ds).toarray())


def csr_dense(indptr, indices, data, X):
    X = np.asarray(X, dtype=np.float64)
    return np.asarray(_rows(indptr, indices, data, X.shape[0]) @ X)


def kl_mu_step(indptr, indices, data, W, Ht, denom_w, *, with_loss=False, lam=0.0, sqrt_s=None, with_h=True):
    W0 = np.asarray(W, dtype=np.float64)
    Ht = np.asarray(Ht, dtype=np.float64)
    denom_w = np.asarray(denom_w, dtype=np.float64)
    channels, k = Ht.shape
    row, col, v = _nonzeros(indptr, indices, data)

    # W update with H fixed: W <- W * ((D / WH) H^T) / denom
    wh = np.maximum(_wh(W0, Ht, row, col), EPSILON)
    loss = float(np.sum(v * np.log(v / wh))) if with_loss else 0.0
    num = _rows(indptr, indices, data, channels, values=v / wh) @ Ht
    w_root = np.zeros(k)
    if lam > 0.0:
        sqrt_s = np.zeros(k) if sqrt_s is None else np.asarray(sqrt_s, dtype=np.float64)
        pos = W0 > 0.0
        safe = np.where(pos, W0, 1.0)
        Wn = np.where(pos, W0 * num / (denom_w + 0.5 * lam * sqrt_s / np.sqrt(safe)), W0)
        w_root = np.sqrt(Wn).sum(axis=0)
    else:
        Wn = W0 * (num / denom_w)

    num_ht = np.zeros((channels, k))
    w_sum = np.zeros(k)
    if with_h:
        # the H numerator (D / WH)^T W with the new W
        wh = np.maximum(_wh(Wn, Ht, row, col), EPSILON)
        num_ht = np.asarray(_rows(indptr, indices, data, channels, values=v / wh).T @ Wn)
        w_sum = Wn.sum(axis=0)
    return Wn, num_ht, w_sum, w_root, loss


def fro_mu_step(indptr, indices, data, W, Ht, HHt):
    W0 = np.asarray(W, dtype=np.float64)
    Ht = np.asarray(Ht, dtype=np.float64)
    HHt = np.asarray(HHt, dtype=np.float64)
    D = _rows(indptr, indices, data, Ht.shape[0])
    xht = np.asarray(D @ Ht)
    cross = float(np.sum(W0 * xht))
    den = W0 @ HHt
    den[den == 0.0] = EPSILON
    Wn = W0 * (xht / den)
    num_ht = np.asarray(D.T @ Wn)
    return Wn, num_ht, Wn.T @ Wn, cross


def nmf_loss_terms(indptr, indices, data, W, Ht):
    row, col, v = _nonzeros(indptr, indices, data)
    wh = _wh(np.asarray(W, dtype=np.float64), np.asarray(Ht, dtype=np.float64), row, col)
    kl = np.sum(v * np.log(v / np.maximum(wh, EPSILON)))
    return float(kl), float(np.sum(v * wh)), float(np.sum(v * v))
