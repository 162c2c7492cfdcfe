"""Tile quality control of a montage: :func:`tile_qc` (dose, live-time-normalised dose, model residual, flags).

A montage of many tiles can hide a faulty acquisition: a tile where the beam
current dropped (a fraction of the others' counts), or one that the model of
the whole montage does not explain (drift, a different sample region, a
detector fault). Per tile, :func:`tile_qc` gives

* the dose: counts per pixel over the view's channels, from the per-tile sum
  spectra the store keeps (no pass over the counts);
* the dose per second of recorded live time, where every tile has a source
  file of its own whose live time was recorded (NaN otherwise, with the
  reason in ``attrs``; nothing is assumed);
* with a decomposition result: the Poisson (KL) deviance of its model
  (abundances (tile, y, x, component) in counts times spectra summing to 1),
  in one pass over the counts (:func:`xsi_dask.engine.maps.tile_deviance`);

and flags the tiles whose robust (modified) z-score passes a threshold: low
dose, low dose rate (one-sided, low) and high residual per pixel (one-sided,
high). :func:`format_qc` turns the result into table lines.

References
----------
Iglewicz, B. & Hoaglin, D. C. (1993). How to Detect and Handle Outliers. ASQC
Basic References in Quality Control 16. ASQC Quality Press (the modified
z-score 0.6745 (x - median) / MAD and its threshold 3.5).
Leys, C., Ley, C., Klein, O., Bernard, P. & Licata, L. (2013). Detecting
outliers: do not use standard deviation around the mean, use absolute
deviation around the median. J. Exp. Soc. Psychol. 49, 764-766.
doi:10.1016/j.jesp.2013.03.013
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from .engine import make_plan
from .engine.maps import map_source, tile_deviance
from .errors import ParameterError, StoreFormatError, ViewError
from .io.metadata import acquisition
from .io.results import open_results

__all__ = ["robust_z", "tile_qc", "format_qc"]

MAD_SCALE = 1.4826  # 1 / Phi^-1(3/4): the MAD of a normal sample estimates sigma / 1.4826
MEAN_AD_SCALE = 1.253314  # sqrt(pi / 2): the mean absolute deviation of a normal sample estimates sigma / 1.2533
# the floor of the spread of the log values (see tile_qc's Notes): 0.05, about 5 % of the dose or of the residual
MIN_LOG_SPREAD = 0.05


def robust_z(x: np.ndarray, min_spread: float = 0.0) -> np.ndarray:
    """The modified z-score of Iglewicz & Hoaglin (1993): (x - median) / (1.4826 MAD).

    Parameters
    ----------
    x : array-like of shape (n,)
        Values; NaN values are left out of the median and the MAD and get a
        NaN score; -inf/+inf (e.g. the log of a tile without counts) get an
        infinite score.
    min_spread : float
        The smallest spread (1.4826 MAD, in the units of ``x``) the score
        divides by (default 0: none). A handful of values can agree far more
        closely than the population they come from, and then a small
        difference scores high; the floor keeps differences below
        ``threshold * min_spread`` from being flagged.

    Returns
    -------
    ndarray of shape (n,), float64
        0.6745 (x - median) / MAD, as the paper writes it. Where more than
        half the values are equal (MAD 0), the mean absolute deviation around
        the median scaled by 1.2533 takes the MAD's place (the usual fallback);
        where that is 0 too (all finite values equal), the score is 0 for
        values at the median and +-inf for the others.

    References
    ----------
    Iglewicz, B. & Hoaglin, D. C. (1993). How to Detect and Handle Outliers.
    ASQC Quality Press.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    z = np.full(x.shape, np.nan)
    ok = ~np.isnan(x)
    if not ok.any():
        return z
    with np.errstate(invalid="ignore", divide="ignore"):
        med = float(np.median(x[ok]))
        dev = np.abs(x[ok] - med)
        spread = MAD_SCALE * float(np.median(dev))
        if not spread > 0 or not np.isfinite(spread):
            fin = dev[np.isfinite(dev)]
            spread = MEAN_AD_SCALE * float(fin.mean()) if fin.size else 0.0
        spread = max(spread, float(min_spread))
        d = x[ok] - med
        z[ok] = d / spread if spread > 0 else np.where(d == 0, 0.0, np.sign(d) * np.inf)
    return z


def _live_times(plan, st) -> tuple[np.ndarray, str]:
    """Each tile's recorded live time (s) where its source file is its own and recorded one; NaN and why otherwise."""
    acq = acquisition(st)
    n_src = int(acq["n_sources"])
    lt = acq.get("live_time")
    if lt is None:
        return np.full(len(plan.tiles), np.nan), "no source file recorded a live time"
    if isinstance(lt, list):
        per = lt
    else:
        per = acq.get("live_time_per_source") or [float(lt) / n_src] * n_src  # equal values: their sum / n
    paths = [str(s.get("path")) for s in st.attrs["sources"]]
    src_of = [str(st.tiles[t].get("source")) for t in range(st.n_tiles)]
    shared = {p: src_of.count(p) for p in set(src_of)}
    out = np.full(len(plan.tiles), np.nan)
    why: list[str] = []
    for i, t in enumerate(plan.tiles):
        p = src_of[t]
        if p not in paths:
            why.append(f"tile {t}: its source {p!r} is not among the store's sources")
        elif shared[p] > 1:
            why.append(f"tile {t}: its source {Path(p).name} was split into {shared[p]} tiles, and the file's live "
                       "time is for the whole map")
        elif per[paths.index(p)] is None:
            why.append(f"tile {t}: its source {Path(p).name} recorded no live time")
        else:
            out[i] = float(per[paths.index(p)])
    reason = "; ".join(why[:5]) + (f"; ... ({len(why)} tiles)" if len(why) > 5 else "")
    return out, reason


def _check_spectra(res: xr.Dataset, montage: xr.DataArray, path, group: str) -> np.ndarray:
    if "spectra" not in res or "abundances" not in res:
        raise StoreFormatError(f"{path}: group {group!r} holds no factor model (spectra, abundances); it has "
                               f"{sorted(res.data_vars)}")
    e_res = np.asarray(res["energy"].values, dtype=np.float64)
    e_view = np.asarray(montage["energy"].values, dtype=np.float64)
    if e_res.shape != e_view.shape or not np.allclose(e_res, e_view, rtol=0, atol=1e-9):
        def span(e: np.ndarray) -> str:
            return f"{e[0]:.4g}-{e[-1]:.4g} keV" if e.size else "none"

        raise ViewError(f"{path}: the {group} model has {e_res.size} channels ({span(e_res)}), the montage view "
                        f"{e_view.size} ({span(e_view)}): give the view the model was fitted on, "
                        "xsi_dask.engine.maps.results_view(open_results(path, group))")
    S = np.asarray(res["spectra"].transpose("component", "energy").values, dtype=np.float64)
    if not (np.isfinite(S).all() and (S >= 0).all()):
        raise StoreFormatError(f"{path}: the {group} spectra hold negative or non-finite values: not a non-negative "
                               "factor model whose deviance is defined")
    return S


def tile_qc(montage: xr.DataArray, *, results: str | Path | None = None, group: str = "nmf",
            threshold: float = 3.5, min_spread: float = MIN_LOG_SPREAD) -> xr.Dataset:
    """Per-tile quality control: dose, live-time-normalised dose, model residual and outlier flags.

    Parameters
    ----------
    montage : xarray.DataArray
        Counts (tile, y, x, energy) from :func:`xsi_dask.open_montage`, or a
        view of it (tiles, an energy selection, binning): the dose is over the
        view's channels, per (binned) pixel of the view's tiles.
    results : str or Path, optional
        A results store (``nmf(..., out=...)``) whose ``group`` holds
        ``abundances (tile, y, x, component)`` in counts and ``spectra
        (component, energy)``, fitted on this montage view (same store,
        channels and bin; :func:`xsi_dask.engine.maps.results_view` rebuilds
        that view). Without it no residual is computed and no pass is made.
    group : str
        The group of ``results`` (default ``"nmf"``; any factor model with
        those two variables, e.g. MCR).
    threshold : float
        |modified z| above which a tile is flagged (default 3.5, Iglewicz &
        Hoaglin's recommendation).
    min_spread : float
        Floor of the spread (1.4826 MAD) of the log values that the scores
        divide by (default 0.05, i.e. about 5 %): at the defaults a tile is
        flagged only when its dose (or residual) is also at least about
        16 % (exp(-3.5 x 0.05)) below (above) the median tile. See Notes.

    Returns
    -------
    xarray.Dataset
        Dim ``tile`` (the store's tile numbers, with ``row``/``col``):

        ``counts`` (counts over the view's channels), ``pixels`` (of the view),
        ``counts_per_pixel``; ``live_time`` (s, as the source file recorded
        it) and ``counts_per_pixel_per_s`` (NaN for every tile unless each
        tile has a source file of its own with a recorded live time;
        ``attrs["live_time_reason"]`` says why not); with ``results``:
        ``deviance`` (Poisson deviance 2 sum[d log(d/m) - d + m], the log
        term over the non-zero counts), ``deviance_per_pixel`` (the residual
        that is scored) and ``deviance_per_count``. The robust z-scores
        (:func:`robust_z`) ``z_dose`` (of log counts per pixel), ``z_rate``
        (of log counts per pixel per s), ``z_residual`` (of the log deviance
        per pixel); the flags ``low_dose`` (z_dose < -threshold), ``low_rate``
        (z_rate < -threshold), ``high_residual`` (z_residual > threshold) and
        ``flagged`` (any). ``attrs``: ``threshold``, ``min_spread``,
        ``method``, ``live_time_reason``, ``passes`` (over the counts: 1 with
        ``results``, 0 without, or when the group stores its model's ``deviance (tile)``
        as MCR does), ``results`` and ``group``.

    Raises
    ------
    ParameterError
        ``threshold`` is not a positive number, or ``min_spread`` not >= 0.
    StoreFormatError
        ``results`` has no such group, or it holds no factor model.
    ViewError
        The montage view is not one the engine honours, or the results were
        fitted on another store, other tiles, channels or bin.

    Notes
    -----
    The scores are robust to a few faulty tiles (median and MAD), but they
    need enough tiles to mean anything: with fewer than about five, read the
    values, not the flags. Log values make a tile at a tenth of the dose as
    far from the rest as one at ten times it. The floor ``min_spread``:
    tiles of one sample differ in counts per pixel by their composition
    (phases of other X-ray yields), not only by the beam dose, and a few
    tiles can agree far more closely than that by chance. Measured on 3 x 3
    simulated montages (16 x 16 pixels, dose variation 0.05): the spread
    (1.4826 MAD) of log dose was 0.01-0.05, and with seed 2, where six tiles
    agree within 2 %, a tile 11 % below the median scored z = -7.0 without
    the floor and -2.4 with it; the tile at a tenth of the dose scores
    below -40 either way. The deviance per pixel is the
    residual scored, as the deviance grows with the dose even for a correct
    model (a Poisson voxel of mean mu contributes about 1 for large mu and
    less for small mu); it is one-sided, so a low-dose tile (low deviance per
    pixel) is flagged by its dose, not its residual. The deviance per count
    is given beside it. Cost: the residual is one pass over the counts (one
    task per work unit, reading its rows of the abundances); the dose reads
    only the stored per-tile sum spectra.

    References
    ----------
    Iglewicz, B. & Hoaglin, D. C. (1993). How to Detect and Handle Outliers.
    ASQC Quality Press.
    McCullagh, P. & Nelder, J. A. (1989). Generalized Linear Models, 2nd ed.
    (the Poisson deviance). doi:10.1007/978-1-4899-3242-6
    """
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.floating)) or \
            not 0 < threshold < np.inf:
        raise ParameterError(f"threshold must be a positive number (a modified z-score, 3.5 by default); got "
                             f"{threshold!r}")
    if isinstance(min_spread, (bool, np.bool_)) or not isinstance(min_spread, (int, float, np.floating)) or \
            not 0 <= min_spread < np.inf:
        raise ParameterError(f"min_spread must be a number >= 0 (a spread of log values, 0.05 by default); got "
                             f"{min_spread!r}")
    plan = make_plan(montage)
    st = plan.open_store()
    pixels = plan.pixels_per_tile
    keep = slice(None) if plan.channels is None else np.asarray(plan.channels)
    counts = np.array([float(st.sum_spectrum(t).astype(np.float64)[keep].sum()) for t in plan.tiles])
    cpp = counts / pixels
    live, why_live = _live_times(plan, st)
    with np.errstate(divide="ignore"):
        rate = cpp / live
        z_dose = robust_z(np.log(cpp), min_spread)
        z_rate = robust_z(np.log(rate), min_spread)
    tiles = np.asarray(plan.tiles)
    coords: dict = {"tile": tiles}
    for c in ("row", "col"):
        if c in montage.coords and montage[c].dims == ("tile",):
            coords[c] = ("tile", np.asarray(montage[c].values))
    data: dict = {
        "counts": ("tile", counts), "pixels": ("tile", np.full(tiles.size, pixels, dtype=np.int64)),
        "counts_per_pixel": ("tile", cpp), "live_time": ("tile", live), "counts_per_pixel_per_s": ("tile", rate),
        "z_dose": ("tile", z_dose), "z_rate": ("tile", z_rate),
    }
    flags = {"low_dose": z_dose < -threshold, "low_rate": z_rate < -threshold}
    attrs = {"threshold": float(threshold), "store": plan.store, "store_uuid": plan.store_uuid,
             "min_spread": float(min_spread),
             "method": "modified z-score (Iglewicz & Hoaglin 1993): (x - median) / max(1.4826 MAD, min_spread) of log "
                       "values; low dose and low rate one-sided low, the deviance per pixel one-sided high",
             "live_time_reason": why_live, "passes": 0}
    if results is not None:
        res = open_results(results, group)
        S = _check_spectra(res, montage, results, group)
        stored = res.get("deviance")
        if stored is not None and stored.dims == ("tile",) and [int(t) for t in stored["tile"].values] == list(plan.tiles):
            d = np.asarray(stored.values, dtype=np.float64)  # the model's own residual pass (MCR's): not read again
            passes = 0
        else:
            dev = tile_deviance(plan, map_source(results, group, "abundances", plan), S, label=f"tile QC deviance ({group})")
            d = np.asarray(dev["deviance"].values, dtype=np.float64)
            passes = 1
        with np.errstate(divide="ignore", invalid="ignore"):
            per_count = d / counts
        with np.errstate(divide="ignore", invalid="ignore"):
            z_res = robust_z(np.log(d / pixels), min_spread)
        data.update(deviance=("tile", d), deviance_per_pixel=("tile", d / pixels),
                    deviance_per_count=("tile", per_count), z_residual=("tile", z_res))
        flags["high_residual"] = z_res > threshold
        attrs.update(results=str(Path(results).resolve()), group=group, passes=passes)
    flagged = np.zeros(tiles.size, dtype=bool)
    for name, f in flags.items():
        data[name] = ("tile", np.asarray(f, dtype=bool))  # NaN scores compare False: never flagged
        flagged |= f
    data["flagged"] = ("tile", flagged)
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    units = {"counts": "counts", "counts_per_pixel": "counts per pixel", "live_time": "s",
             "counts_per_pixel_per_s": "counts per pixel per s of live time", "deviance": "nats x 2"}
    for k, u in units.items():
        if k in ds:
            ds[k].attrs["units"] = u
    return ds


def format_qc(ds: xr.Dataset) -> str:
    """Table lines of a :func:`tile_qc` result: one line per tile, the flagged tiles marked, then a summary.

    Parameters
    ----------
    ds : xarray.Dataset
        The result of :func:`tile_qc`.

    Returns
    -------
    str
        Lines (no trailing newline): a header, one row per tile (tile,
        row/col, counts per pixel, z of the dose, counts per pixel per s and
        its z where known, deviance per pixel and its z where computed,
        flags), and a summary line with the threshold and the flagged tiles.

    Raises
    ------
    ParameterError
        ``ds`` is not a tile QC result.
    """
    need = ("counts_per_pixel", "z_dose", "flagged")
    if not isinstance(ds, xr.Dataset) or any(v not in ds for v in need):
        raise ParameterError(f"format_qc needs the Dataset of xsi_dask.qc.tile_qc (with {need}); got "
                             f"{type(ds).__name__}")
    has_rate = bool(np.isfinite(ds["counts_per_pixel_per_s"].values).any()) if "counts_per_pixel_per_s" in ds else False
    has_res = "deviance_per_pixel" in ds
    head = f"{'tile':>5} {'row':>4} {'col':>4} {'counts/px':>10} {'z dose':>7}"
    if has_rate:
        head += f" {'counts/px/s':>12} {'z rate':>7}"
    if has_res:
        head += f" {'dev/px':>9} {'z resid':>7}"
    head += "  flags"
    lines = [head]
    names = [n for n in ("low_dose", "low_rate", "high_residual") if n in ds]

    def z(v: float) -> str:
        return f"{v:7.2f}" if np.isfinite(v) else f"{'-inf' if v < 0 else ('inf' if v > 0 else 'nan'):>7}"

    for i, t in enumerate(ds["tile"].values):
        row = int(ds["row"].values[i]) if "row" in ds.coords else -1
        col = int(ds["col"].values[i]) if "col" in ds.coords else -1
        line = f"{int(t):>5} {row:>4} {col:>4} {ds['counts_per_pixel'].values[i]:>10.4g} {z(ds['z_dose'].values[i])}"
        if has_rate:
            line += f" {ds['counts_per_pixel_per_s'].values[i]:>12.4g} {z(ds['z_rate'].values[i])}"
        if has_res:
            line += f" {ds['deviance_per_pixel'].values[i]:>9.4g} {z(ds['z_residual'].values[i])}"
        fl = [n.replace("_", " ") for n in names if bool(ds[n].values[i])]
        line += "  " + (", ".join(fl) if fl else "-")
        lines.append(line)
    bad = [int(t) for t, f in zip(ds["tile"].values, ds["flagged"].values) if f]
    lines.append(f"{len(bad)} of {ds.sizes['tile']} tiles flagged (|modified z| > {ds.attrs.get('threshold', 3.5):g})"
                 + (f": {bad}" if bad else ""))
    if not has_rate and ds.attrs.get("live_time_reason"):
        lines.append(f"no live-time-normalised dose: {ds.attrs['live_time_reason']}")
    return "\n".join(lines)
