"""Spatial-simplicity (orthomax / varimax) rotation of a Poisson-scaled SVD: :func:`rotate`.

The scaled SVD D~ ~ U S V^T (D~ = G^-1/2 D H^-1/2) is rotated in its k-dim
subspace, D~ ~ (U R)(V S R)^T, by the orthogonal R that makes the score
vectors U R spatially simple: few components non-zero at each pixel
(Keenan 2009). R maximises the orthomax criterion of the rotated scores
B = U R (gamma = 1: varimax),

    sum_c [ sum_i B_ic^4 - (gamma / N) (sum_i B_ic^2)^2 ],

by the SVD iteration of Lawley & Maxwell that HyperSpy's ``orthomax`` uses.

What is rotated is U, the orthonormal scaled scores, not T~ = U S: the Poisson
scaling makes the first singular value 1 and the others typically 0.01-0.3,
so a criterion of fourth powers of U S would weight the first (mean)
component by 1/S_c^4 more than the rest and hardly rotate at all; Keenan
rotates the orthonormal factor, and HyperSpy's default whitening of the
maps before its BSS does the same (up to its centring). The spectra take the
singular values: loadings_rot = R^T S V^T (scaled space), so
scores_rot loadings_rot = scores loadings.

Every statistic comes from the SVD's stored scores and pixel totals g
(``svd/scores``, ``svd/pixel_counts``), read by the units of the montage
plan (:mod:`xsi_dask.engine.maps`): the rotation never reads the counts.
Two strategies give the same R: ``"moments"`` reduces the fourth moments
M_pqrs = sum_i u_ip u_iq u_ir u_is (k^4 numbers) in one pass over the maps,
and every iteration is then k x k algebra on the driver; ``"iterate"``
reduces U^T (U R)^3 (k x k) in one pass over the maps per iteration (for a
large k, where k^4 is too many numbers).

References
----------
Keenan, M. R. (2009). Exploiting spatial-domain simplicity in spectral image
analysis. Surf. Interface Anal. 41, 79-87. doi:10.1002/sia.2949
Kaiser, H. F. (1958). The varimax criterion for analytic rotation in factor
analysis. Psychometrika 23, 187-200. doi:10.1007/BF02289233
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr

from .._version import __version__
from ..engine import Block, Plan, make_plan
from ..engine.maps import MapSource, map_source, results_view
from ..errors import ConvergenceWarning, DecompositionError, StoreFormatError, ViewError
from ..io.results import has_group, open_results
from ..progress import Progress
from ._svd import carried_attrs, count_arg, map_coords

__all__ = ["rotate", "orthomax", "ScaledSVD", "scaled_svd", "fourth_moments", "rotation_stat_pass"]

# k^4 float64 numbers per unit result: 16^4 * 8 B = 512 KiB; above this k the iterate strategy is used
MOMENTS_MAX_K = 16

@dataclass
class ScaledSVD:
    """The top-k factors of a stored Poisson-scaled SVD, in the scaled space, and its maps as unit sources.

    Attributes
    ----------
    path : Path
        The results store.
    svd : xarray.Dataset
        Its ``svd`` group (lazy).
    plan : Plan
        The plan of the montage view the SVD was computed on (:func:`~xsi_dask.engine.maps.results_view`).
    k : int
        Components used.
    S : ndarray (k,)
        Singular values of D~.
    V : ndarray (channels, k)
        Right singular vectors of D~ (``loadings / sqrt(h)``; 0 on channels without counts); the
        loadings themselves with ``poisson=False``.
    h : ndarray (channels,)
        Counts per channel over the view (ones with ``poisson=False``).
    poisson, center : bool
        How the SVD was computed.
    scores : MapSource
        ``svd/scores`` (tile, y, x, component), G^1/2 U S.
    g : MapSource or None
        ``svd/pixel_counts`` (tile, y, x) (None with ``poisson=False``: g = 1).
    """

    path: Path
    svd: xr.Dataset
    plan: Plan
    k: int
    S: np.ndarray
    V: np.ndarray
    h: np.ndarray
    poisson: bool
    center: bool
    scores: MapSource
    g: MapSource | None


def scaled_svd(results: str | Path, n_components: int | None, *, who: str = "the rotation") -> ScaledSVD:
    """The stored SVD of ``results`` checked and read as :class:`ScaledSVD` (no pass over anything).

    Parameters
    ----------
    results : path
        A results store with an ``svd`` group from :func:`xsi_dask.decompose`.
    n_components : int or None
        k, 2 <= k <= the stored components; None: the SVD's ``n_significant``
        (components above the Poisson noise floor) when it is at least 2, else
        every stored component.
    who : str
        The analysis, for the messages.

    Raises
    ------
    DecompositionError
        No results store or no ``svd`` group at ``results``; an SVD without
        ``pixel_counts`` (written before they were recorded); a bad k; a
        singular value of the first k that is 0 (the component is outside the
        data's rank).
    ViewError
        The montage store the SVD was computed on was rewritten or is gone.
    """
    path = Path(results)
    if not (path / "zarr.json").is_file():
        raise DecompositionError(f"{who} needs a results store with an svd group (xsi_dask.decompose, written "
                                 f"with write_results); {path} is no results store")
    if not has_group(path, "svd"):
        raise DecompositionError(f"{who} rotates a stored SVD, and the results store {path} has no 'svd' group: run "
                                 "xsi_dask.decompose(view, k) and write it with write_results(path, {'svd': ds})")
    svd = open_results(path, "svd")
    for name in ("scores", "loadings", "singular_values"):
        if name not in svd:
            raise DecompositionError(f"{path}: the svd group has no {name!r}; decompose again")
    poisson = bool(int(svd.attrs.get("poisson", 1)))
    if poisson and "pixel_counts" not in svd:
        raise DecompositionError(f"{path}: the svd group has no 'pixel_counts' (g, the Poisson weights of the scores), "
                                 f"which {who} needs to work in the scaled space; decompose again with this version")
    stored = int(svd.sizes["component"])
    if n_components is None:
        sig = svd.attrs.get("n_significant")
        n_components = min(int(sig), stored) if sig is not None and int(sig) >= 2 else stored
    if stored < 2:
        raise DecompositionError(f"{path}: the SVD has {stored} component; {who} needs at least 2 (decompose with a "
                                 "larger n_components)")
    k = count_arg(n_components, "n_components", 2, stored, f"{stored} (the components stored in {path}/svd)")
    S = np.asarray(svd["singular_values"].values[:k], dtype=np.float64)
    if not np.all(S > 1e3 * np.finfo(np.float64).eps * S[0]):
        bad = int(np.argmin(S > 1e3 * np.finfo(np.float64).eps * S[0]))
        raise DecompositionError(f"n_components={k}: singular value {bad} of the SVD is {S[bad]:.3g} (0 at round-off): "
                                 f"the data have rank {bad}; ask for at most {bad} components")
    try:
        plan = make_plan(results_view(svd))
    except StoreFormatError as exc:
        raise ViewError(f"{path}: the montage store of the SVD cannot be opened ({exc})") from None
    h = plan.sum_spectrum() if poisson else np.ones(plan.n_channels)
    L = np.asarray(svd["loadings"].values[:k], dtype=np.float64).T  # (channels, k)
    wh = np.zeros_like(h)
    np.divide(1.0, np.sqrt(h), out=wh, where=h > 0)
    V = wh[:, None] * L if poisson else L
    scores = map_source(path, "svd", "scores", plan)
    g = map_source(path, "svd", "pixel_counts", plan) if poisson else None
    return ScaledSVD(path, svd, plan, k, S, V, h, poisson, bool(int(svd.attrs.get("center", 0))), scores, g)


def scaled_rows(unit, scores: MapSource, g: MapSource | None, k: int, inv_s: np.ndarray | None) -> np.ndarray:
    """A unit's rows of the scaled scores: T~ = G^-1/2 scores (U S), or U = T~ S^-1 with ``inv_s`` = 1/S; (rows, k)."""
    T = scores.rows(unit)[:, :k]
    if g is not None:
        gg = g.rows(unit)
        w = np.zeros_like(gg)
        np.divide(1.0, np.sqrt(gg), out=w, where=gg > 0)
        T = T * w[:, None]
    return T * inv_s[None, :] if inv_s is not None else np.array(T)


# ---- the statistics (unit tasks over the stored maps) ----

_ROWS = 4096  # rows per block of the fourth-moment product (bounds its temporary to ROWS x k^2)


def _moments_task(b: Block, scores: MapSource, g: MapSource | None, k: int, inv_s: np.ndarray):
    U = scaled_rows(b.unit, scores, g, k, inv_s)
    M = np.zeros((k * k, k * k))
    for i in range(0, U.shape[0], _ROWS):
        u = U[i : i + _ROWS]
        Z = (u[:, :, None] * u[:, None, :]).reshape(u.shape[0], k * k)
        M += Z.T @ Z
    return M, U.T @ U


def fourth_moments(f: ScaledSVD) -> tuple[np.ndarray, np.ndarray]:
    """M (k, k, k, k) = sum_i u_ip u_iq u_ir u_is and U^T U (k, k) of the scaled scores, one pass over the maps."""
    k = f.k
    M, UtU = f.plan.reduce(_moments_task, f.scores, f.g, k, 1.0 / f.S, label=f"rotation moments (k={k})",
                           reads_counts=False, literal=(MapSource,))
    return M.reshape(k, k, k, k), UtU


def _cube_task(b: Block, scores: MapSource, g: MapSource | None, k: int, inv_s: np.ndarray, W: np.ndarray | None):
    U = scaled_rows(b.unit, scores, g, k, inv_s)
    if W is None:
        return U.T @ U
    B = U @ W
    return U.T @ (B * B * B)


def rotation_stat_pass(f: ScaledSVD, W: np.ndarray | None, label: str) -> np.ndarray:
    """U^T (U W)^3 (k, k) (elementwise cube), or U^T U with ``W=None``: one pass over the maps."""
    return f.plan.reduce(_cube_task, f.scores, f.g, f.k, 1.0 / f.S, W, label=label, reads_counts=False,
                         literal=(MapSource,))


def cube_from_moments(M: np.ndarray, W: np.ndarray) -> np.ndarray:
    """U^T (U W)^3 from the fourth moments: sum_qrs M_pqrs W_qc W_rc W_sc, (k, k)."""
    k = W.shape[0]
    Q = np.einsum("qc,rc,sc->qrsc", W, W, W).reshape(k**3, W.shape[1])
    return M.reshape(k, k**3) @ Q


# ---- the iteration (pure: k x k algebra) ----

def orthomax(cube, UtU: np.ndarray, n: int, *, gamma: float = 1.0, tol: float = 1e-12, max_iter: int = 1000
             ) -> tuple[np.ndarray, int, bool, list[float]]:
    """The orthomax rotation by Lawley & Maxwell's SVD iteration, from k x k statistics.

    The iteration of HyperSpy's ``learn.orthomax`` (from MetPy) for
    0 <= gamma <= 1, with B = U W: W <- P Q^T from the SVD
    P s Q^T = U^T (n B^3 - gamma B diag(sum_i B_ic^2)), stopped when the sum
    of s changes by less than ``tol`` times itself. Only
    ``cube(W)`` = U^T (U W)^3 depends on the pixels; U^T B = (U^T U) W and the
    column sums of B^2 = diag(W^T U^T U W) come from ``UtU``.

    Parameters
    ----------
    cube : callable
        W (k, k) -> U^T (U W)^3 (k, k), elementwise cube.
    UtU : ndarray (k, k)
        U^T U (the identity for exact SVD scores).
    n : int
        Rows of U (pixels, those without counts included, as HyperSpy counts them).
    gamma : float
        0 <= gamma <= 1 (1: varimax, 0: quartimax).
    tol, max_iter
        Stopping rule (relative change of the criterion sum s) and iteration bound.

    Returns
    -------
    W : ndarray (k, k)
        The rotation (orthogonal): U W are the rotated scores.
    n_iter : int
    converged : bool
    history : list of float
        The criterion sum s after each iteration.
    """
    k = UtU.shape[0]
    W = np.eye(k)
    s_sum = 0.0
    history: list[float] = []
    for it in range(1, max_iter + 1):
        old = s_sum
        UtB = UtU @ W
        col = np.einsum("qc,qc->c", W, UtB)
        P, s, Qt = np.linalg.svd(n * cube(W) - gamma * UtB * col[None, :], full_matrices=False)
        W = P @ Qt
        s_sum = float(s.sum())
        history.append(s_sum)
        if abs(s_sum - old) < tol * s_sum:
            return W, it, True, history
    return W, max_iter, False, history


def _orient(R: np.ndarray, S: np.ndarray, loadings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R with columns ordered by the scaled variance they carry (sum_q S_q^2 R_qc^2, largest first) and
    signed so that each rotated spectrum's largest entry is positive (HyperSpy's auto-reverse on the factors)."""
    var = (S[:, None] ** 2 * R**2).sum(0)
    order = np.argsort(-var, kind="stable")
    R = R[:, order]
    spectra = (R.T * S[None, :]) @ loadings  # (k, energy), unweighted
    sign = np.where(-spectra.min(1) > spectra.max(1), -1.0, 1.0)
    return R * sign[None, :], order


def _check_iteration_args(gamma, max_iter, tol) -> None:
    if not (isinstance(gamma, (int, float, np.floating)) and not isinstance(gamma, bool) and 0.0 <= gamma <= 1.0):
        raise DecompositionError(f"gamma must be a number in [0, 1] (1: varimax, 0: quartimax); got {gamma!r}")
    count_arg(max_iter, "max_iter", 1)
    if not (isinstance(tol, (int, float, np.floating)) and not isinstance(tol, bool) and 0 <= tol < np.inf):
        raise DecompositionError(f"tol must be a number >= 0; got {tol!r}")


def resolve_strategy(strategy: str, k: int) -> str:
    """``"auto"``: the fourth moments up to :data:`MOMENTS_MAX_K` components, one map pass per iteration above."""
    if strategy not in ("auto", "moments", "iterate"):
        raise DecompositionError(f"strategy must be 'auto', 'moments' or 'iterate'; got {strategy!r}")
    return ("moments" if k <= MOMENTS_MAX_K else "iterate") if strategy == "auto" else strategy


def rotation_of(f: ScaledSVD, *, gamma: float, tol: float, max_iter: int, strategy: str,
                progress: Progress | None = None) -> tuple[np.ndarray, int, bool, list[float]]:
    """The oriented rotation R (k, k) of :class:`ScaledSVD` ``f``, its iterations, convergence and criterion history."""
    n = f.plan.n_pixels
    if strategy == "moments":
        M, UtU = fourth_moments(f)

        def cube(W):
            return cube_from_moments(M, W)
    else:
        UtU = rotation_stat_pass(f, None, "rotation U^T U")
        calls = [0]

        def cube(W):
            calls[0] += 1
            out = rotation_stat_pass(f, W, f"rotation iteration {calls[0]}")
            if progress is not None:
                progress.update()
            return out
    W, n_iter, converged, history = orthomax(cube, UtU, n, gamma=gamma, tol=tol, max_iter=max_iter)
    R, _ = _orient(W, f.S, (f.V * np.sqrt(f.h)[:, None]).T if f.poisson else f.V.T)
    return R, n_iter, converged, history


def rotate(
    results: str | Path,
    n_components: int | None = None,
    *,
    gamma: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-12,
    strategy: Literal["auto", "moments", "iterate"] = "auto",
    progress: bool = False,
) -> xr.Dataset:
    """Spatial-simplicity (orthomax, default varimax) rotation of a stored Poisson-scaled SVD.

    The top-k orthonormal scaled scores U (D~ ~ U S V^T, D~ = G^-1/2 D H^-1/2)
    are rotated to U R, R orthogonal, maximising the orthomax criterion
    sum_c [sum_i B_ic^4 - (gamma/N)(sum_i B_ic^2)^2] of B = U R (N pixels), so
    that each pixel is described by few components (Keenan 2009). The
    statistics are reduced from the SVD's stored scores and pixel totals by
    the units of the montage plan, never from the counts (``attrs["passes"]``
    is 0). It is the problem HyperSpy solves with
    ``s.blind_source_separation(k, algorithm="orthomax", on_loadings=True,
    diff_order=0, whiten_method=None, gamma=gamma)`` when its decomposition
    loadings are U (the scaled scores over the singular values); see
    ``tests/test_rotate_mcr.py``.

    Parameters
    ----------
    results : path
        A results store with an ``svd`` group (:func:`xsi_dask.decompose`,
        written with :func:`xsi_dask.io.results.write_results`) holding
        ``pixel_counts``; its montage store must be unchanged.
    n_components : int, optional
        k, 2 <= k <= the stored components (default: the SVD's
        ``n_significant`` when >= 2, else all stored components).
    gamma : float
        Orthomax parameter in [0, 1]: 1 varimax (default), 0 quartimax.
    max_iter : int
        Iteration bound (default 1000).
    tol : float
        Stop when the criterion (the sum of the singular values of the
        iteration's k x k matrix) changes by less than ``tol`` times itself
        (default 1e-12: the criterion is flat near its maximum, and on a
        real map 1e-10 leaves R 1e-5 from its limit; HyperSpy's default is
        1.49e-7). Each iteration costs k^5 flops on the driver with
        ``"moments"``.
    strategy : {"auto", "moments", "iterate"}
        ``"moments"``: one pass over the maps for the k^4 fourth moments,
        then every iteration on the driver; ``"iterate"``: one pass over the
        maps per iteration (k x k each). ``"auto"``: moments for k <= 16.
        Both give the same rotation (to round-off).
    progress : bool
        A progress display of the passes over the maps.

    Returns
    -------
    xarray.Dataset
        The group ``"rotation"``: ``rotation (component_in, component)``, R
        (the rotated scaled scores are U R); ``loadings (component, energy)``
        = R^T S V^T H^1/2, the rotated spectra, unweighted like the SVD's;
        ``scores (tile, y, x, component)`` = scores_svd S^-1 R = G^1/2 U R,
        lazy from the stored scores (one chunk per tile), so that
        scores @ loadings equals the SVD's (the same k-component model);
        ``singular_values (component_in)`` used; ``criterion (iteration)``.
        Components are ordered by the scaled variance they carry
        (sum_q S_q^2 R_qc^2) and signed so that each spectrum's largest
        entry is positive. ``attrs``: ``n_iter``, ``converged``, ``gamma``,
        ``tol``, ``max_iter``, ``strategy``, ``passes`` (over the counts: 0),
        ``map_passes`` (over the stored maps), ``seconds``, and the SVD's
        store, store id, bin and view attributes.

    Raises
    ------
    DecompositionError
        No ``svd`` group in ``results`` (or no results store); an SVD
        without ``pixel_counts``; ``n_components`` not an integer in
        [2, stored components] or beyond the data's rank; ``gamma`` outside
        [0, 1]; a bad ``max_iter``, ``tol`` or ``strategy``.
    ViewError
        The SVD's montage store was rewritten or moved.

    Warns
    -----
    ConvergenceWarning
        ``max_iter`` reached before ``tol`` (the rotation is returned).

    References
    ----------
    Keenan, M. R. (2009), Surf. Interface Anal. 41, 79-87, doi:10.1002/sia.2949.
    Kaiser, H. F. (1958), Psychometrika 23, 187-200, doi:10.1007/BF02289233.
    """
    started = time.perf_counter()
    _check_iteration_args(gamma, max_iter, tol)
    resolve_strategy(strategy, 2)  # a bad name refused before the store is opened
    f = scaled_svd(results, n_components)
    k = f.k
    strategy = resolve_strategy(strategy, k)
    with Progress(f"orthomax rotation (k={k}, gamma={gamma:g})", 1 if strategy == "moments" else max_iter + 1,
                  unit="passes", enabled=progress) as bar:
        R, n_iter, converged, history = rotation_of(f, gamma=gamma, tol=tol, max_iter=max_iter, strategy=strategy,
                                                    progress=bar)
    if not converged and tol > 0:
        warnings.warn(f"the orthomax rotation stopped at max_iter={max_iter} before its criterion changed by less than "
                      f"tol={tol:g} of itself (last change {abs(history[-1] - history[-2]) / history[-1]:.2g}); raise "
                      "max_iter", ConvergenceWarning, stacklevel=2)
    svd = f.svd
    L = np.asarray(svd["loadings"].values[:k], dtype=np.float64)
    loadings = (R.T * f.S[None, :]) @ L
    T = (1.0 / f.S)[:, None] * R  # stored scores -> rotated maps
    scores = svd["scores"].isel(component=slice(0, k)).data @ T
    comp = np.arange(k)
    ds = xr.Dataset(
        {
            "rotation": (("component_in", "component"), R),
            "singular_values": ("component_in", f.S),
            "loadings": (("component", "energy"), loadings),
            "scores": (("tile", "y", "x", "component"), scores),
            "criterion": ("iteration", np.asarray(history, dtype=np.float64)),
        },
        coords={"component": comp, "component_in": comp, "iteration": np.arange(1, len(history) + 1),
                "energy": svd["energy"], **map_coords(svd)},
        attrs={
            **carried_attrs(svd),
            "method": f"orthomax rotation of the {'Poisson-scaled ' if f.poisson else ''}SVD scores (spatial simplicity)",
            "n_components": k,
            "gamma": float(gamma),
            "tol": float(tol),
            "max_iter": int(max_iter),
            "strategy": strategy,
            "n_iter": int(n_iter),
            "converged": bool(converged),
            "passes": f.plan.passes,
            "map_passes": len(f.plan.log),
            "seconds": time.perf_counter() - started,
            "xsi_dask_version": __version__,
        },
    )
    ds["rotation"].attrs["description"] = "R: the rotated scaled scores are U R (U = G^-1/2 scores_svd S^-1)"
    ds["loadings"].attrs["description"] = "rotated component spectra, unweighted (R^T S V^T H^1/2)"
    ds["scores"].attrs["description"] = "rotated component maps, unweighted (G^1/2 U R = scores_svd S^-1 R)"
    return ds
