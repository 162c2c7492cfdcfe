"""NMF with known spectra (``fixed_spectra=``), against the simulator's truth and a dense NumPy reference."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import sparse
import xarray as xr
from scipy.optimize import linear_sum_assignment

import xsi_dask
from xsi_dask.decomposition import place_references, reference_spectra, region_spectrum
from xsi_dask.engine import Plan
from xsi_dask.errors import ConvergenceWarning, DecompositionError, ParameterError, ViewError
from xsi_dask.testing.simulate import open_truth, simulate

EPS32 = float(np.finfo(np.float32).eps)  # the kernels' clip of WH and of zero denominators (scikit-learn's MU)
EPS64 = float(np.finfo(np.float64).eps)  # H entries below it are set to 0 (KL, scikit-learn's MU)
FIXED = [1, 3]  # M23C6 and MnS, the two most abundant phases of grade91_replica: known matrix, unknown minor phases
ITERS = 200


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    store = simulate(tmp_path_factory.mktemp("known") / "g91.zarr", preset="grade91_replica", tiles=(2, 2),
                     tile_shape=(32, 32), channels=1024, counts_per_pixel=50, seed=3, progress=False)
    truth = open_truth(store)
    m = xsi_dask.open_montage(store)
    X = np.concatenate([store.tile_csr(t).to_scipy(np.float64).toarray() for t in range(store.n_tiles)])
    return store, truth, m, X


@pytest.fixture(scope="module")
def runs(sim):
    """Free NMF and NMF with the true spectra of FIXED, same montage, same init, same iterations."""
    _, truth, m, _ = sim
    k = truth.sizes["phase"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        free = xsi_dask.nmf(m, k, max_iter=ITERS, tol=0)
        known = xsi_dask.nmf(m, k, max_iter=ITERS, tol=0, fixed_spectra=truth.spectra.isel(phase=FIXED))
    return free, known


def _recovery(ds: xr.Dataset, truth: xr.Dataset, phases: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Spectral angle (degrees) and abundance Pearson r of each truth phase, after Hungarian matching on the angle."""
    S = truth.spectra.values[phases]
    A = truth.abundances.values.reshape(-1, truth.sizes["phase"])[:, phases].astype(np.float64)
    Sp = ds.spectra.values
    Ap = ds.abundances.values.reshape(-1, ds.sizes["component"])
    cos = (S / np.linalg.norm(S, axis=1, keepdims=True)) @ (Sp / np.linalg.norm(Sp, axis=1, keepdims=True)).T
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    rows, cols = linear_sum_assignment(angle)
    r = np.array([np.corrcoef(A[:, i], Ap[:, j])[0, 1] for i, j in zip(rows, cols)])
    return angle[rows, cols], r


def test_known_spectra_recover_the_other_phases_at_least_as_well(sim, runs):
    _, truth, _, _ = sim
    free, known = runs
    others = [p for p in range(truth.sizes["phase"]) if p not in FIXED]
    a_free, r_free = _recovery(free, truth, others)
    a_known, r_known = _recovery(known, truth, others)
    print(f"\nfree phases {list(truth.phase.values[others])}\n  free NMF:  angle {a_free.round(2)} (mean "
          f"{a_free.mean():.2f}), r {r_free.round(3)} (mean {r_free.mean():.3f})\n  known {FIXED}: angle "
          f"{a_known.round(2)} (mean {a_known.mean():.2f}), r {r_known.round(3)} (mean {r_known.mean():.3f})")
    assert a_known.mean() <= a_free.mean()
    assert r_known.mean() >= r_free.mean()


def test_fixed_rows_stay_the_references_and_come_first(sim, runs):
    _, truth, _, _ = sim
    _, known = runs
    ref = truth.spectra.values[FIXED]
    ref = ref / ref.sum(1, keepdims=True)
    np.testing.assert_array_equal(known.spectra.values[:2], ref)  # exactly, not to rounding
    assert known.fixed.values.tolist() == [True, True, False, False, False, False]
    assert known.attrs["fixed_components"] == [0, 1]
    np.testing.assert_allclose(known.spectra.values.sum(1), 1.0, rtol=1e-12)
    totals = known.abundances.values.sum((0, 1, 2))
    assert np.all(np.diff(totals[2:]) <= 0)  # the free ones by size
    assert (known.abundances.values >= 0).all()
    assert np.all(np.diff(known.loss.values) <= 1e-12 * known.loss.values[0])  # MU with fixed rows still descends


def _dense_mu(X, W, H, fixed, n, loss):
    """n multiplicative updates on dense arrays in scikit-learn's order (W, then H), the rows ``fixed`` of H kept."""
    for _ in range(n):
        if loss == "kl":
            s = H.sum(1)
            W = W * ((X / np.maximum(W @ H, EPS32)) @ H.T) / np.where(s == 0, EPS32, s)
            ws = W.sum(0)
            Hn = H * (W.T @ (X / np.maximum(W @ H, EPS32))) / np.where(ws == 0, 1.0, ws)[:, None]
            Hn[Hn < EPS64] = 0.0
        else:
            den = W @ (H @ H.T)
            den[den == 0] = EPS32
            W = W * (X @ H.T) / den
            den = (W.T @ W) @ H
            den[den == 0] = EPS32
            Hn = H * (W.T @ X) / den
        Hn[fixed] = H[fixed]
        H = Hn
    return W, H


@pytest.mark.parametrize("loss", ["kl", "frobenius"])
def test_iterates_equal_a_dense_reference(sim, loss):
    store, truth, m, X = sim
    k, n_iter, npix = 4, 6, store.pixels_per_tile
    rng = np.random.default_rng(5)
    W0 = np.abs(rng.standard_normal((X.shape[0], k))) + 0.1
    H0 = np.abs(rng.standard_normal((k, X.shape[1]))) * 0.01
    refs = reference_spectra(truth.spectra.isel(phase=FIXED), m["energy"], k)
    H0[2], H0[0] = 3.0 * refs[0], 0.5 * refs[1]  # the start's rows most like the references: they take their place
    Hs, pos = place_references(H0, refs)
    assert pos.tolist() == [2, 0]
    Wr, Hr = _dense_mu(X, W0.copy(), Hs, pos, n_iter, loss)
    ds = xsi_dask.nmf(m, k, loss=loss, init=([W0[t * npix:(t + 1) * npix] for t in range(4)], H0), max_iter=n_iter,
                      tol=0, fixed_spectra=truth.spectra.isel(phase=FIXED), checkpoint_every=0)
    np.testing.assert_array_equal(Hr[pos], Hs[pos])
    scale = Hr.sum(1)
    free = [c for c in np.argsort(-(Wr.sum(0) * scale), kind="stable") if c not in pos]
    order = np.r_[pos, free]
    spectra = Hr / scale[:, None]
    np.testing.assert_allclose(ds.spectra.values[2:], spectra[free], rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(ds.spectra.values[:2], refs)
    ab = ds.abundances.values.reshape(-1, k)
    np.testing.assert_allclose(ab, (Wr * scale)[:, order], rtol=1e-10, atol=1e-10 * ab.max())


def test_place_references_matches_rows_by_cosine():
    rng = np.random.default_rng(0)
    H = rng.uniform(0.1, 1.0, (4, 50))
    refs = np.stack([H[3] * 2.0, H[1]])
    refs = refs / refs.sum(1, keepdims=True)
    Hn, pos = place_references(H, refs)
    assert pos.tolist() == [3, 1]
    np.testing.assert_allclose(Hn[3], H[3], rtol=1e-12)  # the same direction at the row's own scale
    np.testing.assert_array_equal(Hn[[0, 2]], H[[0, 2]])


def test_bad_references_are_refused_naming_the_fault(sim):
    _, truth, m, _ = sim
    e = m["energy"]
    good = truth.spectra.values[:2]
    for bad, match in [
        (np.r_[[good[0]], [-good[1]]], "reference 1 has negative values"),
        (np.r_[[good[0]], [np.where(np.arange(1024) == 7, np.nan, good[1])]], "reference 1 has 1 non-finite"),
        (np.zeros((1, 1024)), "reference 0 is all zero"),
        (truth.spectra.values, "6 references but n_components=3"),
        (good[:, :100], r"shape \(n_fixed, 1024\)"),
        (np.zeros((0, 1024)), "no reference"),
    ]:
        with pytest.raises(DecompositionError, match=match):
            reference_spectra(bad, e, 3)
    shifted = truth.spectra.isel(phase=[0]).assign_coords(energy=truth.energy + 0.005)
    with pytest.raises(ViewError, match="channel 0 is at 0.005 keV in the references and 0 keV in the view"):
        reference_spectra(shifted, e, 3)
    with pytest.raises(ViewError, match="512 channels, the view 1024"):
        reference_spectra(truth.spectra.isel(energy=slice(0, 512)), e, 3)
    # refused by nmf before any pass
    with pytest.raises(ViewError):
        xsi_dask.nmf(m, 3, fixed_spectra=shifted)


def test_references_from_a_region_and_from_another_run(sim, runs):
    store, truth, m, X = sim
    free, _ = runs
    # a region of the raw counts (a pure-phase area of the montage), lazy (dask) or sparse as the view's blocks are;
    # m.isel(tile=0, y=..., x=...).sum(("y", "x")) is such an array (not built here: pydata-sparse compiles for seconds)
    dense = X[npix_rows(store, 0, 4, 4)].sum(0)
    for data in (da.from_array(dense, chunks=-1), sparse.COO.from_numpy(dense)):
        raw = xr.DataArray(data, dims=("energy",), coords={"energy": m["energy"]})
        np.testing.assert_allclose(reference_spectra(raw, m["energy"], 3)[0], dense / dense.sum(), rtol=1e-12)
    # the denoised spectrum of a region of another result, and another run's spectra (component, energy)
    reg = region_spectrum(free, tile=0, y=slice(0, 4), x=slice(0, 4))
    assert reference_spectra(reg, m["energy"], 3).shape == (1, 1024)
    np.testing.assert_allclose(reference_spectra(free.spectra.isel(component=[0, 1]), m["energy"], 3),
                               free.spectra.values[:2], rtol=1e-12)


def npix_rows(store, t: int, h: int, w: int) -> np.ndarray:
    """Row numbers (in the stacked dense X) of the top-left h x w pixels of tile t."""
    ny, nx = store.tile_shape
    return (t * ny * nx + np.arange(h)[:, None] * nx + np.arange(w)[None, :]).reshape(-1)


def _write_msa(path, data, offset_ev, scale_ev):
    from rsciio.msa import file_writer

    file_writer(str(path), {"data": np.asarray(data, dtype=np.float64),
                            "axes": [{"name": "Energy", "units": "eV", "size": len(data), "offset": offset_ev,
                                      "scale": scale_ev, "navigate": False, "index_in_array": 0}],
                            "metadata": {"General": {"title": "reference"}, "Signal": {"signal_type": "EDS_TEM"}},
                            "original_metadata": {}})


def test_read_reference_spectrum_checks_the_calibration(sim, tmp_path):
    from xsi_dask.io.readers import read_reference_spectrum

    _, truth, m, _ = sim
    e = m["energy"].values
    counts = np.round(truth.spectra.values[1] * 1e5)
    _write_msa(tmp_path / "ok.msa", counts, e[0] * 1e3, (e[1] - e[0]) * 1e3)
    ref = read_reference_spectrum(tmp_path / "ok.msa", m)
    np.testing.assert_allclose(ref.values, counts, rtol=1e-6)  # MSA is text: written to 6 significant digits
    np.testing.assert_array_equal(ref.energy.values, e)
    assert ref.attrs["source"].endswith("ok.msa")
    # a longer spectrum on the same calibration is cut to the view's channels (no interpolation)
    _write_msa(tmp_path / "long.msa", np.r_[counts, counts], e[0] * 1e3, (e[1] - e[0]) * 1e3)
    np.testing.assert_allclose(read_reference_spectrum(tmp_path / "long.msa", m["energy"]).values, counts, rtol=1e-6)
    # another calibration is refused, naming both
    _write_msa(tmp_path / "other.msa", counts, e[0] * 1e3, (e[1] - e[0]) * 1e3 * 1.01)
    with pytest.raises(ParameterError, match=r"1024 channels from 0 keV at 10.1 eV/channel.*not interpolated"):
        read_reference_spectrum(tmp_path / "other.msa", m)
    # as fixed_spectra: the references' energy coordinate is the view's
    both = xr.concat([ref, read_reference_spectrum(tmp_path / "long.msa", m)], "component")
    np.testing.assert_allclose(reference_spectra(both, m["energy"], 2)[0], counts / counts.sum(), rtol=1e-6)


def test_resume_refuses_another_fixed_set(sim, monkeypatch):
    _, truth, m, _ = sim
    orig = Plan.reduce

    class Injected(RuntimeError):
        pass

    def reduce(self, fn, *args, label: str, **kw):
        if label == "NMF iteration 7":
            raise Injected("injected fault")
        return orig(self, fn, *args, label=label, **kw)

    kw = dict(max_iter=12, tol=0, init="random", seed=2)
    ref = xsi_dask.nmf(m, 4, fixed_spectra=truth.spectra.isel(phase=FIXED), checkpoint_every=0, **kw)
    monkeypatch.setattr(Plan, "reduce", reduce)
    with pytest.raises(Injected):
        xsi_dask.nmf(m, 4, fixed_spectra=truth.spectra.isel(phase=FIXED), checkpoint_every=5, **kw)
    monkeypatch.setattr(Plan, "reduce", orig)
    for other in (truth.spectra.isel(phase=[1, 2]), None):
        with pytest.raises(DecompositionError, match="fixed_spectra"):
            xsi_dask.nmf(m, 4, fixed_spectra=other, resume=True, **kw)
    res = xsi_dask.nmf(m, 4, fixed_spectra=truth.spectra.isel(phase=FIXED), checkpoint_every=5, resume=True, **kw)
    assert res.attrs["resumed_from_iteration"] == 5
    np.testing.assert_array_equal(res.spectra.values, ref.spectra.values)
    np.testing.assert_array_equal(res.abundances.values, ref.abundances.values)
    assert res.attrs["fixed_components"] == [0, 1]
