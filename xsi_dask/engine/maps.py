"""Per-tile maps of a results store (scores, abundances, labels) as the units of a plan read them.

The analyses that follow an SVD or NMF (the spatial-simplicity rotation,
factored MCR, ICA, k-means, tile QC) iterate over the tiles' maps, not over the
counts: a reduction pass of the plan (``Plan.reduce(..., reads_counts=False)``)
whose tasks read their unit's rows of a map ``(tile, y, x[, k])`` from the
results store, cached on the worker like the tiles, and never touch the counts.
Such a pass is logged with nnz 0, so the pass log shows which steps read counts.

:func:`results_view` rebuilds the montage view a result was computed on (its
store, tiles, channels and bin), for the passes that do read the counts (the
residual of a model, cluster mean spectra).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from ..errors import StoreFormatError, ViewError
from ..io.store import MontageStore, tile_cache
from .plan import Block, Plan, Unit

__all__ = ["MapSource", "map_source", "results_view", "tile_deviance"]


def _token(path: Path) -> tuple:
    """One committed version of a results store (each commit puts a new folder in place)."""
    st = os.stat(path)
    meta = os.stat(path / "zarr.json")
    return (st.st_dev, st.st_ino, meta.st_mtime_ns)


@dataclass(frozen=True)
class MapSource:
    """A per-tile map ``(tile, y, x[, k])`` of a results store, readable inside a unit task.

    Small and picklable: sent with every task. Build it with :func:`map_source`.

    Attributes
    ----------
    path : str
        The results store.
    group, name : str
        The group and variable (``"svd"``, ``"scores"``).
    token : tuple
        The store's committed version (the cache key: a rewritten store is read again).
    index : tuple of (int, int)
        ``(store tile number, position along the map's tile axis)`` of every tile.
    columns : int or None
        Only the first ``columns`` entries of the last axis are kept (and
        cached): the top-k scores of an SVD that stored more. None: all.
    """

    path: str
    group: str
    name: str
    token: tuple
    index: tuple[tuple[int, int], ...]
    columns: int | None = None

    def tile(self, tile: int) -> np.ndarray:
        """The whole map of store tile ``tile``, float64 (pixels, k) or (pixels,); cached per process."""
        pos = dict(self.index)[tile]

        def load():
            arr = zarr.open_array(store=self.path, path=f"{self.group}/{self.name}", mode="r")
            a = np.asarray(arr[pos] if self.columns is None else arr[pos, ..., : self.columns], dtype=np.float64)
            return np.ascontiguousarray(a.reshape(a.shape[0] * a.shape[1], *a.shape[2:]))

        return tile_cache.get((self.path, self.token, self.group, self.name, self.columns, tile), load)

    def rows(self, unit: Unit) -> np.ndarray:
        """The unit's rows of the map: (rows, k) or (rows,) float64 (a view of the cached tile)."""
        return self.tile(unit.tile)[unit.start : unit.stop]


def map_source(results: str | Path, group: str, name: str, plan: Plan, *, columns: int | None = None) -> MapSource:
    """The map ``group/name`` of the results store ``results``, checked against the tiles of ``plan``.

    Parameters
    ----------
    results : path
        A results store (``results.zarr``).
    group, name : str
        E.g. ``("svd", "scores")``, ``("nmf", "abundances")``.
    plan : Plan
        The plan whose units will read the map.
    columns : int, optional
        Read and cache only the first ``columns`` entries of the map's last
        axis (e.g. the top k of the stored scores).

    Returns
    -------
    MapSource

    Raises
    ------
    StoreFormatError
        No such group or variable, or it is not a per-tile map (dims ``tile, y, x, ...``), or it has
        fewer than ``columns`` entries along its last axis.
    ViewError
        The map was computed on another store (id), or lacks a tile of the
        plan, or its tiles are not the plan's size (another bin factor).
    """
    path = Path(results).resolve()
    try:
        ds = xr.open_zarr(str(path), group=group, consolidated=False)
    except (FileNotFoundError, KeyError, OSError, ValueError) as exc:
        raise StoreFormatError(f"{path}: no group {group!r} to read maps from ({exc})") from None
    if name not in ds:
        raise StoreFormatError(f"{path}: group {group!r} has no {name!r} (it has {sorted(ds.data_vars)})")
    var = ds[name]
    if var.dims[:3] != ("tile", "y", "x"):
        raise StoreFormatError(f"{path}: {group}/{name} has dims {var.dims}, not a per-tile map (tile, y, x, ...)")
    uid = ds.attrs.get("store_uuid")
    if uid is not None and uid != plan.store_uuid:
        raise ViewError(f"{path}: {group}/{name} was computed on another store (id {uid}) than the montage "
                        f"{plan.store} (id {plan.store_uuid}); use the results of this store")
    tiles = [int(t) for t in np.atleast_1d(ds["tile"].values)]
    missing = sorted(set(plan.tiles) - set(tiles))
    if missing:
        raise ViewError(f"{path}: {group}/{name} has no map of tile(s) {missing[:10]} of the montage view")
    if (var.sizes["y"], var.sizes["x"]) != tuple(plan.tile_shape):
        raise ViewError(f"{path}: {group}/{name} has tiles of {var.sizes['y']} x {var.sizes['x']} pixels, the view "
                        f"{plan.tile_shape[0]} x {plan.tile_shape[1]} (another bin factor)")
    if columns is not None and (var.ndim < 4 or not 1 <= int(columns) <= var.shape[-1]):
        raise StoreFormatError(f"{path}: {group}/{name} has {var.shape[-1] if var.ndim >= 4 else 'no'} entries along its "
                               f"last axis; {columns} were asked for")
    pos = {t: i for i, t in enumerate(tiles)}
    return MapSource(str(path), group, name, _token(path), tuple((t, pos[t]) for t in plan.tiles),
                     None if columns is None else int(columns))


def results_view(ds: xr.Dataset) -> xr.DataArray:
    """The montage view a result was computed on: its store's tiles, channels and bin, as the engine honours them.

    Parameters
    ----------
    ds : xarray.Dataset
        A result group (``svd``, ``nmf``, ...) with ``store``/``store_uuid``
        and ``bin`` attributes and ``tile`` and ``energy`` coordinates.

    Returns
    -------
    xarray.DataArray
        ``open_montage(store).isel(tile=..., energy=...)``, binned, with the
        result's ``zero_peak_cutoff`` and ``energy_range`` in its attrs.

    Raises
    ------
    StoreFormatError
        The result records no store, or the store is gone or no montage store.
    ViewError
        The store was rewritten since (another id), or the result's tiles or
        energies are not the store's.
    """
    from ..montage.view import open_montage

    store = ds.attrs.get("store")
    uid = ds.attrs.get("store_uuid")
    if not store or not uid:
        raise StoreFormatError("the result records no montage store (attrs 'store' and 'store_uuid')")
    st = MontageStore(store)
    if st.uuid != uid:
        raise ViewError(f"the montage store {st.path} was rewritten since these results were computed (id {uid}, now "
                        f"{st.uuid}): run the analysis again")
    tiles = [int(t) for t in np.atleast_1d(ds["tile"].values)]
    if any(not 0 <= t < st.n_tiles for t in tiles):
        raise ViewError(f"the result's tiles {tiles[:10]} are not all tiles of {st.path} ({st.n_tiles} tiles)")
    energy = np.asarray(ds["energy"].values, dtype=np.float64)
    idx = np.searchsorted(st.energy, energy)
    if idx.size == 0 or np.any(idx >= st.energy.size) or not np.array_equal(st.energy[np.minimum(idx, st.energy.size - 1)],
                                                                            energy):
        raise ViewError(f"the result's energy axis is not a selection of the channels of {st.path}")
    v = open_montage(st)
    if tiles != list(range(st.n_tiles)):
        v = v.isel(tile=tiles)
    if idx.size != st.energy.size:
        v = v.isel(energy=idx)
    b = int(ds.attrs.get("bin", 1))
    if b > 1:
        v = v.coarsen(y=b, x=b).sum()
    v.attrs.update({k: ds.attrs[k] for k in ("zero_peak_cutoff", "energy_range") if k in ds.attrs})
    v.attrs["bin"] = b
    return v


# ---- the residual of a factor model, per tile ----

def _deviance_task(b: Block, abundances: MapSource, spectra_t: np.ndarray, col_sums: np.ndarray, pos: dict):
    W = np.ascontiguousarray(abundances.rows(b.unit))
    kl, _, _ = b.kernels.nmf_loss_terms(*b.csr, W, spectra_t)
    counts = float(b.counts_per_pixel().sum())
    model = float(W.sum(0) @ col_sums)
    out = np.zeros((len(pos), 3))
    out[pos[b.unit.tile]] = (2.0 * (kl - counts + model), counts, b.rows)
    return out


def tile_deviance(plan: Plan, abundances, spectra: np.ndarray, *, label: str = "model deviance") -> xr.Dataset:
    """The Poisson (KL) deviance of a factor model per tile, in one pass over the counts.

    The model of pixel i, channel j is m_ij = sum_c A_ic S_cj (abundances in
    counts, spectra over the view's channels); the deviance of tile t is
    2 sum_{i in t, j} [d_ij log(d_ij / m_ij) - d_ij + m_ij], the first term
    over the non-zero counts only (0 log 0 = 0), from the tile's CSR counts
    through the kernel backend.

    Parameters
    ----------
    plan : Plan
        The plan of the montage view the model was fitted on.
    abundances : MapSource
        ``(tile, y, x, component)`` abundances in counts; or any picklable
        object whose ``rows(unit)`` gives a unit's abundances (rows, component)
        (MCR computes them from the stored scores inside the task).
    spectra : ndarray, shape (component, channels)
        Endmember spectra over the view's channels (each summing to 1 for
        abundances in counts, though any non-negative model works).
    label : str
        The pass's label in the plan's log.

    Returns
    -------
    xarray.Dataset
        Per tile (dim ``tile``, the store's tile numbers): ``deviance``,
        ``counts`` and ``pixels``.

    Raises
    ------
    ViewError
        ``spectra`` does not have the view's channels.

    References
    ----------
    McCullagh & Nelder (1989), Generalized Linear Models, 2nd ed., §6.2 (the
    Poisson deviance); Lee & Seung (2001) for the KL divergence of NMF.
    """
    S = np.asarray(spectra, dtype=np.float64)
    if S.ndim != 2 or S.shape[1] != plan.n_channels:
        raise ViewError(f"spectra of shape {S.shape} do not have the view's {plan.n_channels} channels")
    pos = {t: i for i, t in enumerate(plan.tiles)}
    out = plan.reduce(_deviance_task, abundances, np.ascontiguousarray(S.T), S.sum(1), pos, label=label,
                      literal=(MapSource,))
    return xr.Dataset(
        {"deviance": ("tile", out[:, 0]), "counts": ("tile", out[:, 1]), "pixels": ("tile", out[:, 2].astype(np.int64))},
        coords={"tile": np.asarray(plan.tiles)},
    )
