"""The labeled view of a montage store: an xarray DataArray over sparse dask blocks."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import sparse
import xarray as xr

from ..errors import StoreFormatError
from ..io.metadata import acquisition
from ..io.store import MontageStore, TileCSR

__all__ = ["open_montage", "montage_store", "MontageAccessor"]


def _load_block(store_path: str, height: int, width: int, dtype: np.dtype, block_id=None) -> sparse.COO:
    store = MontageStore.cached(store_path)
    t = block_id[0]
    csr = store.tile_csr(t)
    coo = sparse.COO.from_scipy_sparse(csr.to_scipy(dtype=dtype))
    return coo.reshape((1, height, width, store.channels))


def open_montage(store: str | Path | MontageStore) -> xr.DataArray:
    """Open a montage store as a lazy, labeled spectrum-image array.

    Parameters
    ----------
    store : path or MontageStore
        A store written by :func:`xsi_dask.ingest`.

    Returns
    -------
    xarray.DataArray
        Counts with dims ``("tile", "y", "x", "energy")``, backed by a dask
        array with exactly one chunk per tile; each block is a pydata
        ``sparse.COO``. Coordinates: ``energy`` (keV), ``y``/``x`` (physical
        units of the tile's pixels, from 0 at the tile origin), and per tile
        ``row``, ``col``, ``source``, ``stage_y``/``stage_x`` (NaN where
        unknown). ``montage.xsi`` gives the store and per-tile CSR arrays.
        Attributes: ``units`` ("counts"), ``store``, ``store_uuid`` and the
        acquisition metadata of :func:`xsi_dask.io.metadata.acquisition`
        (``signal_type``, ``beam_energy`` keV, ``elements``, ``xray_lines``,
        ``live_time`` / ``real_time`` s, ``energy_resolution_MnKa`` eV,
        the energy and pixel calibration, ``microscope``, ``detector``;
        a value that differs between source files is a list, one per source,
        named in ``varying``).

    Raises
    ------
    StoreFormatError
        ``store`` is not an xsi_dask montage store.
    """
    st = store if isinstance(store, MontageStore) else MontageStore(store)
    height, width = st.tile_shape
    channels = st.channels
    # at least uint32: pydata-sparse reduces in the block dtype, so a uint8 sum
    # over 4096 channels would overflow; NumPy's own sum widens the same way
    dtype = np.dtype(np.uint32 if int(st.attrs["max_count"]) <= np.iinfo(np.uint32).max else np.uint64)
    meta = sparse.COO.from_numpy(np.zeros((0, 0, 0, 0), dtype=dtype))
    data = da.map_blocks(
        _load_block,
        str(st.path),
        height,
        width,
        dtype,
        chunks=((1,) * st.n_tiles, (height,), (width,), (channels,)),
        dtype=dtype,
        meta=meta,
        name=f"montage-{st.uuid}",
    )
    px = st.attrs["pixels"]
    units = px["units"]

    def _num(v):
        return np.nan if v is None else float(v)

    coords = {
        "tile": ("tile", np.arange(st.n_tiles)),
        "row": ("tile", np.array([t["row"] for t in st.tiles])),
        "col": ("tile", np.array([t["col"] for t in st.tiles])),
        # object strings: Zarr v3 has a specified variable-length string type, not fixed-width unicode
        "source": ("tile", np.array([Path(t["source"]).name for t in st.tiles], dtype=object)),
        "stage_y": ("tile", np.array([_num(t["stage_y"]) for t in st.tiles]), {"units": st.attrs["stage_units"]}),
        "stage_x": ("tile", np.array([_num(t["stage_x"]) for t in st.tiles]), {"units": st.attrs["stage_units"]}),
        "y": ("y", np.arange(height) * px["scale_y"], {"units": units}),
        "x": ("x", np.arange(width) * px["scale_x"], {"units": units}),
        "energy": ("energy", st.energy, {"units": "keV", "long_name": "X-ray energy"}),
    }
    return xr.DataArray(
        data,
        dims=("tile", "y", "x", "energy"),
        coords=coords,
        name="counts",
        attrs={**acquisition(st), "units": "counts", "store": str(st.path), "store_uuid": st.uuid},
    )


def montage_store(montage: xr.DataArray) -> MontageStore:
    """The store behind a montage from :func:`open_montage` (also after ``isel(tile=...)``)."""
    path = montage.attrs.get("store")
    if path is None:
        raise StoreFormatError(
            "this DataArray has no 'store' attribute; open it with xsi_dask.open_montage"
        )
    return MontageStore(path)


@xr.register_dataarray_accessor("xsi")
class MontageAccessor:
    """``montage.xsi``: the engine's access to the store behind a montage view.

    ``montage.xsi.tiles`` are the store's tile numbers in the view (after
    ``isel(tile=...)``); ``montage.xsi.tile_csr(t)`` reads the CSR arrays of
    store tile ``t`` without any pydata-sparse round trip.
    """

    def __init__(self, obj: xr.DataArray):
        self._obj = obj

    @property
    def store(self) -> MontageStore:
        return montage_store(self._obj)

    @property
    def tiles(self) -> list[int]:
        return [int(t) for t in np.atleast_1d(self._obj["tile"].values)]

    def tile_csr(self, t: int) -> TileCSR:
        return self.store.tile_csr(t)
