"""Spatial-simplicity rotation and factored MCR-ALS against the simulator's truth, with free NMF for comparison.

For each preset and seed: simulate 2 x 2 tiles (default 128 x 128 pixels, 2048
channels, 50 counts per pixel), the analysis view without the zero peak, the
Poisson-scaled SVD (gram, k = the true number of phases) written to a results
store, then :func:`xsi_dask.rotate`, :func:`xsi_dask.mcr` (to convergence, with
its deviance pass) and ``xsi_dask.nmf(view, k, max_iter=200)``. Each endmember
is matched to a true phase by the Hungarian algorithm on the spectral angles;
the maps are compared with the expected counts of each phase (Pearson r). The
rotation is scored on its loadings and maps with negative entries set to 0.
One JSON line per run on stdout; docs/rotation-mcr.md has the table.

    python benchmarks/bench_rotate_mcr.py [--tile 128] [--channels 2048] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

import xsi_dask
from xsi_dask.io.results import open_results, write_results
from xsi_dask.montage.prepare import analysis_view
from xsi_dask.testing.simulate import open_truth, simulate


def match(truth, view, spectra: np.ndarray, maps: np.ndarray) -> dict:
    """{phase: (angle in degrees, Pearson r of the map)} with components matched by the Hungarian algorithm."""
    k = truth.sizes["phase"]
    S = truth.spectra.values[:, np.searchsorted(truth.energy.values, view.energy.values)]
    cos = (S / np.linalg.norm(S, axis=1, keepdims=True)) @ (spectra / np.linalg.norm(spectra, axis=1, keepdims=True)).T
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    phase, comp = linear_sum_assignment(angle)
    A = truth.expected_counts.values.reshape(-1, k)
    B = maps.reshape(-1, k)
    return {str(truth.phase.values[p]): (round(float(angle[p, c]), 2), round(float(np.corrcoef(A[:, p], B[:, c])[0, 1]), 3))
            for p, c in zip(phase, comp)}


def run(preset: str, tile: int, channels: int, seed: int, work: Path) -> dict:
    d = work / f"{preset}-{seed}"
    simulate(d / "m.zarr", preset=preset, tiles=(2, 2), tile_shape=(tile, tile), channels=channels, counts_per_pixel=50,
             seed=seed, progress=False)
    truth = open_truth(d / "m.zarr")
    k = truth.sizes["phase"]
    view = analysis_view(xsi_dask.open_montage(d / "m.zarr"))
    out: dict = {"preset": preset, "tile": tile, "channels": channels, "seed": seed, "k": k}
    t = time.perf_counter()
    write_results(d / "r.zarr", {"svd": xsi_dask.decompose(view, k, solver="gram")})
    out["t_svd"] = time.perf_counter() - t
    t = time.perf_counter()
    rot = xsi_dask.rotate(d / "r.zarr", k)
    out["t_rotate"] = time.perf_counter() - t
    write_results(d / "r.zarr", {"rotation": rot})
    rot = open_results(d / "r.zarr", "rotation")
    out["rotation"] = match(truth, view, np.maximum(rot.loadings.values, 0) + 1e-12, np.maximum(rot.scores.values, 0))
    t = time.perf_counter()
    m = xsi_dask.mcr(d / "r.zarr", k)
    out["t_mcr"] = time.perf_counter() - t
    out.update(mcr_iter=m.attrs["n_iter"], mcr_converged=m.attrs["converged"], t_mcr_residual=m.attrs["pass_log"][-1][2])
    write_results(d / "r.zarr", {"mcr": m})
    m = open_results(d / "r.zarr", "mcr")
    out["mcr"] = match(truth, view, m.spectra.values, m.abundances.values)
    t = time.perf_counter()
    n = xsi_dask.nmf(view, k, max_iter=200)
    out["t_nmf"] = time.perf_counter() - t
    out["nmf"] = match(truth, view, n.spectra.values, n.abundances.values)
    shutil.rmtree(d, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--channels", type=int, default=2048)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--presets", nargs="+", default=["grade91_replica", "am_aluminum"])
    a = p.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as work:
        for seed in a.seeds:
            for preset in a.presets:
                print(json.dumps(run(preset, a.tile, a.channels, seed, Path(work))), flush=True)


if __name__ == "__main__":
    main()
