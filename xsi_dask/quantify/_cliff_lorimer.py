"""Cliff-Lorimer quantification of net line intensities with exspy's own routine, lazily per tile for maps."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..errors import KFactorError, ParameterError
from ._kfactors import _value
from ._lines import import_exspy

__all__ = ["Absorption", "kfactor_array", "quantify"]

# exspy EDSTEMSpectrum.quantification's defaults for the absorption iteration
CONVERGENCE_WT_PERCENT = 0.5
MAX_ITERATIONS = 30
EXSPY_MIN_INTENSITY = 0.1  # quantification_cliff_lorimer's threshold for a reference line (counts)
RELATIVE_MIN_INTENSITY = 1e-9  # the threshold for intensities not in counts, relative to the point's largest


@dataclass(frozen=True)
class Absorption:
    """A thin-film absorption correction: the specimen's thickness and density, and the detector's take-off angle.

    Attributes
    ----------
    thickness_nm : float
        Specimen thickness, nm.
    density_g_cm3 : float
        Specimen density, g/cm^3 (mass thickness = density x thickness).
    take_off_angle_deg : float
        X-ray take-off angle, degrees (exspy ``take_off_angle``).
    """

    thickness_nm: float
    density_g_cm3: float
    take_off_angle_deg: float

    def __post_init__(self):
        for name in ("thickness_nm", "density_g_cm3", "take_off_angle_deg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not (math.isfinite(v) and v > 0):
                raise ParameterError(f"absorption {name} must be a positive finite number; got {v!r}")
        if self.take_off_angle_deg >= 90:
            raise ParameterError(f"absorption take_off_angle_deg must be below 90 degrees; got {self.take_off_angle_deg!r}")

    @property
    def mass_thickness(self) -> float:
        """kg/m^2: g/cm^3 -> kg/m^3 (1e3) times nm -> m (1e-9)."""
        return self.density_g_cm3 * 1e3 * self.thickness_nm * 1e-9


def _absorption(value) -> Absorption | None:
    if value is None or isinstance(value, Absorption):
        return value
    if isinstance(value, Mapping):
        need = {"thickness_nm", "density_g_cm3", "take_off_angle_deg"}
        if set(value) != need:
            raise ParameterError(f"absorption needs exactly the keys {sorted(need)} (nm, g/cm^3, degrees); got {sorted(value)}")
        return Absorption(**value)
    raise ParameterError(f"absorption must be None, an Absorption or a mapping with thickness_nm, density_g_cm3 and "
                         f"take_off_angle_deg; got {type(value).__name__}")


def kfactor_array(kfactors, lines: Sequence[str], elements: Sequence[str]) -> np.ndarray:
    """The k-factor of each line, from a mapping keyed by line ("Fe_Ka") or element ("Fe"), or a sequence in line order.

    Raises
    ------
    KFactorError
        A line with no k-factor (by line nor element), a sequence of the wrong
        length, a value that is not a positive finite number.
    """
    lines, elements = list(lines), list(elements)
    if isinstance(kfactors, Mapping):
        missing = [ln for ln, el in zip(lines, elements) if ln not in kfactors and el not in kfactors]
        if missing:
            raise KFactorError(f"no k-factor for {', '.join(missing)} (keys given: {sorted(map(str, kfactors))}); "
                               "key the k-factors by line ('Fe_Ka') or element ('Fe')")
        values = [kfactors[ln] if ln in kfactors else kfactors[el] for ln, el in zip(lines, elements)]
    else:
        values = list(np.ravel(np.asarray(kfactors, dtype=object)))
        if len(values) != len(lines):
            raise KFactorError(f"{len(values)} k-factors for {len(lines)} lines {lines}: give one per line, or a mapping")
    return np.asarray([_value(v, "k-factors", ln) for ln, v in zip(lines, values)])


def _cl_block(intensities: np.ndarray, kfactors: np.ndarray, elements: tuple[str, ...], lines: tuple[str, ...],
              absorption: Absorption | None, min_intensity: float | None) -> np.ndarray:
    """(..., line) net intensities -> (..., 2, line): weight and atomic percent, exspy's routines.

    exspy uses a line as the reference of a point only above 0.1 (counts); the
    intensities are scaled so that this is ``min_intensity`` in their units
    (None: 1e-9 of each point's largest |intensity|). Cliff-Lorimer depends on
    intensity ratios only, so the scaling changes nothing else.
    """
    utils = import_exspy("exspy._misc.eds.utils")
    material = import_exspy("exspy.material")
    intens = np.moveaxis(np.asarray(intensities, dtype=np.float64), -1, 0)
    shape = intens.shape
    if intens.ndim == 1:
        intens = intens[:, None]
    if intens.shape[1] == 0 or intens.size == 0:
        return np.zeros((*shape[1:], 2, shape[0]))
    if min_intensity is None:
        top = np.max(np.abs(intens), axis=0)
        intens = intens * np.divide(EXSPY_MIN_INTENSITY / RELATIVE_MIN_INTENSITY, top, out=np.zeros_like(top), where=top > 0)
    elif min_intensity != EXSPY_MIN_INTENSITY:
        intens = intens * (EXSPY_MIN_INTENSITY / min_intensity)
    k = list(kfactors)
    with np.errstate(divide="ignore", invalid="ignore"):  # exspy divides by lines with 0 counts (their share is 0)
        wt = utils.quantification_cliff_lorimer(intens, k)  # fractions
    if absorption is not None:
        csc = 1.0 / np.sin(np.radians(absorption.take_off_angle_deg))
        old = wt * 100.0
        for _ in range(MAX_ITERATIONS):
            # exspy get_abs_corr_zeta: mu/rho of the mixture (cm^2/g -> m^2/kg: 0.1) x mass thickness x csc(TOA)
            with np.errstate(invalid="ignore", divide="ignore"):  # a point with no counts: no correction (factor 1)
                mac = material.mass_absorption_mixture(weight_percent=np.clip(wt, 0.0, None) * 100.0,
                                                       elements=list(elements), energies=list(lines)) * 0.1
                expo = mac * absorption.mass_thickness * csc
                acf = np.where(expo > 0, expo / -np.expm1(-expo), 1.0)
                wt = utils.quantification_cliff_lorimer(intens, k, absorption_correction=acf)
            new = wt * 100.0
            done = not np.any(np.abs(new - old) >= CONVERGENCE_WT_PERCENT)
            old = new
            if done:
                break
        else:
            raise ParameterError(f"the absorption correction did not converge in {MAX_ITERATIONS} iterations "
                                 f"(thickness {absorption.thickness_nm} nm, density {absorption.density_g_cm3} g/cm^3)")
    wt_pct = wt * 100.0
    with np.errstate(invalid="ignore", divide="ignore"):
        at_pct = np.nan_to_num(material.weight_to_atomic(wt_pct, list(elements)))  # exspy's signal path: 0 where all 0
    # exspy gives every element 0 % at a point with no line above its reference threshold: no composition at
    # all, which a map must not show as one (a pixel of a low-count tile); NaN there
    empty = ~np.any(wt_pct != 0, axis=0)
    wt_pct[:, empty] = np.nan
    at_pct[:, empty] = np.nan
    out = np.stack([wt_pct.reshape(shape), at_pct.reshape(shape)], axis=0)  # (2, line, ...)
    return np.moveaxis(np.moveaxis(out, 1, -1), 0, -2)


def quantify(intensities, kfactors, *, absorption=None, lines=None, min_intensity: float | None = None) -> xr.Dataset:
    """Weight and atomic percent from net X-ray line intensities: Cliff-Lorimer with exspy's routine.

    C_A = k_A I_A / sum_B k_B I_B (weight fractions; the k-factor ratio form
    C_A / C_B = k_AB I_A / I_B with k_AB = k_A / k_B), computed by exspy's
    ``quantification_cliff_lorimer`` (its conventions kept: a point with fewer
    than two lines above 0.1 counts gets 100 % of its one line; a point with
    none, which exspy gives 0 % of everything, is NaN here; a negative net
    intensity gives a negative share), then
    ``exspy.material.weight_to_atomic``. Element maps are quantified lazily,
    one dask chunk per tile (``xarray.apply_ufunc``, ``dask="parallelized"``).

    Parameters
    ----------
    intensities : xarray.DataArray or xarray.Dataset
        Net intensities with a dim ``line`` and coord ``element`` on it: from
        :func:`net_intensities` on a DataArray (e.g. NMF ``spectra
        (component, energy)`` -> ``(component, line)``) or
        :func:`element_maps` (its ``intensity (tile, y, x, line)`` is used
        when a Dataset is given). One line per element.
    kfactors : mapping or sequence of float
        k-factors keyed by line ("Fe_Ka") or element ("Fe") (see
        :func:`read_kfactors`), or one per line in the ``line`` order. Only
        ratios matter.
    absorption : Absorption or mapping, optional
        ``thickness_nm``, ``density_g_cm3``, ``take_off_angle_deg``: a
        thin-film absorption correction as exspy's
        ``EDSTEMSpectrum.quantification(absorption_correction=True)`` applies
        it (factor x / (1 - exp(-x)), x = (mu/rho)_mixture rho t csc(TOA),
        iterated to 0.5 wt.%), with the mass thickness from the density
        given. Default None: no absorption correction.
    lines : sequence of str, optional
        The line names of a plain ndarray ``intensities`` (..., line) (e.g.
        ``LineTable.lines``); not used with a DataArray.
    min_intensity : float, optional
        exspy's threshold: a line is a point's reference only above it, and a
        point with fewer than two lines above it gets 100 % of its one line or
        0 %. Default: exspy's 0.1 for counts (intensities whose ``units``
        attribute is "counts": :func:`element_maps`, :func:`net_intensities`
        of a montage), else (normalised endmember spectra, which sum to 1 and
        would all fall below 0.1) 1e-9 of each point's largest |intensity|.

    Returns
    -------
    xarray.Dataset
        ``weight_percent`` and ``atomic_percent`` with dims (..., element),
        coords ``element`` and ``line``; lazy when the intensities are.

    Raises
    ------
    KFactorError
        A line without k-factor, a non-positive or non-finite k-factor.
    ParameterError
        Intensities without a ``line`` dim or ``element`` coord, two lines of
        one element, a malformed absorption, an absorption iteration that
        does not converge.
    MissingDependencyError
        exspy is not installed.

    References
    ----------
    Cliff, G. & Lorimer, G. W. (1975). The quantitative analysis of thin
    specimens. J. Microsc. 103, 203-207, doi:10.1111/j.1365-2818.1975.tb03895.x.
    exspy ``quantification_cliff_lorimer``, https://hyperspy.org/exspy.
    """
    if isinstance(intensities, xr.Dataset):
        if "intensity" not in intensities:
            raise ParameterError(f"the Dataset has no 'intensity' variable (it has {list(intensities.data_vars)}): "
                                 "pass element_maps(...) or its intensity")
        intensities = intensities["intensity"]
    if isinstance(intensities, np.ndarray) and lines is not None:
        names = [str(v) for v in lines]
        if intensities.ndim < 1 or intensities.shape[-1] != len(names):
            raise ParameterError(f"intensities of shape {intensities.shape} for {len(names)} lines {names}: the last axis "
                                 "must be the lines")
        dims = tuple(f"dim_{i}" for i in range(intensities.ndim - 1)) + ("line",)
        intensities = xr.DataArray(intensities, dims=dims, coords={"line": names})
    if not isinstance(intensities, xr.DataArray) or "line" not in intensities.dims:
        raise ParameterError("intensities must be an xarray.DataArray with a 'line' dim (from net_intensities on a "
                             "DataArray, or element_maps), or an ndarray (..., line) with lines=")
    if min_intensity is None and intensities.attrs.get("units") == "counts":
        min_intensity = EXSPY_MIN_INTENSITY
    if min_intensity is not None and (isinstance(min_intensity, bool) or not isinstance(min_intensity, (int, float))
                                      or not (math.isfinite(min_intensity) and min_intensity > 0)):
        raise ParameterError(f"min_intensity must be a positive number (in the intensities' units) or None; got {min_intensity!r}")
    lines = [str(v) for v in intensities["line"].values]
    if "element" in intensities.coords:
        elements = [str(v) for v in intensities["element"].values]
    else:
        elements = [ln.split("_")[0] for ln in lines]
    if len(set(elements)) != len(elements):
        raise ParameterError(f"Cliff-Lorimer takes one line per element; the lines are {lines}")
    k = kfactor_array(kfactors, lines, elements)
    absorption = _absorption(absorption)
    x = intensities.transpose(..., "line").drop_vars([c for c in ("element", "line_energy") if c in intensities.coords])
    x = x.rename(line="element").assign_coords(element=elements)
    if x.chunks is not None:
        x = x.chunk({"element": -1})  # every line of a point in one block
    out = xr.apply_ufunc(
        functools.partial(_cl_block, kfactors=k, elements=tuple(elements), lines=tuple(lines), absorption=absorption,
                          min_intensity=None if min_intensity is None else float(min_intensity)), x,
        input_core_dims=[["element"]],
        output_core_dims=[["kind", "element"]],
        dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"kind": 2}},
    )
    ds = xr.Dataset({"weight_percent": out.isel(kind=0, drop=True), "atomic_percent": out.isel(kind=1, drop=True)})
    ds = ds.assign_coords(element=elements, line=("element", lines))
    ds["weight_percent"].attrs.update(units="wt.%")
    ds["atomic_percent"].attrs.update(units="at.%")
    ds.attrs.update(method="Cliff-Lorimer (exspy quantification_cliff_lorimer)", kfactors=[float(v) for v in k],
                    lines=lines, absorption_correction=int(absorption is not None),
                    absorption="off" if absorption is None else (
                        f"thin film: {absorption.thickness_nm:g} nm, {absorption.density_g_cm3:g} g/cm^3, "
                        f"take-off {absorption.take_off_angle_deg:g} deg"),
                    min_intensity="relative 1e-9" if min_intensity is None else float(min_intensity),
                    **({} if absorption is None else {"thickness_nm": absorption.thickness_nm,
                                                       "density_g_cm3": absorption.density_g_cm3,
                                                       "take_off_angle_deg": absorption.take_off_angle_deg}))
    return ds
