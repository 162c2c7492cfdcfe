"""The labeled xarray view: dims, coordinates, laziness and sums against the store's own summaries."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import sparse

import xsi_dask

from .conftest import EDS, reference_si

pytestmark = pytest.mark.usefixtures("needs_data")


@pytest.fixture(scope="module")
def jeol_4x4(tmp_path_factory):
    out = tmp_path_factory.mktemp("jeol") / "jeol.zarr"
    return xsi_dask.ingest(EDS / "jeol_View000_0000006.pts", out, split="4x4", progress=False)


def test_dims_and_coords(jeol_4x4):
    m = xsi_dask.open_montage(jeol_4x4.path)
    assert m.dims == ("tile", "y", "x", "energy")
    assert m.shape == (16, 128, 128, 4096)
    assert isinstance(m.data, da.Array)
    assert m.data.chunks == ((1,) * 16, (128,), (128,), (4096,))
    assert isinstance(m.data._meta, sparse.COO)
    assert m["energy"].attrs["units"] == "keV"
    assert m["x"].attrs["units"] == "µm"
    assert m["x"].values[1] == pytest.approx(0.00869140625)
    assert list(m["row"].values) == [r for r in range(4) for _ in range(4)]
    assert list(m["col"].values) == [c for _ in range(4) for c in range(4)]
    assert m["stage_x"].values[1] == pytest.approx(128 * 0.00869140625)


def test_sum_energy_equals_count_map(jeol_4x4):
    m = xsi_dask.open_montage(jeol_4x4.path)
    lazy = m.sum("energy")
    assert isinstance(lazy.data, da.Array)  # still lazy
    cm = lazy.compute().data.todense()
    for t in range(16):
        np.testing.assert_array_equal(cm[t], jeol_4x4.count_map(t))


def test_sel_and_isel_match_dense(jeol_4x4):
    data, _ = reference_si("jeol_View000_0000006.pts")
    m = xsi_dask.open_montage(jeol_4x4.path)
    sub = m.isel(tile=[5, 10]).sel(energy=slice(5.0, 9.0))
    assert isinstance(sub.data, da.Array)
    e = m["energy"].values
    keep = (e >= 5.0) & (e <= 9.0)
    got = sub.data.compute().todense()
    np.testing.assert_array_equal(got[0], data[128:256, 128:256][:, :, keep])
    np.testing.assert_array_equal(got[1], data[256:384, 256:384][:, :, keep])
    assert sub.xsi.tiles == [5, 10]


def test_csr_accessor(jeol_4x4):
    m = xsi_dask.open_montage(jeol_4x4.path)
    csr = m.xsi.tile_csr(3)
    assert csr.shape == (128 * 128, 4096)
    assert csr.indices.dtype == np.uint16
    assert csr.nnz == jeol_4x4.tiles[3]["nnz"]
