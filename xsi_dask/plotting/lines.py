"""X-ray line labels for spectrum peaks, from xraydb's line database.

With the sample's element list (the file's ``Sample.elements``, or the
analyst's ``--elements``), a peak is named only by a line of a listed element
that lies within the detector's resolution at that energy
(:func:`xsi_dask.io.metadata.detector_fwhm`); a peak no listed element
explains stays unlabelled. Without a list, every element's main lines are
candidates. :func:`component_labels` gives the one short name per component
that every figure and map title uses.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import ParameterError
from ..io.metadata import DEFAULT_RESOLUTION_MNKA_EV, detector_fwhm

__all__ = ["component_labels", "component_name", "element_lines", "label_options", "label_peaks", "line_table", "parse_elements"]

# the lines worth naming in an EDS spectrum, by family
_MAIN = {"Ka1": "Ka", "Kb1": "Kb", "La1": "La", "Lb1": "Lb", "Ma": "Ma", "Mb": "Mb"}


@functools.lru_cache(maxsize=4)
def line_table(e_min: float = 0.1, e_max: float = 40.0, z_min: int = 4, z_max: int = 92):
    """Energies (keV), names ("Fe Ka") and weights of the main X-ray lines (xraydb).

    Weights are xraydb's relative line intensities times a K > L > M family
    preference, so that an ambiguous peak gets the stronger family's name.
    """
    import xraydb

    energies, names, weights = [], [], []
    family_weight = {"K": 1.0, "L": 0.6, "M": 0.3}
    for z in range(z_min, z_max + 1):
        sym = xraydb.atomic_symbol(z)
        try:
            lines = xraydb.xray_lines(sym)
        except Exception:  # noqa: BLE001 - elements without tabulated lines
            continue
        for key, short in _MAIN.items():
            if key in lines:
                ln = lines[key]
                e = ln.energy / 1000.0
                if e_min <= e <= e_max:
                    energies.append(e)
                    names.append(f"{sym} {short}")
                    weights.append(float(ln.intensity) * family_weight[short[0]])
    order = np.argsort(energies)
    return np.asarray(energies)[order], [names[i] for i in order], np.asarray(weights)[order]


def _find_peaks(spectrum: np.ndarray, n_peaks: int, prominence: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """|spectrum| and the indices of its ``n_peaks`` most prominent peaks (prominence >= that fraction of the maximum)."""
    from scipy.signal import find_peaks

    y = np.abs(np.asarray(spectrum, dtype=float))
    if not np.any(y > 0):
        return y, np.zeros(0, dtype=int)
    peaks, props = find_peaks(y, prominence=prominence * y.max())
    return y, peaks[np.argsort(props["prominences"])[::-1][:n_peaks]]


def _label_all(energy: np.ndarray, spectrum: np.ndarray, n_peaks: int, tolerance: float, prominence: float):
    """Labels from every element's main lines within ``tolerance`` keV (no element list)."""
    y, best = _find_peaks(spectrum, n_peaks, prominence)
    if best.size == 0:
        return []
    e_lines, names, weights = line_table()

    def candidates(p):
        e = float(energy[p])
        near = np.nonzero(np.abs(e_lines - e) <= tolerance)[0]
        return e, near[np.argsort(-(weights[near] - 0.1 * np.abs(e_lines[near] - e)))]

    # first pass: the strongest line near each peak; second pass: an ambiguous
    # peak takes an element already seen at another peak (Fe La next to Fe Ka,
    # not F Ka)
    first = {p: candidates(p) for p in best}
    elements = {}
    for p, (_, near) in first.items():
        if near.size:
            elements.setdefault(names[near[0]].split()[0], set()).add(p)
    out = []
    used: set[str] = set()
    for p in sorted(best, key=lambda i: -y[i]):  # the higher peak keeps a repeated name
        e, near = first[p]
        label = ""
        if near.size:
            seen = [i for i in near if elements.get(names[i].split()[0], set()) - {p}]
            if seen:  # of that element's lines, the closest in energy
                label = names[min(seen, key=lambda i: abs(e_lines[i] - e))]
            else:
                label = names[near[0]]
        if label in used:
            label = ""
        used.add(label)
        out.append((e, float(spectrum[p]), label))
    return sorted(out)


# ---- element-aware labels -------------------------------------------------------------------------

# electrons in each subshell: the share of the ionisations it takes, to first order (statistical weight 2j + 1)
_ELECTRONS = {"K": 2, "L1": 2, "L2": 2, "L3": 4, "M1": 2, "M2": 2, "M3": 4, "M4": 4, "M5": 6}
# the families an EDS analyst names: L lines from Ca (Z 20), M lines from La (Z 57), as in exspy's
# line table (after NIST's EPQ library); lighter elements' L and M lines lie below the detector's range
_FAMILY_MIN_Z = {"K": 1, "L": 20, "M": 57}
# lines of one name closer than max(15 eV, 1 % of their energy) are one peak to an EDS detector (FWHM >= 2 %
# there): Ka1 + Ka2, La1 + La2 (one line each in exspy's table too)
_MERGE_KEV = 0.015
_MERGE_FRACTION = 0.01


def _symbol(name: str) -> str:
    import xraydb

    text = str(name).strip()
    try:
        z = xraydb.atomic_number(text[:1].upper() + text[1:].lower())
    except Exception:  # noqa: BLE001 - xraydb raises various errors for unknown symbols
        z = 0
    symbol = xraydb.atomic_symbol(z) if z else ""
    if not z or symbol.lower() != text.lower():  # xraydb also takes names ("iron"): symbols only
        raise ParameterError(f"{name!r} is not a chemical element symbol (expected e.g. 'Fe', 'Cr', 'Al')")
    return symbol


def parse_elements(elements: str | Iterable[str] | None) -> list[str] | None:
    """Canonical, sorted, unique element symbols from ``"Fe,Cr, ni"`` or ``["Fe", "Cr"]``; None stays None.

    Raises
    ------
    ParameterError
        A name is not a chemical element symbol, or the list is empty.
    """
    if elements is None:
        return None
    items = re.split(r"[,\s]+", elements) if isinstance(elements, str) else list(elements)
    items = [str(i) for i in items if str(i).strip()]
    if not items:
        raise ParameterError(f"the element list is empty ({elements!r}); give symbols like 'Fe,Cr,Ni', or none at all")
    return sorted({_symbol(i) for i in items})


@functools.lru_cache(maxsize=256)
def element_lines(symbol: str) -> tuple[tuple[float, str, float], ...]:
    """The X-ray lines of one element an EDS spectrum shows: (energy keV, name "Ag La", weight), by energy.

    Energies and within-subshell intensities come from xraydb (Elam et al.,
    Radiat. Phys. Chem. 63, 121 (2002), doi:10.1016/S0969-806X(01)00227-4).
    Lines are named by family and group as HyperSpy/exspy name them without
    the index (``Ka``, ``Kb``, ``La``, ``Lb``, ``Lg``, ``Ll``, ``Ln``,
    ``Ma``, ``Mb``, ``Mg``, ``Mz``); lines of one name closer than
    max(15 eV, 1 % of their energy), which no EDS detector resolves (Ka1 +
    Ka2, La1 + La2), are merged (intensity-weighted energy). The weight of a line is its
    intensity x the fluorescence yield of its initial subshell x the
    subshell's electron count (its approximate share of the ionisations),
    normalised to 1 for the strongest line of each family: the same
    convention as exspy's line weights (NIST EPQ), which it follows in rank.
    """
    import xraydb

    sym = _symbol(symbol)
    z = xraydb.atomic_number(sym)
    raw: dict[str, list[tuple[float, float]]] = {}
    for key, ln in xraydb.xray_lines(sym).items():
        family = key[0]
        if z < _FAMILY_MIN_Z.get(family, 999):
            continue
        shells = [family + part for part in re.findall(r"\d", ln.initial_level)] or [ln.initial_level]
        shells = [sh for sh in shells if sh in _ELECTRONS] or ([family] if family == "K" else [])
        if not shells:
            continue
        yields = []
        for sh in shells:
            try:
                yields.append(float(xraydb.xray_edge(sym, sh).fyield))
            except Exception:  # noqa: BLE001 - an edge xraydb does not tabulate
                continue
        w = float(ln.intensity) * (np.mean(yields) if yields else 0.0) * sum(_ELECTRONS[sh] for sh in shells)
        if w > 0 and ln.energy > 0:
            raw.setdefault(key[:2], []).append((ln.energy / 1000.0, w))
    merged: list[tuple[float, str, float, str]] = []
    for name, items in raw.items():
        items.sort()
        group = [items[0]]
        for e, w in items[1:] + [(math.inf, 0.0)]:
            if e < math.inf and e - group[-1][0] <= max(_MERGE_KEV, _MERGE_FRACTION * e):
                group.append((e, w))
                continue
            wsum = sum(g[1] for g in group)
            merged.append((sum(g[0] * g[1] for g in group) / wsum, f"{sym} {name}", wsum, name[0]))
            group = [(e, w)]
    top = {}
    for _, _, w, fam in merged:
        top[fam] = max(top.get(fam, 0.0), w)
    return tuple(sorted((float(e), n, float(w / top[fam])) for e, n, w, fam in merged))


def _lines_of(elements: tuple[str, ...]):
    rows = [row for el in elements for row in element_lines(el)]
    if not rows:
        return np.zeros(0), [], np.zeros(0)
    e, n, w = zip(*rows)
    return np.asarray(e), list(n), np.asarray(w)


def label_options(attrs: Mapping, elements: str | Iterable[str] | None = None) -> dict:
    """``elements`` and ``resolution_mnka_ev`` for :func:`label_peaks` from a montage's or a result's attributes.

    Parameters
    ----------
    attrs : mapping
        Holds the keys of :func:`xsi_dask.io.metadata.acquisition`
        (``open_montage(...).attrs``): ``elements`` (None or absent: all
        elements) and ``energy_resolution_MnKa`` (eV; where it differs between
        source files, the widest, so that no line is missed; absent: exspy's
        130 eV default).
    elements : str or list of str, optional
        The analyst's list (``--elements Fe,Cr``), replacing the file's.

    Returns
    -------
    dict
        ``{"elements": list or None, "resolution_mnka_ev": float or None}``, keyword arguments of
        :func:`label_peaks` and :func:`component_labels`.

    Raises
    ------
    ParameterError
        ``elements`` holds a name that is no element symbol, or is empty.
    """
    res = attrs.get("energy_resolution_MnKa")
    if isinstance(res, (list, tuple)):
        res = max((float(r) for r in res if r is not None), default=None)
    chosen = parse_elements(elements) if elements is not None else attrs.get("elements")
    return {"elements": None if chosen is None else list(chosen), "resolution_mnka_ev": res}


def _label_listed(energy, spectrum, elements: list[str], resolution_mnka_ev: float, n_peaks: int, prominence: float):
    y, best = _find_peaks(spectrum, n_peaks, prominence)
    e_lines, names, weights = _lines_of(tuple(elements))
    if best.size == 0:
        return []
    energy = np.asarray(energy, dtype=float)
    half_channel = 0.5 * abs(float(energy[1] - energy[0])) if energy.size > 1 else 0.0

    def scores(p):
        """Each listed line's expected share at the peak: its weight x a Gaussian of the detector's width there."""
        e = float(energy[p])
        fwhm = detector_fwhm(max(e, 0.0), resolution_mnka_ev)
        near = np.nonzero(np.abs(e_lines - e) <= fwhm + half_channel)[0]
        sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        return e, near, weights[near] * np.exp(-0.5 * ((e_lines[near] - e) / sigma) ** 2)

    first = {p: scores(p) for p in best}
    explained: dict[str, set] = {}
    for p, (_, near, sc) in first.items():
        if near.size:
            explained.setdefault(names[near[np.argmax(sc)]].split()[0], set()).add(p)
    out, used = [], set()
    for p in sorted(best, key=lambda i: -y[i]):  # the higher peak keeps a repeated name
        e, near, sc = first[p]
        label = ""
        if near.size:
            # an element that explains another peak too is the likelier (W Ma next to W La, not Si Ka)
            bonus = np.array([2.0 if explained.get(names[i].split()[0], set()) - {p} else 1.0 for i in near])
            label = names[near[np.argmax(sc * bonus)]]
        if label in used:
            label = ""
        used.add(label)
        out.append((e, float(spectrum[p]), label))
    return sorted(out)


def label_peaks(energy: np.ndarray, spectrum: np.ndarray, *, elements: Iterable[str] | str | None = None,
                resolution_mnka_ev: float | None = None, n_peaks: int = 6, tolerance: float = 0.06,
                prominence: float = 0.05):
    """(energy, height, label) of the most prominent peaks of a spectrum, each named by an X-ray line or "".

    Parameters
    ----------
    energy : ndarray, shape (channels,)
        Channel energies, keV.
    spectrum : ndarray, shape (channels,)
        A spectrum, loading or endmember; peaks are found on ``|spectrum|``
        (loadings can be negative), the ``n_peaks`` most prominent with a
        prominence of at least ``prominence`` x the maximum.
    elements : list of str, str or None
        The sample's elements (``open_montage(...).attrs["elements"]`` or the
        analyst's list, e.g. ``["Fe", "Cr"]`` or ``"Fe,Cr"``). A peak is
        named by the line of a listed element (K, L and M families:
        :func:`element_lines`) that contributes most at the peak, among those
        within the detector's FWHM at that energy; a peak no listed line
        explains keeps "" (never a name from outside the list). None: every
        element's main lines within ``tolerance`` (the behaviour without a list).
    resolution_mnka_ev : float, optional
        Detector FWHM at Mn Ka, eV (``attrs["energy_resolution_MnKa"]``);
        default exspy's 130 eV. Only used with ``elements``.
    n_peaks : int
        At most this many peaks.
    tolerance : float
        keV, the matching window without ``elements``.
    prominence : float
        The smallest peak prominence, as a fraction of ``max |spectrum|``.

    Returns
    -------
    list of (float, float, str)
        (energy keV, signed height, label) by energy; a name appears once (the higher peak keeps it).

    Raises
    ------
    ParameterError
        An entry of ``elements`` is not an element symbol, or the list is empty.
    ValueError
        ``resolution_mnka_ev`` is not a plausible resolution (:func:`detector_fwhm`).
    """
    if elements is None:
        return _label_all(np.asarray(energy, dtype=float), spectrum, n_peaks, tolerance, prominence)
    els = parse_elements(elements)
    r = DEFAULT_RESOLUTION_MNKA_EV if resolution_mnka_ev is None else float(resolution_mnka_ev)
    detector_fwhm(0.0, r)  # validates r before any work
    return _label_listed(energy, spectrum, els, r, n_peaks, prominence)


def component_labels(energy: np.ndarray, curves: np.ndarray, *, elements: Iterable[str] | str | None = None,
                     resolution_mnka_ev: float | None = None, n_lines: int = 2, n_peaks: int = 6) -> list[str]:
    """One short name per component: its ``n_lines`` highest labelled peaks, e.g. "Al Ka", "Ag La + Ag Lb".

    The name every figure, legend and map title gives a component (SVD
    loadings or NMF endmember spectra), from :func:`label_peaks` with the same
    ``elements`` and ``resolution_mnka_ev``; "" for a component with no
    labelled peak.

    Parameters
    ----------
    energy : ndarray, shape (channels,)
        keV.
    curves : ndarray, shape (component, channels)
        One spectrum per component.

    Returns
    -------
    list of str
        ``len(curves)`` names, peaks joined by " + " from the highest down.
    """
    return [component_name(label_peaks(energy, y, elements=elements, resolution_mnka_ev=resolution_mnka_ev,
                                       n_peaks=n_peaks), n_lines=n_lines)
            for y in np.atleast_2d(np.asarray(curves))]


def component_name(peaks: Iterable[tuple[float, float, str]], *, n_lines: int = 2) -> str:
    """The name of one component from its :func:`label_peaks`: the ``n_lines`` highest labelled peaks joined by " + "."""
    ranked = sorted(((abs(h), lab) for _, h, lab in peaks if lab), reverse=True)
    return " + ".join(lab for _, lab in ranked[:n_lines])
