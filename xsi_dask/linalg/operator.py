"""The Poisson-scaled (Keenan-Kotula) montage operator, applied tile by tile.

Unfold the montage to D (N pixels x M channels), rows grouped by tile. The
scaled matrix is D~ = G^-1/2 D H^-1/2 with g the per-pixel and h the per-channel
total counts (HyperSpy's ``normalize_poissonian_noise`` convention; a zero total
gives weight 0). G and H are diagonal, so D~ is never formed: the weights are
applied to the small dense factors inside the per-tile products. Optional
mean-centring subtracts the column means mu of D~ as a rank-one correction.

References
----------
Keenan, M. R. & Kotula, P. G. (2004). Accounting for Poisson noise in the
multivariate analysis of ToF-SIMS spectrum images. Surf. Interface Anal. 36,
203-212. doi:10.1002/sia.1657
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import dask
import numpy as np
import scipy.sparse as sp
import xarray as xr

from ..cluster.passes import worker_count
from ..errors import DecompositionError
from ..io.store import MontageStore, tile_cache
from ..montage.view import montage_store
from ..engine.backends import _numba_kernels as kernels

__all__ = ["PoissonOperator", "tile_pixel_weights", "split_units"]


def tile_pixel_weights(store: MontageStore, t: int, poisson: bool, cache: bool = True) -> np.ndarray:
    """1/g per pixel of tile ``t`` (0 where g = 0), or ones; cached per process with the tile."""

    def load():
        if not poisson:
            return np.ones(store.pixels_per_tile)
        g = store.count_map(t).reshape(-1).astype(np.float64)
        s = np.zeros_like(g)
        np.divide(1.0, g, out=s, where=g > 0)
        return s

    if not cache:
        return load()
    return tile_cache.get((str(store.path.resolve()), store.uuid, t, "pixel-weights", poisson), load)


# ---- tile tasks: module-level functions, so they pickle by reference ----

def split_units(tiles: list[int], pixels: int, workers: int) -> list[tuple[int, int, int]]:
    """Work units (tile, first pixel, end pixel) of a pass: whole tiles, or equal row blocks when there are fewer tiles than workers."""
    n = len(tiles)
    parts = workers // math.gcd(n, workers) if 0 < n < workers else 1  # n * parts is a multiple of workers
    return [(t, i * pixels // parts, (i + 1) * pixels // parts) for t in tiles for i in range(parts)]


def _apply_task(unit: tuple[int, int, int], path: str, poisson: bool, Xh: np.ndarray, with_stats: bool, cache: bool = True):
    """(D_u^T S_u D_u Xh, stats) for one unit (pixels a:b of tile t); stats = [D^T sqrt(s), sum_i d^2 s] per channel."""
    t, a, b = unit
    store = MontageStore.cached(path)
    csr = store.tile_csr(t, cache=cache)
    s = tile_pixel_weights(store, t, poisson, cache)[a:b]
    ip = csr.indptr[a : b + 1]  # the kernels index data by the pointers themselves: a row block is a view
    Y = np.zeros_like(Xh)
    kernels.gram_apply(ip, csr.indices, csr.data, s, Xh, Y)
    stats = None
    if with_stats:
        stats = np.zeros((2, store.channels))
        kernels.scaled_colsum_frob(ip, csr.indices, csr.data, s, stats)
    return Y, stats


def _gram_task(unit: tuple[int, int, int], path: str, poisson: bool, cache: bool = True):
    """(D_u^T S_u D_u as dense channels x channels, stats) for one unit (pixels a:b of tile t)."""
    t, a, b = unit
    store = MontageStore.cached(path)
    csr = store.tile_csr(t, cache=cache)
    s = tile_pixel_weights(store, t, poisson, cache)[a:b]
    ip = csr.indptr[a : b + 1]
    lo, hi = int(ip[0]), int(ip[-1])
    D = sp.csr_array((csr.data[lo:hi].astype(np.float64), csr.indices[lo:hi].astype(np.int32), (ip - lo).astype(np.int64)),
                     shape=(b - a, store.channels))
    G = (D.T @ D.multiply(s[:, None]).tocsr()).toarray()
    stats = np.zeros((2, store.channels))
    kernels.scaled_colsum_frob(ip, csr.indices, csr.data, s, stats)
    return G, stats


def _scores_task(t: int, path: str, poisson: bool, Vh: np.ndarray, shift: np.ndarray | None, cache: bool = True):
    """Unweighted scores of one tile: D_t Vh - sqrt(g) shift, shape (1, y, x, k)."""
    store = MontageStore.cached(path)
    csr = store.tile_csr(t, cache=cache)
    out = np.empty((store.pixels_per_tile, Vh.shape[1]))
    kernels.csr_dense(csr.indptr, csr.indices, csr.data, np.ascontiguousarray(Vh), out)
    if shift is not None:
        g = store.count_map(t).reshape(-1).astype(np.float64) if poisson else np.ones(store.pixels_per_tile)
        out -= np.sqrt(g)[:, None] * shift[None, :]
    return out.reshape(1, *store.tile_shape, Vh.shape[1])


@dataclass
class PoissonOperator:
    """D~ over the tiles of a montage view, with the statistics gathered on the way.

    Parameters
    ----------
    montage : xarray.DataArray
        From :func:`xsi_dask.open_montage`, possibly ``isel(tile=...)``. The
        energy, y and x axes must be whole.
    poisson : bool
        Apply Keenan-Kotula scaling (default in the decompositions).
    center : bool
        Subtract the column (channel) means of D~ as a rank-one correction.

    Raises
    ------
    DecompositionError
        The view was sliced along energy, y or x.
    """

    montage: xr.DataArray
    poisson: bool = True
    center: bool = False
    store: MontageStore = field(init=False)
    tiles: list[int] = field(init=False)
    units: list[tuple[int, int, int]] = field(init=False)
    h: np.ndarray = field(init=False)
    wh: np.ndarray = field(init=False)
    colsum: np.ndarray | None = field(init=False, default=None)
    frob2: float | None = field(init=False, default=None)
    passes: int = field(init=False, default=0)
    cache: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        self.store = montage_store(self.montage)
        st = self.store
        want = {"energy": st.channels, "y": st.tile_shape[0], "x": st.tile_shape[1]}
        cut = {d: (self.montage.sizes.get(d), n) for d, n in want.items() if self.montage.sizes.get(d) != n}
        if cut:
            d, (got, n) = next(iter(cut.items()))
            raise DecompositionError(
                f"the montage view has {got} of the store's {n} points along {d!r}; the "
                "decompositions run on whole tiles and the whole energy axis (select tiles "
                "with isel(tile=...), energy ranges are not supported yet)"
            )
        self.tiles = self.montage.xsi.tiles
        # tiles stay in the workers' memory between passes only if every worker's share fits
        workers = worker_count()
        self.cache = st.cache_fits(self.tiles, workers)
        # one task per tile, or row blocks of the tiles when there are fewer tiles than workers
        self.units = split_units(self.tiles, st.pixels_per_tile, workers)
        self.h = np.sum([st.sum_spectrum(t) for t in self.tiles], axis=0).astype(np.float64)
        if self.poisson:
            self.wh = np.zeros_like(self.h)
            np.divide(1.0, np.sqrt(self.h), out=self.wh, where=self.h > 0)
        else:
            self.wh = np.ones_like(self.h)

    @property
    def path(self) -> str:
        return str(self.store.path)

    @property
    def n_pixels(self) -> int:
        return len(self.tiles) * self.store.pixels_per_tile

    @property
    def n_channels(self) -> int:
        return self.store.channels

    @property
    def nnz(self) -> int:
        return sum(int(self.store.tiles[t]["nnz"]) for t in self.tiles)

    @property
    def mean(self) -> np.ndarray | None:
        """Column means mu of D~ (channels,), known after the first pass; None without centring."""
        if not self.center or self.colsum is None:
            return None
        return self.wh * self.colsum / self.n_pixels

    def _take_stats(self, stats: np.ndarray) -> None:
        self.colsum = stats[0]
        frob = float(np.dot(stats[1], self.wh**2))
        if self.center:
            mu = self.wh * stats[0] / self.n_pixels
            frob -= self.n_pixels * float(mu @ mu)
        self.frob2 = frob

    # ---- passes ----

    def apply_delayed(self, X: np.ndarray):
        """Delayed (Y_partial_sum, stats) of D~^T D~ X (before the centring correction)."""
        from ..cluster.passes import map_tiles, tree_sum

        Xh = np.ascontiguousarray(self.wh[:, None] * X)
        parts = map_tiles(_apply_task, self.units, self.path, self.poisson, Xh, self.colsum is None, self.cache)
        return tree_sum(parts)

    def finish_apply(self, X: np.ndarray, Y: np.ndarray, stats: np.ndarray | None) -> np.ndarray:
        """Channel weights and centring on a reduced D^T S D Xh."""
        self.passes += 1
        if stats is not None:
            self._take_stats(stats)
        Y = self.wh[:, None] * Y
        if self.center:
            mu = self.mean
            Y -= self.n_pixels * np.outer(mu, mu @ X)
        return Y

    def apply(self, X: np.ndarray, *, progress: bool = False, label: str = "") -> np.ndarray:
        """Y = D~^T D~ X (channels x l), one pass over the tiles."""
        from ..cluster.passes import compute

        ((Y, stats),) = compute(self.apply_delayed(X), progress=progress, label=label)
        return self.finish_apply(X, Y, stats)

    def gram(self, *, progress: bool = False) -> np.ndarray:
        """A = D~^T D~ (channels x channels), one pass over the tiles."""
        from ..cluster.passes import compute, map_tiles, tree_sum

        parts = map_tiles(_gram_task, self.units, self.path, self.poisson, self.cache)
        ((G, stats),) = compute(tree_sum(parts), progress=progress, label="gram pass")
        self.passes += 1
        self._take_stats(stats)
        A = self.wh[:, None] * G * self.wh[None, :]
        if self.center:
            mu = self.mean
            A -= self.n_pixels * np.outer(mu, mu)
        return A

    def scores(self, V: np.ndarray) -> "dask.array.Array":
        """Lazy unweighted scores G^1/2 D~c V, dims (tile, y, x, k), one chunk per tile."""
        import dask.array as da

        Vh = self.wh[:, None] * V
        mu = self.mean
        shift = None if mu is None else mu @ V
        Vd = dask.delayed(np.ascontiguousarray(Vh), traverse=False)
        h, w = self.store.tile_shape
        k = V.shape[1]
        blocks = [
            da.from_delayed(
                dask.delayed(_scores_task, pure=True)(t, self.path, self.poisson, Vd, shift, self.cache),
                shape=(1, h, w, k), dtype=np.float64,
            )
            for t in self.tiles
        ]
        return da.concatenate(blocks, axis=0)
