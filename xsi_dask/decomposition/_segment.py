"""k-means segmentation of the per-tile maps of a results store, and the clusters' mean spectra in one pass.

Stages: :func:`pixel_features` (the features of a pixel from its stored map
row: Poisson-scaled SVD scores or NMF abundance fractions), :func:`fit_kmeans`
(dask-ml's k-means|| over one dask chunk per tile), :func:`assign` (nearest
centroid, row by row, so a pixel's label does not depend on how the tiles are
cut into units), and :func:`segment`, which builds the lazy label map and sums
the counts of every cluster in one reduction pass over the montage, the unit
tasks computing their own labels from the centroids (no label map is written
between the fit and the pass).
"""

from __future__ import annotations

import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
import xarray as xr

from .._dask import compute
from ..engine.backends._scipy import _rows as csr_rows
from ..engine.maps import MapSource, map_source, results_view
from ..engine.plan import Block, make_plan
from ..errors import DecompositionError, MissingDependencyError, StoreFormatError
from ..io.results import has_group, open_results, write_results
from ._svd import carried_attrs, count_arg, map_coords

__all__ = ["assign", "fit_kmeans", "pixel_features", "segment"]

DEFAULT_VARIABLE = {"svd": "scores", "nmf": "abundances", "mcr": "abundances"}
INITS = ("k-means||", "k-means++", "random")


def pixel_features(values: np.ndarray, counts: np.ndarray | None, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The clustering features of pixels from their stored map rows, and which pixels have any.

    Parameters
    ----------
    values : ndarray of shape (pixels, k)
        The map rows (SVD scores, NMF abundances in counts, or any map).
    counts : ndarray of shape (pixels,) or None
        g, the pixels' counts (the SVD's ``pixel_counts``); used for ``kind="svd"``.
    kind : {"svd", "nmf", "raw"}
        "svd": Poisson-scaled scores ``scores / sqrt(g)`` (the rows of U S of
        the scaled matrix, where the noise is isotropic with unit variance),
        pixels with g > 0. "nmf": abundance fractions ``a / sum(a)`` (the
        pixel's composition, independent of its dose), pixels whose abundances
        sum to more than 0 (KL NMF gives a pixel without counts exactly zero
        abundances). "raw": the values, finite rows.

    Returns
    -------
    features : ndarray of shape (pixels, k), float64
        0 in the rows not kept.
    keep : ndarray of shape (pixels,), bool

    Notes
    -----
    Every operation is per row (elementwise, or a sum along the row), so the
    features of a pixel are the same bits whatever block of rows it is in.
    """
    v = np.asarray(values, dtype=np.float64)
    if kind == "svd":
        g = np.asarray(counts, dtype=np.float64)
        keep = g > 0
        scale = np.sqrt(np.where(keep, g, 1.0))
    elif kind == "nmf":
        total = v.sum(axis=1)
        keep = total > 0
        scale = np.where(keep, total, 1.0)
    else:
        keep = np.isfinite(v).all(axis=1)
        scale = np.ones(v.shape[0])
    out = np.where(keep[:, None], v, 0.0) / scale[:, None]
    return out, keep


def assign(features: np.ndarray, keep: np.ndarray, centers: np.ndarray, *, distances: bool = False):
    """The nearest centroid (squared Euclidean distance) of every kept row, -1 elsewhere.

    Parameters
    ----------
    features : ndarray of shape (pixels, k)
    keep : ndarray of shape (pixels,), bool
    centers : ndarray of shape (clusters, k)

    Returns
    -------
    labels : ndarray of shape (pixels,), int32
        The cluster of each pixel (ties: the lower cluster number), -1 where not ``keep``.
    d2 : ndarray of shape (pixels,), float64
        With ``distances``: the squared distance to that centroid (0 where not ``keep``).

    Notes
    -----
    Distances are computed per cluster as elementwise squares summed along the
    row (no matrix product whose blocking could depend on the number of rows).
    """
    d = np.empty((features.shape[0], centers.shape[0]))
    for c in range(centers.shape[0]):
        d[:, c] = ((features - centers[c]) ** 2).sum(axis=1)
    labels = d.argmin(axis=1).astype(np.int32)
    labels[~keep] = -1
    if not distances:
        return labels
    d2 = np.where(keep, d[np.arange(d.shape[0]), np.maximum(labels, 0)], 0.0)
    return labels, d2


def fit_kmeans(X: da.Array, n_clusters: int, *, seed: int, init: str | np.ndarray, max_iter: int, tol: float,
               n_init: int = 1):
    """dask-ml's k-means on ``X`` (pixels, k), scaled to unit mean feature variance first.

    dask-ml's k-means|| runs ``round(log(cost))`` rounds of sampling, the cost
    in the features' own units, and stops Lloyd's iterations at an absolute
    centre shift ``tol``; dividing ``X`` by one number (which moves no pixel
    to another cluster) so that the mean variance per feature is 1 makes the
    rounds ``~log(pixels)`` as in Bahmani et al. and ``tol`` relative to the
    variance, as scikit-learn's. dask-ml runs one initialisation; ``n_init``
    runs (seeds drawn from ``seed``) are made here and the one with the least
    inertia (sum of squared distances to the nearest centroid) is kept, as
    scikit-learn's ``n_init``.

    Parameters
    ----------
    X : dask.array.Array of shape (pixels, k)
        Features, one chunk per tile (known chunk sizes).
    n_clusters : int
    seed : int
        Seeds the ``random_state`` of every run of dask-ml's KMeans.
    init : {"k-means||", "k-means++", "random"} or ndarray of shape (n_clusters, k)
    max_iter : int
    tol : float
    n_init : int
        Runs from different seeds (1 with an array ``init``).

    Returns
    -------
    centers : ndarray of shape (n_clusters, k)
        In the features' units.
    info : dict
        ``n_iter`` (of the run kept), ``scale`` (the divisor), ``inertia_scaled`` (its inertia over ``scale**2``).

    Raises
    ------
    MissingDependencyError
        dask-ml is not installed.
    """
    try:
        from dask_ml.cluster import KMeans
    except ImportError as exc:
        raise MissingDependencyError(f"segment needs dask-ml (and pyarrow): pip install xsi-dask[segment] ({exc})"
                                      ) from None
    X = X.persist()  # read the maps once for all the iterations
    (var,) = compute(X.var(axis=0).mean())
    scale = float(np.sqrt(var)) if var > 0 else 1.0
    Xs = X / scale
    start = init / scale if isinstance(init, np.ndarray) else init
    runs = 1 if isinstance(init, np.ndarray) else n_init
    best = None
    for run_seed in np.random.default_rng(seed).integers(0, 2**31 - 1, size=runs):
        km = KMeans(n_clusters=n_clusters, init=start, random_state=int(run_seed), max_iter=max_iter, tol=tol)
        km.fit(Xs)
        C = np.asarray(km.cluster_centers_, dtype=np.float64)
        (inertia,) = compute(Xs.map_blocks(_block_inertia, C, chunks=((1,) * Xs.numblocks[0],), drop_axis=1,
                                           dtype=np.float64).sum())
        if best is None or inertia < best[0]:
            best = (float(inertia), C, km)
    inertia, C, km = best
    (sizes,) = compute(da.bincount(km.labels_, minlength=n_clusters))
    order = np.argsort(-np.asarray(sizes), kind="stable")  # clusters numbered by size, the largest first
    return C[order] * scale, {"n_iter": int(km.n_iter_), "scale": scale, "inertia_scaled": inertia}


def _block_inertia(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return np.array([assign(x, np.ones(x.shape[0], bool), centers, distances=True)[1].sum()])


# ---- per tile: features of the stored maps (lazy) ----

def _tile_rows(block: np.ndarray) -> np.ndarray:
    """A tile's map (1, y, x[, k]) as rows (pixels[, k]), float64."""
    a = np.asarray(block, dtype=np.float64)
    return a.reshape(-1, a.shape[3]) if a.ndim == 4 else a.reshape(-1)


def _tile_features(values: np.ndarray, counts: np.ndarray | None, kind: str) -> tuple[np.ndarray, np.ndarray]:
    return pixel_features(_tile_rows(values), None if counts is None else _tile_rows(counts), kind)


def _kept_rows(values, counts, kind):
    X, keep = _tile_features(values, counts, kind)
    return X[keep]


def _label_tile(values, counts, centers, kind):
    X, keep = _tile_features(values, counts, kind)
    return assign(X, keep, centers).reshape(values.shape[:3])


# ---- the pass: per-cluster sums of the counts ----

def _cluster_sums_task(b: Block, values: MapSource, counts: MapSource | None, centers: np.ndarray, kind: str,
                       n_channels: int):
    X, keep = pixel_features(values.rows(b.unit), None if counts is None else counts.rows(b.unit), kind)
    labels, d2 = assign(X, keep, centers, distances=True)
    n_clusters = centers.shape[0]
    D = csr_rows(*b.csr, n_channels)
    rows = np.flatnonzero(labels >= 0)
    ind = sp.csr_matrix((np.ones(rows.size), (labels[rows], rows)), shape=(n_clusters, b.rows))
    sums = np.asarray((ind @ D).todense())
    pixels = np.bincount(labels[rows], minlength=n_clusters).astype(np.float64)
    within = np.bincount(labels[rows], weights=d2[rows], minlength=n_clusters)
    return np.concatenate([sums, pixels[:, None], within[:, None]], axis=1)


def segment(
    results: str | Path,
    n_clusters: int,
    *,
    group: str = "svd",
    variable: str | None = None,
    n_components: int | None = None,
    seed: int = 0,
    init: str | np.ndarray = "k-means||",
    max_iter: int = 300,
    tol: float = 1e-4,
    n_init: int = 5,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> xr.Dataset:
    """k-means segmentation of a result's maps, and the clusters' mean spectra from one pass over the counts.

    The features of a pixel come from its row of the stored map
    ``group/variable`` (:func:`pixel_features`): for ``"svd"`` the
    Poisson-scaled scores ``scores / sqrt(g)``, for ``"nmf"`` the abundance
    fractions ``a / sum(a)``, for any other group the map as stored. dask-ml's
    k-means (k-means|| initialisation, Lloyd iterations) is fitted on all
    pixels with counts, as a dask array with one chunk per tile; every pixel
    then gets the cluster of its nearest centroid (:func:`assign`; -1 for
    pixels without counts): lazily for the label map, and inside the unit tasks
    of one reduction pass over the counts of the montage view the result was
    computed on, which sums the counts of every cluster (a sparse indicator
    matrix times the unit's CSR counts). The labels depend on the seed, the
    stored maps and the tiles, never on the units.

    Parameters
    ----------
    results : path
        A results store (``results.zarr``) with the group.
    n_clusters : int
        Number of clusters, >= 2.
    group : str
        ``"svd"`` (default), ``"nmf"``, ``"mcr"`` (abundance fractions, like
        nmf), or another group of per-tile maps (then ``variable`` is required
        and its values are used as stored).
    variable : str, optional
        The map to cluster (default ``scores`` for svd, ``abundances`` for nmf and mcr).
    n_components : int, optional
        Cluster on the first ``n_components`` entries of the map only (the
        top-k scores of an SVD that kept more: the others are the Poisson
        noise, whose unit variance per dimension would swamp the distances).
        Default: all.
    seed : int
        ``random_state`` of the k-means.
    init : {"k-means||", "k-means++", "random"} or ndarray of shape (n_clusters, k)
        dask-ml's initialisation (centroids in the features' units).
    max_iter : int
        Lloyd iterations at most.
    tol : float
        Stop when the centroids move by less than ``tol`` (squared, relative to
        the mean feature variance, as scikit-learn's).
    n_init : int
        k-means runs from seeds drawn from ``seed``; the one with the least
        inertia is kept (dask-ml itself makes one; single runs from k-means||
        were caught in a poor optimum in 2 of 6 seeds on a simulated grade91
        montage, see docs/design.md).
    out : path, optional
        Also write the result as group ``segments`` of this results store.
    overwrite : bool
        Replace an existing ``segments`` group of ``out``.

    Returns
    -------
    xarray.Dataset
        ``labels (tile, y, x)`` int32 (lazy, one chunk per tile; -1: no counts),
        ``centroids (cluster, feature)`` in the features' units,
        ``mean_spectra (cluster, energy)`` counts per pixel (NaN for an empty
        cluster), ``pixels (cluster)``, ``inertia (cluster)`` (sum of squared
        feature distances to the centroid); attrs ``group``, ``variable``,
        ``features``, ``seed``, ``init``, ``n_iter``,
        ``passes`` (1) and the result's store attributes. Clusters are
        numbered by size, the largest first.

    Raises
    ------
    DecompositionError
        ``n_clusters`` not an integer >= 2 or more than the pixels with
        counts; ``init``, ``max_iter`` or ``tol`` invalid; no ``variable`` for
        a group other than svd/nmf.
    StoreFormatError
        No such group or variable in ``results``, or (svd) no ``pixel_counts``.
    ViewError
        The maps do not fit the montage they were computed on (see
        :func:`~xsi_dask.engine.maps.map_source`).
    MissingDependencyError
        dask-ml is not installed (``pip install xsi-dask[segment]``).

    Notes
    -----
    The features are persisted once (pixels x k float64 over the cluster's
    memory: the size of the stored map) for the k-means iterations.

    References
    ----------
    Bahmani, Moseley, Vattani, Kumar & Vassilvitskii (2012), Scalable k-means++,
    Proc. VLDB Endow. 5(7), 622-633, doi:10.14778/2180912.2180915.
    Lloyd (1982), Least squares quantization in PCM, doi:10.1109/TIT.1982.1056489.
    """
    started = time.perf_counter()
    if not isinstance(results, (str, Path)):
        raise DecompositionError(f"segment needs the path of a results store (its units read the maps from it); got "
                                 f"{type(results).__name__}: write the result with write_results or out= first")
    path = Path(results)
    if not isinstance(group, str) or not has_group(path, group):
        raise StoreFormatError(f"{path}: no group {group!r} to segment (run decompose/nmf with out= first)")
    ds = open_results(path, group)
    if variable is None:
        if group not in DEFAULT_VARIABLE:
            raise DecompositionError(f"segment of group {group!r} needs variable= (a map (tile, y, x, k) of it: "
                                     f"{sorted(ds.data_vars)})")
        variable = DEFAULT_VARIABLE[group]
    if variable not in ds:
        raise StoreFormatError(f"{path}: group {group!r} has no {variable!r} (it has {sorted(ds.data_vars)})")
    var = ds[variable]
    if var.dims[:3] != ("tile", "y", "x") or var.ndim != 4:
        raise StoreFormatError(f"{path}: {group}/{variable} has dims {var.dims}, not a per-tile map (tile, y, x, k)")
    # NMF and MCR abundances (in counts) alike: their fractions
    kind = "svd" if (group, variable) == ("svd", "scores") else "nmf" if (group, variable) in (("nmf", "abundances"),
                                                                                                ("mcr", "abundances")) \
        else "raw"
    if kind == "svd" and "pixel_counts" not in ds:
        raise StoreFormatError(f"{path}: the svd group has no pixel_counts (written by an older version): run "
                               "decompose again")
    if n_components is not None:
        n_components = count_arg(n_components, "n_components", 1, var.shape[3], f"{var.shape[3]} (stored in {group}/{variable})")
        var = var.isel({var.dims[3]: slice(0, n_components)})
    count_arg(n_clusters, "n_clusters", 2)
    count_arg(max_iter, "max_iter", 1)
    count_arg(n_init, "n_init", 1)
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise DecompositionError(f"tol must be a number >= 0; got {tol!r}")
    k = var.sizes[var.dims[3]]
    if isinstance(init, str):
        if init not in INITS:
            raise DecompositionError(f"init must be one of {INITS} or an array of centroids; got {init!r}")
    else:
        init = np.asarray(init, dtype=np.float64)
        if init.shape != (n_clusters, k):
            raise DecompositionError(f"init centroids of shape {init.shape}; expected ({n_clusters}, {k})")

    # the montage and the maps checked before the fit (a rewritten store, another bin: said now)
    plan = make_plan(results_view(ds))
    src = map_source(path, group, variable, plan, columns=n_components)
    gsrc = map_source(path, group, "pixel_counts", plan) if kind == "svd" else None

    values = var.data.rechunk({0: 1, 1: -1, 2: -1, 3: -1})
    counts = ds["pixel_counts"].data.rechunk({0: 1, 1: -1, 2: -1}) if kind == "svd" else None
    nt = values.shape[0]
    tiles_v = values.to_delayed().ravel()
    tiles_g = counts.to_delayed().ravel() if counts is not None else [None] * nt
    # each tile's features read once, kept for the fit; their lengths give the chunks
    rows = dask.persist(*[dask.delayed(_kept_rows)(v, g, kind) for v, g in zip(tiles_v, tiles_g, strict=True)])
    kept = compute(*[dask.delayed(len)(r) for r in rows])
    n_kept = int(sum(kept))
    if n_clusters > n_kept:
        raise DecompositionError(f"n_clusters must be at most the {n_kept} pixels with counts; got {n_clusters}")
    X = da.concatenate([da.from_delayed(r, shape=(n, k), dtype=np.float64) for r, n in zip(rows, kept, strict=True) if n > 0],
                       axis=0)
    centers, info = fit_kmeans(X, n_clusters, seed=seed, init=init, max_iter=max_iter, tol=tol, n_init=n_init)

    labels = da.blockwise(_label_tile, "tyx", values, "tyxk", *((counts, "tyx") if kind == "svd" else (None, None)),
                          centers, None, kind, None, dtype=np.int32, concatenate=True)

    sums = plan.reduce(_cluster_sums_task, src, gsrc, centers, kind, plan.n_channels, label=f"cluster sums (k={n_clusters})",
                       literal=(MapSource,))
    pixels, within = sums[:, -2], sums[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums[:, :-2] / pixels[:, None]

    features = {"svd": "Poisson-scaled scores, scores / sqrt(pixel_counts)",
                "nmf": "abundance fractions, abundances / their sum per pixel", "raw": f"{variable} as stored"}[kind]

    out_ds = xr.Dataset(
        {
            "labels": (("tile", "y", "x"), labels),
            "centroids": (("cluster", "feature"), centers),
            "mean_spectra": (("cluster", "energy"), means),
            "pixels": ("cluster", pixels.astype(np.int64)),
            "inertia": ("cluster", within),
        },
        coords={"cluster": np.arange(n_clusters), "feature": np.arange(k), "energy": ds["energy"], **map_coords(var)},
        attrs={
            **carried_attrs(ds),
            "method": "k-means (dask-ml, k-means|| init)" if isinstance(init, str) and init == "k-means||" else
                      "k-means (dask-ml)",
            "group": group,
            "variable": variable,
            "features": features,
            "n_clusters": int(n_clusters),
            "n_components": int(k),
            "seed": seed,
            "init": init if isinstance(init, str) else "array",
            "max_iter": max_iter,
            "tol": float(tol),
            "n_init": 1 if not isinstance(init, str) else n_init,
            "n_iter": info["n_iter"],
            "feature_scale": info["scale"],
            "pixels_clustered": n_kept,
            "passes": plan.passes,
            "nnz": plan.nnz,
            "seconds": time.perf_counter() - started,
        },
    )
    out_ds["labels"].attrs["description"] = "cluster of each pixel (nearest centroid); -1: no counts"
    out_ds["mean_spectra"].attrs.update(units="counts per pixel", description="mean spectrum of each cluster")
    if out is not None:
        write_results(out, {"segments": out_ds}, overwrite=overwrite)
    return out_ds
