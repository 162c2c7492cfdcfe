"""Energy ranges, channel masks and binning honoured by the plan: exactly as if the data had been cropped and binned.

References: a store written from the cropped and binned dense counts (NumPy), dense NumPy on the explicitly scaled
matrix, and HyperSpy's crop_signal1D + rebin + decomposition(normalize_poissonian_noise=True) on the same file.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import xsi_dask
from xsi_dask.engine import make_plan
from xsi_dask.errors import ParameterError
from xsi_dask.io.store import MontageStore, write_montage_attrs, write_tile
from xsi_dask.montage.prepare import analysis_view, zero_peak_cutoff
from xsi_dask.testing.simulate import simulate

from .conftest import EDS, reference_si
from .test_decompose import scaled_matrix


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A 2 x 2 simulated montage of 32 x 32 pixels x 256 channels, 30 counts per pixel."""
    path = tmp_path_factory.mktemp("viewops") / "sim.zarr"
    return simulate(path, tiles="2x2", tile_shape="32x32", channels=256, counts_per_pixel=30, seed=5, progress=False)


def dense_tile(st: MontageStore, t: int) -> np.ndarray:
    h, w = st.tile_shape
    return st.tile_csr(t, cache=False).to_scipy().toarray().reshape(h, w, st.channels)


def crop_bin(d: np.ndarray, channels, b: int) -> np.ndarray:
    """(y, x, channels) counts with only ``channels`` kept and b x b pixel blocks summed (NumPy)."""
    d = d[:, :, channels]
    h, w, m = d.shape
    return d.reshape(h // b, b, w // b, b, m).sum(axis=(1, 3))


def reference_store(st: MontageStore, tiles: list[int], lo: int, hi: int, b: int, out) -> MontageStore:
    """A store holding channels lo:hi of ``tiles`` binned b x b, written from the dense counts."""
    root = zarr.open_group(str(out), mode="w", zarr_format=3)
    g = root.create_group("tiles")
    h, w = st.tile_shape
    infos = []
    for i, t in enumerate(tiles):
        d = crop_bin(dense_tile(st, t), slice(lo, hi), b).reshape(-1, hi - lo)
        csr = sp.csr_array(d)
        summary = write_tile(g, str(i), csr.indptr.astype(np.uint32), csr.indices.astype(np.uint16),
                             csr.data.astype(np.uint16), (h // b, w // b), hi - lo,
                             attrs={k: st.tiles[t][k] for k in ("row", "col", "source", "stage_x", "stage_y", "window")})
        infos.append({**st.tiles[t], **summary})
    keep = {k: v for k, v in st.attrs.items() if k not in ("xsi_dask", "tiles", "nnz", "total_counts", "max_count")}
    e = dict(keep["energy"])
    e.update(offset=e["offset"] + lo * e["scale"], size=hi - lo)
    px = dict(keep["pixels"])
    px.update(scale_y=px["scale_y"] * b, scale_x=px["scale_x"] * b)
    write_montage_attrs(root, tiles=infos, **{**keep, "energy": e, "pixels": px, "tile_shape": [h // b, w // b]})
    return MontageStore(out)


# ---- exactness on simulated data ----

@pytest.mark.parametrize("b", [1, 2, 4])
def test_blocks_are_the_cropped_binned_counts(sim, b):
    """Every unit's CSR (as a task sees it) equals the NumPy crop + bin of the stored counts."""
    m = xsi_dask.open_montage(sim)
    mask = np.zeros(256, dtype=bool)
    mask[20:90] = mask[130:200] = True
    view = m.isel(energy=mask).coarsen(y=b, x=b).sum()
    plan = make_plan(view)
    assert plan.n_channels == 140 and plan.tile_shape == (32 // b, 32 // b) and plan.bin == b
    np.testing.assert_array_equal(plan.energy, m.energy.values[mask])
    from xsi_dask.engine import Block
    for u in plan.units:
        blk = Block(plan.source, u)
        ip, ind, dat = blk.csr
        got = sp.csr_array((dat, ind, ip - ip[0]), shape=(blk.rows, plan.n_channels)).toarray()
        ref = crop_bin(dense_tile(sim, u.tile), mask, b).reshape(-1, 140)[u.start : u.stop]
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(blk.counts_per_pixel(), ref.sum(1))
    # the lazy view (xarray's own crop + coarsen) holds the same counts
    np.testing.assert_array_equal(view.isel(tile=[2]).data.compute().todense()[0],
                                  crop_bin(dense_tile(sim, 2), mask, b))


@pytest.mark.parametrize("order", ["energy-bin-tile", "tile-bin-energy", "bin-tile-energy"])
def test_view_equals_a_store_of_the_cropped_binned_data(sim, tmp_path, order):
    """SVD (both solvers, scores too) and NMF iterates on the view equal those on a store of the prepared data."""
    m = xsi_dask.open_montage(sim)
    lo, hi, b, tiles = 30, 200, 2, [0, 3]
    e = m.energy.values
    steps = {"energy": lambda a: a.sel(energy=slice(e[lo], e[hi - 1])), "bin": lambda a: a.coarsen(y=b, x=b).sum(),
             "tile": lambda a: a.isel(tile=tiles)}
    view = m
    for step in order.split("-"):
        view = steps[step](view)
    ref = xsi_dask.open_montage(reference_store(sim, tiles, lo, hi, b, tmp_path / "ref.zarr"))
    for solver in ("gram", "randomized"):
        a = xsi_dask.decompose(view, 4, solver=solver, seed=3)
        r = xsi_dask.decompose(ref, 4, solver=solver, seed=3)
        np.testing.assert_allclose(a.singular_values.values, r.singular_values.values, rtol=1e-10)
        np.testing.assert_allclose(np.abs(a.scores.values), np.abs(r.scores.values), atol=1e-9 * np.abs(r.scores.values).max())
        np.testing.assert_allclose(a.loadings.values, r.loadings.values, atol=1e-10 * np.abs(r.loadings.values).max())
        assert a.attrs["bin"] == b and a.attrs["n_channels"] == hi - lo
        np.testing.assert_allclose(a.attrs["energy_range"], [e[lo], e[hi - 1]])
        np.testing.assert_allclose(a.energy.values, e[lo:hi])
    na = xsi_dask.nmf(view, 3, max_iter=8, seed=2)  # NNDSVDa: no draw per tile number
    nr = xsi_dask.nmf(ref, 3, max_iter=8, seed=2)
    np.testing.assert_allclose(na.loss.values, nr.loss.values, rtol=1e-10)
    np.testing.assert_allclose(na.spectra.values, nr.spectra.values, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(na.abundances.values, nr.abundances.values, rtol=1e-9, atol=1e-9)
    assert na.abundances.shape == (2, 16, 16, 3)


def test_channel_mask_equals_dense_numpy(sim):
    """A non-contiguous channel mask: the gram singular values of D~ over the kept channels, by dense NumPy."""
    m = xsi_dask.open_montage(sim)
    mask = (np.arange(256) % 3 != 0) & (np.arange(256) > 10)
    ds = xsi_dask.decompose(m.isel(energy=mask), 6, solver="gram")
    dense = np.concatenate([dense_tile(sim, t)[:, :, mask].reshape(-1, mask.sum()) for t in range(4)])
    ref = np.linalg.svd(scaled_matrix(dense).toarray(), compute_uv=False)
    np.testing.assert_allclose(ds.singular_values.values, ref[:6], rtol=1e-10)


def test_analysis_view_checks_its_arguments(sim):
    m = xsi_dask.open_montage(sim)
    with pytest.raises(ParameterError, match="does not divide the tile size 32 x 32"):
        analysis_view(m, bin=3)
    with pytest.raises(ParameterError, match="bin must be an integer"):
        analysis_view(m, bin=0)
    with pytest.raises(ParameterError, match="must be below the high end"):
        analysis_view(m, energy_range=(5, 2))
    with pytest.raises(ParameterError, match="keeps 0 channel"):
        analysis_view(m, energy_range=(100, 200))
    v = analysis_view(m, energy_range=(1.0, 8.0), bin=4, keep_zero_peak=True)
    assert v.sizes["y"] == 8 and float(v.energy.min()) >= 1.0 and float(v.energy.max()) <= 8.0
    assert v.attrs["bin"] == 4 and v.attrs["zero_peak_cutoff"] is None
    assert make_plan(v).bin == 4


# ---- real maps: HyperSpy's crop + rebin, tiling invariance, the zero peak ----

def _hyperspy_crop_bin_evr(name: str, lo: float, hi: float, b: int):
    hs = pytest.importorskip("hyperspy.api")
    data, axes = reference_si(name)
    s = hs.signals.Signal1D(data.astype(np.float64))
    ax = s.axes_manager.signal_axes[0]
    ax.offset, ax.scale = axes[2]["offset"], axes[2]["scale"]
    # crop_signal in HyperSpy 2 (crop_signal1D before)
    (s.crop_signal if hasattr(s, "crop_signal") else s.crop_signal1D)(lo, hi)
    s = s.rebin(scale=(b, b, 1))
    s.decomposition(normalize_poissonian_noise=True, print_info=False)
    return np.asarray(s.learning_results.explained_variance_ratio), s.axes_manager.signal_axes[0].axis


@pytest.mark.usefixtures("needs_data")
@pytest.mark.parametrize("name,b", [("bcf_v2_50x50px.bcf", 2), ("Hitachi_TM3030Plus.bcf", 2)])
def test_crop_and_bin_equal_hyperspy(name, b, tmp_path):
    ref, kept = _hyperspy_crop_bin_evr(name, 0.3, 10.0, b)
    m = xsi_dask.open_montage(xsi_dask.ingest(EDS / name, tmp_path / "m.zarr", progress=False))
    view = m.sel(energy=slice(kept[0], kept[-1])).coarsen(y=b, x=b).sum()
    assert view.sizes["energy"] == kept.size
    ds = xsi_dask.decompose(view, 10, solver="gram")
    np.testing.assert_allclose(ds.explained_variance_ratio.values, ref[:10], atol=1e-4, rtol=0)


@pytest.mark.usefixtures("needs_data")
def test_crop_and_bin_tiling_invariant_jeol(tmp_path):
    """The JEOL map split 4 x 4, cropped and binned 4 x 4 per tile, equals the whole map cropped and binned."""
    name = "jeol_View000_0000006.pts"
    whole = xsi_dask.open_montage(xsi_dask.ingest(EDS / name, tmp_path / "w.zarr", progress=False))
    split = xsi_dask.open_montage(xsi_dask.ingest(EDS / name, tmp_path / "s.zarr", split="4x4", progress=False))
    gw = xsi_dask.decompose(analysis_view(whole, energy_range=(None, 12.0), bin=4), 8, solver="gram")
    gs = xsi_dask.decompose(analysis_view(split, energy_range=(None, 12.0), bin=4), 8, solver="gram")
    np.testing.assert_allclose(gw.singular_values.values, gs.singular_values.values, rtol=1e-10)
    np.testing.assert_allclose(gw.explained_variance_ratio.values, gs.explained_variance_ratio.values, rtol=1e-10)
    assert gw.attrs["zero_peak_cutoff"] == pytest.approx(zero_peak_cutoff(whole)) and gw.attrs["bin"] == 4
    assert gw.attrs["energy_range"][0] >= gw.attrs["zero_peak_cutoff"]
    a = gw.scores.values[0, :, :, :2]
    s = gs.scores.values[..., :2].reshape(4, 4, 32, 32, 2).transpose(0, 2, 1, 3, 4).reshape(128, 128, 2)
    # the first two components are not degenerate once binned: the same maps (up to sign)
    np.testing.assert_allclose(np.abs(s), np.abs(a), atol=1e-8 * np.abs(a).max())


@pytest.mark.usefixtures("needs_data")
def test_zero_peak_excluded_by_default(tmp_path):
    """The Bruker map's strobe peak (17 % of its counts) is outside the default view; the cutoff follows the
    detector resolution at 0 keV."""
    m = xsi_dask.open_montage(xsi_dask.ingest(EDS / "bcf_v2_50x50px.bcf", tmp_path / "b.zarr", progress=False))
    v = analysis_view(m)
    cut = zero_peak_cutoff(m)
    assert 0.15 < cut < 0.2
    assert float(v.energy.min()) >= cut and int((m.energy.values < cut).sum()) == m.sizes["energy"] - v.sizes["energy"]
    h = np.asarray(m.sum(("tile", "y", "x")).data.compute().todense(), dtype=float)
    zero = h[(m.energy.values > -0.2) & (m.energy.values < 0.12)].sum() / h.sum()
    assert zero > 0.15  # the peak is really there ...
    plan = make_plan(v)
    assert plan.sum_spectrum().sum() == pytest.approx(h[m.energy.values >= cut].sum())  # ... and really left out
    kept = analysis_view(m, keep_zero_peak=True)
    assert kept.sizes["energy"] == m.sizes["energy"]


@pytest.mark.usefixtures("needs_data")
def test_gram_over_active_channels_is_exact(tmp_path):
    """The Velox 16 x 16 map (few active channels of 4096): the gram solver's values and loadings equal the
    dense SVD of D~ over every channel."""
    st = xsi_dask.ingest(EDS / "velox_test_SI_16x16.emd", tmp_path / "v.zarr", progress=False)
    m = xsi_dask.open_montage(st)
    ds = xsi_dask.decompose(m, 5, solver="gram")
    assert ds.attrs["active_channels"] < m.sizes["energy"] // 4
    dense = dense_tile(st, 0).reshape(-1, st.channels)
    Dt = scaled_matrix(dense).toarray()
    U, S, Vt = np.linalg.svd(Dt, full_matrices=False)
    np.testing.assert_allclose(ds.singular_values.values, S[:5], rtol=1e-10)
    assert ds.eigenvalues.size == st.channels
    np.testing.assert_allclose(ds.eigenvalues.values[:5], S[:5] ** 2, rtol=1e-10)
    # a loading lives on the active channels only
    idle = dense.sum(0) == 0
    assert np.all(ds.loadings.values[:, idle] == 0)


@pytest.mark.usefixtures("needs_data")
def test_low_counts_warn_and_suggest_a_bin(tmp_path):
    """The JEOL map (1.2 counts/px): only the mean stands above the noise; the warning names the bin that reaches
    xsi-dask.low-count-target counts per pixel. Binned that far, the scree separates components and nothing warns."""
    import warnings

    from xsi_dask.errors import LowCountWarning

    m = xsi_dask.open_montage(xsi_dask.ingest(EDS / "jeol_View000_0000006.pts", tmp_path / "j.zarr", progress=False))
    with pytest.warns(LowCountWarning, match=r"\d\.\d+ counts per pixel.*bin 16 x 16 \(analysis_view\(m, bin=16\), --bin 16\)"):
        ds = xsi_dask.decompose(analysis_view(m), 5)
    assert ds.attrs["n_significant"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowCountWarning)
        binned = xsi_dask.decompose(analysis_view(m, bin=16), 5)
    assert binned.attrs["n_significant"] > 1 and binned.attrs["counts_per_pixel"] > 100
