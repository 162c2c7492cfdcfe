"""Figures of a decomposition: scree, spectra with X-ray lines, montage mosaics, RGB overlay, NMF loss.

Every ``draw_*`` function returns a :class:`matplotlib.figure.Figure` (tests
inspect its artists); :func:`save` writes one as PNG and :func:`save_all`
writes the whole set, in pages: every component is shown, ``per_page`` to a
figure, as many figures as needed.

Maps are assembled into the montage mosaic tile by tile from the (lazy) result
arrays and block-averaged to at most ``max_px`` pixels a side, so a figure of a
terabyte montage needs only a few tiles in memory at a time.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ..decomposition._rank import roundoff_cut
from .formatting import as_number, format_number
from .lines import component_labels, component_name, label_peaks

# Figures are built on matplotlib.figure.Figure directly (no pyplot, no backend switch):
# nothing global is touched, so importing this module leaves a Jupyter session's backend alone,
# and a Figure without a pyplot manager is freed by garbage collection like any object.

__all__ = [
    "ANALYSIS_FIGURES",
    "FIGURE_NAME",
    "PER_PAGE",
    "component_labels",
    "component_titles",
    "draw_loss",
    "draw_maps",
    "draw_rgb",
    "draw_scree",
    "draw_spectra",
    "loss_curve",
    "mosaic",
    "nmf_converged",
    "pages",
    "roundoff_rank",
    "save",
    "save_all",
    "scree_values",
]

_DPI = 110
PER_PAGE = 8
"""Components per figure (spectra stacked, maps on a grid of 4 columns)."""
SCREE_MAX_RANKS = 200
"""At most this many gram eigenvalues are drawn on the scree (the caption says how many there are)."""
#: figure stems of each analysis group (:mod:`xsi_dask.plotting.analyses`), in the order the report shows them
ANALYSIS_FIGURES = {
    "rotation": ("rotation_loadings", "rotation_scores"),
    "mcr": ("mcr_spectra", "mcr_abundances", "mcr_loss"),
    "ica": ("ica_loadings", "ica_scores"),
    "segments": ("segments", "segment_spectra"),
    "elements": ("element_maps",),
    "quantification": ("composition_maps",),
    "qc": ("qc",),
}
_STEMS = ("scree", "loadings", "scores", "nmf_spectra", "nmf_abundances", "nmf_rgb", "nmf_loss",
          *(s for stems in ANALYSIS_FIGURES.values() for s in stems))
FIGURE_NAME = re.compile(rf"({'|'.join(_STEMS)})(_page\d+)?\.png")
"""Names of the figure files of a report (first page ``loadings.png``, then ``loadings_page2.png``, ...): those
:func:`save_all` writes and those of the analysis groups (:mod:`xsi_dask.plotting.analyses`)."""


# ---- the one labelling of components ----

def _peak_annotations(energy, y, *, elements=None, resolution_mnka_ev=None) -> list[tuple[float, float, str]]:
    """(energy, height, label) of the peaks drawn on a spectrum; the same line data as :func:`component_labels`."""
    return [(e, h, lab) for e, h, lab in label_peaks(np.asarray(energy), y, elements=elements,
                                                     resolution_mnka_ev=resolution_mnka_ev) if lab]


def _titled(energy, curves, *, elements=None, resolution_mnka_ev=None) -> tuple[list[str], list[list]]:
    """Each component's title (:func:`component_titles`) and drawn peaks (:func:`_peak_annotations`), from one labelling."""
    peaks = [_peak_annotations(energy, y, elements=elements, resolution_mnka_ev=resolution_mnka_ev)
             for y in np.atleast_2d(np.asarray(curves))]
    return [f"#{i} {component_name(p)}".rstrip() for i, p in enumerate(peaks)], peaks


def component_titles(energy, curves, *, elements: Sequence[str] | None = None,
                     resolution_mnka_ev: float | None = None) -> list[str]:
    """``#i Al Ka + Ag La`` for each component: its index and :func:`component_labels` (``#i`` alone without a label)."""
    return _titled(energy, curves, elements=elements, resolution_mnka_ev=resolution_mnka_ev)[0]


# ---- paging ----

def pages(n: int, per_page: int = PER_PAGE) -> list[range]:
    """Component indices of each page: ``range(0, 8), range(8, 10)`` for 10 components, 8 a page."""
    per_page = int(per_page)
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1; got {per_page}")
    return [range(i, min(i + per_page, n)) for i in range(0, n, per_page)]


def _page_name(stem: str, page: int) -> str:
    return f"{stem}.png" if page == 0 else f"{stem}_page{page + 1}.png"


def _of(idx: range, n: int) -> str:
    """`` (components 8-9 of 10)`` when ``idx`` is not all of them, else ""."""
    if len(idx) == n:
        return ""
    first, last = idx[0], idx[-1]
    return f" (component{'s' if last > first else ''} {first}{f'-{last}' if last > first else ''} of {n})"


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path``, atomically; the path.

    The image is written to a temporary sibling (``.NAME.tmp-XXXXXXXX``) and
    renamed over ``path`` when complete, so an interrupted or failed write
    (disk full) never leaves a truncated figure under the final name; the
    temporary file is removed on failure.

    Raises
    ------
    OSError
        The file cannot be written (the callers map it to the package's errors).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        fig.savefig(tmp, dpi=_DPI, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---- scree ----

def roundoff_rank(eigenvalues, *, rank: int | None = None) -> int:
    """How many leading eigenvalues of a symmetric (gram) matrix stand above round-off.

    The solver's own cut, :func:`xsi_dask.decomposition._rank.roundoff_cut`
    (``M * eps * max``), unless ``rank`` says what it recorded.

    Parameters
    ----------
    eigenvalues : array of shape (M,)
        Eigenvalues, largest first.
    rank : int, optional
        The count recorded by the solver (``attrs["eigenvalues_roundoff_rank"]``),
        used instead of the threshold when given.

    Returns
    -------
    int
    """
    if rank is not None:
        return int(min(max(int(rank), 0), np.size(eigenvalues)))
    return roundoff_cut(eigenvalues)


def scree_values(svd: xr.Dataset) -> dict:
    """What the scree draws, as numbers (explained variance ratios, round-off cut, noise edge).

    Returns
    -------
    dict
        ``evr``: the kept components' explained variance ratios;
        ``eigen``: gram eigenvalues / total scaled variance above round-off
        (None without the gram solver); ``n_eigen``: how many eigenvalues
        there are; ``n_roundoff``: how many were cut as round-off;
        ``edge``: the noise edge ``attrs["noise_edge"]`` (an eigenvalue of
        the scaled gram, as ``eigenvalues``) over the total scaled variance,
        or None; ``n_significant``: ``attrs["n_significant"]`` or None.
    """
    a = svd.attrs
    total = as_number(a.get("total_scaled_variance")) or 1.0
    evr = np.asarray(svd["explained_variance_ratio"].values, dtype=float)
    out = {"evr": evr, "eigen": None, "n_eigen": 0, "n_roundoff": 0, "edge": None, "n_significant": None}
    if "eigenvalues" in svd:
        ev = np.asarray(svd["eigenvalues"].values, dtype=float)
        rank = a.get("eigenvalues_roundoff_rank")
        keep = roundoff_rank(ev, rank=None if rank is None else int(rank))
        out.update(eigen=ev[:keep] / total, n_eigen=int(ev.size), n_roundoff=int(ev.size - keep))
    edge = a.get("noise_edge")
    if edge is not None:
        edge = np.atleast_1d(np.asarray(edge, dtype=float)) / total
        out["edge"] = edge
    if a.get("n_significant") is not None:
        out["n_significant"] = int(a["n_significant"])
    return out


def draw_scree(svd: xr.Dataset, *, max_ranks: int = SCREE_MAX_RANKS) -> Figure:
    """Log-scale scree: explained variance ratio per rank, round-off cut, noise band and n_significant.

    Gram eigenvalues (``solver="gram"``) are drawn down to round-off
    (:func:`roundoff_rank`), at most ``max_ranks`` of them (the legend says
    how many there are); the kept components' ratios on top. With
    ``attrs["noise_edge"]`` the band at and below the noise edge is shaded
    (one value: the edge; two: the band between them); with
    ``attrs["n_significant"]`` a vertical line separates the significant
    components from the rest.
    """
    v = scree_values(svd)
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    if v["eigen"] is not None:
        ev = v["eigen"][:max_ranks]
        shown = f"first {ev.size} of {v['eigen'].size}" if ev.size < v["eigen"].size else f"{ev.size}"
        cut = f" above round-off; {v['n_roundoff']} below not shown" if v["n_roundoff"] else ""
        ax.semilogy(np.arange(ev.size), ev, ".", color="0.55", ms=4, label=f"gram eigenvalues ({shown}{cut})")
    evr = v["evr"]
    pos = evr > 0
    ax.semilogy(np.arange(evr.size)[pos], evr[pos], "o-", color="C0", ms=5, label="kept components")
    if v["edge"] is not None:
        edge = v["edge"]
        bottom, top = ax.get_ylim()
        bottom = min(bottom, float(edge.min()) / 3)
        lo, hi = (bottom, float(edge.max())) if edge.size == 1 else (float(edge.min()), float(edge.max()))
        ax.axhspan(lo, hi, color="C3", alpha=0.12, lw=0, label=f"noise band (edge {format_number(hi)})")
        ax.axhline(hi, color="C3", lw=0.8, ls="--")
        ax.set_ylim(bottom, max(top, hi * 3))
    if v["n_significant"] is not None:
        n = v["n_significant"]
        ax.axvline(n - 0.5, color="C2", lw=1.0, ls=":", label=f"n_significant = {n}")
    ax.set_xlabel("component (rank)")
    ax.set_ylabel("explained variance ratio")
    ax.set_title(f"Scree ({svd.attrs.get('method', 'SVD')}, {svd.attrs.get('solver', '')} solver)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


# ---- NMF loss ----

def loss_curve(nmf: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, loss): the NMF objective against the iteration it was recorded after.

    The loss is recorded every ``loss_every`` iterations and after the last
    (``iteration = 0, 10, ..., 50, 51``); without an ``iteration`` coordinate
    (older results) the index stands in.
    """
    loss = np.asarray(nmf["loss"].values, dtype=float)
    dim = nmf["loss"].dims[0]
    it = np.asarray(nmf[dim].values) if dim in nmf.coords else np.arange(loss.size)
    return it, loss


def nmf_converged(nmf: xr.Dataset) -> tuple[bool | None, str]:
    """Whether the NMF met its tolerance, and how that is known.

    None with ``tol = 0`` (no test: ``max_iter`` iterations are run);
    ``attrs["converged"]`` when recorded; else inferred: stopping before
    ``max_iter`` with ``tol > 0`` means the relative loss change fell below
    ``tol``; running all ``max_iter`` iterations means it did not (or only
    just); None when the attributes do not tell.
    """
    a = nmf.attrs
    n, mx, tol = a.get("n_iter"), a.get("max_iter"), a.get("tol")
    if tol is not None and float(tol) <= 0:
        return None, "no test (tol = 0: runs max_iter iterations)"
    if a.get("converged") is not None:
        return bool(a["converged"]), "recorded"
    if n is None or mx is None or tol is None:
        return None, "not recorded"
    if int(n) < int(mx):
        return True, "not recorded; inferred: stopped before max_iter"
    return False, "not recorded; inferred: ran all max_iter iterations"


def _convergence_text(a, conv: bool | None, how: str) -> str:
    tol = f"tol {format_number(float(a['tol']))}" if a.get("tol") is not None else "tol ?"
    if conv is True:
        return f"converged after {a.get('n_iter')} iterations ({tol})"
    if conv is False:
        return f"NOT converged: stopped at max_iter = {a.get('max_iter')} above {tol}"
    return f"convergence: {how}"


def draw_loss(nmf: xr.Dataset) -> Figure:
    """NMF loss against the iteration number (:func:`loss_curve`), with its convergence in the title."""
    it, loss = loss_curve(nmf)
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.subplots()
    if np.all(loss > 0):
        ax.semilogy(it, loss, ".-")
    else:  # a loss of 0 or below (a perfect or a Frobenius fit of centred data) has no log
        ax.plot(it, loss, ".-")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    conv, how = nmf_converged(nmf)
    ax.set_title(f"NMF loss ({nmf.attrs.get('loss_function', '')})\n{_convergence_text(nmf.attrs, conv, how)}", fontsize=9,
                 color="C3" if conv is False else "black")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


# ---- spectra ----

def draw_spectra(energy, curves, *, title: str, ylabel: str, names: Sequence[str] | None = None,
                 elements: Sequence[str] | None = None, resolution_mnka_ev: float | None = None,
                 peaks: Sequence[Sequence[tuple[float, float, str]]] | None = None) -> Figure:
    """Stacked spectra (component, energy) against keV, one panel each, peaks labelled with X-ray lines.

    ``names`` (one per curve, e.g. ``"#3 Al Ka"``) label the panels; peaks
    are annotated from the same line data as :func:`component_labels`, or
    ``peaks`` (one list of (energy, height, label) per curve) where the
    caller has labelled them already (then without ``elements`` and
    ``resolution_mnka_ev``, which would not be used: a ValueError).
    """
    energy = np.asarray(energy)
    curves = np.atleast_2d(np.asarray(curves, dtype=float))
    n = curves.shape[0]
    names = list(names) if names is not None else [f"#{i}" for i in range(n)]
    if peaks is None:
        peaks = [_peak_annotations(energy, y, elements=elements, resolution_mnka_ev=resolution_mnka_ev) for y in curves]
    elif elements is not None or resolution_mnka_ev is not None:
        raise ValueError("draw_spectra: peaks are labelled already; elements and resolution_mnka_ev would not be used")
    elif len(peaks) != n:
        raise ValueError(f"draw_spectra: {len(peaks)} lists of peaks for {n} curves; expected one per curve")
    fig = Figure(figsize=(9, 1.6 * n + 0.8))
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)
    mag = np.abs(curves).max(0)
    e_max = float(energy[np.nonzero(mag > 0.002 * mag.max())[0].max()]) if np.any(curves) else float(energy[-1])
    for i, (ax, y) in enumerate(zip(axes[:, 0], curves)):
        ax.plot(energy, y, lw=0.8, color=f"C{i % 10}")
        ax.axhline(0, color="0.8", lw=0.5)
        for e, h, label in peaks[i]:
            ax.annotate(label, (e, h), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom" if h >= 0 else "top", fontsize=7)
        ax.text(0.995, 0.95, names[i], transform=ax.transAxes, ha="right", va="top", fontsize=8)
        ax.margins(y=0.25)
        ax.set_xlim(max(float(energy[0]), 0.0), min(float(energy[-1]), e_max * 1.05 + 0.5))
    axes[0, 0].set_title(title, fontsize=10)
    axes[-1, 0].set_xlabel("energy (keV)")
    fig.text(0.005, 0.5, ylabel, rotation=90, va="center")
    h = fig.get_figheight()  # fixed margins in inches: tight_layout costs as much as drawing the figure
    fig.subplots_adjust(left=0.085, right=0.985, bottom=0.5 / h, top=1 - 0.35 / h, hspace=0.12)
    return fig


# ---- maps ----

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


def colour_limits(img: np.ndarray, *, diverging: bool = False) -> tuple[float, float]:
    """The colour scale of a map: its 0.5-99.5 % percentiles over the finite pixels.

    Parameters
    ----------
    img : ndarray
        The map (any units); NaN and inf are left out.
    diverging : bool
        Centre the scale on zero (``-m, m`` with ``m`` the larger magnitude).

    Returns
    -------
    (vmin, vmax) : tuple of float
        ``vmax > vmin`` always (``vmin + 1`` for a flat map; ``(0, 1)`` without a finite pixel).
    """
    finite = np.asarray(img)[np.isfinite(img)]
    lo, hi = (float(v) for v in np.percentile(finite, [0.5, 99.5])) if finite.size else (0.0, 1.0)
    if diverging:
        lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    return lo, (hi if hi > lo else lo + 1.0)


def draw_maps(mos: np.ndarray, *, title: str, cmap: str = "viridis", labels: Sequence[str] | None = None,
              units: str = "", ncol: int = 4) -> Figure:
    """One panel per component of a mosaic (Y, X, component), ``ncol`` to a row, titled by ``labels``."""
    k = mos.shape[2]
    ncol = min(k, ncol)
    nrow = int(np.ceil(k / ncol))
    aspect = mos.shape[0] / mos.shape[1]
    fig = Figure(figsize=(max(3.2 * ncol, 6.4), 3.2 * nrow * aspect + 0.6))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= k:
            continue
        img = mos[:, :, i]
        lo, hi = colour_limits(img, diverging=cmap in ("RdBu_r", "coolwarm", "seismic"))  # diverging: centred on zero
        im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(labels[i] if labels else f"#{i}", fontsize=9)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cb.ax.tick_params(labelsize=7)
        if units:
            cb.set_label(units, fontsize=7)
    fig.suptitle(title, fontsize=11)
    w, h = fig.get_figwidth(), fig.get_figheight()  # fixed margins in inches (tight_layout costs as much as the drawing)
    fig.subplots_adjust(left=0.15 / w, right=1 - 0.6 / w, bottom=0.1 / h, top=1 - 0.65 / h, wspace=0.3,
                        hspace=0.35 / max(0.1, h / nrow - 0.45))
    return fig


def draw_rgb(mos: np.ndarray, *, components=(0, 1, 2), labels: Sequence[str] | None = None, title: str = "") -> Figure:
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
    names = list(labels) if labels else [f"#{c}" for c in components]
    ax.set_title(title + "  " + "  ".join(f"{col}: {n}" for col, n in zip(("red", "green", "blue"), names)), fontsize=9)
    fig.tight_layout()
    return fig


# ---- the whole set ----

def _paged_spectra(folder, stem, energy, curves, names, peaks, *, title, ylabel, per_page) -> list[Path]:
    n = curves.shape[0]
    out = []
    for p, idx in enumerate(pages(n, per_page)):
        page = slice(idx.start, idx.stop)
        fig = draw_spectra(energy, curves[page], title=title + _of(idx, n), ylabel=ylabel, names=names[page],
                           peaks=peaks[page])
        out.append(save(fig, folder / _page_name(stem, p)))
    return out


def _paged_maps(folder, stem, maps: xr.DataArray, names, *, title, per_page, max_px, **kw) -> tuple[list[Path], np.ndarray]:
    """Map pages, each mosaic assembled from its components only; the paths and the first page's mosaic."""
    n = maps.sizes["component"]
    out, first = [], None
    for p, idx in enumerate(pages(n, per_page)):
        mos = mosaic(maps.isel(component=slice(idx.start, idx.stop)), max_px=max_px)
        first = mos if first is None else first
        fig = draw_maps(mos, title=title + _of(idx, n), labels=names[idx.start : idx.stop], **kw)
        out.append(save(fig, folder / _page_name(stem, p)))
    return out, first


def save_all(folder: str | Path, svd: xr.Dataset | None = None, nmf: xr.Dataset | None = None, *,
             per_page: int = PER_PAGE, elements: Sequence[str] | None = None, resolution_mnka_ev: float | None = None,
             max_px: int = 1600) -> list[Path]:
    """Write every figure of the results to ``folder``, every component on some page; return the paths.

    SVD: ``scree.png``, ``loadings.png`` and ``scores.png`` (then
    ``loadings_page2.png``, ... ``per_page`` components each); NMF:
    ``nmf_spectra.png``, ``nmf_abundances.png`` (paged likewise),
    ``nmf_rgb.png`` (the first three endmembers) and ``nmf_loss.png``.
    Component names come from :func:`component_labels` (``elements``,
    ``resolution_mnka_ev``). Figure files of these names left by an earlier
    call with more pages are removed, so ``folder`` holds one set.
    """
    return _save_all(folder, svd, nmf, per_page=per_page, elements=elements, resolution_mnka_ev=resolution_mnka_ev,
                     max_px=max_px)[0]


def _save_all(folder, svd=None, nmf=None, *, per_page=PER_PAGE, elements=None, resolution_mnka_ev=None,
              max_px=1600) -> tuple[list[Path], dict[str, list[str]]]:
    """:func:`save_all`, and the component titles of each group drawn (``{"svd": [...], "nmf": [...]}``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lab = {"elements": elements, "resolution_mnka_ev": resolution_mnka_ev}
    paths: list[Path] = []
    titles: dict[str, list[str]] = {}
    if svd is not None:
        e = np.asarray(svd["energy"].values)
        loadings = np.asarray(svd["loadings"].values, dtype=float)
        titles["svd"], peaks = _titled(e, loadings, **lab)
        names = titles["svd"]
        paths.append(save(draw_scree(svd), folder / "scree.png"))
        paths += _paged_spectra(folder, "loadings", e, loadings, names, peaks, title="SVD loadings (unweighted)",
                                ylabel="loading", per_page=per_page)
        paths += _paged_maps(folder, "scores", svd["scores"], names, title="SVD score maps (montage mosaic)",
                             per_page=per_page, max_px=max_px, cmap="RdBu_r")[0]
    if nmf is not None:
        e = np.asarray(nmf["energy"].values)
        sp = np.asarray(nmf["spectra"].values, dtype=float)
        titles["nmf"], peaks = _titled(e, sp, **lab)
        names = titles["nmf"]
        paths += _paged_spectra(folder, "nmf_spectra", e, sp, names, peaks, title="NMF endmember spectra (each sums to 1)",
                                ylabel="fraction of counts", per_page=per_page)
        maps, first = _paged_maps(folder, "nmf_abundances", nmf["abundances"], names,
                                  title="NMF abundance maps (montage mosaic)", per_page=per_page, max_px=max_px, units="counts")
        paths += maps
        paths.append(save(draw_rgb(first, labels=names[:3], title="NMF abundances"), folder / "nmf_rgb.png"))
        paths.append(save(draw_loss(nmf), folder / "nmf_loss.png"))
    written = {p.name for p in paths}
    for old in folder.iterdir():  # pages of an earlier, longer set; figures of a group no longer there
        if FIGURE_NAME.fullmatch(old.name) and old.name not in written and old.is_file() and not old.is_symlink():
            old.unlink()
    return paths, titles
