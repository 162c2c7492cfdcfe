"""HyperSpy round trip: montage tiles as exspy EDS signals, HyperSpy signals as montage stores, results as signals.

* :func:`to_hyperspy`: one tile of a montage view (or the tiles stitched on
  their row/col grid) as an in-memory exspy ``EDSSEMSpectrum`` /
  ``EDSTEMSpectrum`` (EELS: ``EELSSpectrum``; otherwise ``Signal1D``) with the
  counts, the energy axis (keV), the pixel calibration and the source file's
  HyperSpy metadata and original metadata, as ``hs.load`` gives them.
* :func:`from_hyperspy`: an in-memory spectrum image (a HyperSpy signal with
  two navigation axes and one signal axis) written as a one-tile montage
  store, through the ingest machinery (the same CSR conversion, checks and
  attributes), without a temporary file.
* :func:`results_to_hyperspy`: SVD loadings / NMF spectra as ``Signal1D`` on
  the energy axis, score / abundance maps as ``Signal2D``.

Round trip: ``to_hyperspy(open_montage(from_hyperspy(s, out)))`` has the
counts (same dtype), the axes' sizes, offsets, scales and units, and the
metadata and original metadata of ``s``, with two normalisations the store
makes: the metadata are stored as JSON (arrays and tuples come back as lists,
NumPy scalars as Python numbers, non-finite floats as None), and the energy
axis is in keV (an eV axis comes back in keV, the same calibration; EELS
signals come back in eV, to rounding of the keV the store keeps). The
navigation axes are named ``y`` and ``x`` and the signal axis ``Energy``
(the store keeps no axis names).

HyperSpy and exspy are optional: ``pip install xsi_dask[hyperspy]``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .. import config
from ..errors import NoSpectrumImageError, ParameterError, ViewError

__all__ = ["from_hyperspy", "results_to_hyperspy", "to_hyperspy"]

_EXTRA = "pip install xsi_dask[hyperspy]"


def _import(name: str):
    """Import an optional dependency, or an ImportError that names the extra to install."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            f"this conversion needs {name.split('.')[0]} (HyperSpy {'+ exspy ' if name.startswith('exspy') else ''}"
            f"support is optional): {_EXTRA}  ({exc})") from exc


def _limit(max_bytes: Any) -> int:
    """Largest dense array a conversion may build: ``max_bytes``, else ``xsi-dask.in-memory-limit``."""
    try:
        limit = config.get_bytes("in-memory-limit", max_bytes)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"max_bytes {max_bytes!r}: give a size in bytes or a string such as '4 GiB'") from exc
    if limit <= 0:
        raise ParameterError(f"max_bytes {max_bytes!r}: must be positive")
    return limit


def _refuse_size(nbytes: int, limit: int, what: str, hint: str) -> None:
    if nbytes > limit:
        raise ViewError(
            f"{what} is {nbytes / 2**20:,.1f} MiB dense, more than the limit of {limit / 2**20:,.1f} MiB "
            f"(max_bytes=, default xsi-dask.in-memory-limit): a dense copy must be deliberate. {hint}")


def _require(signal_type: str) -> None:
    """Import HyperSpy, and exspy for the EDS and EELS signal classes (it registers them with HyperSpy)."""
    _import("hyperspy.api")
    if str(signal_type or "").upper().startswith(("EDS", "EELS")):
        _import("exspy")


def _dict2signal(data, axes: list[dict], metadata: dict, original_metadata: dict, *, lazy: bool = False):
    """A HyperSpy signal of the class its ``Signal.signal_type`` names, built as ``hs.load`` builds it."""
    _require(str(((metadata or {}).get("Signal") or {}).get("signal_type") or ""))
    from hyperspy.io import dict2signal

    return dict2signal(
        {"data": data, "axes": axes, "metadata": copy.deepcopy(metadata),
         "original_metadata": copy.deepcopy(original_metadata)},
        lazy=lazy,
    )


# ---- to_hyperspy ----


def _as_view(montage) -> xr.DataArray:
    from ..io.store import MontageStore
    from ..montage.view import open_montage

    if isinstance(montage, xr.DataArray):
        return montage
    if isinstance(montage, (str, Path, MontageStore)):
        return open_montage(montage)
    raise ParameterError(f"to_hyperspy needs a montage view (open_montage), a store or its path; got {type(montage).__name__}")


def _uniform(values: np.ndarray, unit_step: float, what: str) -> tuple[float, float]:
    """(offset, scale) of coordinate ``values`` on a grid of ``unit_step``; ViewError where they are not evenly spaced."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float(values[0]), float(unit_step)
    steps = np.diff(values) / unit_step
    step = round(float(steps[0]))
    if step < 1 or not np.allclose(steps, step, rtol=0, atol=1e-6):
        raise ViewError(
            f"the view's {what} coordinate is not evenly spaced (steps of {np.unique(np.round(steps, 6))[:5]} "
            f"{'channels' if what == 'energy' else 'pixels'}): a HyperSpy spectrum image needs a uniform axis. "
            "Convert the view before masking channels or pixels (sel(energy=slice(lo, hi)) keeps the axis uniform)")
    return float(values[0]), float(unit_step) * step


def _source_of(st, t: int) -> tuple[int, dict]:
    """(k, sources[k]) of store tile ``t``."""
    sources = st.attrs.get("sources") or []
    src = str(st.tiles[t]["source"])
    for k, s in enumerate(sources):
        if str(s.get("path")) == src:
            return k, s
    raise ViewError(f"{st.path}: tile {t}'s source {src} is not among the store's sources; the store is damaged")


def _original_metadata(st, k: int) -> dict:
    try:
        return dict(st.root[f"sources/{k}"].attrs).get("original_metadata") or {}
    except KeyError:
        return {}


def _pixel_origin(st, t: int) -> tuple[float, float]:
    """(y, x) of tile ``t``'s first pixel in the pixel units: its stage origin where recorded in them, else the map's."""
    px = st.attrs["pixels"]
    info = st.tiles[t]
    same = str(st.attrs.get("stage_units")) == str(px["units"])
    oy = info.get("stage_y") if same and info.get("stage_y") is not None else px.get("offset_y", 0.0)
    ox = info.get("stage_x") if same and info.get("stage_x") is not None else px.get("offset_x", 0.0)
    return float(oy or 0.0), float(ox or 0.0)


def _tile_entries(view: xr.DataArray, i: int) -> tuple[np.ndarray, ...]:
    """(y, x, channel, value) of the non-zero values of the view's ``i``-th tile, never dense.

    Computed through the view's own (sparse) dask graph, so that whatever the
    view is (a selection, binning, ``m * 2``) is what is converted.
    """
    import sparse

    block = view.isel(tile=[i]).data
    block = block.compute() if hasattr(block, "compute") else block
    if not isinstance(block, sparse.COO):
        block = sparse.COO.from_numpy(np.asarray(block))
    _, yy, xx, ee = block.coords
    return yy, xx, ee, block.data


def _target_dtype(vmax: int, view_dtype: np.dtype, dtypes: list[str]) -> np.dtype:
    """The source files' dtype where the view holds integers that fit it (they do unless binned), else the view's."""
    if len(set(dtypes)) != 1 or view_dtype.kind not in "ui":
        return view_dtype
    dt = np.dtype(dtypes[0])
    if dt.kind in "ui" and vmax > np.iinfo(dt).max:
        return view_dtype
    return dt


def to_hyperspy(montage, tile: int | None = None, *, stitch: bool = False, max_bytes: int | str | None = None):
    """One tile of a montage (or the montage stitched) as an in-memory exspy EDS signal.

    Parameters
    ----------
    montage : xarray.DataArray, MontageStore or path
        A montage view from :func:`xsi_dask.open_montage` (``isel(tile=...)``,
        ``sel(energy=slice(lo, hi))`` and ``coarsen(y=b, x=b).sum()`` views
        work), or a store.
    tile : int, optional
        The store tile to convert (as the ``tile`` coordinate numbers it).
        Needed when the view has more than one tile, unless ``stitch``.
    stitch : bool
        Place every tile of the view on the montage's row/col grid and return
        one signal of (rows x tile height, cols x tile width) pixels. Tiles
        are placed edge to edge by their grid position: stage positions and
        overlaps are not registered. The grid must be complete (every
        row/col of its bounding rectangle once). Metadata: that of the first
        tile's source; where the tiles come from several files, the original
        metadata of each source are under ``original_metadata.sources``.
    max_bytes : int or str, optional
        Largest dense signal to build (default ``xsi-dask.in-memory-limit``,
        2 GiB); a larger one is refused before anything is read.

    Returns
    -------
    exspy.signals.EDSSEMSpectrum, EDSTEMSpectrum, EELSSpectrum or hyperspy Signal1D
        By the source's ``signal_type`` (``EDS_SEM``, ``EDS_TEM``, ``EELS``;
        other types a ``Signal1D`` or HyperSpy's class for them). Data:
        counts (y, x, energy), dense NumPy, in the source file's dtype (the
        view's, uint32 or wider, where binned counts do not fit it). Axes:
        ``y`` and ``x`` (scale and units of the pixels, offset the tile's
        origin), ``Energy`` (offset and scale of the view's channels, keV;
        EELS in eV, the store's keV x 1000, equal to the file's to rounding).
        ``metadata`` and ``original_metadata``: the source file's, as
        RosettaSciIO read them (stored as JSON; exspy adds its defaults, as
        ``hs.load`` does).

    Raises
    ------
    ImportError
        HyperSpy (or exspy for EDS/EELS) is not installed: ``pip install xsi_dask[hyperspy]``.
    ViewError
        Several tiles and neither ``tile`` nor ``stitch``; ``tile`` not in the
        view; an incomplete grid for ``stitch``; an energy or pixel axis that
        is not evenly spaced (a channel mask); the dense signal above ``max_bytes``.
    ParameterError
        A bad ``max_bytes`` or input type.
    """
    from ..montage.view import montage_store

    view = _as_view(montage)
    limit = _limit(max_bytes)
    st = montage_store(view)
    if view.dims != ("tile", "y", "x", "energy"):
        raise ViewError(f"to_hyperspy needs a view with dims (tile, y, x, energy); this one has {view.dims} "
                        "(keep the tile dimension: isel(tile=[t]))")
    tiles = [int(t) for t in np.atleast_1d(view["tile"].values)]
    if tile is not None:
        if isinstance(tile, (bool, np.bool_)) or not isinstance(tile, (int, np.integer)) or int(tile) not in tiles:
            raise ViewError(f"tile {tile!r} is not in this view (its tiles: {tiles[:20]}{' ...' if len(tiles) > 20 else ''})")
        if stitch:
            raise ViewError("give tile= for one tile or stitch=True for the montage, not both")
        tiles = [int(tile)]
        view = view.sel(tile=[int(tile)])
    elif len(tiles) > 1 and not stitch:
        raise ViewError(
            f"this view has {len(tiles)} tiles: pass tile=T for one tile, stitch=True for the montage on its row/col "
            "grid, or build a list: [to_hyperspy(m, tile=t) for t in m.tile.values]")
    h, w, channels = view.sizes["y"], view.sizes["x"], view.sizes["energy"]
    px = st.attrs["pixels"]
    e_off, e_scale = _uniform(view["energy"].values, float(st.attrs["energy"]["scale"]), "energy")
    y_off, y_scale = _uniform(view["y"].values, float(px["scale_y"]), "y")
    x_off, x_scale = _uniform(view["x"].values, float(px["scale_x"]), "x")

    rows = np.atleast_1d(view["row"].values).astype(int)
    cols = np.atleast_1d(view["col"].values).astype(int)
    r0, c0 = int(rows.min()), int(cols.min())
    n_rows, n_cols = int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1
    if len(tiles) > 1 and (n_rows * n_cols != len(tiles) or len(set(zip(rows, cols))) != len(tiles)):
        raise ViewError(
            f"stitch: the view's {len(tiles)} tiles do not fill their {n_rows} x {n_cols} grid once each (rows "
            f"{sorted(set(rows.tolist()))}, cols {sorted(set(cols.tolist()))}); convert tiles one by one with tile=")
    src_index = [_source_of(st, t)[0] for t in tiles]
    sources = st.attrs.get("sources") or []
    _require(str(sources[src_index[0]].get("signal_type") or ""))  # a missing extra is said before any reading
    dtypes = [str(sources[k].get("dtype", view.dtype)) for k in set(src_index)]

    def refuse_above(dtype: np.dtype) -> None:
        _refuse_size(len(tiles) * h * w * channels * dtype.itemsize, limit,
                     f"the {'stitched montage' if len(tiles) > 1 else f'tile {tiles[0]}'} ({n_rows * h} x {n_cols * w} px x "
                     f"{channels} channels, {dtype.name})",
                     "Select a part of it (isel(y=..., x=...), sel(energy=...)), bin it (coarsen(y=b, x=b).sum()), "
                     "or raise max_bytes")

    refuse_above(_target_dtype(0, np.dtype(view.dtype), dtypes))  # before reading: binned counts can only widen it
    # each tile read sparse, then scattered into one dense array of the source files' dtype
    blocks = [_tile_entries(view, i) for i in range(len(tiles))]
    vmax = max((int(b[3].max()) for b in blocks if b[3].size), default=0)
    dtype = _target_dtype(vmax, np.dtype(view.dtype), dtypes)
    refuse_above(dtype)
    data = np.zeros((n_rows * h, n_cols * w, channels), dtype)
    for i, (yy, xx, ee, values) in enumerate(blocks):
        r, c = int(rows[i]) - r0, int(cols[i]) - c0
        data[yy + r * h, xx + c * w, ee] = values
    blocks.clear()
    first = next(t for i, t in enumerate(tiles) if (int(rows[i]), int(cols[i])) == (r0, c0))
    k0 = _source_of(st, first)[0]
    metadata = copy.deepcopy(sources[k0].get("metadata") or {})
    ks = sorted(set(src_index))
    if len(ks) == 1:
        original = _original_metadata(st, k0)
    else:
        original = {"sources": {Path(str(sources[k]["path"])).name: _original_metadata(st, k) for k in ks}}
        metadata.setdefault("General", {})["title"] = f"{Path(str(st.path)).name}: {len(tiles)} tiles stitched"
    metadata.setdefault("Signal", {})
    if not metadata["Signal"].get("signal_type") and sources[k0].get("signal_type"):
        metadata["Signal"]["signal_type"] = sources[k0]["signal_type"]
    # the store keeps keV; EELS goes back in eV, the unit exspy's EELS edges and fine structure work in
    eels = str(metadata["Signal"].get("signal_type") or "").upper().startswith("EELS")
    e_factor, e_units = (1000.0, "eV") if eels else (1.0, "keV")
    oy, ox = _pixel_origin(st, first)
    units = px["units"]
    axes = [
        {"name": "y", "size": data.shape[0], "offset": oy + y_off, "scale": y_scale, "units": units, "navigate": True},
        {"name": "x", "size": data.shape[1], "offset": ox + x_off, "scale": x_scale, "units": units, "navigate": True},
        {"name": "Energy", "size": channels, "offset": e_off * e_factor, "scale": e_scale * e_factor, "units": e_units,
         "navigate": False},
    ]
    return _dict2signal(data, axes, metadata, original)


# ---- from_hyperspy ----


def _source_name(signal) -> str:
    title = str(signal.metadata.get_item("General.title", "") or "signal")
    safe = "".join(ch if ch.isalnum() or ch in "-_. " else "_" for ch in title).strip() or "signal"
    return f"hyperspy-{safe}"


def from_hyperspy(signal, store: str | Path, *, overwrite: bool = False):
    """Write an in-memory HyperSpy spectrum image as a one-tile montage store.

    The counts go through the ingest machinery (:mod:`xsi_dask.io.ingest`: the
    same CSR conversion, count checks and store attributes as a file), from
    the signal's array, without a temporary file.

    Parameters
    ----------
    signal : hyperspy.signal.BaseSignal
        A spectrum image: two navigation axes (y, x) and one signal axis
        (energy, uniform, eV or keV), counts (non-negative integers, any
        integer or float dtype); lazy signals are read a row block at a time.
        An exspy EDS signal, an EELS signal or a plain ``Signal1D``.
    store : str or Path
        The montage store to write (``.zarr`` folder).
    overwrite : bool
        Replace an existing montage store (only the package's own).

    Returns
    -------
    MontageStore
        One tile (row 0, col 0). Root attribute ``sources[0]`` holds the
        signal's metadata (JSON), ``signal_type`` and dtype; the group
        ``sources/0`` its original metadata; ``layout.kind`` is ``"hyperspy"``
        and the source is named ``hyperspy-<title>`` (there is no file).

    Raises
    ------
    NoSpectrumImageError
        The signal is not 2 navigation + 1 signal axes, or an axis is not uniform.
    CountsError
        Negative or non-integer values.
    StoreExistsError, NotOurOutputError, OutputWriteError
        ``store`` exists (and ``overwrite`` is false, or it is not a montage
        store), or cannot be written; checked before anything is converted.
    """
    import dask

    from ..io.ingest import _write_store
    from ..io.layout import Layout, TileSpec
    from ..io.readers import SpectrumImage, _energy_axis, _pixel_axes, to_json
    from ..io.store import MontageStore, check_output

    started = time.perf_counter()
    am = getattr(signal, "axes_manager", None)
    if am is None:
        raise NoSpectrumImageError(f"from_hyperspy needs a HyperSpy signal; got {type(signal).__name__}")
    if am.signal_dimension != 1 or am.navigation_dimension != 2:
        raise NoSpectrumImageError(
            f"from_hyperspy needs a spectrum image: 2 navigation axes (y, x) and 1 signal axis (energy); this signal "
            f"has {am.navigation_dimension} navigation and {am.signal_dimension} signal axes ({am.navigation_shape} | "
            f"{am.signal_shape}). A line scan or a single spectrum: s.inav[...] or transpose it into a map first")
    nav_x, nav_y = am.navigation_axes  # HyperSpy lists navigation axes x first; the array is (y, x, energy)
    (ax_e,) = am.signal_axes
    bad = [ax.name for ax in (nav_y, nav_x, ax_e) if not getattr(ax, "is_uniform", True)]
    if bad:
        raise NoSpectrumImageError(f"from_hyperspy: axis {bad} is not uniform; a montage store needs offset + scale axes")
    check_output(store, "montage", overwrite=overwrite)  # before any conversion

    def axis(ax) -> dict[str, Any]:
        return {"name": ax.name, "size": int(ax.size), "offset": float(ax.offset), "scale": float(ax.scale),
                "units": None if ax.units in (None, "<undefined>") else str(ax.units)}

    name = _source_name(signal)
    data = signal.data
    if not hasattr(data, "compute"):
        data = np.asarray(data)
    metadata = to_json(signal.metadata.as_dictionary())
    si = SpectrumImage(
        path=Path(name),
        data=data,
        energy=_energy_axis(axis(ax_e), Path(name)),
        pixels=_pixel_axes([axis(nav_y), axis(nav_x)]),
        metadata=metadata,
        original_metadata=to_json(signal.original_metadata.as_dictionary()),
        signal_type=str((metadata.get("Signal") or {}).get("signal_type") or ""),
    )
    layout = Layout(tiles=(TileSpec(index=0, source=Path(name), row=0, col=0),), rows=1, cols=1)
    record = {"kind": "hyperspy", "grid": None, "split": None, "manifest": None}
    srcs = {Path(name): dask.delayed(si, traverse=False)}  # traverse=False: the signal's arrays stay as they are
    _write_store(store, layout, srcs, record, [], overwrite=overwrite, tolerance=float(config.get("energy-tolerance")),
                 threads=1, progress=False, started=started)
    return MontageStore(store)


# ---- results_to_hyperspy ----


def _coord_axis(values: np.ndarray, name: str, units: str | None, navigate: bool) -> dict[str, Any]:
    """A HyperSpy axis dict for coordinate ``values``: offset + scale where evenly spaced, else the values."""
    values = np.asarray(values, dtype=np.float64)
    ax: dict[str, Any] = {"name": name, "units": units, "navigate": navigate}
    if values.size == 1:
        return {**ax, "size": 1, "offset": float(values[0]), "scale": 1.0}
    d = np.diff(values)
    if np.allclose(d, d[0], rtol=1e-9, atol=0) and d[0] != 0:  # the mean step: exact to a few ulp of the values
        scale = (values[-1] - values[0]) / (values.size - 1)
        return {**ax, "size": int(values.size), "offset": float(values[0]), "scale": float(scale)}
    return {**ax, "axis": values}


def _open_result(results, group: str | None) -> xr.Dataset:
    if isinstance(results, xr.Dataset):
        return results
    if not isinstance(results, (str, Path)):
        raise ParameterError(f"results_to_hyperspy needs a result Dataset or a results store path; got {type(results).__name__}")
    from ..io.results import open_results

    p = Path(results)
    groups = sorted(g for g in ("svd", "nmf") if (p / g / "zarr.json").is_file())
    if group is None:
        if len(groups) != 1:
            raise ParameterError(f"{p} has groups {groups}: pass group= (one of them)" if groups
                                 else f"{p} holds no svd or nmf results")
        group = groups[0]
    if group not in groups:
        raise ParameterError(f"{p} has no group {group!r} (it has {groups})")
    return open_results(p, group)


def results_to_hyperspy(results, group: str | None = None, *, lazy: bool = False,
                        max_bytes: int | str | None = None) -> dict[str, Any]:
    """SVD or NMF results as HyperSpy signals with calibrated axes.

    Parameters
    ----------
    results : xarray.Dataset or path
        A result of :func:`xsi_dask.decompose` or :func:`xsi_dask.nmf`, or a
        results store (``results.zarr``).
    group : {"svd", "nmf"}, optional
        With a results store: the group (default: the only one there).
    lazy : bool
        Return the maps as lazy signals (dask, one chunk per tile) instead of
        computing them.
    max_bytes : int or str, optional
        Largest map array computed into memory when not ``lazy`` (default
        ``xsi-dask.in-memory-limit``).

    Returns
    -------
    dict of str to hyperspy signal
        SVD: ``"loadings"`` and NMF: ``"spectra"``: ``Signal1D`` of shape
        (component | energy), the energy axis in keV from the result's
        ``energy`` coordinate (a non-uniform axis where channels were masked);
        SVD: ``"scores"`` and NMF: ``"abundances"``: ``Signal2D`` of
        (component | y, x) for a one-tile result, (tile, component | y, x)
        otherwise (navigation axes ``component`` and ``tile`` by their
        coordinates), ``y``/``x`` in the pixel units from 0 at each tile's
        origin. Each signal's ``original_metadata`` holds the result's
        attributes; values are float64 as stored.

    Raises
    ------
    ImportError
        HyperSpy is not installed: ``pip install xsi_dask[hyperspy]``.
    ParameterError
        Not a result; a store without the group.
    ViewError
        The maps above ``max_bytes`` when not ``lazy``.
    """
    from ..io.readers import to_json

    ds = _open_result(results, group)
    if "loadings" in ds and "scores" in ds:
        names, method = ("loadings", "scores"), "SVD"
    elif "spectra" in ds and "abundances" in ds:
        names, method = ("spectra", "abundances"), "NMF"
    else:
        raise ParameterError(f"not an SVD (loadings, scores) or NMF (spectra, abundances) result: {sorted(ds.data_vars)}")
    attrs = to_json(dict(ds.attrs))
    spec_name, map_name = names
    spectra = ds[spec_name].transpose("component", "energy")
    maps = ds[map_name].transpose("tile", "component", "y", "x")
    comp_ax = _coord_axis(spectra["component"].values, "component", None, True)
    energy_ax = _coord_axis(ds["energy"].values, "Energy", "keV", False)
    md_spec = {"General": {"title": f"{method} {spec_name}"}, "Signal": {"quantity": ds[spec_name].attrs.get("description", "")}}
    s1 = _dict2signal(np.asarray(spectra.values), [comp_ax, energy_ax], md_spec, {"result": attrs})

    tiles = np.atleast_1d(maps["tile"].values)
    units = ds["y"].attrs.get("units") if "y" in ds.coords else None
    y_ax = _coord_axis(ds["y"].values, "y", units, False)
    x_ax = _coord_axis(ds["x"].values, "x", units, False)
    data = maps.data
    if not lazy:
        _refuse_size(int(np.prod(maps.shape)) * maps.dtype.itemsize, _limit(max_bytes), f"the {method} {map_name}",
                     "Pass lazy=True for lazy signals, or select tiles (isel(tile=[...])) first")
        data = np.asarray(maps.values)
    axes = [comp_ax, y_ax, x_ax]
    if tiles.size > 1:
        axes = [_coord_axis(tiles, "tile", None, True), *axes]
    else:
        data = data[0]
    quantity = "counts" if method == "NMF" else ds[map_name].attrs.get("description", "")
    md_map = {"General": {"title": f"{method} {map_name}"}, "Signal": {"quantity": quantity}}
    s2 = _dict2signal(data, axes, md_map, {"result": attrs}, lazy=lazy and not isinstance(data, np.ndarray))
    return {spec_name: s1, map_name: s2}
