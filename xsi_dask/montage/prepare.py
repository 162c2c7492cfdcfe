"""The analyst's view of a montage: energy range, zero-peak exclusion and spatial binning.

:func:`analysis_view` turns the view from :func:`xsi_dask.open_montage` into
the one an EDS analysis runs on, with ordinary xarray operations that the
engine's plan honours exactly (``sel(energy=slice(lo, hi))``, ``isel(energy=mask)``
and ``coarsen(y=b, x=b).sum()``): a result on that view equals the result on
data cropped and binned beforehand (HyperSpy's ``crop_signal1D`` and ``rebin``).
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ..errors import ParameterError
from ..io.metadata import DEFAULT_RESOLUTION_MNKA_EV, detector_fwhm, energy_resolution_mnka
from .view import montage_store

__all__ = ["ZERO_PEAK_FWHMS", "analysis_view", "zero_peak_cutoff", "signal_type"]

# the zero (strobe) peak is excluded below this many FWHM(0) of the detector,
# 4 x 46 eV = 0.19 keV at 130 eV (Mn Ka): the strobe peaks of the shared Bruker
# and Hitachi maps (FWHM about 55 eV) have fallen to the background by
# 0.08-0.12 keV, but the Velox map's has a low-energy-noise tail to 0.2 keV
# (which a narrower window left to be named "B Ka"). The window never reaches
# into C Ka, the lightest line routinely analysed by EDS: it stops at
# E(C Ka) - FWHM(E(C Ka)) (0.22 keV at 130 eV; 0.21 keV at 138 eV, where 4 x
# FWHM(0) would be 0.26). Be Ka (0.108) and B Ka (0.183) lie below: light-element
# work keeps the zero peak (keep_zero_peak=True, --keep-zero-peak) and sets its own range.
ZERO_PEAK_FWHMS = 4.0
C_KA_KEV = 0.277


def signal_type(montage: xr.DataArray) -> str:
    """The store's signal type ("EDS_SEM", "EDS_TEM", "EELS", ...; "" when the files did not say)."""
    sources = montage_store(montage).attrs.get("sources") or []
    types = {str(s.get("signal_type") or "") for s in sources}
    return types.pop() if len(types) == 1 else ""


def zero_peak_cutoff(montage: xr.DataArray, resolution_mnka_ev: float | None = None) -> float:
    """Energy (keV) below which the EDS detector's zero peak is excluded by default.

    ``ZERO_PEAK_FWHMS`` x FWHM(0), the detector's peak width at 0 keV from its
    resolution at Mn Ka, but at most E(C Ka) - FWHM(E(C Ka)) so that the
    carbon peak is analysed whole (:func:`xsi_dask.io.metadata.detector_fwhm`): the
    resolution given, else the largest ``Detector.EDS.energy_resolution_MnKa``
    of the source files, else exspy's default of 130 eV.
    """
    if resolution_mnka_ev is None:
        found = [energy_resolution_mnka(src.get("metadata") or {}) for src in montage_store(montage).attrs.get("sources") or []]
        found = [r for r in found if r is not None]
        resolution_mnka_ev = max(found) if found else None  # files that differ: the widest peak
    r = DEFAULT_RESOLUTION_MNKA_EV if resolution_mnka_ev is None else resolution_mnka_ev
    return min(ZERO_PEAK_FWHMS * detector_fwhm(0.0, r), C_KA_KEV - detector_fwhm(C_KA_KEV, r))


def _range(energy_range) -> tuple[float | None, float | None]:
    if energy_range is None:
        return None, None
    try:
        lo, hi = energy_range
        lo = None if lo is None else float(lo)
        hi = None if hi is None else float(hi)
    except (TypeError, ValueError):
        raise ParameterError(f"energy_range must be (low, high) in keV, either may be None; got {energy_range!r}") from None
    for v in (lo, hi):
        if v is not None and not math.isfinite(v):
            raise ParameterError(f"energy_range must be finite keV values; got {energy_range!r}")
    if lo is not None and hi is not None and not lo < hi:
        raise ParameterError(f"energy_range: the low end ({lo} keV) must be below the high end ({hi} keV)")
    return lo, hi


def analysis_view(montage: xr.DataArray, *, energy_range=None, keep_zero_peak: bool = False, bin: int = 1,
                  resolution_mnka_ev: float | None = None) -> xr.DataArray:
    """The montage view an EDS analysis runs on: an energy range without the zero peak, binned.

    Parameters
    ----------
    montage : xarray.DataArray
        Counts (tile, y, x, energy) from :func:`xsi_dask.open_montage`
        (optionally with tiles selected).
    energy_range : (float or None, float or None), optional
        Channels kept, keV, inclusive at both ends as in ``sel``; None: the
        whole axis.
    keep_zero_peak : bool
        For EDS signals the channels below :func:`zero_peak_cutoff` (the
        detector's zero peak, and every negative energy) are excluded unless
        this is True. Not applied to other signal types (EELS).
    bin : int
        Sum the counts of ``bin`` x ``bin`` pixel blocks within each tile.
    resolution_mnka_ev : float, optional
        Detector FWHM at Mn Ka (eV) for the zero-peak window; default from the
        file's metadata, else 130 eV.

    Returns
    -------
    xarray.DataArray
        ``montage.sel(energy=slice(lo, hi))`` then ``coarsen(y=bin, x=bin).sum()``;
        attributes ``energy_range`` (the first and last kept channel, keV),
        ``zero_peak_cutoff`` (keV, or None when kept) and ``bin``.

    Raises
    ------
    ParameterError
        A malformed or empty energy range, a bin factor below 1 or not
        dividing the tile size (the tile shape is named).
    """
    lo, hi = _range(energy_range)
    if isinstance(bin, bool) or not isinstance(bin, (int, np.integer)) or bin < 1:
        raise ParameterError(f"bin must be an integer >= 1; got {bin!r}")
    bin = int(bin)
    cutoff = None
    if not keep_zero_peak and signal_type(montage).startswith("EDS"):
        cutoff = zero_peak_cutoff(montage, resolution_mnka_ev)
        lo = cutoff if lo is None else max(lo, cutoff)
    view = montage
    if lo is not None or hi is not None:
        energy = np.asarray(montage["energy"].values)
        keep = np.ones(energy.size, dtype=bool)
        if lo is not None:
            keep &= energy >= lo
        if hi is not None:
            keep &= energy <= hi
        if keep.sum() < 2:
            raise ParameterError(
                f"the energy range {lo if lo is not None else energy[0]:.3f}-{hi if hi is not None else energy[-1]:.3f} keV "
                f"keeps {int(keep.sum())} channel(s) of the axis {energy[0]:.3f}-{energy[-1]:.3f} keV"
                + (f" (the zero peak is excluded below {cutoff:.3f} keV)" if cutoff is not None else ""))
        view = view.sel(energy=slice(lo, hi))
    h, w = montage.sizes["y"], montage.sizes["x"]
    if bin > 1:
        if h % bin or w % bin:
            raise ParameterError(f"bin {bin} does not divide the tile size {h} x {w} pixels; choose a divisor of both "
                                 f"(or re-split the montage with --split so that the tiles are divisible)")
        view = view.coarsen(y=bin, x=bin).sum()
    e = np.asarray(view["energy"].values)
    return view.assign_attrs(energy_range=[float(e[0]), float(e[-1])], zero_peak_cutoff=cutoff, bin=bin)
