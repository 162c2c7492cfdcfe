"""Features of the candidate pixels of an active-learning experiment.

Three kinds, each a :class:`Features` (one row per pixel, row-major, with the
pixel's ``(y, x)``):

* :func:`structure_patches` - the window of a structural image (HAADF) around
  every pixel, as in the DKL papers; :func:`montage_patches` does the same on
  a montage, the windows crossing tile borders taking their pixels from the
  neighbouring tile of the layout;
* :func:`reduced_features` - the SVD scores or NMF abundances of every pixel
  from a results store (``results.zarr``), how a low-dose survey's
  decomposition steers where to measure;
* :func:`combine_features` - several of these side by side, standardised per
  column.

On a montage, pixels are addressed in mosaic coordinates: tile ``t`` at grid
position ``(row, col)`` holds the mosaic pixels ``Y = row * H + y``,
``X = col * W + x`` (``H x W`` the tile shape); :func:`mosaic_to_tile` goes
back. A single tile's mosaic coordinates are its own.

References
----------
Roccapriore, Ziatdinov & Kalinin, "Physics discovery in nanoplasmonic systems
via autonomous experiments in scanning transmission electron microscopy",
Adv. Sci. 9, 2203422 (2022), doi:10.1002/advs.202203422 (patches of the HAADF
image around each pixel as the DKL input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr

from ..errors import LayoutError, ParameterError
from ..io.results import open_results
from ..io.store import MontageStore

__all__ = [
    "Features", "combine_features", "coordinate_features", "montage_patches", "mosaic_image", "mosaic_to_tile", "reduced_features",
    "structure_patches",
]

_REDUCED_VARIABLE = {"svd": "scores", "nmf": "abundances"}


@dataclass(frozen=True)
class Features:
    """Feature vectors of candidate pixels.

    Parameters
    ----------
    values : ndarray of shape (n_pixels, n_features), float64
        One row per candidate pixel.
    yx : ndarray of shape (n_pixels, 2), int64
        The ``(y, x)`` of each row's pixel in an image of ``shape`` (mosaic
        coordinates on a montage); every pixel at most once.
    shape : tuple of int
        ``(H, W)`` of the image the pixels lie in (the maps of
        :func:`xsi_dask.active.run_experiment` have this shape).
    names : tuple of str
        One name per column (``"patch[dy,dx]"``, ``"nmf:2"``, ...).

    Raises
    ------
    ParameterError
        Mismatched lengths, non-finite values, pixels outside ``shape`` or
        given twice, a wrong number of names.
    """

    values: np.ndarray
    yx: np.ndarray
    shape: tuple[int, int]
    names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64)
        yx = np.asarray(self.yx)
        shape = tuple(int(s) for s in self.shape)
        if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
            raise ParameterError(f"features: values must have shape (n_pixels, n_features) with both > 0, got {values.shape}")
        if yx.shape != (values.shape[0], 2) or not np.issubdtype(yx.dtype, np.integer):
            raise ParameterError(f"features: yx must be integers of shape ({values.shape[0]}, 2) (one (y, x) per row "
                                 f"of values), got {yx.dtype} {yx.shape}")
        if len(shape) != 2 or min(shape) < 1:
            raise ParameterError(f"features: shape must be (H, W) with H, W >= 1, got {self.shape}")
        if not np.isfinite(values).all():
            bad = int(np.argwhere(~np.isfinite(values))[0, 0])
            raise ParameterError(f"features: values are not all finite (first at row {bad}, pixel {tuple(yx[bad])})")
        out = (yx < 0).any(1) | (yx[:, 0] >= shape[0]) | (yx[:, 1] >= shape[1])
        if out.any():
            raise ParameterError(f"features: pixel {tuple(yx[np.argmax(out)])} lies outside the image of shape {shape}")
        flat = yx[:, 0].astype(np.int64) * shape[1] + yx[:, 1]
        if np.unique(flat).size != flat.size:
            raise ParameterError("features: a pixel is given twice in yx; each candidate pixel must appear once")
        names = tuple(self.names) or tuple(f"f{i}" for i in range(values.shape[1]))
        if len(names) != values.shape[1]:
            raise ParameterError(f"features: {len(names)} names for {values.shape[1]} columns")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "yx", yx.astype(np.int64))
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "names", names)

    @property
    def n_pixels(self) -> int:
        return int(self.values.shape[0])

    def take(self, rows: np.ndarray) -> Features:
        """The candidates ``rows`` only (e.g. every other pixel, or a region), in the given order.

        Parameters
        ----------
        rows : array_like of int, or of bool of shape (n_pixels,)
            Row indices, or a mask.

        Raises
        ------
        ParameterError
            A mask of the wrong length, a row out of range or given twice, no row.
        """
        r = np.asarray(rows)
        if r.dtype == bool:
            if r.shape != (self.n_pixels,):
                raise ParameterError(f"a mask of {r.shape} for {self.n_pixels} candidates")
            r = np.flatnonzero(r)
        if not np.issubdtype(r.dtype, np.integer) or r.ndim != 1:
            raise ParameterError(f"rows must be a 1-D array of integers or a boolean mask, got {r.dtype} {r.shape}")
        if r.size and (r.min() < 0 or r.max() >= self.n_pixels):
            raise ParameterError(f"row {int(r[(r < 0) | (r >= self.n_pixels)][0])} is outside [0, {self.n_pixels})")
        return Features(self.values[r], self.yx[r], self.shape, self.names)


def _image2d(image: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 2 or min(img.shape) < 1:
        raise ParameterError(f"{what} must be a 2-D (y, x) image, got shape {img.shape}")
    if not (np.issubdtype(img.dtype, np.number) and not np.iscomplexobj(img)):
        raise ParameterError(f"{what} must be real numbers, got dtype {img.dtype}")
    img = img.astype(np.float64)
    if not np.isfinite(img).all():
        raise ParameterError(f"{what} holds non-finite values (first at {tuple(np.argwhere(~np.isfinite(img))[0])})")
    return img


def structure_patches(image: np.ndarray, window: int, *, normalize: Literal["minmax", "zscore"] = "minmax") -> Features:
    """The ``window x window`` patch of a structural image around every pixel.

    Parameters
    ----------
    image : array_like of shape (H, W)
        The structural image (HAADF, ...), any real dtype, arbitrary units.
    window : int
        Odd side w of the square patch centred on the pixel, 1 <= w and
        w // 2 < min(H, W).
    normalize : {"minmax", "zscore"}
        ``"minmax"`` (default): the whole image is mapped to [0, 1] by its
        minimum and maximum before the patches are cut, so every patch keeps
        the absolute intensity. Z-contrast (HAADF) intensity is the physics
        (heavier phases are brighter; the seed normalises the image the same
        way), and a flat patch inside a particle stays distinct from a flat
        patch of matrix, which a per-patch z-score maps to the same zeros.
        ``"zscore"``: each patch minus its mean, over its standard deviation
        (a flat patch becomes zeros); use it when the intensity drifts over
        the image (thickness, dose) and only the local shape should count.

    Returns
    -------
    Features
        ``values`` of shape (H * W, w * w), float64, the patch row-major
        (column ``dy * w + dx`` is the pixel at offset ``(dy - w // 2,
        dx - w // 2)``); ``yx`` of shape (H * W, 2), all pixels row-major.

    Raises
    ------
    ParameterError
        ``image`` not 2-D, not real or not finite; ``window`` not an odd
        integer >= 1 or too large for the image; ``normalize`` unknown; a
        constant image with ``"minmax"`` (it carries no structure).

    Notes
    -----
    Edges: the image is padded by reflection about the edge pixel, which is
    not repeated (NumPy ``np.pad(mode="reflect")``, SciPy's ``"mirror"``):
    for a row ``a b c d``, a window of 5 at ``a`` sees ``c b a b c``. Memory:
    the result holds H * W * w^2 float64 (a 512 x 512 image with w = 17 takes
    0.6 GB).
    """
    img = _image2d(image, "image")
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1 or window % 2 == 0:
        raise ParameterError(f"window must be an odd integer >= 1, got {window!r}")
    w = int(window)
    r = w // 2
    if r >= min(img.shape):
        raise ParameterError(f"window {w} is too large for an image of shape {img.shape}: "
                             f"the half-window {r} must be below min(H, W) = {min(img.shape)} for one reflection at the edges")
    if normalize not in ("minmax", "zscore"):
        raise ParameterError(f"normalize must be 'minmax' or 'zscore', got {normalize!r}")
    if normalize == "minmax":
        lo, hi = float(img.min()), float(img.max())
        if hi == lo:
            raise ParameterError(f"the image is constant ({lo:g} everywhere): it describes no structure")
        img = (img - lo) / (hi - lo)
    padded = np.pad(img, r, mode="reflect")
    H, W = img.shape
    patches = np.lib.stride_tricks.sliding_window_view(padded, (w, w)).reshape(H * W, w * w).astype(np.float64, copy=True)
    if normalize == "zscore":
        mean = patches.mean(1, keepdims=True)
        std = patches.std(1, keepdims=True)
        patches = np.divide(patches - mean, std, out=np.zeros_like(patches), where=std > 0)
    yy, xx = np.divmod(np.arange(H * W), W)
    names = tuple(f"patch[{dy},{dx}]" for dy in range(-r, r + 1) for dx in range(-r, r + 1))
    return Features(patches, np.stack([yy, xx], 1), (H, W), names)


def _grid(rows: np.ndarray, cols: np.ndarray, where: str) -> np.ndarray:
    """(n_rows, n_cols) array of tile indices from each tile's grid position; complete and without repeats."""
    n_rows, n_cols = int(rows.max()) + 1, int(cols.max()) + 1
    grid = np.full((n_rows, n_cols), -1, dtype=np.int64)
    for t, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        if r < 0 or c < 0:
            raise LayoutError(f"{where}: tile {t} has a negative grid position (row {r}, col {c})")
        if grid[r, c] >= 0:
            raise LayoutError(f"{where}: tiles {grid[r, c]} and {t} both sit at (row {r}, col {c})")
        grid[r, c] = t
    return grid


def mosaic_image(store: str | Path | MontageStore, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The structural image ``name`` of every tile of a montage, assembled on the layout's grid.

    Parameters
    ----------
    store : path or MontageStore
        A montage store (:func:`xsi_dask.ingest`, :func:`xsi_dask.testing.simulate.simulate`).
    name : str
        A structural image of the tiles (``MontageStore.image_names()``, e.g. ``"HAADF"``).

    Returns
    -------
    image : ndarray of shape (rows * H, cols * W), float64
        Tile ``t`` at grid position ``(row, col)`` fills ``[row*H:(row+1)*H, col*W:(col+1)*W]``.
    tiles : ndarray of shape (rows, cols), int64
        The tile index at each grid position.

    Raises
    ------
    ParameterError
        No image ``name`` in the store.
    LayoutError
        The grid has a hole or a position twice, or the tiles overlap (known
        for simulated stores, ``simulation.overlap > 0``): the mosaic assumes
        abutting tiles, as the layout does (overlaps are not registered).
    CorruptStoreError
        An image does not decode or match its checksum.
    """
    st = store if isinstance(store, MontageStore) else MontageStore(store)
    if name not in st.image_names(0):
        raise ParameterError(f"{st.path}: no structural image {name!r}; the tiles have {st.image_names(0) or 'none'}")
    overlap = int((st.attrs.get("simulation") or {}).get("overlap") or 0)
    if overlap:
        raise LayoutError(f"{st.path}: neighbouring tiles share {overlap} px; a mosaic of abutting tiles would repeat them "
                          "(register the overlap first, or use one tile's image with structure_patches)")
    rows = np.array([int(t["row"]) for t in st.tiles])
    cols = np.array([int(t["col"]) for t in st.tiles])
    grid = _grid(rows, cols, str(st.path))
    if (grid < 0).any():
        hole = tuple(int(v) for v in np.argwhere(grid < 0)[0])
        raise LayoutError(f"{st.path}: the grid has no tile at (row, col) = {hole}; a mosaic needs a complete grid")
    H, W = st.tile_shape
    image = np.empty((grid.shape[0] * H, grid.shape[1] * W), dtype=np.float64)
    for t in range(st.n_tiles):
        image[rows[t] * H:(rows[t] + 1) * H, cols[t] * W:(cols[t] + 1) * W] = _image2d(st.image(t, name), f"tile {t}'s {name}")
    return image, grid


def montage_patches(store: str | Path | MontageStore, name: str, window: int, *,
                    normalize: Literal["minmax", "zscore"] = "minmax",
                    mosaic: tuple[np.ndarray, np.ndarray] | None = None) -> Features:
    """:func:`structure_patches` of a montage's structural image, windows crossing tile borders.

    The tiles' images are assembled on the layout's grid (:func:`mosaic_image`),
    so a window that crosses a tile border takes its pixels from the
    neighbouring tile; only the mosaic's outer edges are reflected.
    ``"minmax"`` normalisation uses the minimum and maximum of the whole
    montage.

    Parameters
    ----------
    store : path or MontageStore
        The montage.
    name : str
        Its structural image.
    window : int
        Odd side of the patches (pixels).
    normalize : {"minmax", "zscore"}
        See :func:`structure_patches`.
    mosaic : tuple of ndarray, optional
        ``mosaic_image(store, name)`` when the caller has it already (it is
        not assembled again); default: assembled here.

    Returns
    -------
    Features
        ``values`` of shape (tiles * H * W, w * w), ``yx`` in mosaic
        coordinates (:func:`mosaic_to_tile` gives the tile and its pixel).

    Raises
    ------
    ParameterError, LayoutError, CorruptStoreError
        See :func:`structure_patches` and :func:`mosaic_image`.
    """
    image, _ = mosaic_image(store, name) if mosaic is None else mosaic
    return structure_patches(image, window, normalize=normalize)


def mosaic_to_tile(yx: np.ndarray, tiles: np.ndarray, tile_shape: tuple[int, int]) -> np.ndarray:
    """Mosaic coordinates to ``(tile, y, x)``.

    Parameters
    ----------
    yx : array_like of shape (n, 2) or (2,), int
        Mosaic pixels.
    tiles : ndarray of shape (rows, cols)
        Tile index per grid position (from :func:`mosaic_image`).
    tile_shape : (H, W)

    Returns
    -------
    ndarray of shape (n, 3) or (3,), int64

    Raises
    ------
    ParameterError
        A pixel outside the mosaic.
    """
    p = np.asarray(yx, dtype=np.int64)
    flat = p.reshape(-1, 2)
    H, W = (int(s) for s in tile_shape)
    r, y = np.divmod(flat[:, 0], H)
    c, x = np.divmod(flat[:, 1], W)
    bad = (flat < 0).any(1) | (r >= tiles.shape[0]) | (c >= tiles.shape[1])
    if bad.any():
        raise ParameterError(f"pixel {tuple(flat[np.argmax(bad)])} lies outside the mosaic of "
                             f"{tiles.shape[0] * H} x {tiles.shape[1] * W} pixels")
    out = np.stack([tiles[r, c], y, x], 1)
    return out.reshape(3) if p.ndim == 1 else out


def reduced_features(results: str | Path | xr.Dataset, group: Literal["svd", "nmf"], *,
                     components: Sequence[int] | None = None) -> Features:
    """Per-pixel SVD scores or NMF abundances of a results store, as features.

    Parameters
    ----------
    results : path or xarray.Dataset
        A results store (``results.zarr``), opened with
        :func:`xsi_dask.io.results.open_results`, or the group's Dataset
        itself (from :func:`xsi_dask.decompose` / :func:`xsi_dask.nmf`).
    group : {"svd", "nmf"}
        ``"svd"``: ``scores (tile, y, x, component)`` (unweighted, G^1/2 U S);
        ``"nmf"``: ``abundances (tile, y, x, component)`` in counts.
    components : sequence of int, optional
        The components to keep (default all), by their ``component`` label.

    Returns
    -------
    Features
        ``values`` of shape (n_pixels, n_components), float64, unscaled (in
        the group's units; :func:`combine_features` standardises);
        ``yx`` in mosaic coordinates from the tiles' ``row``/``col``
        coordinates, row-major; pixels of tiles left out (a results Dataset
        of ``isel(tile=...)``) are not candidates.

    Raises
    ------
    ParameterError
        ``group`` unknown, the variable missing, a component that is not there.
    LayoutError
        Several tiles without ``row``/``col`` coordinates, or two tiles at one grid position.
    """
    if group not in _REDUCED_VARIABLE:
        raise ParameterError(f"group must be 'svd' or 'nmf', got {group!r}")
    ds = open_results(results, group) if isinstance(results, str | Path) else results
    var = _REDUCED_VARIABLE[group]
    if var not in ds:
        raise ParameterError(f"the {group} results have no {var!r} variable (found {sorted(ds.data_vars)})")
    maps = ds[var]
    if set(maps.dims) != {"tile", "y", "x", "component"}:
        raise ParameterError(f"{group}.{var} has dims {maps.dims}, expected (tile, y, x, component)")
    if components is not None:
        have = [int(c) for c in maps["component"].values]
        missing = [c for c in components if c not in have]
        if missing or not len(components):
            raise ParameterError(f"components {list(components)}: {missing or 'none given'} not among the {group} components {have}")
        maps = maps.sel(component=list(components))
    maps = maps.transpose("tile", "y", "x", "component")
    n_tiles, H, W, k = maps.shape
    if "row" in maps.coords and "col" in maps.coords:
        rows = np.atleast_1d(maps["row"].values).astype(np.int64)
        cols = np.atleast_1d(maps["col"].values).astype(np.int64)
    elif n_tiles == 1:
        rows = cols = np.zeros(1, dtype=np.int64)
    else:
        raise LayoutError(f"the {group} results have {n_tiles} tiles and no row/col coordinates: their layout is unknown")
    grid = _grid(rows, cols, f"the {group} results")
    values = np.asarray(maps.values, dtype=np.float64)  # (tile, y, x, k)
    tt, yy, xx = np.meshgrid(np.arange(n_tiles), np.arange(H), np.arange(W), indexing="ij")
    Y = (rows[tt] * H + yy).ravel()
    X = (cols[tt] * W + xx).ravel()
    order = np.lexsort((X, Y))  # row-major in the mosaic
    labels = [int(c) for c in maps["component"].values]
    return Features(values.reshape(-1, k)[order], np.stack([Y[order], X[order]], 1),
                    (grid.shape[0] * H, grid.shape[1] * W), tuple(f"{group}:{c}" for c in labels))


def combine_features(*features: Features) -> Features:
    """Features of the same pixels side by side, each column standardised to mean 0 and standard deviation 1.

    Standardising puts patches (in [0, 1]) and abundances (counts) on one
    scale, so neither dominates the network's input by its units. A constant
    column becomes 0 (scikit-learn's ``StandardScaler`` convention for zero
    variance).

    Parameters
    ----------
    *features : Features
        At least one; all of the same ``shape`` and the same pixels in the
        same order (those of :func:`structure_patches` / :func:`montage_patches`
        and :func:`reduced_features` of the same montage are row-major alike).

    Returns
    -------
    Features
        ``values`` of shape (n_pixels, sum of the columns), float64.

    Raises
    ------
    ParameterError
        No features, different image shapes or different pixels.
    """
    if not features:
        raise ParameterError("combine_features needs at least one Features")
    first = features[0]
    for i, f in enumerate(features[1:], 1):
        if f.shape != first.shape:
            raise ParameterError(f"features 0 and {i} lie in images of different shapes: {first.shape} vs {f.shape}")
        if f.yx.shape != first.yx.shape or not np.array_equal(f.yx, first.yx):
            raise ParameterError(f"features 0 and {i} describe different pixels ({first.n_pixels} vs {f.n_pixels} rows, "
                                 "or another order); build them from the same image or montage")
    values = np.concatenate([f.values for f in features], axis=1)
    mean = values.mean(0)
    std = values.std(0)
    values = np.divide(values - mean, std, out=np.zeros_like(values), where=std > 0)
    return Features(values, first.yx, first.shape, tuple(n for f in features for n in f.names))


def coordinate_features(features: Features) -> Features:
    """The pixel coordinates ``(y, x)`` of the candidates as their features (the plain-GP baseline's inputs).

    Parameters
    ----------
    features : Features
        Any candidate set; only its pixels and image shape are used.

    Returns
    -------
    Features
        Same pixels, rows and shape; ``values`` of shape (n_pixels, 2), float64, the ``y`` and
        ``x`` pixel indices (names ``("y", "x")``).

    Raises
    ------
    ParameterError
        If ``features`` is not a :class:`Features`.
    """
    if not isinstance(features, Features):
        raise ParameterError(f"features must be a Features, got {type(features).__name__}")
    return Features(features.yx.astype(np.float64), features.yx, features.shape, ("y", "x"))
