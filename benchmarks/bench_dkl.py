"""Discovery benchmark of deep kernel learning active learning (issue #12 item 8; `make bench-dkl`).

The protocol of the DKL papers (Roccapriore, Ziatdinov & Kalinin, Adv. Sci. 9, 2203422, 2022):
start from 0.5 % of the pixels drawn at random (at least 5), then let the method choose pixels
one at a time up to a budget of 3 % of the pixels; repeat over seeds (the initial draw and the
model's seeds change, the scene does not). Every method of a task runs in this one run, on
the same scene and the same seeds:

* **DKL + EI**: :class:`xsi_dask.active.model.DKLModel` on the structural patches, expected
  improvement (:func:`xsi_dask.active.acquisition.expected_improvement`), through
  :func:`xsi_dask.active.loop.run_experiment`;
* **GP(y, x) + EI**: :class:`~xsi_dask.active.model.PlainGP` on the pixel coordinates, the
  same acquisition (the baseline without structure);
* **DKL + random**: the DKL model, pixels drawn at random (its prediction is the model's, the
  choice is not);
* **random**: pixels drawn at random, no model (recall and best value only).

Read, against the number of measurements: the fraction of the top-1 % pixels (by the true
scalar; the ceil(1 %) largest values) that were measured; the best true value measured; and,
after the last fit (on all the measurements), the RMSE of the predictive mean and the coverage
of the true scalar on the unmeasured pixels by the 95 % predictive interval (with the fitted
noise) and by the 95 % interval of the latent function. Means over seeds with a 95 % t-interval.

Every run goes through the package's own pieces: ``dkl_factory`` / ``plain_gp_factory`` with their
defaults and ``make_acquisition("ei")`` (``best_f`` the best measured value) or ``"random"``. The runs
are spread over ``--jobs`` worker processes of one torch thread each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import ROOT, machine, run_isolated  # noqa: E402

METHODS = ("DKL + EI", "GP(y, x) + EI", "DKL + random", "random")

DOC = """The protocol of the DKL papers (Roccapriore, Ziatdinov & Kalinin, Adv. Sci. 9, 2203422, 2022): start
from 0.5 % of the pixels drawn at random (at least 5), then let the method choose pixels one at a time up to
a budget of 3 % of the pixels; repeat over seeds (the initial draw and the model's seeds change, the scene
does not). Methods, all through `xsi_dask.active.loop.run_experiment` but the last:

* **DKL + EI**: `dkl_factory` (MLP patch-64-32-2, exact GP with RBF-ARD on the embedding, log-normal priors on the
  length scales and the noise, each fit from its seeded start) on the HAADF patches, `make_acquisition("ei")`
  (expected improvement over the best measured value);
* **GP(y, x) + EI**: `PlainGP` on the pixel coordinates, the same acquisition (no structure);
* **DKL + random**: the DKL model, pixels drawn at random (the model predicts, it does not choose);
* **random**: from the same random start, pixels drawn at random, no model (recall and best value only;
  `xsi_dask.active.explore.random_baseline`).

Scores as `xsi-dask explore` computes them (`xsi_dask.active.explore.discovery` and `scores`). Read, against
the number of measurements: the top-1 % recall (the fraction of the n_top = ceil(1 %) pixels
with the largest true scalar that were measured; when more pixels tie at the n_top-th value, as a saturated
abundance of 1 does, each of them counts, up to n_top) and the best true value measured; after the last fit (on all the
measurements), the RMSE of the predictive mean against the truth on the unmeasured pixels and two coverages of
the truth there: of the 95 % predictive interval (mean +- 1.96 sqrt(std^2 + noise variance), the interval a
new measurement at the pixel falls in, with the noise the model fitted; the issue's calibration target) and of
the narrower 95 % interval of the latent function (mean +- 1.96 std). Means over seeds +- the 95 % t-interval
(none with one seed).

Tasks: the simulated 4D-STEM scan (`xsi_dask.testing.stem4d.simulate_4dstem`, 32x32 patterns, seed 0; the
measured value is the `com_magnitude` scalarizer of the Poisson pattern, the truth the noiseless |CoM|); a
simulated montage (`xsi_dask.testing.simulate.simulate`, grade91_replica, 2x2 tiles, 10 nm pixels, particle
density 2, seed 1; features from `montage_patches`, across tile borders; the measured value is the true area
fraction of the Ni-rich phase: of the preset's rarest particle phases, the one the HAADF tells apart); and the
real CuZn HAADF + EELS pair (`../shared/data/eels/`, HAADF patches 5x5, the Zn/Cu L3 ratio with a power-law
background, the spec `ratio:1020-1100/924-1004:bg=820-916:units=eV`; its "truth" is the ratio of the recorded
spectrum, noise and all).
"""


# ---- tasks: features, measure, scalarizer, the true scalar (built by name, once per worker process) ----

def task_4dstem(size: int, window: int, tmp: str) -> dict:
    """Simulated 4D-STEM scan: HAADF patches -> |CoM| of the measured pattern; truth: the noiseless |CoM|."""
    from xsi_dask.active.features import structure_patches
    from xsi_dask.active.scalarizers import com_magnitude
    from xsi_dask.testing.stem4d import simulate_4dstem

    sim = simulate_4dstem((size, size), (32, 32), seed=0)
    feats = structure_patches(sim.haadf, window)
    truth = np.hypot(sim.com[..., 0], sim.com[..., 1])
    return {"name": f"simulated 4D-STEM {size}x{size}, |CoM| (HAADF patches {window}x{window})",
            "features": feats, "measure": lambda y, x: sim.data[y, x], "scalarizer": com_magnitude,
            "truth": truth[feats.yx[:, 0], feats.yx[:, 1]], "truth_is": "the noiseless |CoM|"}


MONTAGE_PHASE = "Ni-rich"
"""The montage task's phase: of the preset's rarest particle phases (area fraction 1 %), the one the HAADF
tells apart (the highest mean Z, brightest in Z contrast). V(C,N) is rarer (0.6 %) but as bright as M23C6 and
MnS: no structural image can point at it, so it would measure the features, not the learner."""


def task_montage(size: int, window: int, tmp: str) -> dict:
    """Simulated montage (2x2 tiles): HAADF patches across tile borders -> abundance of the Ni-rich phase."""
    from xsi_dask.active.features import montage_patches, mosaic_to_tile
    from xsi_dask.testing.simulate import open_truth, simulate

    h = size // 2
    store = simulate(f"{tmp}/montage-{size}.zarr", preset="grade91_replica", tiles="2x2", tile_shape=f"{h}x{h}",
                     channels=512, energy_scale_kev=0.04, pixel_size_nm=10.0, particle_density=2.0, seed=1,
                     overwrite=True, progress=False)
    feats = montage_patches(store, "HAADF", window)
    truth_ds = open_truth(store)
    ab = truth_ds["abundances"].values  # (tile, y, x, phase)
    where = mosaic_to_tile(feats.yx, np.array([[0, 1], [2, 3]]), (h, h))
    ab_px = ab[where[:, 0], where[:, 1], where[:, 2]]  # (pixel, phase)
    k = list(truth_ds.phase.values).index(MONTAGE_PHASE)
    lut = {tuple(yx): i for i, yx in enumerate(feats.yx.tolist())}
    return {"name": f"simulated montage 2x2 x {h}x{h} (grade91_replica, 10 nm pixels), abundance of {MONTAGE_PHASE} "
                    f"({100 * ab_px[:, k].mean():.1f} % of the area; HAADF patches {window}x{window})",
            "features": feats, "measure": lambda y, x: ab_px[lut[(y, x)]], "scalarizer": lambda a: np.asarray(a)[..., k],
            "truth": ab_px[:, k], "truth_is": "the true area fraction (the measurement is exact)"}


CUZN_SPEC = "ratio:1020-1100/924-1004:bg=820-916:units=eV"
"""Zn L3 (1020-1100 eV) over Cu L3 (924-1004 eV), power-law background fitted in 820-916 eV before the Cu edge."""


def task_cuzn(size: int, window: int, tmp: str) -> dict:
    """The real CuZn pair: HAADF patches -> the Zn/Cu L3 ratio of the EELS spectrum; truth: the ratio itself."""
    from rsciio.hspy import file_reader

    from xsi_dask.active.features import structure_patches
    from xsi_dask.active.scalarizers import parse_scalarizer

    eels = ROOT.parent / "shared" / "data" / "eels"
    haadf = np.asarray(file_reader(str(eels / "CuZn_HAADF.hspy"))[0]["data"], dtype=np.float64)
    sig = file_reader(str(eels / "CuZn_EELS_mapping_tutorial.hspy"))[0]
    si = np.asarray(sig["data"], dtype=np.float64)
    ax = sig["axes"][-1]
    energy = ax["offset"] + ax["scale"] * np.arange(si.shape[-1])
    scalarizer = parse_scalarizer(CUZN_SPEC, energy=energy, units=ax["units"])
    feats = structure_patches(haadf, 5)
    truth = scalarizer(si)
    return {"name": f"real CuZn HAADF + EELS {si.shape[0]}x{si.shape[1]}, Zn/Cu L3 ratio (HAADF patches 5x5)",
            "features": feats, "measure": lambda y, x: si[y, x], "scalarizer": scalarizer,
            "truth": truth[feats.yx[:, 0], feats.yx[:, 1]],
            "truth_is": "the ratio of the recorded spectrum (the measurement itself: no noiseless truth exists)"}


TASKS = {"4dstem": task_4dstem, "montage": task_montage, "cuzn": task_cuzn}


@functools.cache
def _task(name: str, size: int, window: int, tmp: str) -> dict:
    return TASKS[name](size, window, tmp)


# ---- one run (in a worker process of the pool) ----

def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # process-global: this worker process only


def _run(name: str, size: int, window: int, tmp: str, method: str, seed: int, n_init: int, budget: int):
    """One model run through ``run_experiment``; the Dataset without the step-wise maps (it comes back by pickle)."""
    from xsi_dask.active.acquisition import make_acquisition
    from xsi_dask.active.features import coordinate_features
    from xsi_dask.active.loop import run_experiment
    from xsi_dask.active.model import dkl_factory, feature_bounds, plain_gp_factory

    task = _task(name, size, window, tmp)
    feats = task["features"]
    if method.startswith("GP"):
        feats = coordinate_features(feats)
        factory = plain_gp_factory(feature_bounds(feats.values))
    else:
        factory = dkl_factory(feature_bounds(feats.values))
    acq = make_acquisition("random" if method.endswith("random") else "ei")
    t = time.perf_counter()
    ds = run_experiment(feats, task["measure"], scalarizer=task["scalarizer"], acquisition=acq, model_factory=factory,
                        n_init=n_init, budget=budget, seed=seed)
    ds.attrs["wall_seconds"] = time.perf_counter() - t
    return ds


def _ci(values) -> tuple[float, float]:
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f}" if not math.isfinite(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def _protocol(n: int) -> tuple[int, int]:
    """(n_init, budget) of the DKL papers' protocol for n pixels: 0.5 % (at least 5), then up to 3 %."""
    from xsi_dask.active.explore import default_n_init

    return default_n_init(n), math.ceil(0.03 * n)


MODEL_METHODS = METHODS[:-1]


def submit_task(pool, name: str, size: int, window: int, tmp: str, seeds: int) -> tuple[dict, dict]:
    """Build the task here (its truth and name) and submit every (model method, seed) run to the pool."""
    task = _task(name, size, window, tmp)
    n_init, budget = _protocol(task["features"].n_pixels)
    futures = {m: [pool.submit(_run, name, size, window, tmp, m, s, n_init, budget) for s in range(seeds)]
               for m in MODEL_METHODS}
    return task, futures


def run_task(task: dict, futures: dict, seeds: int) -> str:
    """The task's section: discovery, best value, final scores and step times, scored by ``xsi_dask.active.explore``."""
    from xsi_dask.active.explore import _n_top, _top_mask, discovery, random_baseline, scores

    feats = task["features"]
    n = feats.n_pixels
    truth = np.full(feats.shape, np.nan)  # the map of the true scalar, NaN off the candidates
    truth[feats.yx[:, 0], feats.yx[:, 1]] = task["truth"]
    n_init, budget = _protocol(n)
    n_top = _n_top(truth)
    is_top, threshold = _top_mask(truth)  # pixels tied at the threshold are all top pixels (a saturated abundance ties at 1)
    n_at = int(is_top.sum())
    checkpoints = sorted({n_init, math.ceil(0.01 * n), math.ceil(0.02 * n), budget})
    runs = {m: [f.result() for f in futures[m]] for m in MODEL_METHODS}
    # random sampling from each seed's random start (the model runs of a seed share it)
    runs["random"] = [random_baseline(feats, truth, ds, seed=ds.attrs["seed"]) for ds in runs["DKL + EI"]]
    curves = {m: [discovery(ds, truth) for ds in runs[m]] for m in METHODS}
    final = {m: [scores(ds, truth) for ds in runs[m]] for m in MODEL_METHODS}
    print(f"  {task['name']}: done", flush=True)

    random_expects = min(budget * n_at / n, n_top) / n_top
    out = [f"### {task['name']}\n",
           f"{n} pixels; start {n_init} at random (0.5 %, at least 5), budget {budget} (3 %); top 1 % = {n_top} pixels "
           f"(true scalar >= {threshold:.4g}, held by {n_at} pixels; maximum {np.nanmax(truth):.4g}); {seeds} seeds; "
           f"random sampling expects a recall of {random_expects:.3f} at the budget.\n"
           + ("" if n_at == n_top else
              f"With ties at the threshold, any of the {n_at} pixels counts, up to {n_top}: the largest possible ratio "
              f"to random is {1 / random_expects:.1f}x.\n"),
           "Top-1 % recall (fraction of the top-1 % pixels measured), mean ± 95 % t-interval over seeds:\n",
           "| measurements | " + " | ".join(METHODS) + " | DKL+EI / random |",
           "|---" * (len(METHODS) + 2) + "|"]
    for k in checkpoints:
        cells = [_ci([recall[k - 1] for recall, _ in curves[m]]) for m in METHODS]
        ratio = f"**{cells[0][0] / cells[-1][0]:.1f}x**" if cells[-1][0] > 0 else "n/a (random found none)"
        out.append(f"| {k} | " + " | ".join(_fmt(*c) for c in cells) + f" | {ratio} |")
    (d, dh), (g, _), _, (r, rh) = [_ci([recall[-1] for recall, _ in curves[m]]) for m in METHODS]
    cov = _ci([f["coverage"] for f in final["DKL + EI"]])[0]

    def yes(ok: bool) -> str:
        return "**yes**" if ok else "**no**"

    out += ["", f"Targets at the budget ({budget} measurements), DKL + EI: at least 5x random's recall: "
            f"{yes(d >= 5 * r)} ({d:.3f} / {r:.3f}); its 95 % interval above random's: "
            f"{yes(math.isfinite(dh) and d - dh > r + rh)}; above GP(y, x) + EI: {yes(d > g)} ({d:.3f} / {g:.3f}); "
            f"95 % predictive interval coverage in 85-98 %: {yes(0.85 <= cov <= 0.98)} ({cov:.3f})."]
    out += ["", "Best true value measured (the true maximum is "
            f"{np.nanmax(truth):.4g}):\n", "| measurements | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for k in checkpoints:
        out.append(f"| {k} | " + " | ".join(_fmt(*_ci([best[k - 1] for _, best in curves[m]]), 4) for m in METHODS) + " |")
    out += ["", f"After the last fit, on the {n - budget} unmeasured pixels (truth: {task['truth_is']}):\n",
            "| method | RMSE | 95 % predictive interval coverage | 95 % interval of the latent function, coverage "
            "| run wall (s) |", "|---|---|---|---|---|"]
    for m in MODEL_METHODS:
        out.append(f"| {m} | {_fmt(*_ci([f['rmse'] for f in final[m]]), 4)} | {_fmt(*_ci([f['coverage'] for f in final[m]]), 3)} "
                   f"| {_fmt(*_ci([f['coverage_latent'] for f in final[m]]), 3)} "
                   f"| {np.mean([ds.attrs['wall_seconds'] for ds in runs[m]]):.1f} |")
    out += ["", "Per-step wall time (fit + prediction over every candidate + acquisition; median over seeds and over the "
            f"steps in each band of measured points; {n} candidates):\n",
            "| measured points | " + " | ".join(MODEL_METHODS) + " |", "|---" * len(METHODS) + "|"]
    edges = np.linspace(n_init, budget, 4).astype(int)
    for a, b in zip(edges[:-1], edges[1:]):
        cells = []
        for m in MODEL_METHODS:
            v = np.concatenate([(ds.fit_seconds + ds.predict_seconds + ds.acquire_seconds).values[a:b] for ds in runs[m]])
            cells.append(f"{np.nanmedian(v):.3f} s")
        out.append(f"| {a}-{b - 1} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# ---- the step timing: train + acquire at n measured points and m candidates, one CPU core ----

TIMING = """
import numpy as np, torch, time
torch.set_num_threads(1)  # process-global: this child process only
from xsi_dask.active.acquisition import make_acquisition
from xsi_dask.active.features import coordinate_features, structure_patches
from xsi_dask.active.loop import train_step
from xsi_dask.active.model import dkl_factory, feature_bounds, plain_gp_factory
from xsi_dask.testing.stem4d import simulate_4dstem
sim = simulate_4dstem((80, 80), (16, 16), disk_radius=4.0, seed=0)
feats = structure_patches(sim.haadf, {window})
truth = np.hypot(sim.com[..., 0], sim.com[..., 1]).ravel()
rng = np.random.default_rng(0)
feats = feats.take(rng.choice(feats.n_pixels, size={n_cand}, replace=False))
if {kind!r} == "gp":
    feats = coordinate_features(feats)
X = feats.values
y = truth[feats.yx[:, 0] * 80 + feats.yx[:, 1]] + 0.01 * rng.standard_normal(X.shape[0])
factory = (dkl_factory if {kind!r} == "dkl" else plain_gp_factory)(feature_bounds(X))
ei = make_acquisition("ei")
train = np.arange({n_train})
measured = np.zeros(X.shape[0], bool); measured[train] = True
observed = np.where(measured, y, np.nan)
times = []
for rep in range(3):
    t0 = time.perf_counter()
    res = train_step(factory, rep, X, train, y[train], None)
    t1 = time.perf_counter()
    ei(res["mean"], res["std"], measured, rng, observed=observed)
    t2 = time.perf_counter()
    times.append((res["fit_seconds"], res["predict_seconds"], t2 - t1, t2 - t0))
med = np.median(np.array(times), axis=0).tolist()
report(fit=med[0], predict=med[1], acquire=med[2], step=med[3], threads=torch.get_num_threads(), steps=factory.steps)
"""


def run_timing(cases, window: int) -> str:
    rows = ["| model | measured points | candidates | fit (s) | prediction (s) | EI + choice (s) | **step (s)** "
            "| step / 1 s target |", "|---|---|---|---|---|---|---|---|"]
    for kind in ("dkl", "gp"):
        for n_train, n_cand in cases:
            r = run_isolated(TIMING.format(window=window, n_cand=n_cand, n_train=n_train, kind=kind))
            assert r["threads"] == 1, r
            label = "DKL (patches)" if kind == "dkl" else "GP (y, x)"
            rows.append(f"| {label} | {n_train} | {n_cand:,} | {r['fit']:.3f} | {r['predict']:.3f} | {r['acquire']:.4f} "
                        f"| **{r['step']:.3f}** | {r['step']:.2f}x |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/benchmarks-dkl.md")
    parser.add_argument("--seeds", type=int, default=None, help="runs per method and task (default 10; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a short run: 48x48 maps, 3 seeds, fewer timing cases")
    parser.add_argument("--size", type=int, default=None,
                        help="side of the square simulated maps, pixels (default 64; 48 with --quick)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for the runs (default 2), one torch thread each")
    parser.add_argument("--window", type=int, default=7, help="side of the HAADF patches of the simulated tasks (odd)")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    args = parser.parse_args()
    seeds = args.seeds or (3 if args.quick else 10)
    size = args.size or (48 if args.quick else 64)
    if seeds < 1 or size < 16 or size % 2 or args.jobs < 1:
        parser.error("--seeds and --jobs must be >= 1 and --size an even number >= 16")
    from concurrent.futures import ProcessPoolExecutor

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, \
            ProcessPoolExecutor(args.jobs, initializer=_init_worker, initargs=(1,)) as pool:
        submitted = [submit_task(pool, name, size, args.window, tmp, seeds) for name in args.tasks]
        sections = [run_task(task, futures, seeds) for task, futures in submitted]
    discovery_seconds = time.perf_counter() - started
    cases = [(50, 5000), (200, 5000)] if args.quick else [(50, 1000), (50, 5000), (200, 1000), (200, 5000), (400, 5000)]
    print("step timing ...", flush=True)
    timing = run_timing(cases, args.window)
    from xsi_dask.active.model import dkl_factory

    steps = dkl_factory(np.zeros((2, 1))).steps
    argv = " ".join(sys.argv[1:])
    cmd = ("`make bench-dkl` (= `.venv/bin/python benchmarks/bench_dkl.py --out docs/benchmarks-dkl.md`)"
           if argv == "--out docs/benchmarks-dkl.md" else f"`.venv/bin/python benchmarks/bench_dkl.py {argv}`")
    label = ("**Quick run** (`--quick`: small maps, few seeds; the issue's protocol asks for at least 10 seeds: "
             "`make bench-dkl`). Read it as a check that the benchmark works and an early reading, not as the result.\n\n"
             if args.quick else "")
    head = (
        "# Benchmarks: deep kernel learning active learning\n\n"
        f"{label}Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on: {machine()}.\n\n"
        f"Command: {cmd}; {time.perf_counter() - started:.0f} s in all ({discovery_seconds:.0f} s of discovery runs "
        f"on {args.jobs} worker processes of one torch thread each). Simulated maps {size}x{size}, patches "
        f"{args.window}x{args.window}, {seeds} seeds; the package's default models (`dkl_factory`, `plain_gp_factory`: "
        f"{steps} Adam steps per fit, each fit from its seeded start, priors on) and acquisitions (`make_acquisition`).\n"
        "Every method runs in this one run on the same scene and seeds; ratios against random sampling are what to "
        "read.\n\n" + DOC + "\n"
        "## Discovery\n\n"
        "Targets (issue #12, on the simulated tasks): top-1 % recall at the 3 % budget at least 5x that of random "
        "sampling, its 95 % interval above random's, and above the plain GP on coordinates; 95 % interval coverage "
        "85-98 %.\n\n"
    )
    tail = (
        "\n## One step (train + acquire) against measured points and candidates, one CPU core\n\n"
        "Target (issue #12): at most 1 s with 200 measured points and 5,000 candidates on one CPU core. Each row "
        "runs in its own process that calls `torch.set_num_threads(1)` (process-global, so only there). A step is "
        f"the loop's `train_step` (a fit of {steps} Adam steps from the seeded start, the prediction, mean and std, over every "
        "candidate) then EI and the choice; median of 3. Features: 7x7 HAADF patches (DKL) or (y, x) (GP) of a "
        "simulated 80x80 4D-STEM scan, candidates a random subset. No GPU row: this machine has none.\n\n" + timing +
        "\n## Not run: the Velox HAADF + EDS map\n\n" + VELOX + "\n"
    )
    out = ROOT / args.out
    out.write_text(head + "\n".join(sections) + tail)
    print(out.read_text())


VELOX = """The issue names a second real task, the Velox HAADF + EDS map (`../shared/data/eds/velox_EELS_EDS_128x128.emd`,
a band scalarizer on an element present). Its EDS spectrum image holds 11,093 counts over 128x128 pixels (0.7 per
pixel), and all but 2 of them lie in the detector's zero peak: no element line has counts at any pixel, so every
band scalarizer on an element is zero everywhere, every pixel ties at the top, and each method's recall is 1 by
construction. The table would measure nothing, so it is not run. The file's other EELS spectrum images are 16x20
(320 pixels: a 3 % budget is 10 measurements, a top 1 % is 4 pixels), too small for the protocol. `xsi-dask explore`
runs on this file (its test uses the zero-peak band); a real HAADF + EDS task needs a map with element counts."""


if __name__ == "__main__":
    main()
