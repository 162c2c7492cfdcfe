"""Soak: many analyses in one process keep memory flat (store handles and caches are bounded)."""

from __future__ import annotations

import gc
import shutil

import dask
import numpy as np
import psutil
import pytest

import xsi_dask
from xsi_dask.io import store as store_mod
from xsi_dask.testing.simulate import simulate


def _reset_peak() -> None:
    """Reset the process's peak resident memory (VmHWM) where Linux allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak() -> int:
    """Peak resident bytes since the last reset (VmHWM), else the current resident size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return psutil.Process().memory_info().rss


@pytest.mark.slow  # ~30 s: make test-all
def test_fifty_decompositions_in_one_process_keep_memory_flat(tmp_path):
    """50 decompositions over 25 stores (each seen twice): the peak resident memory of each of the last 10
    stays within 10 % of the first 10's, and at most 16 store handles stay open."""
    base = simulate(tmp_path / "s0.zarr", tiles="1x2", tile_shape="16x16", channels=128, counts_per_pixel=20, seed=0,
                    progress=False)
    stores = [base] + [xsi_dask.MontageStore(shutil.copytree(base.path, tmp_path / f"s{i}.zarr")) for i in range(1, 25)]
    rss, values = [], []
    with dask.config.set(scheduler="sync"):
        for i in range(50):
            _reset_peak()
            ds = xsi_dask.decompose(xsi_dask.open_montage(stores[i % 25].path), 3, solver="gram")
            values.append(float(ds.singular_values.values[1]))
            del ds
            gc.collect()
            rss.append(_peak())
    first, last = np.mean(rss[:10]), np.mean(rss[-10:])
    assert last <= 1.10 * first, (first / 2**20, last / 2**20)
    assert len(store_mod._open_stores) <= store_mod._MAX_OPEN_STORES
    assert values[:25] == values[25:]  # the same store twice gives the same result, bounded handles or not
