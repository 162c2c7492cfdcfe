"""Per-tile maps of a results store read by the engine's units, and the per-tile model deviance."""

import numpy as np
import pytest

import xsi_dask
from xsi_dask.engine import make_plan
from xsi_dask.engine.maps import map_source, results_view, tile_deviance
from xsi_dask.errors import ViewError
from xsi_dask.io.results import open_results
from xsi_dask.montage.prepare import analysis_view
from xsi_dask.testing.simulate import simulate


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("maps")
    simulate(d / "m.zarr", preset="am_aluminum", tiles=(1, 3), tile_shape=(16, 16), channels=512, counts_per_pixel=40,
             zero_peak=0.1, seed=3, progress=False)
    view = analysis_view(xsi_dask.open_montage(d / "m.zarr"), bin=2).isel(tile=[2, 0])
    svd = xsi_dask.decompose(view, 3, solver="gram")
    from xsi_dask.io.results import write_results

    write_results(d / "r.zarr", {"svd": svd})
    xsi_dask.nmf(view, 3, max_iter=20, out=d / "r.zarr")
    dense = np.asarray(view.data.map_blocks(lambda b: b.todense(), dtype=view.dtype).compute(), dtype=np.float64)
    return d, view, dense


def test_svd_records_the_pixel_totals_over_the_views_channels(sim):
    d, view, dense = sim
    svd = open_results(d / "r.zarr", "svd")
    np.testing.assert_array_equal(svd["pixel_counts"].values, dense.sum(-1))
    assert view.sizes["energy"] < 512  # the zero peak was left out: g is over the kept channels only


def test_units_read_their_rows_of_a_stored_map_without_reading_counts(sim):
    d, view, _ = sim
    plan = make_plan(view)
    src = map_source(d / "r.zarr", "svd", "scores", plan)
    scores = open_results(d / "r.zarr", "svd")["scores"].values

    def total(b, s):
        return (s.rows(b.unit) ** 2).sum(0)

    got = plan.reduce(total, src, label="scores sum", reads_counts=False, literal=(type(src),))
    np.testing.assert_allclose(got, (scores**2).sum((0, 1, 2)), rtol=1e-12)
    assert plan.passes == 0 and plan.log[-1].nnz == 0
    top = map_source(d / "r.zarr", "svd", "scores", plan, columns=2)
    got = plan.reduce(total, top, label="top-2 scores sum", reads_counts=False, literal=(type(src),))
    np.testing.assert_allclose(got, (scores[..., :2] ** 2).sum((0, 1, 2)), rtol=1e-12)


def test_tile_deviance_equals_dense_poisson_deviance(sim):
    d, view, dense = sim
    nmf = open_results(d / "r.zarr", "nmf")
    plan = make_plan(view)
    out = tile_deviance(plan, map_source(d / "r.zarr", "nmf", "abundances", plan), nmf["spectra"].values)
    model = np.einsum("tyxc,ce->tyxe", nmf["abundances"].values, nmf["spectra"].values)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(dense > 0, dense * np.log(dense / model), 0.0)
    want = 2 * (term - dense + model).sum((1, 2, 3))
    np.testing.assert_allclose(out["deviance"].values, want, rtol=1e-9)
    assert list(out["tile"].values) == [2, 0]
    np.testing.assert_array_equal(out["counts"].values, dense.sum((1, 2, 3)))
    assert plan.passes == 1


def test_results_view_rebuilds_the_view_and_maps_of_another_view_are_refused(sim, tmp_path):
    d, view, _ = sim
    svd = open_results(d / "r.zarr", "svd")
    again = results_view(svd)
    assert again.sizes == view.sizes
    np.testing.assert_array_equal(again["energy"].values, view["energy"].values)
    assert make_plan(again).tiles == (2, 0) and make_plan(again).bin == 2
    unbinned = make_plan(xsi_dask.open_montage(d / "m.zarr"))
    with pytest.raises(ViewError, match="tile"):
        map_source(d / "r.zarr", "svd", "scores", unbinned)
    simulate(tmp_path / "other.zarr", preset="am_aluminum", tiles=(1, 3), tile_shape=(16, 16), channels=512, seed=4,
             progress=False)
    with pytest.raises(ViewError, match="another store"):
        map_source(d / "r.zarr", "svd", "scores", make_plan(analysis_view(xsi_dask.open_montage(tmp_path / "other.zarr"),
                                                                          bin=2)))
