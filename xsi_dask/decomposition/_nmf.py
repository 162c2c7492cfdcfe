"""Distributed Poisson (KL) and Frobenius NMF of a montage: :func:`nmf`.

D (pixels x channels, raw counts) ~ W H with W >= 0 (pixels x k) kept per unit
in a scratch folder between passes and H >= 0 (k x channels) reduced. Lee &
Seung's multiplicative updates in scikit-learn's MU order: per iteration and
unit, W_u is updated with H fixed, then W_u^T (D_u / W_u H) and the column
sums of W_u are accumulated (one reduction pass, the backend's
``kl_mu_step``); the reduced sums update H (:func:`update_h_kl`). WH is
evaluated only at the non-zeros of D, so an iteration is one pass and
O(nnz k). The driver, :func:`nmf`, loops over these pure steps. Known
spectra (``fixed_spectra``) are rows of H that the H update leaves as they are
(:mod:`._fixed` checks and places them).

References
----------
Lee, D. D. & Seung, H. S. (2001). Algorithms for non-negative matrix
factorization. NIPS 13, 556-562.
Boutsidis, C. & Gallopoulos, E. (2008). SVD based initialization: a head start
for nonnegative matrix factorization. Pattern Recognition 41, 1350-1362.
doi:10.1016/j.patcog.2007.09.010 (NNDSVD).
"""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import dask.config
import numpy as np
import xarray as xr

from .. import config
from .._dask import compute, current_client
from ..engine import Block, Plan, Unit, make_plan
from ..engine.backends._numba_kernels import EPSILON
from ..engine.scratch import Scratch, ScratchError, sweep_scratch
from ..errors import ConvergenceWarning, DecompositionError, StoreExistsError
from ..io.results import has_group, open_results, write_results
from ..progress import Progress
from ._checkpoint import SigtermStop, Terminated, checkpoint_every_of, digest, link_or_copy, open_checkpoint
from ._fixed import place_references, reference_spectra
from ._svd import count_arg, map_coords, poisson_svd, run_attrs, svd_passes

__all__ = ["nmf", "update_h_kl", "update_h_fro", "objective", "nndsvda_factors"]

_EPS64 = float(np.finfo(np.float64).eps)

log = logging.getLogger(__name__)


# ---- pure steps: the H updates and the objective (each tested against dense NumPy) ----

def update_h_kl(H: np.ndarray, num_ht: np.ndarray, w_sum: np.ndarray, w_root: np.ndarray | None = None,
                lam: float = 0.0, fixed: np.ndarray | None = None) -> np.ndarray:
    """KL multiplicative update of H (k, channels) from the reduced sums of the W step.

    H <- H * (W^T (D / WH))^T / (sum_i W_ic [+ lam/2 sum_i sqrt(W_ic) / sqrt(s_c)]),
    s = the row sums of H on entry; zero column sums of W are replaced by 1,
    and entries below float64 eps set to 0 (scikit-learn's MU solver).
    ``num_ht`` (channels, k), ``w_sum`` and ``w_root`` (k,); ``fixed``: row
    numbers (or a (k,) boolean mask) of H kept as they are (known spectra).
    """
    H0 = H
    s_h = H.sum(1)
    den = np.where(w_sum == 0, 1.0, w_sum)
    if lam > 0:  # the H gradient of lam sum_c sqrt(s_c) sum_i sqrt(W_ic)
        den = den + 0.5 * lam * w_root / np.sqrt(np.where(s_h > 0, s_h, 1.0))
    H = H * (num_ht.T / den[:, None])
    H[H < _EPS64] = 0.0
    if fixed is not None:
        H[fixed] = H0[fixed]
    return H


def update_h_fro(H: np.ndarray, num_ht: np.ndarray, wtw: np.ndarray, fixed: np.ndarray | None = None) -> np.ndarray:
    """Frobenius multiplicative update of H: H * (W^T D) / (W^T W H), zero denominators -> float32 eps.

    ``fixed``: row numbers (or a (k,) boolean mask) of H kept as they are (known spectra).
    """
    den = wtw @ H
    den[den == 0] = EPSILON
    Hn = H * (num_ht.T / den)
    if fixed is not None:
        Hn[fixed] = H[fixed]
    return Hn


def objective(loss: str, data_term: float, w_sum: np.ndarray, wtw: np.ndarray, w_root: np.ndarray, H: np.ndarray, *,
              total: float, sum_sq: float, lam: float = 0.0) -> float:
    """The NMF objective from reduced terms.

    KL: sum d log(d/WH) + sum WH - sum d (+ lam sum_ic sqrt(W_ic s_c)), with
    ``data_term`` = sum d log(d/WH) and sum WH = w_sum . s (s the row sums of H);
    Frobenius: 0.5 (sum d^2 - 2 <D, WH> + tr(W^T W H H^T)) with ``data_term`` = <D, WH>.
    ``total`` = sum d, ``sum_sq`` = sum d^2.
    """
    if loss == "kl":
        pen = lam * float(w_root @ np.sqrt(H.sum(1))) if lam > 0 else 0.0
        return data_term + float(w_sum @ H.sum(1)) - total + pen
    return 0.5 * (sum_sq - 2 * data_term + float(np.sum(wtw * (H @ H.T))))


# ---- unit tasks: W of a unit lives in the scratch folder between passes ----

def _w(unit: Unit, slot: int) -> str:
    return f"W{unit.tile}-{unit.start}.{slot}"


def _kl_step(b: Block, scratch: Scratch, src: int, Ht, denom_w, with_loss: bool, lam: float, sqrt_s, with_h: bool):
    W = scratch.load(_w(b.unit, src))
    W, num_ht, w_sum, w_root, loss = b.kernels.kl_mu_step(*b.csr, W, Ht, denom_w, with_loss=with_loss, lam=lam,
                                                          sqrt_s=sqrt_s, with_h=with_h)
    scratch.save(_w(b.unit, 1 - src), W)
    return num_ht, w_sum, w_root, np.array(loss)


def _fro_step(b: Block, scratch: Scratch, src: int, Ht, HHt):
    W = scratch.load(_w(b.unit, src))
    W, num_ht, wtw, cross = b.kernels.fro_mu_step(*b.csr, W, Ht, HHt)
    scratch.save(_w(b.unit, 1 - src), W)
    return num_ht, wtw, np.array(cross)


def _loss_terms(b: Block, scratch: Scratch, slot: int, Ht):
    W = scratch.load(_w(b.unit, slot))
    kl, cross, sq = b.kernels.nmf_loss_terms(*b.csr, W, Ht)
    return np.array([kl, cross, sq]), W.sum(0), W.T @ W, np.sqrt(W).sum(0)


def _svd_u(b: Block, Vs, scratch: Scratch) -> np.ndarray:
    """U_u = D_u Vs (rows x k), the pixel factors of the SVD behind NNDSVD, saved; returns its sign-part norms."""
    U = b.kernels.csr_dense(*b.csr, Vs)
    scratch.save("U" + _w(b.unit, 0), U)
    return np.stack([(np.maximum(U, 0) ** 2).sum(0), (np.minimum(U, 0) ** 2).sum(0)])


def _nndsvd_w(b: Block, scratch: Scratch, sign, scale, fill: float) -> None:
    """NNDSVDa W_u from the saved U_u: per component the chosen sign part of U, scaled; zeros -> fill."""
    U = scratch.load("U" + _w(b.unit, 0))
    P = U * sign[None, :]
    P[:, 0] = np.abs(U[:, 0])  # the first component uses |U_0|
    W = np.maximum(P, 0.0) * scale[None, :]
    W[W < 1e-6] = 0.0
    W[W == 0] = fill
    scratch.save(_w(b.unit, 0), W)


def _random_w(b: Block, k: int, avg: float, seed: int, scratch: Scratch) -> None:
    rng = np.random.default_rng([seed, b.unit.tile])  # drawn for the whole tile: the same W however tiles are split
    W = np.abs(avg * rng.standard_normal((b.pixels_per_tile, k)))
    scratch.save(_w(b.unit, 0), W[b.unit.start : b.unit.stop])


def _abundance(blocks: list[Block], scratch: Scratch, slot: int, scale, order):
    """Abundances of one tile (1, y, x, k) from the W of its units."""
    W = np.concatenate([scratch.load(_w(b.unit, slot)) for b in blocks])
    return (W[:, order] * scale[None, :]).reshape(1, *blocks[0].tile_shape, order.size)


# ---- the NNDSVDa start ----

def nndsvda_factors(plan: Plan, scratch: Scratch, S: np.ndarray, loadings: np.ndarray, poisson: bool,
                    h: np.ndarray) -> np.ndarray:
    """NNDSVDa from SVD factors (scikit-learn's variant: zeros filled with the mean count).

    W_u is saved to ``scratch`` slot 0 for every unit (one pass: U_u = D_u Vs),
    and H (k, channels) is returned.

    Parameters
    ----------
    S : (k,)
        Singular values of D~ (Poisson-scaled) or of D.
    loadings : (channels, k)
        Unweighted right singular vectors: H^1/2 V for a Poisson-scaled SVD
        (``decompose``'s ``loadings``), V for a raw one.
    poisson : bool
        Whether the SVD was Poisson-scaled. Then D ~ sum_j (D H^-1/2 v_j)(H^1/2 v_j)^T:
        the scaled SVD's components follow the phases, where the raw SVD's
        leading components describe the highest-count peak (docs/design.md).
    h : (channels,)
        Counts per channel over the plan's tiles.
    """
    k = S.size
    wh = np.zeros_like(h)
    np.divide(1.0, np.sqrt(h), out=wh, where=h > 0)
    V = wh[:, None] * loadings if poisson else loadings
    # D ~ sum_j S_j u_j y_j^T with unit spectra y_j and pixel factors u_j = D Vs_j
    y = loadings
    ny = np.linalg.norm(y, axis=0)
    y = y / np.where(ny > 0, ny, 1.0)
    Vs = np.ascontiguousarray(wh[:, None] * V * (ny / S)[None, :] if poisson else V / S[None, :])
    # U_u = D_u Vs is computed once per unit and saved: the norms are reduced
    # from it, and W_u is built from it in a second, cheap step
    norms = plan.reduce(_svd_u, Vs, scratch, label="NNDSVD", pure=False, literal=(Scratch,))
    x_p, x_n = np.sqrt(norms[0]), np.sqrt(norms[1])
    y_p = np.linalg.norm(np.maximum(y, 0), axis=0)
    y_n = np.linalg.norm(np.minimum(y, 0), axis=0)
    m_p, m_n = x_p * y_p, x_n * y_n
    use_pos = m_p > m_n
    sign = np.where(use_pos, 1.0, -1.0)
    x_nrm = np.where(use_pos, x_p, x_n)
    y_nrm = np.where(use_pos, y_p, y_n)
    lbd = np.sqrt(S * np.where(use_pos, m_p, m_n))
    w_scale = np.divide(lbd, x_nrm, out=np.zeros(k), where=x_nrm > 0)
    H = (np.maximum(y * sign[None, :], 0.0) * np.divide(lbd, y_nrm, out=np.zeros(k), where=y_nrm > 0)[None, :]).T
    # the first component: sqrt(S_0) |u_0| and sqrt(S_0) |y_0|
    w_scale[0] = np.sqrt(S[0])
    H[0] = np.sqrt(S[0]) * np.abs(y[:, 0])
    avg = h.sum() / (plan.n_pixels * plan.n_channels)  # NNDSVDa: zeros -> the mean count
    H[H < 1e-6] = 0.0
    H[H == 0] = avg
    plan.reduce(_nndsvd_w, scratch, sign, w_scale, avg, label="NNDSVD W", pure=False, literal=(Scratch,),
                reads_counts=False)
    for u in plan.units:  # removed here, not in the tasks, so a task that is run again still finds its U
        scratch.remove("U" + _w(u, 0))
    return H


def _svd_init(init: xr.Dataset, plan: Plan, k: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(S, loadings (channels, k), poisson) of an SVD Dataset, checked against the plan."""
    a = init.attrs
    if "singular_values" not in init or "loadings" not in init:
        raise DecompositionError("init: a Dataset must be an SVD result of xsi_dask.decompose (singular_values, loadings)")
    if a.get("store_uuid", None) not in (None, plan.store_uuid) or (a.get("store_uuid") is None and a.get("store") != plan.store):
        raise DecompositionError(f"init: the SVD is of another montage store ({a.get('store')}), not {plan.store}")
    if "tile" not in init.coords or [int(t) for t in np.atleast_1d(init["tile"].values)] != list(plan.tiles):
        raise DecompositionError("init: the SVD was computed on other tiles than this montage view's "
                                 f"({list(plan.tiles)}); decompose the same view")
    if int(a.get("center", 0)):
        raise DecompositionError("init: NNDSVDa needs an uncentred SVD; this one is centred (center=True)")
    if init.sizes["component"] < k or init.sizes["energy"] != plan.n_channels:
        raise DecompositionError(f"init: the SVD has {init.sizes['component']} components and {init.sizes['energy']} "
                                 f"channels; NMF with k={k} needs >= {k} components of {plan.n_channels} channels")
    S = np.asarray(init["singular_values"].values[:k], dtype=np.float64)
    L = np.ascontiguousarray(np.asarray(init["loadings"].values[:k], dtype=np.float64).T)
    return S, L, bool(int(a.get("poisson", 1)))


# ---- the identity of a run (what a checkpoint must match to be resumed) ----

def _identity(plan: Plan, k: int, loss: str, lam: float, tol: float, loss_every: int, init, seed: int,
              power_iters: int | None, refs: np.ndarray | None = None) -> dict:
    """Everything that decides the iterates and the loss history of a run (a checkpoint must match it to be resumed)."""
    if isinstance(init, xr.Dataset):
        S, L, poisson = _svd_init(init, plan, k)
        start = f"{'poisson-nndsvda' if poisson else 'nndsvda'} from a given SVD ({digest(S, L)})"
    elif isinstance(init, str) and init != "random":
        q = power_iters if power_iters is not None else dask.config.get("xsi-dask.power-iters", None)
        start = f"{init} (seed {seed}, power iterations {'default' if q is None else int(q)})"
    elif isinstance(init, str):
        start = f"random (seed {seed})"
    else:
        W0, H0 = init
        start = f"given (W, H) ({digest(H0, *list(W0))})"
    return {
        "store": plan.store, "store_uuid": plan.store_uuid, "tiles": [int(t) for t in plan.tiles],
        "units": [[int(u.tile), int(u.start), int(u.stop)] for u in plan.units], "channels": int(plan.n_channels),
        "channel_runs": [list(r) for r in (plan.source.runs or ())], "bin": int(plan.bin),
        "backend": plan.backend_label, "n_components": k, "loss": loss, "sparsity": float(lam), "tol": float(tol),
        "loss_every": int(loss_every), "init": start,
        # None when no spectrum is fixed, so checkpoints of earlier versions stay resumable
        "fixed_spectra": None if refs is None else f"{refs.shape[0]} references ({digest(refs)})",
    }


def _check_request(plan: Plan, k: int, loss: str, lam: float, init, max_iter: int, tol: float, out, overwrite: bool,
                   power_iters: int | None = None):
    """Every argument checked before the first pass."""
    M = plan.n_channels
    count_arg(k, "n_components", 1, M, f"{M} (channels)")
    if loss not in ("kl", "frobenius"):
        raise DecompositionError(f"loss must be 'kl' or 'frobenius'; got {loss!r}")
    if not lam >= 0 or (lam > 0 and loss != "kl"):
        raise DecompositionError(f"sparsity must be >= 0, and is for the KL loss only; got {lam!r} with loss {loss!r}")
    count_arg(max_iter, "max_iter", 1)
    if not (isinstance(tol, (int, float, np.floating)) and 0 <= tol < np.inf):
        raise DecompositionError(f"tol must be a number >= 0; got {tol!r}")
    ok = (isinstance(init, str) and init in ("nndsvda", "poisson-nndsvda", "random")) or isinstance(init, xr.Dataset) \
        or (isinstance(init, tuple) and len(init) == 2)
    if not ok:
        raise DecompositionError(
            f"init must be 'poisson-nndsvda', 'nndsvda', 'random', an SVD Dataset or a (W, H) pair; got {init!r}")
    if power_iters is not None and not (isinstance(init, str) and init in ("nndsvda", "poisson-nndsvda")):
        raise DecompositionError(f"power_iters is for the SVD that init='poisson-nndsvda'/'nndsvda' computes; init "
                                 f"{init if isinstance(init, str) else type(init).__name__!r} computes none: leave it out")
    if out is not None:
        if has_group(out, "nmf") and not overwrite:
            raise StoreExistsError(f"{out} already has an 'nmf' group; pass --overwrite (overwrite=True) to replace it")
    else:
        need = plan.n_pixels * k * 8
        limit = config.get_bytes("in-memory-limit")
        if need > limit:
            raise DecompositionError(
                f"the abundances ({need / 2**30:.2f} GiB) exceed xsi-dask.in-memory-limit ({limit / 2**30:.2f} GiB); pass "
                "out=RESULTS.zarr to write them tile by tile, or raise the limit"
            )


def nmf(
    montage: xr.DataArray,
    n_components: int,
    *,
    loss: Literal["kl", "frobenius"] = "kl",
    max_iter: int = 200,
    tol: float = 1e-4,
    init: str | xr.Dataset | tuple[Sequence[np.ndarray] | np.ndarray, np.ndarray] = "poisson-nndsvda",
    seed: int = 0,
    power_iters: int | None = None,
    loss_every: int = 10,
    sparsity: float = 0.0,
    refit_iter: int = 20,
    fixed_spectra: np.ndarray | xr.DataArray | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = False,
) -> xr.Dataset:
    """Non-negative matrix factorization of a count montage, one pass over the tiles per iteration.

    Minimises the generalized Kullback-Leibler divergence
    ``sum(D log(D / WH) - D + WH)`` (Poisson maximum likelihood; ``loss="kl"``)
    or ``0.5 ||D - WH||_F^2`` (``loss="frobenius"``) over W, H >= 0 with
    Lee-Seung multiplicative updates, iterate for iterate as scikit-learn's
    ``NMF(solver="mu")`` (same update order, the same clipping of WH at
    float32 eps and of small H to 0 for KL).

    Parameters
    ----------
    montage : xarray.DataArray
        Counts (tile, y, x, energy) from :func:`xsi_dask.open_montage`.
    n_components : int
        Endmembers k.
    loss : {"kl", "frobenius"}
    max_iter : int
        Most iterations (passes), default 200.
    tol : float
        Stop when the loss changes by less than ``tol`` times the initial loss
        in one iteration (default 1e-4; 0 runs ``max_iter`` iterations).
    init : "poisson-nndsvda", "nndsvda", "random", an SVD Dataset, or (W, H)
        NNDSVDa (Boutsidis & Gallopoulos 2008, zeros filled with the mean
        count, as scikit-learn) from the Poisson-scaled randomized SVD unweighted
        to counts (default), or from the SVD of the raw counts (``"nndsvda"``,
        scikit-learn's); NNDSVDa from an SVD already computed by
        :func:`xsi_dask.decompose` on the same montage view (uncentred, with
        at least ``n_components`` components; Poisson-scaled or not), which
        saves the SVD's passes; seeded random; or given arrays: W as
        (tile, y, x, k) or one (pixels, k) array per tile, H as (k, channels). On the real maps
        both NNDSVDa variants end within 0.5 % in KL loss; on a simulated
        montage whose carbon peak dominates the counts, the raw-count SVD made
        NMF slice that peak into several components and miss the minor phases
        (docs/design.md).
    seed : int
        Seed of the SVD test matrix or the random init.
    power_iters : int, optional
        Power iterations of the SVD behind NNDSVDa.
    loss_every : int
        Evaluate the loss every this many iterations (default 10, as
        scikit-learn's convergence check) and after the last; its logarithm
        per non-zero costs as much as an update. 1 records every iteration.
    sparsity : float
        Weight lam >= 0 of the L1/2 sparsity term ``lam sum_ic sqrt(A_ic)``
        on the abundances A (counts of endmember c in pixel i; KL loss only).
        Default 0: plain NMF, iterate for iterate as scikit-learn. About 3-6
        resolve the ambiguity of count data at tens of counts per pixel,
        where plain NMF fits each pixel's Poisson noise with small amounts of
        every endmember and trades shared peaks (the C K line of a carbide on a
        carbon film) between endmembers; the term prefers fewer endmembers per
        pixel. In nats per square root of a count, so its effect fades as the
        counts grow (Qian et al. 2011; Fevotte & Idier 2011 for the MU form).
    refit_iter : int
        With ``sparsity`` > 0: passes that then refit the abundances to the
        counts with the spectra fixed and no penalty (default 20), because the
        term shrinks every abundance; the sparsity shapes the spectra, and the
        abundances stay in counts.
    fixed_spectra : array-like (n_fixed, channels) or xarray.DataArray (component, energy), optional
        Known endmember spectra, n_fixed <= ``n_components``: these rows of H
        stay equal to the references (each normalised to sum 1) and only the
        other k - n_fixed spectra are fitted; the abundances (W) of every
        component are fitted as usual, in the same multiplicative updates
        (the H update leaves the fixed rows out). A DataArray's ``energy``
        coordinate must equal the view's (e.g. another run's ``spectra``,
        :func:`~xsi_dask.io.readers.read_reference_spectrum` of a spectrum
        file, or a region's spectrum, :func:`region_spectrum` or
        ``montage.isel(...).sum(("y", "x"))``); a plain array is taken to be
        over the view's channels. Start: each reference replaces the
        ``init`` component most like it (Hungarian assignment on the cosine)
        at that component's scale, keeping its abundance map; the other
        components start from ``init`` (see :func:`place_references`).
    out : str or Path, optional
        A results Zarr store: the result is written there as group ``nmf``
        (abundances tile by tile; the store is created if needed) and the
        returned dataset is opened from it. Without ``out`` the abundances are
        computed into memory before ``nmf`` returns (refused up front when
        they would exceed ``xsi-dask.in-memory-limit``).
    overwrite : bool
        Replace an existing ``nmf`` group of ``out``.
    checkpoint_every : int, optional
        Commit a checkpoint after the start and every this many iterations,
        and at the end of the iteration in which SIGTERM arrives (default
        the config ``xsi-dask.nmf-checkpoint-every``, 10; 0: no checkpoints
        and no SIGTERM handling). See Notes.
    resume : bool
        Continue from the checkpoint of an earlier run of the same NMF on the
        same store and tiles (killed, or stopped by SIGTERM) instead of
        starting: the result equals the uninterrupted run's bit for bit
        (on the synchronous scheduler or the same number of workers; with
        another number of workers W is re-split per tile and the sums are
        added in another order: equal to rounding). Without a checkpoint
        the run starts from ``init`` (``attrs["resumed_from_iteration"]`` is
        set only when it resumed), so a batch script can always pass it. A
        checkpoint of an NMF with other parameters is refused, naming them;
        ``max_iter`` may differ (not below the checkpoint's iteration).
    progress : bool
        One progress display for the run (passes, with the iteration and loss).

    Returns
    -------
    xarray.Dataset
        ``spectra (component, energy)``: endmember spectra normalised to sum 1;
        ``abundances (tile, y, x, component)``: counts of each endmember per
        pixel (lazy, one chunk per tile), so D ~ abundances @ spectra;
        ``loss (iteration)``: the objective (divergence plus the sparsity
        term) after 0, ``loss_every``, 2 ``loss_every``, ... iterations and
        after the last; ``attrs["divergence"]``: the loss of the returned
        factors without the sparsity term. Components are ordered by total counts, largest first.
        With ``fixed_spectra``: the fixed components come first, in the
        references' order (``spectra`` equal to the normalised references
        exactly), then the free ones by total counts; ``fixed (component)``
        marks them and ``attrs["fixed_components"]`` lists their numbers.

    Raises
    ------
    DecompositionError
        Bad ``n_components``, ``loss``, ``init``, ``sparsity``, ``max_iter``,
        ``tol``, ``checkpoint_every`` or array shapes; ``fixed_spectra`` with
        more references than ``n_components``, or a reference negative,
        non-finite or all zero (:func:`reference_spectra`); an init SVD of another
        montage view; the scratch folder cannot be created; in-memory
        abundances too large; ``resume`` with a checkpoint of other
        parameters; another live process checkpointing the same NMF.
    ScratchError
        The scratch or checkpoint folder filled its disk, or was removed while
        the run used it (:class:`~xsi_dask.engine.scratch.ScratchLostError`);
        the message names the folder. The last checkpoint stays: ``resume``.
    StoreExistsError
        ``out`` already has an ``nmf`` group and ``overwrite`` is false
        (checked before any pass).
    ViewError
        A montage view the engine cannot honour; ``fixed_spectra`` on another
        energy axis than the view's.

    Notes
    -----
    W of each tile lives in a scratch folder between iterations (config
    ``xsi-dask.scratch``; default beside the montage store, which every
    worker reaches), so a worker holds only the tiles it is working on. The
    folder is removed before ``nmf`` returns (or raises); the folder of a run
    that was killed carries a lock file (host, PID) and is removed by the next
    NMF on the same store or by ``xsi-dask clean STORE``.

    Checkpoints (H, the loss history, the per-unit W of the current slot,
    the reduced sums) go to ``.xsi-dask-checkpoint-nmf-<store uuid>-<tiles>``
    beside the scratch folders; each commit is atomic (a new state folder,
    then one rename of its manifest), W is hard-linked from the scratch
    folder where possible, and the folder outlives the process until the NMF
    completes. SIGTERM (how SLURM ends a job's walltime) is caught in the
    main thread only: the current iteration finishes, its state is
    committed, then the previous SIGTERM handler is called, or under the
    default disposition the run unwinds (its scratch folder removed) and the
    process ends by SIGTERM. A SIGTERM during the final passes lets them
    finish first. On a cluster, workers that receive SIGTERM themselves may
    fail the pass under way; the previous checkpoint then remains.

    References
    ----------
    Qian, Y., Jia, S., Zhou, J. & Robles-Kelly, A. (2011). Hyperspectral
    unmixing via L1/2 sparsity-constrained nonnegative matrix factorization.
    IEEE Trans. Geosci. Remote Sens. 49, 4282-4297. doi:10.1109/TGRS.2011.2144605
    Fevotte, C. & Idier, J. (2011). Algorithms for nonnegative matrix
    factorization with the beta-divergence. Neural Comput. 23, 2421-2456.
    doi:10.1162/NECO_a_00168
    """
    started = time.perf_counter()
    plan = make_plan(montage)
    k, lam = n_components, float(sparsity)
    _check_request(plan, k, loss, lam, init, max_iter, tol, out, overwrite, power_iters)
    k, max_iter = int(k), int(max_iter)
    refs = None if fixed_spectra is None else reference_spectra(fixed_spectra, montage["energy"], k)
    fixed_pos: np.ndarray | None = None  # the rows of H that hold the references
    plan.check_memory(k)  # refuse workers too small, before any pass
    loss_every = count_arg(loss_every, "loss_every", 1)
    refit_iter = count_arg(refit_iter, "refit_iter", 0)
    every = checkpoint_every_of(checkpoint_every)
    # checkpoints by the configured default also wait a minimum time, so that a run of fast iterations (a small
    # montage: milliseconds an iteration) does not spend its time in fsyncs; checkpoint_every given is exact
    min_gap = 0.0 if checkpoint_every is not None else float(dask.config.get("xsi-dask.nmf-checkpoint-min-interval", 60))
    M, npix = plan.n_channels, plan.pixels_per_tile
    h = plan.sum_spectrum()
    total = float(h.sum())
    on_cluster = current_client() is not None
    ckpt = found = None
    superseded = False
    if every or resume:
        identity = _identity(plan, k, loss, lam, tol, loss_every, init, seed, power_iters, refs)
        ckpt, found, superseded = open_checkpoint(plan, identity, resume=resume, max_iter=max_iter, on_cluster=on_cluster)
    sweep_scratch(plan.store, plan.store_uuid)  # folders of killed runs on this store
    n_init = 0 if found is not None else 1 + svd_passes("randomized", power_iters) \
        if isinstance(init, str) and "nndsvda" in init else (1 if isinstance(init, xr.Dataset) else 0)
    n0 = int(found["n_iter"]) if found is not None else 0
    n_refit = int(refit_iter) if lam > 0 else 0
    label = f"NMF ({'KL' if loss == 'kl' else 'Frobenius'}, k={k})"
    tasks = dict(pure=False, literal=(Scratch,))
    committed = False
    stop = SigtermStop(enabled=every > 0)
    try:
        with stop, Scratch.create(plan.store, plan.store_uuid, on_cluster=on_cluster) as scratch, \
                Progress(label, n_init + max_iter - n0 + 2 + n_refit, unit="passes", enabled=progress) as bar:

            def loss_pass(slot: int, H: np.ndarray, what: str):
                """The loss terms of the state in ``slot``: one pass (also gives sum D^2 for Frobenius)."""
                res = plan.reduce(_loss_terms, scratch, slot, np.ascontiguousarray(H.T), label=f"NMF loss ({what})",
                                  **tasks)
                bar.update()
                return res

            def value(terms, w_sum, wtw, w_root, H, penalty=True) -> float:
                return objective(loss, float(terms[0] if loss == "kl" else terms[1]), w_sum, wtw, w_root, H, total=total,
                                 sum_sq=sum_sq, lam=lam if penalty else 0.0)

            last_commit = started

            def due(n: int) -> bool:
                """A periodic checkpoint after ``n`` iterations: every ``every``, and not sooner than ``min_gap`` s."""
                return bool(every) and n % every == 0 and time.perf_counter() - last_commit >= min_gap

            def commit(n: int) -> None:
                """The state after ``n`` iterations, committed to the checkpoint (W of slot n % 2 linked)."""
                nonlocal committed, last_commit
                last_commit = time.perf_counter()
                ckpt.commit(
                    {"kind": "nmf", "n_iter": n, "init_name": init_name, "identity": identity,
                     "fixed_rows": None if fixed_pos is None else [int(i) for i in fixed_pos]},
                    {"H": H, "history": np.asarray(history, dtype=np.float64), "recorded": np.asarray(recorded),
                     "w_sum": w_sum, "wtw": wtw, "w_root": w_root, "sum_sq": np.float64(sum_sq)},
                    {_w(u, "ckpt"): scratch.path / f"{_w(u, n % 2)}.npy" for u in plan.units},
                )
                committed = True

            if found is not None:
                # the state after n0 iterations, exactly as the interrupted run held it
                H = ckpt.load(found, "H")
                history = [float(v) for v in ckpt.load(found, "history")]
                recorded = [int(v) for v in ckpt.load(found, "recorded")]
                w_sum, wtw, w_root = (ckpt.load(found, n) for n in ("w_sum", "wtw", "w_root"))
                sum_sq = float(ckpt.load(found, "sum_sq"))
                init_name = str(found["init_name"])
                if refs is not None:
                    fixed_pos = np.asarray(found["fixed_rows"], dtype=np.int64)
                saved = [Unit(*u) for u in found["identity"]["units"]]
                if saved == list(plan.units):
                    for u in plan.units:
                        src, dst = ckpt.file(found, _w(u, "ckpt")), scratch.path / f"{_w(u, n0 % 2)}.npy"
                        try:
                            link_or_copy(src, dst)
                        except OSError as exc:
                            raise ScratchError(f"cannot restore W of tile {u.tile} from the checkpoint {ckpt.path} "
                                               f"({exc}); remove the checkpoint to start afresh") from exc
                else:  # another number of workers: the same W rows, cut into this plan's units
                    log.info("resuming NMF with %d work units instead of the checkpoint's %d: the sums are added in "
                             "another order", len(plan.units), len(saved))
                    for t in plan.tiles:
                        W = np.concatenate([ckpt.load(found, _w(u, "ckpt")) for u in sorted(saved) if u.tile == t])
                        if W.shape != (npix, k):
                            raise ScratchError(f"W of tile {t} in the checkpoint {ckpt.path} has shape {W.shape}, not "
                                               f"({npix}, {k}); remove the checkpoint to start afresh")
                        for u in plan.units_of(t):
                            scratch.save(_w(u, n0 % 2), W[u.start : u.stop])
                committed = True  # this run now owns the checkpoint
            else:
                if isinstance(init, xr.Dataset):
                    S, L, poisson = _svd_init(init, plan, k)
                    H = nndsvda_factors(plan, scratch, S, L, poisson, h)
                    init_name = ("poisson-nndsvda" if poisson else "nndsvda") + " (from the given SVD)"
                    bar.update()
                elif init in ("nndsvda", "poisson-nndsvda"):
                    poisson = init == "poisson-nndsvda"
                    f = poisson_svd(plan, k, power_iters=power_iters, oversampling=10, poisson=poisson, seed=seed,
                                    progress=bar)
                    L = np.sqrt(f.op.h)[:, None] * f.V if poisson else f.V
                    H = nndsvda_factors(plan, scratch, f.S, L, poisson, h)
                    init_name = init
                    bar.update()
                elif isinstance(init, str):  # random
                    avg = np.sqrt(total / (plan.n_pixels * M) / k)
                    rng = np.random.default_rng(seed)
                    H = np.abs(avg * rng.standard_normal((k, M)))
                    plan.reduce(_random_w, k, avg, seed, scratch, label="random W", reads_counts=False, **tasks)
                    init_name = init
                else:
                    W0, H = init
                    H = np.array(H, dtype=np.float64)
                    W0 = list(W0)
                    if H.shape != (k, M) or len(W0) != len(plan.tiles):
                        raise DecompositionError(
                            f"init (W, H): expected {len(plan.tiles)} tiles of W ({npix}, {k}) and H ({k}, {M}); "
                            f"got {len(W0)} tiles and H {H.shape}"
                        )
                    for t, w in zip(plan.tiles, W0):
                        w = np.asarray(w, dtype=np.float64)
                        if w.size != npix * k:
                            raise DecompositionError(f"init (W, H): W of tile {t} has shape {w.shape}; expected ({npix}, {k})")
                        w = w.reshape(npix, k)
                        for u in plan.units_of(t):
                            scratch.save(_w(u, 0), w[u.start : u.stop])
                    init_name = "custom"
                H = np.ascontiguousarray(H, dtype=np.float64)
                if refs is not None:  # the known spectra replace the start's components most like them
                    H, fixed_pos = place_references(H, refs)
                terms, w_sum, wtw, w_root = loss_pass(0, H, "initial")
                sum_sq = float(terms[2])
                history = [value(terms, w_sum, wtw, w_root, H)]
                recorded = [0]  # history[i] is the loss after recorded[i] iterations
                if due(0) or stop.requested:
                    commit(0)  # the start (an SVD's worth of passes) is not computed again
            if stop.requested:
                stop.act()
            n_iter = n0
            converged = False
            for n_iter in range(n0 + 1, max_iter + 1):
                src = (n_iter - 1) % 2  # W after n_iter - 1 iterations; this one writes the other slot
                Ht = np.ascontiguousarray(H.T)
                with_loss = n_iter > 1 and (n_iter - 1) % loss_every == 0  # the loss of the state on entry
                if loss == "kl":
                    s_h = H.sum(1)
                    denom_w = np.where(s_h == 0, EPSILON, s_h)
                    num_ht, stat, new_root, entry = plan.reduce(_kl_step, scratch, src, Ht, denom_w, with_loss, lam,
                                                                np.sqrt(s_h), True, label=f"NMF iteration {n_iter}", **tasks)
                else:
                    num_ht, stat, entry = plan.reduce(_fro_step, scratch, src, Ht, H @ H.T,
                                                      label=f"NMF iteration {n_iter}", **tasks)
                    new_root = w_root
                if with_loss:
                    history.append(value((entry, entry), w_sum, wtw, w_root, H))
                    recorded.append(n_iter - 1)
                w_root = new_root
                if loss == "kl":
                    w_sum = stat
                    H = update_h_kl(H, num_ht, stat, w_root, lam, fixed_pos)
                else:
                    wtw = stat
                    H = update_h_fro(H, num_ht, wtw, fixed_pos)
                bar.update(iteration=n_iter, loss=history[-1])
                if tol > 0 and recorded[-1] == n_iter - 1 and len(history) > 1 and \
                        abs(history[-2] - history[-1]) < tol * abs(history[0]):
                    converged = True
                    break
                if stop.requested:  # SIGTERM: commit this iteration, then what SIGTERM was to do
                    commit(n_iter)
                    stop.act()
                elif n_iter < max_iter and due(n_iter):
                    commit(n_iter)
            slot = n_iter % 2
            # the loss after the last update: one more evaluation pass (no update)
            terms, w_sum, wtw, w_root = loss_pass(slot, H, "final")
            history.append(value(terms, w_sum, wtw, w_root, H))
            recorded.append(n_iter)
            if n_refit:
                # the penalty shrinks every abundance (a pure pixel of g counts ends near
                # (sqrt(g + lam^2/4) - lam/2)^2): refit W to the counts with the spectra
                # fixed and no penalty, the Poisson MLE of the abundances given H
                Ht = np.ascontiguousarray(H.T)
                denom_w = H.sum(1)
                denom_w[denom_w == 0] = EPSILON
                for n in range(1, n_refit + 1):
                    plan.reduce(_kl_step, scratch, slot, Ht, denom_w, False, 0.0, np.sqrt(denom_w), False,
                                label=f"abundance refit {n}", **tasks)
                    slot = 1 - slot
                    bar.update()
                terms, w_sum, wtw, w_root = plan.reduce(_loss_terms, scratch, slot, Ht, label="NMF loss (refit)", **tasks)
            divergence = value(terms, w_sum, wtw, w_root, H, penalty=False)
            change = abs(history[-2] - history[-1]) / abs(history[0]) if len(history) > 1 and history[0] else float("nan")
            if not converged and tol > 0:
                warnings.warn(
                    f"NMF stopped at max_iter={max_iter} before converging: the loss changed by {change:.2g} of the "
                    f"initial loss over the last {recorded[-1] - recorded[-2] if len(recorded) > 1 else 1} iteration(s), "
                    f"above tol={tol:g}; the endmembers may still move. Raise max_iter (--nmf-max-iter) or resume "
                    "from a checkpoint", ConvergenceWarning, stacklevel=2)

            # spectra normalised to 1, abundances in counts; largest endmember first
            scale = H.sum(1)
            spectra = H / np.where(scale > 0, scale, 1.0)[:, None]
            order = np.argsort(-(w_sum * scale), kind="stable")
            fixed = np.zeros(k, dtype=bool)
            if fixed_pos is not None:  # the fixed first, in the references' order, exactly the references
                spectra[fixed_pos] = refs
                order = np.concatenate([fixed_pos, order[~np.isin(order, fixed_pos)]])
                fixed[: fixed_pos.size] = True
            abundances = plan.map(_abundance, scratch, slot, scale[order], order, tail=(k,), name="abundances", **tasks)
            ds = xr.Dataset(
                {
                    "spectra": (("component", "energy"), spectra[order]),
                    "abundances": (("tile", "y", "x", "component"), abundances),
                    "loss": ("iteration", np.asarray(history, dtype=np.float64)),
                    **({"fixed": ("component", fixed)} if fixed_pos is not None else {}),
                },
                coords={"component": np.arange(k), "iteration": np.asarray(recorded), "energy": montage["energy"],
                        **map_coords(montage)},
                attrs={
                    "method": "NMF",
                    "loss_function": "generalized Kullback-Leibler (Poisson)" if loss == "kl" else "0.5 Frobenius^2",
                    "n_components": k,
                    "init": init_name,
                    "max_iter": max_iter,
                    "tol": tol,
                    "n_iter": n_iter,
                    "converged": bool(converged),
                    "final_relative_change": float(change),
                    "loss_every": loss_every,
                    "sparsity": lam,
                    "refit_iter": n_refit,
                    "divergence": divergence,
                    "seed": seed,
                    **({"resumed_from_iteration": n0} if found is not None else {}),
                    **({"fixed_components": list(range(fixed_pos.size))} if fixed_pos is not None else {}),
                    **run_attrs(plan, started, montage),
                },
            )
            ds["abundances"].attrs["units"] = "counts"
            ds["spectra"].attrs["description"] = "endmember spectra, each summing to 1"
            ds["loss"].attrs["description"] = "objective after each iteration (entry 0: the initial state)"
            if fixed_pos is not None:
                ds["fixed"].attrs["description"] = "spectrum fixed to a given reference (fixed_spectra), not fitted"
            # the abundances are read from the scratch folder: written or loaded before it goes
            if out is not None:
                write_results(out, {"nmf": ds}, overwrite=overwrite, progress=progress)
                result = open_results(out, "nmf")
            else:  # through the engine's compute: the stall watchdog and stranded-task rescue cover it too
                (values,) = compute(ds["abundances"].data)
                ds["abundances"] = (ds["abundances"].dims, values, ds["abundances"].attrs)
                result = ds
            if committed or superseded:  # done: the checkpoint has served, or an older one is superseded
                ckpt.remove()
            if stop.requested:  # SIGTERM during the last passes: they were finished first
                stop.act()
    except Terminated:
        # SIGTERM under the default disposition, now that the state is committed and the scratch folder is gone
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt("terminated (SIGTERM)") from None
    return result
