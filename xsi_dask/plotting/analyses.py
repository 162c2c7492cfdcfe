"""Figures and report sections of the analyses after the NMF: rotation, MCR, ICA, segments, element maps,
quantification and tile QC (each drawn when its results group is there)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .figures import ANALYSIS_FIGURES, _paged_maps, _paged_spectra, _titled, draw_loss, mosaic, save
from .formatting import format_number, format_seconds

__all__ = ["analyses_sections", "draw_qc", "draw_segments", "save_analyses"]

def _tile_grid(ds: xr.Dataset, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-tile values on the montage's (row, col) grid (NaN where no tile), and each tile's grid position."""
    rows = np.asarray(ds["row"].values, dtype=int) if "row" in ds.coords else np.zeros(ds.sizes["tile"], int)
    cols = np.asarray(ds["col"].values, dtype=int) if "col" in ds.coords else np.arange(ds.sizes["tile"])
    rows, cols = rows - rows.min(), cols - cols.min()
    grid = np.full((rows.max() + 1, cols.max() + 1), np.nan)
    grid[rows, cols] = values
    return grid, rows, cols


def draw_qc(qc: xr.Dataset) -> Figure:
    """Two tile mosaics: counts per pixel and the model residual per count, flagged tiles outlined in red."""
    panels = [("counts_per_pixel", "counts per pixel", "viridis")]
    if "deviance_per_pixel" in qc and np.isfinite(np.asarray(qc["deviance_per_pixel"].values, dtype=float)).any():
        panels.append(("deviance_per_pixel", f"model deviance per pixel ({qc.attrs.get('group', 'model')})", "magma"))
    fig = Figure(figsize=(4.6 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    flagged = np.asarray(qc["flagged"].values, dtype=bool)
    for ax, (name, label, cmap) in zip(axes, panels):
        grid, rows, cols = _tile_grid(qc, np.asarray(qc[name].values, dtype=float))
        im = ax.imshow(grid, cmap=cmap, interpolation="nearest")
        for t, (r, c) in enumerate(zip(rows, cols)):
            ax.text(c, r, str(int(qc["tile"].values[t])), ha="center", va="center", fontsize=7, color="w")
            if flagged[t]:
                ax.add_patch(_outline(c, r))
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    n = int(flagged.sum())
    fig.suptitle(f"tile quality control: {n} tile{'s' if n != 1 else ''} flagged (red)", fontsize=10,
                 color="C3" if n else "black")
    return fig


def _outline(c: int, r: int):
    from matplotlib.patches import Rectangle

    return Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5)


def draw_segments(labels: xr.DataArray, *, max_px: int = 1600) -> Figure:
    """The label map (tile, y, x) as a mosaic, one colour per segment (pixels without counts white).

    Where the mosaic is reduced to ``max_px``, each block shows the label of its first pixel: a mean of labels
    is no label.
    """
    nr = int(labels["row"].max() - labels["row"].min() + 1) if "row" in labels.coords else 1
    nc = int(labels["col"].max() - labels["col"].min() + 1) if "col" in labels.coords else labels.sizes["tile"]
    f = max(1, int(np.ceil(max(nr * labels.sizes["y"], nc * labels.sizes["x"]) / max_px)))  # mosaic's own factor
    lab = labels.isel(y=slice(None, None, f), x=slice(None, None, f)).expand_dims("component", axis=-1)
    mos = mosaic(lab.astype(float).where(lab >= 0), max_px=max_px)[:, :, 0]
    k = int(np.nanmax(mos)) + 1 if np.isfinite(mos).any() else 1
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap([f"C{i % 10}" for i in range(k)])
    fig = Figure(figsize=(6.4, 6.4 * mos.shape[0] / mos.shape[1] + 0.6))
    ax = fig.subplots()
    im = ax.imshow(mos, cmap=cmap, vmin=-0.5, vmax=k - 0.5, interpolation="nearest")
    ax.set_axis_off()
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, ticks=range(k))
    cb.set_label("segment", fontsize=8)
    ax.set_title(f"k-means segments ({k})", fontsize=10)
    fig.tight_layout()
    return fig


def save_analyses(folder: Path, groups: Mapping[str, xr.Dataset], *, per_page: int, elements=None,
                  resolution_mnka_ev=None, max_px: int = 1600) -> tuple[list[Path], dict[str, list[str]]]:
    """Every figure of the analysis groups present; the paths and the component titles of each group."""
    lab = {"elements": elements, "resolution_mnka_ev": resolution_mnka_ev}
    paths: list[Path] = []
    titles: dict[str, list[str]] = {}

    def spectra_and_maps(name, spectra_var, maps_var, what, ylabel, map_units, diverging):
        ds = groups[name]
        e = np.asarray(ds["energy"].values)
        curves = np.asarray(ds[spectra_var].values, dtype=float)
        titles[name], peaks = _titled(e, curves, **lab)
        stems = ANALYSIS_FIGURES[name]
        paths.extend(_paged_spectra(folder, stems[0], e, curves, titles[name], peaks, title=f"{what} spectra",
                                    ylabel=ylabel, per_page=per_page))
        kw = {"cmap": "RdBu_r"} if diverging else {"units": map_units}
        paths.extend(_paged_maps(folder, stems[1], ds[maps_var], titles[name], title=f"{what} maps (montage mosaic)",
                                 per_page=per_page, max_px=max_px, **kw)[0])

    if "rotation" in groups:
        gamma = float(groups["rotation"].attrs.get("gamma", 1.0))
        name = "Varimax" if gamma == 1.0 else f"Orthomax (gamma {gamma:g})"
        spectra_and_maps("rotation", "loadings", "scores", f"{name}-rotated (spatial simplicity)", "loading", "", True)
    if "mcr" in groups:
        spectra_and_maps("mcr", "spectra", "abundances", "MCR-ALS endmember", "fraction of counts", "counts", False)
        if "loss" in groups["mcr"]:
            fig = draw_loss(groups["mcr"])
            fig.axes[0].set_title("MCR-ALS: factored least-squares loss", fontsize=9)
            paths.append(save(fig, folder / "mcr_loss.png"))
    if "ica" in groups:
        spectra_and_maps("ica", "loadings", "scores", "ICA", "loading", "", True)
    if "segments" in groups:
        seg = groups["segments"]
        paths.append(save(draw_segments(seg["labels"], max_px=max_px), folder / "segments.png"))
        e = np.asarray(seg["energy"].values)
        curves = np.asarray(seg["mean_spectra"].values, dtype=float)
        names, peaks = _titled(e, curves, **lab)
        titles["segments"] = names
        paths.extend(_paged_spectra(folder, "segment_spectra", e, curves, names, peaks,
                                    title="mean spectrum of each segment", ylabel="counts per pixel", per_page=per_page))
    if "elements" in groups:
        el = groups["elements"]
        maps = el["intensity"].rename({"line": "component"})
        names = [str(v) for v in el["line"].values]
        paths.extend(_paged_maps(folder, "element_maps", maps, names, title="net X-ray line intensities (montage mosaic)",
                                 per_page=per_page, max_px=max_px, units="net counts")[0])
    if "quantification" in groups and "map_atomic_percent" in groups["quantification"]:
        q = groups["quantification"]
        maps = q["map_atomic_percent"].rename({"element": "component"})
        names = [str(v) for v in q["element"].values]
        paths.extend(_paged_maps(folder, "composition_maps", maps, names, title="Cliff-Lorimer composition per pixel "
                                 "(montage mosaic)", per_page=per_page, max_px=max_px, units="at.%")[0])
    if "qc" in groups:
        paths.append(save(draw_qc(groups["qc"]), folder / "qc.png"))
    return paths, titles


def _rows_common(a: Mapping) -> dict[str, str]:
    return {k: v for k, v in {
        "passes over the counts": "" if a.get("passes") is None else str(a.get("passes")),
        "time": "" if a.get("seconds") is None else format_seconds(float(a["seconds"])),
    }.items() if v}


def _quant_rows(q: xr.Dataset) -> dict[str, str]:
    rows = {"k-factors": str(q.attrs.get("k_factor_source", "")), "absorption correction": str(q.attrs.get("absorption", "off"))}
    at = q["atomic_percent"]
    els = [str(e) for e in at["element"].values]
    group = str(q.attrs.get("group", ""))
    for i, name in enumerate(at[at.dims[0]].values):
        vals = np.asarray(at.isel({at.dims[0]: i}).values, dtype=float)
        order = np.argsort(-np.nan_to_num(vals, nan=-np.inf))
        shown = ", ".join(f"{els[j]} {vals[j]:.1f}" for j in order if vals[j] >= 0.05)
        rows[f"{group} #{name}".strip()] = (shown + " (at.%)") if shown else "no line above the threshold"
    return rows


def _qc_rows(qc: xr.Dataset) -> tuple[dict[str, str], list[str]]:
    a = qc.attrs
    flagged = [int(t) for t in qc["tile"].values[np.asarray(qc["flagged"].values, dtype=bool)]]
    rows = {"threshold (robust z-score)": format_number(a.get("threshold", float("nan"))),
            "tiles flagged": ", ".join(map(str, flagged)) if flagged else "none"}
    for i, t in enumerate(qc["tile"].values):
        cells = [f"{float(qc['counts_per_pixel'].values[i]):.3g} counts/px"]
        for var, label in (("z_dose", "z dose"), ("counts_per_pixel_per_s", "counts/px/s"), ("z_rate", "z rate"),
                           ("deviance_per_pixel", "deviance/px"), ("z_residual", "z residual")):
            if var in qc:
                v = float(qc[var].values[i])
                if np.isfinite(v):
                    cells.append(f"{label} {v:.3g}")
        reasons = [n.replace("_", " ") for n in ("low_dose", "low_rate", "high_residual") if n in qc and bool(qc[n].values[i])]
        rows[f"tile {int(t)}"] = "; ".join(cells) + (f": FLAGGED ({', '.join(reasons)})" if reasons else "")
    notes = []
    if a.get("live_time_reason"):
        notes.append(f"No live-time-normalised dose: {a['live_time_reason']}.")
    if a.get("method"):
        notes.append(f"Flags: {a['method']}; threshold {a.get('threshold')}.")
    return rows, notes


def analyses_sections(groups: Mapping[str, xr.Dataset], by_name: Mapping[str, list[Path]],
                      titles: Mapping[str, Sequence[str]]) -> list[tuple]:
    """The report's sections of the analysis groups present: (heading, rows, figures, notes)."""
    out = []

    def figs(name):
        return [p for stem in ANALYSIS_FIGURES.get(name, ()) for p in by_name.get(stem, [])]

    def attr_rows(ds, keys):
        a = ds.attrs
        return {label: format_number(a[key]) if isinstance(a[key], (int, float, bool)) else str(a[key])
                for key, label in keys if a.get(key) is not None}

    if "rotation" in groups:
        r = groups["rotation"]
        rows = {"method": str(r.attrs.get("method", "orthomax")), **attr_rows(r, (
            ("gamma", "gamma (1: varimax)"), ("n_iter", "iterations"), ("converged", "converged"),
            ("map_passes", "passes over the stored scores"))), **_rows_common(r.attrs),
            "components": "; ".join(titles.get("rotation", []))}
        out.append(("Spatial-simplicity rotation", rows, figs("rotation"), []))
    if "mcr" in groups:
        m = groups["mcr"]
        rows = {"method": str(m.attrs.get("method", "MCR-ALS")), **attr_rows(m, (
            ("n_iter", "iterations"), ("converged", "converged"), ("map_passes", "passes over the stored scores"),
            ("deviance", "Poisson deviance of the model"))), **_rows_common(m.attrs),
            "endmember lines": "; ".join(titles.get("mcr", []))}
        out.append(("MCR-ALS (factored)", rows, figs("mcr"), []))
    if "ica" in groups:
        c = groups["ica"]
        rows = {"method": str(c.attrs.get("method", "FastICA")), **attr_rows(c, (
            ("sample_size", "pixels in the fitted sample"), ("seed", "seed"), ("n_iter", "iterations"),
            ("converged", "converged"))), "components": "; ".join(titles.get("ica", []))}
        out.append(("ICA", rows, figs("ica"), []))
    if "segments" in groups:
        s = groups["segments"]
        rows = {**attr_rows(s, (("method", "method"), ("features", "features"), ("n_clusters", "segments"),
                                ("n_components", "components clustered"), ("seed", "seed"))), **_rows_common(s.attrs)}
        if "inertia" in s:
            rows["inertia (within-segment sum of squares)"] = format_number(float(np.sum(s["inertia"].values)))
        if "pixels" in s:
            total = float(np.sum(s["pixels"].values)) or 1.0
            rows["pixels per segment"] = ", ".join(f"#{i}: {100 * float(n) / total:.1f} %"
                                                   for i, n in enumerate(s["pixels"].values))
        out.append(("k-means segments", rows, figs("segments"), []))
    if "elements" in groups:
        el = groups["elements"]
        rows = {"lines": ", ".join(str(v) for v in el["line"].values), **_rows_common(el.attrs)}
        if "line_energy" in el:
            rows["line energies (keV)"] = ", ".join(f"{float(v):.3f}" for v in el["line_energy"].values)
        out.append(("Element maps", rows, figs("elements"), []))
    if "quantification" in groups:
        out.append(("Cliff-Lorimer quantification of the endmembers", _quant_rows(groups["quantification"]),
                    figs("quantification"), []))
    if "qc" in groups:
        rows, notes = _qc_rows(groups["qc"])
        out.append(("Tile quality control", rows, figs("qc"), notes))
    return out
