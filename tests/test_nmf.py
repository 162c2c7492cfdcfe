"""Distributed NMF against scikit-learn's MU solver, iterate for iterate."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import xsi_dask
from xsi_dask.errors import DecompositionError

from .conftest import EDS

pytestmark = pytest.mark.usefixtures("needs_data")


@pytest.fixture(scope="module")
def p45(tmp_path_factory):
    """The real 75 x 100 Bruker map split 3 x 4 (22 counts per pixel)."""
    store = xsi_dask.ingest(EDS / "P45_the_default_job.bcf", tmp_path_factory.mktemp("nmf") / "p45.zarr", split="3x4", progress=False)
    X = sp.vstack([store.tile_csr(t).to_scipy(np.float64) for t in range(store.n_tiles)]).tocsr()
    return xsi_dask.open_montage(store), X


def _sklearn(X, W0, H0, beta, n_iter):
    from sklearn.decomposition import NMF

    model = NMF(W0.shape[1], solver="mu", beta_loss=beta, init="custom", max_iter=n_iter, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "maximum number of iterations reached"
        W = model.fit_transform(X, W=W0.copy(), H=H0.copy())
    return W, model.components_, model.reconstruction_err_


@pytest.mark.parametrize("loss,beta", [("kl", "kullback-leibler"), ("frobenius", "frobenius")])
def test_iterates_equal_sklearn(p45, loss, beta):
    m, X = p45
    k, n_iter = 4, 40
    rng = np.random.default_rng(1)
    W0 = np.abs(rng.standard_normal((X.shape[0], k))) * 0.3
    H0 = np.abs(rng.standard_normal((k, X.shape[1]))) * 0.3
    Ws, Hs, err = _sklearn(X, W0, H0, beta, n_iter)
    npix = 25 * 25
    ds = xsi_dask.nmf(m, k, loss=loss, init=([W0[t * npix : (t + 1) * npix] for t in range(12)], H0), max_iter=n_iter, tol=0, loss_every=1)
    # our outputs: spectra H/sum(H), abundances W*sum(H), largest total first
    scale = Hs.sum(1)
    order = np.argsort(-(Ws.sum(0) * scale), kind="stable")
    np.testing.assert_allclose(ds.spectra.values, (Hs / scale[:, None])[order], rtol=1e-6, atol=1e-12)
    ab = ds.abundances.values.reshape(-1, k)
    np.testing.assert_allclose(ab, (Ws * scale)[:, order], rtol=1e-6, atol=1e-9 * ab.max())
    # scikit-learn's reconstruction_err_ is sqrt(2 * loss)
    assert np.sqrt(2 * ds.loss.values[-1]) == pytest.approx(err, rel=1e-9)
    assert ds.sizes["iteration"] == n_iter + 1


def test_kl_loss_never_increases_and_nonnegative(p45):
    m, X = p45
    ds = xsi_dask.nmf(m, 5, max_iter=60, tol=0, loss_every=1)
    loss = ds.loss.values
    assert np.all(np.diff(loss) <= 1e-12 * loss[0]), np.diff(loss).max()
    assert loss[-1] < 0.95 * loss[0]
    assert (ds.spectra.values >= 0).all() and (ds.abundances.values >= 0).all()
    np.testing.assert_allclose(ds.spectra.values.sum(1), 1.0, rtol=1e-12)
    # abundances are counts: the model's total equals the data's total (a KL fixed point property)
    assert ds.abundances.values.sum() == pytest.approx(X.sum(), rel=1e-3)
    totals = ds.abundances.values.sum((0, 1, 2))
    assert np.all(np.diff(totals) <= 0)  # largest endmember first


@pytest.mark.parametrize("init", ["poisson-nndsvda", "nndsvda"])
def test_nndsvda_init_is_nonnegative_and_converges(p45, init):
    m, _ = p45
    ds = xsi_dask.nmf(m, 4, init=init, max_iter=300, tol=1e-4)
    assert ds.attrs["n_iter"] < 300  # stopped on the relative loss change
    assert ds.attrs["converged"] is True
    loss, it = ds.loss.values, ds.iteration.values
    assert abs(loss[-2] - loss[-1]) < 1e-4 * loss[0] and it[-1] == ds.attrs["n_iter"]
    assert ds.attrs["init"] == init
    assert (ds.abundances.values >= 0).all()
    assert ds.loss.values[-1] < 0.95 * ds.loss.values[0]


def test_stopping_above_tol_warns_and_says_so(p45):
    """max_iter reached with the loss still moving by more than tol: a ConvergenceWarning and converged=False."""
    from xsi_dask.errors import ConvergenceWarning

    m, _ = p45
    with pytest.warns(ConvergenceWarning, match=r"max_iter=3 before converging.*above tol=1e-06"):
        ds = xsi_dask.nmf(m, 4, max_iter=3, tol=1e-6)
    assert ds.attrs["converged"] is False and ds.attrs["n_iter"] == 3
    assert ds.attrs["final_relative_change"] > 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fixed = xsi_dask.nmf(m, 4, max_iter=3, tol=0)  # tol=0: exactly max_iter asked for, nothing to warn about
    assert fixed.attrs["converged"] is False


def test_random_init_seeded(p45):
    m, _ = p45
    a = xsi_dask.nmf(m, 3, init="random", seed=5, max_iter=5, tol=0)
    b = xsi_dask.nmf(m, 3, init="random", seed=5, max_iter=5, tol=0)
    np.testing.assert_array_equal(a.spectra.values, b.spectra.values)


def _sparse_kl_mu(X, W, H, lam, n_iter):
    """Dense NumPy reference of KL MU with the L1/2 term lam sum sqrt(W_ic s_c), s = H.sum(1)."""
    eps = np.finfo(np.float32).eps
    X = X.toarray()
    nz = X > 0
    for _ in range(n_iter):
        s = H.sum(1)
        R = np.where(nz, X / np.maximum(W @ H, eps), 0.0)
        with np.errstate(divide="ignore"):
            W = W * (R @ H.T) / (s + 0.5 * lam * np.sqrt(s) / np.sqrt(W))
        R = np.where(nz, X / np.maximum(W @ H, eps), 0.0)
        H = H * (W.T @ R) / (W.sum(0) + 0.5 * lam * np.sqrt(W).sum(0) / np.sqrt(s))[:, None]
        H[H < np.finfo(np.float64).eps] = 0.0
    return W, H


def test_sparsity_iterates_equal_dense_reference(p45):
    m, X = p45
    k, n_iter, lam = 4, 25, 3.0
    rng = np.random.default_rng(2)
    W0 = np.abs(rng.standard_normal((X.shape[0], k))) * 0.3
    H0 = np.abs(rng.standard_normal((k, X.shape[1]))) * 0.3
    Wr, Hr = _sparse_kl_mu(X, W0, H0, lam, n_iter)
    npix = 25 * 25
    ds = xsi_dask.nmf(m, k, init=([W0[t * npix : (t + 1) * npix] for t in range(12)], H0), max_iter=n_iter, tol=0,
                      loss_every=1, sparsity=lam, refit_iter=0)
    scale = Hr.sum(1)
    order = np.argsort(-(Wr.sum(0) * scale), kind="stable")
    np.testing.assert_allclose(ds.spectra.values, (Hr / scale[:, None])[order], rtol=1e-6, atol=1e-12)
    ab = ds.abundances.values.reshape(-1, k)
    np.testing.assert_allclose(ab, (Wr * scale)[:, order], rtol=1e-6, atol=1e-9 * ab.max())
    # the objective: KL + lam sum_ic sqrt(W_ic s_c), recorded every iteration, never increasing here
    WH = Wr @ Hr
    Xd = X.toarray()
    nz = Xd > 0
    kl = float((Xd[nz] * np.log(Xd[nz] / np.maximum(WH[nz], np.finfo(np.float32).eps))).sum() + WH.sum() - Xd.sum())
    assert ds.loss.values[-1] == pytest.approx(kl + lam * float(np.sqrt(Wr * scale).sum()), rel=1e-9)
    assert ds.attrs["divergence"] == pytest.approx(kl, rel=1e-9)
    assert np.all(np.diff(ds.loss.values) <= 1e-12 * ds.loss.values[0])


def test_sparsity_refit_returns_abundances_in_counts(p45):
    """The L1/2 term shrinks abundances; the refit with the spectra fixed puts them back in counts."""
    m, X = p45
    shrunk = xsi_dask.nmf(m, 4, max_iter=80, tol=0, sparsity=3.0, refit_iter=0)
    refit = xsi_dask.nmf(m, 4, max_iter=80, tol=0, sparsity=3.0, refit_iter=30)
    np.testing.assert_array_equal(refit.spectra.values, shrunk.spectra.values)
    assert shrunk.abundances.values.sum() < 0.9 * X.sum()
    assert refit.abundances.values.sum() == pytest.approx(X.sum(), rel=2e-3)
    assert refit.attrs["divergence"] < shrunk.attrs["divergence"]
    assert refit.attrs["refit_iter"] == 30 and refit.attrs["sparsity"] == 3.0


def test_scratch_folder_is_gone_when_nmf_returns(p45, tmp_path):
    """W lives in a scratch folder beside the store between passes; nmf removes it before it returns,
    with the abundances in memory or written to ``out`` (no garbage collection involved)."""
    m, _ = p45
    parent = m.xsi.store.path.parent
    ds = xsi_dask.nmf(m, 3, max_iter=3, tol=0)
    assert not list(parent.glob(".xsi-dask-nmf-*"))
    assert isinstance(ds.abundances.data, np.ndarray) and ds.abundances.shape == (12, 25, 25, 3)
    written = xsi_dask.nmf(m, 3, max_iter=3, tol=0, out=tmp_path / "r.zarr")
    assert not list(parent.glob(".xsi-dask-nmf-*"))
    np.testing.assert_array_equal(written.abundances.values, ds.abundances.values)
    np.testing.assert_array_equal(written.spectra.values, ds.spectra.values)


def test_bad_requests(p45):
    m, _ = p45
    with pytest.raises(DecompositionError, match="sparsity"):
        xsi_dask.nmf(m, 3, sparsity=-1)
    with pytest.raises(DecompositionError, match="sparsity"):
        xsi_dask.nmf(m, 3, loss="frobenius", sparsity=1)
    with pytest.raises(DecompositionError, match="loss"):
        xsi_dask.nmf(m, 3, loss="itakura-saito")
    with pytest.raises(DecompositionError, match="init"):
        xsi_dask.nmf(m, 3, init="nndsvd-typo")
    with pytest.raises(DecompositionError, match="expected 12 tiles"):
        xsi_dask.nmf(m, 3, init=([np.ones((625, 3))], np.ones((3, 2048))))
