"""The kernel backends agree: numba (fused, compiled) against scipy (plain reference) against dense NumPy.

Each kernel runs on a random CSR tile in the stored compact dtypes (uint32
pointers, uint16 channel indices, uint8 counts) with rows holding no counts,
both on the whole tile and on a row block (a pointer slice whose first entry is
not 0, with the tile's whole ``indices``/``data``). The dense reference below is
written from the interface's formulas (:mod:`xsi_dask.engine.backends`), not
from either backend.

Tolerance: the three compute the same float64 sums in different orders (numba
with fastmath reassociation, SciPy's sparse products, dense BLAS), so they agree
to rounding, a few ulps per term; rtol 1e-12 is far above that and far below any
real discrepancy (a wrong clip, a stale W, a missed row offset changes results
at 1e-3 or more). Sums of signed terms (the KL log terms) get an absolute
tolerance of 1e-12 times the sum of their magnitudes.
"""

from __future__ import annotations

import dask.config
import numpy as np
import pytest

from xsi_dask.engine.backends import get_backend
from xsi_dask.errors import BackendError

EPS = float(np.finfo(np.float32).eps)
RTOL = 1e-12
CHANNELS, K = 40, 3
ROWS = 30
EMPTY = (0, 5, 6, 7, 17, 29)  # rows with no counts (first, a run, last)
BLOCK = (5, 21)  # rows [5, 21) of the tile: indptr[5] > 0, starts with the empty run


def _tile(seed=0):
    """A random tile: dense counts (ROWS, CHANNELS) and its compact CSR arrays."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((ROWS, CHANNELS)) < 0.3) * rng.integers(1, 256, (ROWS, CHANNELS))
    dense[list(EMPTY)] = 0
    rows, cols = np.nonzero(dense)
    indptr = np.zeros(ROWS + 1, dtype=np.uint32)
    np.cumsum(np.bincount(rows, minlength=ROWS), out=indptr[1:])
    return dense.astype(np.float64), (indptr, cols.astype(np.uint16), dense[rows, cols].astype(np.uint8))


TILE = _tile()


@pytest.fixture(params=["tile", "block"])
def case(request):
    """(dense rows, indptr, indices, data, rng) for the whole tile or the row block."""
    dense, (indptr, indices, data) = TILE
    if request.param == "tile":
        a, b = 0, ROWS
    else:
        a, b = BLOCK
        assert indptr[a] > 0
    return dense[a:b], indptr[a : b + 1], indices, data, np.random.default_rng(b)


@pytest.fixture(scope="module")
def numba():
    return get_backend("numba")


@pytest.fixture(scope="module")
def scipy():
    return get_backend("scipy")


def close(actual, desired, scale=None):
    """assert_allclose at RTOL; ``scale``: magnitude sum of a signed sum, for an absolute tolerance."""
    atol = 0.0 if scale is None else RTOL * scale
    np.testing.assert_allclose(actual, desired, rtol=RTOL, atol=atol)


def _factors(rng, n, zeros=False):
    W = rng.random((n, K)) + 0.05
    Ht = rng.random((CHANNELS, K)) * 20 + 0.1
    Ht[3, :] = 0.0  # a channel where WH clips at EPS
    if zeros:
        W[rng.random((n, K)) < 0.25] = 0.0
    return W, Ht


# -- dense references, from the interface's formulas --------------------------------------


def _ref_kl(D, W, Ht, denom_w, lam, sqrt_s, with_h):
    wh = np.maximum(W @ Ht.T, EPS)
    nz = D > 0
    terms = np.where(nz, D * np.log(np.where(nz, D, 1.0) / wh), 0.0)
    num = (D / wh) @ Ht
    if lam > 0:
        with np.errstate(divide="ignore"):
            Wn = np.where(W > 0, W * num / (denom_w + 0.5 * lam * sqrt_s / np.sqrt(W)), W)
        w_root = np.sqrt(Wn).sum(0)
    else:
        Wn = W * num / denom_w
        w_root = np.zeros(K)
    if with_h:
        num_ht = (D / np.maximum(Wn @ Ht.T, EPS)).T @ Wn
        w_sum = Wn.sum(0)
    else:
        num_ht, w_sum = np.zeros((CHANNELS, K)), np.zeros(K)
    return Wn, num_ht, w_sum, w_root, terms


# -- the kernels ---------------------------------------------------------------------------


def test_gram_apply(case, numba, scipy):
    D, indptr, indices, data, rng = case
    s = rng.random(D.shape[0])
    s[1] = 0.0
    Xh = rng.standard_normal((CHANNELS, 4))
    ref = D.T @ (s[:, None] * D) @ Xh
    scale = (D.T @ (s[:, None] * D) @ np.abs(Xh)).max()  # Xh is signed
    out_s = scipy.gram_apply(indptr, indices, data, s, Xh)
    out_n = numba.gram_apply(indptr, indices, data, s, Xh)
    assert out_s.shape == (CHANNELS, 4)
    close(out_n, ref, scale=scale)
    close(out_s, ref, scale=scale)
    close(out_s, out_n, scale=scale)


def test_colsum_frob(case, numba, scipy):
    D, indptr, indices, data, rng = case
    s = rng.random(D.shape[0])
    s[2] = 0.0
    ref = np.stack([D.T @ np.sqrt(s), (D * D).T @ s])
    out_n = numba.colsum_frob(indptr, indices, data, s, CHANNELS)
    out_s = scipy.colsum_frob(indptr, indices, data, s, CHANNELS)
    assert out_s.shape == (2, CHANNELS)
    close(out_n, ref)
    close(out_s, ref)
    close(out_s, out_n)


def test_gram_block(case, numba, scipy):
    D, indptr, indices, data, rng = case
    s = rng.random(D.shape[0])
    ref = D.T @ (s[:, None] * D)
    out_s = scipy.gram_block(indptr, indices, data, s, CHANNELS)
    assert isinstance(out_s, np.ndarray) and out_s.shape == (CHANNELS, CHANNELS)
    close(numba.gram_block(indptr, indices, data, s, CHANNELS), ref)
    close(out_s, ref)


def test_csr_dense(case, numba, scipy):
    D, indptr, indices, data, rng = case
    X = rng.random((CHANNELS, 5))
    out_n = numba.csr_dense(indptr, indices, data, X)
    out_s = scipy.csr_dense(indptr, indices, data, X)
    assert out_s.shape == (D.shape[0], 5)
    close(out_n, D @ X)
    close(out_s, D @ X)
    close(out_s, out_n)
    empty = ~D.any(axis=1)
    assert empty.any() and not out_s[empty].any()


@pytest.mark.parametrize("lam", [0.0, 0.7])
@pytest.mark.parametrize("with_h", [True, False])
@pytest.mark.parametrize("with_loss", [True, False])
def test_kl_mu_step(case, numba, scipy, lam, with_h, with_loss):
    D, indptr, indices, data, rng = case
    W, Ht = _factors(rng, D.shape[0], zeros=lam > 0)
    denom_w = Ht.sum(0)
    sqrt_s = np.sqrt(Ht.sum(0)) if lam > 0 else None
    Wn, num_ht, w_sum, w_root, terms = _ref_kl(D, W, Ht, denom_w, lam, sqrt_s, with_h)
    loss = terms.sum() if with_loss else 0.0
    kw = {"with_loss": with_loss, "lam": lam, "sqrt_s": sqrt_s, "with_h": with_h}
    outs = {}
    for be in (numba, scipy):
        out = be.kl_mu_step(indptr, indices, data, W.copy(), Ht, denom_w, **kw)
        assert len(out) == 5 and isinstance(out[4], float)
        close(out[0], Wn)
        close(out[1], num_ht)
        close(out[2], w_sum)
        close(out[3], w_root)
        close(out[4], loss, scale=np.abs(terms).sum())
        outs[be.name] = out
    for a, b in zip(outs["scipy"][:4], outs["numba"][:4]):
        close(a, b)
    close(outs["scipy"][4], outs["numba"][4], scale=np.abs(terms).sum())
    if lam > 0:
        # W entries that are 0 stay 0
        assert (outs["scipy"][0][W == 0] == 0).all() and (outs["numba"][0][W == 0] == 0).all()
    if not with_h:
        assert not outs["scipy"][1].any() and not outs["scipy"][2].any()


def test_fro_mu_step(case, numba, scipy):
    D, indptr, indices, data, rng = case
    W, Ht = _factors(rng, D.shape[0])
    W[1] = 0.0  # a zero row: W H H^T = 0 there, the denominator clips at EPS
    HHt = Ht.T @ Ht
    xht = D @ Ht
    den = W @ HHt
    den[den == 0] = EPS
    Wn = W * xht / den
    ref = (Wn, D.T @ Wn, Wn.T @ Wn, float((W * xht).sum()))
    outs = []
    for be in (numba, scipy):
        out = be.fro_mu_step(indptr, indices, data, W.copy(), Ht, HHt)
        assert isinstance(out[3], float)
        for a, b in zip(out, ref):
            close(a, b)
        outs.append(out)
    for a, b in zip(*outs):
        close(a, b)


def test_nmf_loss_terms(case, numba, scipy):
    D, indptr, indices, data, rng = case
    W, Ht = _factors(rng, D.shape[0])
    wh = W @ Ht.T
    nz = D > 0
    terms = np.where(nz, D * np.log(np.where(nz, D, 1.0) / np.maximum(wh, EPS)), 0.0)
    ref = (terms.sum(), (D * wh).sum(), (D * D).sum())
    scale = np.abs(terms).sum()
    outs = []
    for be in (numba, scipy):
        out = be.nmf_loss_terms(indptr, indices, data, W, Ht)
        assert all(isinstance(x, float) for x in out)
        close(out[0], ref[0], scale=scale)
        close(out[1:], ref[1:])
        outs.append(out)
    close(outs[1][0], outs[0][0], scale=scale)
    close(outs[1][1:], outs[0][1:])


def test_tiny_row_block(numba, scipy):
    # a block of empty rows only, and a block of one row
    dense, (indptr, indices, data) = TILE
    Ht = np.random.default_rng(1).random((CHANNELS, K)) + 0.1
    for a, b in ((5, 8), (8, 9)):
        ptr, D = indptr[a : b + 1], dense[a:b]
        W = np.full((b - a, K), 0.5)
        for be in (numba, scipy):
            close(be.csr_dense(ptr, indices, data, Ht), D @ Ht)
            out = be.kl_mu_step(ptr, indices, data, W.copy(), Ht, Ht.sum(0), with_loss=True)
            close(out[2], ((D / np.maximum(W @ Ht.T, EPS)) @ Ht * W / Ht.sum(0)).sum(0))


# -- the registry ---------------------------------------------------------------------------


def test_unknown_backend():
    with pytest.raises(BackendError, match="nope"):
        get_backend("nope")
    with dask.config.set({"xsi-dask.backend": "nope"}), pytest.raises(BackendError):
        get_backend()


def test_config_selects_scipy(scipy):
    with dask.config.set({"xsi-dask.backend": "scipy"}):
        be = get_backend()
    assert be is scipy and be.name == "scipy"
    assert get_backend("numba").name == "numba"
