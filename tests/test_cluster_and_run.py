"""A 2-worker LocalCluster gives the synchronous scheduler's results; `xsi-dask run` end to end."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

import xsi_dask
from xsi_dask.cli.main import main
from xsi_dask.cluster.local import dask_client

from .conftest import EDS

pytestmark = pytest.mark.usefixtures("needs_data")


def test_local_cluster_equals_sync(tmp_path):
    m = xsi_dask.open_montage(xsi_dask.ingest(EDS / "P45_the_default_job.bcf", tmp_path / "p.zarr", split="3x4", progress=False))
    with dask.config.set(scheduler="sync"):
        svd_s = xsi_dask.decompose(m, 5)
        scores_s = svd_s.scores.values
        nmf_s = xsi_dask.nmf(m, 3, max_iter=15, tol=0)
        ab_s = nmf_s.abundances.values
    with dask_client(workers=2, quiet=True) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        svd_c = xsi_dask.decompose(m, 5)
        scores_c = svd_c.scores.values
        nmf_c = xsi_dask.nmf(m, 3, max_iter=15, tol=0)
        ab_c = nmf_c.abundances.values
    # the reduction tree has a fixed shape, so the sums are the same wherever tasks ran
    np.testing.assert_allclose(svd_c.singular_values.values, svd_s.singular_values.values, rtol=1e-13)
    np.testing.assert_allclose(scores_c, scores_s, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(nmf_c.spectra.values, nmf_s.spectra.values, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ab_c, ab_s, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(nmf_c.loss.values, nmf_s.loss.values, rtol=1e-13)


def test_split_units():
    from xsi_dask.engine import split_units

    assert split_units([0, 1, 2], 100, 2) == [(0, 0, 100), (1, 0, 100), (2, 0, 100)]
    assert split_units([5], 100, 2) == [(5, 0, 50), (5, 50, 100)]
    # 2 tiles on 4 workers: halves; 3 tiles on 4 workers: quarters (12 blocks, 3 rounds of a quarter tile)
    assert split_units([0, 1], 100, 4) == [(0, 0, 50), (0, 50, 100), (1, 0, 50), (1, 50, 100)]
    assert split_units([0, 1, 2], 99, 4)[:4] == [(0, 0, 24), (0, 24, 49), (0, 49, 74), (0, 74, 99)]
    assert len(split_units([0, 1, 2], 99, 4)) == 12


def test_one_tile_on_two_workers_runs_as_row_blocks(tmp_path):
    """Fewer tiles than workers: each pass runs as row blocks so no worker idles; same results as one task per tile."""
    from xsi_dask.engine import make_plan
    from xsi_dask.testing.simulate import simulate

    m = xsi_dask.open_montage(simulate(tmp_path / "one.zarr", tiles="1x1", tile_shape="64x64", channels=512,
                                       counts_per_pixel=20, seed=2, progress=False))
    with dask.config.set(scheduler="sync"):
        assert make_plan(m).units == ((0, 0, 4096),)
        svd_s = xsi_dask.decompose(m, 4)
        gram_s = xsi_dask.decompose(m, 4, solver="gram")
        nmf_s = xsi_dask.nmf(m, 3, max_iter=10, tol=0, sparsity=1.0, refit_iter=5)
        ab_s = nmf_s.abundances.values
    with dask_client(workers=2, quiet=True):
        assert make_plan(m).units == ((0, 0, 2048), (0, 2048, 4096))
        svd_c = xsi_dask.decompose(m, 4)
        gram_c = xsi_dask.decompose(m, 4, solver="gram")
        nmf_c = xsi_dask.nmf(m, 3, max_iter=10, tol=0, sparsity=1.0, refit_iter=5)
        ab_c = nmf_c.abundances.values
    # two partial sums instead of one: equal up to rounding
    np.testing.assert_allclose(svd_c.singular_values.values, svd_s.singular_values.values, rtol=1e-10)
    np.testing.assert_allclose(gram_c.singular_values.values, gram_s.singular_values.values, rtol=1e-10)
    np.testing.assert_allclose(nmf_c.spectra.values, nmf_s.spectra.values, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(ab_c, ab_s, rtol=1e-9, atol=1e-9 * ab_s.max())


def test_units_are_pinned_so_each_worker_caches_its_own_tiles(tmp_path):
    """On a cluster a unit goes to the same worker every pass: its tile cache holds its share, not every tile."""
    from xsi_dask.testing.simulate import simulate

    m = xsi_dask.open_montage(simulate(tmp_path / "four.zarr", tiles="2x2", tile_shape="64x64", channels=512,
                                       counts_per_pixel=20, seed=2, progress=False))

    def cached_tiles():
        from xsi_dask.io.store import tile_cache

        return sorted(k[2] for k in tile_cache._items if len(k) == 3)

    # work stealing may move a task off its pinned worker when that worker is busy (the pins are loose, so that a
    # dead worker's units run elsewhere); on a loaded machine it did, once in five suite runs. The pinning is what
    # is tested here, so stealing is off for this cluster (its scheduler runs in this process and reads the config)
    with dask.config.set({"distributed.scheduler.work-stealing": False}), dask_client(workers=2, quiet=True) as client:
        xsi_dask.decompose(m, 3)
        xsi_dask.nmf(m, 2, max_iter=3, tol=0)
        held = sorted(client.run(cached_tiles).values())
    assert held == [[0, 2], [1, 3]], held


@pytest.mark.slow  # ~30 s: make test-all (make test under 20 min)
def test_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", str(EDS / "P45_the_default_job.bcf"), "--split", "3x4", "--out", str(out),
            "--components", "6", "--nmf-components", "3", "--max-iter", "30", "--workers", "2", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Dask dashboard: http://127.0.0.1:" in text
    svd = xr.open_zarr(out / "results.zarr", group="svd")
    nmf = xr.open_zarr(out / "results.zarr", group="nmf")
    assert set(svd.data_vars) >= {"singular_values", "explained_variance_ratio", "loadings", "scores"}
    assert svd.scores.dims == ("tile", "y", "x", "component") and svd.scores.shape == (12, 25, 25, 6)
    assert svd.scores.encoding["chunks"] == (1, 25, 25, 6)  # written tile by tile
    assert svd.loadings.dims == ("component", "energy") and svd.energy.attrs["units"] == "keV"
    assert set(nmf.data_vars) >= {"spectra", "abundances", "loss"}
    assert nmf.abundances.shape == (12, 25, 25, 3)
    assert svd.attrs["xsi_dask_version"] == xsi_dask.__version__ and svd.attrs["solver"] == "randomized"
    # the analysed counts (the zero peak excluded by default: 137,100 of the map's 165,941) are all in the NMF model
    from xsi_dask.engine import make_plan
    from xsi_dask.montage.prepare import analysis_view

    analysed = make_plan(analysis_view(xsi_dask.open_montage(out / "montage.zarr"))).sum_spectrum().sum()
    assert analysed < 165941 and nmf.attrs["zero_peak_cutoff"] > 0.1
    assert float(nmf.abundances.sum()) == pytest.approx(analysed, rel=0.01)
    figs = {p.name for p in (out / "figures").iterdir()}
    assert figs >= {"scree.png", "loadings.png", "scores.png", "nmf_spectra.png", "nmf_abundances.png", "nmf_rgb.png", "nmf_loss.png"}
    report = (out / "report.html").read_text()
    assert "figures/nmf_rgb.png" in report and "time: SVD" in report
    # a second run reuses the store and refuses to overwrite results
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--solver", "gram"]) == 0
    assert xr.open_zarr(out / "results.zarr", group="svd").attrs["solver"] == "gram"
    assert "eigenvalues" in xr.open_zarr(out / "results.zarr", group="svd")


def test_decompose_and_nmf_commands_share_a_results_store(tmp_path):
    store = tmp_path / "p.zarr"
    xsi_dask.ingest(EDS / "test_TEM.bcf", store, split="2x2", progress=False)
    res = tmp_path / "r.zarr"
    assert main(["decompose", str(store), "--out", str(res), "--components", "4", "--workers", "1", "--quiet"]) == 0
    assert main(["nmf", str(store), "--out", str(res), "--components", "2", "--max-iter", "10", "--workers", "1", "--quiet"]) == 0
    assert xr.open_zarr(res, group="svd").sizes["component"] == 4
    assert xr.open_zarr(res, group="nmf").sizes["component"] == 2
    assert main(["nmf", str(store), "--out", str(res), "--components", "2", "--workers", "1", "--quiet"]) == 2
    assert sorted(p.name for p in res.iterdir()) == ["nmf", "svd", "zarr.json"]
