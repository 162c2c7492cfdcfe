"""``xsi-dask run``: the main job, from vendor files to a report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .._version import __version__
from ..errors import StoreExistsError


def _is_store(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "zarr.json").is_file()


def _montage_store(args: argparse.Namespace, out: Path):
    """The store to analyse: the given one, a matching one in DIR, or a new ingest."""
    from ..io.ingest import ingest
    from ..io.store import MontageStore
    from ..io.layout import expand_inputs

    if len(args.inputs) == 1 and _is_store(args.inputs[0]):
        return MontageStore(args.inputs[0]), False
    target = out / "montage.zarr"
    if target.exists() and not args.overwrite:
        st = MontageStore(target)
        wanted = sorted(str(p.resolve()) for p in expand_inputs(args.inputs)) if not args.manifest else None
        have = sorted(str(Path(s["path"]).resolve()) for s in st.attrs["sources"])
        split = [int(v) for v in args.split.lower().split("x")] if args.split else None
        if (wanted is None or wanted == have) and st.attrs.get("split") == split:
            print(f"reusing the montage store {target}")
            return st, False
        raise StoreExistsError(f"{target} holds another montage; pass --overwrite or another --out")
    st = ingest(
        args.inputs, target, grid=args.grid, manifest=args.manifest, split=args.split,
        overwrite=args.overwrite, progress=not args.quiet,
    )
    return st, True


def run(args: argparse.Namespace) -> Path:
    """Ingest, SVD, NMF, results.zarr, figures and report.html under ``args.out``."""
    from .. import decompose, nmf, open_montage
    from ..cluster.local import dask_client
    from ..io.results import open_results, write_results
    from ..plotting.figures import save_all
    from ..plotting.report import write_report
    from .main import _nmf_kwargs, _svd_kwargs, format_info

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.zarr"
    if results.exists() and not args.overwrite:
        raise StoreExistsError(f"{results} exists; pass --overwrite to replace it")
    timings = {}
    t = time.perf_counter()
    store, ingested = _montage_store(args, out)
    timings["ingest" if ingested else "open store"] = time.perf_counter() - t
    info = store.info()
    print(format_info(info))
    montage = open_montage(store)
    with dask_client(args.scheduler, workers=args.workers, memory_limit=args.memory_limit) as client:
        t = time.perf_counter()
        svd = decompose(montage, min(args.components, store.channels), **_svd_kwargs(args))
        timings[f"SVD ({svd.attrs['passes']} passes)"] = time.perf_counter() - t
        t = time.perf_counter()
        factors = nmf(montage, args.nmf_components, **_nmf_kwargs(args))
        timings[f"NMF ({factors.attrs['n_iter']} iterations, {factors.attrs['passes']} passes)"] = time.perf_counter() - t
        t = time.perf_counter()
        write_results(results, {"svd": svd, "nmf": factors}, overwrite=args.overwrite, progress=not args.quiet)
        timings["write results (scores and abundances, tile by tile)"] = time.perf_counter() - t
        n_workers = len(client.scheduler_info().get("workers", {}))
    t = time.perf_counter()
    svd_r, nmf_r = open_results(results, "svd"), open_results(results, "nmf")
    figs = save_all(out / "figures", svd_r, nmf_r)
    timings["figures"] = time.perf_counter() - t
    params = {
        "inputs": " ".join(args.inputs),
        "store": str(store.path),
        "layout": args.grid and f"grid {args.grid}" or args.split and f"split {args.split}" or args.manifest and f"manifest {args.manifest}" or "one file",
        "SVD": f"k={svd.attrs['n_components']}, solver={svd.attrs['solver']}, power iterations={svd.attrs.get('power_iters', '-')}, "
               f"oversampling={svd.attrs.get('oversampling', '-')}, Poisson scaling={bool(svd.attrs['poisson'])}, centred={bool(svd.attrs['center'])}, seed={svd.attrs['seed']}",
        "NMF": f"k={factors.attrs['n_components']}, loss={args.loss}, init={args.init}, max_iter={args.max_iter}, tol={args.tol}, iterations run={factors.attrs['n_iter']}",
        "cluster": args.scheduler or f"LocalCluster, {n_workers} workers",
        "xsi_dask": __version__,
    }
    data = {k: info[k] for k in ("tiles", "shape", "nnz", "fraction_nonzero", "total_counts", "counts_per_pixel")}
    by_name = {p.stem: p for p in figs}
    report = write_report(
        out / "report.html",
        title=f"xsi_dask run: {Path(args.inputs[0]).name}" + (f" and {len(args.inputs) - 1} more" if len(args.inputs) > 1 else ""),
        sections=[
            ("Run", {**params, **{f"time: {k}": f"{v:.2f} s" for k, v in timings.items()}}, []),
            ("Data", data, []),
            ("Poisson-scaled SVD", {}, [by_name[n] for n in ("scree", "loadings", "scores") if n in by_name]),
            ("NMF", {}, [by_name[n] for n in ("nmf_spectra", "nmf_abundances", "nmf_rgb", "nmf_loss") if n in by_name]),
        ],
    )
    return report
