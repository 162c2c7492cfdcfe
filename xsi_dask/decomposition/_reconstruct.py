"""The denoised model of a montage from a decomposition: :func:`reconstruct` and :func:`region_spectrum`.

Like HyperSpy's ``get_decomposition_model(components)``: the counts the first
(or the chosen) components explain, D_k = maps_k @ spectra_k, in counts. The
model is lazy and is formed tile by tile; a region's summed spectrum is
formed from the summed maps (the model is linear in the maps), never from the
model itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np
import xarray as xr

from ..errors import DecompositionError

__all__ = ["reconstruct", "region_spectrum"]


def _factors(result: xr.Dataset) -> tuple[str, xr.DataArray, xr.DataArray, np.ndarray | None]:
    """(kind, maps (tile, y, x, component), spectra (component, energy), mean (energy) or None) of a result."""
    if not isinstance(result, xr.Dataset):
        raise DecompositionError(
            f"reconstruct needs the Dataset of xsi_dask.decompose or xsi_dask.nmf; got {type(result).__name__}")
    if "scores" in result and "loadings" in result:
        poisson, center = bool(int(result.attrs.get("poisson", 1))), bool(int(result.attrs.get("center", 0)))
        mean = None
        if center:
            if poisson or "mean" not in result:
                raise DecompositionError(
                    "this SVD is centred in the Poisson-scaled space (center=True): its model needs each pixel's total "
                    "counts, which the result does not hold; decompose with center=False (the default, as HyperSpy) "
                    "to reconstruct")
            mean = np.asarray(result["mean"].values, dtype=np.float64)
        return "svd", result["scores"], result["loadings"], mean
    if "abundances" in result and "spectra" in result:
        return "nmf", result["abundances"], result["spectra"], None
    raise DecompositionError(
        "reconstruct needs an SVD result (scores, loadings) of xsi_dask.decompose or an NMF result (abundances, "
        f"spectra) of xsi_dask.nmf; this Dataset has {sorted(result.data_vars)}")


def _components(components: int | Sequence[int] | None, k: int) -> list[int]:
    """Positions of the components to keep: all, the first n, or the listed ones (each once, in range)."""
    if components is None:
        return list(range(k))
    if isinstance(components, (bool, np.bool_)):
        raise DecompositionError(f"components must be an int (the first n) or a list of component numbers; got {components!r}")
    if isinstance(components, (int, np.integer)):
        if not 1 <= components <= k:
            raise DecompositionError(f"components={components}: the result has {k} components; give 1 to {k}")
        return list(range(int(components)))
    try:
        idx = [c for c in components]
    except TypeError:
        raise DecompositionError(
            f"components must be an int (the first n) or a list of component numbers; got {components!r}") from None
    bad = [c for c in idx if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)) or not 0 <= c < k]
    if bad or not idx:
        raise DecompositionError(f"components {list(components)!r}: give component numbers from 0 to {k - 1}"
                                 + (f" ({bad[:5]} are not)" if bad else " (none given)"))
    if len(set(int(c) for c in idx)) != len(idx):
        raise DecompositionError(f"components {list(components)!r}: a component is listed twice")
    return [int(c) for c in idx]


def _tile_model(block: np.ndarray, spectra: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    out = np.asarray(block, dtype=np.float64) @ spectra
    if mean is not None:
        out += mean
    return out


def reconstruct(result: xr.Dataset, components: int | Sequence[int] | None = None) -> xr.DataArray:
    """The denoised model of the montage, lazily, tile by tile: what HyperSpy's ``get_decomposition_model`` gives.

    SVD (:func:`xsi_dask.decompose`): D_k = scores[..., c] @ loadings[c] over
    the kept components c (the scores and loadings are already unweighted, so
    the Poisson scaling is undone and the model is in counts, as HyperSpy's
    after ``decomposition(normalize_poissonian_noise=True)``); a raw-count SVD
    centred with ``center=True, poisson=False`` adds its ``mean``. NMF
    (:func:`xsi_dask.nmf`): D_k = abundances[..., c] @ spectra[c], abundances
    in counts and spectra summing to 1.

    Parameters
    ----------
    result : xarray.Dataset
        From :func:`xsi_dask.decompose` (``scores`` (tile, y, x, component),
        ``loadings`` (component, energy)) or :func:`xsi_dask.nmf`
        (``abundances``, ``spectra``), in memory or opened from a results store
        (:func:`xsi_dask.io.results.open_results`).
    components : int or sequence of int, optional
        An int n keeps the first n components (HyperSpy's convention), a
        sequence keeps those component numbers (0-based); default: all.

    Returns
    -------
    xarray.DataArray
        ``model`` (tile, y, x, energy), float64 counts, a dask array with one
        chunk per tile (computed tile by tile), with the result's tile, pixel
        and energy coordinates; ``attrs["components"]`` lists the kept ones.
        The denoised sum spectrum of a region is plain xarray:
        ``reconstruct(r).sel(tile=t).isel(y=slice(a, b), x=slice(c, d)).sum(("y", "x"))``
        (lazy), or :func:`region_spectrum` (same numbers, without forming the
        tile's model).

    Raises
    ------
    DecompositionError
        ``result`` is not an SVD or NMF result, an SVD centred in the scaled
        space (its model needs each pixel's counts), or ``components`` is
        out of range, repeated or not integers.

    Notes
    -----
    One chunk holds a whole tile's model: y x x x channels x 8 bytes
    (134 MB for 64 x 64 x 4096; 34 GB for 1024 x 1024 x 4096), so compute
    large tiles' models in pieces (``isel``) or sum regions with
    :func:`region_spectrum`.
    """
    kind, maps, spectra, mean = _factors(result)
    idx = _components(components, maps.sizes["component"])
    maps = maps.isel(component=idx)
    L = np.ascontiguousarray(spectra.isel(component=idx).transpose("component", "energy").values, dtype=np.float64)
    data = maps.transpose("tile", "y", "x", "component").data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(1, -1, -1, -1))
    data = data.rechunk({0: 1, 1: -1, 2: -1, 3: -1})
    model = data.map_blocks(_tile_model, L, mean, chunks=data.chunks[:3] + ((L.shape[1],),), dtype=np.float64,
                            name="model")
    coords = {k: v for k, v in maps.coords.items() if "component" not in v.dims}
    coords["energy"] = spectra["energy"]
    return xr.DataArray(
        model, dims=("tile", "y", "x", "energy"), coords=coords, name="model",
        attrs={"units": "counts", "components": idx, "method": f"{kind} model",
               "description": f"denoised model of the counts from {len(idx)} {kind.upper()} component(s)"})


def region_spectrum(result: xr.Dataset, *, tile: int, y: slice | None = None, x: slice | None = None,
                    mask: np.ndarray | None = None, components: int | Sequence[int] | None = None) -> xr.DataArray:
    """The denoised sum spectrum of a region of one tile, without forming the model.

    By linearity, sum over the region of D_k = (sum over the region of the
    maps) @ spectra: one (k,) sum per region instead of the tile's model. It
    equals ``reconstruct(result, components).sel(tile=tile).isel(y=y, x=x)``
    (masked by ``mask``) summed over ``("y", "x")``.

    Parameters
    ----------
    result : xarray.Dataset
        An SVD or NMF result (see :func:`reconstruct`).
    tile : int
        The tile, as the ``tile`` coordinate numbers it (the store's tile number).
    y, x : slice, optional
        Pixel positions (``isel``) of the region; default the whole tile.
    mask : array of bool (y, x), optional
        Pixels of the region within ``y``/``x`` (e.g. a phase's pixels).
    components : int or sequence of int, optional
        As in :func:`reconstruct`.

    Returns
    -------
    xarray.DataArray
        ``(energy,)`` float64 counts summed over the region's pixels; ``attrs``
        give the tile, the region's pixel count and the components.

    Raises
    ------
    DecompositionError
        As :func:`reconstruct`; ``tile`` not in the result; a ``mask`` of
        another shape than the region.
    """
    kind, maps, spectra, mean = _factors(result)
    idx = _components(components, maps.sizes["component"])
    tiles = [int(t) for t in np.atleast_1d(maps["tile"].values)]
    if isinstance(tile, (bool, np.bool_)) or not isinstance(tile, (int, np.integer)) or int(tile) not in tiles:
        raise DecompositionError(f"tile {tile!r} is not in this result (its tiles: {tiles[:20]})")
    region = maps.sel(tile=int(tile)).isel(component=idx).isel(y=y or slice(None), x=x or slice(None))
    region = region.transpose("y", "x", "component")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != region.shape[:2]:
            raise DecompositionError(f"mask must be a boolean array of the region's shape {region.shape[:2]} (y, x); "
                                     f"got {mask.dtype} {mask.shape}")
        region = region.where(xr.DataArray(mask, dims=("y", "x")), 0.0)
        n_pix = int(mask.sum())
    else:
        n_pix = int(region.shape[0] * region.shape[1])
    totals = np.asarray(region.sum(("y", "x")).values, dtype=np.float64)
    L = np.asarray(spectra.isel(component=idx).transpose("component", "energy").values, dtype=np.float64)
    out = totals @ L
    if mean is not None:
        out = out + n_pix * mean
    return xr.DataArray(out, dims=("energy",), coords={"energy": spectra["energy"]}, name="spectrum",
                        attrs={"units": "counts", "tile": int(tile), "pixels": n_pix, "components": idx,
                               "description": f"denoised sum spectrum of {n_pix} pixels from {len(idx)} {kind.upper()} component(s)"})
