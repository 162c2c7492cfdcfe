"""How many components of the Poisson-scaled montage stand above the noise: :func:`significance`.

The scaled matrix D~ = G^-1/2 D H^-1/2 (N pixels x M channels, g and h the
per-pixel and per-channel totals, T the total counts) is correspondence
analysis' matrix: its largest singular value is exactly 1 (singular vectors
sqrt(g), sqrt(h): the mean spectrum), and every eigenvalue of D~^T D~ lies in
[0, 1]. Under the null "one spectrum everywhere", d_ij ~ Poisson(g_i h_j / T),
the scaled noise has variance 1/T in every entry: the Keenan-Kotula scaling is
then the biwhitening of Landa, Zhang & Kluger (2022), and the noise eigenvalues
follow the Marchenko-Pastur law with upper edge (sqrt(N) + sqrt(M))^2 / T.

What the edge assumes, and what we measured
-------------------------------------------
1. Entries close enough to Gaussian for the MP edge (many counts per pixel and
   per channel). On simulated montages (2x2 tiles of 64x64, 2048 channels,
   50 counts/px) the bulk of the noise eigenvalues follows MP (median within
   1 %), but the largest noise eigenvalue exceeds the edge by 2-20 % (in
   Poisson-null resamples of the grade91 preset, up to 50 %): it is *localized*
   on a channel holding 1-4 counts, whose column alone gives the eigenvalue
   ~ 1/g_i of the pixel i the count fell in (the sparse regime of
   Benaych-Georges, Bordenave & Knowles 2019, where the top eigenvalues follow
   the largest row/column weights rather than the bulk edge). The Tracy-Widom
   fluctuation of the edge (Johnstone 2001) is 1e-3 of the edge there, far
   below these, so it is included but does not carry the weight.
2. A rank-one mean. With several phases the noise variance is no longer the
   same in every entry (a phase's own lines are noisier than the mean predicts),
   which lifted the delocalized noise edge by ~10 % on the am_aluminum preset.
3. At a few counts per pixel, isolated (pixel, channel) pairs give eigenvalues
   exactly 1 and the MP edge means nothing (the README's JEOL map, 1.2
   counts/px: 148 eigenvalues above 0.9). A channel holding one count at a
   pixel with g counts gives an eigenvalue of at least 1/g.

So the noise edge used here is the largest of
``(1 + MARGIN) * (MP edge + TW_0.99 * TW scale)`` (MARGIN = 0.4, from 1. and 2.);
the *sparse floor* ``1 / g_low``, g_low the 1st percentile of the pixel totals
(pixels with counts): a count in a rare channel at one of the 1 % of pixels with
the fewest counts would otherwise stand above the edge; and, where the montage
holds at most :data:`NULL_MAX_COUNTS` counts (so that it costs seconds on the
client), a *Poisson null* (parametric parallel analysis, Horn 1965; Buja &
Eyuboglu 1992): the largest noise eigenvalue of :data:`NULL_DRAWS` resamples of
the rank-one model with the observed pixel and channel totals. The null holds
the sparse regime's outliers exactly (on the JEOL map binned 16x16 they reach
0.06-0.12, four times the MP edge) but not the excess of 2.; the margin covers
that. The margin trades sensitivity for robustness: a component is counted only
if it stands clearly above the noise. With ``center=False`` the mean spectrum
(eigenvalue 1) is always one component.

References
----------
Marchenko, V. A. & Pastur, L. A. (1967). Distribution of eigenvalues for some
sets of random matrices. Math. USSR-Sbornik 1, 457-483.
doi:10.1070/SM1967v001n04ABEH001994
Johnstone, I. M. (2001). On the distribution of the largest eigenvalue in
principal components analysis. Ann. Statist. 29, 295-327.
doi:10.1214/aos/1009210544
Landa, B., Zhang, T. T. C. H. & Kluger, Y. (2022). Biwhitening reveals the rank
of a count matrix. SIAM J. Math. Data Sci. 4, 1420-1446. doi:10.1137/21M1456807
Horn, J. L. (1965). A rationale and test for the number of factors in factor
analysis. Psychometrika 30, 179-185. doi:10.1007/BF02289447
Buja, A. & Eyuboglu, N. (1992). Remarks on parallel analysis. Multivariate
Behav. Res. 27, 509-540. doi:10.1207/s15327906mbr2704_2
Benaych-Georges, F., Bordenave, C. & Knowles, A. (2019). Largest eigenvalues of
sparse inhomogeneous Erdos-Renyi graphs. Ann. Probab. 47, 1653-1676.
doi:10.1214/18-AOP1293
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..errors import DecompositionError

__all__ = ["MARGIN", "noise_edge", "pixel_totals_summary", "poisson_null_edge", "rank_attrs", "roundoff_cut", "significance"]

#: Relative margin over the Marchenko-Pastur + Tracy-Widom edge (see the module docstring for its origin).
MARGIN = 0.4
#: 0.99 quantile of the Tracy-Widom law of order 1 (Johnstone 2001, table 1; real data).
TW1_Q99 = 2.0234
#: Percentile of the pixel totals that sets the sparse floor 1 / g_low.
LOW_PIXEL_PERCENTILE = 1.0
#: The Poisson null is drawn for montages of at most this many counts (one draw costs ~ 1 s per million).
NULL_MAX_COUNTS = 5_000_000
#: Resamples of the Poisson null; the edge is the largest of their top noise eigenvalues.
NULL_DRAWS = 3
#: Singular values computed per null draw (the mean, isolated blocks, and the top noise eigenvalue).
NULL_TOP = 8
#: Eigenvalues within this of 1 beyond the first are isolated (pixel, channel) blocks, not components.
ISOLATED_TOL = 1e-9


def _positive(value, name: str) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not math.isfinite(float(value)) or value <= 0:
        raise DecompositionError(f"{name} must be a positive number; got {value!r}")
    return float(value)


def noise_edge(n_pixels: int, n_channels: int, total_counts: float, *, low_pixel_counts: float | None = None,
               margin: float = MARGIN) -> float:
    """The largest eigenvalue of D~^T D~ that Poisson noise around one spectrum is expected to reach.

    Parameters
    ----------
    n_pixels : int
        N, pixels that hold counts (empty pixels are zero rows of D~).
    n_channels : int
        M, channels that hold counts.
    total_counts : float
        T, counts in the montage (the noise variance of D~ is 1/T per entry).
    low_pixel_counts : float, optional
        g_low, a low percentile of the pixel totals (see
        :func:`pixel_totals_summary`); sets the sparse floor 1 / g_low. None:
        no floor (the MP edge alone).
    margin : float
        Relative margin over the MP + Tracy-Widom edge (default :data:`MARGIN`).

    Returns
    -------
    float
        ``max((1 + margin) * (mu + TW1_Q99 * sigma) / T, 1 / g_low)`` with
        Johnstone's (2001) mu = (sqrt(n - 1) + sqrt(p))^2 and sigma =
        (sqrt(n - 1) + sqrt(p)) (1/sqrt(n - 1) + 1/sqrt(p))^(1/3), n >= p the
        larger and smaller of N and M: eigenvalue units of D~^T D~ (the mean
        component has eigenvalue 1). See the module docstring for the
        assumptions and their measured limits.

    Raises
    ------
    DecompositionError
        A count or total that is not a positive number.
    """
    N = _positive(n_pixels, "n_pixels")
    M = _positive(n_channels, "n_channels")
    T = _positive(total_counts, "total_counts")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise DecompositionError(f"margin must be a finite number >= 0; got {margin!r}")
    n, p = max(N, M), min(N, M)
    a, b = math.sqrt(max(n - 1.0, 1.0)), math.sqrt(p)
    mu = (a + b) ** 2
    sigma = (a + b) * (1.0 / a + 1.0 / b) ** (1.0 / 3.0)
    edge = (1.0 + margin) * (mu + TW1_Q99 * sigma) / T
    if low_pixel_counts is not None:
        edge = max(edge, 1.0 / _positive(low_pixel_counts, "low_pixel_counts"))
    return edge


def pixel_totals_summary(totals) -> dict:
    """What the noise edge needs from the pixel totals g: pixels with counts, their total and g_low.

    Parameters
    ----------
    totals : iterable of array_like
        Counts per pixel, any shapes (one array per tile, say).

    Returns
    -------
    dict
        ``n_pixels`` (pixels with counts), ``total_counts`` and
        ``low_pixel_counts`` (the :data:`LOW_PIXEL_PERCENTILE` percentile of
        the non-zero totals; None when no pixel holds a count).
    """
    parts = [np.asarray(t, dtype=np.float64).ravel() for t in totals]
    g = np.concatenate(parts) if parts else np.zeros(0)
    g = g[g > 0]
    low = float(np.percentile(g, LOW_PIXEL_PERCENTILE)) if g.size else None
    return {"n_pixels": int(g.size), "total_counts": float(g.sum()), "low_pixel_counts": low}


def roundoff_cut(eigenvalues) -> int:
    """How many leading eigenvalues stand above round-off: lambda > M * eps * lambda_max.

    Parameters
    ----------
    eigenvalues : array_like, shape (M,)
        Eigenvalues of the symmetric M x M gram D~^T D~, descending.

    Returns
    -------
    int
        The count r; ``eigenvalues[r:]`` are zero to the precision of ``eigh``
        (its backward error is about M eps ||A||), as on a rank-deficient map.
    """
    ev = np.asarray(eigenvalues, dtype=np.float64)
    if ev.size == 0 or not np.any(ev > 0):
        return 0
    tol = ev.size * np.finfo(np.float64).eps * float(ev.max())
    return int(np.count_nonzero(ev > tol))


def poisson_null_edge(pixel_totals, channel_totals, *, draws: int = NULL_DRAWS, seed: int = 0) -> float:
    """The largest noise eigenvalue of D~^T D~ over Poisson resamples of the one-spectrum model.

    Each draw spreads every pixel's g_i counts over the channels with
    probabilities h / T (multinomial: Poisson counts conditioned on the pixel
    totals), scales the draw as D~ and takes its second eigenvalue (the first is
    the mean, 1). Parametric parallel analysis (Horn 1965; Buja & Eyuboglu 1992).

    Parameters
    ----------
    pixel_totals : array_like of int, any shape
        g, counts per pixel (zeros are ignored: empty pixels are zero rows).
    channel_totals : array_like, shape (channels,)
        h, counts per channel.
    draws : int
        Resamples (default :data:`NULL_DRAWS`).
    seed : int
        The draws are deterministic for a seed.

    Returns
    -------
    float
        The largest second eigenvalue over the draws, eigenvalue units of D~^T D~.

    Notes
    -----
    Memory and time grow with the total counts T (one int64 per count and
    draw, and a sparse SVD of the draw): callers keep T <= :data:`NULL_MAX_COUNTS`.
    """
    g = np.asarray(pixel_totals).ravel()
    g = g[g > 0].astype(np.int64)
    h = np.asarray(channel_totals, dtype=np.float64)
    h = h[h > 0]
    if g.size < 3 or h.size < 3:
        return 0.0
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(g.size), g)
    best = 0.0
    for _ in range(int(draws)):
        cols = rng.choice(h.size, size=rows.size, p=h / h.sum())
        D = sp.csr_array((np.ones(rows.size), (rows, cols)), shape=(g.size, h.size))
        hd = np.bincount(cols, minlength=h.size).astype(np.float64)
        wh = np.divide(1.0, np.sqrt(hd), out=np.zeros_like(hd), where=hd > 0)
        Dt = sp.csr_array(D.multiply((1.0 / np.sqrt(g))[:, None]).multiply(wh[None, :]))
        v0 = np.full(min(Dt.shape), 1.0)  # a fixed start: deterministic
        k = min(NULL_TOP, min(Dt.shape) - 1)
        ev = np.sort(spla.svds(Dt, k=k, v0=v0, return_singular_vectors=False) ** 2)[::-1]
        noise = ev[1:][ev[1:] < 1.0 - ISOLATED_TOL]  # isolated blocks (eigenvalue 1) are never counted: see significance
        best = max(best, float(noise[0]) if noise.size else 1.0)
    return best


def significance(eigenvalues, *, n_pixels: int, n_channels: int, total_counts: float, complete: bool,
                 low_pixel_counts: float | None = None, null_edge: float | None = None, mean_component: bool = True,
                 margin: float = MARGIN) -> dict:
    """The number of components that stand above the Poisson noise floor.

    Parameters
    ----------
    eigenvalues : array_like, shape (k,)
        Squared singular values of D~ (eigenvalues of D~^T D~), descending.
    n_pixels, n_channels, total_counts, low_pixel_counts, margin
        See :func:`noise_edge`.
    null_edge : float, optional
        From :func:`poisson_null_edge`; the edge is the larger of it and
        :func:`noise_edge`.
    complete : bool
        True when ``eigenvalues`` is the whole spectrum (gram solver); False
        for the top k of the randomized solver, where all k above the edge
        makes k only a lower bound.
    mean_component : bool
        The leading eigenvalue is the mean spectrum (Poisson scaling, not
        centred; exactly 1) and counts as one component even where the edge
        reaches 1 (a map too sparse to show anything else). Further
        eigenvalues within :data:`ISOLATED_TOL` of 1 are isolated blocks of the
        sparse pixel-channel graph and never count.

    Returns
    -------
    dict
        ``n_significant`` (int, eigenvalues above the edge by more than
        round-off, len(eigenvalues) * eps * eigenvalues[0]; at least
        1 with ``mean_component``), ``noise_edge`` (float, eigenvalue units),
        ``n_significant_is_lower_bound`` (bool) and ``noise_edge_source``
        (which bound set the edge: "marchenko-pastur", "sparse-floor" or
        "poisson-null").

    Raises
    ------
    DecompositionError
        Eigenvalues not one-dimensional or not descending; bad counts.
    """
    ev = np.asarray(eigenvalues, dtype=np.float64)
    if ev.ndim != 1 or (ev.size > 1 and np.any(np.diff(ev) > 1e-12 * max(1.0, float(ev[0])))):
        raise DecompositionError(f"eigenvalues must be a descending 1-d array; got shape {ev.shape}")
    mp = noise_edge(n_pixels, n_channels, total_counts, margin=margin)
    bounds = {"marchenko-pastur": mp,
              "sparse-floor": noise_edge(n_pixels, n_channels, total_counts, low_pixel_counts=low_pixel_counts, margin=margin),
              "poisson-null": float(null_edge) if null_edge is not None else mp}
    source = max(bounds, key=lambda k: (bounds[k], k == "marchenko-pastur"))  # ties: the analytic edge
    edge = bounds[source]
    # strictly above, beyond eigh's round-off: where the edge is 1 (a very sparse map), the eigenvalues 1 of
    # isolated (pixel, channel) blocks, 1 + 1e-15 after round-off, are not components
    tol = max(ev.size, 1) * np.finfo(np.float64).eps * (float(ev[0]) if ev.size else 0.0)
    above = ev > edge + tol
    if mean_component and ev.size:
        # eigenvalue 1 beyond the first: the pixel-channel graph falls apart into blocks sharing no channel (a
        # pixel whose few counts sit in channels seen nowhere else); with the X-ray continuum every phase shares
        # channels, so these are sparse artefacts, never components
        above[1:] &= ev[1:] < 1.0 - ISOLATED_TOL
        above[0] = True
    n = int(np.count_nonzero(above))
    lower = (not complete) and ev.size > 0 and n == ev.size
    return {"n_significant": n, "noise_edge": edge, "n_significant_is_lower_bound": bool(lower), "noise_edge_source": source}


def _histogram_summary(hist: np.ndarray) -> dict:
    """:func:`pixel_totals_summary` of the pixel totals a histogram counts (bin g: pixels of total g), without
    expanding it into one total per pixel: the percentile is numpy's linear one, from the two order statistics
    around its index (the same float as ``np.percentile`` on the expanded totals)."""
    counts = hist[1:]
    n = int(counts.sum())
    if n == 0:
        return {"n_pixels": 0, "total_counts": 0.0, "low_pixel_counts": None}
    q = LOW_PIXEL_PERCENTILE / 100.0
    virtual = (n - 1) * q  # numpy's index for method="linear"
    lo = min(max(math.floor(virtual), 0), n - 1)
    hi = min(lo + 1, n - 1)
    # the value of rank r (0-based) of the sorted non-zero totals: the first total whose cumulative count exceeds r
    a, b = (float(v) + 1.0 for v in np.searchsorted(np.cumsum(counts), [lo, hi], side="right"))
    t = virtual - lo if 0 <= virtual < n - 1 else 0.0
    low = b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t
    totals = np.arange(1, hist.size, dtype=np.float64)
    return {"n_pixels": n, "total_counts": float(counts @ totals), "low_pixel_counts": low}


def rank_attrs(totals_histogram: np.ndarray, channel_totals: np.ndarray, eigenvalues: np.ndarray, *, complete: bool,
               center: bool, seed: int = 0) -> dict:
    """:func:`significance` for a decomposition on a plan: the attributes :func:`xsi_dask.decompose` records.

    Parameters
    ----------
    totals_histogram : ndarray of int, shape (cap + 1,)
        How many (binned) pixels of the view have each total over the view's
        channels (``PoissonOperator.totals_histogram``, gathered by the first
        pass; totals at or above the cap, 65536, share the last bin): gives N,
        g_low and the null's pixel totals.
    channel_totals : ndarray, shape (channels,)
        h of the plan (``PoissonOperator.h``): M = channels with counts, T = its sum.
    eigenvalues : ndarray
        Descending S^2 of D~ (all of them with ``complete``).
    complete, center
        ``complete`` as in :func:`significance`; the mean is a component unless ``center``.
    seed : int
        Seed of the Poisson null.

    Notes
    -----
    N and g_low are read from the histogram itself (a few arrays of the cap's
    size, whatever the pixel count); only the Poisson null, drawn where
    T <= :data:`NULL_MAX_COUNTS`, expands it into the totals of the pixels
    with counts (at most T of them).
    """
    hist = np.asarray(totals_histogram, dtype=np.int64)
    px = _histogram_summary(hist)
    h = np.asarray(channel_totals, dtype=np.float64)
    T = float(h.sum())
    null = None
    if 0 < T <= NULL_MAX_COUNTS:
        g = np.repeat(np.arange(1, hist.size, dtype=np.int64), hist[1:])  # the non-zero totals, increasing
        null = poisson_null_edge(g, h, seed=seed)
    return significance(eigenvalues, n_pixels=max(px["n_pixels"], 1), n_channels=max(int(np.count_nonzero(h)), 1),
                        total_counts=max(T, 1.0), complete=complete, low_pixel_counts=px["low_pixel_counts"],
                        null_edge=null, mean_component=not center)
