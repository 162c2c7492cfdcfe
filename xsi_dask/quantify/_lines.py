"""X-ray lines and their integration and background windows, chosen by exspy on a given energy axis.

Nothing here types a line energy or re-implements exspy's rules: a zero
spectrum with the axis, beam energy and detector resolution is handed to
exspy's ``EDSSpectrum.add_elements`` / ``add_lines`` (the line per element),
``estimate_integration_windows`` and ``estimate_background_windows`` (the
windows, overlapping background windows of neighbouring lines merged as exspy
merges them), and the window edges are mapped to channels with HyperSpy's own
``value2index``, exactly as ``EDSSpectrum.get_lines_intensity`` slices them.
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..errors import MissingDependencyError, XrayLineError
from ..io.metadata import DEFAULT_RESOLUTION_MNKA_EV

__all__ = ["LineTable", "element_lines", "import_exspy"]

QUANTIFY_EXTRA = "pip install xsi-dask[quantify]"
# exspy's defaults: integration window 2 FWHM wide, background windows 1 FWHM wide at 2 FWHM from the line
INTEGRATION_WIDTH = 2.0
BACKGROUND_OFFSET = (2.0, 2.0)
BACKGROUND_WIDTH = 1.0


def import_exspy(module: str = "exspy"):
    """Import exspy (or one of its modules), or a :class:`MissingDependencyError` naming the extra to install."""
    try:
        with warnings.catch_warnings():  # HyperSpy's import-time deprecation notices about its own modules
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"X-ray line selection and quantification use exspy's line database and Cliff-Lorimer routine; "
            f"exspy is not installed: {QUANTIFY_EXTRA}  ({exc})") from exc


@dataclass(frozen=True, eq=False)  # arrays inside: compare tables by their fields
class LineTable:
    """The X-ray lines of an analysis and their windows on one energy axis.

    Every energy is in keV; windows follow exspy's convention (see
    :func:`element_lines`). Channel ranges are half-open ``[start, stop)``
    indices into the axis given, as ``EDSSpectrum.isig[lo:hi]`` slices.

    Attributes
    ----------
    lines : tuple of str
        exspy line names ("Fe_Ka"), in exspy's (alphabetical) order.
    elements : tuple of str
        The element of each line.
    energy : ndarray, shape (n_lines,)
        Line energies, keV (exspy's database).
    fwhm : ndarray, shape (n_lines,)
        Detector FWHM at each line, keV (exspy's ``get_FWHM_at_Energy``).
    integration : ndarray, shape (n_lines, 2)
        Integration window (lo, hi), keV.
    background : ndarray, shape (n_lines, 4)
        Background windows (left lo, left hi, right lo, right hi), keV.
    integration_channels : ndarray of int, shape (n_lines, 2)
        ``[start, stop)`` of the integration window on the axis.
    background_channels : ndarray of int, shape (n_lines, 4)
        ``[start, stop)`` of the left and of the right background window.
    axis_offset, axis_scale : float
        The axis: channel ``i`` is at ``offset + i * scale`` keV.
    axis_size : int
        Channels of the axis.
    beam_energy : float
        keV, used to choose the line family (exspy: the first of Ka, La, Ma
        below half the beam energy).
    resolution_mnka : float
        Detector FWHM at Mn Ka, eV.
    zero_peak_cutoff : float or None
        keV; no window starts below it.
    """

    lines: tuple[str, ...]
    elements: tuple[str, ...]
    energy: np.ndarray
    fwhm: np.ndarray
    integration: np.ndarray
    background: np.ndarray
    integration_channels: np.ndarray
    background_channels: np.ndarray
    axis_offset: float
    axis_scale: float
    axis_size: int
    beam_energy: float
    resolution_mnka: float
    zero_peak_cutoff: float | None = None

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def axis(self) -> np.ndarray:
        """Channel energies of the axis the windows were mapped to, keV (axis_size,)."""
        return self.axis_offset + self.axis_scale * np.arange(self.axis_size)

    @property
    def background_factor(self) -> np.ndarray:
        """exspy's background scale per line: integration channels / background channels, (n_lines,)."""
        ic, bc = self.integration_channels, self.background_channels
        return (ic[:, 1] - ic[:, 0]) / ((bc[:, 1] - bc[:, 0]) + (bc[:, 3] - bc[:, 2]))

    def weights(self, *, net: bool = True) -> np.ndarray:
        """Window weights W, shape (axis_size, n_lines), float64: spectra @ W are the line intensities.

        W[c, l] is 1 on the integration window of line l and, with ``net``,
        minus :attr:`background_factor` on its two background windows (weights
        add where windows overlap), so ``spectra @ W`` equals exspy's
        ``get_lines_intensity(integration_windows=..., background_windows=...)``:
        the counts in the window minus the mean count per channel of the two
        background windows times the window's channels. ``net=False``: the
        gross counts in the integration window.
        """
        W = np.zeros((self.axis_size, len(self)))
        factor = self.background_factor
        for j in range(len(self)):
            a, b = self.integration_channels[j]
            W[a:b, j] += 1.0
            if net:
                l0, l1, r0, r1 = self.background_channels[j]
                W[l0:l1, j] -= factor[j]
                W[r0:r1, j] -= factor[j]
        return W

    def to_dataset(self) -> xr.Dataset:
        """The table as an ``xarray.Dataset`` on dim ``line`` (energies keV, channel ranges half-open)."""
        return xr.Dataset(
            {
                "line_energy": ("line", self.energy),
                "fwhm": ("line", self.fwhm),
                "integration_window": (("line", "edge"), self.integration),
                "background_windows": (("line", "bg_edge"), self.background),
                "integration_channels": (("line", "edge"), self.integration_channels),
                "background_channels": (("line", "bg_edge"), self.background_channels),
            },
            coords={"line": list(self.lines), "element": ("line", list(self.elements)), "edge": ["lo", "hi"],
                    "bg_edge": ["left_lo", "left_hi", "right_lo", "right_hi"]},
            attrs={"units": "keV", "beam_energy": self.beam_energy, "energy_resolution_MnKa": self.resolution_mnka,
                   "zero_peak_cutoff": self.zero_peak_cutoff, "convention": "exspy get_lines_intensity"},
        )

    def attrs(self) -> dict:
        """JSON-friendly record of the lines and windows (for a result's attributes)."""
        return {
            "lines": list(self.lines),
            "line_elements": list(self.elements),
            "line_energies": [float(v) for v in self.energy],
            "integration_windows": self.integration.tolist(),
            "background_windows": self.background.tolist(),
            "integration_channels": self.integration_channels.tolist(),
            "background_channels": self.background_channels.tolist(),
            "beam_energy": float(self.beam_energy),
            "energy_resolution_MnKa": float(self.resolution_mnka),
            "zero_peak_cutoff": self.zero_peak_cutoff,
        }


def _uniform_axis(energy_axis) -> tuple[float, float, int]:
    e = np.asarray(energy_axis, dtype=np.float64)
    if e.ndim != 1 or e.size < 2:
        raise XrayLineError(f"the energy axis must be 1-D with at least 2 channels (keV); got shape {e.shape}")
    d = np.diff(e)
    scale = float((e[-1] - e[0]) / (e.size - 1))
    if not (np.all(np.isfinite(e)) and scale > 0 and np.allclose(d, scale, rtol=1e-6, atol=0)):
        raise XrayLineError(
            f"the energy axis must be increasing and uniform (keV per channel); its steps range over "
            f"{float(d.min()):.6g}-{float(d.max()):.6g} keV: select a contiguous energy range (sel(energy=slice(lo, hi))) "
            "rather than a channel mask")
    return float(e[0]), scale, int(e.size)


def _as_list(value, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable):
        raise XrayLineError(f"{name} must be a list of strings; got {value!r}")
    out = [str(v).strip() for v in value]
    if any(not v for v in out):
        raise XrayLineError(f"{name} holds an empty name: {value!r}")
    return out


def _check_number(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise XrayLineError(f"{name} must be a number; got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise XrayLineError(f"{name} must be a positive finite number; got {value!r}")
    return v


@functools.lru_cache(maxsize=1)
def _elements_db() -> dict:
    """exspy's element database (``exspy.material.elements``) as a plain dict."""
    return import_exspy("exspy.material").elements.as_dictionary()


def _probe_signal(offset: float, scale: float, size: int, beam_energy: float, resolution: float):
    """A zero EDS spectrum with the axis and microscope parameters: the object exspy's line rules work on."""
    exspy = import_exspy()
    s = exspy.signals.EDSTEMSpectrum(np.zeros(size))
    ax = s.axes_manager.signal_axes[0]
    ax.offset, ax.scale, ax.units, ax.name = offset, scale, "keV", "Energy"
    ax.is_binned = True
    s.set_microscope_parameters(beam_energy=beam_energy, energy_resolution_MnKa=resolution)
    return s


def _choose_lines(s, elements: list[str], lines: list[str]) -> list[str]:
    """exspy's lines: ``lines`` as given, plus for every other element exspy's ``add_lines`` choice."""
    db = _elements_db()
    for el in elements:
        if el not in db:
            raise XrayLineError(f"unknown element {el!r}: not a chemical symbol in exspy's element database "
                                "(symbols are case-sensitive: 'Fe', not 'FE')")
    for line in lines:
        el, _, family = line.partition("_")
        if not family:
            raise XrayLineError(f"invalid X-ray line {line!r}: give element_line, e.g. 'Fe_Ka'")
        if el not in db:
            raise XrayLineError(f"unknown element {el!r} in the line {line!r}")
        known = db[el]["Atomic_properties"].get("Xray_lines", {})
        if family not in known:
            raise XrayLineError(f"{line!r} is not a line of {el} in exspy's database; its lines are {sorted(known)}")
    if elements:
        s.add_elements(elements)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s.add_lines(lines)
    outside = [str(w.message) for w in caught if "not in the data energy range" in str(w.message)]
    if outside:
        ax = s.axes_manager.signal_axes[0]
        raise XrayLineError(f"{'; '.join(outside)} (axis {ax.low_value:.3f}-{ax.high_value:.3f} keV, beam "
                            f"{s._get_beam_energy():g} keV)")
    chosen = list(s.metadata.Sample.xray_lines) if "Sample.xray_lines" in s.metadata else []
    have = {ln.split("_")[0] for ln in chosen}
    missing = [el for el in elements if el not in have]
    if missing:
        ax = s.axes_manager.signal_axes[0]
        raise XrayLineError(
            f"no Ka, La or Ma line of {', '.join(missing)} lies on the energy axis {ax.low_value:.3f}-{ax.high_value:.3f} keV "
            f"below the beam energy {s._get_beam_energy():g} keV: drop the element(s) or give a line with lines=")
    return chosen


def element_lines(
    elements: Sequence[str] | None,
    energy_axis,
    *,
    beam_energy: float | None = None,
    lines: Sequence[str] | None = None,
    resolution_mnka: float | None = None,
    width: float = INTEGRATION_WIDTH,
    background_offset: tuple[float, float] = BACKGROUND_OFFSET,
    background_width: float = BACKGROUND_WIDTH,
    zero_peak_cutoff: float | None | str = "auto",
) -> LineTable:
    """The X-ray line of each element and its integration and background windows, exspy's way.

    The line family per element is exspy's ``EDSSpectrum.add_lines`` rule
    (``only_one=True, only_lines=("a",)``): of the element's Ka, La and Ma
    lines on the axis and below the beam energy, the first in that order whose
    energy is below half the beam energy, else the last. Windows are exspy's
    ``estimate_integration_windows(width)`` (``width`` x FWHM centred on the
    line) and ``estimate_background_windows(background_offset,
    background_width)`` (windows of ``background_width`` x FWHM starting
    ``background_offset`` x FWHM either side of the line; where the right
    window of a line passes the left window of the next line, both get the
    outer pair, exspy's merge). FWHM from the detector resolution at Mn Ka
    (Fiori & Newbury, exspy's ``get_FWHM_at_Energy``).

    Parameters
    ----------
    elements : sequence of str or None
        Chemical symbols ("Fe"). None or empty: only the ``lines`` given (for
        a montage: the elements its source files recorded, when no lines).
    energy_axis : array-like of shape (channels,), or a montage view
        Channel energies, keV, uniform and increasing (the view's ``energy``
        coordinate; a view without the zero peak is fine). A montage view
        (an ``xarray.DataArray`` with more dims than ``energy``, from
        :func:`xsi_dask.open_montage` or
        :func:`~xsi_dask.montage.prepare.analysis_view`) gives its energy axis
        and the defaults of ``elements``, ``beam_energy``,
        ``resolution_mnka`` and ``zero_peak_cutoff`` from its attributes.
    beam_energy : float, optional
        keV. Default: the montage's recorded beam energy, else the axis' last
        energy (exspy's fallback without one).
    lines : sequence of str, optional
        Lines to use instead of exspy's choice for their elements ("Cr_Kb");
        the other elements keep exspy's choice.
    resolution_mnka : float, optional
        Detector FWHM at Mn Ka, eV. Default: the montage's recorded
        ``energy_resolution_MnKa``, else exspy's 130.
    width : float
        Integration window width in FWHM (exspy's default 2).
    background_offset : (float, float)
        Left and right background window distance from the line, FWHM (exspy's 2, 2).
    background_width : float
        Background window width, FWHM (exspy's 1).
    zero_peak_cutoff : float, None or "auto"
        keV: refuse windows reaching below it (the detector's zero peak).
        "auto" (default): none for an array axis; for a montage view its
        ``zero_peak_cutoff`` attribute where it has one (``analysis_view``;
        None there when the zero peak was kept on purpose), else for EDS
        signals the detector's cutoff
        (:func:`~xsi_dask.montage.prepare.zero_peak_cutoff`).

    Returns
    -------
    LineTable
        Lines in exspy's (alphabetical) order with energies, windows (keV) and
        their channel ranges on ``energy_axis``.

    Raises
    ------
    XrayLineError
        (a :class:`~xsi_dask.errors.ParameterError`) An unknown element or
        line, no line of an element on the axis, a window edge outside the
        axis or below ``zero_peak_cutoff``, a window narrower than one
        channel, a non-uniform axis, a bad width. The element, line and
        window (keV) are named.
    MissingDependencyError
        exspy is not installed (``pip install xsi-dask[quantify]``).

    References
    ----------
    exspy, ``EDSSpectrum.get_lines_intensity`` and its window estimators,
    https://hyperspy.org/exspy.
    Fiori, C. E. & Newbury, D. E. (1978). SEM 1978/I, 401-422.
    """
    if _is_montage(energy_axis):
        montage = energy_axis
        if elements is None and not lines:
            elements = _recorded_elements(montage)
        if beam_energy is None:
            beam_energy = _scalar(montage.attrs.get("beam_energy"), "beam_energy")
        if resolution_mnka is None:
            resolution_mnka = _scalar(montage.attrs.get("energy_resolution_MnKa"), "resolution_mnka")
        zero_peak_cutoff = _cutoff(montage, zero_peak_cutoff, resolution_mnka)
        energy_axis = montage["energy"].values
    elif isinstance(zero_peak_cutoff, str):
        if zero_peak_cutoff != "auto":
            raise XrayLineError(f"zero_peak_cutoff must be a number (keV), None or 'auto'; got {zero_peak_cutoff!r}")
        zero_peak_cutoff = None
    if resolution_mnka is None:
        resolution_mnka = DEFAULT_RESOLUTION_MNKA_EV
    offset, scale, size = _uniform_axis(energy_axis)
    high = offset + scale * (size - 1)
    elements = _as_list(elements, "elements") or []
    lines = _as_list(lines, "lines") or []
    if len(set(elements)) != len(elements):
        raise XrayLineError(f"elements are repeated: {elements}")
    if not elements and not lines:
        raise XrayLineError("no elements and no lines given (and none recorded in the source files): name the elements "
                            "(e.g. ['Fe', 'Cr']) or lines ('Fe_Ka')")
    beam = high if beam_energy is None else _check_number(beam_energy, "beam_energy (keV)")
    resolution = _check_number(resolution_mnka, "resolution_mnka (eV)")
    width = _check_number(width, "width (FWHM)")
    bwidth = _check_number(background_width, "background_width (FWHM)")
    try:
        boff = [_check_number(v, "background_offset (FWHM)") for v in background_offset]
    except TypeError:
        raise XrayLineError(f"background_offset must be two numbers (left, right) in FWHM; got {background_offset!r}") from None
    if len(boff) != 2:
        raise XrayLineError(f"background_offset must be two numbers (left, right) in FWHM; got {background_offset!r}")
    s = _probe_signal(offset, scale, size, beam, resolution)
    chosen = _choose_lines(s, elements, lines)
    families = {}
    for ln in chosen:
        el = ln.split("_")[0]
        if el in families:
            raise XrayLineError(f"two lines of {el} ({families[el]}, {ln}): Cliff-Lorimer takes one line per element; "
                                "give one line per element in lines=")
        families[el] = ln
    iw = np.asarray(s.estimate_integration_windows(windows_width=width, xray_lines=chosen), dtype=np.float64)
    bw = np.asarray(s.estimate_background_windows(line_width=boff, windows_width=bwidth, xray_lines=chosen), dtype=np.float64)
    energy_fwhm = [s._get_line_energy(ln, FWHM_MnKa="auto") for ln in chosen]
    energy = np.array([e for e, _ in energy_fwhm])
    fwhm = np.array([f for _, f in energy_fwhm])
    ax = s.axes_manager.signal_axes[0]
    cut = None if zero_peak_cutoff is None else float(zero_peak_cutoff)
    ich = np.zeros((len(chosen), 2), dtype=np.int64)
    bch = np.zeros((len(chosen), 4), dtype=np.int64)
    for j, ln in enumerate(chosen):
        for edges, out, what in ((iw[j], ich[j], "integration window"), (bw[j], bch[j], "background windows")):
            lo_v = float(edges.min())
            if lo_v < ax.low_value or float(edges.max()) > ax.high_value:
                raise XrayLineError(
                    f"{ln} ({energy[j]:.4f} keV): its {what} {_fmt(edges)} keV reach outside the energy axis "
                    f"{ax.low_value:.3f}-{ax.high_value:.3f} keV: widen the energy range, or choose another line with lines=")
            if cut is not None and lo_v < cut:
                raise XrayLineError(
                    f"{ln} ({energy[j]:.4f} keV): its {what} {_fmt(edges)} keV reach below the zero-peak cutoff "
                    f"{cut:.3f} keV: choose another line with lines= (e.g. a K line above 1 keV) or keep the zero peak")
            out[:] = ax.value2index(edges)
        for a, b, what in ((ich[j, 0], ich[j, 1], "integration window"), (bch[j, 0], bch[j, 1], "left background window"),
                           (bch[j, 2], bch[j, 3], "right background window")):
            if b <= a:
                raise XrayLineError(f"{ln}: its {what} is narrower than one channel ({scale * 1e3:.3g} eV) on this axis: "
                                    "widen it (width=, background_width=)")
    return LineTable(
        lines=tuple(chosen), elements=tuple(ln.split("_")[0] for ln in chosen), energy=energy, fwhm=fwhm,
        integration=iw, background=bw, integration_channels=ich, background_channels=bch,
        axis_offset=offset, axis_scale=scale, axis_size=size, beam_energy=beam, resolution_mnka=resolution,
        zero_peak_cutoff=cut,
    )


def _is_montage(value) -> bool:
    """A montage view (dims include ``energy`` and more), not an energy axis."""
    return isinstance(value, xr.DataArray) and "energy" in value.dims and value.ndim > 1


def _recorded_elements(montage: xr.DataArray) -> list[str]:
    found = montage.attrs.get("elements")
    if isinstance(found, (list, tuple)) and found and all(isinstance(e, str) for e in found):
        return list(found)
    raise XrayLineError(
        f"no elements given and none recorded in the source files of {montage.attrs.get('store')}: pass "
        "elements=['Fe', ...] (or lines=['Fe_Ka', ...]; on the command line --elements Fe,Cr,...)")


def _scalar(value, name: str):
    """A value recorded per source file: the one value, or an error where the files disagree."""
    if isinstance(value, (list, tuple)):
        values = {v for v in value if v is not None}
        if len(values) > 1:
            raise XrayLineError(f"the montage's source files disagree on {name} ({list(value)}): pass {name} explicitly")
        return values.pop() if values else None
    return value


def _cutoff(montage: xr.DataArray, value, resolution_mnka) -> float | None:
    """The zero-peak cutoff of a montage view (see ``element_lines``'s ``zero_peak_cutoff``)."""
    if not isinstance(value, str):
        return None if value is None else float(value)
    if value != "auto":
        raise XrayLineError(f"zero_peak_cutoff must be a number (keV), None or 'auto'; got {value!r}")
    if "zero_peak_cutoff" in montage.attrs:
        cut = montage.attrs["zero_peak_cutoff"]
        return None if cut is None else float(cut)
    if str(montage.attrs.get("signal_type") or "").startswith("EDS"):
        from ..montage.prepare import zero_peak_cutoff

        return float(zero_peak_cutoff(montage, resolution_mnka))
    return None


def _fmt(edges) -> str:
    return "[" + ", ".join(f"{float(v):.4f}" for v in edges) + "]"
