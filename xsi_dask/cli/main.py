"""The ``xsi-dask`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from ..errors import XSIError


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def format_info(info: dict) -> str:
    """Human-readable summary of :meth:`MontageStore.info`."""
    e = info["energy"]
    px = info["pixels"]
    ratio = info["dense_float32_bytes"] / max(info["stored_bytes"], 1)
    lines = [
        f"store            {info['store']}",
        f"tiles            {info['tiles']} on a {info['grid'][0]}x{info['grid'][1]} grid",
        f"shape            (tile, y, x, energy) = {tuple(info['shape'])}",
        f"pixel size       {px['scale_y']:.6g} x {px['scale_x']:.6g} {px['units']}",
        f"energy           {e['size']} channels, offset {e['offset']:.4f} keV, "
        f"{e['scale'] * 1e3:.4f} eV/channel, up to {e['offset'] + e['scale'] * (e['size'] - 1):.2f} keV",
        f"non-zeros        {info['nnz']:,} ({100 * info['fraction_nonzero']:.4f} % of voxels)",
        f"total counts     {info['total_counts']:,}",
        f"counts per pixel {info['counts_per_pixel']:.3f}",
        f"dense float32    {_size(info['dense_float32_bytes'])}",
        f"stored           {_size(info['stored_bytes'])} ({ratio:,.0f}x smaller)",
        "sources          " + "\n                 ".join(info["sources"]),
    ]
    return "\n".join(lines)


def _add_layout(p: argparse.ArgumentParser) -> None:
    lay = p.add_mutually_exclusive_group()
    lay.add_argument("--grid", metavar="RxC", help="lay the input files out row-major on ROWS x COLS tiles")
    lay.add_argument("--manifest", metavar="FILE", help="CSV path,row,col[,stage_x,stage_y]")
    lay.add_argument("--split", metavar="RxC", help="cut one map into ROWS x COLS equal tiles")


def _add_svd_options(p: argparse.ArgumentParser, components: int) -> None:
    p.add_argument("--components", type=int, default=components, metavar="K", help=f"SVD components (default {components})")
    p.add_argument("--solver", choices=["randomized", "gram"], default="randomized")
    p.add_argument("--power-iters", type=int, default=None, metavar="Q", help="randomized solver (default 10)")
    p.add_argument("--no-poisson", action="store_true", help="no Keenan-Kotula scaling")
    p.add_argument("--center", action="store_true", help="subtract the mean spectrum (PCA)")
    p.add_argument("--seed", type=int, default=0)


def _add_nmf_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss", choices=["kl", "frobenius"], default="kl", help="NMF loss (default kl: Poisson)")
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--init", choices=["poisson-nndsvda", "nndsvda", "random"], default="poisson-nndsvda",
                   help="NMF initialisation (default: NNDSVDa from the Poisson-scaled SVD)")
    p.add_argument("--sparsity", type=float, default=0.0, metavar="LAMBDA",
                   help="L1/2 sparsity weight on the abundances (KL only; default 0). 3-6 at tens of counts "
                        "per pixel keeps endmembers from trading shared peaks; abundances are refit without it")


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler (default: a LocalCluster)")
    p.add_argument("--workers", type=int, metavar="N", help="LocalCluster workers (default: cores)")
    p.add_argument("--memory-limit", metavar="SIZE", help="per LocalCluster worker, e.g. 4GiB (default auto)")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="xsi-dask",
        description="Multivariate statistical analysis of sparse X-ray spectrum-image montages.",
    )
    parser.add_argument("--version", action="version", version=f"xsi-dask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="read vendor files into a sparse montage store")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="tile files or glob patterns")
    p.add_argument("--out", required=True, metavar="STORE.zarr")
    _add_layout(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--threads", type=int, default=None, help="tiles converted at once (default: cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("run", help="ingest (or reuse a store), decompose, NMF, figures and report")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="tile files, glob patterns, or one montage store")
    p.add_argument("--out", required=True, metavar="DIR")
    _add_layout(p)
    _add_svd_options(p, components=10)
    p.add_argument("--nmf-components", type=int, default=4, metavar="K", help="NMF endmembers (default 4)")
    _add_nmf_options(p)
    _add_cluster_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("decompose", help="Poisson-scaled SVD of a store into RESULTS.zarr (group svd)")
    p.add_argument("store", metavar="STORE.zarr")
    p.add_argument("--out", required=True, metavar="RESULTS.zarr")
    _add_svd_options(p, components=10)
    _add_cluster_options(p)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("nmf", help="Poisson (KL) NMF of a store into RESULTS.zarr (group nmf)")
    p.add_argument("store", metavar="STORE.zarr")
    p.add_argument("--out", required=True, metavar="RESULTS.zarr")
    p.add_argument("--components", type=int, default=4, metavar="K", help="endmembers (default 4)")
    _add_nmf_options(p)
    p.add_argument("--seed", type=int, default=0)
    _add_cluster_options(p)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("simulate", help="simulate an EDS montage with ground truth into a sparse store")
    p.add_argument("--out", required=True, metavar="STORE.zarr")
    p.add_argument("--preset", default="grade91_replica", help="grade91_replica (default) or am_aluminum")
    p.add_argument("--tiles", default="2x2", metavar="RxC")
    p.add_argument("--tile-shape", default="128x128", metavar="HxW")
    p.add_argument("--channels", type=int, default=4096)
    p.add_argument("--counts-per-pixel", type=float, default=50.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overlap", type=int, default=0, metavar="PX")
    p.add_argument("--low-count-tile", type=int, default=None, metavar="T", help="tile T gets a tenth of the dose")
    p.add_argument("--pixel-size", type=float, default=None, metavar="NM")
    p.add_argument("--particle-density", type=float, default=1.0, metavar="F",
                   help="multiply every particle phase's area fraction (default 1)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("info", help="summarise a montage store")
    p.add_argument("store", metavar="STORE.zarr")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    return parser


def _cmd_ingest(args: argparse.Namespace) -> int:
    from ..io.ingest import ingest

    if not args.inputs and not args.manifest:
        raise SystemExit("xsi-dask ingest: give INPUT files or --manifest FILE")
    store = ingest(
        args.inputs, args.out, grid=args.grid, manifest=args.manifest, split=args.split,
        overwrite=args.overwrite, threads=args.threads, progress=not args.quiet,
    )
    print(format_info(store.info()))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ..io.store import MontageStore

    info = MontageStore(args.store).info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from ..testing.simulate import simulate

    store = simulate(
        args.out, preset=args.preset, tiles=args.tiles, tile_shape=args.tile_shape, channels=args.channels,
        counts_per_pixel=args.counts_per_pixel, seed=args.seed, overlap=args.overlap,
        low_count_tile=args.low_count_tile, pixel_size_nm=args.pixel_size, particle_density=args.particle_density,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(format_info(store.info()))
    return 0


def _client(args: argparse.Namespace):
    from ..cluster.local import dask_client

    return dask_client(args.scheduler, workers=args.workers, memory_limit=args.memory_limit, quiet=False)


def _svd_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        solver=args.solver, power_iters=args.power_iters, poisson=not args.no_poisson,
        center=args.center, seed=args.seed, progress=not args.quiet,
    )


def _nmf_kwargs(args: argparse.Namespace) -> dict:
    return dict(loss=args.loss, max_iter=args.max_iter, tol=args.tol, init=args.init, seed=args.seed,
                sparsity=args.sparsity, progress=not args.quiet)


def _analyse(args: argparse.Namespace, group: str) -> int:
    """`decompose` / `nmf`: one analysis of a store into group ``group`` of RESULTS.zarr."""
    from .. import decompose, nmf, open_montage
    from ..io.results import write_results

    with _client(args):
        montage = open_montage(args.store)
        if group == "svd":
            ds = decompose(montage, args.components, **_svd_kwargs(args))
            done = f"SVD ({ds.attrs['passes']} passes"
        else:
            ds = nmf(montage, args.components, **_nmf_kwargs(args))
            done = f"NMF ({ds.attrs['n_iter']} iterations"
        write_results(args.out, {group: ds}, overwrite=args.overwrite, progress=not args.quiet)
    print(f"{done}, {ds.attrs['seconds']:.1f} s) written to {args.out} (group {group})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .run import run

    report = run(args)
    print(f"report: {report}")
    return 0


COMMANDS = {
    "ingest": _cmd_ingest,
    "info": _cmd_info,
    "simulate": _cmd_simulate,
    "run": _cmd_run,
    "decompose": lambda args: _analyse(args, "svd"),
    "nmf": lambda args: _analyse(args, "nmf"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except XSIError as exc:
        print(f"xsi-dask {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
