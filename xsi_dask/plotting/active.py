"""Figures and report of an automated experiment (``xsi-dask explore``, :mod:`xsi_dask.active.explore`).

* :func:`draw_visits` - the structural image with the measured pixels coloured
  by step (the random start marked apart);
* :func:`draw_final_maps` - prediction, uncertainty and acquisition of the final
  fit, and the true scalar map of the pre-acquired data;
* :func:`draw_discovery` - top-1 % recall and best true value found against
  the number of measurements, each method (mean over seeds, the band between
  the lowest and highest seed when there are several) against random sampling;
* :func:`write_explore_report` - the figures and ``report.html`` of a record.

As in :mod:`xsi_dask.plotting.figures`, figures are built on
:class:`matplotlib.figure.Figure` directly (no pyplot, no backend switch).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ..active.explore import open_explore
from .figures import colour_limits, save
from .formatting import format_number, format_seconds
from .report import write_report

__all__ = ["EXPLORE_FIGURES", "METHOD_LABELS", "draw_discovery", "draw_final_maps", "draw_visits", "random_expected_recall",
           "summary_rows", "write_explore_report"]

METHOD_LABELS = {"dkl": "DKL", "random": "random", "gp": "GP(y, x)"}
_COLOURS = {"dkl": "C0", "random": "0.4", "gp": "C1"}
EXPLORE_FIGURES = ("visits.png", "final_maps.png", "discovery.png")
"""The figure files :func:`write_explore_report` writes into ``figures/``."""


def _label(method: str, acquisition: str) -> str:
    return "random" if method == "random" else f"{METHOD_LABELS.get(method, method)} + {acquisition}"


def draw_visits(image: np.ndarray, run: xr.Dataset, *, title: str = "") -> Figure:
    """The structural image with the measured pixels: the random start as white crosses, then dots coloured by step.

    Parameters
    ----------
    image : ndarray of shape (H, W)
        The structural image (any units; shown in grey, 0.5-99.5 % percentiles).
    run : xarray.Dataset
        A run (``visited_y``, ``visited_x``, ``initial`` on ``step``).
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    H, W = image.shape
    fig = Figure(figsize=(6.4, 0.6 + 5.2 * min(2.0, max(0.5, H / W))))
    ax = fig.add_subplot()
    lo, hi = colour_limits(image)
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    y, x, init = run["visited_y"].values, run["visited_x"].values, run["initial"].values.astype(bool)
    steps = np.arange(1, y.size + 1)  # the n-th measurement
    ax.scatter(x[init], y[init], marker="x", s=36, c="white", linewidths=1.5, label=f"random start ({int(init.sum())})")
    sc = ax.scatter(x[~init], y[~init], c=steps[~init], cmap="viridis", s=30, edgecolors="black", linewidths=0.5,
                    label=f"chosen ({int((~init).sum())})")
    if (~init).any():
        cb = fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
        cb.set_label("measurement number")
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    return fig


def _panel(fig: Figure, ax, img: np.ndarray, title: str, cmap: str, run: xr.Dataset | None = None) -> None:
    lo, hi = colour_limits(img)
    im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    if run is not None:
        ax.scatter(run["visited_x"].values, run["visited_y"].values, s=6, c="red", marker=".", linewidths=0)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cb.ax.tick_params(labelsize=7)


def draw_final_maps(run: xr.Dataset, truth: np.ndarray | None = None, *, title: str = "") -> Figure:
    """Prediction (measured pixels in red), uncertainty and acquisition of the final fit, and the true map.

    Parameters
    ----------
    run : xarray.Dataset
        A run with maps (``prediction``, ``uncertainty``, ``acquisition`` on ``(y, x)``).
    truth : ndarray of shape (H, W), optional
        The true scalar map (pre-acquired data); a fourth panel.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
        The colour scales span the 0.5-99.5 % percentiles of each map; the
        acquisition's -inf at measured pixels is left blank.
    """
    panels = [("prediction (final fit)", run["prediction"].values, "viridis", run),
              ("uncertainty (predictive std)", run["uncertainty"].values, "magma", None),
              ("acquisition (next choice)", np.where(np.isfinite(run["acquisition"].values), run["acquisition"].values, np.nan),
               "cividis", None)]
    if truth is not None:
        panels.append(("true value (every pixel)", truth, "viridis", None))
    H, W = run["prediction"].shape
    ncol = 2
    nrow = int(np.ceil(len(panels) / ncol))
    fig = Figure(figsize=(8.0, 0.8 + nrow * 3.0 * min(2.0, max(0.5, H / W))))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax, (name, img, cmap, overlay) in zip(axes.flat, panels, strict=False):
        _panel(fig, ax, np.asarray(img, dtype=np.float64), name, cmap, overlay)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return fig


def draw_discovery(runs: Mapping[str, Mapping[int, xr.Dataset]], *, acquisition: str, true_max: float | None = None,
                   title: str = "") -> Figure:
    """Discovery curves: top-1 % recall and best true value found after each measurement, per method.

    Parameters
    ----------
    runs : mapping
        ``runs[method][seed]`` -> a run with ``recall`` and ``best_true`` on ``step``.
    acquisition : str
        The acquisition's name (for the legend).
    true_max : float, optional
        The largest true value (a dashed line on the right panel).
    title : str

    Returns
    -------
    matplotlib.figure.Figure
        Mean over seeds; with several seeds, a band from the lowest to the highest seed.
    """
    fig = Figure(figsize=(10.0, 4.0))
    ax_r, ax_b = fig.subplots(1, 2)
    for method, per_seed in runs.items():
        seeds = sorted(per_seed)
        n_init = int(per_seed[seeds[0]]["initial"].values.sum())
        for ax, var in ((ax_r, "recall"), (ax_b, "best_true")):
            curves = np.stack([per_seed[s][var].values for s in seeds])
            k = np.arange(1, curves.shape[1] + 1)
            colour = _COLOURS.get(method, None)
            ax.plot(k, curves.mean(0), color=colour, label=f"{_label(method, acquisition)} ({len(seeds)} seed{'s' * (len(seeds) > 1)})")
            if len(seeds) > 1:
                ax.fill_between(k, curves.min(0), curves.max(0), color=colour, alpha=0.2, linewidth=0)
        ax_r.axvline(n_init + 0.5, color="0.7", linestyle=":", linewidth=1)
        ax_b.axvline(n_init + 0.5, color="0.7", linestyle=":", linewidth=1)
    if true_max is not None:
        ax_b.axhline(true_max, color="k", linestyle="--", linewidth=0.8, label="largest true value")
    ax_r.set_xlabel("measurements")
    ax_r.set_ylabel("top-1 % pixels found (recall)")
    ax_b.set_xlabel("measurements")
    ax_b.set_ylabel("best true value measured")
    ax_r.legend(fontsize=8)
    ax_b.legend(fontsize=8)
    fig.suptitle(title + ("  (dotted: end of the random start)" if title else "dotted: end of the random start"), fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.88, wspace=0.25)
    return fig


def random_expected_recall(budget: int, n_pixels: int, n_at_or_above: int, n_top: int) -> float:
    """Random sampling's expected top-1 % recall after ``budget`` measurements.

    Parameters
    ----------
    budget : int
        Measurements.
    n_pixels : int
        Candidate pixels.
    n_at_or_above : int
        Candidates at or above the top-fraction threshold (ties included).
    n_top : int
        The top fraction's size, the most the recall counts.

    Returns
    -------
    float
        ``min(budget * n_at_or_above / n_pixels, n_top) / n_top``: the expected
        number of those pixels among ``budget`` uniform draws without
        replacement, capped at ``n_top`` as :func:`~xsi_dask.active.explore.discovery`
        caps it (the cap makes it an upper bound of the expectation of the capped count).
    """
    return min(budget * n_at_or_above / n_pixels, n_top) / n_top


def _pm(values: list[float], unit: str = "") -> str:
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).any():
        return "n/a"
    if v.size == 1:
        return format_number(v[0], unit)
    return f"{format_number(np.nanmean(v), unit)} ± {format_number(np.nanstd(v), unit)} ({v.size} seeds)"


def summary_rows(runs: Mapping[str, Mapping[int, xr.Dataset]], *, acquisition: str) -> tuple[dict, dict]:
    """The report's tables: final scores and per-step timing, one row per method.

    Parameters
    ----------
    runs : mapping
        ``runs[method][seed]`` -> a run of the record (:func:`~xsi_dask.active.explore.open_explore`),
        with the ``final_*`` and ``run_seconds`` attributes and, for a model's run,
        ``fit_seconds``, ``predict_seconds``, ``acquire_seconds`` on ``step``.
    acquisition : str
        The acquisition's name (for the row labels).

    Returns
    -------
    scores : dict
        ``"<method>" -> "recall ...; best ...; RMSE ...; 95 % coverage ..."``, mean ± std over seeds.
    timing : dict
        ``"<method>" -> "fit median ... (max ...); predict ...; acquire ...; run ..."`` over the model's steps.
    """
    scores, timing = {}, {}
    for method, per_seed in runs.items():
        label = _label(method, acquisition)
        get = {k: [float(ds.attrs.get(f"final_{k}", np.nan)) for ds in per_seed.values()]
               for k in ("recall", "best", "rmse", "coverage", "coverage_latent")}
        scores[label] = (f"top-1 % recall {_pm(get['recall'])}; best value {_pm(get['best'])}; RMSE (unmeasured) "
                         f"{_pm(get['rmse'])}; 95 % predictive interval coverage (unmeasured) {_pm(get['coverage'])}; "
                         f"latent 95 % interval coverage {_pm(get['coverage_latent'])}")
        runtime = [float(ds.attrs.get("run_seconds", np.nan)) for ds in per_seed.values()]
        if "fit_seconds" in next(iter(per_seed.values())):
            parts = []
            for var, name in (("fit_seconds", "fit"), ("predict_seconds", "predict"), ("acquire_seconds", "acquire")):
                v = np.concatenate([ds[var].values for ds in per_seed.values()])
                v = v[np.isfinite(v)]
                if v.size:
                    parts.append(f"{name} median {format_seconds(np.median(v))} (max {format_seconds(v.max())})")
            timing[label] = "; ".join(parts) + f"; whole run {format_seconds(np.mean(runtime))} per seed"
        else:
            timing[label] = f"no model; whole run {format_seconds(np.mean(runtime))} per seed"
    return scores, timing


def write_explore_report(record: str | Path, out: str | Path, *, title: str | None = None) -> Path:
    """Figures (``out/figures/``) and ``out/report.html`` of an ``explore.zarr`` record.

    Parameters
    ----------
    record : path
        The record (:func:`xsi_dask.active.explore.explore`).
    out : path
        The folder of the report (created if missing).
    title : str, optional
        Default: "xsi_dask explore: <scalarizer>".

    Returns
    -------
    Path
        The report.

    Raises
    ------
    StoreFormatError
        ``record`` is not a record of ``xsi-dask explore``.
    OSError
        A file cannot be written (the caller maps it to the package's error).
    """
    truth, runs, params = open_explore(record)
    out = Path(out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    acq = params["acquisition"]
    true = truth["true_value"].values
    main = runs["dkl"][min(runs["dkl"])]
    written = []
    written.append(save(draw_visits(truth["image"].values, main,
                                    title=f"{params['image']}: pixels measured by DKL + {acq}, seed {main.attrs['seed']}"),
                        figs / EXPLORE_FIGURES[0]))
    written.append(save(draw_final_maps(main, true, title=f"final fit on {params['budget']} measurements "
                                                         f"(seed {main.attrs['seed']}); {params['scalarizer']}"),
                        figs / EXPLORE_FIGURES[1]))
    written.append(save(draw_discovery(runs, acquisition=acq, true_max=float(np.nanmax(true)),
                                       title=f"discovery of the top {truth.attrs['top_fraction']:.0%} "
                                             f"({truth.attrs['n_top']} pixels)"), figs / EXPLORE_FIGURES[2]))
    scores, timing = summary_rows(runs, acquisition=acq)
    parameters = {
        "inputs": ", ".join(params["inputs"]),
        "structural image": params["image"],
        "features": (f"{params['window']} x {params['window']} patches of {params['structure']!r}" if params["structure"] else "")
                    + (" + " if params["structure"] and params["features"] else "")
                    + (f"{params['feature_group'] or 'reduced'} features of {params['features']}" if params["features"] else "")
                    + f" ({params['feature_columns']} columns)",
        "spectra (measured)": params["spectra"],
        "scalarizer": f"{params['scalarizer']} (axis in {params['energy_units']})",
        "acquisition": acq,
        "candidates": f"{params['n_candidates']} pixels ({params['shape'][0]} x {params['shape'][1]})",
        "budget": params["budget"],
        "random start (n_init)": f"{params['n_init']}" + ("" if params["n_init_given"] else " (0.5 % of the pixels, at least 5)"),
        "seeds": len(params["seeds"]),
        "model": params["model"],
        "Adam steps per fit": params["steps"] if params["steps"] is not None else "dkl_factory's default",
        "methods": ", ".join(_label(m, acq) for m in params["methods"]),
        "true top 1 %": f"{truth.attrs['n_top']} pixels, value >= {format_number(truth.attrs['top_threshold'])} "
                        f"({truth.attrs['n_at_or_above']} pixels at or above it, ties included); "
                        f"largest {format_number(float(np.nanmax(true)))}",
    }
    n_top, n_at, n_cand = int(truth.attrs["n_top"]), int(truth.attrs["n_at_or_above"]), int(params["n_candidates"])
    expected = random_expected_recall(params["budget"], n_cand, n_at, n_top)
    scores["random sampling, expected"] = (f"top-1 % recall {format_number(expected)} at the budget of {params['budget']} "
                                           f"(min(budget x {n_at} at or above the threshold / {n_cand} pixels, {n_top}) "
                                           f"/ {n_top})")
    notes = ["the random baseline starts from the same random pixels as the model's run of each seed; "
             "RMSE and coverage are over the pixels the run did not measure"]
    report = out / "report.html"
    return write_report(
        report, title=title or f"xsi_dask explore: {params['scalarizer']}",
        subtitle=f"{params['budget']} measurements of {params['n_candidates']} pixels, {acq}",
        links=[("explore.zarr", Path(record))],
        sections=[("Parameters", parameters, []),
                  ("Results (final)", scores, [p for p in written if p.name == EXPLORE_FIGURES[2]], notes),
                  ("Per-step timing", timing, []),
                  ("Measured pixels and maps", {}, [p for p in written if p.name != EXPLORE_FIGURES[2]])],
    )
