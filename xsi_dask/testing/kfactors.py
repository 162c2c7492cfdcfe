"""Cliff-Lorimer k-factors that agree with the simulator's physics (:mod:`xsi_dask.testing.physics`)."""

from __future__ import annotations

import numpy as np

from ..errors import XrayLineError, XSIError
from ..io.metadata import acquisition
from ..io.store import MontageStore
from ..quantify import LineTable
from ..quantify._maps import _check_axis
from .physics import Detector, phase_spectrum

__all__ = ["simulator_kfactors"]


def simulator_kfactors(lines_table: LineTable, *, beam_kev: float | None = None, detector: Detector | None = None,
                       energy_axis=None, store=None) -> dict[str, float]:
    """k-factors of the table's lines for spectra simulated by :func:`~xsi_dask.testing.physics.phase_spectrum`.

    The simulator's line intensities are linear in the weight fractions
    (ionisation cross-section x fluorescence yield x line fraction per atom,
    times the detector efficiency; no matrix absorption), so the net intensity
    of element A's line in a phase is w_A x P_A, P_A the net intensity (same
    windows, :func:`~xsi_dask.quantify.net_intensities`) of the pure element's
    spectrum without continuum (``continuum=0``) per unit weight fraction.
    Hence k_A = 1 / P_A in exspy's convention C_A = k_A I_A / sum_B k_B I_B
    (``quantification_cliff_lorimer``), normalised so that the first line's
    k-factor is 1 (only ratios matter).

    Parameters
    ----------
    lines_table : LineTable
        From :func:`xsi_dask.quantify.element_lines` on ``energy_axis``.
    beam_kev : float, optional
        Beam energy, keV (the preset's ``beam_kev``); default the store's.
    detector : Detector, optional
        The simulated detector (resolution, efficiency, escape peaks); default
        the store's, else ``Detector()``.
    energy_axis : ndarray of shape (channels,), optional
        keV, the table's axis (default: the table's own).
    store : path or MontageStore, optional
        A store written by :func:`~xsi_dask.testing.simulate.simulate`: the
        beam energy and detector it was simulated with.

    Returns
    -------
    dict
        Line name -> k-factor.

    Raises
    ------
    XrayLineError
        The axis differs from the table's, or a pure element gives no positive
        net intensity in its window.
    XSIError
        No beam energy (neither given nor from a store), or ``store`` is not a
        simulated store.

    References
    ----------
    Cliff, G. & Lorimer, G. W. (1975). J. Microsc. 103, 203-207,
    doi:10.1111/j.1365-2818.1975.tb03895.x.
    exspy ``quantification_cliff_lorimer``, https://hyperspy.org/exspy.
    """
    if store is not None:
        st = store if isinstance(store, MontageStore) else MontageStore(store)
        sim = st.attrs.get("simulation")
        if not sim:
            raise XSIError(f"{st.path} is not a simulated store (no 'simulation' record): its k-factors are not the simulator's")
        if detector is None:
            detector = Detector(**sim["detector"])
        if beam_kev is None:
            beam_kev = acquisition(st).get("beam_energy")
    if beam_kev is None:
        raise XSIError("simulator_kfactors needs the beam energy: give beam_kev= or the simulated store=")
    detector = Detector() if detector is None else detector
    e = lines_table.axis if energy_axis is None else np.asarray(energy_axis, dtype=np.float64)
    _check_axis(lines_table, e.size, e)
    W = lines_table.weights()  # the net-intensity windows of every line, built once
    pure = []
    for j, (el, ln) in enumerate(zip(lines_table.elements, lines_table.lines)):
        spec, yield_ = phase_spectrum({el: 1.0}, e, beam_kev=float(beam_kev), detector=detector, continuum=0.0)
        p = float(((spec * yield_) @ W)[j])
        if not p > 0:
            raise XrayLineError(f"{ln}: the simulated pure-element spectrum has no positive net intensity ({p:g}) in its window")
        pure.append(p)
    k = 1.0 / np.asarray(pure)
    k /= k[0]
    return {ln: float(v) for ln, v in zip(lines_table.lines, k)}
