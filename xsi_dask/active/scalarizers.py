"""Scalarizers: the physics that turns a measured spectrum or diffraction pattern into one number.

In a deep-kernel-learning experiment (Roccapriore et al. 2022) the model learns
structure -> scalar; the scalar is chosen by the physicist: the intensity in an
energy band, a background-subtracted edge, the ratio of two bands (L3/L2, a
Zn/Cu edge ratio, surface/bulk plasmon), the position or height of a peak, the
abundance of an NMF endmember, or, for 4D-STEM, the centre of mass of the
diffraction pattern and virtual bright-/dark-field detectors.

Every function works on a batch: spectra as an array ``(..., channels)`` with a
1-D ``energy`` axis, patterns as ``(..., ky, kx)``, and returns one value per
spectrum or pattern, shape ``(...)``.

Energy conventions (all spectral functions)
-------------------------------------------
``energy`` holds the channel centres, strictly increasing, in ``units``
(``"keV"`` or ``"eV"``). Band limits ``(lo, hi)`` are given in ``band_units``,
which defaults to ``units``; a limit in other units is converted, so
``band=(8.0, 8.2), band_units="keV"`` selects the same channels on an eV axis
as on a keV one. A band holds the channels whose centre lies in the closed
interval ``[lo, hi]`` (compared to within 1e-6 of a channel width, so a limit
converted between eV and keV selects the same channels). Intensities are
counts per channel: a band *integral* is the sum of the counts in its channels
(unit free), a band *mean* is that sum over the number of channels.

References
----------
Roccapriore, K. M., Kalinin, S. V. & Ziatdinov, M. (2022). Physics discovery in
nanoplasmonic systems via autonomous experiments in scanning transmission
electron microscopy. Adv. Sci. 9, 2203422. https://doi.org/10.1002/advs.202203422
Egerton, R. F. (2011). Electron Energy-Loss Spectroscopy in the Electron
Microscope, 3rd ed., Springer, chapter 4 (background fitting to ionization edges;
the power law A E^-r) and chapter 5 (white-line ratios).
https://doi.org/10.1007/978-1-4419-9583-4
Müller, K. et al. (2014). Atomic electric fields revealed by a quantum mechanical
approach to electron picodiffraction. Nat. Commun. 5, 5653 (centre of mass in
4D-STEM). https://doi.org/10.1038/ncomms6653
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import ParameterError

__all__ = [
    "Scalarizer",
    "abundance",
    "annular_dark_field",
    "band_integral",
    "band_max",
    "band_max_position",
    "band_mean",
    "band_ratio",
    "center_of_mass",
    "com_angle",
    "com_magnitude",
    "com_x",
    "com_y",
    "parse_scalarizer",
    "power_law_background",
    "virtual_bright_field",
]

Units = Literal["keV", "eV"]
_TO_EV = {"keV": 1000.0, "eV": 1.0}
_REL_TOL = 1e-6  # of a channel width: a band limit converted eV <-> keV selects the same channels


# --------------------------------------------------------------------------- energy axis and bands


def _check_units(units: str, name: str) -> None:
    if units not in _TO_EV:
        raise ParameterError(f"{name}={units!r} is not an energy unit: use 'keV' or 'eV'")


def _check_energy(energy: np.ndarray, units: str) -> np.ndarray:
    """The energy axis as a checked 1-D float array of channel centres."""
    _check_units(units, "units")
    energy = np.asarray(energy, dtype=float)
    if energy.ndim != 1 or energy.size < 2:
        raise ParameterError(f"energy must be a 1-D axis of at least 2 channels; got shape {energy.shape}")
    if not np.all(np.isfinite(energy)) or np.any(np.diff(energy) <= 0):
        raise ParameterError("energy must be finite and strictly increasing (channel centres)")
    return energy


def _check_axis(spectra: np.ndarray, energy: np.ndarray, units: str) -> tuple[np.ndarray, np.ndarray]:
    """The spectra as a float array and the energy axis as a checked 1-D float array."""
    energy = _check_energy(energy, units)
    spectra = np.asarray(spectra)
    if spectra.ndim < 1 or spectra.shape[-1] != energy.size:
        raise ParameterError(
            f"spectra of shape {spectra.shape} do not match the energy axis of {energy.size} channels: "
            "the last axis must be the channels"
        )
    return spectra, energy


def _band_mask(
    energy: np.ndarray, band: tuple[float, float], units: str, band_units: str | None, what: str = "band"
) -> np.ndarray:
    """Boolean mask ``(channels,)`` of the channels whose centre lies in ``band`` (converted to ``units``)."""
    band_units = units if band_units is None else band_units
    _check_units(band_units, "band_units")
    try:
        lo, hi = (float(v) for v in band)
    except (TypeError, ValueError):
        raise ParameterError(f"{what} must be a pair (lo, hi) of numbers; got {band!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ParameterError(f"{what} limits must be finite; got ({lo}, {hi}) {band_units}")
    if lo >= hi:
        raise ParameterError(f"{what} ({lo:g}, {hi:g}) {band_units} is empty or reversed: lo must be below hi")
    scale = _TO_EV[band_units] / _TO_EV[units]
    lo_a, hi_a = lo * scale, hi * scale
    tol = _REL_TOL * float(np.min(np.diff(energy)))
    if lo_a < energy[0] - tol or hi_a > energy[-1] + tol:
        raise ParameterError(
            f"{what} ({lo:g}, {hi:g}) {band_units} is outside the energy axis "
            f"[{energy[0] / scale:g}, {energy[-1] / scale:g}] {band_units}"
        )
    mask = (energy >= lo_a - tol) & (energy <= hi_a + tol)
    if not mask.any():
        raise ParameterError(f"{what} ({lo:g}, {hi:g}) {band_units} holds no channel centre: widen it")
    return mask


# --------------------------------------------------------------------------- power-law background


def power_law_background(
    spectra: np.ndarray,
    energy: np.ndarray,
    window: tuple[float, float],
    *,
    units: Units = "keV",
    band_units: Units | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit the power law ``I(E) = A E^-r`` to each spectrum in a background window.

    Least squares of ``ln I = ln A - r ln E`` over the window's channels (the
    log-log fit of Egerton 2011, chapter 4), one independent fit per
    spectrum, solved at once by :func:`numpy.polynomial.polynomial.polyfit`.

    Parameters
    ----------
    spectra : array of shape (..., channels)
        Counts per channel.
    energy : array of shape (channels,)
        Channel centres in ``units``, strictly increasing.
    window : (lo, hi)
        The fitting window in ``band_units`` (default ``units``); usually just
        before the edge.
    units, band_units : {"keV", "eV"}
        Units of ``energy`` and of ``window``.

    Returns
    -------
    amplitude : array of shape (...)
        ``A`` for ``E`` in ``units`` (counts per channel at E = 1 unit).
    exponent : array of shape (...)
        ``r`` (unit free; typically 2-6 for EELS).

    Raises
    ------
    ParameterError
        If the window is empty, reversed or outside the axis, holds fewer than
        2 channels, reaches E <= 0, or if any spectrum has a non-positive count
        in it (the logarithm is undefined: widen the window or bin the data).
    """
    spectra, energy = _check_axis(spectra, energy, units)
    mask = _band_mask(energy, window, units, band_units, what="background window")
    if mask.sum() < 2:
        raise ParameterError(f"background window {tuple(window)} holds {mask.sum()} channel: a power-law fit needs at least 2")
    e = energy[mask]
    if e[0] <= 0:
        raise ParameterError(f"background window {tuple(window)} reaches E <= 0: a power law needs positive energies")
    y = spectra[..., mask].astype(float)
    bad = ~np.all(y > 0, axis=-1)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ParameterError(
            f"{int(bad.sum())} spectra have non-positive counts in the background window {tuple(window)} "
            f"(first at index {first}): ln(I) is undefined; widen the window or bin the data"
        )
    batch = y.shape[:-1]
    coef = np.polynomial.polynomial.polyfit(np.log(e), np.log(y.reshape(-1, e.size)).T, 1)  # (2, n)
    amplitude = np.exp(coef[0]).reshape(batch)
    exponent = (-coef[1]).reshape(batch)
    return amplitude, exponent


def _band_counts(spectra, energy, bands, units, band_units, background) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per band: (counts per channel of shape (..., n_band), background subtracted if asked; the band's mask).

    One power law per spectrum, fitted once in ``background`` and extrapolated under every band.
    """
    spectra, energy = _check_axis(spectra, energy, units)
    masks = [_band_mask(energy, band, units, band_units) for band in bands]
    if background is not None:
        _check_background_before(background, bands, units if band_units is None else band_units)
        amplitude, exponent = power_law_background(spectra, energy, background, units=units, band_units=band_units)
    out = []
    for mask in masks:
        counts = spectra[..., mask].astype(float)
        if background is not None:
            counts = counts - amplitude[..., None] * energy[mask] ** (-exponent[..., None])
        out.append((counts, mask))
    return out


def _check_background_before(background, bands, band_units) -> None:
    lo_band = min(float(b[0]) for b in bands)
    if float(background[1]) > lo_band:
        raise ParameterError(
            f"background window {tuple(background)} {band_units} must end at or before the band "
            f"starting at {lo_band:g} {band_units} (the power law is fitted before the edge and extrapolated under it)"
        )


# --------------------------------------------------------------------------- spectral scalarizers


def band_integral(
    spectra: np.ndarray,
    energy: np.ndarray,
    band: tuple[float, float],
    *,
    units: Units = "keV",
    band_units: Units | None = None,
    background: tuple[float, float] | None = None,
) -> np.ndarray:
    """Counts summed over the channels of an energy band, optionally above a power-law background.

    ``S = sum_{E_i in band} (I_i - A E_i^-r)``, with ``A, r`` fitted in the
    ``background`` window by :func:`power_law_background` (Egerton 2011, chapter 4)
    when it is given, else ``A = 0``.

    Parameters
    ----------
    spectra : array of shape (..., channels)
        Counts per channel.
    energy : array of shape (channels,)
        Channel centres in ``units``, strictly increasing.
    band : (lo, hi)
        The band in ``band_units`` (default ``units``), closed interval of channel centres.
    units, band_units : {"keV", "eV"}
        Units of ``energy`` and of ``band`` / ``background``.
    background : (lo, hi), optional
        The power-law fitting window, ending at or before ``band``'s start.

    Returns
    -------
    array of shape (...)
        Counts (float).

    Raises
    ------
    ParameterError
        If the spectra and axis disagree, the band or window is empty, reversed
        or outside the axis, the window does not end before the band, or the
        window holds non-positive counts.
    """
    [(counts, _)] = _band_counts(spectra, energy, [band], units, band_units, background)
    return counts.sum(axis=-1)


def band_mean(
    spectra: np.ndarray,
    energy: np.ndarray,
    band: tuple[float, float],
    *,
    units: Units = "keV",
    band_units: Units | None = None,
    background: tuple[float, float] | None = None,
) -> np.ndarray:
    """Mean counts per channel over an energy band, optionally above a power-law background.

    :func:`band_integral` divided by the number of channels in the band; same
    parameters, returns an array of shape (...) in counts per channel, raises
    the same :class:`~xsi_dask.errors.ParameterError`.
    """
    [(counts, _)] = _band_counts(spectra, energy, [band], units, band_units, background)
    return counts.mean(axis=-1)


def band_ratio(
    spectra: np.ndarray,
    energy: np.ndarray,
    numerator: tuple[float, float],
    denominator: tuple[float, float],
    *,
    units: Units = "keV",
    band_units: Units | None = None,
    background: tuple[float, float] | None = None,
) -> np.ndarray:
    """Ratio of the integrals of two energy bands (e.g. Cu L3/L2, Zn L/Cu L, surface/bulk plasmon).

    ``band_integral(numerator) / band_integral(denominator)``; with
    ``background``, one power law fitted in that window (before both bands) is
    subtracted under both, as for white-line ratios (Egerton 2011, chapter 5).

    Parameters
    ----------
    spectra, energy, units, band_units, background
        As in :func:`band_integral`.
    numerator, denominator : (lo, hi)
        The two bands in ``band_units``.

    Returns
    -------
    array of shape (...)
        Unit-free ratio; ``inf`` or ``nan`` where the denominator's integral is 0
        (no warning: a pixel without signal in the reference band).

    Raises
    ------
    ParameterError
        As :func:`band_integral`, for either band.
    """
    (num, _), (den, _) = _band_counts(spectra, energy, [numerator, denominator], units, band_units, background)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num.sum(axis=-1) / den.sum(axis=-1)


def band_max(
    spectra: np.ndarray,
    energy: np.ndarray,
    band: tuple[float, float],
    *,
    units: Units = "keV",
    band_units: Units | None = None,
) -> np.ndarray:
    """Height of the maximum in an energy band: the largest count of its channels.

    Parameters as in :func:`band_integral` (no background); returns an array of
    shape (...) in counts per channel; raises the same errors.
    """
    [(counts, _)] = _band_counts(spectra, energy, [band], units, band_units, None)
    return counts.max(axis=-1)


def band_max_position(
    spectra: np.ndarray,
    energy: np.ndarray,
    band: tuple[float, float],
    *,
    units: Units = "keV",
    band_units: Units | None = None,
    interpolate: bool = True,
) -> np.ndarray:
    """Energy of the maximum in an energy band (a peak or plasmon position).

    The channel of the largest count (the first on a tie); with
    ``interpolate``, refined to the vertex of the parabola through that channel
    and its two neighbours, which gives sub-channel shifts of a smooth peak.
    A maximum on the band's first or last channel, or a flat top, is not
    refined (the channel centre is returned).

    Parameters
    ----------
    spectra, energy, band, units, band_units
        As in :func:`band_integral`.
    interpolate : bool, default True
        Parabolic sub-channel refinement.

    Returns
    -------
    array of shape (...)
        Energy in ``band_units`` (default ``units``).

    Raises
    ------
    ParameterError
        As :func:`band_integral`.
    """
    spectra, energy = _check_axis(spectra, energy, units)
    out_units = units if band_units is None else band_units
    [(counts, mask)] = _band_counts(spectra, energy, [band], units, band_units, None)
    e = energy[mask]
    i = counts.argmax(axis=-1)
    pos = e[i]
    if interpolate and e.size >= 3:
        inner = (i > 0) & (i < e.size - 1)
        ic = np.clip(i, 1, e.size - 2)
        x0, x1, x2 = e[ic - 1], e[ic], e[ic + 1]
        y0 = np.take_along_axis(counts, (ic - 1)[..., None], -1)[..., 0]
        y1 = np.take_along_axis(counts, ic[..., None], -1)[..., 0]
        y2 = np.take_along_axis(counts, (ic + 1)[..., None], -1)[..., 0]
        num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
        den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
        ok = inner & (den != 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            vertex = x1 - 0.5 * num / den
        pos = np.where(ok, vertex, pos)
    return pos * _TO_EV[units] / _TO_EV[out_units]


def abundance(abundances: np.ndarray, component: int, *, axis: int = -1) -> np.ndarray:
    """The abundance of one NMF endmember (or the score of one SVD component).

    Parameters
    ----------
    abundances : array with a component axis of length k
        E.g. ``(..., k)`` from ``results.zarr``'s abundance maps.
    component : int
        Index of the endmember, ``0 <= component < k`` (no negative indices: a
        spec names an endmember by its number).
    axis : int, default -1
        The component axis.

    Returns
    -------
    array of the input's shape without ``axis``

    Raises
    ------
    ParameterError
        If ``component`` is not an integer in ``[0, k)``.
    """
    a = np.asarray(abundances)
    if a.ndim == 0:
        raise ParameterError("abundances must have a component axis; got a scalar")
    k = a.shape[axis]
    if isinstance(component, bool) or not isinstance(component, int | np.integer) or not 0 <= component < k:
        raise ParameterError(f"component={component!r} is not an endmember index of the {k} components (0..{k - 1})")
    return np.take(a, int(component), axis=axis)


# --------------------------------------------------------------------------- 4D-STEM


def _check_patterns(patterns: np.ndarray, origin: tuple[float, float] | None) -> tuple[np.ndarray, float, float]:
    p = np.asarray(patterns)
    if p.ndim < 2 or p.shape[-1] < 1 or p.shape[-2] < 1:
        raise ParameterError(f"patterns must be an array (..., ky, kx); got shape {p.shape}")
    ky, kx = p.shape[-2:]
    if origin is None:
        return p, (ky - 1) / 2.0, (kx - 1) / 2.0
    try:
        oy, ox = (float(v) for v in origin)
    except (TypeError, ValueError):
        raise ParameterError(f"origin must be a pair (ky, kx) of pixel coordinates; got {origin!r}") from None
    if not (np.isfinite(oy) and np.isfinite(ox)):
        raise ParameterError(f"origin must be finite; got {origin!r}")
    return p, oy, ox


def center_of_mass(patterns: np.ndarray, *, origin: tuple[float, float] | None = None) -> np.ndarray:
    """Centre of mass of each diffraction pattern, relative to ``origin``.

    ``c_y = sum I(ky, kx) (ky - o_y) / sum I``, ``c_x`` likewise (Müller et al.
    2014): the momentum transfer that differential phase contrast measures.

    Parameters
    ----------
    patterns : array of shape (..., ky, kx)
        Counts (or intensities) per detector pixel.
    origin : (ky, kx), optional
        Reference point in detector pixels (array index order, pixel centres at
        integers); default the pattern centre ``((ky - 1) / 2, (kx - 1) / 2)``.

    Returns
    -------
    array of shape (..., 2)
        ``(c_y, c_x)`` in detector pixels, in array index order (``c_y`` grows
        down the rows). A pattern with zero total intensity gives NaN.

    Raises
    ------
    ParameterError
        If ``patterns`` has fewer than 2 dimensions or ``origin`` is not a finite pair.
    """
    p, oy, ox = _check_patterns(patterns, origin)
    ky, kx = p.shape[-2:]
    p = p.astype(float, copy=False)
    total = p.sum(axis=(-2, -1))
    wy = np.arange(ky) - oy
    wx = np.arange(kx) - ox
    my = np.einsum("...ij,i->...", p, wy)
    mx = np.einsum("...ij,j->...", p, wx)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([my / total, mx / total], axis=-1)


def com_x(patterns: np.ndarray, *, origin: tuple[float, float] | None = None) -> np.ndarray:
    """The x (column, kx) component of :func:`center_of_mass`, shape (...), detector pixels."""
    return center_of_mass(patterns, origin=origin)[..., 1]


def com_y(patterns: np.ndarray, *, origin: tuple[float, float] | None = None) -> np.ndarray:
    """The y (row, ky) component of :func:`center_of_mass`, shape (...), detector pixels."""
    return center_of_mass(patterns, origin=origin)[..., 0]


def com_magnitude(patterns: np.ndarray, *, origin: tuple[float, float] | None = None) -> np.ndarray:
    """``|CoM| = hypot(c_x, c_y)`` of :func:`center_of_mass`, shape (...), detector pixels."""
    c = center_of_mass(patterns, origin=origin)
    return np.hypot(c[..., 0], c[..., 1])


def com_angle(patterns: np.ndarray, *, origin: tuple[float, float] | None = None) -> np.ndarray:
    """Direction ``atan2(c_y, c_x)`` of :func:`center_of_mass` in radians, in (-pi, pi], shape (...).

    Measured from +kx towards +ky (rows grow down, so positive angles turn
    clockwise on a displayed pattern).
    """
    c = center_of_mass(patterns, origin=origin)
    return np.arctan2(c[..., 0], c[..., 1])


def _radius(shape: tuple[int, int], oy: float, ox: float) -> np.ndarray:
    ky, kx = shape
    return np.hypot(np.arange(ky)[:, None] - oy, np.arange(kx)[None, :] - ox)


def virtual_bright_field(patterns: np.ndarray, radius: float, *, origin: tuple[float, float] | None = None) -> np.ndarray:
    """Virtual bright-field detector: counts summed over the pixels within ``radius`` of ``origin``.

    A pixel is in the detector when the distance of its centre to ``origin`` is
    ``<= radius``, so that ``virtual_bright_field(p, r1) +
    annular_dark_field(p, r1, r2) == virtual_bright_field(p, r2)``.

    Parameters
    ----------
    patterns : array of shape (..., ky, kx)
    radius : float
        Detector radius in detector pixels, > 0.
    origin : (ky, kx), optional
        As in :func:`center_of_mass`.

    Returns
    -------
    array of shape (...)
        Counts.

    Raises
    ------
    ParameterError
        If ``radius`` is not positive or the detector covers no pixel.
    """
    p, oy, ox = _check_patterns(patterns, origin)
    if not np.isfinite(radius) or radius <= 0:
        raise ParameterError(f"virtual bright-field radius={radius!r} must be a positive number of pixels")
    mask = _radius(p.shape[-2:], oy, ox) <= radius
    if not mask.any():
        raise ParameterError(f"virtual bright-field radius={radius:g} px around {(oy, ox)} covers no detector pixel")
    return p[..., mask].sum(axis=-1)


def annular_dark_field(
    patterns: np.ndarray, inner: float, outer: float, *, origin: tuple[float, float] | None = None
) -> np.ndarray:
    """Virtual annular (dark-field) detector: counts over the pixels with ``inner < r <= outer``.

    ``r`` is the distance of a pixel centre to ``origin`` in detector pixels;
    the annulus is clipped by the detector's edges (pixels beyond it do not exist).

    Parameters
    ----------
    patterns : array of shape (..., ky, kx)
    inner, outer : float
        Radii in detector pixels, ``0 <= inner < outer``.
    origin : (ky, kx), optional
        As in :func:`center_of_mass`.

    Returns
    -------
    array of shape (...)
        Counts.

    Raises
    ------
    ParameterError
        If the radii are not ``0 <= inner < outer`` or the annulus covers no pixel.
    """
    p, oy, ox = _check_patterns(patterns, origin)
    if not (np.isfinite(inner) and np.isfinite(outer)) or inner < 0 or inner >= outer:
        raise ParameterError(f"annular detector radii ({inner!r}, {outer!r}) px must satisfy 0 <= inner < outer")
    r = _radius(p.shape[-2:], oy, ox)
    mask = (r > inner) & (r <= outer)
    if not mask.any():
        raise ParameterError(f"annular detector {inner:g}-{outer:g} px around {(oy, ox)} covers no detector pixel")
    return p[..., mask].sum(axis=-1)


# --------------------------------------------------------------------------- the CLI spec


@dataclass(frozen=True)
class Scalarizer:
    """A scalarizer parsed from a spec: call it on a batch, get one value per spectrum or pattern.

    Attributes
    ----------
    spec : str
        The spec it was parsed from.
    kind : {"spectrum", "pattern", "abundance"}
        What it takes: spectra ``(..., channels)`` on the axis given to the
        parser, diffraction patterns ``(..., ky, kx)``, or abundances ``(..., k)``.
    func : functools.partial
        The function with its parameters bound (picklable, so it travels to dask workers).
    """

    spec: str
    kind: Literal["spectrum", "pattern", "abundance"]
    func: functools.partial

    def __call__(self, data: np.ndarray) -> np.ndarray:
        return self.func(data)


_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE = re.compile(rf"^\s*({_NUM})\s*-\s*({_NUM})\s*$")

_SPECTRAL = {"band", "integral", "bgband", "bgintegral", "ratio", "max", "maxpos"}
_COM = {"com": com_magnitude, "com-x": com_x, "com-y": com_y, "com-angle": com_angle}
_NAMES = sorted(_SPECTRAL | set(_COM) | {"vbf", "adf", "abundance"})
# options each name accepts (anything else raises: no silently ignored option)
_OPTIONS = {
    **{n: {"bg", "units"} for n in ("band", "integral", "bgband", "bgintegral", "ratio")},
    "max": {"units"},
    "maxpos": {"units"},
    **{n: {"origin"} for n in _COM},
    "vbf": {"r", "origin"},
    "adf": {"origin"},
    "abundance": set(),
}


def _parse_range(text: str, spec: str) -> tuple[float, float]:
    m = _RANGE.match(text)
    if m is None:
        raise ParameterError(f"scalarizer {spec!r}: {text!r} is not a range LO-HI (e.g. 8.0-8.2)")
    return float(m.group(1)), float(m.group(2))


def _parse_float(text: str, what: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ParameterError(f"scalarizer {spec!r}: {what}={text!r} is not a number") from None


def parse_scalarizer(
    spec: str,
    *,
    energy: np.ndarray | None = None,
    units: Units = "keV",
    n_components: int | None = None,
) -> Scalarizer:
    """Parse a compact scalarizer spec (the CLI's ``--scalarizer``) into a callable.

    Grammar: ``NAME[:ARG][:KEY=VALUE]...``. Energies are in the units of the
    axis (``units``) unless a ``units=eV|keV`` option says otherwise.

    ==============================  =========================================================
    ``band:LO-HI``                  :func:`band_mean` (``bg=LO-HI``: power-law background)
    ``integral:LO-HI``              :func:`band_integral` (``bg=`` likewise)
    ``bgband:LO-HI:bg=LO-HI``       ``band`` with the background required
    ``bgintegral:LO-HI:bg=LO-HI``   ``integral`` with the background required
    ``ratio:LO-HI/LO-HI``           :func:`band_ratio` numerator/denominator (``bg=`` allowed)
    ``max:LO-HI``                   :func:`band_max` (peak height)
    ``maxpos:LO-HI``                :func:`band_max_position` (peak energy, in the spec's units)
    ``com``                         :func:`com_magnitude`; ``com-x``, ``com-y``, ``com-angle``
    ``vbf:r=R``                     :func:`virtual_bright_field` of radius R px
    ``adf:IN-OUT``                  :func:`annular_dark_field`
    ``abundance:K``                 :func:`abundance` of endmember K
    ==============================  =========================================================

    The 4D-STEM names take ``origin=KY,KX`` (detector pixels, row then column;
    default the pattern centre).

    Parameters
    ----------
    spec : str
        The spec, e.g. ``"ratio:931-951/1020-1040:units=eV"``.
    energy : array of shape (channels,), optional
        The spectra's energy axis in ``units``; required by the spectral names
        (bands are checked against it here, before any measurement).
    units : {"keV", "eV"}, default "keV"
        Units of ``energy``.
    n_components : int, optional
        Number of endmembers, to check ``abundance:K`` here (else checked at call time).

    Returns
    -------
    Scalarizer
        Callable on a batch, with the spec and the kind of input it takes.

    Raises
    ------
    ParameterError
        On an unknown name or option, a malformed number or range, a band
        that is empty, reversed (lo >= hi) or outside the axis, a spectral spec
        without an energy axis, or an endmember index out of range.

    Examples
    --------
    >>> import numpy as np
    >>> s = parse_scalarizer("integral:2-3", energy=np.arange(5.0), units="keV")
    >>> float(s(np.array([1.0, 2.0, 3.0, 4.0, 5.0])))
    7.0
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ParameterError(f"scalarizer spec must be a non-empty string; got {spec!r}; names: {', '.join(_NAMES)}")
    parts = [p.strip() for p in spec.strip().split(":")]
    name, rest = parts[0].lower(), parts[1:]
    if name not in _OPTIONS:
        raise ParameterError(f"scalarizer {spec!r}: unknown name {parts[0]!r}; known: {', '.join(_NAMES)}")
    args = [p for p in rest if "=" not in p]
    options: dict[str, str] = {}
    for p in rest:
        if "=" in p:
            key, _, value = p.partition("=")
            key = key.strip().lower()
            if key not in _OPTIONS[name]:
                allowed = ", ".join(sorted(_OPTIONS[name])) or "none"
                raise ParameterError(f"scalarizer {spec!r}: option {key!r} does not apply to {name!r} (options: {allowed})")
            if key in options:
                raise ParameterError(f"scalarizer {spec!r}: option {key!r} given twice")
            options[key] = value.strip()
    n_args = 0 if (name in _COM or name == "vbf") else 1
    if len(args) != n_args:
        raise ParameterError(f"scalarizer {spec!r}: {name!r} takes {n_args} positional argument(s), got {len(args)}: {args}")

    if name in _SPECTRAL:
        return _parse_spectral(spec, name, args[0], options, energy, units)
    if name == "abundance":
        try:
            k = int(args[0])
        except ValueError:
            raise ParameterError(f"scalarizer {spec!r}: endmember {args[0]!r} is not an integer") from None
        if k < 0:
            raise ParameterError(f"scalarizer {spec!r}: endmember {k} must be >= 0 (endmembers are numbered from 0)")
        if n_components is not None and k >= n_components:
            raise ParameterError(
                f"scalarizer {spec!r}: endmember {k} is not one of the {n_components} components (0..{n_components - 1})"
            )
        return Scalarizer(spec, "abundance", functools.partial(abundance, component=k))

    kwargs = {}
    if "origin" in options:
        pieces = options["origin"].split(",")
        if len(pieces) != 2:
            raise ParameterError(f"scalarizer {spec!r}: origin={options['origin']!r} must be KY,KX")
        kwargs["origin"] = tuple(_parse_float(v, "origin", spec) for v in pieces)
    if name in _COM:
        return Scalarizer(spec, "pattern", functools.partial(_COM[name], **kwargs))
    if name == "vbf":
        if "r" not in options:
            raise ParameterError(f"scalarizer {spec!r}: vbf needs its radius, e.g. 'vbf:r=5'")
        r = _parse_float(options["r"], "r", spec)
        if not r > 0:
            raise ParameterError(f"scalarizer {spec!r}: vbf radius r={r:g} must be positive")
        return Scalarizer(spec, "pattern", functools.partial(virtual_bright_field, radius=r, **kwargs))
    inner, outer = _parse_range(args[0], spec)  # adf
    if inner < 0 or inner >= outer:
        raise ParameterError(f"scalarizer {spec!r}: annulus {inner:g}-{outer:g} px must satisfy 0 <= inner < outer")
    return Scalarizer(spec, "pattern", functools.partial(annular_dark_field, inner=inner, outer=outer, **kwargs))


def _parse_spectral(spec: str, name: str, arg: str, options: dict[str, str], energy, units) -> Scalarizer:
    if energy is None:
        raise ParameterError(f"scalarizer {spec!r} works on spectra and needs their energy axis (energy=..., units=...)")
    band_units = options.get("units", units)
    if band_units not in _TO_EV:  # the spec's spelling, case-insensitive
        match = {u.lower(): u for u in _TO_EV}.get(band_units.lower())
        if match is None:
            raise ParameterError(f"scalarizer {spec!r}: units={band_units!r} is not 'eV' or 'keV'")
        band_units = match
    energy = _check_energy(energy, units)
    common = {"energy": energy, "units": units, "band_units": band_units}

    if name == "ratio":
        if arg.count("/") != 1:
            raise ParameterError(f"scalarizer {spec!r}: a ratio is NUM_LO-NUM_HI/DEN_LO-DEN_HI")
        bands = [_parse_range(b, spec) for b in arg.split("/")]
    else:
        bands = [_parse_range(arg, spec)]
    for b in bands:  # checked now, before any measurement
        _band_mask(energy, b, units, band_units)
    background = None
    if "bg" in options:
        background = _parse_range(options["bg"], spec)
        _band_mask(energy, background, units, band_units, what="background window")
        _check_background_before(background, bands, band_units)
    elif name in ("bgband", "bgintegral"):
        raise ParameterError(f"scalarizer {spec!r}: {name!r} needs its background window, e.g. ':bg=880-925'")

    if name in ("band", "bgband"):
        func = functools.partial(band_mean, band=bands[0], background=background, **common)
    elif name in ("integral", "bgintegral"):
        func = functools.partial(band_integral, band=bands[0], background=background, **common)
    elif name == "ratio":
        func = functools.partial(band_ratio, numerator=bands[0], denominator=bands[1], background=background, **common)
    elif name == "max":
        func = functools.partial(band_max, band=bands[0], **common)
    else:  # maxpos
        func = functools.partial(band_max_position, band=bands[0], **common)
    return Scalarizer(spec, "spectrum", func)
