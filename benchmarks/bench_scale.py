"""Paper-scale benchmark (`make bench-scale`, not in CI).

Simulates the motivating montage - 10 x 10 tiles of 1024 x 1024 pixels x 4096
channels (10 eV), 50 counts per pixel, about 5e9 counts, 1.6 TB as dense
float32 - into a sparse store, then on a 2-worker LocalCluster: the
Poisson-scaled randomized SVD (k = 20, default power iterations), 50 KL NMF
iterations (k = 8) with its abundance maps written to the results store
(``nmf(..., out=)``), and the writing of every score map. Per stage:
wall time, passes over the tiles, non-zeros per second (nnz x passes / wall)
and peak RSS of each worker process (sampled every 0.5 s), after a warm-up job
on a 64 x 64 pixel tile (module imports and numba's cached kernels load once
per worker). The workers' tile cache is 1 GiB (`--tile-cache`); tiles stay
cached between passes only when a worker's share of the montage fits it (1, 4
and 16 tiles here), else every pass reads them again. NMF keeps W of each tile in a scratch folder beside the store. `--tiles`,
`--tile-shape` and `--series` (1, 4, 16, 64 tiles) size it down or run the
scaling series.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from _util import ROOT, WorkerRSS, machine  # noqa: E402


def needed_bytes(tiles: int, h: int, w: int, cpp: float, k_svd: int, k_nmf: int) -> int:
    counts = tiles * h * w * cpp
    store = counts * 3.2  # uint16 index + small count + pointers, measured ~2.5-3 B per count compressed
    results = tiles * h * w * (k_svd + k_nmf) * 8
    nmf_scratch = 2 * tiles * h * w * k_nmf * 8  # W per tile, two slots, between NMF iterations
    return int(store + results + nmf_scratch + tiles * h * w * 6 * 4)  # + truth abundances


def run_case(out: Path, rows: int, cols: int, h: int, w: int, channels: int, cpp: float, nmf_iter: int, k_svd: int = 20, k_nmf: int = 8,
             tile_cache: str = "1 GiB") -> dict:
    import dask

    import xsi_dask
    from xsi_dask.cluster.local import dask_client
    from xsi_dask.io.results import write_results
    from xsi_dask.testing.simulate import simulate

    need = needed_bytes(rows * cols, h, w, cpp, k_svd, k_nmf)
    free = shutil.disk_usage(out.parent if out.parent.exists() else ROOT).free
    if need > 0.9 * free:
        raise SystemExit(f"bench-scale: needs about {need / 2**30:.0f} GiB on disk for {out}, only {free / 2**30:.0f} GiB free; "
                         "pass --out on a larger disk or fewer --tiles")
    res = {"tiles": rows * cols, "tile_shape": [h, w], "channels": channels, "counts_per_pixel": cpp}
    t = time.perf_counter()
    st = simulate(out / "montage.zarr", tiles=(rows, cols), tile_shape=(h, w), channels=channels, counts_per_pixel=cpp,
                  seed=0, overwrite=True, progress=True)
    info = st.info()
    res["simulate"] = {"seconds": time.perf_counter() - t, "counts": info["total_counts"], "nnz": info["nnz"],
                       "stored_bytes": info["stored_bytes"], "dense_float32_bytes": info["dense_float32_bytes"]}
    nnz = info["nnz"]
    m = xsi_dask.open_montage(st)
    with dask.config.set({"xsi-dask.tile-cache": tile_cache}), dask_client(workers=2, memory_limit="11GiB") as client:
        # warm-up outside the timings: imports and numba's cached kernels load once per worker process
        # (about a second), which would otherwise weigh on the one-tile case
        warm = simulate(out / "warmup.zarr", tiles=(1, 1), tile_shape=(64, 64), channels=channels, counts_per_pixel=cpp,
                        seed=1, overwrite=True, progress=False)
        wm = xsi_dask.open_montage(warm)
        xsi_dask.decompose(wm, k_svd)
        xsi_dask.nmf(wm, k_nmf, max_iter=2, tol=0, out=out / "warmup-results.zarr", overwrite=True)
        del wm, warm
        rss = WorkerRSS(client)
        t = time.perf_counter()
        svd = xsi_dask.decompose(m, k_svd, progress=True)
        sec = time.perf_counter() - t
        res["svd"] = {"seconds": sec, "passes": svd.attrs["passes"], "nnz_per_s": nnz * svd.attrs["passes"] / sec,
                      "peak_rss_per_worker": list(rss.peak.values())}
        rss.reset()
        t = time.perf_counter()
        # nmf no longer returns lazy abundances: with out= it writes group "nmf" (abundances tile by tile)
        # and returns the dataset opened from there, so this stage includes writing the abundance maps
        nmf = xsi_dask.nmf(m, k_nmf, max_iter=nmf_iter, tol=0, progress=True, out=out / "results.zarr", overwrite=True)
        sec = time.perf_counter() - t
        res["nmf"] = {"seconds": sec, "iterations": nmf.attrs["n_iter"], "passes": nmf.attrs["passes"],
                      "nnz_per_s": nnz * nmf.attrs["passes"] / sec, "peak_rss_per_worker": list(rss.peak.values())}
        rss.reset()
        t = time.perf_counter()
        write_results(out / "results.zarr", {"svd": svd}, overwrite=True, progress=True)
        res["write_results"] = {"seconds": time.perf_counter() - t, "peak_rss_per_worker": list(rss.peak.values())}
        # the analyses of the stored scores (#13): no pass over the counts during their iterations
        for key, fn in (("rotation", xsi_dask.rotate), ("mcr", xsi_dask.mcr)):
            rss.reset()
            t = time.perf_counter()
            ds = fn(out / "results.zarr", k_nmf, progress=True)
            write_results(out / "results.zarr", {key: ds}, overwrite=True, progress=True)
            res[key] = {"seconds": time.perf_counter() - t, "iterations": ds.attrs.get("n_iter"),
                        "map_passes": ds.attrs.get("map_passes"), "passes": ds.attrs.get("passes", 0),
                        "peak_rss_per_worker": list(rss.peak.values())}
        rss.stop()
    return res


def table(results: list[dict]) -> str:
    gib = 2**30
    rows = ["| tiles | stage | wall (s) | passes | nnz/s | s per tile per pass | peak RSS per worker (GiB) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        n = r["tiles"]
        s = r["simulate"]
        rows.append(f"| {n} | simulate ({s['counts']:.3g} counts, {s['nnz']:.3g} nnz; store {s['stored_bytes'] / gib:.1f} GiB, "
                    f"dense float32 {s['dense_float32_bytes'] / 2**40:.2f} TiB) | {s['seconds']:.0f} | 1 | {s['nnz'] / s['seconds']:.3g} | {s['seconds'] / n:.2f} | |")
        for key, label in (("svd", "randomized SVD k=20"), ("nmf", f"KL NMF k=8, {r['nmf']['iterations']} iterations (+ init, + abundances written)")):
            x = r[key]
            rows.append(f"| {n} | {label} | {x['seconds']:.0f} | {x['passes']} | {x['nnz_per_s']:.3g} | {x['seconds'] / x['passes'] / n:.3f} | "
                        + ", ".join(f"{v / gib:.2f}" for v in x["peak_rss_per_worker"]) + " |")
        x = r["write_results"]
        rows.append(f"| {n} | write scores | {x['seconds']:.0f} | 1 | | {x['seconds'] / n:.2f} | "
                    + ", ".join(f"{v / gib:.2f}" for v in x["peak_rss_per_worker"]) + " |")
        for key, label in (("rotation", "varimax rotation k=8 (reads the stored scores; maps written)"),
                           ("mcr", "factored MCR-ALS k=8 (reads the stored scores; + residual pass, maps written)")):
            if key in r:
                x = r[key]
                rows.append(f"| {n} | {label}: {x['iterations']} iterations, {x['map_passes']} passes over the scores | "
                            f"{x['seconds']:.0f} | {x['passes']} | | | " + ", ".join(f"{v / gib:.2f}" for v in x["peak_rss_per_worker"]) + " |")
    return "\n".join(rows)


def series_summary(results: list[dict]) -> str:
    """Targets of the scaling series: time per tile per pass and peak worker memory, against 4 tiles."""
    by_n = {r["tiles"]: r for r in results}
    if 4 not in by_n:
        return ""
    lines = ["", "| stage | tiles | s per tile per pass | vs 4 tiles | peak RSS per worker (GiB, max) | vs 4 tiles |", "|---|---|---|---|---|---|"]
    for key in ("svd", "nmf"):
        ref = by_n[4][key]
        t_ref = ref["seconds"] / ref["passes"] / 4
        m_ref = max(ref["peak_rss_per_worker"])
        for n in sorted(by_n):
            x = by_n[n][key]
            t = x["seconds"] / x["passes"] / n
            m = max(x["peak_rss_per_worker"])
            lines.append(f"| {key} | {n} | {t:.3f} | {t / t_ref:.2f}x | {m / 2**30:.2f} | {m / m_ref:.2f}x |")
    return "\n".join(lines) + "\n\nTargets: time per tile within 20 % from 1 to 64 tiles; peak worker memory at 64 tiles at most 1.2x that at 4.\n"


def hyperspy_note(h: int, w: int, channels: int) -> str:
    """Why the HyperSpy comparison stops at one tile: its dense float64 cube against this machine's memory."""
    dense = h * w * channels * 8
    ram = psutil.virtual_memory().total
    return (f"\nHyperSpy cannot hold one such tile densely: {h} x {w} x {channels} as the float64 its decomposition "
            f"requires is {dense / 2**30:.0f} GiB ({dense / 2**31:.0f} GiB as float32), against {ram / 2**30:.0f} GiB "
            "of memory on this machine, before the copies its SVD makes (`make bench` measured a peak RSS of about 6x "
            "the float64 cube on the 256 x 256 JEOL crop; docs/benchmarks.md).\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=str(ROOT / "bench-out" / "scale"))
    p.add_argument("--tiles", default="10x10")
    p.add_argument("--tile-shape", default="1024x1024")
    p.add_argument("--channels", type=int, default=4096)
    p.add_argument("--counts-per-pixel", type=float, default=50.0)
    p.add_argument("--nmf-iter", type=int, default=50)
    p.add_argument("--series", action="store_true", help="1, 4, 16 and 64 tiles instead of --tiles")
    p.add_argument("--tile-cache", default="1 GiB", help="the workers' tile cache (xsi-dask.tile-cache; 0: read every pass)")
    p.add_argument("--report", default=str(ROOT / "docs" / "benchmarks-scale.md"))
    a = p.parse_args()
    h, w = (int(v) for v in a.tile_shape.lower().split("x"))
    grids = [(1, 1), (2, 2), (4, 4), (8, 8)] if a.series else [tuple(int(v) for v in a.tiles.lower().split("x"))]
    results = []
    for rows, cols in grids:
        out = Path(a.out) / f"{rows}x{cols}"
        out.mkdir(parents=True, exist_ok=True)
        print(f"== {rows}x{cols} tiles of {h}x{w} px", flush=True)
        results.append(run_case(out, rows, cols, h, w, a.channels, a.counts_per_pixel, a.nmf_iter, tile_cache=a.tile_cache))
        print(json.dumps(results[-1], indent=1), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    cmd = "make bench-scale" if not a.series else ("make bench-scale-series" if a.tile_cache != "0" else "make bench-scale-series-nocache")
    title = "Scaling series: 1, 4, 16 and 64 paper-size tiles" if a.series else "Paper-scale benchmark"
    text = (f"# {title}\n\nMeasured on: {machine()}.\nCommand: `{cmd}` "
            f"(`benchmarks/bench_scale.py {' '.join(sys.argv[1:])}`).\n\n" + __doc__.split("\n\n", 1)[1] + "\n" + table(results) + "\n"
            + (series_summary(results) if a.series else hyperspy_note(h, w, a.channels)))
    Path(a.report).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
