"""Per-tile kernels on the stored CSR arrays (compact dtypes, no conversion).

All kernels are single-threaded and release the GIL: dask runs one per tile in
parallel, the same way the anchor (SciPy's CSR x dense product) runs.
Notation: a tile's counts D (pixels x channels) in CSR (indptr, indices, data).
"""

from __future__ import annotations

import math

import numba
import numpy as np

# the clipping constant scikit-learn's MU solver uses for WH and zero denominators
EPSILON = float(np.finfo(np.float32).eps)

# fastmath lets LLVM vectorise the short loops over components (reassociation);
# results stay deterministic for a given build and agree with scikit-learn's MU
# iterates to ~1e-14
_jit = numba.njit(nogil=True, cache=True, fastmath=True)


@_jit
def gram_apply(indptr, indices, data, s, Xh, Y):  # pragma: no cover - compiled
    """Y += D^T diag(s) D Xh, reading each row of D once (fused, cache-resident).

    Xh : (channels, l) float64, Y : (channels, l) float64 accumulated in place.
    """
    n = indptr.size - 1
    l = Xh.shape[1]
    z = np.empty(l)
    for i in range(n):
        a = indptr[i]
        b = indptr[i + 1]
        si = s[i]
        if a == b or si == 0.0:
            continue
        for c in range(l):
            z[c] = 0.0
        for p in range(a, b):
            j = indices[p]
            v = float(data[p])
            for c in range(l):
                z[c] += v * Xh[j, c]
        for c in range(l):
            z[c] *= si
        for p in range(a, b):
            j = indices[p]
            v = float(data[p])
            for c in range(l):
                Y[j, c] += v * z[c]


@_jit
def csr_dense(indptr, indices, data, X, out):  # pragma: no cover - compiled
    """out = D X. X : (channels, l), out : (pixels, l)."""
    n = indptr.size - 1
    l = X.shape[1]
    for i in range(n):
        for c in range(l):
            out[i, c] = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            v = float(data[p])
            for c in range(l):
                out[i, c] += v * X[j, c]


@_jit
def scaled_colsum_frob(indptr, indices, data, s, colsum):  # pragma: no cover - compiled
    """Accumulate per channel j: colsum[0, j] += sum_i d_ij sqrt(s_i), colsum[1, j] += sum_i d_ij^2 s_i.

    With s = 1/g these give D~^T 1 and ||D~||_F^2 once the channel weights are
    applied by the caller (the centring mean and the total scaled variance).
    """
    n = indptr.size - 1
    for i in range(n):
        si = s[i]
        if si == 0.0:
            continue
        r = math.sqrt(si)
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            v = float(data[p])
            colsum[0, j] += v * r
            colsum[1, j] += v * v * si


@_jit
def kl_mu_step(indptr, indices, data, W, Ht, denom_w, num_ht, w_sum, with_loss, lam, sqrt_s, w_root, with_h=True):  # pragma: no cover - compiled
    """One Lee-Seung KL step on a tile, as scikit-learn's MU solver orders it.

    W (pixels, k) is updated in place with H fixed; then, with the new W, the
    H numerator W^T (D / WH) is accumulated into ``num_ht`` (channels, k) and the
    column sums of W into ``w_sum`` (k). WH is evaluated only at the non-zeros
    of D, clipped below at EPSILON. With ``with_loss``, returns
    sum d log(d / WH) over the non-zeros with the W and H on entry (the data
    part of the KL loss; the log costs as much as the rest of the step, so it is
    evaluated only on the iterations that record the loss), else 0.

    With ``lam`` > 0 the objective has the L1/2 sparsity term
    lam sum_ic sqrt(W_ic s_c), s = the row sums of H (``sqrt_s`` = sqrt(s)):
    its W gradient lam sqrt(s_c) / (2 sqrt(W_ic)) joins the denominator of the
    W update, and sum_i sqrt(W_ic) of the new W is accumulated into ``w_root``
    (k) for the H update. ``with_h=False`` updates W only (H stays fixed):
    the second sweep over the row and the sums for H are skipped.
    """
    n = indptr.size - 1
    k = W.shape[1]
    num = np.empty(k)
    loss = 0.0
    for i in range(n):
        a = indptr[i]
        b = indptr[i + 1]
        for c in range(k):
            num[c] = 0.0
        for p in range(a, b):
            j = indices[p]
            wh = 0.0
            for c in range(k):
                wh += W[i, c] * Ht[j, c]
            if wh < EPSILON:
                wh = EPSILON
            v = float(data[p])
            if with_loss:
                loss += v * math.log(v / wh)
            r = v / wh
            for c in range(k):
                num[c] += r * Ht[j, c]
        if lam > 0.0:
            for c in range(k):
                w = W[i, c]
                if w > 0.0:
                    W[i, c] = w * num[c] / (denom_w[c] + 0.5 * lam * sqrt_s[c] / math.sqrt(w))
                w_root[c] += math.sqrt(W[i, c])
        else:
            for c in range(k):
                W[i, c] *= num[c] / denom_w[c]
        if not with_h:
            continue
        for p in range(a, b):
            j = indices[p]
            wh = 0.0
            for c in range(k):
                wh += W[i, c] * Ht[j, c]
            if wh < EPSILON:
                wh = EPSILON
            r = float(data[p]) / wh
            for c in range(k):
                num_ht[j, c] += r * W[i, c]
        for c in range(k):
            w_sum[c] += W[i, c]
    return loss


@_jit
def fro_mu_step(indptr, indices, data, W, Ht, HHt, num_ht, wtw):  # pragma: no cover - compiled
    """One Lee-Seung Frobenius step on a tile (scikit-learn's MU order).

    W <- W * (D H^T) / (W H H^T) in place; then with the new W accumulates
    W^T D into ``num_ht`` (channels, k) and W^T W into ``wtw`` (k, k).
    Returns sum_i (W_i . (D H^T)_i) with the W on entry, for the loss.
    """
    n = indptr.size - 1
    k = W.shape[1]
    xht = np.empty(k)
    den = np.empty(k)
    cross = 0.0
    for i in range(n):
        a = indptr[i]
        b = indptr[i + 1]
        for c in range(k):
            xht[c] = 0.0
        for p in range(a, b):
            j = indices[p]
            v = float(data[p])
            for c in range(k):
                xht[c] += v * Ht[j, c]
        for c in range(k):
            cross += W[i, c] * xht[c]
            acc = 0.0
            for e in range(k):
                acc += W[i, e] * HHt[e, c]
            den[c] = acc if acc != 0.0 else EPSILON
        for c in range(k):
            W[i, c] *= xht[c] / den[c]
        for p in range(a, b):
            j = indices[p]
            v = float(data[p])
            for c in range(k):
                num_ht[j, c] += v * W[i, c]
        for c in range(k):
            for e in range(k):
                wtw[c, e] += W[i, c] * W[i, e]
    return cross


@_jit
def nmf_loss_terms(indptr, indices, data, W, Ht):  # pragma: no cover - compiled
    """(sum d log(d / WH), sum d WH, sum d^2) over the non-zeros, WH clipped at EPSILON."""
    n = indptr.size - 1
    k = W.shape[1]
    kl = 0.0
    cross = 0.0
    sq = 0.0
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            wh = 0.0
            for c in range(k):
                wh += W[i, c] * Ht[j, c]
            v = float(data[p])
            cross += v * wh
            sq += v * v
            if wh < EPSILON:
                wh = EPSILON
            kl += v * math.log(v / wh)
    return kl, cross, sq
