"""Net X-ray line intensities: of dense spectra, and as element maps of a montage in one engine map pass."""

from __future__ import annotations

import time

import numpy as np
import xarray as xr

from ..decomposition._svd import map_coords, run_attrs
from ..engine import Block, make_plan
from ..errors import XrayLineError
from ._lines import LineTable, element_lines

__all__ = ["element_maps", "net_intensities"]


def _check_axis(table: LineTable, n_channels: int, energy=None) -> None:
    if n_channels != table.axis_size:
        raise XrayLineError(f"the spectra have {n_channels} channels but the line table was made for an axis of "
                            f"{table.axis_size} ({table.axis_offset:.4f} keV + i x {table.axis_scale:.6f} keV): "
                            "make the table with element_lines(..., energy_axis=<the spectra's energy>)")
    if energy is not None and not np.allclose(np.asarray(energy, dtype=np.float64), table.axis, rtol=0,
                                              atol=1e-6 * table.axis_scale):
        raise XrayLineError(f"the spectra's energy axis ({float(energy[0]):.4f}-{float(energy[-1]):.4f} keV) is not the "
                            f"one the line table was made for ({table.axis[0]:.4f}-{table.axis[-1]:.4f} keV)")


def net_intensities(spectra, table: LineTable, *, net: bool = True):
    """Net counts of each X-ray line: counts in its integration window minus its background, exspy's convention.

    I_l = sum_{c in window_l} S_c - f_l (sum_{c in left_l} S_c + sum_{c in right_l} S_c),
    f_l = n_window / (n_left + n_right) (channel counts), i.e. the mean count
    per channel of the two background windows times the window's channels:
    exspy's ``EDSSpectrum.get_lines_intensity(integration_windows=...,
    background_windows=...)``. For windows placed symmetrically about the line
    (exspy's estimate, unmerged) this is the linear background interpolated
    under the line.

    Parameters
    ----------
    spectra : array-like or xarray.DataArray, shape (..., channels)
        Counts (or any spectra: NMF/MCR endmembers) on the axis ``table`` was
        made for; an ndarray has its channels last, a DataArray on its dim
        ``energy`` (keV; else its last dim), checked against the table's axis.
    table : LineTable
        From :func:`element_lines`.
    net : bool
        Subtract the background (default); False: the gross window counts.

    Returns
    -------
    ndarray or xarray.DataArray, shape (..., line)
        float64, in the spectra's units (counts for counts); a DataArray gets
        dim ``line`` with coords ``line``, ``element`` and ``line_energy``
        (keV), the spectra's ``units`` attribute and the windows in its
        attributes. A dask-backed DataArray stays lazy.

    Raises
    ------
    XrayLineError
        The channels (or the DataArray's energies) differ from the table's axis.

    References
    ----------
    exspy, ``EDSSpectrum.get_lines_intensity``, https://hyperspy.org/exspy.
    """
    W = table.weights(net=net)
    if isinstance(spectra, xr.DataArray):
        dim = "energy" if "energy" in spectra.dims else spectra.dims[-1]
        _check_axis(table, spectra.sizes[dim], spectra[dim].values if dim in spectra.coords else None)
        w = xr.DataArray(W, dims=(dim, "line"))
        out = xr.dot(spectra.astype(np.float64), w, dim=dim)
        coords = _line_coords(table)
        units = {"units": spectra.attrs["units"]} if "units" in spectra.attrs else {}
        return out.assign_coords(coords).assign_attrs(**units, **_window_attrs(table, net))
    S = np.asarray(spectra)
    _check_axis(table, S.shape[-1])
    return S.astype(np.float64, copy=False) @ W


def _line_coords(table: LineTable) -> dict:
    return {"line": ("line", list(table.lines)), "element": ("line", list(table.elements)),
            "line_energy": ("line", table.energy)}


def _window_attrs(table: LineTable, net: bool) -> dict:
    return {"background_subtracted": int(net), **table.attrs()}


def _maps_task(blocks: list[Block], W: np.ndarray) -> np.ndarray:
    """Line intensities of one tile: its CSR counts (pixels x view channels) times W (channels x lines)."""
    out = np.concatenate([b.kernels.csr_dense(*b.csr, W) for b in blocks])
    return out.reshape(1, *blocks[0].tile_shape, W.shape[1])


def element_maps(
    montage: xr.DataArray,
    elements=None,
    *,
    lines=None,
    beam_energy: float | None = None,
    resolution_mnka: float | None = None,
    width: float = 2.0,
    background_offset: tuple[float, float] = (2.0, 2.0),
    background_width: float = 1.0,
    gross: bool = False,
    zero_peak_cutoff: float | None | str = "auto",
    table: LineTable | None = None,
) -> xr.Dataset:
    """Net X-ray line intensity maps of a montage, one engine map pass (a CSR x dense product per tile).

    The windows are :func:`element_lines`'s on the view's energy axis; the
    per-line window weights W (channels x lines: 1 on the integration window,
    minus exspy's background factor on the two background windows) turn each
    tile's counts D_t (pixels x channels) into net intensities D_t W, computed
    lazily from the stored CSR counts, one dask chunk per tile.

    Parameters
    ----------
    montage : xarray.DataArray
        Counts (tile, y, x, energy) from :func:`xsi_dask.open_montage`,
        optionally with tiles selected, a contiguous energy range kept
        (:func:`xsi_dask.montage.prepare.analysis_view`, whose
        ``zero_peak_cutoff`` attribute is honoured: no window may reach below
        it) and pixels binned.
    elements : sequence of str, optional
        Chemical symbols. Default: the elements recorded in the source files'
        metadata (``montage.attrs["elements"]``).
    lines : sequence of str, optional
        Lines replacing exspy's choice for their elements ("Cr_Kb").
    beam_energy : float, optional
        keV; default the montage's recorded ``beam_energy``, else the axis end.
    resolution_mnka : float, optional
        Detector FWHM at Mn Ka, eV; default the montage's recorded
        ``energy_resolution_MnKa``, else 130 eV.
    width, background_offset, background_width : float
        Window geometry in FWHM, exspy's defaults (see :func:`element_lines`).
    gross : bool
        Also return ``integrated``, the gross counts in the integration windows.
    zero_peak_cutoff : float, None or "auto"
        keV below which no window may reach (the detector's zero peak).
        "auto": the view's ``zero_peak_cutoff`` attribute where it has one
        (:func:`~xsi_dask.montage.prepare.analysis_view`; None there when the
        zero peak was kept on purpose), else for EDS signals the detector's
        cutoff :func:`~xsi_dask.montage.prepare.zero_peak_cutoff`, else none.
    table : LineTable, optional
        Lines and windows made beforehand (``element_lines(elements,
        montage)``), on this view's energy axis; the line arguments above are
        then not used.

    Returns
    -------
    xarray.Dataset
        ``intensity (tile, y, x, line)`` float64 net counts (lazy, one chunk
        per tile), with ``gross`` also ``integrated (tile, y, x, line)``;
        coords ``line`` ("Fe_Ka"), ``element``, ``line_energy`` (keV) and the
        montage's tile and pixel coordinates; attrs: the lines and windows
        (keV and channel ranges on the view's axis), and the run record of
        :func:`xsi_dask.decomposition._svd.run_attrs` (store, store_uuid,
        energy range, ...).

    Raises
    ------
    XrayLineError
        No elements given nor recorded, an unknown element or line, a window
        outside the view's energy axis or below its zero-peak cutoff (see
        :func:`element_lines`).
    ViewError
        A view the engine cannot honour (see :func:`xsi_dask.engine.make_plan`).
    MissingDependencyError
        exspy is not installed.

    References
    ----------
    exspy, ``EDSSpectrum.get_lines_intensity``, https://hyperspy.org/exspy.
    """
    started = time.perf_counter()
    plan = make_plan(montage)
    energy = np.asarray(montage["energy"].values, dtype=np.float64)
    if table is None:
        table = element_lines(elements, montage, beam_energy=beam_energy, lines=lines, resolution_mnka=resolution_mnka,
                              width=width, background_offset=background_offset, background_width=background_width,
                              zero_peak_cutoff=zero_peak_cutoff)
    else:
        _check_axis(table, energy.size, energy)
    W = table.weights(net=True)
    if gross:
        W = np.hstack([W, table.weights(net=False)])
    n = len(table)
    maps = plan.map(_maps_task, W, tail=(W.shape[1],), name="element-maps")
    dims = ("tile", "y", "x", "line")
    data_vars = {"intensity": (dims, maps[..., :n])}
    if gross:
        data_vars["integrated"] = (dims, maps[..., n:])
    ds = xr.Dataset(
        data_vars,
        coords={**_line_coords(table), **map_coords(montage)},
        attrs={"method": "net X-ray line intensities (exspy windows)", **run_attrs(plan, started, montage),
               **_window_attrs(table, True)},
    )
    ds["intensity"].attrs.update(units="counts", description="net counts: integration window minus the background "
                                 "of the two background windows (exspy get_lines_intensity)")
    if gross:
        ds["integrated"].attrs.update(units="counts", description="gross counts in the integration window")
    return ds
