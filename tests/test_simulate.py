"""The montage simulator: Poisson counts, exact totals, database line energies, truth, layout options."""

from __future__ import annotations

import numpy as np
import pytest

import xsi_dask
from xsi_dask.cli.main import main
from xsi_dask.errors import LayoutError, XSIError
from xsi_dask.testing.physics import characteristic_lines, fwhm_kev, phase_spectrum
from xsi_dask.testing.presets import PRESETS
from xsi_dask.testing.simulate import open_truth, simulate

from .conftest import assert_no_store


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "g91.zarr"
    return simulate(out, tiles="2x2", tile_shape="96x96", counts_per_pixel=50, seed=3, progress=False)


def test_stored_total_equals_generated_counts(small):
    info = small.info()
    assert info["total_counts"] == small.attrs["generated_counts"]
    # the dose is calibrated on the rasterised abundances; it varies +-5 % per tile
    assert info["counts_per_pixel"] == pytest.approx(50, rel=0.05)
    for t in range(small.n_tiles):
        csr = small.tile_csr(t).to_scipy()
        np.testing.assert_array_equal(csr.sum(axis=1).reshape(96, 96), small.count_map(t))


def test_counts_are_poisson_per_phase(small):
    """In pixels of one pure phase (one tile, one dose) the counts' variance equals their mean."""
    truth = open_truth(small)
    ab = truth.abundances.values
    for t in range(small.n_tiles):
        counts = small.count_map(t).astype(float)
        for p in range(ab.shape[-1]):
            pure = ab[t, :, :, p] > 0.999
            n = int(pure.sum())
            if n < 400:
                continue
            c = counts[pure]
            expected = float(truth.expected_counts.values[t][pure][:, p].mean())
            assert c.mean() == pytest.approx(expected, rel=4 / np.sqrt(expected * n) + 1e-3)
            # variance of a sample variance ~ 2 sigma^4 / n for near-Gaussian counts
            assert c.var(ddof=1) == pytest.approx(c.mean(), rel=5 * np.sqrt(2 / n) + 0.05)


def test_channel_counts_follow_the_phase_spectrum(small):
    """Summed counts over pure pixels of the film follow its spectrum (chi-square per dof ~ 1)."""
    truth = open_truth(small)
    ab = truth.abundances.values
    spec = truth.spectra.values[0]
    total = np.zeros(small.channels)
    expected_total = 0.0
    for t in range(small.n_tiles):
        pure = (ab[t, :, :, 0] > 0.999).reshape(-1)
        total += np.asarray(small.tile_csr(t).to_scipy(np.float64)[pure].sum(axis=0)).ravel()
        expected_total += float(truth.expected_counts.values[t].reshape(-1, ab.shape[-1])[pure, 0].sum())
    mu = spec * expected_total
    use = mu > 20
    chi2 = float((((total[use] - mu[use]) ** 2) / mu[use]).sum()) / use.sum()
    assert 0.7 < chi2 < 1.4, chi2


def test_line_energies_come_from_xraydb():
    xraydb = pytest.importorskip("xraydb")
    energies, _, names = characteristic_lines({"Fe": 1.0})
    assert energies[names.index("Fe Ka1")] == pytest.approx(xraydb.xray_lines("Fe")["Ka1"].energy / 1000)
    e = np.arange(4096) * 0.01
    spec, _ = phase_spectrum({"Fe": 1.0}, e, continuum=0.0)
    assert e[np.argmax(spec)] == pytest.approx(6.40, abs=0.011)
    # Fiori: 130 eV at Mn Ka, wider above
    assert fwhm_kev(5.899) == pytest.approx(0.130)
    assert fwhm_kev(8.0) > 0.130 > fwhm_kev(1.0)
    # the presets include the hard overlaps
    g91 = {el for p in PRESETS["grade91_replica"].phases for el in p.composition}
    assert {"V", "Cr", "Mn", "S", "Mo"} <= g91
    aa = {el for p in PRESETS["am_aluminum"].phases for el in p.composition}
    assert {"Cu", "Ce"} <= aa


def test_truth_and_haadf(small):
    truth = open_truth(small)
    ab = truth.abundances.values
    np.testing.assert_allclose(ab.sum(-1), 1.0, atol=1e-6)
    assert list(truth.phase.values)[:2] == ["carbon film", "M23C6"]
    np.testing.assert_allclose(truth.spectra.values.sum(1), 1.0)
    for p in range(ab.shape[-1]):
        assert (ab[..., p] > 0.99).any(), f"phase {p} has no pure pixel"
    haadf = small.image(0, "HAADF")
    film = ab[0, :, :, 0] > 0.999
    m23 = ab[0, :, :, 1] > 0.999
    if m23.any():
        assert haadf[m23].mean() > 2 * haadf[film].mean()  # Z contrast


def test_deterministic_overlap_and_low_count_tile(tmp_path):
    a = simulate(tmp_path / "a.zarr", tiles="2x2", tile_shape="48x48", seed=5, overlap=8, low_count_tile=3, progress=False)
    b = simulate(tmp_path / "b.zarr", tiles="2x2", tile_shape="48x48", seed=5, overlap=8, low_count_tile=3, progress=False)
    np.testing.assert_array_equal(a.tile_csr(2).data, b.tile_csr(2).data)
    assert [t["stage_x"] for t in a.tiles] == pytest.approx([0.0, 0.08, 0.0, 0.08])  # 40 px x 2 nm
    ta = open_truth(a).abundances.values
    np.testing.assert_array_equal(ta[0, :, 40:], ta[1, :, :8])  # the shared strip has the same truth
    cpp = [t["total_counts"] for t in a.tiles]
    assert cpp[3] < 0.2 * np.mean(cpp[:3])


@pytest.mark.slow  # ~30 s: make test-all (make test under 20 min)
def test_svd_solvers_agree_on_simulated_montage(small):
    m = xsi_dask.open_montage(small)
    g = xsi_dask.decompose(m, 8, solver="gram")
    r = xsi_dask.decompose(m, 8)
    S = g.singular_values.values
    sep = np.nonzero((S[:7] - S[1:8]) / S[:7] >= 0.05)[0]
    assert sep.size >= 3  # the phases stand out of the noise
    np.testing.assert_allclose(r.singular_values.values[sep], S[sep], rtol=1e-6)


def test_bad_simulation_requests(tmp_path):
    with pytest.raises(XSIError, match="unknown preset"):
        simulate(tmp_path / "x.zarr", preset="steel", progress=False)
    with pytest.raises(LayoutError, match="overlap"):
        simulate(tmp_path / "x.zarr", tile_shape="16x16", overlap=16, progress=False)
    with pytest.raises(XSIError, match="particle_density"):
        simulate(tmp_path / "x.zarr", particle_density=-1, progress=False)
    with pytest.raises(XSIError, match="counts_per_pixel"):
        simulate(tmp_path / "x.zarr", counts_per_pixel=0, progress=False)
    assert_no_store(tmp_path / "x.zarr")


def test_cli_simulate(tmp_path, capsys):
    out = tmp_path / "aa.zarr"
    assert main(["simulate", "--out", str(out), "--preset", "am_aluminum", "--tiles", "1x2", "--tile-shape", "32x32", "--channels", "2048", "--quiet"]) == 0
    assert "2 on a 1x2 grid" in capsys.readouterr().out
    assert xsi_dask.MontageStore(out).channels == 2048


SEED, DENSITY = 1, 4.0


@pytest.fixture(scope="module")
def dense_replica(tmp_path_factory):
    """A small dense grade91_replica at 50 counts per pixel: 2 x 2 tiles of 256 x 256 pixels, 4096 channels.

    The film's abundance map can only reach r >= 0.95 if it varies enough against
    its Poisson noise: for a film of lam counts per pixel covering a fraction p,
    r^2 <= lam (1 - p) / (lam (1 - p) + 1) (the counts are its best estimate),
    which needs lam (1 - p) >= 9.3. At 50 counts per pixel the low-yield film
    has ~33 counts per pixel, so the particles must cover about a third of the
    replica: four times the preset's particle density.
    """
    out = tmp_path_factory.mktemp("dense") / "g91.zarr"
    return simulate(out, tiles="2x2", tile_shape="256x256", counts_per_pixel=50, seed=SEED, particle_density=DENSITY,
                    progress=False)


@pytest.mark.slow  # ~30 s: make test-all (make test under 20 min)
def test_nmf_recovers_every_phase(dense_replica):
    """KL NMF with k = the true number of phases: every spectrum within 3 degrees, every map r >= 0.95.

    Components are matched to phases by the Hungarian algorithm on the spectral
    angles. Plain NMF (sparsity 0) fits each pixel's Poisson noise with small
    amounts of every endmember and lets the carbides shed their C K line into
    the film (15-40 degrees off for the rare phases); the L1/2 sparsity term
    resolves that, and the refit puts the abundances back in counts.
    """
    from scipy.optimize import linear_sum_assignment

    truth = open_truth(dense_replica)
    k = truth.sizes["phase"]
    ds = xsi_dask.nmf(xsi_dask.open_montage(dense_replica), k, max_iter=300, tol=0, sparsity=4.0)
    S, E = truth.spectra.values, ds.spectra.values
    cos = (S / np.linalg.norm(S, axis=1, keepdims=True)) @ (E / np.linalg.norm(E, axis=1, keepdims=True)).T
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    phase, comp = linear_sum_assignment(angle)
    A = truth.expected_counts.values.reshape(-1, k)[:, phase]
    B = ds.abundances.values.reshape(-1, k)[:, comp]
    r = np.array([np.corrcoef(A[:, j], B[:, j])[0, 1] for j in range(k)])
    report = {str(truth.phase.values[p]): (round(float(angle[p, c]), 2), round(float(rj), 3)) for p, c, rj in zip(phase, comp, r)}
    assert np.all(angle[phase, comp] <= 3.0), report
    assert np.all(r >= 0.95), report
    assert dense_replica.info()["counts_per_pixel"] == pytest.approx(50, rel=0.05)
    # and the abundances are counts: they add up to the stored counts
    assert ds.abundances.values.sum() == pytest.approx(dense_replica.info()["total_counts"], rel=2e-3)


def test_tiles_are_cached_only_when_a_workers_share_fits(small):
    """A pass is a cyclic scan: tiles stay in memory only if all of them fit the tile cache, else none."""
    import dask

    from xsi_dask.io.store import tile_cache

    m = xsi_dask.open_montage(small)
    # each tile's CSR arrays and its pixel weights
    total = sum(small.tile_nbytes(t) + 8 * small.pixels_per_tile for t in range(small.n_tiles))
    csr = small.tile_csr(0, cache=False)
    assert small.tile_nbytes(0) == csr.nbytes
    first = None
    for budget, cached in ((total, True), (total - 1, False)):
        tile_cache.clear()
        with dask.config.set({"xsi-dask.tile-cache": budget}):
            assert small.cache_fits(list(range(4))) is cached
            assert small.cache_fits(list(range(4)), workers=2)  # two tiles a worker
            ref = xsi_dask.decompose(m, 3, seed=0)
        held = sorted(k[2] for k in tile_cache._items if len(k) == 3)
        assert held == ([0, 1, 2, 3] if cached else []), held
        if not cached:
            np.testing.assert_allclose(ref.singular_values.values, first.singular_values.values, rtol=1e-12)
        first = ref


# ---- the detector's zero peak ----

def test_zero_peak_is_simulated_and_the_analysis_view_removes_it(tmp_path, capsys):
    """`simulate --zero-peak 0.15`: 15 % of all counts in a Gaussian at 0 keV of FWHM(0) (the X-rays and the truth
    unchanged); the store says EDS, so analysis_view excludes those channels by default."""
    from xsi_dask.io.metadata import detector_fwhm
    from xsi_dask.montage.prepare import analysis_view, signal_type, zero_peak_cutoff
    from xsi_dask.testing.physics import zero_peak_spectrum

    common = ["--tiles", "1x2", "--tile-shape", "32x32", "--channels", "512", "--counts-per-pixel", "40", "--seed", "7",
              "--quiet"]
    assert main(["simulate", "--out", str(tmp_path / "zp.zarr"), "--zero-peak", "0.15", *common]) == 0
    assert main(["simulate", "--out", str(tmp_path / "no.zarr"), *common]) == 0
    capsys.readouterr()
    zp, no = xsi_dask.MontageStore(tmp_path / "zp.zarr"), xsi_dask.MontageStore(tmp_path / "no.zarr")
    assert zp.attrs["simulation"]["zero_peak"] == 0.15
    e = zp.energy
    s_zp, s_no = zp.sum_spectrum().astype(float), no.sum_spectrum().astype(float)
    # below 0.06 keV (3 sigma of the zero peak) no X-ray is counted (the detector's threshold is 0.1 keV, line tails
    # reach 0.08): what is there is the zero peak, all of it but 0.13 %
    low = e < 0.06
    assert s_no[low].sum() == 0
    n, z = float(s_zp.sum()), float(s_zp[low].sum())
    assert z / n == pytest.approx(0.15 * 0.9987, abs=5 * np.sqrt(0.15 * 0.85 / n))  # binomial, 5 sigma
    # its shape: the Gaussian of FWHM(0) = 46 eV (130 eV at Mn Ka) over the channels from 0 keV (chi-square)
    spec = zero_peak_spectrum(e, 130.0)
    mu = spec[low] / spec[low].sum() * z
    use = mu > 5
    assert use.sum() >= 4
    assert float((((s_zp[low][use] - mu[use]) ** 2) / mu[use]).sum() / use.sum()) < 3
    assert detector_fwhm(0.0, 130.0) == pytest.approx(0.046, abs=0.001)
    # the X-rays are those of the store without the zero peak (the truth counts X-rays only)
    np.testing.assert_allclose(open_truth(zp).expected_counts.values, open_truth(no).expected_counts.values)
    assert s_zp[~low].sum() == pytest.approx(s_no[~low].sum(), rel=5 / np.sqrt(s_no.sum()))
    # EDS, so the analysis view drops the channels below 4 FWHM(0) = 0.19 keV: every zero-peak count
    m = xsi_dask.open_montage(zp)
    assert signal_type(m).startswith("EDS")
    cutoff = zero_peak_cutoff(m)
    assert cutoff == pytest.approx(4 * 0.0464, abs=1e-3)
    v = analysis_view(m)
    assert float(v["energy"].min()) >= cutoff > float(e[low].max())
    kept = v.sum(["tile", "y", "x"]).compute().data.todense()
    np.testing.assert_array_equal(kept, s_zp[e >= cutoff])
    assert analysis_view(m, keep_zero_peak=True).sizes["energy"] == zp.channels


def test_bad_zero_peak_fraction(tmp_path):
    for f in (-0.1, 1.0, float("nan"), True):
        with pytest.raises(XSIError, match="zero_peak"):
            simulate(tmp_path / "x.zarr", zero_peak=f, progress=False)
    assert_no_store(tmp_path / "x.zarr")
