"""The dense -> CSR kernel against SciPy's own conversion."""

import numpy as np
import pytest
import scipy.sparse as sp

from xsi_dask.io._csr import dense_to_csr


@pytest.mark.parametrize(
    "dtype,channels",
    [(np.uint8, 2048), (np.uint16, 4096), (np.int32, 100), (np.float32, 64), (np.uint8, 37), (np.uint64, 8)],
)
def test_matches_scipy(dtype, channels):
    rng = np.random.default_rng(0)
    a = (rng.random((9, 11, channels)) < 0.02) * rng.integers(1, 200, (9, 11, channels))
    a = a.astype(dtype)
    y0, y1, x0, x1 = 2, 7, 3, 10
    indptr, indices, values = dense_to_csr(a, y0, y1, x0, x1)
    ref = sp.csr_array(a[y0:y1, x0:x1].reshape(-1, channels))
    ref.sort_indices()
    np.testing.assert_array_equal(indptr, ref.indptr)
    np.testing.assert_array_equal(indices, ref.indices)
    np.testing.assert_array_equal(values, ref.data)
    assert values.dtype == dtype


def test_growth_beyond_initial_capacity():
    # a dense block forces the output buffers to grow several times
    a = np.arange(1, 1 + 4 * 4 * 512, dtype=np.uint16).reshape(4, 4, 512)
    indptr, indices, values = dense_to_csr(a)
    assert indptr[-1] == a.size
    np.testing.assert_array_equal(values, a.reshape(-1))
    np.testing.assert_array_equal(indices, np.tile(np.arange(512), 16))
