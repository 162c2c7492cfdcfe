"""GPU benchmark: the cupy kernel backend against the numba backend on the same machine's cores, and DKL on the GPU.

Run on a machine with an NVIDIA GPU: ``make bench-gpu`` (``python benchmarks/bench_gpu.py --report
docs/benchmarks-gpu.md``). Stages (``--stages``, default all; each writes ``<out>/<stage>.json``, and
``--report-only`` composes the report from those files):

``kernels``
    16 simulated tiles of 1024 x 1024 pixels x 4096 channels (50 counts per pixel, about 22 million
    stored values each). Per kernel, non-zeros per second of a pass over the 16 tiles: the numba
    backend on every core of the machine (one tile per thread, as a pass runs them), the cupy backend
    in float64 and float32 from its device tile cache (tiles resident, as after a pass's first), and a
    bare cuSPARSE SpMM (``cupyx.cusparse.spmm``, D X with X of 30 columns; and D^T Y by the transpose
    flag) on the same tiles: the GPU's roofline for a CSR x dense product. The best of three passes.
``dkl``
    One DKL step (the fit's 100 Adam steps on 200 measured points with 20 features, then the
    prediction and expected improvement on every candidate) at 5,000 and 65,000 candidates, on the
    CPU (torch on every core) and on the GPU, float64; the median of three after one warm-up.
``paper``
    The paper-size montage (10 x 10 tiles of 1024 x 1024 x 4096, 50 counts per pixel) simulated on
    the machine's disk, then on a LocalCluster of one GPU worker (``xsi-dask run --backend cupy``'s
    cluster): one pass that loads every tile into the host and device tile caches (reported
    separately), the Poisson-scaled randomized SVD (k = 20) and 50 KL NMF iterations (k = 8, written
    to a results store), each with its wall time, peak device memory (nvidia-smi, every 0.5 s) and
    the worker's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import ROOT, WorkerRSS, machine  # noqa: E402

K_SVD, L_SVD, K_NMF = 20, 30, 8


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        return out or "no GPU found by nvidia-smi"
    except OSError:
        return "no nvidia-smi"


class GpuMemory:
    """Peak device memory used (MiB, all processes), sampled by ``nvidia-smi -lms 500`` in a thread."""

    def __init__(self):
        self.peak = 0
        try:
            self._p = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "500"],
                                       stdout=subprocess.PIPE, text=True)
        except OSError:
            self._p = None
            return
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self):
        for line in self._p.stdout:
            try:
                self.peak = max(self.peak, int(line.strip().split()[0]))
            except (ValueError, IndexError):
                pass

    def reset(self):
        self.peak = 0

    def stop(self):
        if self._p is not None:
            self._p.terminate()


# ---- kernels ----

def _kernel_args(store, t, csr, rng):
    from xsi_dask.engine.plan import tile_pixel_weights

    rows, channels = csr.shape
    s = tile_pixel_weights(store, t, poisson=True, cache=False)  # 1/g, the SVD's Poisson pixel weights
    Ht = rng.uniform(0.01, 1.0, (channels, K_NMF))
    return {"s": s, "Xh": rng.standard_normal((channels, L_SVD)), "W": rng.uniform(0.1, 1.0, (rows, K_NMF)), "Ht": Ht,
            "HHt": Ht.T @ Ht, "denom": Ht.sum(axis=0), "channels": channels}


KERNELS = {
    "gram_apply (SVD pass, l = 30)": lambda b, c, a: b.gram_apply(c.indptr, c.indices, c.data, a["s"], a["Xh"]),
    "csr_dense (scores, l = 30)": lambda b, c, a: b.csr_dense(c.indptr, c.indices, c.data, a["Xh"]),
    "colsum_frob (statistics)": lambda b, c, a: b.colsum_frob(c.indptr, c.indices, c.data, a["s"], a["channels"]),
    "kl_mu_step (KL NMF iteration, k = 8)": lambda b, c, a: b.kl_mu_step(c.indptr, c.indices, c.data, a["W"], a["Ht"],
                                                                          a["denom"]),
    "fro_mu_step (Frobenius NMF iteration, k = 8)": lambda b, c, a: b.fro_mu_step(c.indptr, c.indices, c.data, a["W"],
                                                                                  a["Ht"], a["HHt"]),
    "nmf_loss_terms (KL loss, k = 8)": lambda b, c, a: b.nmf_loss_terms(c.indptr, c.indices, c.data, a["W"], a["Ht"]),
}


def _best(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def stage_kernels(out: Path, tiles: str, tile_shape: str, gpu_backend: str) -> dict:
    from xsi_dask.engine.backends import get_backend
    from xsi_dask.testing.simulate import simulate

    t = time.perf_counter()
    st = simulate(out / "kernels.zarr", tiles=tiles, tile_shape=tile_shape, channels=4096, counts_per_pixel=50, seed=0,
                  overwrite=True, progress=False)
    sim = time.perf_counter() - t
    csrs = [st.tile_csr(i, cache=False) for i in range(st.n_tiles)]
    for c in csrs:  # as the tile cache hands them out: read-only, so the cupy backend keeps them on the device
        for a in (c.indptr, c.indices, c.data):
            a.flags.writeable = False
    rng = np.random.default_rng(0)
    args = [_kernel_args(st, t, c, rng) for t, c in enumerate(csrs)]
    nnz = sum(c.nnz for c in csrs)
    cores = os.cpu_count()
    numba = get_backend("numba")
    res = {"tiles": len(csrs), "tile_shape": tile_shape, "nnz": nnz, "simulate_seconds": sim, "cores": cores, "kernels": {}}
    backends = {f"{gpu_backend} float64": get_backend(gpu_backend, (("dtype", "float64"),) if gpu_backend == "cupy" else ()),
                f"{gpu_backend} float32": get_backend(gpu_backend, (("dtype", "float32"),) if gpu_backend == "cupy" else ())}
    for name, fn in KERNELS.items():
        row = {}
        fn(numba, csrs[0], args[0])  # compiled (cached) before timing
        with ThreadPoolExecutor(cores) as pool:
            sec = _best(lambda: list(pool.map(lambda i: fn(numba, csrs[i], args[i]), range(len(csrs)))))
        row["numba"] = nnz / sec
        for label, b in backends.items():
            t = time.perf_counter()
            for i in range(len(csrs)):  # the first pass uploads the tiles (compact, widened on the device)
                fn(b, csrs[i], args[i])
            first = time.perf_counter() - t
            sec = _best(lambda: [fn(b, csrs[i], args[i]) for i in range(len(csrs))])
            row[label] = nnz / sec
            row[f"{label} first pass"] = nnz / first
        res["kernels"][name] = row
        print(f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)
    if gpu_backend == "cupy":
        res["roofline"] = _bare_spmm(csrs)
        print("bare cuSPARSE SpMM:", res["roofline"], flush=True)
    return res


def _bare_spmm(csrs) -> dict:
    import cupy as cp
    from cupyx import cusparse
    from cupyx.scipy import sparse as csp

    mats = []
    for c in csrs:
        m = csp.csr_matrix((cp.asarray(c.data).astype(cp.float64), cp.asarray(c.indices).astype(cp.int32),
                            cp.asarray(c.indptr).astype(cp.int32)), shape=c.shape)
        m._has_canonical_format = True
        mats.append(m)
    nnz = sum(m.nnz for m in mats)
    X = cp.asfortranarray(cp.random.default_rng(0).standard_normal((csrs[0].shape[1], L_SVD)))
    Y = cp.asfortranarray(cp.random.default_rng(1).standard_normal((csrs[0].shape[0], L_SVD)))
    out = {}
    for label, run in (("D X", lambda m: cusparse.spmm(m, X)), ("D^T Y", lambda m: cusparse.spmm(m, Y, transa=True))):
        for m in mats:
            run(m)
        cp.cuda.Device().synchronize()

        def one_pass():
            for m in mats:
                run(m)
            cp.cuda.Device().synchronize()

        out[f"bare SpMM {label} (l = 30)"] = nnz / _best(one_pass)
    return out


# ---- DKL ----

def stage_dkl() -> dict:
    import torch

    from xsi_dask.active.acquisition import make_acquisition
    from xsi_dask.active.loop import train_step
    from xsi_dask.active.model import dkl_factory, feature_bounds

    rng = np.random.default_rng(0)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    res = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "steps": []}
    for n in (5000, 65000):
        X = rng.standard_normal((n, 20))
        train = rng.choice(n, 200, replace=False)
        y = np.sin(X[train, 0]) + 0.5 * X[train, 1] ** 2 + 0.05 * rng.standard_normal(200)
        for device in devices:
            factory = dkl_factory(feature_bounds(X), device=device)
            acq = make_acquisition("ei")
            measured = np.zeros(n, dtype=bool)
            measured[train] = True
            observed = np.full(n, np.nan)
            observed[train] = y
            runs = []
            for i in range(4):  # the first is a warm-up (CUDA context, kernels)
                t = time.perf_counter()
                r = train_step(factory, i, X, train, y, None)  # the training task: fit, predict every candidate
                acq(r["mean"], r["std"], measured, np.random.default_rng(i), observed=observed)  # the choice, on the driver
                wall = time.perf_counter() - t
                runs.append((wall, r["fit_seconds"], wall - r["fit_seconds"]))
            runs = runs[1:]
            row = {"candidates": n, "device": device, "step_seconds": statistics.median(w for w, _, _ in runs),
                   "fit_seconds": statistics.median(f for _, f, _ in runs),
                   "predict_acquire_seconds": statistics.median(p for _, _, p in runs)}
            res["steps"].append(row)
            print(row, flush=True)
    return res


# ---- the paper-size montage ----

def _load_task(block):
    """Touch the unit's tile through a kernel: it enters the host tile cache and the device cache."""
    return block.kernels.colsum_frob(*block.csr, np.ones(block.rows), block.store.channels)[0, :1]


def stage_paper(out: Path, tiles: str, tile_shape: str, nmf_iter: int, gpu_backend: str) -> dict:
    import dask

    import xsi_dask
    from xsi_dask.cluster.local import dask_client
    from xsi_dask.engine import make_plan
    from xsi_dask.testing.simulate import simulate

    res = {"tiles": tiles, "tile_shape": tile_shape}
    t = time.perf_counter()
    st = simulate(out / "paper.zarr", tiles=tiles, tile_shape=tile_shape, channels=4096, counts_per_pixel=50, seed=0,
                  overwrite=True, progress=False)
    info = st.info()
    res["simulate"] = {"seconds": time.perf_counter() - t, "nnz": info["nnz"], "stored_bytes": info["stored_bytes"],
                       "dense_float32_bytes": info["dense_float32_bytes"]}
    print("simulated:", res["simulate"], flush=True)
    nnz = info["nnz"]
    m = xsi_dask.open_montage(st)
    cfg = {"xsi-dask.tile-cache": "48 GiB", "xsi-dask.backend": gpu_backend}
    gpu = GpuMemory()
    with dask.config.set(cfg), dask_client(memory_limit="110GiB", quiet=True, gpu_workers=gpu_backend == "cupy",
                                           workers=1 if gpu_backend != "cupy" else None) as client:
        warm = simulate(out / "warm.zarr", tiles=(1, 1), tile_shape=(64, 64), channels=4096, counts_per_pixel=50, seed=1,
                        overwrite=True, progress=False)
        wm = xsi_dask.open_montage(warm)
        xsi_dask.decompose(wm, K_SVD)
        xsi_dask.nmf(wm, K_NMF, max_iter=2, tol=0, out=out / "warm-results.zarr", overwrite=True)
        rss = WorkerRSS(client)
        gpu.reset()
        plan = make_plan(m)
        res["cache"] = plan.cache
        t = time.perf_counter()
        plan.reduce(_load_task, label="load")
        res["load"] = {"seconds": time.perf_counter() - t, "peak_gpu_mib": gpu.peak, "peak_rss": list(rss.peak.values())}
        print("load:", res["load"], flush=True)
        for stage, run in (("svd", lambda: xsi_dask.decompose(m, K_SVD, progress=False)),
                           ("nmf", lambda: xsi_dask.nmf(m, K_NMF, max_iter=nmf_iter, tol=0, progress=False,
                                                        out=out / "results.zarr", overwrite=True))):
            rss.reset()
            gpu.reset()
            t = time.perf_counter()
            ds = run()
            sec = time.perf_counter() - t
            res[stage] = {"seconds": sec, "passes": ds.attrs["passes"], "nnz_per_s": nnz * ds.attrs["passes"] / sec,
                          "peak_gpu_mib": gpu.peak, "peak_rss": list(rss.peak.values()), "backend": ds.attrs["backend"]}
            if stage == "nmf":
                res[stage]["iterations"] = ds.attrs["n_iter"]
            print(f"{stage}:", res[stage], flush=True)
        rss.stop()
    gpu.stop()
    return res


# ---- report ----

def report(out: Path, path: Path) -> None:
    got = {s: json.loads((out / f"{s}.json").read_text()) for s in ("kernels", "dkl", "paper") if (out / f"{s}.json").exists()}
    env = json.loads((out / "machine.json").read_text()) if (out / "machine.json").exists() else {}
    lines = ["# GPU benchmark: the cupy backend against numba on the same machine", "",
             f"Measured on: {env.get('cpu', '?')}; GPU: {env.get('gpu', '?')}; CuPy {env.get('cupy', '?')}.",
             f"Command: `{env.get('command', 'make bench-gpu')}`.", ""]
    if "kernels" in got:
        k = got["kernels"]
        lines += [f"## Kernels: non-zeros per second of a pass over {k['tiles']} tiles of {k['tile_shape']} x 4096 "
                  f"({k['nnz']:.3g} stored values)", "",
                  f"numba: one tile per thread on {k['cores']} cores. cupy: tiles in the device cache (the first pass, "
                  "which uploads them, in the last column). Roofline: a bare cuSPARSE SpMM on the same tiles.", ""]
        roof = k.get("roofline", {})
        lines += ["| kernel | numba | cupy float64 | x numba | cupy float32 | x numba | cupy float64, first pass |",
                  "|---|---|---|---|---|---|---|"]
        for name, row in k["kernels"].items():
            g64 = next(v for kk, v in row.items() if kk.endswith("float64"))
            g32 = next(v for kk, v in row.items() if kk.endswith("float32"))
            first = next(v for kk, v in row.items() if kk.endswith("float64 first pass"))
            lines.append(f"| {name} | {row['numba']:.3g} | {g64:.3g} | {g64 / row['numba']:.1f} | {g32:.3g} | "
                         f"{g32 / row['numba']:.1f} | {first:.3g} |")
        if roof:
            lines += ["", "| roofline | non-zeros per second |", "|---|---|"]
            lines += [f"| {n} | {v:.3g} |" for n, v in roof.items()]
            fwd = roof.get("bare SpMM D X (l = 30)")
            if fwd:
                ga = next(v for kk, v in k["kernels"]["gram_apply (SVD pass, l = 30)"].items() if kk.endswith("float64"))
                cd = next(v for kk, v in k["kernels"]["csr_dense (scores, l = 30)"].items() if kk.endswith("float64"))
                lines += ["", f"csr_dense (one SpMM and the transfers of its input and output) runs at {cd / fwd:.2f} of "
                              f"the bare SpMM; gram_apply (two SpMMs, D X and D^T Y) at {ga / fwd:.2f}, where two bare "
                              "SpMMs would give about 0.5."]
        lines.append("")
    if "dkl" in got:
        d = got["dkl"]
        lines += ["## DKL step (200 measured points, 20 features, 100 Adam steps, then prediction and expected improvement "
                  "on every candidate), float64", "",
                  f"torch {d['torch']}, {d['cpu_threads']} CPU threads; median of 3 after a warm-up.", "",
                  "| candidates | device | step (s) | fit (s) | predict + acquire (s) |", "|---|---|---|---|---|"]
        lines += [f"| {r['candidates']} | {r['device']} | {r['step_seconds']:.3f} | {r['fit_seconds']:.3f} | "
                  f"{r['predict_acquire_seconds']:.3f} |" for r in d["steps"]]
        lines.append("")
    if "paper" in got:
        p = got["paper"]
        s = p["simulate"]
        lines += [f"## Paper-size montage on one GPU ({p['tiles']} tiles of {p['tile_shape']} x 4096, 50 counts per pixel)", "",
                  f"Simulated on the machine's disk in {s['seconds']:.0f} s: {s['nnz']:.3g} stored values, store "
                  f"{s['stored_bytes'] / 2**30:.1f} GiB, {s['dense_float32_bytes'] / 2**40:.2f} TiB as dense float32. "
                  "One GPU worker (tile cache 48 GiB on the host; the device cache mirrors it).", "",
                  "| stage | wall (s) | passes | nnz/s | peak device memory (GiB) | worker peak RSS (GiB) |", "|---|---|---|---|---|---|"]
        for stage in ("load", "svd", "nmf"):
            if stage in p:
                r = p[stage]
                label = {"load": "load every tile (host and device caches)", "svd": "randomized SVD k = 20",
                         "nmf": f"KL NMF k = 8, {r.get('iterations', '?')} iterations (+ init, abundances written)"}[stage]
                lines.append(f"| {label} | {r['seconds']:.1f} | {r.get('passes', 1)} | {r.get('nnz_per_s', float('nan')):.3g} | "
                             f"{r['peak_gpu_mib'] / 1024:.1f} | {max(r['peak_rss']) / 2**30:.1f} |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench-out" / "gpu"))
    p.add_argument("--stages", default="kernels,dkl,paper")
    p.add_argument("--kernel-tiles", default="4x4")
    p.add_argument("--tiles", default="10x10", help="tiles of the paper stage")
    p.add_argument("--tile-shape", default="1024x1024")
    p.add_argument("--nmf-iter", type=int, default=50)
    p.add_argument("--gpu-backend", default="cupy", help=argparse.SUPPRESS)  # scipy: a smoke test without a GPU
    p.add_argument("--report", default=str(ROOT / "docs" / "benchmarks-gpu.md"))
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if not a.report_only:
        try:
            import cupy

            cupy_version = cupy.__version__
        except ImportError:
            cupy_version = "not installed"
        (out / "machine.json").write_text(json.dumps({"cpu": machine(), "gpu": gpu_name(), "cupy": cupy_version,
                                                      "command": "python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:])}))
        for stage in a.stages.split(","):
            if stage == "kernels":
                r = stage_kernels(out, a.kernel_tiles, a.tile_shape, a.gpu_backend)
            elif stage == "dkl":
                r = stage_dkl()
            elif stage == "paper":
                r = stage_paper(out, a.tiles, a.tile_shape, a.nmf_iter, a.gpu_backend)
            else:
                raise SystemExit(f"unknown stage {stage!r}")
            (out / f"{stage}.json").write_text(json.dumps(r, indent=1))
    report(out, Path(a.report))


if __name__ == "__main__":
    main()
