"""Kernel-backend comparisons shared by tests/test_cupy_logic.py (stand-ins) and tests/test_gpu.py (a GPU)."""

from __future__ import annotations

import numpy as np
import pytest


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def random_case(seed: int = 0, rows: int = 200, channels: int = 300):
    """A random tile in the store's compact dtypes, one pixel empty: (indptr, indices, data, rng)."""
    rng = np.random.default_rng(seed)
    nnz_row = rng.integers(0, 30, rows)
    nnz_row[5] = 0
    indptr = np.concatenate([[0], np.cumsum(nnz_row)]).astype(np.int64)
    indices = np.concatenate([np.sort(rng.choice(channels, n, replace=False)) for n in nnz_row]).astype(np.uint16)
    data = rng.integers(1, 200, indptr[-1]).astype(np.uint8)
    return indptr, indices, data, rng


def assert_kernels_equal(gpu, cpu, ptr, indices, data, channels: int, rng, tol: float, k: int = 5) -> None:
    """Every kernel of ``gpu`` equals ``cpu``'s (relative ``tol``) on the rows ``ptr`` addresses, called twice (the
    second from the device cache where the arrays are read-only); outputs float64, C-ordered."""
    rows = ptr.size - 1
    s, Xh = rng.uniform(0.1, 2.0, rows), rng.standard_normal((channels, 7))
    W, Ht = rng.uniform(0.1, 1.0, (rows, k)), rng.uniform(0.01, 1.0, (channels, k))
    denom, sqrt_s = rng.uniform(1.0, 5.0, k), rng.uniform(0.5, 1.5, k)
    for _ in range(2):
        for name, args in (("gram_apply", (s, Xh)), ("colsum_frob", (s, channels)), ("gram_block", (s, channels)),
                           ("csr_dense", (Xh,))):
            got = getattr(gpu, name)(ptr, indices, data, *args)
            assert got.dtype == np.float64 and got.flags.c_contiguous
            assert rel(got, getattr(cpu, name)(ptr, indices, data, *args)) < tol, name
        for lam, with_h, with_loss in ((0.0, True, True), (0.4, True, False), (0.0, False, False)):
            g, c = (b.kl_mu_step(ptr, indices, data, W.copy(), Ht, denom, with_loss=with_loss, lam=lam, sqrt_s=sqrt_s,
                                 with_h=with_h) for b in (gpu, cpu))
            for x, y in zip(g[:4], c[:4]):
                assert rel(x, y) < tol
            assert g[4] == pytest.approx(c[4], rel=tol, abs=1e-9)
        g, c = (b.fro_mu_step(ptr, indices, data, W.copy(), Ht, Ht.T @ Ht) for b in (gpu, cpu))
        for x, y in zip(g[:3], c[:3]):
            assert rel(x, y) < tol
        assert g[3] == pytest.approx(c[3], rel=tol)
        assert gpu.nmf_loss_terms(ptr, indices, data, W, Ht) == pytest.approx(cpu.nmf_loss_terms(ptr, indices, data, W, Ht),
                                                                               rel=tol)
