"""Poisson-scaled SVD against dense NumPy on the explicitly scaled matrix and against HyperSpy."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp

import xsi_dask
from xsi_dask.errors import DecompositionError

from .conftest import EDS, reference_si

pytestmark = pytest.mark.usefixtures("needs_data")

# file -> split used for the store (tiling must not matter)
MAPS = {"jeol_View000_0000006.pts": "4x4", "velox_EELS_EDS_128x128.emd": "2x2", "bcf_v2_50x50px.bcf": None}
# the dense references of the exactness tests: the unbinned JEOL map (its leading scaled singular values all
# exactly 1, a degenerate eigenspace) costs a minute of dense 4096 x 4096 eigensolves for little; its gram is
# checked against its own tiling (test_tiling_changes_nothing_jeol) and binned in test_view_ops
EXACT = sorted(set(MAPS) - {"jeol_View000_0000006.pts"})


def scaled_matrix(dense: np.ndarray) -> sp.csr_array:
    """D~ = G^-1/2 D H^-1/2 formed explicitly (zero totals -> weight 0), pixels x channels."""
    D = sp.csr_array(dense.reshape(-1, dense.shape[-1]).astype(np.float64))
    g, h = D.sum(axis=1), D.sum(axis=0)
    wg = np.divide(1.0, np.sqrt(g), out=np.zeros_like(g), where=g > 0)
    wh = np.divide(1.0, np.sqrt(h), out=np.zeros_like(h), where=h > 0)
    return sp.csr_array(sp.diags_array(wg) @ D @ sp.diags_array(wh))


@functools.lru_cache(maxsize=3)
def dense_singular_values(name: str) -> np.ndarray:
    """Reference singular values of D~ by dense NumPy.

    Zero rows and columns of D~ do not change its singular values and are dropped;
    the Velox and Bruker maps then fit a dense ``np.linalg.svd``. The JEOL map's
    D~ is still ~150k x 3k dense (3.6 GB), so its reference is ``np.linalg.eigvalsh``
    of the dense Gram matrix formed from the explicit D~ by SciPy.
    """
    Dt = scaled_matrix(reference_si(name)[0])
    rows = np.diff(Dt.indptr) > 0
    cols = np.bincount(Dt.indices, minlength=Dt.shape[1]) > 0
    Dt = Dt[rows][:, cols]
    if Dt.shape[0] * Dt.shape[1] <= 4e7:
        return np.linalg.svd(Dt.toarray(), compute_uv=False)
    ev = np.linalg.eigvalsh((Dt.T @ Dt).toarray())[::-1]
    return np.sqrt(np.clip(ev, 0, None))


@functools.lru_cache(maxsize=3)
def montage_of(name: str, tmp_root: str):
    return xsi_dask.open_montage(xsi_dask.ingest(EDS / name, f"{tmp_root}/{name}.zarr", split=MAPS[name], progress=False))


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("decompose"))


@pytest.mark.parametrize("name", EXACT)
def test_gram_equals_dense_svd(name, tmp_root):
    ref = dense_singular_values(name)
    ds = xsi_dask.decompose(montage_of(name, tmp_root), 20, solver="gram")
    n = min(20, ref.size)
    np.testing.assert_allclose(ds.singular_values.values[:n], ref[:n], rtol=1e-8)
    assert ds.singular_values.values[0] == pytest.approx(1.0, rel=1e-12)  # the trivial component
    assert ds.sizes["rank"] == ds.sizes["energy"]  # the whole eigenvalue spectrum for the scree
    n = min(50, ref.size)  # beyond the rank of D~ every eigenvalue is zero
    np.testing.assert_allclose(np.sqrt(ds.eigenvalues.values[:n]), ref[:n], rtol=1e-6, atol=1e-7)
    assert np.all(np.sqrt(ds.eigenvalues.values[ref.size :]) < 1e-6)
    assert ds.attrs["passes"] == 1


@pytest.mark.parametrize("name", EXACT)
def test_randomized_default_matches_gram(name, tmp_root):
    """Separated components exact; the flat Poisson noise floor within 10 %."""
    m = montage_of(name, tmp_root)
    exact = xsi_dask.decompose(m, 11, solver="gram")
    S = exact.singular_values.values
    ds = xsi_dask.decompose(m, 10)  # the default power iterations
    s = ds.singular_values.values
    separated = np.nonzero((S[:10] - S[1:11]) / S[:10] >= 0.05)[0]
    rest = np.setdiff1d(np.arange(10), separated)
    np.testing.assert_allclose(s[separated], S[separated], rtol=1e-6)
    np.testing.assert_allclose(s[rest], S[rest], rtol=0.10)
    h = np.sqrt(m.xsi.store.sum_spectrum().astype(float))
    w = np.divide(1.0, h, out=np.zeros_like(h), where=h > 0)
    for i in separated:  # angles between the scaled-space singular vectors
        a = (exact.loadings.values[i] * w)[:, None]
        b = (ds.loadings.values[i] * w)[:, None]
        assert np.degrees(scipy.linalg.subspace_angles(a, b).max()) < 0.1
    assert ds.attrs["power_iters"] == 10 and ds.attrs["passes"] == 11


def test_zero_power_iterations_are_badly_wrong(tmp_root):
    """Why the default is not dask's 0: on count data the noise floor is far off."""
    m = montage_of("bcf_v2_50x50px.bcf", tmp_root)
    S = xsi_dask.decompose(m, 10, solver="gram").singular_values.values
    s0 = xsi_dask.decompose(m, 10, power_iters=0).singular_values.values
    assert np.max(np.abs(s0 / S - 1)) > 0.2


def test_randomized_deterministic_and_orthonormal(tmp_root):
    m = montage_of("bcf_v2_50x50px.bcf", tmp_root)
    a = xsi_dask.decompose(m, 6, seed=3)
    b = xsi_dask.decompose(m, 6, seed=3)
    np.testing.assert_array_equal(a.singular_values.values, b.singular_values.values)
    np.testing.assert_array_equal(a.scores.values, b.scores.values)
    h = np.sqrt(m.xsi.store.sum_spectrum().astype(float))
    V = (a.loadings.values / np.where(h > 0, h, 1)).T  # back to the scaled space
    np.testing.assert_allclose(V.T @ V, np.eye(6), atol=1e-12)
    assert a.scores.dtype == np.float64 and a.loadings.dtype == np.float64


def test_unweighted_outputs_reconstruct_like_hyperspy(tmp_root):
    """scores @ loadings with all components reproduces D (the unweighting is consistent)."""
    data, _ = reference_si("bcf_v2_50x50px.bcf")
    m = montage_of("bcf_v2_50x50px.bcf", tmp_root)
    ds = xsi_dask.decompose(m, 2048, solver="gram")
    recon = ds.scores.values.reshape(-1, 2048) @ ds.loadings.values
    np.testing.assert_allclose(recon, data.reshape(-1, 2048), atol=1e-6)


def _hyperspy_evr(dense: np.ndarray) -> np.ndarray:
    hs = pytest.importorskip("hyperspy.api")
    s = hs.signals.Signal1D(dense.astype(np.float64))
    s.decomposition(normalize_poissonian_noise=True, print_info=False)
    return np.asarray(s.learning_results.explained_variance_ratio)


@pytest.mark.parametrize(
    "name,split,tile,window",
    [
        ("bcf_v2_50x50px.bcf", None, 0, (0, 50, 0, 50)),
        ("velox_test_SI_16x16.emd", None, 0, (0, 16, 0, 16)),
        # a 32 x 32 tile of the JEOL map: the whole map does not fit HyperSpy's dense path
        ("jeol_View000_0000006.pts", "16x16", 17, (32, 64, 32, 64)),
    ],
)
def test_explained_variance_ratio_equals_hyperspy(name, split, tile, window, tmp_path):
    data, _ = reference_si(name)
    y0, y1, x0, x1 = window
    ref = _hyperspy_evr(data[y0:y1, x0:x1])
    m = xsi_dask.open_montage(xsi_dask.ingest(EDS / name, tmp_path / "m.zarr", split=split, progress=False))
    ds = xsi_dask.decompose(m.isel(tile=[tile]), 10, solver="gram")
    np.testing.assert_allclose(ds.explained_variance_ratio.values, ref[:10], atol=1e-4, rtol=0)
    rnd = xsi_dask.decompose(m.isel(tile=[tile]), 3)
    np.testing.assert_allclose(rnd.explained_variance_ratio.values[:1], ref[:1], atol=1e-4, rtol=0)


@pytest.mark.slow  # ~30 s, two ingests of the whole JEOL map: make test-all
def test_tiling_changes_nothing_jeol(tmp_path):
    """The JEOL map whole vs split 4x4: same gram singular values, same scores per pixel.

    Its leading Poisson-scaled singular values are all exactly 1 (a channel whose
    counts all come from single-count pixels is an orthogonal column of norm 1),
    so gram eigenvectors there are an arbitrary basis of a degenerate eigenspace;
    scores per pixel are compared with the seeded randomized solver, which is
    deterministic for a given seed.
    """
    name = "jeol_View000_0000006.pts"
    whole = xsi_dask.open_montage(xsi_dask.ingest(EDS / name, tmp_path / "w.zarr", progress=False))
    split = xsi_dask.open_montage(xsi_dask.ingest(EDS / name, tmp_path / "s.zarr", split="4x4", progress=False))
    gw = xsi_dask.decompose(whole, 10, solver="gram")
    gs = xsi_dask.decompose(split, 10, solver="gram")
    np.testing.assert_allclose(gw.singular_values.values, gs.singular_values.values, rtol=1e-10)
    np.testing.assert_allclose(gw.explained_variance_ratio.values, gs.explained_variance_ratio.values, rtol=1e-10)
    rw = xsi_dask.decompose(whole, 5, seed=7)
    rs = xsi_dask.decompose(split, 5, seed=7)
    a = rw.scores.values[0]
    b = rs.scores.values.reshape(4, 4, 128, 128, 5).transpose(0, 2, 1, 3, 4).reshape(512, 512, 5)
    np.testing.assert_allclose(b, a, atol=1e-9 * np.abs(a).max())


def test_tiling_changes_nothing_gram_scores(tmp_path):
    """Gram scores per pixel on a map whose leading components are not degenerate."""
    name = "bcf_v2_50x50px.bcf"
    whole = xsi_dask.open_montage(xsi_dask.ingest(EDS / name, tmp_path / "w.zarr", progress=False))
    split = xsi_dask.open_montage(xsi_dask.ingest(EDS / name, tmp_path / "s.zarr", split="2x2", progress=False))
    a = xsi_dask.decompose(whole, 2, solver="gram").scores.values[0]
    b = xsi_dask.decompose(split, 2, solver="gram").scores.values
    b = b.reshape(2, 2, 25, 25, 2).transpose(0, 2, 1, 3, 4).reshape(50, 50, 2)
    np.testing.assert_allclose(b, a, atol=1e-10 * np.abs(a).max())


def test_center_matches_dense_pca(tmp_root):
    data, _ = reference_si("bcf_v2_50x50px.bcf")
    Dt = scaled_matrix(data).toarray()
    ref = np.linalg.svd(Dt - Dt.mean(0), compute_uv=False)
    m = montage_of("bcf_v2_50x50px.bcf", tmp_root)
    ds = xsi_dask.decompose(m, 5, solver="gram", center=True)
    np.testing.assert_allclose(ds.singular_values.values, ref[:5], rtol=1e-8)
    rnd = xsi_dask.decompose(m, 5, center=True)  # only the first stands apart once centred
    np.testing.assert_allclose(rnd.singular_values.values[:1], ref[:1], rtol=1e-6)
    np.testing.assert_allclose(ds.explained_variance_ratio.values, ref[:5] ** 2 / (ref**2).sum(), rtol=1e-8)


def test_no_poisson_is_plain_svd(tmp_root):
    data, _ = reference_si("bcf_v2_50x50px.bcf")
    ref = np.linalg.svd(data.reshape(-1, 2048).astype(float), compute_uv=False)
    ds = xsi_dask.decompose(montage_of("bcf_v2_50x50px.bcf", tmp_root), 4, solver="gram", poisson=False)
    np.testing.assert_allclose(ds.singular_values.values, ref[:4], rtol=1e-8)


def test_bad_requests(tmp_root):
    m = montage_of("bcf_v2_50x50px.bcf", tmp_root)
    with pytest.raises(DecompositionError, match="between 1 and 2048"):
        xsi_dask.decompose(m, 0)
    with pytest.raises(DecompositionError, match="solver"):
        xsi_dask.decompose(m, 3, solver="lanczos")
    with pytest.raises(DecompositionError, match="energy axis"):
        xsi_dask.decompose(m.isel(energy=slice(None, None, -1)), 3)
