"""EDS spectra of phases from xraydb's atomic data (no hand-typed line tables).

The spectrum of a phase of composition {element: weight fraction} at beam
energy E0 is the sum of

* characteristic lines: for each element and each ionised shell (K, L1-3, M4-5
  below E0), a Bethe-type ionisation cross-section Q ~ ln(U) / (U Ec^2) with
  U = E0 / Ec, times the shell's fluorescence yield, times each line's relative
  intensity from that shell (all from xraydb), per atom (weight fraction / A);
* a Kramers continuum N(E) ~ Zbar (E0 - E) / E;
* the detector: SDD resolution FWHM^2 = FWHM_MnKa^2 + 2.5 (E - 5899 eV) in eV
  (Fiori & Newbury 1978), an optional low-energy efficiency (polymer window, Si
  dead layer, Si crystal thickness; attenuation from xraydb) and optional Si
  escape peaks 1.740 keV below lines above the Si K edge.

References
----------
Fiori, C. E. & Newbury, D. E. (1978). Artifacts observed in energy-dispersive
X-ray spectrometry in the scanning electron microscope. SEM 1978/I, 401-422.
Kramers, H. A. (1923). Phil. Mag. 46, 836.
Elam, W. T., Ravel, B. D. & Sieber, J. R. (2002). A new atomic database for
X-ray spectroscopic calculations. Radiat. Phys. Chem. 63, 121-128 (xraydb).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["Detector", "characteristic_lines", "phase_spectrum", "fwhm_kev", "mean_z", "zero_peak_spectrum"]

_SHELLS = ("K", "L1", "L2", "L3", "M4", "M5")
_SI_KA = 1.740  # keV, the escape energy
_SI_K_EDGE = 1.839
_THRESHOLD = 0.1  # keV: the detector's noise threshold; nothing is counted below
# Kramers constant in the units of the characteristic intensities above, set so
# that pure Fe at 200 keV has 15 % of its detected counts in the continuum
_KRAMERS = 1.83e-10


@dataclass(frozen=True)
class Detector:
    """An SDD: resolution at Mn Ka (eV), window and crystal, escape fraction."""

    fwhm_mnka_ev: float = 130.0
    efficiency: bool = True
    window_polymer_um: float = 0.3
    dead_layer_um: float = 0.05
    crystal_um: float = 450.0
    escape: bool = True
    escape_fraction: float = 0.008


def fwhm_kev(energy_kev: np.ndarray, fwhm_mnka_ev: float = 130.0) -> np.ndarray:
    """SDD peak width (keV) at the given energies: FWHM^2 = FWHM_MnKa^2 + 2.5 (E - 5899 eV)."""
    e_ev = np.asarray(energy_kev, dtype=float) * 1000.0
    return np.sqrt(np.maximum(fwhm_mnka_ev**2 + 2.5 * (e_ev - 5899.0), 1.0)) / 1000.0


def mean_z(composition: dict[str, float]) -> float:
    """Mass-fraction-weighted mean atomic number."""
    import xraydb

    total = sum(composition.values())
    return sum(w / total * xraydb.atomic_number(el) for el, w in composition.items())


@functools.lru_cache(maxsize=256)
def _element_lines(element: str, beam_kev: float) -> tuple[tuple[float, float, str], ...]:
    """(energy keV, relative intensity per atom, name) of every line of ``element`` excited at ``beam_kev``."""
    import xraydb

    out = []
    for shell in _SHELLS:
        try:
            edge = xraydb.xray_edge(element, shell)
        except Exception:  # noqa: BLE001 - no such shell for a light element
            edge = None
        if edge is None:
            continue
        ec = edge.energy / 1000.0
        if not 0.05 < ec < beam_kev:
            continue
        u = beam_kev / ec
        q = np.log(u) / (u * ec**2)
        for name, line in xraydb.xray_lines(element, initial_level=shell).items():
            if line.intensity > 0:
                out.append((line.energy / 1000.0, q * edge.fyield * line.intensity, f"{element} {name}"))
    return tuple(out)


def characteristic_lines(composition: dict[str, float], beam_kev: float = 200.0):
    """Energies (keV), relative intensities and names of a phase's characteristic lines."""
    import xraydb

    total = sum(composition.values())
    energies, weights, names = [], [], []
    for el, w in composition.items():
        per_atom = (w / total) / xraydb.atomic_mass(el)
        for e, inten, name in _element_lines(el, float(beam_kev)):
            energies.append(e)
            weights.append(per_atom * inten)
            names.append(name)
    return np.asarray(energies), np.asarray(weights), names


@functools.lru_cache(maxsize=32)
def _efficiency(energy_key: tuple[float, float, int], det: Detector) -> np.ndarray:
    import xraydb

    offset, scale, n = energy_key
    e_kev = offset + scale * np.arange(n)
    e = np.clip(e_kev, _THRESHOLD, None) * 1000.0  # eV; xraydb's tables start at 100 eV
    eff = np.exp(-xraydb.material_mu("C8H8", e, density=1.05) * det.window_polymer_um * 1e-4)
    mu_si = xraydb.material_mu("Si", e, density=2.33)
    eff *= np.exp(-mu_si * det.dead_layer_um * 1e-4) * (1.0 - np.exp(-mu_si * det.crystal_um * 1e-4))
    return np.where(e_kev < _THRESHOLD, 0.0, eff)


def phase_spectrum(
    composition: dict[str, float],
    energy_kev: np.ndarray,
    *,
    beam_kev: float = 200.0,
    detector: Detector = Detector(),
    continuum: float = 1.0,
) -> tuple[np.ndarray, float]:
    """Expected spectrum of a phase per channel, normalised to sum 1, and its relative X-ray yield.

    Parameters
    ----------
    composition : dict
        Element symbol -> weight fraction.
    energy_kev : ndarray, shape (channels,)
        Channel centres in keV (uniform spacing).
    continuum : float
        Scale of the Kramers continuum relative to the default (0 switches it off).

    Returns
    -------
    spectrum : ndarray, shape (channels,)
        Probabilities of a detected count landing in each channel.
    yield_ : float
        Detected X-rays per unit dose, arbitrary units common to all phases.
    """
    e = np.asarray(energy_kev, dtype=float)
    scale = float(e[1] - e[0])
    spec = np.zeros_like(e)
    eff_axis = _efficiency((float(e[0]), scale, e.size), detector) if detector.efficiency else (e >= _THRESHOLD).astype(float)
    lines_e, lines_w, _ = characteristic_lines(composition, beam_kev)
    inside = (lines_e > max(float(e[0]), _THRESHOLD)) & (lines_e < e[-1])
    lines_e, lines_w = lines_e[inside], lines_w[inside]
    if detector.efficiency:
        lines_w = lines_w * np.interp(lines_e, e, eff_axis)
    if detector.escape:
        esc = lines_e > _SI_K_EDGE
        lines_e = np.concatenate([lines_e, lines_e[esc] - _SI_KA])
        lines_w = np.concatenate([lines_w, lines_w[esc] * detector.escape_fraction])
    sigma = fwhm_kev(lines_e, detector.fwhm_mnka_ev) / 2.3548
    # Gaussian peaks integrated over each channel (erf of the bin edges)
    from scipy.special import erf

    lo, hi = e - scale / 2, e + scale / 2
    for le, lw, s in zip(lines_e, lines_w, sigma):
        a, b = np.searchsorted(e, [le - 6 * s, le + 6 * s])
        if b > a:
            spec[a:b] += lw * 0.5 * (erf((hi[a:b] - le) / (np.sqrt(2) * s)) - erf((lo[a:b] - le) / (np.sqrt(2) * s)))
    if continuum > 0:
        z = mean_z(composition)
        cont = np.where((e >= _THRESHOLD) & (e < beam_kev), z * (beam_kev - e) / np.maximum(e, _THRESHOLD), 0.0)
        spec += continuum * _KRAMERS * cont * scale * eff_axis
    total = spec.sum()
    return spec / total, float(total)


def zero_peak_spectrum(energy_kev: np.ndarray, fwhm_mnka_ev: float = 130.0) -> np.ndarray:
    """The detector's zero (strobe) peak per channel, normalised to sum 1 over the channels given.

    A Gaussian at 0 keV of FWHM(0) from :func:`xsi_dask.io.metadata.detector_fwhm`
    (46 eV at 130 eV Mn Ka), integrated over each channel. On an axis from
    0 keV the half below 0 is cut off and the rest renormalised: every count
    of the peak lands on the axis.

    Parameters
    ----------
    energy_kev : ndarray, shape (channels,)
        Channel centres in keV (uniform spacing).
    fwhm_mnka_ev : float
        The detector's resolution at Mn Ka, eV.

    Returns
    -------
    ndarray, shape (channels,)

    Raises
    ------
    ValueError
        The axis holds no channel within 6 sigma of 0 keV.
    """
    from scipy.special import erf

    from ..io.metadata import detector_fwhm

    e = np.asarray(energy_kev, dtype=float)
    scale = float(e[1] - e[0])
    s = float(detector_fwhm(0.0, fwhm_mnka_ev)) / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    lo, hi = e - scale / 2, e + scale / 2
    spec = 0.5 * (erf(hi / (np.sqrt(2) * s)) - erf(lo / (np.sqrt(2) * s)))
    total = spec.sum()
    if not total > 1e-12:
        raise ValueError(f"the energy axis {e[0]:.3f}-{e[-1]:.3f} keV holds no channel of the zero peak (FWHM "
                         f"{2.3548 * s * 1e3:.0f} eV at 0 keV)")
    return spec / total
