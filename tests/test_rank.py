"""The number of components above the Poisson noise floor (decomposition/_rank.py) and the scree cut at round-off.

Ground truth: the simulator's phases (every phase of a preset is present in a
2x2 montage of 64x64 tiles: the presets place at least ``min_count`` particles
of each), a store of pure Poisson noise around one spectrum (NumPy draws
ingested from .rpl files), and a map of exact rank 2 (noise-free mixtures of two
integer spectra). Dense NumPy references for the eigenvalues of D~^T D~.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

import xsi_dask
from xsi_dask.decomposition._rank import (
    MARGIN,
    TW1_Q99,
    _histogram_summary,
    noise_edge,
    pixel_totals_summary,
    poisson_null_edge,
    roundoff_cut,
    significance,
)
from xsi_dask.errors import DecompositionError
from xsi_dask.testing.physics import phase_spectrum
from xsi_dask.testing.presets import PRESETS
from xsi_dask.testing.simulate import simulate

from .conftest import write_rpl

CHANNELS = 1024  # 10 eV channels to 10.24 keV: every preset phase has lines there; the gram eigh stays ~1 s


def _axes(h: int, w: int, channels: int) -> list[dict]:
    return [
        {"name": "y", "size": h, "offset": 0.0, "scale": 2.0, "units": "nm", "navigate": True},
        {"name": "x", "size": w, "offset": 0.0, "scale": 2.0, "units": "nm", "navigate": True},
        {"name": "Energy", "size": channels, "offset": 0.0, "scale": 0.01, "units": "keV", "navigate": False},
    ]


def _store_from_arrays(folder: Path, tiles: list[np.ndarray]) -> xsi_dask.io.store.MontageStore:
    """Ingest (y, x, channels) count arrays as a 1 x len(tiles) montage, the path real files take."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_rpl(folder / f"t{i}.rpl", t.astype(np.uint16), _axes(*t.shape), f"t{i}") for i, t in enumerate(tiles)]
    return xsi_dask.ingest(paths, folder / "m.zarr", grid=f"1x{len(paths)}", progress=False)


def _scaled_eigenvalues(D: np.ndarray) -> np.ndarray:
    """Dense reference: eigenvalues of D~^T D~, D~ = G^-1/2 D H^-1/2 (zero totals weigh 0), descending."""
    D = D.astype(np.float64)
    g, h = D.sum(1), D.sum(0)
    wg = np.divide(1.0, g, out=np.zeros_like(g), where=g > 0)
    wh = np.divide(1.0, np.sqrt(h), out=np.zeros_like(h), where=h > 0)
    A = wh[:, None] * (D.T @ (wg[:, None] * D)) * wh[None, :]
    return np.clip(np.linalg.eigvalsh(A)[::-1], 0.0, None)


@pytest.fixture(scope="module", params=["grade91_replica", "am_aluminum"])
def preset_montage(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("rank") / f"{request.param}.zarr"
    simulate(path, preset=request.param, tiles="2x2", tile_shape="64x64", channels=CHANNELS, counts_per_pixel=50,
             seed=0, progress=False)
    return request.param, xsi_dask.open_montage(path)


@pytest.fixture(scope="module")
def single_phase(tmp_path_factory):
    """Pure Poisson noise around one spectrum (Al matrix of am_aluminum), 50 counts/px, 2x2 tiles of 64x64 in a row.

    Every tile gets its own dose (as the simulator's tiles do): the expected
    counts stay rank one, so one component and nothing else.
    """
    channels = 512  # to 5.12 keV: Mg, Al and Cu L
    rng = np.random.default_rng(7)
    energy = np.arange(channels) * 0.01 + 0.005
    spec, _ = phase_spectrum(PRESETS["am_aluminum"].background.composition, energy)
    tiles = [rng.poisson(50.0 * dose * spec, (64, 64, channels)).astype(np.uint16) for dose in (0.95, 1.0, 1.05, 0.98)]
    st = _store_from_arrays(tmp_path_factory.mktemp("single"), tiles)
    D = np.concatenate([t.reshape(-1, channels) for t in tiles])
    px = pixel_totals_summary([D.sum(1)])
    edge = noise_edge(px["n_pixels"], int(np.count_nonzero(D.sum(0))), px["total_counts"], low_pixel_counts=px["low_pixel_counts"])
    return _scaled_eigenvalues(D), edge, xsi_dask.open_montage(st.path)


# ---- the criterion on its own ----

def test_noise_edge_is_marchenko_pastur_with_tracy_widom_and_margin():
    N, M, T = 16384, 1000, 819200.0
    a, b = math.sqrt(N - 1), math.sqrt(M)
    expected = (1 + MARGIN) * ((a + b) ** 2 + TW1_Q99 * (a + b) * (1 / a + 1 / b) ** (1 / 3)) / T
    assert noise_edge(N, M, T) == pytest.approx(expected, rel=1e-12)
    assert noise_edge(N, M, T, margin=0.0) == pytest.approx(expected / (1 + MARGIN), rel=1e-12)
    # symmetric in the shape (the edge of D~ D~^T is the same); the sparse floor 1/g_low takes over when larger
    assert noise_edge(M, N, T) == pytest.approx(noise_edge(N, M, T), rel=1e-12)
    assert noise_edge(N, M, T, low_pixel_counts=4.0) == 0.25
    assert noise_edge(N, M, T, low_pixel_counts=1e6) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("counts_per_pixel", [50.0, 200.0])
def test_dense_poisson_noise_around_one_spectrum_counts_one(counts_per_pixel):
    """The MP edge holds the noise of a rank-one Poisson matrix and is not loose (top noise eigenvalue near it)."""
    rng = np.random.default_rng(3)
    energy = np.arange(256) * 0.02 + 0.01
    spec, _ = phase_spectrum({"Fe": 0.7, "Cr": 0.2, "C": 0.1}, energy)
    D = rng.poisson(counts_per_pixel * spec, (4096, 256))
    ev = _scaled_eigenvalues(D)
    assert ev[0] == pytest.approx(1.0, abs=1e-10)  # the mean spectrum, exactly 1 (correspondence analysis)
    px = pixel_totals_summary([D.sum(1)])
    kw = dict(n_pixels=px["n_pixels"], n_channels=int(np.count_nonzero(D.sum(0))), total_counts=px["total_counts"],
              low_pixel_counts=px["low_pixel_counts"])
    null = poisson_null_edge(D.sum(1), D.sum(0), seed=1)
    out = significance(ev, complete=True, null_edge=null, **kw)
    assert out["n_significant"] == 1 and not out["n_significant_is_lower_bound"]
    assert out["noise_edge"] == max(noise_edge(**kw), null)
    mp = noise_edge(kw["n_pixels"], kw["n_channels"], kw["total_counts"], margin=0.0)
    assert 0.9 * mp < ev[1] < out["noise_edge"]  # the bulk reaches the MP edge: the floor is about the noise
    # the null resamples the same model: its top noise eigenvalue is the data's, to the spread of an extreme value
    assert 0.8 * ev[1] < null < 1.25 * ev[1]
    assert poisson_null_edge(D.sum(1), D.sum(0), seed=1) == null  # deterministic for a seed


def test_significance_counts_above_the_edge_and_flags_a_truncated_spectrum():
    kw = dict(n_pixels=10000, n_channels=500, total_counts=5e5)
    edge = noise_edge(**kw)
    ev = np.array([1.0, 0.5, 3 * edge, 1.01 * edge, 0.99 * edge, 0.5 * edge])
    assert significance(ev, complete=True, **kw)["n_significant"] == 4
    top = significance(ev[:3], complete=False, **kw)
    assert top["n_significant"] == 3 and top["n_significant_is_lower_bound"]
    assert not significance(ev[:5], complete=False, **kw)["n_significant_is_lower_bound"]
    # a map too sparse to show anything: the mean is one component, isolated blocks (eigenvalue 1) are not
    ones = np.array([1.0, 1.0 + 2e-16, 1.0, 0.7])
    assert significance(ones, complete=True, low_pixel_counts=1.0, **kw)["n_significant"] == 1
    assert significance(ones, complete=True, low_pixel_counts=1.0, mean_component=False, **kw)["n_significant"] == 0
    assert significance(ones, complete=True, low_pixel_counts=2.0, **kw)["n_significant"] == 2  # 0.7 > 1/2; the 1s never
    # the bound that set the edge is named
    assert significance(ev, complete=True, **kw)["noise_edge_source"] == "marchenko-pastur"
    assert significance(ev, complete=True, low_pixel_counts=2.0, **kw)["noise_edge_source"] == "sparse-floor"
    assert significance(ev, complete=True, null_edge=0.6, **kw) == {
        "n_significant": 1, "noise_edge": 0.6, "n_significant_is_lower_bound": False, "noise_edge_source": "poisson-null"}


def test_poisson_null_sees_the_sparse_regime():
    """At 10 counts/px over 1024 channels the noise reaches 1.5x the MP edge (rare channels); the null follows it.

    The top noise eigenvalue is an extreme value set by a few rare counts: over
    seeds the null's (a max over 3 draws) lies between 0.9 and 2 times the
    data's, hence the loose bounds.
    """
    rng = np.random.default_rng(11)
    spec, _ = phase_spectrum({"Fe": 0.7, "Cr": 0.2, "C": 0.1}, np.arange(1024) * 0.01 + 0.005)
    D = rng.poisson(10.0 * spec, (4096, 1024))
    ev = _scaled_eigenvalues(D)
    top = ev[1:][ev[1:] < 1 - 1e-9][0]  # the top noise eigenvalue that is not an isolated block
    mp = noise_edge(int(np.count_nonzero(D.sum(1))), int(np.count_nonzero(D.sum(0))), float(D.sum()), margin=0.0)
    assert top > 1.3 * mp
    assert 0.8 * top < poisson_null_edge(D.sum(1), D.sum(0)) < 2.5 * top


@pytest.mark.parametrize("bad", [dict(n_pixels=0), dict(total_counts=-1.0), dict(n_channels=True),
                                 dict(total_counts=float("nan"))])
def test_bad_counts_are_refused(bad):
    kw = {"n_pixels": 100, "n_channels": 10, "total_counts": 1e3, **bad}
    with pytest.raises(DecompositionError, match=next(iter(bad))):
        noise_edge(**kw)


def test_eigenvalues_must_descend():
    with pytest.raises(DecompositionError, match="descending"):
        significance([0.1, 1.0], n_pixels=100, n_channels=10, total_counts=1e3, complete=True)


def test_histogram_summary_equals_the_expanded_totals():
    """The first pass's pixel-total histogram gives N, T and g_low exactly as the totals themselves would."""
    rng = np.random.default_rng(0)
    for trial in range(500):
        size = int(rng.integers(2, 60))
        hist = rng.integers(0, 5, size=size) * (rng.random(size) < 0.5)
        if trial % 7 == 0:
            hist[:] = 0
            hist[int(rng.integers(0, size))] = int(rng.integers(1, 4))
        expanded = np.repeat(np.arange(size), hist)
        assert _histogram_summary(hist) == pixel_totals_summary([expanded])


def test_roundoff_cut_on_a_rank_deficient_gram():
    rng = np.random.default_rng(0)
    X = rng.random((200, 3)) @ rng.random((3, 300))  # rank 3
    ev = np.linalg.eigvalsh(X.T @ X)[::-1]
    assert ev[3] != 0.0  # eigh's round-off: what the scree used to show down to 1e-134
    assert roundoff_cut(ev) == 3
    assert roundoff_cut(np.zeros(5)) == 0 and roundoff_cut([]) == 0


# ---- through decompose ----

@pytest.mark.parametrize("solver", ["gram", "randomized"])
def test_presets_give_their_number_of_phases(preset_montage, solver):
    name, m = preset_montage
    ds = xsi_dask.decompose(m, 10, solver=solver)
    assert ds.attrs["n_significant"] == len(PRESETS[name].phases)
    assert not ds.attrs["n_significant_is_lower_bound"]
    S2 = ds["singular_values"].values ** 2
    n = ds.attrs["n_significant"]
    assert S2[n - 1] > ds.attrs["noise_edge"] > S2[n]


def test_randomized_flags_a_lower_bound_when_k_is_too_small(preset_montage):
    name, m = preset_montage
    ds = xsi_dask.decompose(m, 3, solver="randomized")
    assert ds.attrs["n_significant"] == 3 < len(PRESETS[name].phases)
    assert ds.attrs["n_significant_is_lower_bound"]


@pytest.mark.parametrize("solver", ["gram", "randomized"])
def test_single_phase_is_one_component(single_phase, solver):
    ref, edge, m = single_phase
    ds = xsi_dask.decompose(m, 5, solver=solver)
    assert ds.attrs["n_significant"] == 1
    assert not ds.attrs["n_significant_is_lower_bound"]
    assert ds["singular_values"].values[0] ** 2 == pytest.approx(1.0, abs=1e-9)
    if solver == "gram":
        np.testing.assert_allclose(ds["eigenvalues"].values, ref, rtol=1e-7, atol=1e-12)
    assert ds.attrs["noise_edge"] == pytest.approx(edge, rel=1e-12)  # from the store's totals = from the dense matrix
    assert ref[1] < edge  # the reference agrees: nothing but the mean above the floor


def test_rank_deficient_map_scree_stops_at_roundoff(tmp_path):
    """Noise-free mixtures of two integer spectra: D has rank 2, the stored scree has 2 eigenvalues."""
    rng = np.random.default_rng(5)
    s1, s2 = rng.poisson(3.0, 128), rng.poisson(3.0, 128)
    a, b = rng.integers(0, 4, (16, 16, 1)), rng.integers(1, 4, (16, 16, 1))
    tile = a * s1 + b * s2
    m = xsi_dask.open_montage(_store_from_arrays(tmp_path, [tile]).path)
    ds = xsi_dask.decompose(m, 2, solver="gram")
    ref = _scaled_eigenvalues(tile.reshape(-1, 128))
    assert ref[2] < 1e-12 * ref[0]  # the reference agrees: rank 2
    ev = ds["eigenvalues"].values
    assert ds.attrs["eigenvalues_roundoff_rank"] == 2 and ev.size == 128
    np.testing.assert_allclose(ev[:2], ref[:2], rtol=1e-10)
    assert np.all(ev[2:] == 0.0)  # not eigh's round-off (1e-17 .. 1e-134): the scree stops at the rank
    assert ds.attrs["n_significant"] == 2
    with warnings.catch_warnings():  # the randomized solver returns the numerical rank and says so
        warnings.simplefilter("ignore")
        assert xsi_dask.decompose(m, 2, solver="randomized").attrs["n_significant"] == 2


def test_no_floor_without_poisson_scaling(single_phase):
    m = single_phase[2]
    ds = xsi_dask.decompose(m.isel(tile=[0]), 2, solver="gram", poisson=False)
    assert "n_significant" not in ds.attrs and "noise_edge" not in ds.attrs


def test_bruker_50x50_map_has_two_components(needs_data, tmp_path):
    """The real Bruker map: the mean and one more (Al vs Ag) stand clear of the noise; the rest is the MP bulk."""
    m = xsi_dask.open_montage(xsi_dask.ingest(needs_data / "bcf_v2_50x50px.bcf", tmp_path / "b.zarr", progress=False))
    ds = xsi_dask.decompose(m, 8, solver="randomized")
    assert ds.attrs["n_significant"] == 2 and not ds.attrs["n_significant_is_lower_bound"]
    S2 = ds["singular_values"].values ** 2
    assert S2[1] > 5 * ds.attrs["noise_edge"] and S2[2] < ds.attrs["noise_edge"]  # not a close call
