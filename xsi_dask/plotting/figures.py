"""Figures of a decomposition: scree, spectra with X-ray lines, montage mosaics, RGB overlay.

Maps are assembled into the montage mosaic tile by tile from the (lazy) result
arrays and block-averaged to at most ``max_px`` pixels a side, so a figure of a
terabyte montage needs only a few tiles in memory at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .lines import label_peaks

# Figures are built on matplotlib.figure.Figure directly (no pyplot, no backend switch):
# nothing global is touched, so importing this module leaves a Jupyter session's backend alone,
# and a Figure without a pyplot manager is freed by garbage collection like any object.

__all__ = ["map_grid", "mosaic", "rgb_overlay", "save_all", "scree", "spectra"]

_DPI = 110


def scree(svd: xr.Dataset, path: Path) -> Path:
    """Log-scale scree: explained variance ratio per component (every rank with the gram solver)."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    total = svd.attrs.get("total_scaled_variance") or 1.0
    if "eigenvalues" in svd:
        ev = np.asarray(svd["eigenvalues"].values)[:200] / total
        ax.semilogy(np.arange(ev.size), ev, ".", color="0.6", ms=4, label="all eigenvalues (gram)")
    evr = np.asarray(svd["explained_variance_ratio"].values)
    ax.semilogy(np.arange(evr.size), evr, "o-", color="C0", ms=5, label="kept components")
    ax.set_xlabel("component")
    ax.set_ylabel("explained variance ratio")
    ax.set_title(f"Scree ({svd.attrs.get('method', 'SVD')}, {svd.attrs.get('solver', '')} solver)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def spectra(energy: np.ndarray, curves: np.ndarray, path: Path, *, title: str, ylabel: str, max_curves: int = 8) -> Path:
    """Stacked spectra (component, energy) against keV, peaks labelled with X-ray lines."""
    curves = np.asarray(curves)[:max_curves]
    n = curves.shape[0]
    fig = Figure(figsize=(9, 1.6 * n + 0.8))
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)
    e_max = float(energy[np.nonzero(np.abs(curves).max(0) > 0.002 * np.abs(curves).max())[0].max()]) if np.any(curves) else float(energy[-1])
    for i, (ax, y) in enumerate(zip(axes[:, 0], curves)):
        ax.plot(energy, y, lw=0.8, color=f"C{i % 10}")
        ax.axhline(0, color="0.8", lw=0.5)
        for e, h, label in label_peaks(energy, y):
            if label:
                ax.annotate(label, (e, h), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom" if h >= 0 else "top", fontsize=7)
        ax.set_ylabel(f"#{i}", rotation=0, labelpad=12)
        ax.margins(y=0.25)
        ax.set_xlim(max(float(energy[0]), 0.0), min(float(energy[-1]), e_max * 1.05 + 0.5))
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("energy (keV)")
    fig.text(0.005, 0.5, ylabel, rotation=90, va="center")
    fig.tight_layout(rect=(0.02, 0, 1, 1))
    fig.savefig(path, dpi=_DPI)
    return path


def _block_mean(img: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return img
    h, w = img.shape[0] // f * f, img.shape[1] // f * f
    return img[:h, :w].reshape(h // f, f, w // f, f, *img.shape[2:]).mean(axis=(1, 3))


def mosaic(maps: xr.DataArray, *, max_px: int = 1600) -> np.ndarray:
    """Assemble maps (tile, y, x, component) into a (Y, X, component) mosaic by row/col, block-averaged."""
    rows = np.asarray(maps["row"].values)
    cols = np.asarray(maps["col"].values)
    nt, h, w, k = maps.shape
    r0, c0 = rows.min(), cols.min()
    nr, nc = rows.max() - r0 + 1, cols.max() - c0 + 1
    f = max(1, int(np.ceil(max(nr * h, nc * w) / max_px)))
    th, tw = h // f, w // f
    out = np.full((nr * th, nc * tw, k), np.nan)
    for t in range(nt):
        tile = np.asarray(maps.isel(tile=t).values, dtype=float)
        r, c = rows[t] - r0, cols[t] - c0
        out[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = _block_mean(tile, f)
    return out


def map_grid(mos: np.ndarray, path: Path, *, title: str, cmap: str = "viridis", labels: list[str] | None = None, units: str = "") -> Path:
    """One panel per component of a mosaic (Y, X, component)."""
    k = mos.shape[2]
    ncol = min(k, 4)
    nrow = int(np.ceil(k / ncol))
    aspect = mos.shape[0] / mos.shape[1]
    fig = Figure(figsize=(3.2 * ncol, 3.2 * nrow * aspect + 0.6))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= k:
            continue
        img = mos[:, :, i]
        finite = img[np.isfinite(img)]
        lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0, 1))
        if cmap in ("RdBu_r", "coolwarm", "seismic"):  # diverging: centre on zero
            lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
        im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        ax.set_title(labels[i] if labels else f"#{i}", fontsize=9)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cb.ax.tick_params(labelsize=7)
        if units:
            cb.set_label(units, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def rgb_overlay(mos: np.ndarray, path: Path, *, components=(0, 1, 2), labels: list[str] | None = None, title: str = "") -> Path:
    """Three abundance maps as red, green and blue, each scaled to its 99.5th percentile."""
    rgb = np.zeros((*mos.shape[:2], 3))
    for ch, c in enumerate(components[:3]):
        if c >= mos.shape[2]:
            continue
        img = np.nan_to_num(mos[:, :, c])
        hi = np.percentile(img, 99.5)
        rgb[:, :, ch] = np.clip(img / hi, 0, 1) if hi > 0 else 0
    fig = Figure(figsize=(6, 6 * mos.shape[0] / mos.shape[1] + 0.6))
    ax = fig.subplots()
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    names = labels or [f"#{c}" for c in components]
    ax.set_title(title + "  " + "  ".join(f"{col}: {n}" for col, n in zip(("red", "green", "blue"), names)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def _peak_names(energy: np.ndarray, curves: np.ndarray) -> list[str]:
    names = []
    for i, y in enumerate(curves):
        peaks = [(abs(h), lab) for _, h, lab in label_peaks(energy, y) if lab]
        top = [lab for _, lab in sorted(peaks, reverse=True)[:2]]
        names.append(f"#{i} " + ", ".join(top) if top else f"#{i}")
    return names


def save_all(folder: Path, svd: xr.Dataset | None = None, nmf: xr.Dataset | None = None, *, max_score_maps: int = 8) -> list[Path]:
    """Write every figure of the results to ``folder``; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    if svd is not None:
        e = np.asarray(svd["energy"].values)
        paths.append(scree(svd, folder / "scree.png"))
        paths.append(spectra(e, svd["loadings"].values, folder / "loadings.png", title="SVD loadings (unweighted)", ylabel="loading"))
        k = min(max_score_maps, svd.sizes["component"])
        mos = mosaic(svd["scores"].isel(component=slice(0, k)))
        paths.append(map_grid(mos, folder / "scores.png", title="SVD score maps (montage mosaic)", cmap="RdBu_r"))
    if nmf is not None:
        e = np.asarray(nmf["energy"].values)
        sp = nmf["spectra"].values
        names = _peak_names(e, sp)
        paths.append(spectra(e, sp, folder / "nmf_spectra.png", title="NMF endmember spectra (each sums to 1)", ylabel="fraction of counts"))
        mos = mosaic(nmf["abundances"])
        paths.append(map_grid(mos, folder / "nmf_abundances.png", title="NMF abundance maps (montage mosaic)", labels=names, units="counts"))
        paths.append(rgb_overlay(mos, folder / "nmf_rgb.png", labels=names[:3], title="NMF abundances"))
        fig = Figure(figsize=(5.5, 3.5))
        ax = fig.subplots()
        ax.semilogy(nmf["loss"].values, ".-")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.set_title(f"NMF loss ({nmf.attrs.get('loss_function', '')})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / "nmf_loss.png", dpi=_DPI)
        paths.append(folder / "nmf_loss.png")
    return paths
