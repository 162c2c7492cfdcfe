"""Factored MCR-ALS with non-negativity, on the stored Poisson-scaled SVD: :func:`mcr`.

The scaled montage is represented by its top-k SVD factors, D~ ~ T~ P^T with
T~ = U S (pixels x k, from the stored scores and pixel totals) and P = V
(channels x k, orthonormal). MCR-ALS fits D~ ~ C~ S~^T with C~ >= 0 (scaled
concentrations, pixels x k) and S~ >= 0 (scaled spectra, channels x k) to the
factored data, minimising

    L = ||T~ P^T - C~ S~^T||_F^2 + lambda sum C~
      = ||T~||^2 - 2 <T~^T C~, P^T S~> + <C~^T C~, S~^T S~> + lambda sum C~,

(the columns of S~ of unit norm; lambda = 0 is plain MCR-ALS, the default a
small L1 term of one noise standard deviation, see :func:`mcr`),

so an iteration needs only k x k statistics of the pixels:

- C-step, per unit of the montage plan (a pass over the stored maps, never
  over the counts): every pixel i solves min_c ||S~ c - P t_i||, c >= 0,
  with one Gram S~^T S~ and right-hand sides (S~^T P) T~_u^T, by the fast
  combinatorial NNLS (:func:`xsi_dask.linalg.nnls.fcnnls`); the unit returns
  C~_u^T C~_u and T~_u^T C~_u;
- S-step, on the driver: every channel j solves min_s ||C~ s - T~ p_j||,
  s >= 0, Gram C~^T C~ and right-hand sides (T~^T C~)^T P^T;
- L from the same statistics, recorded after every iteration.

The start is the spatial-simplicity rotation (:func:`xsi_dask.rotate`): its
spectra V S R, signed so that their largest entry is positive, negative
entries set to 0. At the end the model is unscaled like NMF's: spectra
H^1/2 S~ normalised to sum 1, abundances G^1/2 C~ times the spectra's sums
(counts), computed per tile from the stored scores; a last pass over the
counts gives the Poisson deviance of the model per tile
(:func:`xsi_dask.engine.maps.tile_deviance`).

References
----------
Kotula, P. G., Keenan, M. R. & Michael, J. R. (2003). Automated analysis of
SEM X-ray spectral images: a powerful new microanalysis tool. Microsc.
Microanal. 9, 1-17. doi:10.1017/S1431927603030058
Van Benthem, M. H. & Keenan, M. R. (2004). Fast algorithm for the solution of
large-scale non-negativity-constrained least squares problems. J. Chemometrics
18, 441-450. doi:10.1002/cem.889
Keenan, M. R. (2009). Exploiting spatial-domain simplicity in spectral image
analysis. Surf. Interface Anal. 41, 79-87. doi:10.1002/sia.2949
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from .._version import __version__
from ..engine import Block, Unit
from ..engine.maps import MapSource, tile_deviance
from ..errors import ConvergenceWarning, DecompositionError
from ..linalg.nnls import fcnnls
from ..progress import Progress
from ._rotate import ScaledSVD, _check_iteration_args, resolve_strategy, rotation_of, scaled_rows, scaled_svd
from ._svd import carried_attrs, map_coords

__all__ = ["mcr", "mcr_fit", "McrFit", "factored_loss", "update_spectra", "start_spectra"]


# ---- pure steps (each tested against dense NumPy) ----

def factored_loss(tt: float, TtC: np.ndarray, CtC: np.ndarray, P: np.ndarray, S: np.ndarray) -> float:
    """||T~ P^T - C~ S~^T||_F^2 from ||T~||^2, T~^T C~ and C~^T C~ (P^T P = I): tt - 2 <T~^T C~, P^T S~> + <C~^T C~, S~^T S~>."""
    return float(tt - 2.0 * np.sum(TtC * (P.T @ S)) + np.sum(CtC * (S.T @ S)))


def update_spectra(CtC: np.ndarray, TtC: np.ndarray, P: np.ndarray) -> np.ndarray:
    """The S-step: S~ (channels, k) >= 0 minimising ||T~ P^T - C~ S~^T|| given C~, channel by channel (FCNNLS)."""
    return fcnnls(CtC, TtC.T @ P.T).T


def concentrations(T: np.ndarray, P: np.ndarray, S: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """The C-step for rows T (rows, k) of T~: C~ (rows, k) >= 0 minimising ||T P^T - C~ S^T||^2 + 2 shift sum C~,
    pixel by pixel (the L1 term enters the normal equations as ``shift`` off every right-hand side)."""
    return fcnnls(S.T @ S, (S.T @ P) @ T.T - shift).T


def start_spectra(f: ScaledSVD, R: np.ndarray) -> np.ndarray:
    """The scaled spectra V S R of the rotation R (signed by :func:`~xsi_dask.rotate`), negative entries set to 0,
    each of unit norm."""
    S = np.maximum((f.V * f.S[None, :]) @ R, 0.0)
    norm = np.linalg.norm(S, axis=0)
    return S / np.where(norm > 0, norm, 1.0)[None, :]


def noise_scale(f: ScaledSVD) -> float:
    """The Poisson noise of one entry of the factored matrix, root mean square: 1/sqrt(total counts) for the
    Poisson-scaled D~ (E (d_ij - m_ij)^2 / (g_i h_j) = m_ij / (g_i h_j) ~ 1/total), sqrt(total / (pixels x
    channels)) for the raw counts."""
    total = float(f.plan.sum_spectrum().sum()) if not f.poisson else float(f.h.sum())
    if total <= 0:
        return 0.0
    return 1.0 / np.sqrt(total) if f.poisson else float(np.sqrt(total / (f.plan.n_pixels * f.plan.n_channels)))


# ---- the unit tasks (over the stored maps) ----

def _c_step_task(b: Block, scores: MapSource, g: MapSource | None, k: int, P: np.ndarray, S: np.ndarray, shift: float):
    T = scaled_rows(b.unit, scores, g, k, None)
    C = concentrations(T, P, S, shift)
    root = np.sqrt(g.rows(b.unit)) if g is not None else np.ones(T.shape[0])
    return C.T @ C, T.T @ C, np.array(np.sum(T * T)), root @ C, C.sum(0)


@dataclass(frozen=True)
class McrAbundances:
    """The abundances (counts) of a fitted MCR model, computed per unit from the stored scores.

    ``rows(unit)`` gives the unit's (rows, k) abundances G^1/2 C~ diag(scale)
    in the result's component order, so it serves :func:`tile_deviance` and
    the lazy map alike.
    """

    scores: MapSource
    g: MapSource | None
    k: int
    P: np.ndarray
    S: np.ndarray
    scale: np.ndarray
    order: np.ndarray
    shift: float = 0.0

    def rows(self, unit: Unit) -> np.ndarray:
        T = scaled_rows(unit, self.scores, self.g, self.k, None)
        C = concentrations(T, self.P, self.S, self.shift)
        if self.g is not None:
            C *= np.sqrt(self.g.rows(unit))[:, None]
        return (C * self.scale[None, :])[:, self.order]


def _abundance_tile(blocks: list[Block], src: McrAbundances):
    out = np.concatenate([src.rows(b.unit) for b in blocks])
    return out.reshape(1, *blocks[0].tile_shape, src.k)


# ---- the fit ----

@dataclass
class McrFit:
    """A fitted factored MCR model in the scaled space (see :func:`mcr_fit`).

    Attributes
    ----------
    S : ndarray (channels, k)
        Scaled spectra S~ >= 0, columns of unit norm.
    loss : list of float
        The factored objective (with the L1 term): entry 0 of the start (C~
        of the start spectra), then after every iteration, then of the final
        concentrations.
    shift : float
        The L1 weight's half, lambda / 2 (0: plain MCR-ALS).
    n_iter : int
    converged : bool
    rotation : ndarray (k, k)
        The spatial-simplicity rotation the start came from.
    rotation_iter : int
    totals : ndarray (k,)
        sum_i g_i^1/2 C~_ic of the final C-step (the component's counts over
        its spectrum's scaled sum).
    CtC, TtC : ndarray (k, k)
        The statistics of the final C-step.
    tt : float
        ||T~||_F^2.
    """

    S: np.ndarray
    loss: list[float]
    n_iter: int
    converged: bool
    rotation: np.ndarray
    rotation_iter: int
    totals: np.ndarray
    CtC: np.ndarray
    TtC: np.ndarray
    tt: float
    shift: float = 0.0


def mcr_fit(f: ScaledSVD, *, sparsity: float = 1.0, max_iter: int = 500, tol: float = 1e-8,
            rotation_tol: float = 1e-12, rotation: np.ndarray | None = None, progress: Progress | None = None) -> McrFit:
    """MCR-ALS on the factors ``f`` (from :func:`~xsi_dask.decomposition._rotate.scaled_svd`): passes over the maps only.

    Minimises ||T~ P^T - C~ S~^T||^2 + lambda sum C~ over C~, S~ >= 0 with the
    columns of S~ of unit norm, lambda = 2 ``sparsity`` x :func:`noise_scale`.
    Every pass is a reduction of ``f.plan`` with ``reads_counts=False``
    (logged with nnz 0): the rotation's, one per iteration, and a final
    C-step for the statistics of the returned spectra. Stops when an
    iteration changes the objective by less than ``tol`` ||T~||^2.
    """
    shift = float(sparsity) * noise_scale(f)
    if rotation is None:
        R, rot_iter, _, _ = rotation_of(f, gamma=1.0, tol=rotation_tol, max_iter=1000, strategy=resolve_strategy("auto", f.k))
    else:  # the varimax rotation of the same factors, computed already (rotate's ``rotation``)
        R, rot_iter = rotation, 0
    S = start_spectra(f, R)
    P = f.V

    def c_step(S: np.ndarray, label: str):
        out = f.plan.reduce(_c_step_task, f.scores, f.g, f.k, P, S, shift, label=label, reads_counts=False,
                            literal=(MapSource,))
        if progress is not None:
            progress.update()
        return out

    CtC, TtC, tt, totals, csum = c_step(S, "MCR start")
    tt = float(tt)
    loss = [factored_loss(tt, TtC, CtC, P, S) + 2 * shift * float(csum.sum())]
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        if n_iter > 1:
            CtC, TtC, _, totals, csum = c_step(S, f"MCR iteration {n_iter}")
        S = update_spectra(CtC, TtC, P)
        loss.append(factored_loss(tt, TtC, CtC, P, S) + 2 * shift * float(csum.sum()))
        norm = np.linalg.norm(S, axis=0)
        S = S / np.where(norm > 0, norm, 1.0)[None, :]  # the scale is the C-step's; keep S~ of unit columns
        if abs(loss[-2] - loss[-1]) < tol * tt:
            converged = True
            break
    CtC, TtC, _, totals, csum = c_step(S, "MCR final concentrations")
    loss.append(factored_loss(tt, TtC, CtC, P, S) + 2 * shift * float(csum.sum()))
    return McrFit(S, loss, n_iter, converged, R, rot_iter, totals, CtC, TtC, tt, shift)


def _start(rotation, k: int) -> np.ndarray | None:
    """A given start rotation, checked: k x k, finite, orthogonal (that of :func:`~xsi_dask.rotate` on the same SVD)."""
    if rotation is None:
        return None
    R = np.asarray(rotation, dtype=np.float64)
    if R.shape != (k, k) or not np.all(np.isfinite(R)) or not np.allclose(R.T @ R, np.eye(k), atol=1e-8):
        raise DecompositionError(f"rotation must be the orthogonal {k} x {k} rotation of the same SVD's top {k} "
                                 f"components (rotate()'s 'rotation'); got an array of shape {R.shape}")
    return R


def mcr(
    results: str | Path,
    n_components: int | None = None,
    *,
    sparsity: float = 1.0,
    max_iter: int = 500,
    tol: float = 1e-8,
    residual: bool = True,
    rotation: np.ndarray | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Factored MCR-ALS (non-negative spectra and abundances) of a stored Poisson-scaled SVD.

    Fits the scaled montage's top-k SVD factors T~ P^T (T~ = U S, P = V) by
    C~ S~^T with C~, S~ >= 0, alternating exact non-negative least squares
    for the concentrations (per pixel, inside the units' tasks over the
    stored scores) and the spectra (per channel, on the driver), started from
    the spatial-simplicity rotation. The iterations read the stored SVD maps,
    never the counts; with ``residual`` one last pass over the counts gives
    the Poisson deviance of the unscaled model.

    Parameters
    ----------
    results : path
        A results store with an uncentred ``svd`` group (with
        ``pixel_counts``) from :func:`xsi_dask.decompose`; its montage store
        must be unchanged.
    n_components : int, optional
        k, 2 <= k <= the stored components (default: the SVD's
        ``n_significant`` when >= 2, else all stored components). Each
        component is one endmember (phase), the mean included: use the
        number of phases.
    sparsity : float
        Weight kappa >= 0 of an L1 term lambda sum C~ on the scaled
        concentrations, lambda = 2 kappa sigma, sigma the Poisson noise of one
        entry of D~ (1/sqrt(total counts); :func:`noise_scale`), with the
        scaled spectra of unit norm: a pixel's concentration of a component
        must explain more than kappa noise standard deviations of it. Default
        1. With 0 (plain MCR-ALS) the per-pixel non-negativity clips each
        noisy pixel's negative concentrations, biasing every minority
        concentration upwards in the majority phase's pixels, and the ALS
        answers by sharpening the spectra: on the simulated presets it drifts
        from the spatially simple start to endmembers 8-50 degrees off
        (docs/rotation-mcr.md). The abundances are those of the penalised
        fit (slightly shrunk, like NMF's sparse ones before their refit).
    max_iter : int
        ALS iterations at most (default 500); each is one pass over the
        stored maps plus k x k algebra and a channels x k FCNNLS on the driver.
    tol : float
        Stop when an iteration changes the factored objective by less than
        ``tol`` times ||T~||_F^2 (the scaled variance the k components hold);
        default 1e-8.
    residual : bool
        Compute the per-tile Poisson deviance in one pass over the counts
        (default True).
    rotation : ndarray of shape (k, k), optional
        The start's varimax rotation when it is computed already (the
        ``rotation`` of :func:`~xsi_dask.rotate` on the same SVD and k);
        default: computed here.
    progress : bool
        A progress display of the passes.

    Returns
    -------
    xarray.Dataset
        The group ``"mcr"``: ``spectra (component, energy)``, each summing
        to 1 (H^1/2 S~ normalised); ``abundances (tile, y, x, component)`` in
        counts (G^1/2 C~ times the spectra's sums, so that abundances @
        spectra models the counts, like NMF's), lazy from the stored scores,
        one chunk per tile; ``loss (iteration)``, the factored objective
        with its L1 term
        (entry 0: the start; then after every iteration; the last: with the
        final concentrations); ``rotation (component_in, component_rot)``,
        the start's rotation; with ``residual`` ``deviance (tile)`` and
        ``counts (tile)``. Components are ordered by the counts they hold.
        ``attrs``: ``n_iter``, ``converged``, ``tol``, ``max_iter``, ``sparsity``, ``l1_weight`` (lambda),
        ``objective`` (the last loss), ``relative_objective`` (over
        ||T~||^2), ``deviance`` (sum over tiles, with ``residual``),
        ``iteration_passes_over_counts`` (0), ``passes`` (over the counts:
        1 with ``residual``, else 0), ``map_passes``, ``pass_log`` ([label,
        non-zeros read, seconds] of every pass), ``seconds`` and the SVD's
        store, store id, bin and view attributes.

    Raises
    ------
    DecompositionError
        No ``svd`` group in ``results``; a centred SVD (``center=True``: the
        mean is not part of a non-negative model; decompose with
        ``center=False``); no ``pixel_counts``; a bad ``n_components``,
        ``max_iter`` or ``tol``; a ``rotation`` that is not an orthogonal k x k matrix.
    ViewError
        The SVD's montage store was rewritten or moved.

    Warns
    -----
    ConvergenceWarning
        ``max_iter`` reached before ``tol``.

    Notes
    -----
    With ``poisson=False`` SVDs the same fit runs with g = h = 1 (raw
    counts). Memory on the driver: channels x k for the spectra; per task one
    tile's scores (pixels x k). The result is written with
    ``write_results(results, {"mcr": ds})`` (the abundances are computed
    tile by tile as they are written).

    References
    ----------
    Kotula, Keenan & Michael (2003), doi:10.1017/S1431927603030058.
    Van Benthem & Keenan (2004), doi:10.1002/cem.889.
    Keenan (2009), doi:10.1002/sia.2949.
    """
    started = time.perf_counter()
    _check_iteration_args(1.0, max_iter, tol)
    if not (isinstance(sparsity, (int, float, np.floating)) and not isinstance(sparsity, bool) and 0 <= sparsity < np.inf):
        raise DecompositionError(f"sparsity must be a number >= 0 (noise standard deviations); got {sparsity!r}")
    f = scaled_svd(results, n_components, who="MCR")
    if f.center:
        raise DecompositionError(f"{f.path}: the SVD is centred (center=True), and the mean it subtracted is not part "
                                 "of a non-negative model: decompose with center=False for MCR")
    k = f.k
    plan = f.plan
    with Progress(f"factored MCR-ALS (k={k})", max_iter + 2 + int(residual), unit="passes", enabled=progress) as bar:
        fit = mcr_fit(f, sparsity=sparsity, max_iter=max_iter, tol=tol, rotation=_start(rotation, k), progress=bar)
        iteration_passes = plan.passes
        Sp = fit.S * (np.sqrt(f.h)[:, None] if f.poisson else 1.0)  # unweighted spectra (channels, k)
        scale = Sp.sum(0)
        spectra = Sp / np.where(scale > 0, scale, 1.0)[None, :]
        order = np.argsort(-(fit.totals * scale), kind="stable")
        spectra = spectra[:, order].T
        src = McrAbundances(f.scores, f.g, k, f.V, fit.S, scale, order, fit.shift)
        dev = None
        if residual:
            dev = tile_deviance(plan, src, spectra, label="MCR model deviance")
            bar.update()
    if not fit.converged and tol > 0:
        warnings.warn(f"MCR-ALS stopped at max_iter={max_iter} before an iteration changed the objective by less than "
                      f"tol={tol:g} of ||T~||^2; raise max_iter", ConvergenceWarning, stacklevel=2)
    abundances = plan.map(_abundance_tile, src, tail=(k,), name="mcr-abundances")
    svd = f.svd
    comp = np.arange(k)
    data_vars = {
        "spectra": (("component", "energy"), spectra),
        "abundances": (("tile", "y", "x", "component"), abundances),
        "loss": ("iteration", np.asarray(fit.loss, dtype=np.float64)),
        "rotation": (("component_in", "component_rot"), fit.rotation),
    }
    if dev is not None:
        data_vars["deviance"] = ("tile", dev["deviance"].values)
        data_vars["counts"] = ("tile", dev["counts"].values)
    ds = xr.Dataset(
        data_vars,
        coords={"component": comp, "component_in": comp, "component_rot": comp,
                "iteration": np.arange(len(fit.loss)), "energy": svd["energy"], **map_coords(svd)},
        attrs={
            **carried_attrs(svd),
            "method": "factored MCR-ALS (non-negative spectra and abundances) on the "
                      f"{'Poisson-scaled ' if f.poisson else ''}SVD",
            "n_components": k,
            "max_iter": int(max_iter),
            "tol": float(tol),
            "sparsity": float(sparsity),
            "l1_weight": 2 * fit.shift,
            "n_iter": int(fit.n_iter),
            "converged": bool(fit.converged),
            "rotation_iterations": int(fit.rotation_iter),
            "objective": fit.loss[-1],
            "relative_objective": fit.loss[-1] / fit.tt if fit.tt else float("nan"),
            "iteration_passes_over_counts": int(iteration_passes),
            "passes": plan.passes,
            "map_passes": sum(1 for r in plan.log if r.nnz == 0),
            "pass_log": [[r.label, int(r.nnz), float(r.seconds)] for r in plan.log],
            "seconds": time.perf_counter() - started,
            "xsi_dask_version": __version__,
        },
    )
    if dev is not None:
        ds.attrs["deviance"] = float(dev["deviance"].sum())
        ds["deviance"].attrs["description"] = "Poisson deviance of abundances @ spectra against the counts, per tile"
    ds["abundances"].attrs["units"] = "counts"
    ds["spectra"].attrs["description"] = "endmember spectra, each summing to 1"
    ds["loss"].attrs["description"] = ("||T~ P^T - C~ S~^T||_F^2 + l1_weight sum C~ (scaled space): start, each "
                                       "iteration, final")
    return ds
