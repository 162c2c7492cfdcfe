"""Measurements from pre-acquired data: a simulated automated experiment.

:func:`xsi_dask.active.run_experiment` calls ``measure(y, x)`` once per chosen
pixel. On a live instrument that callable drives the beam; here it looks the
spectrum up in a montage store that already holds every pixel, which is how
the DKL papers benchmark their acquisition (Roccapriore, Ziatdinov & Kalinin,
Adv. Sci. 9, 2203422 (2022), doi:10.1002/advs.202203422).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from ..io.store import MontageStore
from .features import mosaic_image, mosaic_to_tile

__all__ = ["MontageMeasure"]


class MontageMeasure:
    """``measure(y, x)`` reading the spectrum of mosaic pixel ``(y, x)`` from a montage store.

    Parameters
    ----------
    store : path or MontageStore
        The montage (tiles on a complete grid of abutting tiles, as
        :func:`xsi_dask.active.features.montage_patches` assumes).
    image : str
        A structural image of the tiles, used only to check that the mosaic
        can be assembled (the same check as the patches); default ``"HAADF"``.
    mosaic : tuple of ndarray, optional
        ``mosaic_image(store, image)`` when the caller has it already (it is
        not assembled again); default: assembled here.

    Attributes
    ----------
    tiles_ : ndarray of shape (rows, cols)
        Tile index at each grid position.
    calls_ : list of (y, x)
        The pixels measured, in order.

    Raises
    ------
    ParameterError, LayoutError
        See :func:`xsi_dask.active.features.mosaic_image`.

    Notes
    -----
    A call returns an ``xarray.DataArray`` of counts (uint64) with dim
    ``energy`` (keV) and attributes ``tile``, ``y``, ``x`` (the tile's pixel);
    a tile's CSR arrays are read once and cached by the store.
    """

    def __init__(self, store: str | Path | MontageStore, image: str = "HAADF", *,
                 mosaic: tuple[np.ndarray, np.ndarray] | None = None):
        self.store = store if isinstance(store, MontageStore) else MontageStore(store)
        _, self.tiles_ = mosaic_image(self.store, image) if mosaic is None else mosaic
        self.calls_: list[tuple[int, int]] = []
        self._energy = self.store.energy

    def __call__(self, y: int, x: int) -> xr.DataArray:
        t, ty, tx = (int(v) for v in mosaic_to_tile((y, x), self.tiles_, self.store.tile_shape))
        csr = self.store.tile_csr(t)
        row = ty * self.store.tile_shape[1] + tx
        lo, hi = int(csr.indptr[row]), int(csr.indptr[row + 1])
        spectrum = np.zeros(self.store.channels, dtype=np.uint64)
        spectrum[csr.indices[lo:hi].astype(np.int64)] = csr.data[lo:hi]
        self.calls_.append((int(y), int(x)))
        return xr.DataArray(spectrum, dims="energy", coords={"energy": ("energy", self._energy, {"units": "keV"})},
                            name="counts", attrs={"units": "counts", "tile": t, "y": ty, "x": tx})
