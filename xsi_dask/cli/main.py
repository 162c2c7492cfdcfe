"""The ``xsi-dask`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from ..errors import ParameterError, XSIError
from ..pipeline import format_info

__all__ = ["build_parser", "format_info", "main"]


def _add_layout(p: argparse.ArgumentParser) -> None:
    lay = p.add_mutually_exclusive_group()
    lay.add_argument("--grid", metavar="RxC", help="lay the input files out row-major on ROWS x COLS tiles")
    lay.add_argument("--manifest", metavar="FILE", help="CSV path,row,col[,stage_x,stage_y]")
    lay.add_argument("--split", metavar="RxC", help="cut one map into ROWS x COLS equal tiles")


def _add_svd_options(p: argparse.ArgumentParser, components: int) -> None:
    p.add_argument("--components", type=int, metavar="K", help=f"SVD components (default {components})")
    p.add_argument("--solver", choices=["randomized", "gram"], help="default randomized")
    p.add_argument("--power-iters", type=int, metavar="Q", help="randomized solver (default 10)")
    p.add_argument("--oversampling", type=int, metavar="P", help="randomized solver (default 10)")
    p.add_argument("--no-poisson", action="store_true", help="no Keenan-Kotula scaling")
    p.add_argument("--center", action="store_true", help="subtract the mean spectrum (PCA)")
    p.add_argument("--seed", type=int, help="seed of the SVD test matrix and the NMF init (default 0)")


def _add_nmf_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss", choices=["kl", "frobenius"], help="NMF loss (default kl: Poisson)")
    p.add_argument("--max-iter", type=int, help="default 200")
    p.add_argument("--tol", type=float, help="default 1e-4")
    p.add_argument("--init", choices=["poisson-nndsvda", "nndsvda", "random"],
                   help="NMF initialisation (default poisson-nndsvda: NNDSVDa from the Poisson-scaled SVD; `run` reuses its SVD for it)")
    p.add_argument("--sparsity", type=float, metavar="LAMBDA",
                   help="L1/2 sparsity weight on the abundances (KL only; default 0). 3-6 at tens of counts "
                        "per pixel keeps endmembers from trading shared peaks; abundances are refit without it")
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="commit an NMF checkpoint beside the store every N iterations and on SIGTERM "
                        "(default 10, xsi-dask.nmf-checkpoint-every; 0: none); removed when the NMF completes")


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler (default: a LocalCluster)")
    p.add_argument("--workers", type=int, metavar="N", help="LocalCluster workers (default: cores)")
    p.add_argument("--threads-per-worker", type=int, metavar="T", help="threads of each LocalCluster worker (default 1)")
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

    # run, decompose, nmf: flags not given are absent (SUPPRESS), so the parameter objects' defaults apply
    # and `run --config` can tell which flags were given
    quiet = argparse.SUPPRESS
    p = sub.add_parser("run", help="ingest (or reuse a store), decompose, NMF, figures and report",
                       argument_default=quiet)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="tile files, glob patterns, or one montage store")
    p.add_argument("--config", metavar="RUN.yaml",
                   help="repeat the run recorded in a run.yaml (with --out, --overwrite and --quiet only)")
    p.add_argument("--out", metavar="DIR", help="output folder (required without --config)")
    _add_layout(p)
    _add_svd_options(p, components=10)
    p.add_argument("--nmf-components", type=int, metavar="K", help="NMF endmembers (default 4)")
    _add_nmf_options(p)
    _add_cluster_options(p)
    p.add_argument("--resume", action="store_true",
                   help="after an interrupted run into DIR: reuse its store, compute the SVD again and continue the NMF "
                        "from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("decompose", help="Poisson-scaled SVD of a store into RESULTS.zarr (group svd)",
                       argument_default=quiet)
    p.add_argument("store", metavar="STORE.zarr")
    p.add_argument("--out", required=True, metavar="RESULTS.zarr")
    _add_svd_options(p, components=10)
    _add_cluster_options(p)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("nmf", help="Poisson (KL) NMF of a store into RESULTS.zarr (group nmf)", argument_default=quiet)
    p.add_argument("store", metavar="STORE.zarr")
    p.add_argument("--out", required=True, metavar="RESULTS.zarr")
    p.add_argument("--components", type=int, metavar="K", help="endmembers (default 4)")
    _add_nmf_options(p)
    p.add_argument("--seed", type=int, help="seed of the init (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint of an interrupted run of the same NMF (same result as if "
                        "uninterrupted); without one, start from the init")
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

    p = sub.add_parser("clean", help="remove the NMF scratch folders that dead runs left beside a store")
    p.add_argument("store", metavar="STORE.zarr")

    p = sub.add_parser("verify", help="check every chunk, checksum, CSR array and total of a montage store")
    p.add_argument("store", metavar="STORE.zarr")

    p = sub.add_parser(
        "report", help="figures and report.html of a results store (after decompose and/or nmf)",
        epilog="example: xsi-dask report results.zarr --out results_report --elements Ag,Al,Cu",
    )
    p.add_argument("results", metavar="RESULTS.zarr", help="results store written by decompose, nmf or run")
    p.add_argument("--out", metavar="DIR", help="folder of report.html and figures/ (default: the folder holding RESULTS.zarr)")
    p.add_argument("--elements", metavar="EL,EL", help="label peaks with these elements' X-ray lines, e.g. Fe,Cr "
                                                     "(default: the element list of the source files)")
    p.add_argument("--per-page", type=int, default=8, metavar="N", help="components per figure (default 8; all are shown)")
    p.add_argument("--title", help="report title (default from the source file names)")
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


# ---- argparse -> parameter objects -> pipeline ----

_SVD_FLAGS = {"components": "components", "solver": "solver", "power_iters": "power_iters",
              "oversampling": "oversampling", "seed": "seed"}
_NMF_FLAGS = {"loss": "loss", "max_iter": "max_iter", "tol": "tol", "init": "init", "sparsity": "sparsity", "seed": "seed",
              "checkpoint_every": "checkpoint_every", "resume": "resume"}
_CLUSTER_FLAGS = ("scheduler", "workers", "threads_per_worker", "memory_limit")


def _given(args: argparse.Namespace) -> dict:
    """The flags given on the command line (the analysis parsers leave the others out)."""
    return {k: v for k, v in vars(args).items() if k != "command"}


def _svd_params(g: dict):
    from ..pipeline import SVDParams

    kw = {field: g[flag] for flag, field in _SVD_FLAGS.items() if flag in g}
    if g.get("no_poisson"):
        kw["poisson"] = False
    if g.get("center"):
        kw["center"] = True
    return SVDParams(**kw)


def _nmf_params(g: dict, components_flag: str):
    from ..pipeline import NMFParams

    kw = {field: g[flag] for flag, field in _NMF_FLAGS.items() if flag in g}
    if components_flag in g:
        kw["components"] = g[components_flag]
    return NMFParams(**kw)


def _cluster_params(g: dict):
    from ..pipeline import ClusterParams

    return ClusterParams(**{k: g[k] for k in _CLUSTER_FLAGS if k in g})


def _flag(dest: str) -> str:
    return "INPUT" if dest == "inputs" else "--" + dest.replace("_", "-")


def _cmd_run(args: argparse.Namespace) -> int:
    from .. import pipeline

    g = _given(args)
    progress = not g.get("quiet", False)
    overwrite = g.get("overwrite", False)
    if "config" in g:
        extra = [_flag(k) for k in g if k not in ("config", "out", "overwrite", "quiet")]
        if extra:
            raise ParameterError(
                f"--config repeats the recorded run; only --out, --overwrite and --quiet go with it, not {', '.join(extra)} "
                "(edit the run.yaml instead)"
            )
        result = pipeline.load_run_config(g["config"]).run(g.get("out"), overwrite=overwrite, progress=progress)
    else:
        if "out" not in g:
            raise ParameterError("--out DIR is required (or --config RUN.yaml)")
        layout = pipeline.LayoutParams(grid=g.get("grid"), split=g.get("split"), manifest=g.get("manifest"))
        svd, nmf = _svd_params(g), _nmf_params(g, "nmf_components")
        result = pipeline.run(
            g.get("inputs", []), g["out"], layout=layout, svd=svd, nmf=nmf, cluster=_cluster_params(g),
            overwrite=overwrite, progress=progress,
        )
    print(f"report: {result.report}")
    return 0


def _cmd_decompose(args: argparse.Namespace) -> int:
    from ..pipeline import decompose_store

    g = _given(args)
    ds = decompose_store(g["store"], g["out"], svd=_svd_params(g), cluster=_cluster_params(g),
                         overwrite=g.get("overwrite", False), progress=not g.get("quiet", False))
    print(f"SVD ({ds.attrs['passes']} passes, {ds.attrs['seconds']:.1f} s) written to {g['out']} (group svd)")
    return 0


def _cmd_nmf(args: argparse.Namespace) -> int:
    from ..pipeline import nmf_store

    g = _given(args)
    ds = nmf_store(g["store"], g["out"], nmf=_nmf_params(g, "components"), cluster=_cluster_params(g),
                   overwrite=g.get("overwrite", False), progress=not g.get("quiet", False))
    resumed = ds.attrs.get("resumed_from_iteration")
    note = f", resumed from iteration {resumed}" if resumed is not None else \
        ", no checkpoint to resume: started from the init" if g.get("resume") else ""
    print(f"NMF ({ds.attrs['n_iter']} iterations{note}, {ds.attrs['seconds']:.1f} s) written to {g['out']} (group nmf)")
    return 0


def _cmd_clean(args: argparse.Namespace) -> int:
    from ..engine.scratch import clean

    removed = clean(args.store)
    for path in removed:
        print(f"removed {path}")
    if not removed:
        print(f"no scratch folders of dead runs beside {args.store}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..errors import CorruptStoreError
    from ..io.store import verify_store

    faults = verify_store(args.store)
    for fault in faults:
        print(fault)
    if faults:
        raise CorruptStoreError(
            f"{args.store}: {len(faults)} fault{'s' if len(faults) > 1 else ''} (listed above); "
            "ingest (or simulate) the store again from its sources"
        )
    print(f"{args.store}: sound (every chunk decodes, checksums, CSR arrays and totals agree)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ..plotting.build import make_report

    path = make_report(args.results, args.out, title=args.title, elements=args.elements, max_per_page=args.per_page)
    print(f"report: {path}")
    return 0


COMMANDS = {
    "ingest": _cmd_ingest,
    "info": _cmd_info,
    "simulate": _cmd_simulate,
    "run": _cmd_run,
    "decompose": _cmd_decompose,
    "nmf": _cmd_nmf,
    "clean": _cmd_clean,
    "verify": _cmd_verify,
    "report": _cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xsi-dask`` command line; the exit status.

    0 on success; 2 with one line ``xsi-dask CMD: error: ...`` for every
    error of the package; 130 (SIGINT) or 143 (SIGTERM) with one line when
    interrupted: the run stops, the cluster is shut down, temporary outputs
    are removed once their writers have stopped, and an output that
    ``--overwrite`` was to replace is kept. Run as the program (``argv`` None),
    an interrupted process then ends at once (``os._exit``) instead of
    spending seconds in the interpreter's teardown of dask and numba.
    """
    from .._interrupt import exit_code, signals_as_exceptions

    parser = build_parser()
    args = parser.parse_args(argv)
    with signals_as_exceptions():
        try:
            return COMMANDS[args.command](args)
        except XSIError as exc:
            print(f"xsi-dask {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            name = getattr(exc, "name", "SIGINT")
            print(f"xsi-dask {args.command}: interrupted ({name}); stopped, temporary outputs removed, "
                  "earlier outputs kept", file=sys.stderr, flush=True)
            if argv is None:  # the program itself: the cleanup is done, skip the seconds of interpreter teardown
                sys.stdout.flush()
                os._exit(exit_code(exc))
            return exit_code(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
