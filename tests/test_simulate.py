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
    assert info["counts_per_pixel"] == pytest.approx(50, rel=0.15)  # dose varies +-5 % per tile, particles are random
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
    assert_no_store(tmp_path / "x.zarr")


def test_cli_simulate(tmp_path, capsys):
    out = tmp_path / "aa.zarr"
    assert main(["simulate", "--out", str(out), "--preset", "am_aluminum", "--tiles", "1x2", "--tile-shape", "32x32", "--channels", "2048", "--quiet"]) == 0
    assert "2 on a 1x2 grid" in capsys.readouterr().out
    assert xsi_dask.MontageStore(out).channels == 2048
