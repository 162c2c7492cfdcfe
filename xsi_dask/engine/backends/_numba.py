"""The ``"numba"`` kernel backend (the default): fused single-threaded kernels on the compact CSR arrays.

Each function here allocates its outputs and calls a compiled kernel of
:mod:`._numba_kernels`; see :mod:`xsi_dask.engine.backends` for the interface.
The kernels release the GIL, so dask runs one per unit in parallel.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import _numba_kernels as _k

__all__ = ["gram_apply", "colsum_frob", "gram_block", "csr_dense", "kl_mu_step", "fro_mu_step", "nmf_loss_terms"]

name = "numba"


def gram_apply(indptr, indices, data, s, Xh):
    Y = np.zeros_like(Xh, dtype=np.float64)
    _k.gram_apply(indptr, indices, data, s, np.ascontiguousarray(Xh, dtype=np.float64), Y)
    return Y


def colsum_frob(indptr, indices, data, s, channels):
    stats = np.zeros((2, channels))
    _k.scaled_colsum_frob(indptr, indices, data, s, stats)
    return stats


def gram_block(indptr, indices, data, s, channels):
    # a sparse-sparse product: SciPy's is as fast as a hand-written one here (the output is dense channels^2)
    lo, hi = int(indptr[0]), int(indptr[-1])
    D = sp.csr_array((data[lo:hi].astype(np.float64), indices[lo:hi].astype(np.int32), (indptr - lo).astype(np.int64)),
                     shape=(indptr.size - 1, channels))
    return (D.T @ D.multiply(np.asarray(s)[:, None]).tocsr()).toarray()


def csr_dense(indptr, indices, data, X):
    out = np.empty((indptr.size - 1, X.shape[1]))
    _k.csr_dense(indptr, indices, data, np.ascontiguousarray(X, dtype=np.float64), out)
    return out


def kl_mu_step(indptr, indices, data, W, Ht, denom_w, *, with_loss=False, lam=0.0, sqrt_s=None, with_h=True):
    W = np.ascontiguousarray(W, dtype=np.float64)
    k = W.shape[1]
    num_ht = np.zeros((Ht.shape[0], k))
    w_sum = np.zeros(k)
    w_root = np.zeros(k)
    sqrt_s = np.zeros(k) if sqrt_s is None else np.asarray(sqrt_s, dtype=np.float64)
    loss = _k.kl_mu_step(indptr, indices, data, W, np.ascontiguousarray(Ht), np.asarray(denom_w, dtype=np.float64),
                         num_ht, w_sum, bool(with_loss), float(lam), sqrt_s, w_root, bool(with_h))
    return W, num_ht, w_sum, w_root, float(loss)


def fro_mu_step(indptr, indices, data, W, Ht, HHt):
    W = np.ascontiguousarray(W, dtype=np.float64)
    k = W.shape[1]
    num_ht = np.zeros((Ht.shape[0], k))
    wtw = np.zeros((k, k))
    cross = _k.fro_mu_step(indptr, indices, data, W, np.ascontiguousarray(Ht), np.ascontiguousarray(HHt), num_ht, wtw)
    return W, num_ht, wtw, float(cross)


def nmf_loss_terms(indptr, indices, data, W, Ht):
    kl, cross, sq = _k.nmf_loss_terms(indptr, indices, data, np.ascontiguousarray(W, dtype=np.float64), np.ascontiguousarray(Ht))
    return float(kl), float(cross), float(sq)
