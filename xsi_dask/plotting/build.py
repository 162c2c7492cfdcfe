"""Every figure and ``report.html`` of a results store: what ``xsi-dask report`` and ``xsi-dask run`` write.

:func:`make_report` opens a results store (groups ``svd`` and/or ``nmf``),
finds the montage store the results record (``attrs["store"]``) for the
acquisition metadata and calibration, draws every figure
(:func:`xsi_dask.plotting.figures.save_all`: every component, in pages) and
writes a report whose numbers are formatted for a reader and whose images
resolve relative to the report itself.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import NotOurOutputError, OutputWriteError, ParameterError, XSIError
from . import report as _report
from .analyses import analyses_sections, save_analyses
from .figures import PER_PAGE, _save_all, loss_curve, nmf_converged, scree_values
from .formatting import as_number, format_number, format_seconds
from .lines import label_options, parse_elements

__all__ = ["acquisition_rows", "calibration_rows", "check_report_folder", "make_report", "report_write_error", "source_elements"]

_SOURCE = {"given": "given", "n_significant": "from the data: the SVD's n_significant", "default": "the default"}
_WHY = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded", errno.EROFS: "the file system is read-only"}


# ---- inputs ----

def _open(results: Path) -> dict[str, xr.Dataset]:
    from ..io.results import open_result_groups

    return open_result_groups(results)


def check_report_folder(out_dir: Path) -> None:
    """Refuse, before drawing, a folder a report may not write into (nothing that is not ours is replaced).

    Shared by every command that writes ``report.html`` and ``figures/``
    (:func:`make_report`, ``xsi-dask explore``).

    Parameters
    ----------
    out_dir : Path
        The report's folder (``report.html``, ``figures/``); it need not exist.

    Raises
    ------
    NotOurOutputError
        ``out_dir`` is not a folder, its ``report.html`` is not an xsi_dask
        report (or a link), or its ``figures`` is not a folder.
    """
    from ..io.store import describe_path

    if (out_dir.is_symlink() or out_dir.exists()) and not out_dir.is_dir():
        raise NotOurOutputError(f"{out_dir} is {describe_path(out_dir)}: the report goes into a folder; choose another --out")
    report, figures = out_dir / "report.html", out_dir / "figures"
    if (report.is_symlink() or report.exists()) and not (report.is_file() and _report.is_our_report(report)):
        raise NotOurOutputError(f"{report} exists and is not an xsi_dask report; it is left as it is: choose another --out")
    if (figures.is_symlink() or figures.exists()) and (figures.is_symlink() or not figures.is_dir()):
        raise NotOurOutputError(f"{figures} is {describe_path(figures)}, not the figures folder of a report; "
                                "choose another --out")


def _store_of(groups: Mapping[str, xr.Dataset]):
    """The montage store the results were computed from (its path recorded in the results), or None and why not."""
    from ..io.store import MontageStore

    paths = {str(ds.attrs["store"]) for ds in groups.values() if ds.attrs.get("store")}
    if not paths:
        return None, "the results record no montage store"
    path = sorted(paths)[0]
    try:
        return MontageStore(path), ""
    except XSIError as exc:
        return None, f"the montage store {path} cannot be opened ({exc})"


# ---- what the report shows ----

def _sources(store) -> list[dict]:
    return list(store.attrs.get("sources") or []) if store is not None else []


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d


def _instrument(meta: Mapping) -> Mapping:
    """``Acquisition_instrument.SEM`` or ``.TEM`` of one file's metadata, else {}."""
    ai = _get(meta, "Acquisition_instrument") or {}
    return next((ai[mic] for mic in ("SEM", "TEM") if isinstance(ai.get(mic), Mapping)), {})


def _combine(values: list[str], n: int) -> str:
    """One value when every source agrees; else each distinct value (how many sources have it)."""
    present = [v for v in values if v]
    if not present:
        return ""
    distinct = list(dict.fromkeys(present))
    missing = n - len(present)
    if len(distinct) == 1:
        text = distinct[0]
        return text + (f" ({len(present)} of {n} files)" if missing else "" if n == 1 else f" (all {n} files)")
    counts = {v: present.count(v) for v in distinct}
    shown = "; ".join(f"{v} ({c} file{'s' if c > 1 else ''})" for v, c in list(counts.items())[:4])
    more = f"; {len(distinct) - 4} more values" if len(distinct) > 4 else ""
    return shown + more + (f"; {missing} files: not given" if missing else "")


def source_elements(store) -> list[str]:
    """The union of the element lists (``Sample.elements``) of the store's source files, sorted ([] when none)."""
    from ..io.metadata import acquisition

    if store is None:  # the montage store is gone: the results' own record is all there is
        return []
    return list(acquisition(store.attrs).get("elements") or [])


def _label_elements(given: list[str] | None, attrs: Mapping, store) -> tuple[list[str] | None, str]:
    """The elements whose lines label peaks, and where they come from: given, recorded by the analysis, the files'."""
    if given is not None:
        return given, "given to the report"
    if attrs.get("elements"):
        return parse_elements(list(attrs["elements"])), "recorded in the results: --elements of the analysis"
    files = source_elements(store)
    if files:
        return files, "the files' element lists"
    sim = (store.attrs.get("simulation") or {}) if store is not None else {}
    if sim.get("elements"):
        return parse_elements(list(sim["elements"])), f"the elements of the simulated preset {sim.get('preset')}"
    return None, "no list given nor recorded: every element's lines"


def _resolution(store, attrs: Mapping) -> float | None:
    """The detector FWHM at Mn Ka (eV) for line labels: the results' record, else the montage store's (the widest where
    it varies: :func:`~xsi_dask.plotting.lines.label_options`)."""
    from ..io.metadata import acquisition

    res = label_options(attrs)["resolution_mnka_ev"]
    if res is None and store is not None:
        res = label_options(acquisition(store))["resolution_mnka_ev"]
    return res


def acquisition_rows(store) -> dict[str, str]:
    """The acquisition metadata of a montage store's source files, formatted, one row per quantity.

    Beam energy, signal type, elements and X-ray lines, live and real time,
    detector (type, resolution at Mn Ka, elevation and azimuth), magnification,
    date; a value that differs between files is listed with how many files
    have it. Rows without a value in any file are left out.
    """
    srcs = _sources(store)
    n = len(srcs)
    if not n:
        return {}

    def each(fn) -> str:
        return _combine([fn(s.get("metadata") or {}, s) for s in srcs], n)

    def inst(*keys, unit="", sig=4):
        def fn(meta, _):
            v = as_number(_get(_instrument(meta), *keys))
            return "" if v is None else format_number(v, unit, sig=sig)
        return each(fn)

    def text(fn):
        return each(lambda meta, s: str(fn(meta, s) or ""))

    rows = {
        "files": str(n),
        "signal type": text(lambda m, s: s.get("signal_type") or _get(m, "Signal", "signal_type")),
        "beam energy": inst("beam_energy", unit="kV"),
        "beam current": inst("beam_current", unit="nA"),
        "magnification": inst("magnification", sig=3),
        "elements (file)": text(lambda m, s: ", ".join(map(str, _get(m, "Sample", "elements") or []))),
        "X-ray lines (file)": text(lambda m, s: ", ".join(map(str, _get(m, "Sample", "xray_lines") or []))),
        "live time": inst("Detector", "EDS", "live_time", unit="s"),
        "real time": inst("Detector", "EDS", "real_time", unit="s"),
        "detector": text(lambda m, s: _get(_instrument(m), "Detector", "EDS", "detector_type")),
        "detector resolution (Mn Ka)": inst("Detector", "EDS", "energy_resolution_MnKa", unit="eV", sig=3),
        "detector elevation": inst("Detector", "EDS", "elevation_angle", unit="°", sig=3),
        "detector azimuth": inst("Detector", "EDS", "azimuth_angle", unit="°", sig=3),
        "date": text(lambda m, s: " ".join(str(x) for x in (_get(m, "General", "date"), _get(m, "General", "time")) if x)),
    }
    return {k: v for k, v in rows.items() if v}


def calibration_rows(store, ds: xr.Dataset) -> dict[str, str]:
    """Energy axis and pixel calibration (the store's; the result's axes where the store is not at hand), and the layout."""
    rows: dict[str, str] = {}
    if store is not None:
        e = store.attrs.get("energy") or {}
        size, off, scale = int(e.get("size", 0)), as_number(e.get("offset")), as_number(e.get("scale"))
        if size and off is not None and scale is not None:
            rows["energy axis (store)"] = (f"{size:,} channels from {format_number(off, 'keV')} to "
                                           f"{format_number(off + scale * (size - 1), 'keV')}")
            rows["energy offset"] = format_number(off, "keV")
            rows["energy scale"] = format_number(scale * 1000, "eV/channel")
        px = store.attrs.get("pixels") or {}
        sy, sx, unit = as_number(px.get("scale_y")), as_number(px.get("scale_x")), px.get("units") or ""
        if sy is not None and sx is not None:
            rows["pixel size"] = (format_number(sy, unit) if sy == sx else
                                  f"{format_number(sy)} x {format_number(sx, unit)} (y x x)")
        grid = store.attrs.get("grid")
        th, tw = store.tile_shape
        rows["montage"] = (f"{store.n_tiles} tile{'s' if store.n_tiles != 1 else ''}"
                           + (f" on a {grid[0]} x {grid[1]} grid" if grid else "") + f", {th} x {tw} pixels each")
    else:
        x = np.asarray(ds["x"].values) if "x" in ds.coords else np.empty(0)
        if x.size > 1:
            rows["pixel size (from the results)"] = format_number(float(x[1] - x[0]), ds["x"].attrs.get("units", ""))
    return rows


def _analysed_rows(store, ds: xr.Dataset) -> dict[str, str]:
    """The data the results were computed on: energy range, zero peak, bin, tiles, counts per pixel."""
    a = ds.attrs
    e = np.asarray(ds["energy"].values)
    rows: dict[str, str] = {}
    rows["energy range analysed"] = (f"{format_number(float(e[0]), 'keV')} to {format_number(float(e[-1]), 'keV')}, "
                                     f"{e.size:,} channels")
    if a.get("energy_range") is not None:
        lo, hi = a["energy_range"]
        rows["energy range (recorded)"] = f"{format_number(as_number(lo), 'keV')} to {format_number(as_number(hi), 'keV')}"
    if "zero_peak_cutoff" in a:
        c = as_number(a["zero_peak_cutoff"])
        rows["zero peak"] = "kept" if c is None else f"excluded below {format_number(c, 'keV')}"
    else:
        rows["zero peak"] = "not recorded (results of an xsi_dask without zero-peak exclusion)"
    b = a.get("bin")
    binned = int(b) if b is not None else 1
    rows["binning"] = ("not recorded" if b is None else "none (1 x 1)" if binned == 1 else
                       f"{binned} x {binned} pixels summed")
    if "tile" in ds.sizes:
        nt = ds.sizes["tile"]
        total = None if store is None else store.n_tiles
        rows["tiles analysed"] = f"{nt}" + (f" of {total}" if total is not None and total != nt else "")
    if a.get("counts_per_pixel") is not None:  # recorded by the analysis: per (binned) pixel, kept channels only
        where = f"per {binned} x {binned} binned pixel" if binned > 1 else "per pixel"
        rows[f"counts {where} (mean, channels analysed)"] = format_number(as_number(a["counts_per_pixel"]), sig=4)
    if store is not None:
        tiles = np.asarray(ds["tile"].values, dtype=int) if "tile" in ds.coords else np.arange(store.n_tiles)
        counts = sum(int(store.tiles[t]["total_counts"]) for t in tiles if 0 <= t < store.n_tiles)
        cpp = counts / max(1, len(tiles) * store.pixels_per_tile)
        rows["counts per pixel (mean, all channels)"] = format_number(cpp)
        if binned > 1:
            rows[f"counts per {binned} x {binned} binned pixel (mean, all channels)"] = format_number(cpp * binned**2)
        voxels = max(1, store.n_tiles * store.pixels_per_tile * store.channels)
        rows["non-zero voxels"] = format_number(100 * int(store.attrs.get("nnz", 0)) / voxels, "%", sig=3)
    return rows


def _opt(value: Any, fmt=format_number) -> str:
    """``fmt(value)``, or "" (the row is left out) where the attribute is absent."""
    return "" if value is None else fmt(value)


def _real(value: Any) -> str:
    return format_number(as_number(value))


def _shown(rows: dict[str, str], a: Mapping) -> tuple[dict[str, str], list[str]]:
    """The rows with a value, the run's passes and time appended; the result's warnings as notes."""
    rows = {**rows, "passes over the data": _opt(a.get("passes")), "time": _opt(a.get("seconds"), format_seconds)}
    return {k: v for k, v in rows.items() if v}, [str(w) for w in a.get("warnings") or []]


def _svd_rows(svd: xr.Dataset) -> tuple[dict[str, str], list[str]]:
    a = svd.attrs
    v = scree_values(svd)
    evr = v["evr"]
    rows = {
        "method": str(a.get("method", "SVD")),
        "solver": str(a.get("solver", "")),
        "components kept": str(svd.sizes.get("component", len(evr))),
        "Poisson scaling": format_number(bool(a.get("poisson"))) if "poisson" in a else "",
        "centred": format_number(bool(a.get("center"))) if "center" in a else "",
        "power iterations": _opt(a.get("power_iters")),
        "oversampling": _opt(a.get("oversampling")),
        "seed": _opt(a.get("seed"), str),
        "total scaled variance": _real(a.get("total_scaled_variance")) if "total_scaled_variance" in a else "",
        "variance explained by the kept components": format_number(100 * float(np.nansum(evr)), "%", sig=3),
        "first components' variance ratios": ", ".join(format_number(float(x), sig=3) for x in evr[:5]),
    }
    if v["eigen"] is not None:
        rows["gram eigenvalues above round-off"] = f"{v['eigen'].size:,} of {v['n_eigen']:,}"
    if v["n_significant"] is not None:
        n = v["n_significant"]
        if a.get("n_significant_is_lower_bound"):
            text = f"at least {n}: all {len(evr)} kept components stand above the noise (compute more to count them)"
        else:
            text = str(n)
        rows["n_significant (components above the noise)"] = text + " (Marchenko-Pastur edge of the Poisson-scaled noise)"
    else:
        rows["n_significant (components above the noise)"] = "not recorded"
    if v["edge"] is not None:
        raw = np.atleast_1d(np.asarray(a["noise_edge"], dtype=float))
        rows["noise edge"] = (", ".join(format_number(float(x)) for x in raw) + " (eigenvalue of the scaled gram); "
                              + ", ".join(format_number(float(x)) for x in v["edge"]) + " as a variance ratio")
    return _shown(rows, a)


def _nmf_rows(nmf: xr.Dataset, labels: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    a = nmf.attrs
    it, loss = loss_curve(nmf)
    conv, how = nmf_converged(nmf)
    notes = []
    if conv is False:
        notes.append(f"The NMF did not converge: it stopped at max_iter = {a.get('max_iter')} with the relative loss change "
                     f"above tol = {_real(a.get('tol'))}. Run more iterations (--max-iter) or resume it.")
    src = a.get("n_components_source")
    rows = {
        "method": str(a.get("method", "NMF")),
        "endmembers": str(nmf.sizes.get("component", "")) + (f" ({_SOURCE.get(src, src)})" if src else ""),
        "loss function": str(a.get("loss_function", "")),
        "init": str(a.get("init", "")),
        "sparsity (L1/2 weight)": _opt(a.get("sparsity"), _real),
        "iterations run": (f"{a['n_iter']} of max_iter {a.get('max_iter')}" if a.get("n_iter") is not None else ""),
        "tol": _opt(a.get("tol"), _real),
        "converged": how if conv is None else format_number(conv) + ("" if how == "recorded" else f" ({how})"),
        "final loss": format_number(float(loss[-1])) + f" (after iteration {int(it[-1])})" if loss.size else "",
        "divergence (without the sparsity term)": _opt(a.get("divergence"), _real),
        "resumed from iteration": _opt(a.get("resumed_from_iteration"), str),
        "endmember lines": "; ".join(labels),
    }
    rows, more = _shown(rows, a)
    return rows, notes + more


# ---- the report ----

def make_report(
    results: str | Path,
    out_dir: str | Path | None = None,
    *,
    title: str | None = None,
    elements: str | Sequence[str] | None = None,
    max_per_page: int = PER_PAGE,
    run_info: Mapping[str, Any] | None = None,
) -> Path:
    """Draw every figure of a results store and write ``report.html``; the report's path.

    Parameters
    ----------
    results : str or Path
        A results store (``results.zarr``) with group ``svd``, ``nmf`` or both
        (written by ``xsi-dask decompose``, ``nmf`` or ``run``).
    out_dir : str or Path, optional
        Folder of ``report.html`` and ``figures/`` (created if absent); default
        the folder holding ``results`` (a run's folder).
    title : str, optional
        Report title; default from the source file names.
    elements : str or sequence of str, optional
        Element symbols whose X-ray lines name the peaks (``"Fe,Cr"``);
        default the results' ``attrs["elements"]``, else the element lists of
        the source files, else every element.
    max_per_page : int
        Components per figure; every component is drawn, on as many pages as needed.
    run_info : mapping, optional
        Rows of a "Run" table shown first (parameters and timings of a run).

    Returns
    -------
    Path
        ``out_dir / "report.html"``.

    Raises
    ------
    InputFileNotFoundError
        ``results`` does not exist.
    StoreFormatError
        ``results`` is not a results store, or has neither ``svd`` nor ``nmf``.
    ParameterError
        ``elements`` holds a name that is not an element symbol; ``max_per_page`` below 1.
    NotOurOutputError
        ``out_dir`` is a file, or holds a ``report.html`` that no xsi_dask
        wrote, or a ``figures`` that is not a folder (nothing is replaced).
    OutputWriteError
        A figure or the report cannot be written (full disk, no permission).

    Notes
    -----
    Figures are drawn from the results alone (maps block-averaged tile by
    tile into mosaics); metadata and calibration come from the montage
    store the results record, and are left out, with a note, where it is
    gone. Image paths in the HTML are relative to the report, so the folder
    may be moved or opened from anywhere. Dask's performance report the
    results record (attribute ``performance_report``, written by
    ``--performance-report`` beside the results store) is linked under the
    title, relative to the report too, when the file is there.
    """
    if isinstance(max_per_page, bool) or not isinstance(max_per_page, (int, np.integer)) or max_per_page < 1:
        raise ParameterError(f"max_per_page must be an integer >= 1; got {max_per_page!r}")
    results = Path(os.path.abspath(results))
    groups = _open(results)
    out_dir = Path(os.path.abspath(out_dir)) if out_dir is not None else results.parent
    check_report_folder(out_dir)
    given = parse_elements(elements)
    store, why_no_store = _store_of(groups)
    any_ds = next(iter(groups.values()))
    label_elements, elements_source = _label_elements(given, any_ds.attrs, store)
    resolution = _resolution(store, any_ds.attrs)

    svd, nmf = groups.get("svd"), groups.get("nmf")
    report = out_dir / "report.html"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        figs, titles = _save_all(out_dir / "figures", svd, nmf, per_page=int(max_per_page), elements=label_elements,
                                 resolution_mnka_ev=resolution)
        more, more_titles = save_analyses(out_dir / "figures", groups, per_page=int(max_per_page), elements=label_elements,
                                          resolution_mnka_ev=resolution)
        figs, titles = figs + more, {**titles, **more_titles}
        drawn = time.perf_counter() - t
        sections = _sections(results, store, why_no_store, groups, figs, titles, run_info, label_elements, elements_source,
                             resolution, drawn)
        if title is None:
            names = [Path(str(s.get("path", ""))).name for s in _sources(store)] or [results.name]
            title = f"xsi_dask: {names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
        return _report.write_report(report, title=title, sections=sections, subtitle=str(results),
                                    links=_performance_links(results, groups))
    except OSError as exc:
        if isinstance(exc, XSIError):
            raise
        raise report_write_error(out_dir, exc) from exc


def report_write_error(out_dir: Path, exc: OSError, kept: str = "") -> OutputWriteError:
    """The package's error for a report or figure that cannot be written, saying why (disk full, quota, read-only).

    Parameters
    ----------
    out_dir : Path
        The report's folder.
    exc : OSError
        What writing raised.
    kept : str
        What is complete nonetheless (e.g. the record of ``explore``), added to the message.

    Returns
    -------
    OutputWriteError
        To be raised ``from exc``.
    """
    why = _WHY.get(exc.errno, exc.strerror or str(exc))
    where = f" ({exc.filename})" if exc.filename else ""
    return OutputWriteError(f"{out_dir}: cannot be written: {why}{where}; the report is incomplete"
                            + (f" ({kept})" if kept else "") + ". Free space or choose another --out")


def _performance_links(results: Path, groups: Mapping[str, xr.Dataset]) -> list[tuple[str, Path]]:
    """The Dask performance reports the groups record (relative to the results store's folder) that are there.

    Only a recorded report is linked: one left in the folder by an earlier run describes other results.
    """
    recorded = sorted({str(ds.attrs["performance_report"]) for ds in groups.values() if ds.attrs.get("performance_report")})
    paths = [results.parent / rel for rel in recorded]
    return [("Dask performance report", p) for p in paths if p.is_file()]


def _sections(results, store, why_no_store, groups, figs, titles, run_info, label_elements, elements_source, resolution, drawn):
    by_name: dict[str, list[Path]] = {}
    for p in figs:
        by_name.setdefault(p.stem.split("_page")[0], []).append(p)
    sections: list[tuple] = []
    if run_info:
        sections.append(("Run", dict(run_info), []))
    any_ds = groups.get("svd", groups.get("nmf"))
    a = any_ds.attrs
    res_rows = {
        "results store": str(results),
        "groups": ", ".join(groups),
        "montage store": str(store.path) if store is not None else (str(a.get("store")) if a.get("store") else "not recorded"),
        "xsi_dask version (results)": str(a.get("xsi_dask_version", "")),
        "compute backend": str(a.get("backend", "")),
        "figures drawn in": format_seconds(drawn),
    }
    uuids = {str(ds.attrs.get("store_uuid")) for ds in groups.values() if ds.attrs.get("store_uuid")}
    res_notes = []
    if len(uuids) > 1:
        res_notes.append("The groups were computed from different montage stores (their store_uuid differ).")
    if store is not None and uuids and store.uuid not in uuids:
        res_notes.append(f"The montage store at {store.path} is not the one these results were computed from "
                         "(another store_uuid): its metadata may not describe them.")
    if why_no_store:
        res_notes.append(f"Metadata and calibration not shown: {why_no_store}.")
    sections.append(("Results", {k: v for k, v in res_rows.items() if v}, [], res_notes))
    acq = acquisition_rows(store)
    acq["elements used for line labels"] = (", ".join(label_elements) if label_elements else "all") + f" ({elements_source})"
    if resolution is not None:
        acq["detector resolution used for labels"] = format_number(resolution, "eV", sig=3) + " at Mn Ka"
    if store is not None or acq:
        sections.append(("Acquisition", acq, []))
    sections.append(("Calibration", calibration_rows(store, any_ds), []))
    sections.append(("Data analysed", _analysed_rows(store, any_ds), []))
    if "svd" in groups:
        rows, notes = _svd_rows(groups["svd"])
        sections.append(("Poisson-scaled SVD" if groups["svd"].attrs.get("poisson") else "SVD", rows,
                         [p for n in ("scree", "loadings", "scores") for p in by_name.get(n, [])], notes))
    if "nmf" in groups:
        rows, notes = _nmf_rows(groups["nmf"], titles["nmf"])
        sections.append(("NMF", rows, [p for n in ("nmf_spectra", "nmf_abundances", "nmf_rgb", "nmf_loss")
                                       for p in by_name.get(n, [])], notes))
    sections += analyses_sections(groups, by_name, titles)
    return sections
