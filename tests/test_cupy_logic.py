"""The cupy backend's host-side logic on NumPy/SciPy stand-ins for CuPy: runs without a GPU (CI).

The stand-ins map CuPy's array functions to NumPy's, ``cupyx.scipy.sparse`` to
``scipy.sparse`` and ``cupyx.cusparse.spmm``/``spmv`` to SciPy's products (the
transpose flag as ``A.T``); the one CUDA kernel (WH at the stored values) is
replaced by what its source computes. So this checks everything of
``_cupy.py`` but the device: the CSR it builds from the compact arrays and a
row block's pointers, the device cache's rules (read-only arrays kept while
they live, writable ones never), the float32 option and the outputs' layout,
against the numba backend. ``tests/test_gpu.py`` checks the real thing on a GPU.
"""

from __future__ import annotations

import gc
import importlib
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

from ._kernels import assert_kernels_equal, random_case


def _fake_cupy() -> dict[str, types.ModuleType]:
    cp = types.ModuleType("cupy")
    for name in ("asarray", "ascontiguousarray", "asfortranarray", "zeros", "sqrt", "log", "maximum", "where", "stack",
                 "searchsorted", "arange", "sum", "int32", "int64", "float32", "float64", "ndarray"):
        setattr(cp, name, getattr(np, name))
    cp.asnumpy = np.asarray

    class _Device:
        mem_info = (2**33, 2**34)

    cp.cuda = types.SimpleNamespace(Device=_Device)

    class ElementwiseKernel:  # the SDDMM's source, in NumPy: the dot of W[r] and Ht[c], clipped below at eps
        def __init__(self, *args):
            pass

        def __call__(self, r, c, W, Ht, k, eps):
            acc = np.einsum("pk,pk->p", W[r], Ht[c])
            return np.where(acc < eps, eps, acc).astype(W.dtype)

    cp.ElementwiseKernel = ElementwiseKernel
    cupyx = types.ModuleType("cupyx")
    cusparse = types.ModuleType("cupyx.cusparse")

    def spmm(a, b, transa=False):
        assert b.flags.f_contiguous and a._has_canonical_format
        return np.asfortranarray((a.T if transa else a) @ b)

    def spmv(a, x, transa=False):
        return (a.T if transa else a) @ x

    cusparse.spmm, cusparse.spmv = spmm, spmv
    scipy_mod = types.ModuleType("cupyx.scipy")
    sparse_mod = types.ModuleType("cupyx.scipy.sparse")
    sparse_mod.csr_matrix = sp.csr_matrix
    cupyx.cusparse, cupyx.scipy, scipy_mod.sparse = cusparse, scipy_mod, sparse_mod
    return {"cupy": cp, "cupyx": cupyx, "cupyx.cusparse": cusparse, "cupyx.scipy": scipy_mod, "cupyx.scipy.sparse": sparse_mod}


@pytest.fixture
def backend(monkeypatch):
    """The cupy backend module imported over the stand-ins (removed again after the test)."""
    for name, mod in _fake_cupy().items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "xsi_dask.engine.backends._cupy", raising=False)
    module = importlib.import_module("xsi_dask.engine.backends._cupy")
    yield module
    sys.modules.pop("xsi_dask.engine.backends._cupy", None)


@pytest.mark.parametrize("read_only", [False, True], ids=["uploaded", "mirrored"])
@pytest.mark.parametrize("block", [None, (23, 151)], ids=["tile", "row-block"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_cupy_kernels_equal_numba_on_stand_ins(backend, read_only, block, dtype):
    from xsi_dask.engine.backends import get_backend

    indptr, indices, data, rng = random_case()
    for a in (indptr, indices, data):
        a.flags.writeable = not read_only
    ptr = indptr if block is None else indptr[block[0] : block[1] + 1]
    assert_kernels_equal(backend.configured(dtype), get_backend("numba"), ptr, indices, data, 300, rng,
                         1e-12 if dtype == "float64" else 1e-5)


def test_the_device_cache_keeps_read_only_arrays_while_they_live_and_never_writable_ones(backend):
    cache = backend.device_cache
    cache.clear()
    indptr, indices, data, rng = random_case(seed=1)
    Xh = rng.standard_normal((300, 3))
    backend.csr_dense(indptr, indices, data, Xh)
    assert cache.nbytes == 0  # writable: uploaded per call, nothing kept
    for a in (indptr, indices, data):
        a.flags.writeable = False
    first = backend.csr_dense(indptr, indices, data, Xh)
    kept, misses = cache.nbytes, cache.misses
    assert kept > 0
    np.testing.assert_array_equal(backend.csr_dense(indptr, indices, data, Xh), first)
    assert cache.misses == misses and cache.hits >= 4  # indices, counts, pointers and rows from the cache
    del indptr, indices, data, a
    gc.collect()
    assert cache.nbytes == 0  # dropped with the host arrays: a new array at the same address cannot hit


def test_the_device_cache_stays_within_its_share_of_the_gpu(backend):
    import dask

    cache = backend.device_cache
    cache.clear()
    keep = []
    with dask.config.set({"xsi-dask.gpu-cache": 30_000 / 2**34}):  # 30 kB of the stand-in's 16 GiB
        for seed in range(6):
            indptr, indices, data, rng = random_case(seed=seed)
            for a in (indptr, indices, data):
                a.flags.writeable = False
            keep.append((indptr, indices, data))
            backend.csr_dense(indptr, indices, data, rng.standard_normal((300, 2)))
            assert cache.nbytes <= 30_000
    assert cache.nbytes > 0
