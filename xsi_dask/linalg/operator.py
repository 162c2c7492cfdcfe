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

from dataclasses import dataclass, field

import dask.array as da
import numpy as np

from ..engine import Block, Plan

__all__ = ["PoissonOperator"]


# ---- unit tasks: module-level functions, so they pickle by reference ----

#: pixel totals at or above this share the last bin of the histogram the first pass gathers
TOTALS_CAP = 2**16


def _totals_histogram(b: Block) -> np.ndarray:
    """Counts of the unit's (binned) pixels by total over the view's channels: bin g for g < cap, the last bin
    for g >= cap; int64 (cap + 1,). Summed over the units, it gives the pixel-total percentiles exactly."""
    g = b.counts_per_pixel().astype(np.int64)
    return np.bincount(np.minimum(g, TOTALS_CAP), minlength=TOTALS_CAP + 1)


def _apply_task(b: Block, poisson: bool, Xh: np.ndarray, with_stats: bool):
    """(D_u^T S_u D_u Xh, stats) for one unit; stats = ([D^T sqrt(s), sum_i d^2 s] per channel, the pixel-total
    histogram), or None."""
    s = b.pixel_weights(poisson)
    Y = b.kernels.gram_apply(*b.csr, s, Xh)
    stats = (b.kernels.colsum_frob(*b.csr, s, Xh.shape[0]), _totals_histogram(b)) if with_stats else None
    return Y, stats


def _gram_task(b: Block, poisson: bool, channels: int):
    """(D_u^T S_u D_u as dense channels x channels, stats) for one unit."""
    s = b.pixel_weights(poisson)
    return b.kernels.gram_block(*b.csr, s, channels), (b.kernels.colsum_frob(*b.csr, s, channels), _totals_histogram(b))


def _scores_task(blocks: list[Block], poisson: bool, Vh: np.ndarray, shift: np.ndarray | None, with_counts: bool = False):
    """Unweighted scores of one tile: D_t Vh - sqrt(g) shift, shape (1, y, x, k); with ``with_counts`` the pixel
    totals g over the view's channels as one more column, (1, y, x, k + 1)."""
    out = np.concatenate([b.kernels.csr_dense(*b.csr, Vh) for b in blocks])
    if shift is not None:
        g = np.concatenate([b.counts_per_pixel() if poisson else np.ones(b.rows) for b in blocks])
        out -= np.sqrt(g)[:, None] * shift[None, :]
    if with_counts:
        out = np.concatenate([out, np.concatenate([b.counts_per_pixel() for b in blocks])[:, None]], axis=1)
    return out.reshape(1, *blocks[0].tile_shape, out.shape[1])


@dataclass
class PoissonOperator:
    """D~ over the tiles of a plan, with the statistics gathered on the way.

    Parameters
    ----------
    plan : xsi_dask.engine.Plan
        From :func:`xsi_dask.engine.make_plan` on the montage view; every
        product is a reduction pass of that plan (logged there).
    poisson : bool
        Apply Keenan-Kotula scaling (default in the decompositions).
    center : bool
        Subtract the column (channel) means of D~ as a rank-one correction.

    After the first pass: ``colsum`` (channels,) the column sums of the scaled
    counts, ``frob2`` the squared Frobenius norm of D~ (centred if so), and
    ``totals_histogram`` (:data:`TOTALS_CAP` + 1,) int64, how many (binned)
    pixels have each total count over the view's channels (the noise floor of
    :mod:`xsi_dask.decomposition._rank` reads its percentiles).
    """

    plan: Plan
    poisson: bool = True
    center: bool = False
    h: np.ndarray = field(init=False)
    wh: np.ndarray = field(init=False)
    colsum: np.ndarray | None = field(init=False, default=None)
    totals_histogram: np.ndarray | None = field(init=False, default=None)
    frob2: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.h = self.plan.sum_spectrum()
        if self.poisson:
            self.wh = np.zeros_like(self.h)
            np.divide(1.0, np.sqrt(self.h), out=self.wh, where=self.h > 0)
        else:
            self.wh = np.ones_like(self.h)

    @property
    def n_pixels(self) -> int:
        return self.plan.n_pixels

    @property
    def n_channels(self) -> int:
        return self.plan.n_channels

    @property
    def mean(self) -> np.ndarray | None:
        """Column means mu of D~ (channels,), known after the first pass; None without centring."""
        if not self.center or self.colsum is None:
            return None
        return self.wh * self.colsum / self.n_pixels

    def _take_stats(self, stats: tuple[np.ndarray, np.ndarray]) -> None:
        stats, self.totals_histogram = stats
        self.colsum = stats[0]
        frob = float(np.dot(stats[1], self.wh**2))
        if self.center:
            mu = self.wh * stats[0] / self.n_pixels
            frob -= self.n_pixels * float(mu @ mu)
        self.frob2 = frob

    # ---- passes ----

    def apply(self, X: np.ndarray, *, label: str = "D~^T D~ X") -> np.ndarray:
        """Y = D~^T D~ X (channels x l), one reduction pass over the tiles."""
        Xh = np.ascontiguousarray(self.wh[:, None] * X)
        Y, stats = self.plan.reduce(_apply_task, self.poisson, Xh, self.colsum is None, label=label)
        if stats is not None:
            self._take_stats(stats)
        Y = self.wh[:, None] * Y
        if self.center:
            mu = self.mean
            Y -= self.n_pixels * np.outer(mu, mu @ X)
        return Y

    def gram(self) -> np.ndarray:
        """A = D~^T D~ (channels x channels), one reduction pass over the tiles."""
        G, stats = self.plan.reduce(_gram_task, self.poisson, self.n_channels, label="gram D~^T D~")
        self._take_stats(stats)
        A = self.wh[:, None] * G * self.wh[None, :]
        if self.center:
            mu = self.mean
            A -= self.n_pixels * np.outer(mu, mu)
        return A

    def scores(self, V: np.ndarray, *, with_counts: bool = False) -> da.Array | tuple[da.Array, da.Array]:
        """Lazy unweighted scores G^1/2 D~c V, dims (tile, y, x, k), one chunk per tile (a map pass).

        With ``with_counts`` also the pixel totals g (tile, y, x) over the view's
        channels, from the same tasks (each tile is read once for both).
        """
        Vh = np.ascontiguousarray(self.wh[:, None] * V)
        mu = self.mean
        shift = None if mu is None else mu @ V
        k = V.shape[1]
        if not with_counts:
            return self.plan.map(_scores_task, self.poisson, Vh, shift, tail=(k,), name="scores")
        both = self.plan.map(_scores_task, self.poisson, Vh, shift, True, tail=(k + 1,), name="scores")
        return both[..., :k], both[..., k]
