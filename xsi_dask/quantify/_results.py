"""Cliff-Lorimer quantification of the endmember spectra of a results store (NMF or MCR)."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from ..errors import ParameterError
from ._cliff_lorimer import quantify
from ._lines import LineTable
from ._maps import net_intensities

__all__ = ["quantify_results"]

ENDMEMBER_GROUPS = ("mcr", "nmf")  # the first one the results hold is quantified by default


def _endmembers(results, group: str | None) -> tuple[xr.DataArray, str, dict]:
    if isinstance(results, xr.Dataset):
        ds, name = results, group or str(results.attrs.get("method", "endmembers"))
    else:
        from ..io.results import has_group, open_results

        path = Path(results)
        names = [group] if group is not None else [g for g in ENDMEMBER_GROUPS if has_group(path, g)]
        if not names or not has_group(path, names[0]):
            raise ParameterError(f"{path}: no {group or ' or '.join(ENDMEMBER_GROUPS)} group to quantify "
                                 "(the quantification is of endmember spectra: run the NMF first)")
        name = names[0]
        ds = open_results(path, name)
    if "spectra" not in ds or "component" not in ds["spectra"].dims:
        raise ParameterError(f"the {name} results hold no 'spectra (component, energy)' to quantify "
                             f"(variables: {list(ds.data_vars)})")
    keep = {k: ds.attrs[k] for k in ("store", "store_uuid", "zero_peak_cutoff", "energy_range") if k in ds.attrs}
    return ds["spectra"], name, keep


def quantify_results(results, kfactors, *, table: LineTable, group: str | None = None, absorption=None,
                     k_factor_source: str | None = None) -> xr.Dataset:
    """Weight and atomic percent of each endmember of a results store: net intensities, then Cliff-Lorimer.

    Parameters
    ----------
    results : path or xarray.Dataset
        A results store (its ``mcr`` group if it has one, else ``nmf``), or
        one such group with ``spectra (component, energy)``.
    kfactors : mapping or sequence of float
        See :func:`quantify`.
    table : LineTable
        Lines and windows on the spectra's energy axis (``element_lines(elements,
        montage)`` on the analysis view the results were computed on).
    group : {"mcr", "nmf"}, optional
        The group to quantify (default: the first of those the store holds).
    absorption : Absorption or mapping, optional
        See :func:`quantify`.
    k_factor_source : str, optional
        Where the k-factors came from (recorded in ``attrs``).

    Returns
    -------
    xarray.Dataset
        ``weight_percent``, ``atomic_percent`` (component, element) and
        ``intensity`` (component, line), the endmembers' net line intensities
        in the spectra's units; attrs: lines, windows, k-factors and their
        source, the group and the results' store.

    Raises
    ------
    ParameterError
        No endmember group, no spectra; as :func:`quantify` and :func:`net_intensities`.

    References
    ----------
    Cliff, G. & Lorimer, G. W. (1975). J. Microsc. 103, 203-207,
    doi:10.1111/j.1365-2818.1975.tb03895.x.
    """
    spectra, name, keep = _endmembers(results, group)
    intensity = net_intensities(spectra.load(), table)
    q = quantify(intensity, kfactors, absorption=absorption)
    q["intensity"] = intensity.drop_vars([c for c in intensity.coords if c not in ("component", "line")])
    q.attrs.update({**keep, **table.attrs(), **q.attrs, "group": name, "k_factor_source": k_factor_source or "given",
                    "passes": 0})
    return q
