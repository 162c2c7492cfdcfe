"""Issue #13's figures in one run: phase recovery of the rotation, MCR and NMF, k-means segments, NMF with known
spectra, Cliff-Lorimer compositions and the tile QC, on simulated montages with ground truth.

Per preset (grade91_replica, am_aluminum) and seed: 2 x 2 tiles (default 128 x 128 pixels, 2048 channels, 50
counts per pixel); the analysis view without the zero peak; the Poisson-scaled SVD (gram, k = the true number of
phases) written to a results store; :func:`xsi_dask.rotate`, :func:`xsi_dask.mcr` (with its residual pass),
free KL NMF (200 iterations at most) and NMF with the true spectra of the two largest particle phases fixed;
k-means segments (k = the phases) of the SVD's top-k scores and of the NMF abundance fractions; Cliff-Lorimer
(exspy, the simulator's k-factors) of the true phase spectra and of the MCR endmembers. Endmembers are matched
to phases by the Hungarian algorithm on the spectral angle; maps are compared with each phase's expected counts
(Pearson r); segments with the true dominant phase on pixels where one phase holds >= 0.9 (adjusted Rand
index); compositions in at.% over each phase's major elements (Z >= 11, >= 5 wt.%). The tile QC: 3 x 3 tiles of
64 x 64 with one tile at a tenth of the dose, and a uniform montage, per seed.

    make bench-analyses          # python benchmarks/bench_analyses.py --out docs/benchmarks-analyses.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import machine  # noqa: E402

import xsi_dask  # noqa: E402
from xsi_dask.io.results import open_results, write_results  # noqa: E402
from xsi_dask.montage.prepare import analysis_view  # noqa: E402
from xsi_dask.testing.presets import PRESETS  # noqa: E402
from xsi_dask.testing.simulate import open_truth, simulate  # noqa: E402

TARGET_DEG, TARGET_R, TARGET_ARI, TARGET_AT = 3.0, 0.95, 0.9, 2.0


def match(truth, view, spectra: np.ndarray, maps: np.ndarray) -> dict[str, tuple[float, float, int]]:
    """{phase: (angle in degrees, Pearson r of the map, component)}, components matched by the Hungarian algorithm."""
    k = truth.sizes["phase"]
    S = truth.spectra.values[:, np.searchsorted(truth.energy.values, view.energy.values)]
    cos = (S / np.linalg.norm(S, axis=1, keepdims=True)) @ (spectra / np.linalg.norm(spectra, axis=1, keepdims=True)).T
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    phase, comp = linear_sum_assignment(angle)
    A = truth.expected_counts.values.reshape(-1, k)
    B = maps.reshape(-1, k)
    return {str(truth.phase.values[p]): (float(angle[p, c]), float(np.corrcoef(A[:, p], B[:, c])[0, 1]), int(c))
            for p, c in zip(phase, comp)}


def majors(composition: dict[str, float]) -> dict[str, float]:
    """The phase's major elements (Z >= 11, >= 5 wt.%) in at.%, normalised over them."""
    import xraydb

    sel = {el: w for el, w in composition.items() if xraydb.atomic_number(el) >= 11 and w >= 0.05}
    mol = {el: w / xraydb.atomic_mass(el) for el, w in sel.items()}
    total = sum(mol.values())
    return {el: 100 * v / total for el, v in mol.items()}


def cliff_lorimer_errors(preset, energy: np.ndarray, spectra: np.ndarray, phases: list[str]) -> dict[str, float]:
    """{phase: largest |at.% - truth| over its major elements}, Cliff-Lorimer with the simulator's k-factors."""
    from xsi_dask.quantify import element_lines, net_intensities, quantify
    from xsi_dask.testing.kfactors import simulator_kfactors

    pre = PRESETS[preset]
    comp = {p.name: p.composition for p in pre.phases}
    out = {}
    for name, spectrum in zip(phases, spectra):
        truth = majors(comp[name])
        if len(truth) < 2:
            continue  # one major element: 100 % by construction
        table = element_lines(sorted(truth), energy, beam_energy=pre.beam_kev)
        k = simulator_kfactors(table, beam_kev=pre.beam_kev, energy_axis=energy)
        at = quantify(net_intensities(spectrum[None, :], table), k, lines=list(table.lines))["atomic_percent"].values[0]
        els = [str(e) for e in table.elements]
        out[name] = max(abs(float(at[els.index(el)]) - v) for el, v in truth.items())
    return out


def ari_dominant(truth, labels: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    A = truth.abundances.values
    dom = (A.max(-1) >= 0.9).ravel()
    return float(adjusted_rand_score(A.argmax(-1).ravel()[dom], labels.ravel()[dom]))


def recovery(preset: str, seed: int, tile: int, channels: int, work: Path) -> dict:
    d = work / f"{preset}-{seed}"
    simulate(d / "m.zarr", preset=preset, tiles=(2, 2), tile_shape=(tile, tile), channels=channels, counts_per_pixel=50,
             seed=seed, progress=False)
    truth = open_truth(d / "m.zarr")
    k = truth.sizes["phase"]
    view = analysis_view(xsi_dask.open_montage(d / "m.zarr"))
    r = d / "r.zarr"
    out: dict = {"preset": preset, "seed": seed, "k": k, "t": {}}

    def timed(name, fn, *a, **kw):
        t = time.perf_counter()
        v = fn(*a, **kw)
        out["t"][name] = time.perf_counter() - t
        return v

    write_results(r, {"svd": timed("svd", xsi_dask.decompose, view, k, solver="gram")})
    rot = timed("rotate", xsi_dask.rotate, r, k)
    m = timed("mcr", xsi_dask.mcr, r, k)
    out["mcr_iter"], out["mcr_passes"], out["rotate_map_passes"] = m.attrs["n_iter"], m.attrs["passes"], rot.attrs["map_passes"]
    out["mcr_iteration_passes_over_counts"] = m.attrs["iteration_passes_over_counts"]
    write_results(r, {"rotation": rot, "mcr": m})
    rot, m = open_results(r, "rotation"), open_results(r, "mcr")
    out["rotation"] = match(truth, view, np.maximum(rot.loadings.values, 0) + 1e-12, np.maximum(rot.scores.values, 0))
    out["mcr"] = match(truth, view, m.spectra.values, m.abundances.values)
    n = timed("nmf", xsi_dask.nmf, view, k, max_iter=200, out=r)
    out["nmf"] = match(truth, view, n.spectra.values, n.abundances.values)
    # known spectra: the two largest particle phases fixed to their true spectra
    order = np.argsort([-p.area_fraction for p in PRESETS[preset].particles])[:2] + 1
    fixed = truth.spectra.isel(phase=list(order)).sel(energy=view.energy.values).rename(phase="component")
    kn = timed("nmf_known", xsi_dask.nmf, view, k, max_iter=200, fixed_spectra=fixed.drop_vars("component"))
    out["known_fixed"] = [str(truth.phase.values[p]) for p in order]
    out["nmf_known"] = match(truth, view, kn.spectra.values, kn.abundances.values)
    # segments of the SVD's scores and of the NMF abundance fractions
    for group in ("svd", "nmf"):
        seg = timed(f"segment_{group}", xsi_dask.segment, r, k, group=group,
                    n_components=k if group == "svd" else None, seed=0)
        out[f"ari_{group}"] = ari_dominant(truth, seg["labels"].values)
    # Cliff-Lorimer of the true spectra and of the MCR endmembers matched to the phases
    e = view.energy.values
    phases = [str(p) for p in truth.phase.values]
    out["cl_true"] = cliff_lorimer_errors(preset, e, truth.spectra.sel(energy=e).values, phases)
    S = m.spectra.values
    out["cl_mcr"] = cliff_lorimer_errors(preset, e, np.stack([S[out["mcr"][p][2]] for p in phases]), phases)
    shutil.rmtree(d, ignore_errors=True)
    return out


def qc_case(seed: int, low: int | None, work: Path) -> dict:
    from xsi_dask.qc import tile_qc

    d = work / f"qc-{seed}-{low}"
    simulate(d / "m.zarr", preset="grade91_replica", tiles=(3, 3), tile_shape=(64, 64), channels=1024, counts_per_pixel=50,
             seed=seed, low_count_tile=low, progress=False)
    view = analysis_view(xsi_dask.open_montage(d / "m.zarr"))
    xsi_dask.nmf(view, 6, max_iter=50, out=d / "r.zarr")
    qc = tile_qc(view, results=d / "r.zarr")
    flagged = [int(t) for t in qc.tile.values[qc.flagged.values]]
    shutil.rmtree(d, ignore_errors=True)
    return {"seed": seed, "low_count_tile": low, "flagged": flagged, "z_dose_min": float(np.nanmin(qc.z_dose.values)),
            "z_residual_max": float(np.nanmax(qc.z_residual.values))}


def _cell(x: tuple) -> str:
    return f"{x[0]:.1f} / {x[1]:.2f}"


def report(runs: list[dict], qcs: list[dict], args, seconds: float) -> str:
    lines = [f"# Issue #13 analyses against the simulator's truth\n\nMeasured on: {machine()}.\nCommand: `make bench-analyses` "
             f"(`benchmarks/bench_analyses.py {' '.join(sys.argv[1:])}`), {seconds / 60:.0f} min.\n",
             __doc__.split("\n\n")[1].replace("\n", " ") + "\n"]
    for preset in args.presets:
        rs = [r for r in runs if r["preset"] == preset]
        phases = list(rs[0]["mcr"])
        lines += [f"\n## {preset} (k = {rs[0]['k']}; angle in degrees / r, seeds {', '.join(str(r['seed']) for r in rs)})\n",
                  "| phase | rotation (clipped) | MCR | free NMF | NMF, " + " and ".join(rs[0]["known_fixed"]) + " fixed |",
                  "|---|---|---|---|---|"]
        for p in phases:
            fixed = p in rs[0]["known_fixed"]
            lines.append(f"| {p} | " + " | ".join(
                ", ".join(_cell(r[m][p]) for r in rs) if not (m == "nmf_known" and fixed) else "fixed"
                for m in ("rotation", "mcr", "nmf", "nmf_known")) + " |")
        met = {m: sum(r[m][p][0] <= TARGET_DEG and r[m][p][1] >= TARGET_R for r in rs for p in phases)
               for m in ("rotation", "mcr", "nmf")}
        free = [p for p in phases if p not in rs[0]["known_fixed"]]
        mean = {m: (np.mean([r[m][p][0] for r in rs for p in free]), np.mean([r[m][p][1] for r in rs for p in free]))
                for m in ("nmf", "nmf_known")}
        lines += ["",
                  f"- Target (every phase within {TARGET_DEG:g} degrees and r >= {TARGET_R}): met for "
                  + ", ".join(f"{met[m]} of {len(phases) * len(rs)} phase-seed pairs by {m}" for m in met) + ".",
                  f"- Known spectra, the free phases' mean angle / r: {mean['nmf_known'][0]:.1f} / {mean['nmf_known'][1]:.3f} "
                  f"against free NMF's {mean['nmf'][0]:.1f} / {mean['nmf'][1]:.3f}.",
                  "- k-means ARI (dominant pixels, target >= 0.9): SVD scores "
                  + ", ".join(f"{r['ari_svd']:.3f}" for r in rs) + "; NMF fractions "
                  + ", ".join(f"{r['ari_nmf']:.3f}" for r in rs) + ".",
                  "- Cliff-Lorimer, largest |at.% - truth| per phase (target <= 2): true spectra "
                  + "; ".join(f"{p} {v:.2f}" for p, v in rs[0]["cl_true"].items()) + "; MCR endmembers (seeds) "
                  + "; ".join(f"{p} " + "/".join(f"{r['cl_mcr'][p]:.1f}" for r in rs) for p in rs[0]["cl_mcr"]) + ".",
                  "- MCR: " + ", ".join(f"{r['mcr_iter']} iterations" for r in rs) + "; passes over the counts during the "
                  f"iterations {sorted({r['mcr_iteration_passes_over_counts'] for r in rs})}, in all "
                  f"{sorted({r['mcr_passes'] for r in rs})} (the residual); the rotation "
                  f"{sorted({r['rotate_map_passes'] for r in rs})} pass(es) over the stored scores, none over the counts.",
                  "- Wall (s, seed by seed): " + "; ".join(f"{name} " + "/".join(f"{r['t'][name]:.1f}" for r in rs)
                                                           for name in rs[0]["t"]) + "."]
    lines += ["\n## Tile QC (grade91_replica, 3 x 3 tiles of 64 x 64, 1024 channels)\n",
              "| seed | low-count tile | flagged | min z of log dose | max z of the residual |", "|---|---|---|---|---|"]
    lines += [f"| {q['seed']} | {q['low_count_tile']} | {q['flagged']} | {q['z_dose_min']:.1f} | {q['z_residual_max']:.1f} |"
              for q in qcs]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--channels", type=int, default=2048)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--presets", nargs="+", default=["grade91_replica", "am_aluminum"])
    p.add_argument("--out", default=None, help="the markdown report (default: print only)")
    a = p.parse_args()
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        runs = []
        for preset in a.presets:
            for seed in a.seeds:
                runs.append(recovery(preset, seed, a.tile, a.channels, Path(work)))
                print(json.dumps(runs[-1]), flush=True)
        qcs = [qc_case(seed, low, Path(work)) for seed in a.seeds for low in (4, None)]
    text = report(runs, qcs, a, time.perf_counter() - t0)
    if a.out:
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
