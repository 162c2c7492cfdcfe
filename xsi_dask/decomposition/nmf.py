"""Distributed Poisson (KL) and Frobenius NMF of a montage: :func:`nmf`.

D (pixels x channels, raw counts) ~ W H with W >= 0 (pixels x k) kept per tile
in a scratch folder between passes and H >= 0 (k x channels) reduced. Lee & Seung's multiplicative
updates in scikit-learn's MU order: per iteration and tile, W_t is updated with
H fixed, then W_t^T (D_t / W_t H) and the column sums of W_t are accumulated;
the reduced sums update H. WH is evaluated only at the non-zeros of D, so an
iteration is one pass and O(nnz k).

References
----------
Lee, D. D. & Seung, H. S. (2001). Algorithms for non-negative matrix
factorization. NIPS 13, 556-562.
Boutsidis, C. & Gallopoulos, E. (2008). SVD based initialization: a head start
for nonnegative matrix factorization. Pattern Recognition 41, 1350-1362.
doi:10.1016/j.patcog.2007.09.010 (NNDSVD).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
import weakref
from pathlib import Path
from typing import Literal, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .. import __version__, config
from ..cluster.passes import compute, current_client, map_tiles, tree_sum
from ..errors import DecompositionError
from ..io.store import MontageStore
from ..engine.backends import _numba_kernels as kernels
from ..linalg import rsvd
from ..linalg.operator import PoissonOperator
from .svd import map_coords

__all__ = ["nmf"]

_EPS64 = float(np.finfo(np.float64).eps)


# ---- per-tile state between passes: W_t in a scratch folder, not in worker memory ----

class _ScratchFiles:
    """Per-tile float64 arrays in a folder every worker can reach (``.npy``, written atomically)."""

    def __init__(self, path: str):
        self.path = Path(path)

    def __reduce__(self):
        return (_ScratchFiles, (str(self.path),))

    def load(self, name: str) -> np.ndarray:
        return np.load(self.path / f"{name}.npy")

    def save(self, name: str, a: np.ndarray) -> None:
        tmp = self.path / f".{name}.{uuid.uuid4().hex[:8]}.npy"
        np.save(tmp, a)
        os.replace(tmp, self.path / f"{name}.npy")

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path / f"{name}.npy")


class _Scratch(_ScratchFiles):
    """The scratch folder of one NMF run, removed when the result (its lazy abundances) is gone.

    W of a tile is 8 k bytes a pixel (64 MiB for 1024 x 1024 pixels and k = 8);
    kept in worker memory it would make a worker's memory grow with its share
    of the montage. Iteration n of unit (t, a, b) reads ``W<t>-<a>.<(n-1) % 2>``
    and writes ``W<t>-<a>.<n % 2>``, so a task that is run again gives the same
    result. The lazy abundances of the result read the last slot: compute or
    write them while the result is referenced (``persist`` on a cluster
    returns before the tasks have read it).
    """

    def __init__(self, store: MontageStore):
        base = config.get("scratch")
        beside = store.path.resolve().parent
        if base:
            parent = Path(base).resolve()
        elif os.access(beside, os.W_OK):
            parent = beside
        elif current_client() is None:
            parent = Path(tempfile.gettempdir())
        else:  # a temporary folder of this machine may not exist on the workers
            raise DecompositionError(
                f"NMF needs a scratch folder every worker can reach, and {beside} (beside the store) is not "
                "writable: set xsi-dask.scratch (dask.config.set({'xsi-dask.scratch': PATH}))"
            )
        path = parent / f".xsi-dask-nmf-{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise DecompositionError(f"cannot create the NMF scratch folder {path} ({exc}); set xsi-dask.scratch") from exc
        super().__init__(str(path))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(path), True)


Unit = tuple  # (tile, first pixel, end pixel): a whole tile, or a row block when there are fewer tiles than workers


def _w(unit: Unit, slot: int) -> str:
    return f"W{unit[0]}-{unit[1]}.{slot}"


def _rows(path: str, unit: Unit, cache: bool):
    """(indptr, indices, data) of the unit's pixels: the kernels index data by the pointers, so a block is a view."""
    t, a, b = unit
    csr = MontageStore.cached(path).tile_csr(t, cache=cache)
    return csr.indptr[a : b + 1], csr.indices, csr.data


# ---- tile tasks ----

def _svd_u(unit: Unit, path: str, Vs: np.ndarray, scratch: _ScratchFiles, cache: bool) -> np.ndarray:
    """U_u = D_u Vs (pixels x k), the pixel factors of the SVD behind NNDSVD, saved; returns its sign-part norms."""
    ip, idx, data = _rows(path, unit, cache)
    U = np.empty((unit[2] - unit[1], Vs.shape[1]))
    kernels.csr_dense(ip, idx, data, Vs, U)
    scratch.save("U" + _w(unit, 0), U)
    return np.stack([(np.maximum(U, 0) ** 2).sum(0), (np.minimum(U, 0) ** 2).sum(0)])


def _nndsvd_w(unit: Unit, scratch: _ScratchFiles, sign: np.ndarray, scale: np.ndarray, fill: float) -> None:
    """NNDSVDa W_u from the saved U_u: per component the chosen sign part of U, scaled; zeros -> fill."""
    U = scratch.load("U" + _w(unit, 0))
    P = U * sign[None, :]
    P[:, 0] = np.abs(U[:, 0])  # the first component uses |U_0|
    W = np.maximum(P, 0.0) * scale[None, :]
    W[W < 1e-6] = 0.0
    W[W == 0] = fill
    scratch.save(_w(unit, 0), W)


def _random_w(unit: Unit, path: str, k: int, avg: float, seed: int, scratch: _ScratchFiles) -> None:
    t, a, b = unit
    rng = np.random.default_rng([seed, t])  # drawn for the whole tile: the same W however tiles are split
    W = np.abs(avg * rng.standard_normal((MontageStore.cached(path).pixels_per_tile, k)))
    scratch.save(_w(unit, 0), W[a:b])


def _kl_step(unit: Unit, path: str, scratch: _ScratchFiles, src: int, Ht: np.ndarray, denom_w: np.ndarray, with_loss: bool,
             lam: float, sqrt_s: np.ndarray, cache: bool, with_h: bool = True):
    ip, idx, data = _rows(path, unit, cache)
    W = scratch.load(_w(unit, src))
    k = W.shape[1]
    num_ht = np.zeros_like(Ht)
    w_sum = np.zeros(k)
    w_root = np.zeros(k)
    loss = kernels.kl_mu_step(ip, idx, data, W, Ht, denom_w, num_ht, w_sum, with_loss, lam, sqrt_s, w_root, with_h)
    scratch.save(_w(unit, 1 - src), W)
    return num_ht, w_sum, w_root, np.array(loss)


def _fro_step(unit: Unit, path: str, scratch: _ScratchFiles, src: int, Ht: np.ndarray, HHt: np.ndarray, cache: bool):
    ip, idx, data = _rows(path, unit, cache)
    W = scratch.load(_w(unit, src))
    num_ht = np.zeros_like(Ht)
    wtw = np.zeros((W.shape[1], W.shape[1]))
    cross = kernels.fro_mu_step(ip, idx, data, W, Ht, HHt, num_ht, wtw)
    scratch.save(_w(unit, 1 - src), W)
    return num_ht, wtw, np.array(cross)


def _loss_terms(unit: Unit, path: str, scratch: _ScratchFiles, slot: int, Ht: np.ndarray, cache: bool):
    ip, idx, data = _rows(path, unit, cache)
    W = scratch.load(_w(unit, slot))
    kl, cross, sq = kernels.nmf_loss_terms(ip, idx, data, W, Ht)
    return np.array([kl, cross, sq]), W.sum(0), W.T @ W, np.sqrt(W).sum(0)


def _abundance(units: list, scratch: _ScratchFiles, slot: int, scale: np.ndarray, order: np.ndarray, shape: tuple[int, int]):
    """Abundances of one tile (1, y, x, k) from the W of its units."""
    try:
        W = np.concatenate([scratch.load(_w(u, slot)) for u in units])
    except FileNotFoundError as exc:
        raise DecompositionError(
            f"the NMF scratch folder {scratch.path} is gone: the lazy abundances are read from it while the nmf() "
            "result is referenced; keep the dataset until they are computed or written"
        ) from exc
    return (W[:, order] * scale[None, :]).reshape(1, *shape, order.size)


def _tasks(fn, units: Sequence[Unit], *args) -> list:
    """One task per unit, pinned like the SVD passes; not pure: the tasks write scratch files."""
    return map_tiles(fn, units, *args, pure=False, literal=(_ScratchFiles,))


# ---- driver ----

def _nndsvda(op: PoissonOperator, k: int, seed: int, power_iters: int | None, progress: bool, poisson: bool,
             scratch: _Scratch) -> np.ndarray:
    """NNDSVDa (scikit-learn's variant: zeros filled with the mean count): W_t saved to ``scratch`` slot 0, H returned.

    ``poisson=False`` starts from the SVD of the raw counts, as scikit-learn.
    ``poisson=True`` starts from the Poisson-scaled SVD, unweighted back to
    counts: D ~ sum_j (D H^-1/2 v_j)(H^1/2 v_j)^T. On count data the raw SVD's
    leading components after the first describe the highest-count peak (its
    position and width), and NMF then spends components on slicing that peak;
    the scaled SVD's components follow the phases (docs/design.md).
    """
    q = rsvd.DEFAULT_POWER_ITERS if power_iters is None else power_iters
    svd_op = PoissonOperator(op.montage, poisson=True) if poisson else op
    X, Y = rsvd.range_finder(svd_op, min(op.n_channels, k + 10), q, seed, progress=progress)
    S, V = rsvd.rayleigh_ritz(X, Y, k)
    V = rsvd.svd_flip(V)
    if svd_op is not op:
        op.passes += svd_op.passes
    # D ~ sum_j S_j u_j y_j^T with unit spectra y_j and pixel factors u_j = D Vs_j
    y = np.sqrt(svd_op.h)[:, None] * V if poisson else V
    ny = np.linalg.norm(y, axis=0)
    y = y / np.where(ny > 0, ny, 1.0)
    Vs = np.ascontiguousarray(svd_op.wh[:, None] * V * (ny / S)[None, :] if poisson else V / S[None, :])
    # U_t = D_t Vs is computed once per tile and saved: the norms are reduced
    # from it, and W_t is built from it in a second, cheap task
    (norms,) = compute(tree_sum(_tasks(_svd_u, op.units, op.path, Vs, scratch, op.cache)), progress=progress,
                       label="NNDSVD pass")
    op.passes += 1
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
    avg = op.h.sum() / (op.n_pixels * op.n_channels)  # NNDSVDa: zeros -> the mean count
    H[H < 1e-6] = 0.0
    H[H == 0] = avg
    compute(_tasks(_nndsvd_w, op.units, scratch, sign, w_scale, avg))
    for u in op.units:  # removed here, not in the tasks, so a task that is run again still finds its U
        scratch.remove("U" + _w(u, 0))
    return H


def nmf(
    montage: xr.DataArray,
    n_components: int,
    *,
    loss: Literal["kl", "frobenius"] = "kl",
    max_iter: int = 200,
    tol: float = 1e-4,
    init: str | tuple[Sequence[np.ndarray] | np.ndarray, np.ndarray] = "poisson-nndsvda",
    seed: int = 0,
    power_iters: int | None = None,
    loss_every: int = 10,
    sparsity: float = 0.0,
    refit_iter: int = 20,
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
    init : "poisson-nndsvda", "nndsvda", "random" or (W, H)
        NNDSVDa (Boutsidis & Gallopoulos 2008, zeros filled with the mean
        count, as scikit-learn) from the Poisson-scaled randomized SVD unweighted
        to counts (default), or from the SVD of the raw counts (``"nndsvda"``,
        scikit-learn's); seeded random; or given arrays: W as (tile, y, x, k) or
        one (pixels, k) array per tile, H as (k, channels). On the real maps
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
    progress : bool
        Progress bars.

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

    Raises
    ------
    DecompositionError
        Bad ``n_components``, ``loss``, ``init``, ``sparsity`` or array
        shapes; the scratch folder cannot be created.

    Notes
    -----
    W of each tile lives in a scratch folder between iterations (config
    ``xsi-dask.scratch``; default beside the montage store, which every
    worker reaches), so a worker holds only the tiles it is working on; the
    folder is removed with the returned dataset. The lazy ``abundances`` read it.

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
    op = PoissonOperator(montage, poisson=False)
    M, k = op.n_channels, int(n_components)
    if not 1 <= k <= M:
        raise DecompositionError(f"n_components must be between 1 and {M} (channels); got {n_components}")
    if loss not in ("kl", "frobenius"):
        raise DecompositionError(f"loss must be 'kl' or 'frobenius'; got {loss!r}")
    lam = float(sparsity)
    if not lam >= 0 or (lam > 0 and loss != "kl"):
        raise DecompositionError(f"sparsity must be >= 0, and is for the KL loss only; got {sparsity!r} with loss {loss!r}")
    npix = op.store.pixels_per_tile
    total = float(op.h.sum())
    tiles, units = op.tiles, op.units
    units_of = {t: [u for u in units if u[0] == t] for t in tiles}
    if not (isinstance(init, str) and init in ("nndsvda", "poisson-nndsvda", "random")) and not (isinstance(init, tuple) and len(init) == 2):
        raise DecompositionError(f"init must be 'poisson-nndsvda', 'nndsvda', 'random' or a (W, H) pair; got {init!r}")
    scratch = _Scratch(op.store)

    if isinstance(init, str) and init in ("nndsvda", "poisson-nndsvda"):
        H = _nndsvda(op, k, seed, power_iters, progress, init == "poisson-nndsvda", scratch)
    elif isinstance(init, str):  # random
        avg = np.sqrt(total / (op.n_pixels * M) / k)
        rng = np.random.default_rng(seed)
        H = np.abs(avg * rng.standard_normal((k, M)))
        compute(_tasks(_random_w, units, op.path, k, avg, seed, scratch))
    else:
        W0, H = init
        H = np.array(H, dtype=np.float64)
        W0 = list(W0)
        if H.shape != (k, M) or len(W0) != len(tiles):
            raise DecompositionError(
                f"init (W, H): expected {len(tiles)} tiles of W ({npix}, {k}) and H ({k}, {M}); "
                f"got {len(W0)} tiles and H {H.shape}"
            )
        for t, w in zip(tiles, W0):
            w = np.asarray(w, dtype=np.float64)
            if w.size != npix * k:
                raise DecompositionError(f"init (W, H): W of tile {t} has shape {w.shape}; expected ({npix}, {k})")
            w = w.reshape(npix, k)
            for u in units_of[t]:
                scratch.save(_w(u, 0), w[u[1] : u[2]])
    H = np.ascontiguousarray(H, dtype=np.float64)

    def loss_pass(slot: int, H: np.ndarray):
        """The loss terms of the state in ``slot``: one pass (also gives sum D^2 for Frobenius)."""
        Ht = np.ascontiguousarray(H.T)
        (res,) = compute(tree_sum(_tasks(_loss_terms, units, op.path, scratch, slot, Ht, op.cache)), progress=False)
        op.passes += 1
        return res

    (terms, w_sum, wtw, w_root) = loss_pass(0, H)
    sum_sq = float(terms[2])

    def loss_value(data_term: float, w_sum: np.ndarray, wtw: np.ndarray, w_root: np.ndarray, H: np.ndarray, penalty: bool = True) -> float:
        """KL: sum d log(d/WH) + sum WH - sum d (+ lam sum sqrt(W_ic s_c)); Frobenius: 0.5 (sum d^2 - 2 <D, WH> + tr(W^T W H H^T)).

        ``data_term`` is sum d log(d/WH) for KL and <D, WH> for Frobenius.
        """
        if loss == "kl":
            pen = lam * float(w_root @ np.sqrt(H.sum(1))) if lam > 0 and penalty else 0.0
            return data_term + float(w_sum @ H.sum(1)) - total + pen
        return 0.5 * (sum_sq - 2 * data_term + float(np.sum(wtw * (H @ H.T))))

    history = [loss_value(terms[0] if loss == "kl" else terms[1], w_sum, wtw, w_root, H)]
    recorded = [0]  # history[i] is the loss after recorded[i] iterations
    loss_every = max(1, int(loss_every))
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        src = (n_iter - 1) % 2  # W after n_iter - 1 iterations; this one writes the other slot
        Ht = np.ascontiguousarray(H.T)
        s_h = H.sum(1)
        if loss == "kl":
            denom_w = s_h.copy()
            denom_w[denom_w == 0] = kernels.EPSILON
            with_loss = n_iter > 1 and (n_iter - 1) % loss_every == 0
            steps = _tasks(_kl_step, units, op.path, scratch, src, Ht, denom_w, with_loss, lam, np.sqrt(s_h), op.cache)
        else:
            steps = _tasks(_fro_step, units, op.path, scratch, src, Ht, H @ H.T, op.cache)
        show = progress and (n_iter == 1 or n_iter % 10 == 0)
        (red,) = compute(tree_sum(steps), progress=show, label=f"NMF iteration {n_iter}/{max_iter}")
        op.passes += 1
        # entry: the data term of the loss (KL: sum d log(d/WH); Frobenius: <D, WH>) with W and H on entry
        if loss == "kl":
            num_ht, stat, new_root, entry = red
        else:
            num_ht, stat, entry = red
            new_root = w_root
        if n_iter > 1 and (n_iter - 1) % loss_every == 0:  # the state on entry: after n_iter - 1 iterations
            history.append(loss_value(float(entry), w_sum, wtw, w_root, H))
            recorded.append(n_iter - 1)
        w_root = new_root
        if loss == "kl":
            w_sum = stat
            W_sum = np.where(stat == 0, 1.0, stat)
            if lam > 0:  # the H gradient of lam sum_c sqrt(s_c) sum_i sqrt(W_ic)
                W_sum = W_sum + 0.5 * lam * w_root / np.sqrt(np.where(s_h > 0, s_h, 1.0))
            H = H * (num_ht.T / W_sum[:, None])
            H[H < _EPS64] = 0.0
        else:
            wtw = stat
            den = wtw @ H
            den[den == 0] = kernels.EPSILON
            H = H * (num_ht.T / den)
        if tol > 0 and recorded[-1] == n_iter - 1 and len(history) > 1 and abs(history[-2] - history[-1]) < tol * abs(history[0]):
            break
    slot = n_iter % 2
    # the loss after the last update: one more evaluation pass (no update)
    terms, w_sum, wtw, w_root = loss_pass(slot, H)
    history.append(loss_value(terms[0] if loss == "kl" else terms[1], w_sum, wtw, w_root, H))
    recorded.append(n_iter)
    if lam > 0 and refit_iter > 0:
        # the penalty shrinks every abundance (a pure pixel of g counts ends near
        # (sqrt(g + lam^2/4) - lam/2)^2): refit W to the counts with the spectra
        # fixed and no penalty, the Poisson MLE of the abundances given H
        Ht = np.ascontiguousarray(H.T)
        denom_w = H.sum(1)
        denom_w[denom_w == 0] = kernels.EPSILON
        for n_refit in range(1, refit_iter + 1):
            steps = _tasks(_kl_step, units, op.path, scratch, slot, Ht, denom_w, False, 0.0, np.sqrt(denom_w), op.cache, False)
            compute(tree_sum(steps), progress=progress and n_refit == 1, label=f"abundance refit ({refit_iter} passes)")
            op.passes += 1
            slot = 1 - slot
        terms, w_sum, wtw, w_root = loss_pass(slot, H)
    divergence = loss_value(terms[0] if loss == "kl" else terms[1], w_sum, wtw, w_root, H, penalty=False)
    for u in units:  # the other slot is no longer needed
        scratch.remove(_w(u, 1 - slot))

    # spectra normalised to 1, abundances in counts; largest endmember first
    scale = H.sum(1)
    spectra = H / np.where(scale > 0, scale, 1.0)[:, None]
    order = np.argsort(-(w_sum * scale), kind="stable")
    h, w = op.store.tile_shape
    blocks = [
        da.from_delayed(dask.delayed(_abundance, pure=True)(units_of[t], scratch, slot, scale[order], order, (h, w)),
                        shape=(1, h, w, k), dtype=np.float64)
        for t in tiles
    ]
    ds = xr.Dataset(
        {
            "spectra": (("component", "energy"), spectra[order]),
            "abundances": (("tile", "y", "x", "component"), da.concatenate(blocks, axis=0)),
            "loss": ("iteration", np.asarray(history, dtype=np.float64)),
        },
        coords={"component": np.arange(k), "iteration": np.asarray(recorded), "energy": montage["energy"], **map_coords(montage)},
        attrs={
            "method": "NMF",
            "loss_function": "generalized Kullback-Leibler (Poisson)" if loss == "kl" else "0.5 Frobenius^2",
            "n_components": k,
            "init": init if isinstance(init, str) else "custom",
            "max_iter": max_iter,
            "tol": tol,
            "n_iter": n_iter,
            "loss_every": loss_every,
            "sparsity": lam,
            "refit_iter": refit_iter if lam > 0 else 0,
            "divergence": divergence,
            "seed": seed,
            "passes": op.passes,
            "nnz": op.nnz,
            "seconds": time.perf_counter() - started,
            "store": op.path,
            "xsi_dask_version": __version__,
        },
    )
    ds["abundances"].attrs["units"] = "counts"
    ds["spectra"].attrs["description"] = "endmember spectra, each summing to 1"
    ds["loss"].attrs["description"] = "objective after each iteration (entry 0: the initial state)"
    return ds
