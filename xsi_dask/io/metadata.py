"""Acquisition metadata of a montage store, and the EDS detector's resolution.

The store keeps each source file's HyperSpy-style ``metadata`` (RosettaSciIO's
mapping) in its root attributes. This module reads what analyses need from it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MNKA_KEV", "DEFAULT_RESOLUTION_MNKA_EV", "detector_fwhm", "energy_resolution_mnka"]

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
