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


def _add_view_options(p: argparse.ArgumentParser) -> None:
    v = p.add_argument_group("what is analysed (checked before any pass)")
    v.add_argument("--energy-range", metavar="LO:HI",
                   help="keep the channels from LO to HI keV; either side may be empty (0.2:10, :8, 1:); "
                        "a negative LO needs the = form (--energy-range=-0.1:5). Default: the whole axis")
    v.add_argument("--keep-zero-peak", action="store_true",
                   help="keep the detector's zero (strobe) peak; by default it is excluded for EDS below 4 FWHM(0) "
                        "of the detector (about 0.19 keV at 130 eV Mn Ka), never into C Ka: light-element (Be, B) work keeps it")
    v.add_argument("--bin", type=int, metavar="B",
                   help="sum B x B pixel blocks within each tile before the analysis (as HyperSpy's rebin); "
                        "B must divide the tile size. Default 1 (no binning); bin low-count maps (about 1 count/px)")
    v.add_argument("--elements", metavar="EL,EL,...",
                   help="the sample's elements (e.g. Fe,Cr,Mn) for the X-ray line labels; default: the files' own list")


def _add_svd_options(p: argparse.ArgumentParser, components: int) -> None:
    p.add_argument("--components", type=int, metavar="K", help=f"SVD components (default {components})")
    p.add_argument("--solver", choices=["randomized", "gram"],
                   help="randomized (default; few passes, the leading components) or gram (one pass, every "
                        "eigenvalue; memory channels^2)")
    p.add_argument("--power-iters", type=int, metavar="Q", help="randomized solver's power iterations (default 10)")
    p.add_argument("--oversampling", type=int, metavar="P", help="randomized solver's extra test vectors (default 10)")
    p.add_argument("--no-poisson", action="store_true", help="no Keenan-Kotula Poisson scaling (default: scaled)")
    p.add_argument("--center", action="store_true", help="subtract the mean spectrum (PCA; default: not centred)")
    p.add_argument("--seed", type=int, help="seed of the SVD test matrix and the NMF init (default 0)")


def _add_nmf_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--known-spectrum", dest="known_spectra", action="append", metavar="SPEC",
                   help="fix one endmember spectrum to a reference (repeat for more; the rest stay free): a spectrum "
                        "file (.msa, .spx, 1-D .hspy) on the view's channels, or RESULTS.zarr:nmf:INDEX (another run's "
                        "endmember)")
    p.add_argument("--loss", choices=["kl", "frobenius"], help="NMF loss (default kl: Poisson)")
    p.add_argument("--max-iter", type=int, metavar="N", help="NMF iterations at most (default 200)")
    p.add_argument("--tol", type=float, metavar="TOL",
                   help="stop when the relative change of the loss falls below TOL (default 1e-4)")
    p.add_argument("--init", choices=["poisson-nndsvda", "nndsvda", "random"],
                   help="NMF initialisation (default poisson-nndsvda: NNDSVDa from the Poisson-scaled SVD; `run` reuses its SVD for it)")
    p.add_argument("--sparsity", type=float, metavar="LAMBDA",
                   help="L1/2 sparsity weight on the abundances (KL only; default 0). 3-6 at tens of counts "
                        "per pixel keeps endmembers from trading shared peaks; abundances are refit without it")
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="commit an NMF checkpoint beside the store every N iterations and on SIGTERM "
                        "(default 10, xsi-dask.nmf-checkpoint-every; 0: none); removed when the NMF completes")


def _add_analyses_options(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("analyses after the NMF (each its own results group)")
    a.add_argument("--rotate", choices=("varimax",),
                   help="spatial-simplicity rotation of the top-k Poisson-scaled scores (group rotation; k = the NMF's endmembers)")
    a.add_argument("--mcr", action="store_true", help="factored MCR-ALS started from the varimax rotation (group mcr, which "
                                                      "records the rotation; --rotate varimax also writes the rotation's group)")
    a.add_argument("--ica", action="store_true", help="FastICA of the whitened scores (group ica)")
    a.add_argument("--segments", type=int, metavar="K", help="k-means segmentation into K classes (group segments)")
    a.add_argument("--segment-on", choices=("svd", "nmf", "mcr"),
                   help="the maps k-means segments: the Poisson-scaled SVD scores (default: unit noise at any dose), or "
                        "NMF or MCR abundance fractions")
    a.add_argument("--quantify", action="store_true",
                   help="net X-ray line maps of the elements (--elements, else the files') and Cliff-Lorimer compositions "
                        "of every endmember (groups elements, quantification)")
    a.add_argument("--k-factors", metavar="FILE", help="Cliff-Lorimer k-factors, YAML or CSV of line,k-factor "
                                                       "(a simulated store may leave it out: the simulator's own)")
    a.add_argument("--no-qc", dest="qc", action="store_false", help="no tile quality control (default: group qc)")
    a.add_argument("--qc-threshold", type=float, metavar="Z",
                   help="robust z-score above which a tile's dose or residual is flagged (default 3.5)")


_ANALYSES_FLAGS = ("rotate", "mcr", "ica", "segments", "segment_on", "quantify", "k_factors", "qc", "qc_threshold")


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    from ..engine.backends import available_backends

    c = p.add_argument_group("where it runs")
    c.add_argument("--scheduler", metavar="ADDRESS",
                   help="an existing Dask scheduler, tcp://HOST:PORT (default: a LocalCluster); given up on after "
                        "xsi-dask.connect-timeout (5 s)")
    c.add_argument("--workers", type=int, metavar="N", help="LocalCluster workers (default: cores)")
    c.add_argument("--threads-per-worker", type=int, metavar="T", help="threads of each LocalCluster worker (default 1)")
    c.add_argument("--memory-limit", metavar="SIZE", help="per LocalCluster worker, e.g. 4GiB or 0.5 (default auto)")
    c.add_argument("--backend", choices=available_backends(),
                   help="kernel backend of the passes (default xsi-dask.backend: numba); cupy runs them on NVIDIA GPUs "
                        "(the gpu extra): a LocalCluster then has one worker per visible GPU (CUDA_VISIBLE_DEVICES), "
                        "--cluster slurm needs --gpu-jobs, a --scheduler needs workers offering GPU")
    _add_slurm_options(c, cluster_flag=True)
    c.add_argument("--performance-report", action="store_true",
                   help="write Dask's performance report (dask-performance-report.html) beside the results; "
                        "report.html links it")


def _add_slurm_options(c, *, cluster_flag: bool) -> None:
    if cluster_flag:
        c.add_argument("--cluster", choices=("local", "slurm"),
                       help="local: a LocalCluster on this machine (default); slurm: Dask workers as SLURM jobs "
                            "(dask-jobqueue; settings from jobqueue.slurm.* in ~/.config/dask/jobqueue.yaml, "
                            "overridden by the flags below)")
    if cluster_flag:  # how many jobs the run submits, not what a job script says
        c.add_argument("--jobs", type=int, metavar="N", help="SLURM worker jobs (default 1)")
    c.add_argument("--cores", type=int, metavar="C", help="cores per SLURM job, one single-threaded worker each "
                                                          "(default jobqueue.slurm.cores)")
    c.add_argument("--memory", metavar="SIZE", help="memory per SLURM job, e.g. 16GiB (default jobqueue.slurm.memory, else sized "
                                                    "from an ingested store's tiles)")
    c.add_argument("--walltime", metavar="HH:MM:SS", help="SLURM walltime of a job (default jobqueue.slurm.walltime)")
    c.add_argument("--queue", metavar="PARTITION", help="SLURM partition (default jobqueue.slurm.queue)")
    c.add_argument("--account", metavar="ACCOUNT", help="SLURM account (default jobqueue.slurm.account)")
    c.add_argument("--gpu-jobs", type=int, metavar="N", help="extra SLURM jobs with a GPU, whose workers offer the resource "
                                                            "GPU (for the tasks that need one; default 0)")
    c.add_argument("--gpus-per-job", type=int, metavar="G", help="GPUs of each GPU job: #SBATCH --gres=gpu:G and the "
                                                                "worker resource GPU=G (default 1)")
    if cluster_flag:  # how the run uses the jobs, not what a job script says
        c.add_argument("--adapt", metavar="MIN:MAX", help="let the number of SLURM worker jobs follow the load, between "
                                                          "MIN and MAX (instead of --jobs)")
        c.add_argument("--dashboard-address", metavar="HOST:PORT", help="where the SLURM scheduler's dashboard listens "
                                                                       "(default 127.0.0.1:8787, reached by an SSH "
                                                                       "tunnel)")


_EXAMPLES = {
    "ingest": "xsi-dask ingest ../shared/data/eds/jeol_View000_0000006.pts --split 4x4 --out jeol.zarr\n"
              "  xsi-dask ingest tile_*.bcf --grid 2x3 --out montage.zarr",
    "run": "xsi-dask run ../shared/data/eds/jeol_View000_0000006.pts --split 4x4 --bin 16 --out jeol_run\n"
           "  xsi-dask run g91.zarr --mcr --segments 6 --quantify --out g91_run\n"
           "  xsi-dask run montage.zarr --energy-range 0.2:10 --elements Fe,Cr,Mn --nmf-components 5 --out run2\n"
           "  xsi-dask run --config jeol_run/run.yaml --out jeol_run2",
    "decompose": "xsi-dask decompose jeol.zarr --out results.zarr --solver gram --components 20 --bin 16",
    "nmf": "xsi-dask nmf jeol.zarr --out results.zarr --components 4 --bin 16 --energy-range 0.3:",
    "simulate": "xsi-dask simulate --out g91.zarr --preset grade91_replica --tiles 2x2 --tile-shape 128x128 "
                "--zero-peak 0.15",
    "info": "xsi-dask info jeol.zarr --json",
    "clean": "xsi-dask clean jeol.zarr",
    "verify": "xsi-dask verify jeol.zarr",
    "report": "xsi-dask report results.zarr --out results_report --elements Ag,Al,Cu",
    "rotate": "xsi-dask rotate jeol_run/results.zarr --components 4",
    "mcr": "xsi-dask mcr jeol_run/results.zarr",
    "ica": "xsi-dask ica jeol_run/results.zarr --components 4",
    "segment": "xsi-dask segment jeol_run/results.zarr --segments 5 --on nmf",
    "quantify": "xsi-dask quantify bruker_run/results.zarr --k-factors kfactors.yaml --elements Al,Ag",
    "qc": "xsi-dask qc jeol_run/results.zarr --threshold 3.5",
    "cluster": "xsi-dask cluster slurm --print-job-script --cores 8 --memory 32GiB --walltime 02:00:00 --queue compute",
    "explore": "xsi-dask explore ../shared/data/eels/CuZn_HAADF.hspy ../shared/data/eels/CuZn_EELS_mapping_tutorial.hspy "
               "--structure CuZn_HAADF --scalarizer ratio:1020-1100/924-1004:bg=820-916:units=eV --acquisition ei "
               "--budget 60 --seeds 3 --out cuzn_explore\n"
               "  xsi-dask explore montage.zarr --structure HAADF --features results.zarr --scalarizer band:5.31-5.51 "
               "--acquisition ucb --budget 300 --out montage_explore",
}


def _sub(sub, name: str, help: str, **kw) -> argparse.ArgumentParser:
    """A subcommand with its help and an example (epilog)."""
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                          epilog=f"example:\n  {_EXAMPLES[name]}" if name in _EXAMPLES else None,
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="xsi-dask",
        description="Multivariate statistical analysis of sparse X-ray spectrum-image montages.",
        epilog=f"example:\n  {_EXAMPLES['run'].splitlines()[0]}\n'xsi-dask COMMAND --help' tells the options of each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"xsi-dask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "ingest", "read vendor files into a sparse montage store")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="tile files or glob patterns")
    p.add_argument("--out", required=True, metavar="STORE.zarr", help="the montage store to write")
    _add_layout(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--threads", type=int, default=None, help="tiles converted at once (default: cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    # run, decompose, nmf: flags not given are absent (SUPPRESS), so the parameter objects' defaults apply
    # and `run --config` can tell which flags were given
    quiet = argparse.SUPPRESS
    p = _sub(sub, "run", "ingest (or reuse a store), decompose, NMF, figures and report", argument_default=quiet)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="tile files, glob patterns, or one montage store")
    p.add_argument("--config", metavar="RUN.yaml",
                   help="repeat the run recorded in a run.yaml (with --out, --overwrite and --quiet only)")
    p.add_argument("--out", metavar="DIR", help="output folder (required without --config)")
    _add_layout(p)
    _add_view_options(p)
    _add_svd_options(p, components=10)
    p.add_argument("--nmf-components", type=int, metavar="K",
                   help="NMF endmembers (default: from the data, the SVD's n_significant, at least 2 and at most 12: "
                        "xsi-dask.nmf-components-min/-max)")
    _add_nmf_options(p)
    _add_analyses_options(p)
    _add_cluster_options(p)
    p.add_argument("--resume", action="store_true",
                   help="after an interrupted run into DIR: reuse its store, compute the SVD again and continue the NMF "
                        "from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = _sub(sub, "decompose", "Poisson-scaled SVD of a store into RESULTS.zarr (group svd)", argument_default=quiet)
    p.add_argument("store", metavar="STORE.zarr", help="the montage store (from ingest or simulate)")
    p.add_argument("--out", required=True, metavar="RESULTS.zarr", help="the results store (created or updated)")
    _add_view_options(p)
    _add_svd_options(p, components=10)
    _add_cluster_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing svd group of RESULTS.zarr")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = _sub(sub, "nmf", "Poisson (KL) NMF of a store into RESULTS.zarr (group nmf)", argument_default=quiet)
    p.add_argument("store", metavar="STORE.zarr", help="the montage store (from ingest or simulate)")
    p.add_argument("--out", required=True, metavar="RESULTS.zarr", help="the results store (created or updated)")
    p.add_argument("--components", type=int, metavar="K", help="endmembers (default 4)")
    _add_view_options(p)
    _add_nmf_options(p)
    p.add_argument("--seed", type=int, help="seed of the init (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint of an interrupted run of the same NMF (same result as if "
                        "uninterrupted); without one, start from the init")
    _add_cluster_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing nmf group of RESULTS.zarr")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    for name, helptext in _ANALYSIS_COMMANDS.items():
        p = _sub(sub, name, helptext, argument_default=quiet)
        p.add_argument("results", metavar="RESULTS.zarr", help="a results store (from run or decompose)")
        if name in ("rotate", "mcr", "ica"):
            p.add_argument("--components", type=int, metavar="K",
                           help="components (default: the NMF's endmembers, else the SVD's n_significant)")
        if name == "segment":
            p.add_argument("--segments", type=int, required=True, metavar="K", help="classes of the k-means")
            p.add_argument("--on", dest="segment_on", choices=("svd", "nmf", "mcr"),
                           help="the maps segmented (default svd: the Poisson-scaled scores; nmf, mcr: abundance fractions)")
        if name == "quantify":
            p.add_argument("--k-factors", metavar="FILE", help="YAML or CSV of line,k-factor (a simulated store may "
                                                               "leave it out)")
            p.add_argument("--elements", metavar="EL,EL,...", help="elements to map and quantify (default the files')")
        if name == "qc":
            p.add_argument("--threshold", dest="qc_threshold", type=float, metavar="Z",
                           help="robust z-score above which a tile is flagged (default 3.5)")
        _add_cluster_options(p)
        p.add_argument("--overwrite", action="store_true", help="replace the group if RESULTS.zarr has it")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = _sub(sub, "simulate", "simulate an EDS montage with ground truth into a sparse store")
    p.add_argument("--out", required=True, metavar="STORE.zarr", help="the montage store to write")
    p.add_argument("--preset", default="grade91_replica", help="grade91_replica (default) or am_aluminum")
    p.add_argument("--tiles", default="2x2", metavar="RxC", help="montage grid (default 2x2)")
    p.add_argument("--tile-shape", default="128x128", metavar="HxW", help="pixels per tile (default 128x128)")
    p.add_argument("--channels", type=int, default=4096, metavar="N", help="energy channels of 10 eV from 0 keV (default 4096)")
    p.add_argument("--counts-per-pixel", type=float, default=50.0, metavar="C", help="mean counts per pixel (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything simulated (default 0)")
    p.add_argument("--overlap", type=int, default=0, metavar="PX", help="pixels shared by neighbouring tiles (default 0)")
    p.add_argument("--low-count-tile", type=int, default=None, metavar="T", help="tile T gets a tenth of the dose")
    p.add_argument("--pixel-size", type=float, default=None, metavar="NM", help="pixel size in nm (default: the preset's)")
    p.add_argument("--particle-density", type=float, default=1.0, metavar="F",
                   help="multiply every particle phase's area fraction (default 1)")
    p.add_argument("--zero-peak", type=float, default=0.0, metavar="FRACTION",
                   help="add the detector's zero (strobe) peak at 0 keV holding this fraction of the counts, "
                        "e.g. 0.15 (default 0: none)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = _sub(sub, "info", "summarise a montage store")
    p.add_argument("store", metavar="STORE.zarr", help="the montage store")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")

    p = _sub(sub, "clean", "remove the NMF scratch folders that dead runs left beside a store")
    p.add_argument("store", metavar="STORE.zarr", help="the montage store")

    p = _sub(sub, "verify", "check every chunk, checksum, CSR array and total of a montage store")
    p.add_argument("store", metavar="STORE.zarr", help="the montage store")

    p = _sub(sub, "cluster", "show how Dask workers would run on a cluster scheduler (nothing is submitted)")
    p.add_argument("kind", choices=("slurm",), help="the scheduler: slurm")
    p.add_argument("--print-job-script", action="store_true", required=True,
                   help="print the batch script of one worker job, from jobqueue.slurm.* and the flags")
    _add_slurm_options(p.add_argument_group("the jobs"), cluster_flag=False)

    p = _sub(sub, "report", "figures and report.html of a results store (after decompose and/or nmf)")
    p.add_argument("results", metavar="RESULTS.zarr", help="results store written by decompose, nmf or run")
    p.add_argument("--out", metavar="DIR", help="folder of report.html and figures/ (default: the folder holding RESULTS.zarr)")
    p.add_argument("--elements", metavar="EL,EL", help="label peaks with these elements' X-ray lines, e.g. Fe,Cr "
                                                     "(default: the list the analysis recorded, else the files')")
    p.add_argument("--per-page", type=int, default=8, metavar="N", help="components per figure (default 8; all are shown)")
    p.add_argument("--title", help="report title (default from the source file names)")

    p = _sub(sub, "explore", "simulate a deep-kernel-learning automated experiment on pre-acquired data "
                             "(issue #12): structure -> where to measure the spectrum next")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="files read by RosettaSciIO holding a 2-D structural image and the 3-D spectrum image on its grid "
                        "(one file or several), or one montage store (ingest, simulate)")
    f = p.add_argument_group("features (at least one)")
    f.add_argument("--structure", metavar="IMAGE_NAME",
                   help="the structural image whose patches are the features: a 2-D signal's title (case-insensitive), "
                        "else its file's stem; a tile image of a store (e.g. HAADF)")
    f.add_argument("--features", metavar="RESULTS.zarr",
                   help="a results store of the montage input (decompose, nmf, run): its NMF abundances or SVD scores per "
                        "pixel as features (with --structure too: both, standardised)")
    f.add_argument("--feature-group", choices=("svd", "nmf"),
                   help="which of --features (default nmf when the results have it, else svd)")
    f.add_argument("--window", type=int, metavar="W", help="odd side of the --structure patches in pixels (default 5)")
    e = p.add_argument_group("the experiment")
    e.add_argument("--scalarizer", required=True, metavar="SPEC",
                   help="the scalar learned from each spectrum, in the energy axis' units (eV or keV) unless units= says: "
                        "band:LO-HI, integral:LO-HI, ratio:LO-HI/LO-HI, with :bg=LO-HI for a power-law background, "
                        "max:LO-HI, maxpos:LO-HI (e.g. ratio:1020-1100/924-1004:bg=820-916:units=eV)")
    e.add_argument("--acquisition", required=True, choices=_explore_acquisitions(),
                   help="how the DKL model picks the next pixel: expected improvement, upper confidence bound (beta 4), "
                        "largest uncertainty, or a Thompson draw (it seeks high values)")
    e.add_argument("--budget", type=int, required=True, metavar="N", help="measurements per run, the random start included")
    e.add_argument("--n-init", type=int, metavar="N",
                   help="random measurements first (default 0.5 %% of the pixels, at least 5, as the DKL papers)")
    e.add_argument("--seeds", type=int, default=1, metavar="S", help="runs of seeds 0..S-1 of every method (default 1)")
    e.add_argument("--steps", type=int, metavar="N", help="Adam steps per fit of the model (default: the model's, dkl_factory's steps)")
    e.add_argument("--baseline-gp", action="store_true",
                   help="also run the plain GP on the pixel coordinates with the same acquisition (random sampling "
                        "is always run as the baseline, from the same random start)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: explore.zarr, figures/, report.html")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier explore in DIR")
    p.add_argument("--title", help="report title (default from the scalarizer)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
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
    from .. import open_montage
    from ..io.store import MontageStore
    from ..qc import format_qc, tile_qc

    st = MontageStore(args.store)
    info = st.info()
    try:  # the dose from the stored per-tile sums: no pass over the counts
        qc, qc_error = tile_qc(open_montage(st)), None
    except XSIError as exc:  # a damaged store still gets its summary; verify says more
        qc, qc_error = None, str(exc)
    if args.json:
        import math

        info["qc"] = {"error": qc_error} if qc is None else {
            "flagged_tiles": [int(t) for t in qc["tile"].values[qc["flagged"].values]],
            "threshold": float(qc.attrs["threshold"]),
            "z_dose": [float(v) if math.isfinite(v) else None for v in qc["z_dose"].values]}
        print(json.dumps(info, indent=2))
    else:
        print(format_info(info))
        print(format_qc(qc) if qc is not None else f"tile QC       not computed: {qc_error}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from ..testing.simulate import simulate

    store = simulate(
        args.out, preset=args.preset, tiles=args.tiles, tile_shape=args.tile_shape, channels=args.channels,
        counts_per_pixel=args.counts_per_pixel, seed=args.seed, overlap=args.overlap,
        low_count_tile=args.low_count_tile, pixel_size_nm=args.pixel_size, particle_density=args.particle_density,
        zero_peak=args.zero_peak, overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(format_info(store.info()))
    return 0


# ---- argparse -> parameter objects -> pipeline ----

# the flags' destinations are the parameter objects' field names
_SVD_FLAGS = ("components", "solver", "power_iters", "oversampling", "seed")
_NMF_FLAGS = ("loss", "max_iter", "tol", "init", "sparsity", "seed", "checkpoint_every", "resume", "known_spectra")
_CLUSTER_FLAGS = ("scheduler", "workers", "threads_per_worker", "memory_limit", "cluster", "jobs", "cores", "memory",
                  "walltime", "queue", "account", "adapt", "gpu_jobs", "gpus_per_job", "dashboard_address",
                  "performance_report", "backend")
_VIEW_FLAGS = ("energy_range", "keep_zero_peak", "bin", "elements")


def _given(args: argparse.Namespace) -> dict:
    """The flags given on the command line (the analysis parsers leave the others out)."""
    return {k: v for k, v in vars(args).items() if k != "command"}


def _svd_params(g: dict):
    from ..pipeline import SVDParams

    kw = {k: g[k] for k in _SVD_FLAGS if k in g}
    if g.get("no_poisson"):
        kw["poisson"] = False
    if g.get("center"):
        kw["center"] = True
    return SVDParams(**kw)


def _nmf_params(g: dict, components_flag: str):
    from ..pipeline import NMFParams

    kw = {k: g[k] for k in _NMF_FLAGS if k in g}
    if components_flag in g:
        kw["components"] = g[components_flag]
    return NMFParams(**kw)


def _view_params(g: dict):
    from ..pipeline import ViewParams

    return ViewParams(**{k: g[k] for k in _VIEW_FLAGS if k in g})


def _cluster_params(g: dict):
    from ..pipeline import ClusterParams

    return ClusterParams(**{k: g[k] for k in _CLUSTER_FLAGS if k in g})


def _analyses_params(g: dict):
    from ..pipeline import AnalysesParams

    return AnalysesParams(**{k: g[k] for k in _ANALYSES_FLAGS if k in g})


_ANALYSIS_COMMANDS = {
    "rotate": "spatial-simplicity (varimax) rotation of the SVD in RESULTS.zarr (group rotation)",
    "mcr": "factored MCR-ALS of the SVD in RESULTS.zarr, from its varimax rotation (group mcr)",
    "ica": "FastICA of the SVD scores in RESULTS.zarr (group ica)",
    "segment": "k-means segmentation of the maps in RESULTS.zarr and the segments' mean spectra (group segments)",
    "quantify": "element maps and Cliff-Lorimer compositions of the endmembers in RESULTS.zarr (groups elements, "
                "quantification)",
    "qc": "tile quality control of the montage behind RESULTS.zarr: dose and model residual per tile (group qc)",
}


def _cmd_analysis(args: argparse.Namespace) -> int:
    from ..pipeline import AnalysesParams, analyse_results
    from ..pipeline._params import parse_elements

    g = _given(args)
    if "backend" in g and args.command in ("rotate", "ica", "segment"):
        # rotate and ica read only the stored maps, segment's pass labels pixels on the CPU: no kernel runs
        raise ParameterError(f"--backend: xsi-dask {args.command} runs no tile kernels, so no backend applies")
    kw = {k: g[k] for k in _ANALYSES_FLAGS if k in g}
    kw["qc"] = args.command == "qc"
    if args.command == "rotate":
        kw["rotate"] = "varimax"
    elif args.command in ("mcr", "ica", "quantify"):
        kw[args.command] = True
    params = AnalysesParams(**kw)
    elements = parse_elements(g["elements"]) if "elements" in g else None
    done = analyse_results(g["results"], params, components=g.get("components"), elements=elements,
                           cluster=_cluster_params(g), overwrite=g.get("overwrite", False), progress=not g.get("quiet", False))
    for line in done.lines.values():
        print(line)
    print(f"written to {g['results']} (group{'s' if len(done.groups) > 1 else ''} {', '.join(done.groups)}); "
          f"xsi-dask report {g['results']} draws them")
    return 0


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
        view, svd, nmf, cluster = _view_params(g), _svd_params(g), _nmf_params(g, "nmf_components"), _cluster_params(g)
        result = pipeline.run(
            g.get("inputs", []), g["out"], layout=layout, view=view, svd=svd, nmf=nmf, analyses=_analyses_params(g),
            cluster=cluster,
            overwrite=overwrite, progress=progress,
        )
    print(f"report: {result.report}")
    return 0


def _cmd_decompose(args: argparse.Namespace) -> int:
    from ..pipeline import decompose_store

    g = _given(args)
    ds = decompose_store(g["store"], g["out"], svd=_svd_params(g), view=_view_params(g), cluster=_cluster_params(g),
                         overwrite=g.get("overwrite", False), progress=not g.get("quiet", False))
    print(f"SVD ({ds.attrs['passes']} passes, {ds.attrs['seconds']:.1f} s) written to {g['out']} (group svd)")
    return 0


def _cmd_nmf(args: argparse.Namespace) -> int:
    from ..pipeline import nmf_store

    g = _given(args)
    ds = nmf_store(g["store"], g["out"], nmf=_nmf_params(g, "components"), view=_view_params(g), cluster=_cluster_params(g),
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


def _cmd_cluster(args: argparse.Namespace) -> int:
    from ..cluster.slurm import job_script
    from ..pipeline import ClusterParams

    g = {k: getattr(args, k) for k in ("cores", "memory", "walltime", "queue", "account", "gpu_jobs", "gpus_per_job")}
    print(job_script(ClusterParams(cluster="slurm", **g).slurm))  # the run's own checks and defaults
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ..plotting.build import make_report

    path = make_report(args.results, args.out, title=args.title, elements=args.elements, max_per_page=args.per_page)
    print(f"report: {path}")
    return 0


def _explore_acquisitions() -> tuple[str, ...]:
    """The DKL model's acquisitions (random sampling is explore's baseline, always run)."""
    from ..active.acquisition import ACQUISITIONS

    return tuple(a for a in ACQUISITIONS if a != "random")


def _cmd_explore(args: argparse.Namespace) -> int:
    from ..pipeline import explore_run

    report = explore_run(
        args.inputs, args.out, overwrite=args.overwrite, title=args.title,
        progress=None if args.quiet else (lambda line: print(line, flush=True)),
        structure=args.structure, features=args.features, feature_group=args.feature_group, window=args.window,
        scalarizer=args.scalarizer, acquisition=args.acquisition, budget=args.budget, n_init=args.n_init,
        seeds=args.seeds, steps=args.steps, baseline_gp=args.baseline_gp,
    )
    print(f"report: {report}")
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
    "cluster": _cmd_cluster,
    "explore": _cmd_explore,
    **dict.fromkeys(_ANALYSIS_COMMANDS, _cmd_analysis),
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
