"""Poisson-scaled SVD/PCA of a montage: :func:`decompose`."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg
import xarray as xr

from .. import config
from .._version import __version__
from ..engine import Plan, make_plan
from ..errors import DecompositionError, LowCountWarning, XSIWarning
from ..linalg import rsvd
from ..linalg.operator import PoissonOperator
from ..progress import Progress
from ._rank import rank_attrs as significance_attrs
from ._rank import roundoff_cut

__all__ = ["decompose", "map_coords", "poisson_svd", "SVDFactors"]


@dataclass
class SVDFactors:
    """The small factors of an SVD of D~ (the lazy scores are built from ``op``).

    S (k,) singular values of D~; V (channels, k) right singular vectors of
    D~ (scaled space); eigenvalues (channels,) with the gram solver; op the
    operator (its h, wh, frob2, mean); params the solver's parameters.
    """

    S: np.ndarray
    V: np.ndarray
    eigenvalues: np.ndarray | None
    op: PoissonOperator
    params: dict


def poisson_svd(plan: Plan, k: int, *, solver: str = "randomized", power_iters: int | None = None,
                oversampling: int | None = None, poisson: bool = True, center: bool = False, seed: int = 0,
                progress: Progress | None = None) -> SVDFactors:
    """The SVD stages on a plan: range finder and Rayleigh-Ritz, or the gram pass and ``eigh``.

    ``progress`` (optional) advances once per pass. See :func:`decompose`.
    """
    op = PoissonOperator(plan, poisson=poisson, center=center)
    M = op.n_channels
    k = count_arg(k, "n_components", 1, M, f"{M} (channels)")
    tick = progress.update if progress is not None else None
    if solver == "randomized":
        q = config.get("power-iters", power_iters)
        q = rsvd.DEFAULT_POWER_ITERS if q is None else count_arg(q, "power_iters", 0)
        p = count_arg(config.get("oversampling", oversampling), "oversampling", 0)
        X, Y = rsvd.range_finder(op, min(M, k + p), q, seed, on_pass=tick)
        S, V = rsvd.rayleigh_ritz(X, Y, k)
        if S.size < k:
            warnings.warn(
                f"the scaled montage has numerical rank {S.size} (singular values above 1e-7 of the largest), fewer than "
                f"the {k} components asked for: returning {S.size}. Ask for at most {S.size}, or use solver='gram' for "
                "every eigenvalue (zeros included)",
                XSIWarning,
                stacklevel=3,
            )
        eigenvalues = None
        params = {"power_iters": q, "oversampling": p}
    elif solver == "gram":
        if power_iters is not None or oversampling is not None:
            raise DecompositionError("power_iters and oversampling belong to the randomized solver; the gram solver is "
                                     "exact in one pass: leave them out, or use solver='randomized'")
        # channels without a count in the view have zero rows and columns in D~^T D~: the gram is formed
        # and diagonalised over the active channels only (exact), so a sparse spectrum costs what its
        # active channels cost, not channels^2 (a 16 x 16 map with 25 active of 4096 channels)
        active = np.flatnonzero(op.h > 0)
        if active.size == 0:
            raise DecompositionError("the view holds no counts: nothing to decompose (check the energy range and tiles)")
        sub = op if active.size == M else PoissonOperator(plan.with_channels(active), poisson=poisson, center=center)
        A = sub.gram()
        if sub is not op:
            op.colsum = np.zeros(M)
            op.colsum[active] = sub.colsum
            op.frob2 = sub.frob2
            op.totals_histogram = sub.totals_histogram
        if tick is not None:
            tick()
        Ma = active.size
        ka = min(k, Ma)
        # every eigenvalue (for the scree) but only k eigenvectors: 2-3x faster
        # than a full eigh at 4096 channels
        eigenvalues = np.zeros(M)
        eigenvalues[:Ma] = np.clip(scipy.linalg.eigvalsh(A)[::-1], 0.0, None)
        evals, E = scipy.linalg.eigh(A, subset_by_index=(Ma - ka, Ma - 1))
        if evals.size < ka:  # LAPACK's syevr can return fewer than asked inside a degenerate cluster: all of them
            evals, E = scipy.linalg.eigh(A)
            evals, E = evals[Ma - ka :], E[:, Ma - ka :]
        S = np.zeros(k)
        S[:ka] = np.sqrt(np.clip(evals[::-1], 0.0, None))
        V = np.zeros((M, k))
        V[active, :ka] = E[:, ::-1]
        if ka < k:  # beyond the active channels: eigenvalue 0, unit vectors on inactive channels (orthonormal)
            idle = np.setdiff1d(np.arange(M), active)[: k - ka]
            V[idle, np.arange(ka, k)] = 1.0
        params = {"active_channels": int(Ma)}
    else:
        raise DecompositionError(f"solver must be 'randomized' or 'gram'; got {solver!r}")
    return SVDFactors(S, rsvd.svd_flip(V), eigenvalues, op, params)


def suggest_bin(tile_shape: tuple[int, int], counts_per_pixel: float, target: float) -> int | None:
    """The smallest bin factor dividing both tile sides that brings ``counts_per_pixel`` to ``target`` (None: none)."""
    h, w = tile_shape
    for b in range(2, min(h, w) + 1):
        if h % b == 0 and w % b == 0 and counts_per_pixel * b * b >= target:
            return b
    return None


def _warn_low_counts(plan: Plan, op: PoissonOperator, rank: dict) -> None:
    """A :class:`LowCountWarning` when only the mean spectrum stands above the noise at few counts per pixel."""
    target = float(config.get("low-count-target"))
    cpp = float(op.h.sum()) / max(plan.n_pixels, 1)
    if rank.get("n_significant_is_lower_bound") or rank.get("n_significant", 2) > 1 or cpp >= target:
        return
    total = plan.bin * np.array(plan.tile_shape)  # the stored tile: the suggestion is a bin of the stored pixels
    b = suggest_bin(tuple(int(v) for v in total), cpp / plan.bin**2, target)
    advice = (f"bin {b} x {b} (analysis_view(m, bin={b}), --bin {b}) gives {cpp / plan.bin**2 * b * b:.0f} counts per pixel"
              if b and b > plan.bin else "bin the pixels more, or re-split the montage into larger tiles")
    warnings.warn(
        f"only the mean spectrum stands above the Poisson noise (noise edge {rank.get('noise_edge', float('nan')):.3g} of "
        f"the mean's eigenvalue 1): the view has {cpp:.3g} counts per {'binned ' if plan.bin > 1 else ''}pixel, too few "
        f"for the scaled SVD to separate components from the noise; {advice}", LowCountWarning, stacklevel=3)


def count_arg(value, name: str, low: int, high: int | None = None, high_text: str = "") -> int:
    """An integer argument in [low, high], or a :class:`DecompositionError` naming it (never silently truncated)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or value < low or (high is not None and value > high):
        bound = f"between {low} and {high_text or high}" if high is not None else f">= {low}"
        raise DecompositionError(f"{name} must be an integer {bound}; got {value!r}")
    return int(value)


# the acquisition metadata a result carries from the montage's attrs (labels and reports read them)
ACQUISITION_KEYS = ("signal_type", "beam_energy", "elements", "xray_lines", "live_time", "real_time",
                    "energy_resolution_MnKa", "energy_resolution_MnKa_default")


def run_attrs(plan: Plan, started: float, montage: xr.DataArray | None = None) -> dict:
    """The attributes every result records: passes, non-zeros, seconds, store, store id, backend, version, and
    what the view kept: ``energy_range`` (keV of the first and last channel), ``n_channels``, ``bin``,
    ``counts_per_pixel`` (mean per binned pixel over the kept channels) and, from
    :func:`~xsi_dask.montage.prepare.analysis_view`, ``zero_peak_cutoff`` (keV; None when the zero peak was kept
    or the view was not made by it), and the montage's acquisition metadata (:data:`ACQUISITION_KEYS`)."""
    e = plan.energy
    view = montage.attrs if montage is not None else {}
    acquired = {k: view[k] for k in ACQUISITION_KEYS if k in view}
    return {
        **acquired,
        "energy_range": [float(e[0]), float(e[-1])],
        "n_channels": int(plan.n_channels),
        "bin": int(plan.bin),
        "counts_per_pixel": float(plan.sum_spectrum().sum() / plan.n_pixels),
        "zero_peak_cutoff": view.get("zero_peak_cutoff"),
        "passes": plan.passes,
        "nnz": plan.nnz,
        "seconds": time.perf_counter() - started,
        "store": plan.store,
        "store_uuid": plan.store_uuid,
        "backend": plan.backend_label,
        "xsi_dask_version": __version__,
    }


#: the attributes a result derived from a stored SVD (or NMF) keeps: store, store id, bin, view, acquisition
CARRIED = ("store", "store_uuid", "bin", "energy_range", "n_channels", "counts_per_pixel", "zero_peak_cutoff",
           "backend", "poisson", "center", *ACQUISITION_KEYS)


def carried_attrs(ds: xr.Dataset) -> dict:
    """The attributes of ``ds`` (a stored SVD or NMF) that a result derived from it keeps (:data:`CARRIED`)."""
    return {k: ds.attrs[k] for k in CARRIED if k in ds.attrs}


def svd_passes(solver: str, power_iters: int | None) -> int:
    """Passes the SVD will take (for a progress display)."""
    if solver != "randomized":
        return 1
    q = config.get("power-iters", power_iters)
    return (rsvd.DEFAULT_POWER_ITERS if q is None else int(q)) + 1


def map_coords(montage: xr.DataArray) -> dict:
    """The montage's tile and pixel coordinates, for maps (tile, y, x, component)."""
    keep = ("tile", "row", "col", "source", "stage_y", "stage_x", "y", "x")
    return {k: montage.coords[k] for k in keep if k in montage.coords}


def decompose(
    montage: xr.DataArray,
    n_components: int,
    *,
    solver: Literal["randomized", "gram"] = "randomized",
    power_iters: int | None = None,
    oversampling: int | None = None,
    poisson: bool = True,
    center: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> xr.Dataset:
    """Poisson-scaled SVD (PCA) of a spectrum-image montage, one pass over the tiles per iteration.

    The montage D (pixels x channels) is scaled as D~ = G^-1/2 D H^-1/2
    (Keenan-Kotula; g, h the per-pixel and per-channel total counts) inside the
    per-tile products, never formed, and decomposed D~ ~ U S V^T.

    Parameters
    ----------
    montage : xarray.DataArray
        Counts (tile, y, x, energy) from :func:`xsi_dask.open_montage`; a
        ``isel(tile=...)`` subset works.
    n_components : int
        Components k to keep (1 <= k <= channels).
    solver : {"randomized", "gram"}
        ``"randomized"``: subspace iteration (Halko et al. 2011) with
        ``power_iters + 1`` passes, exact for components that stand apart from
        the next (relative gap >= 5 %); on the flat Poisson noise floor it
        converges slowly and underestimates singular values. ``"gram"``:
        accumulate D~^T D~ (channels x channels) in one pass and ``eigh`` it;
        exact, returns every eigenvalue (the full scree), memory channels^2.
    power_iters : int, optional
        Randomized solver only; default 10 (``xsi-dask.power-iters``). See
        ``xsi_dask.linalg.rsvd.DEFAULT_POWER_ITERS`` for why count data need this many.
    oversampling : int, optional
        Extra basis vectors p (default 10): the subspace has k + p columns.
    poisson : bool
        Keenan-Kotula scaling (default True). False decomposes the raw counts.
    center : bool
        Subtract the channel means of D~ first (PCA proper). Default False, as
        HyperSpy.
    seed : int
        Seed of the Gaussian test matrix; results are deterministic for a given
        seed and tiling.
    progress : bool
        One progress display for the run (passes).

    Returns
    -------
    xarray.Dataset
        ``singular_values (component)`` of D~; ``explained_variance_ratio
        (component)``: S^2 over the total scaled variance ||D~||_F^2 (from the
        non-zeros, so a truncated result's ratio equals a full SVD's);
        ``loadings (component, energy)``: H^1/2 V, the spectra unweighted like
        HyperSpy's factors; ``scores (tile, y, x, component)``: G^1/2 U S, lazy
        (one dask chunk per tile, computed tile by tile on write), so that
        D ~ scores @ loadings; ``pixel_counts (tile, y, x)``: g, the counts
        of each (binned) pixel over the view's channels, from the same pass
        (the Poisson weights, so that the analyses of the scores, such as the
        rotation and MCR, never read the counts again); ``eigenvalues (rank)`` with ``solver="gram"``,
        every one of the channels, those at round-off (at most M eps
        lambda_max) set to 0 so that a rank-deficient map's scree stops there
        (``attrs["eigenvalues_roundoff_rank"]``: how many are above it);
        ``mean (energy)`` with ``center=True``.
        Parameters, passes and timings are in ``attrs``; with ``poisson=True``
        also ``n_significant`` (components above the Poisson noise floor, the
        mean spectrum included unless ``center``), ``noise_edge`` (that floor
        in eigenvalue units, S^2), ``noise_edge_source`` (the bound that set
        it) and ``n_significant_is_lower_bound`` (the randomized solver's k
        all stand above it: ask for more). See
        :mod:`xsi_dask.decomposition._rank` for the criterion.

    Raises
    ------
    DecompositionError
        Bad ``n_components``, ``solver``, ``power_iters`` or ``oversampling``
        (each an integer in range; a float or bool is refused, not truncated);
        ``power_iters`` or ``oversampling`` given with ``solver="gram"``, which
        would not use them.

    Warns
    -----
    XSIWarning
        ``n_components`` above the numerical rank of the scaled montage with
        the randomized solver: the rank's components are returned.
    ViewError
        A view the engine cannot honour (arithmetic, ``where``, an energy or
        pixel selection, ``coarsen``, ``astype``; see :func:`xsi_dask.engine.make_plan`).

    References
    ----------
    Halko, Martinsson & Tropp (2011), doi:10.1137/090771806.
    Keenan & Kotula (2004), doi:10.1002/sia.1657.
    """
    started = time.perf_counter()
    plan = make_plan(montage)
    k = count_arg(n_components, "n_components", 1, plan.n_channels, f"{plan.n_channels} (channels)")
    plan.check_memory(k, solver=solver, oversampling=oversampling)  # refuse workers too small, before any pass
    label = f"Poisson SVD ({solver}, k={k})" if poisson else f"SVD ({solver}, k={k})"
    with Progress(label, svd_passes(solver, power_iters), unit="passes", enabled=progress) as bar:
        f = poisson_svd(plan, k, solver=solver, power_iters=power_iters, oversampling=oversampling, poisson=poisson,
                        center=center, seed=seed, progress=bar)
    S, V, eigenvalues, op, params = f.S, f.V, f.eigenvalues, f.op, f.params
    k = S.size
    loadings = (np.sqrt(op.h)[:, None] * V if poisson else V).T
    comp = np.arange(k)
    scores, pixel_counts = op.scores(V, with_counts=True)
    data_vars = {
        "singular_values": ("component", S),
        "explained_variance_ratio": ("component", S**2 / op.frob2 if op.frob2 else np.full(k, np.nan)),
        "loadings": (("component", "energy"), loadings),
        "scores": (("tile", "y", "x", "component"), scores),
        "pixel_counts": (("tile", "y", "x"), pixel_counts),
    }
    rank_attrs = {}
    if eigenvalues is not None:  # the scree stops at round-off: a rank-deficient map's tail is eigh's noise, set to 0
        rank_attrs["eigenvalues_roundoff_rank"] = r = roundoff_cut(eigenvalues)
        eigenvalues = np.concatenate([eigenvalues[:r], np.zeros(eigenvalues.size - r)])
        data_vars["eigenvalues"] = ("rank", eigenvalues)
    if poisson:  # the noise floor is defined for the Poisson-scaled matrix only
        rank_attrs.update(significance_attrs(op.totals_histogram, op.h, eigenvalues if eigenvalues is not None else S**2,
                                             complete=eigenvalues is not None, center=center, seed=seed))
    if poisson:
        _warn_low_counts(plan, op, rank_attrs)
    if center:
        data_vars["mean"] = ("energy", op.mean)
    ds = xr.Dataset(
        data_vars,
        coords={"component": comp, "energy": montage["energy"], **map_coords(montage)},
        attrs={
            "method": "Poisson-scaled SVD" if poisson else "SVD",
            "solver": solver,
            "n_components": k,
            "poisson": int(poisson),
            "center": int(center),
            "seed": seed,
            "total_scaled_variance": op.frob2,
            **rank_attrs,
            **run_attrs(plan, started, montage),
            **params,
        },
    )
    ds["loadings"].attrs["description"] = "component spectra, unweighted (H^1/2 V)"
    ds["scores"].attrs["description"] = "component maps, unweighted (G^1/2 U S)"
    ds["pixel_counts"].attrs.update(units="counts", description="counts per (binned) pixel over the view's channels (g)")
    return ds
