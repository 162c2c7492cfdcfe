"""X-ray line labels for spectrum peaks, from xraydb's line database."""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["line_table", "label_peaks"]

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


def label_peaks(energy: np.ndarray, spectrum: np.ndarray, *, n_peaks: int = 6, tolerance: float = 0.06):
    """(energy, height, label) of the most prominent peaks of a spectrum, named by the nearest line.

    Peaks are found on |spectrum| (loadings can be negative); a peak gets the
    strongest line within ``tolerance`` keV, or no label.
    """
    from scipy.signal import find_peaks

    y = np.abs(np.asarray(spectrum, dtype=float))
    if not np.any(y > 0):
        return []
    peaks, props = find_peaks(y, prominence=0.05 * y.max())
    if peaks.size == 0:
        return []
    best = peaks[np.argsort(props["prominences"])[::-1][:n_peaks]]
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
