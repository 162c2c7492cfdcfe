"""Independent component analysis (blind source separation) of a Poisson-scaled SVD, HyperSpy's convention.

The stages, each a small function: :func:`sample_pixels` (a seeded sample of
the stored maps, independent of the units), :func:`whiten` (HyperSpy's PCA
whitening of the samples), :func:`fastica_unmixing` (scikit-learn's FastICA on
the whitened samples, whitening folded into the unmixing matrix),
:func:`order_and_sign` (HyperSpy's ordering and sign of the components), and
the driver :func:`ica`, which applies the unmixing to the SVD's spectra and,
lazily tile by tile, to its maps. No pass reads the counts.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from .._dask import compute
from ..errors import ConvergenceWarning, DecompositionError, MissingDependencyError, StoreFormatError
from ..io.results import has_group, open_results, write_results
from ._svd import carried_attrs, count_arg, map_coords

__all__ = ["fastica_unmixing", "ica", "order_and_sign", "sample_pixels", "whiten"]



def sample_pixels(maps: da.Array, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of the rows of a per-tile map, read tile by tile.

    Parameters
    ----------
    maps : dask.array.Array of shape (tile, y, x, k)
        The stored maps (one chunk per tile, as :func:`~xsi_dask.io.results.open_results` opens them).
    n : int or None
        Sample size; None or >= the number of pixels: every pixel, in order.
    seed : int
        Seed of the ``numpy.random.Generator`` drawing the pixels.

    Returns
    -------
    rows : ndarray of shape (n, k), float64
        The sampled pixels' map values.
    index : ndarray of shape (n,), int64
        Their flat indices ``tile_position * y * x + pixel`` (row-major), sorted.

    Notes
    -----
    The draw is ``default_rng(seed).choice(N, n, replace=False)`` over the
    flat index of the map (tile along the map's tile axis, then pixel), so the
    sample depends on the seed and the map only, never on the work units.
    """
    nt, h, w, k = maps.shape
    per = h * w
    total = nt * per
    if n is None or n >= total:
        index = np.arange(total, dtype=np.int64)
    else:
        index = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False)).astype(np.int64)
    tiles = index // per
    parts = []
    for t in np.unique(tiles):
        rows = index[tiles == t] - t * per
        parts.append(maps[int(t)].reshape(per, k)[rows])
    (got,) = compute(da.concatenate(parts, axis=0) if parts else da.zeros((0, k)))
    return np.asarray(got, dtype=np.float64), index


def whiten(X: np.ndarray, epsilon: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Centre and PCA-whiten samples, exactly as HyperSpy's ``whiten_data(X, centre=True, method="PCA")``.

    Parameters
    ----------
    X : ndarray of shape (samples, k)
    epsilon : float
        Added to the eigenvalues of the covariance before the square root (HyperSpy's default).

    Returns
    -------
    Y : ndarray of shape (samples, k)
        ``(X - mean) @ W.T``, unit covariance.
    W : ndarray of shape (k, k)
        The whitening matrix ``U.T / sqrt(s + epsilon)`` of the covariance
        ``R = U diag(s) U.T`` (``R = Xc.T Xc / samples``; the columns of U
        signed so that each one's largest entry is positive).
    """
    Xc = X - X.mean(axis=0)
    R = (Xc.T @ Xc) / Xc.shape[0]
    U, s, _ = np.linalg.svd(R, full_matrices=False)
    U = U * np.sign(U[np.argmax(np.abs(U), axis=0), np.arange(U.shape[1])])  # HyperSpy's svd_flip_signs
    W = U.T / np.sqrt(s + epsilon)[:, None]
    return Xc @ W.T, W


def fastica_unmixing(Y: np.ndarray, *, seed: int, max_iter: int, tol: float) -> tuple[np.ndarray, int, bool]:
    """scikit-learn's FastICA (parallel, logcosh) on whitened samples.

    Parameters
    ----------
    Y : ndarray of shape (samples, k)
        Whitened samples (:func:`whiten`).
    seed : int
        ``random_state`` of FastICA (its initial rotation).
    max_iter, tol : int, float
        FastICA's iteration limit and tolerance.

    Returns
    -------
    components : ndarray of shape (k, k)
        ``FastICA(whiten=False).fit(Y).components_``: the sources are ``Y @ components.T``.
    n_iter : int
    converged : bool
        False when FastICA stopped at ``max_iter`` (it then warns).

    Raises
    ------
    MissingDependencyError
        scikit-learn is not installed.
    """
    try:
        from sklearn.decomposition import FastICA
        from sklearn.exceptions import ConvergenceWarning as SkConvergence
    except ImportError:  # pragma: no cover - scikit-learn comes with the segment extra
        raise MissingDependencyError("ica needs scikit-learn: pip install xsi-dask[segment]") from None
    est = FastICA(whiten=False, random_state=seed, max_iter=max_iter, tol=tol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkConvergence)
        est.fit(Y)
    converged = not any(issubclass(c.category, SkConvergence) for c in caught)
    return np.asarray(est.components_, dtype=np.float64), int(est.n_iter_), converged


def order_and_sign(w: np.ndarray, explained: np.ndarray, spectra: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """HyperSpy's order and sign of the independent components (its BSS defaults).

    Rows of the unmixing ``w`` sorted by ``explained @ |w.T|`` (descending),
    then each row negated where its unmixed spectrum's most negative value
    outweighs its most positive one (``reverse_component_criterion="factors"``).

    Parameters
    ----------
    w : ndarray of shape (k, k)
        Unmixing matrix (components x SVD components).
    explained : ndarray of shape (k,)
        The SVD's explained variance (S**2; only the order matters).
    spectra : callable
        ``spectra(w)`` -> (k, channels), the unmixed spectra for ``w``.

    Returns
    -------
    ndarray of shape (k, k)
    """
    w = w[np.argsort(explained @ np.abs(w.T))[::-1]]
    sp = spectra(w)
    flip = np.where((sp.min(1) < 0) & (-sp.min(1) > sp.max(1)), -1.0, 1.0)
    return w * flip[:, None]


def _apply(block: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """One tile's maps (1, y, x, k) times ``matrix`` (k, k)."""
    return np.asarray(block, dtype=np.float64) @ matrix


def ica(
    results: str | Path | xr.Dataset,
    n_components: int | None = None,
    *,
    on: Literal["spectra", "maps"] = "spectra",
    diff_order: int | None = None,
    sample: int | None = 100_000,
    seed: int = 0,
    max_iter: int = 1000,
    tol: float = 1e-10,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> xr.Dataset:
    """Independent components of a Poisson-scaled SVD (FastICA, HyperSpy's blind source separation).

    The top ``k`` SVD components are unmixed by ``w`` (k x k): scikit-learn's
    FastICA (logcosh, parallel) on centred, PCA-whitened samples, the
    whitening folded into ``w`` as HyperSpy does, components ordered and
    signed as HyperSpy does. With ``on="spectra"`` (HyperSpy's default,
    ``on_loadings=False``) the samples are the channels of the SVD spectra
    (their ``diff_order``-th difference along energy) and the ICA spectra are
    ``w @ loadings``, the maps ``scores @ inv(w)``; with ``on="maps"``
    (``on_loadings=True``) the samples are pixels of the SVD maps, a seeded
    sample of ``sample`` of them, and the maps are ``scores @ w.T``, the spectra
    ``inv(w).T @ loadings``. Either way scores @ loadings is unchanged (the
    same rank-k model), the maps are computed lazily tile by tile from the
    stored scores, and no pass reads the counts.

    Parameters
    ----------
    results : path or xarray.Dataset
        A results store with an ``svd`` group, or that group
        (:func:`~xsi_dask.decompose`'s result).
    n_components : int, optional
        How many leading SVD components to unmix (default all stored).
    on : {"spectra", "maps"}
        What the samples are. "spectra" (default): spectral ICA, the
        independent sources are the (differentiated) component spectra,
        HyperSpy's default and what its EDS/EELS tutorials use: phase spectra
        with distinct peaks are independent, while phase maps (area fractions
        summing to 1) are not. "maps": spatial ICA, for independent maps.
        (HyperSpy calls the spectra "factors" and the maps "loadings"; this
        package calls the spectra ``loadings``, hence the plain names.)
    diff_order : int, optional
        Order of the derivative of the spectra along energy (``numpy.gradient``
        over the keV axis, as HyperSpy's ``diff_order``) before the ICA:
        default 1 for "spectra", as HyperSpy; must be 0 for "maps".
    sample : int or None
        Pixels drawn for ``on="maps"`` (None: all, as HyperSpy; every pixel
        is eligible, as in HyperSpy, including any without counts, whose
        scores are 0); ignored for "spectra" (every channel is used). The
        draw is :func:`sample_pixels`', by tile then pixel, independent of the
        work units.
    seed : int
        Seed of the pixel draw and of FastICA's initial rotation.
    max_iter, tol : int, float
        FastICA's limit and tolerance (HyperSpy sets tol 1e-10).
    out : path, optional
        Also write the result as group ``ica`` of this results store.
    overwrite : bool
        Replace an existing ``ica`` group of ``out``.

    Returns
    -------
    xarray.Dataset
        ``unmixing (component, svd_component)`` = w (whitening included),
        ``mixing (svd_component, component)`` = inv(w),
        ``loadings (component, energy)`` ICA spectra (unweighted, as the SVD's),
        ``scores (tile, y, x, component)`` ICA maps (lazy, one chunk per tile),
        attrs ``on``, ``diff_order``, ``sample_size``, ``seed``, ``converged``,
        ``n_iter``, ``max_iter``, ``tol``, ``passes`` (0), and the SVD's
        store attributes.

    Raises
    ------
    DecompositionError
        ``n_components``, ``on``, ``diff_order``, ``sample``, ``max_iter`` or
        ``tol`` out of range; fewer samples than components.
    StoreFormatError
        ``results`` has no ``svd`` group, or the group no scores/loadings.

    Warns
    -----
    ConvergenceWarning
        FastICA stopped at ``max_iter`` (``attrs["converged"]`` is 0).

    References
    ----------
    Hyvärinen & Oja (2000), Independent component analysis: algorithms and
    applications, Neural Networks 13, 411-430, doi:10.1016/S0893-6080(00)00026-5.
    de la Peña et al. (2011), Ultramicroscopy 111, 169-176,
    doi:10.1016/j.ultramic.2010.10.001 (BSS of EELS spectrum images, HyperSpy).
    """
    started = time.perf_counter()
    svd = _svd_group(results)
    stored = svd.sizes["component"]
    k = stored if n_components is None else count_arg(n_components, "n_components", 2, stored,
                                                       f"{stored} (the stored SVD components)")
    if k < 2:
        raise DecompositionError(f"ica needs at least 2 SVD components; the svd group has {stored}")
    if on not in ("spectra", "maps"):
        raise DecompositionError(f"on must be 'spectra' or 'maps'; got {on!r}")
    if diff_order is None:
        diff_order = 1 if on == "spectra" else 0
    diff_order = count_arg(diff_order, "diff_order", 0, 0 if on == "maps" else 3)
    if sample is not None:
        sample = count_arg(sample, "sample", k + 1)
    count_arg(max_iter, "max_iter", 1)
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise DecompositionError(f"tol must be a positive number; got {tol!r}")

    L = np.asarray(svd["loadings"].values[:k], dtype=np.float64)  # (k, energy)
    S = np.asarray(svd["singular_values"].values[:k], dtype=np.float64)
    maps = svd["scores"].data
    if not isinstance(maps, da.Array):
        maps = da.from_array(np.asarray(maps), chunks=(1, -1, -1, -1))
    maps = maps[..., :k].rechunk({0: 1, 1: -1, 2: -1, 3: -1})
    if on == "spectra":
        X = L
        for _ in range(diff_order):  # HyperSpy's Signal.derivative: numpy.gradient along the energy axis (keV)
            X = np.gradient(X, np.asarray(svd["energy"].values, dtype=np.float64), axis=1)
        X = X.T
        n_samples = X.shape[0]
    else:
        X, _ = sample_pixels(maps, sample, seed)
        n_samples = X.shape[0]
    if n_samples <= k:
        raise DecompositionError(f"ica needs more samples than components: {n_samples} samples for k = {k}")
    Y, W = whiten(X)
    comp, n_iter, converged = fastica_unmixing(Y, seed=seed, max_iter=max_iter, tol=tol)
    if not converged:
        warnings.warn(f"FastICA stopped at max_iter = {max_iter} before tol = {tol:g}; the components are "
                      "returned (raise max_iter or tol)", ConvergenceWarning, stacklevel=2)

    def spectra_of(w):
        return w @ L if on == "spectra" else np.linalg.inv(w).T @ L

    w = order_and_sign(comp @ W, S**2, spectra_of)
    winv = np.linalg.inv(w)
    to_maps = winv if on == "spectra" else w.T
    ica_maps = maps.map_blocks(_apply, to_maps, dtype=np.float64)

    comp_coord = np.arange(k)
    ds = xr.Dataset(
        {
            "unmixing": (("component", "svd_component"), w),
            "mixing": (("svd_component", "component"), winv),
            "loadings": (("component", "energy"), spectra_of(w)),
            "scores": (("tile", "y", "x", "component"), ica_maps),
        },
        coords={"component": comp_coord, "svd_component": comp_coord, "energy": svd["energy"], **map_coords(svd["scores"])},
        attrs={
            **carried_attrs(svd),
            "method": "FastICA (HyperSpy blind source separation convention)",
            "on": on,
            "diff_order": diff_order,
            "n_components": k,
            "sample_size": int(n_samples),
            "seed": seed,
            "converged": int(converged),
            "n_iter": n_iter,
            "max_iter": max_iter,
            "tol": float(tol),
            "whiten": "PCA (centred)",
            "passes": 0,
            "nnz": 0,
            "seconds": time.perf_counter() - started,
        },
    )
    ds["loadings"].attrs["description"] = "independent component spectra, unweighted (as the SVD's loadings)"
    ds["scores"].attrs["description"] = "independent component maps (scores @ loadings is the SVD's rank-k model)"
    ds["unmixing"].attrs["description"] = "w: FastICA components times the whitening matrix (HyperSpy's unmixing_matrix)"
    if out is not None:
        write_results(out, {"ica": ds}, overwrite=overwrite)
    return ds


def _svd_group(results: str | Path | xr.Dataset) -> xr.Dataset:
    if isinstance(results, xr.Dataset):
        ds = results
    else:
        if not has_group(results, "svd"):
            raise StoreFormatError(f"{results}: no 'svd' group to unmix (run xsi_dask.decompose with out= first)")
        ds = open_results(results, "svd")
    for name in ("loadings", "scores", "singular_values"):
        if name not in ds:
            raise StoreFormatError(f"the svd result has no {name!r} (it has {sorted(ds.data_vars)})")
    return ds
