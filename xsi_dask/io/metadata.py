"""Acquisition metadata of a montage store, and the EDS detector's resolution.

The store keeps each source file's HyperSpy-style ``metadata`` (RosettaSciIO's
mapping) in its root attributes. This module reads what analyses need from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MNKA_KEV", "DEFAULT_RESOLUTION_MNKA_EV", "acquisition", "detector_fwhm", "energy_resolution_mnka"]

MNKA_KEV = 5.8987  # Mn Ka1 energy, keV (where EDS detector resolution is specified)
DEFAULT_RESOLUTION_MNKA_EV = 130.0  # exspy's default energy_resolution_MnKa, eV
_FANO_EPS = 2.5  # eV: 8 ln 2 x Fano factor (0.115) x electron-hole pair energy in Si (3.85 eV) ~ 2.45-2.5


def detector_fwhm(energy_kev, resolution_mnka_ev: float = DEFAULT_RESOLUTION_MNKA_EV):
    """FWHM (keV) of an EDS detector's peaks at ``energy_kev``, from its resolution at Mn Ka.

    FWHM(E)^2 = FWHM(Mn Ka)^2 + 2.5 eV x (E - E(Mn Ka)), energies in eV: the
    Fano-limited statistical broadening on top of a constant electronic noise
    (Fiori & Newbury, Scanning Electron Microsc. 1978, 401; the form exspy uses
    to draw line widths). At E = 0 it gives the width of the zero (strobe) peak.

    Parameters
    ----------
    energy_kev : float or array
        X-ray energy, keV (clipped at 0).
    resolution_mnka_ev : float
        FWHM at Mn Ka, eV (the detector's quoted resolution, 120-140 eV for SDDs).

    Returns
    -------
    float or ndarray
        FWHM in keV, same shape as ``energy_kev``.

    Raises
    ------
    ValueError
        ``resolution_mnka_ev`` is not a positive number below 1000 eV, or too
        small for the Fano term (FWHM(0)^2 would be negative).
    """
    r = float(resolution_mnka_ev)
    if not (np.isfinite(r) and 0 < r < 1000):
        raise ValueError(f"the detector resolution at Mn Ka must be in (0, 1000) eV; got {resolution_mnka_ev!r}")
    e_ev = np.clip(np.asarray(energy_kev, dtype=float), 0.0, None) * 1000.0
    w2 = r**2 + _FANO_EPS * (e_ev - MNKA_KEV * 1000.0)
    if np.any(w2 <= 0):
        raise ValueError(f"a resolution of {r} eV at Mn Ka is below the Fano limit; expected 100-200 eV for an SDD")
    out = np.sqrt(w2) / 1000.0
    return float(out) if out.ndim == 0 else out


def energy_resolution_mnka(metadata: dict) -> float | None:
    """The EDS detector's FWHM at Mn Ka (eV) from HyperSpy-style metadata, or None where absent."""
    ai = (metadata or {}).get("Acquisition_instrument", {}) or {}
    for mic in ("SEM", "TEM"):
        det = ((ai.get(mic) or {}).get("Detector") or {}).get("EDS") or {}
        value = det.get("energy_resolution_MnKa")
        if value is not None:
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def _instrument(metadata: dict) -> dict:
    """``Acquisition_instrument.SEM`` or ``.TEM`` (whichever the file gave), else {}."""
    ai = (metadata or {}).get("Acquisition_instrument") or {}
    for mic in ("SEM", "TEM"):
        if isinstance(ai.get(mic), dict):
            return ai[mic]
    return {}


def _float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _same_or_list(values: list, name: str, varying: list[str]):
    """One value when every source agrees (None when none recorded it), else the list, one per source."""
    distinct = []
    for v in values:
        if v not in distinct:
            distinct.append(v)
    if len(distinct) <= 1:
        return distinct[0] if distinct else None
    varying.append(name)
    return list(values)


def acquisition(store_or_attrs) -> dict[str, Any]:
    """The acquisition metadata of a montage, summarised over its source files.

    Read from each source file's HyperSpy-style ``metadata`` (RosettaSciIO's
    mapping, kept in the store's root attributes ``sources[i]["metadata"]``)
    and the store's energy and pixel calibration. Values are flat and
    JSON-friendly (they go into Zarr attributes and ``xsi-dask info --json``).

    A value that differs between source files is never reduced to the first
    one: it is given as a list with one entry per source (``None`` where a
    source did not record it) and its name is listed in ``"varying"``.

    Parameters
    ----------
    store_or_attrs : MontageStore or dict
        A montage store, or its root attributes (``store.attrs``).

    Returns
    -------
    dict
        ``signal_type`` ("EDS_SEM", "EDS_TEM", "EELS", ...; "" when the files
        did not say), ``beam_energy`` (keV), ``elements`` (sorted chemical
        symbols, the union over the sources; ``elements_per_source`` when the
        lists differ), ``xray_lines`` (sorted, union, HyperSpy's "Al_Ka"
        form), ``live_time`` and ``real_time`` (s, summed over the sources;
        ``live_time_per_source`` / ``real_time_per_source`` when they differ;
        None when no source recorded it, or a list when only some did),
        ``energy_resolution_MnKa`` (eV, the detector FWHM at Mn Ka; exspy's
        130 eV default where no source recorded one, and then
        ``energy_resolution_MnKa_default`` is True), ``energy_offset``,
        ``energy_scale`` (keV, keV/channel), ``energy_channels``,
        ``energy_units``, ``pixel_scale_y``, ``pixel_scale_x``,
        ``pixel_units``, ``microscope`` and ``detector`` (names, None where
        absent), ``n_sources`` and ``varying`` (the names above whose values
        differ between sources).

    Raises
    ------
    KeyError
        The attributes lack ``sources``, ``energy`` or ``pixels`` (not a
        montage store's root attributes).
    """
    attrs = store_or_attrs.attrs if hasattr(store_or_attrs, "attrs") else store_or_attrs
    sources = list(attrs["sources"])
    metas = [s.get("metadata") or {} for s in sources]
    insts = [_instrument(m) for m in metas]
    eds = [((i.get("Detector") or {}).get("EDS") or {}) for i in insts]
    varying: list[str] = []
    out: dict[str, Any] = {"n_sources": len(sources)}

    types = [str(s.get("signal_type") or (m.get("Signal") or {}).get("signal_type") or "") for s, m in zip(sources, metas)]
    out["signal_type"] = _same_or_list(types, "signal_type", varying)
    out["beam_energy"] = _same_or_list([_float(i.get("beam_energy")) for i in insts], "beam_energy", varying)

    element_lists = [sorted({str(e) for e in ((m.get("Sample") or {}).get("elements") or [])}) for m in metas]
    # None (not []) where no source lists its elements: "unknown", so that line labels fall back to all elements
    out["elements"] = sorted({e for lst in element_lists for e in lst}) if any(element_lists) else None
    if len({tuple(lst) for lst in element_lists}) > 1:
        varying.append("elements")
        out["elements_per_source"] = element_lists
    out["xray_lines"] = sorted({str(x) for m in metas for x in ((m.get("Sample") or {}).get("xray_lines") or [])})

    for key in ("live_time", "real_time"):
        values = [_float(d.get(key)) for d in eds]
        if all(v is None for v in values):
            out[key] = None
        elif any(v is None for v in values):  # a sum over some of the sources would be silently short
            varying.append(key)
            out[key] = values
        else:
            out[key] = float(sum(values))
            if len(set(values)) > 1:
                varying.append(key)
                out[f"{key}_per_source"] = values

    res = [energy_resolution_mnka(m) for m in metas]
    if all(r is None for r in res):
        out["energy_resolution_MnKa"] = DEFAULT_RESOLUTION_MNKA_EV if str(out["signal_type"]).startswith("EDS") else None
        out["energy_resolution_MnKa_default"] = out["energy_resolution_MnKa"] is not None
    else:
        out["energy_resolution_MnKa"] = _same_or_list(res, "energy_resolution_MnKa", varying)
        out["energy_resolution_MnKa_default"] = False

    e = attrs["energy"]
    out.update(energy_offset=float(e["offset"]), energy_scale=float(e["scale"]), energy_channels=int(e["size"]),
               energy_units=str(e.get("units") or "keV"))
    px = attrs["pixels"]
    out.update(pixel_scale_y=float(px["scale_y"]), pixel_scale_x=float(px["scale_x"]), pixel_units=str(px.get("units") or ""))
    out["microscope"] = _same_or_list([i.get("microscope") for i in insts], "microscope", varying)
    out["detector"] = _same_or_list([d.get("detector_type") for d in eds], "detector", varying)
    out["varying"] = varying
    return out
