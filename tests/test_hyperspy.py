"""HyperSpy round trip (to_hyperspy, from_hyperspy, results_to_hyperspy) and the denoised model (reconstruct).

References: ``hs.load`` of the same file (counts, axes, metadata), HyperSpy's
``get_decomposition_model`` after ``decomposition(normalize_poissonian_noise=True)``,
HyperSpy's ``isig`` crop + ``rebin``, and dense NumPy products of the factors.
"""

from __future__ import annotations

import functools
import sys
import warnings

import numpy as np
import pytest
import xarray as xr

import xsi_dask
from xsi_dask.errors import CountsError, DecompositionError, NoSpectrumImageError, StoreExistsError, ViewError
from xsi_dask.io.readers import to_json
from xsi_dask.io.results import write_results

from .conftest import EDS

hs = pytest.importorskip("hyperspy.api")
exspy = pytest.importorskip("exspy")

pytestmark = pytest.mark.usefixtures("needs_data")

BRUKER = "bcf_v2_50x50px.bcf"
VELOX = "velox_test_SI_16x16.emd"


@functools.lru_cache(maxsize=2)
def _hs_load(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = hs.load(EDS / name)
    loaded = loaded if isinstance(loaded, list) else [loaded]
    return next(s for s in loaded if s.data.ndim == 3 and s.metadata.Signal.signal_type.startswith("EDS"))


def hs_load(name: str):
    return _hs_load(name).deepcopy()


def metadata_without_fileio(s) -> dict:
    md = s.metadata.as_dictionary()
    md.get("General", {}).pop("FileIO", None)  # hs.load's record of the load itself
    return to_json(md)


def assert_axes_equal(a, b, names=False):
    for x, y in zip(a.axes_manager._axes, b.axes_manager._axes, strict=True):
        assert (x.size, x.offset, x.scale, x.units, x.navigate) == (y.size, y.offset, y.scale, y.units, y.navigate)
        if names:
            assert x.name == y.name


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("hyperspy")


@pytest.fixture(scope="module")
def bruker(root):
    return xsi_dask.open_montage(xsi_dask.ingest(EDS / BRUKER, root / "bruker.zarr", progress=False))


@pytest.fixture(scope="module")
def bruker_2x2(root):
    return xsi_dask.open_montage(xsi_dask.ingest(EDS / BRUKER, root / "bruker22.zarr", split="2x2", progress=False))


# ---- to_hyperspy / from_hyperspy ----


def test_to_hyperspy_bruker_equals_hs_load(bruker):
    ref = hs_load(BRUKER)
    s = xsi_dask.to_hyperspy(bruker)
    assert type(s) is exspy.signals.EDSSEMSpectrum
    assert s.data.dtype == ref.data.dtype == np.uint8
    np.testing.assert_array_equal(s.data, ref.data)
    assert_axes_equal(s, ref)
    assert s.axes_manager.signal_axes[0].is_binned  # exspy's EDS convention, as hs.load
    assert s.metadata.as_dictionary() == metadata_without_fileio(ref)
    assert s.original_metadata.as_dictionary() == to_json(ref.original_metadata.as_dictionary())
    assert s.metadata.Sample.elements == ["Ag", "Al", "C", "Cu", "O"]


@pytest.mark.parametrize("name,cls", [(BRUKER, "EDSSEMSpectrum"), (VELOX, "EDSTEMSpectrum")])
def test_from_hyperspy_round_trip_is_exact(name, cls, tmp_path):
    ref = hs_load(name)
    before = ref.metadata.as_dictionary()
    store = xsi_dask.from_hyperspy(ref, tmp_path / "rt.zarr")
    assert ref.metadata.as_dictionary() == before  # the caller's signal is not touched
    m = xsi_dask.open_montage(store)
    assert m.sizes == {"tile": 1, "y": ref.data.shape[0], "x": ref.data.shape[1], "energy": ref.data.shape[2]}
    assert m.xsi.store.attrs["total_counts"] == int(ref.data.sum())
    back = xsi_dask.to_hyperspy(m)
    assert type(back) is getattr(exspy.signals, cls)
    assert back.data.dtype == ref.data.dtype
    np.testing.assert_array_equal(back.data, ref.data)
    assert_axes_equal(back, ref)
    assert back.metadata.as_dictionary() == to_json(ref.metadata.as_dictionary())
    assert back.original_metadata.as_dictionary() == to_json(ref.original_metadata.as_dictionary())
    lazy = xsi_dask.to_hyperspy(xsi_dask.from_hyperspy(ref.as_lazy(), tmp_path / "lazy.zarr"))  # read a row block at a time
    np.testing.assert_array_equal(lazy.data, ref.data)
    with pytest.raises(StoreExistsError):
        xsi_dask.from_hyperspy(ref, tmp_path / "rt.zarr")
    xsi_dask.from_hyperspy(ref, tmp_path / "rt.zarr", overwrite=True)


def test_to_hyperspy_velox_counts_and_calibration(tmp_path):
    """Velox EMD -> store -> EDSTEMSpectrum: counts and axes as hs.load; every stored metadata item as hs.load's.

    hs.load also maps some vendor fields into ``metadata`` (beam energy, stage)
    through RosettaSciIO's ``mapping``, which ingest does not apply: those are
    in the store's original metadata only.
    """
    ref = hs_load(VELOX)
    s = xsi_dask.to_hyperspy(xsi_dask.ingest(EDS / VELOX, tmp_path / "v.zarr", progress=False))
    assert type(s) is exspy.signals.EDSTEMSpectrum
    assert s.data.dtype == ref.data.dtype
    np.testing.assert_array_equal(s.data, ref.data)
    assert_axes_equal(s, ref)
    assert s.original_metadata.as_dictionary() == to_json(ref.original_metadata.as_dictionary())
    want = metadata_without_fileio(ref)

    def leaves(d, path=()):
        for k, v in d.items():
            yield from leaves(v, (*path, k)) if isinstance(v, dict) else [((*path, k), v)]

    got = dict(leaves(s.metadata.as_dictionary()))
    exspy_defaults = {("Acquisition_instrument", "TEM", "Stage", "tilt_alpha")}  # hs.load maps the file's over it
    for key, value in got.items():
        if key not in exspy_defaults:
            assert functools.reduce(lambda d, k: d[k], key, want) == value, key


def test_eels_comes_back_as_eels_in_ev(tmp_path):
    path = EDS.parent / "eels" / "CuZn_EELS_mapping_tutorial.hspy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = hs.load(path)
    s = xsi_dask.to_hyperspy(xsi_dask.ingest(path, tmp_path / "eels.zarr", progress=False))
    assert type(s) is exspy.signals.EELSSpectrum and s.data.dtype == ref.data.dtype
    np.testing.assert_array_equal(s.data, ref.data)
    for a, b in zip(s.axes_manager._axes, ref.axes_manager._axes, strict=True):
        assert (a.size, a.units) == (b.size, b.units)
        assert a.offset == pytest.approx(b.offset, rel=1e-12) and a.scale == pytest.approx(b.scale, rel=1e-12)
    assert s.axes_manager.signal_axes[0].units == "eV"


def test_stitch_tile_and_views(bruker, bruker_2x2):
    ref = hs_load(BRUKER)
    whole = xsi_dask.to_hyperspy(bruker_2x2, stitch=True)
    np.testing.assert_array_equal(whole.data, ref.data)
    assert_axes_equal(whole, ref)
    assert whole.metadata.as_dictionary() == metadata_without_fileio(ref)
    t3 = xsi_dask.to_hyperspy(bruker_2x2, tile=3)  # row 1, col 1
    np.testing.assert_array_equal(t3.data, ref.data[25:, 25:])
    scale = ref.axes_manager[0].scale
    assert t3.axes_manager["y"].offset == pytest.approx(25 * scale, rel=1e-12)
    assert xsi_dask.to_hyperspy(bruker_2x2.isel(tile=[2])).axes_manager["x"].offset == 0.0


def test_cropped_binned_view_equals_hyperspy_crop_and_rebin(bruker):
    """Counts and calibration; the first computation of a sparse view compiles pydata-sparse's kernels (seconds)."""
    ref = hs_load(BRUKER)
    view = bruker.sel(energy=slice(0.2, 10.0)).coarsen(y=2, x=2).sum()
    s = xsi_dask.to_hyperspy(view)
    e = bruker["energy"].values
    i0, i1 = np.searchsorted(e, 0.2), np.searchsorted(e, 10.0, side="right")
    want = ref.isig[int(i0) : int(i1)].rebin(scale=(2, 2, 1))
    np.testing.assert_array_equal(s.data, want.data)
    for a, b in zip(s.axes_manager._axes, want.axes_manager._axes, strict=True):
        assert a.size == b.size and a.units == b.units
        assert a.offset == pytest.approx(b.offset, rel=1e-12, abs=1e-15) and a.scale == pytest.approx(b.scale, rel=1e-12)


def test_refusals(bruker, bruker_2x2, tmp_path, monkeypatch):
    with pytest.raises(ViewError, match="4 tiles: pass tile=T"):
        xsi_dask.to_hyperspy(bruker_2x2)
    with pytest.raises(ViewError, match="tile 7 is not in this view"):
        xsi_dask.to_hyperspy(bruker_2x2, tile=7)
    with pytest.raises(ViewError, match="do not fill their 2 x 2 grid"):
        xsi_dask.to_hyperspy(bruker_2x2.isel(tile=[0, 3]), stitch=True)
    with pytest.raises(ViewError, match=r"MiB dense, more than the limit of 0\.0 MiB"):
        xsi_dask.to_hyperspy(bruker, max_bytes=1000)
    keep = np.ones(bruker.sizes["energy"], bool)
    keep[100:110] = False
    with pytest.raises(ViewError, match="energy coordinate is not evenly spaced"):
        xsi_dask.to_hyperspy(bruker.isel(energy=keep))
    ref = hs_load(BRUKER)
    with pytest.raises(NoSpectrumImageError, match="0 navigation and 1 signal"):
        xsi_dask.from_hyperspy(ref.inav[0, 0], tmp_path / "a.zarr")
    with pytest.raises(NoSpectrumImageError, match="1 navigation and 2 signal"):
        xsi_dask.from_hyperspy(hs.signals.Signal2D(np.zeros((2, 4, 4))), tmp_path / "a.zarr")
    bad = hs.signals.Signal1D(np.full((2, 2, 8), -1.0))
    bad.axes_manager[-1].units = "keV"
    with pytest.raises(CountsError, match="negative"):
        xsi_dask.from_hyperspy(bad, tmp_path / "neg.zarr")
    assert not (tmp_path / "neg.zarr").exists()
    monkeypatch.setitem(sys.modules, "exspy", None)  # exspy not installed
    with pytest.raises(ImportError, match=r"pip install xsi_dask\[hyperspy\]"):
        xsi_dask.to_hyperspy(bruker)


# ---- reconstruct ----


@pytest.fixture(scope="module")
def small(root):
    """A 25 x 25 px, 512-channel part of the Bruker map (0.05-5.2 keV: C, O, Al, Cu L, Ag L), as a signal and a store.

    Small enough for HyperSpy's dense SVD and the gram solver's channels^2 eigh to take a fraction of a second.
    """
    s = hs_load(BRUKER).inav[0:25, 0:25].isig[52:564]
    return s, xsi_dask.open_montage(xsi_dask.from_hyperspy(s, root / "small.zarr"))


@pytest.fixture(scope="module")
def small_svd(small):
    return xsi_dask.decompose(small[1], 6, solver="gram")


@pytest.fixture(scope="module")
def nmf_2x2(bruker_2x2):
    return xsi_dask.nmf(bruker_2x2, 3, max_iter=10)


def test_reconstruct_equals_hyperspy_model(small, small_svd):
    """The model is sign-free: compare it, not the factors. Tolerance: both are float64 decompositions of
    the same 625 x 512 matrix; they agree to ~1e-13 of the largest count."""
    s = small[0].deepcopy()
    s.change_dtype("float64")
    s.decomposition(normalize_poissonian_noise=True, print_info=False)
    np.testing.assert_allclose(small_svd.explained_variance_ratio.values, s.learning_results.explained_variance_ratio[:6],
                               rtol=1e-9)
    for comps in (1, 2, 3, 6, [0, 2]):
        model = xsi_dask.reconstruct(small_svd, comps)
        assert model.dims == ("tile", "y", "x", "energy") and model.attrs["units"] == "counts"
        assert model.data.chunks[0] == (1,)
        want = s.get_decomposition_model(comps).data
        np.testing.assert_allclose(model.values[0], want, rtol=0, atol=1e-9 * np.abs(want).max())
    np.testing.assert_array_equal(xsi_dask.reconstruct(small_svd)["energy"], small[1]["energy"])


def test_reconstruct_nmf_tile_by_tile_and_region(nmf_2x2):
    nm = nmf_2x2
    A, H = nm.abundances.values, nm.spectra.values
    model = xsi_dask.reconstruct(nm, [0, 2])
    assert model.data.chunks == ((1, 1, 1, 1), (25,), (25,), (2048,))  # one chunk per tile, lazy
    np.testing.assert_allclose(model.values, A[..., [0, 2]] @ H[[0, 2]], rtol=1e-12, atol=1e-12)
    full = xsi_dask.reconstruct(nm)
    region = full.sel(tile=1).isel(y=slice(3, 20), x=slice(0, 10)).sum(("y", "x"))  # plain xarray, lazy
    assert region.chunks is not None
    dense = (A[1, 3:20, 0:10] @ H).sum((0, 1))
    np.testing.assert_allclose(region.values, dense, rtol=1e-10)
    fast = xsi_dask.region_spectrum(nm, tile=1, y=slice(3, 20), x=slice(0, 10))
    np.testing.assert_allclose(fast.values, dense, rtol=1e-10)
    assert fast.attrs["pixels"] == 170
    mask = A[2, ..., 0] > np.median(A[2, ..., 0])
    np.testing.assert_allclose(xsi_dask.region_spectrum(nm, tile=2, mask=mask, components=1).values,
                               (A[2][mask][:, :1] @ H[:1]).sum(0), rtol=1e-10)


def test_reconstruct_centred_raw_svd_adds_the_mean(small):
    """PCA's model mu + (D - mu) V V^T with the SVD's own orthonormal V; the mean is the channel means of D."""
    ds = xsi_dask.decompose(small[1], 3, solver="gram", poisson=False, center=True)
    D = small[0].data.reshape(-1, 512).astype(np.float64)
    mu = D.mean(0)
    np.testing.assert_allclose(ds["mean"].values, mu, rtol=1e-12)
    V = ds.loadings.values.T
    want = mu + (D - mu) @ V @ V.T
    got = xsi_dask.reconstruct(ds).values.reshape(-1, 512)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * np.abs(want).max())
    with pytest.raises(DecompositionError, match="centred in the Poisson-scaled space"):
        xsi_dask.reconstruct(xsi_dask.decompose(small[1], 2, solver="gram", center=True))


def test_reconstruct_bad_requests(small_svd):
    ds = small_svd
    for bad in (0, 7, True, [6], [0, 0], [], "2", [1.0]):
        with pytest.raises(DecompositionError):
            xsi_dask.reconstruct(ds, bad)
    with pytest.raises(DecompositionError, match="this Dataset has"):
        xsi_dask.reconstruct(ds[["singular_values"]])
    with pytest.raises(DecompositionError, match="tile 5 is not in this result"):
        xsi_dask.region_spectrum(ds, tile=5)
    with pytest.raises(DecompositionError, match="mask must be a boolean array"):
        xsi_dask.region_spectrum(ds, tile=0, mask=np.ones((3, 3), bool))


# ---- results_to_hyperspy ----


def test_results_to_hyperspy(small, small_svd, nmf_2x2, tmp_path):
    ds = small_svd
    out = xsi_dask.results_to_hyperspy(ds)
    lo, sc = out["loadings"], out["scores"]
    assert isinstance(lo, hs.signals.Signal1D) and isinstance(sc, hs.signals.Signal2D)
    np.testing.assert_array_equal(lo.data, ds.loadings.values)
    energy, want = lo.axes_manager.signal_axes[0], small[0].axes_manager.signal_axes[0]
    assert energy.units == "keV" and energy.size == want.size == 512
    assert energy.offset == pytest.approx(want.offset, rel=1e-12) and energy.scale == pytest.approx(want.scale, rel=1e-12)
    np.testing.assert_allclose(energy.axis, want.axis, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sc.data, ds.scores.values[0].transpose(2, 0, 1))  # (component | y, x)
    for ax, ref in zip(sc.axes_manager.signal_axes, small[0].axes_manager.navigation_axes, strict=True):  # x, y
        assert (ax.size, ax.units) == (ref.size, ref.units) and ax.scale == pytest.approx(ref.scale, rel=1e-12)
    assert sc.axes_manager.navigation_shape == (6,)

    nm = nmf_2x2
    path = write_results(tmp_path / "r.zarr", {"nmf": nm})
    got = xsi_dask.results_to_hyperspy(path, lazy=True)
    ab = got["abundances"]
    assert ab._lazy and ab.axes_manager.navigation_shape == (3, 4)  # (component, tile)
    np.testing.assert_allclose(ab.data.compute(), nm.abundances.values.transpose(0, 3, 1, 2), rtol=1e-15)
    np.testing.assert_allclose(got["spectra"].data, nm.spectra.values, rtol=1e-15)
    assert got["abundances"].metadata.Signal.quantity == "counts"
    with pytest.raises(ViewError, match="Pass lazy=True"):
        xsi_dask.results_to_hyperspy(xr.open_zarr(path, group="nmf"), max_bytes=100)
