"""A tile as the view sees it: the kept channels, the pixels binned, still in CSR.

The plan of an energy range, a channel mask or a binned view reads each stored
tile once, drops the channels outside the view (their indices renumbered to the
view's channels), sums the counts of each ``b x b`` block of pixels into one
row, and hands the kernels that CSR (cached on the worker like a stored tile).
Nothing is densified: the cost is a pass over the tile's non-zeros and, when
binning, a sort of each binned row's channel indices.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..io.store import MontageStore, TileCSR, csr_dtypes, tile_cache

__all__ = ["channel_runs", "runs_index", "transform_csr", "view_tile_csr", "view_pixel_totals"]

Runs = tuple[tuple[int, int], ...]


def channel_runs(channels) -> Runs:
    """Store channel indices (strictly increasing) as runs ``((start, stop), ...)``, stop exclusive."""
    idx = np.asarray(channels, dtype=np.int64)
    if idx.size == 0:
        return ()
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [idx.size]])
    return tuple((int(idx[a]), int(idx[b - 1]) + 1) for a, b in zip(starts, stops))


def runs_index(runs: Runs) -> np.ndarray:
    """The store channel indices of ``runs``, int64."""
    if not runs:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in runs])


def _smallest_uint(maximum: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if maximum <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def transform_csr(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, tile_shape: tuple[int, int],
                  n_channels: int, runs: Runs | None, b: int) -> TileCSR:
    """The CSR of a tile with only the channels of ``runs`` (renumbered 0..) and ``b x b`` pixel blocks summed.

    Parameters
    ----------
    indptr, indices, data : ndarray
        The stored tile (pixels row-major, ``tile_shape``), compact dtypes.
    tile_shape : (int, int)
        Pixels (y, x) of the stored tile; both divisible by ``b``.
    n_channels : int
        Channels of the store.
    runs : tuple or None
        Kept channels as ``(start, stop)`` runs (None: all).
    b : int
        Binning factor (1: none).

    Returns
    -------
    TileCSR
        Shape (pixels / b^2, kept channels); channel indices sorted within each
        row; compact dtypes again (counts widened where the sums need it).
    """
    h, w = tile_shape
    M = n_channels
    if runs is not None:
        kept = runs_index(runs)
        lut = np.full(n_channels, -1, dtype=np.int32)
        lut[kept] = np.arange(kept.size, dtype=np.int32)
        new = lut[indices]
        keep = new >= 0
        csum = np.zeros(keep.size + 1, dtype=np.int64)
        np.cumsum(keep, out=csum[1:])
        indptr = csum[np.asarray(indptr, dtype=np.int64)]
        indices, data = new[keep], data[keep]
        M = int(kept.size)
    rows = h * w
    if b > 1:
        bh, bw = h // b, w // b
        pix = np.repeat(np.arange(rows, dtype=np.int64), np.diff(np.asarray(indptr, dtype=np.int64)))
        y, x = np.divmod(pix, w)
        brow = (y // b) * bw + x // b
        wide = data.astype(np.uint64 if data.dtype == np.uint64 else np.int64)
        m = sp.coo_array((wide, (brow, np.asarray(indices, dtype=np.int64))), shape=(bh * bw, M)).tocsr()
        m.sum_duplicates()
        m.sort_indices()
        indptr, indices, data = m.indptr, m.indices, m.data
        rows = bh * bw
    idt, pdt = csr_dtypes(int(data.size), M)
    ddt = _smallest_uint(int(data.max()) if data.size else 0)
    return TileCSR(np.ascontiguousarray(indptr, dtype=pdt), np.ascontiguousarray(indices, dtype=idt),
                   np.ascontiguousarray(data, dtype=ddt), (rows, M))


def view_tile_csr(store: MontageStore, t: int, runs: Runs | None, b: int, cache: bool = True) -> TileCSR:
    """Tile ``t`` of ``store`` as the view sees it (the stored tile itself without channel selection or binning).

    Cached per process under its own key (the stored tile is read uncached
    and dropped once transformed, so a worker holds one copy).
    """
    if runs is None and b == 1:
        return store.tile_csr(t, cache=cache)

    def load() -> TileCSR:
        csr = store.tile_csr(t, cache=False)
        return transform_csr(csr.indptr, csr.indices, csr.data, store.tile_shape, store.channels, runs, b)

    if not cache:
        return load()
    return tile_cache.get((str(store.path), store.uuid, t, "view", runs, b), load)


def view_pixel_totals(store: MontageStore, t: int, runs: Runs | None, b: int, cache: bool = True) -> np.ndarray:
    """Counts per (binned) pixel of tile ``t`` over the view's channels, float64 (pixels,)."""
    if runs is None:
        g = store.count_map(t).astype(np.float64)
        if b > 1:
            h, w = g.shape
            g = g.reshape(h // b, b, w // b, b).sum(axis=(1, 3))
        return g.reshape(-1)
    csr = view_tile_csr(store, t, runs, b, cache)
    csum = np.zeros(csr.data.size + 1, dtype=np.float64)
    np.cumsum(csr.data, out=csum[1:])
    ip = np.asarray(csr.indptr, dtype=np.int64)
    return csum[ip[1:]] - csum[ip[:-1]]
