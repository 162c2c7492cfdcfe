"""The main job as a function: files (or a store) -> montage store -> SVD -> NMF -> results.zarr -> figures -> report."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import (
    InputFileNotFoundError,
    NotOurOutputError,
    OutputWriteError,
    ParameterError,
    StoreExistsError,
    XSIError,
)
from ._params import DEFAULT_NMF_COMPONENTS, AnalysesParams, ClusterParams, LayoutParams, NMFParams, SVDParams, ViewParams

__all__ = ["RunResult", "decompose_store", "format_info", "nmf_components", "nmf_store", "resolve_inputs", "run"]


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
        (
            f"energy           {e['size']} channels, offset {e['offset']:.4f} keV, "
            f"{e['scale'] * 1e3:.4f} eV/channel, up to {e['offset'] + e['scale'] * (e['size'] - 1):.2f} keV"
        ),
        f"non-zeros        {info['nnz']:,} ({100 * info['fraction_nonzero']:.4f} % of voxels)",
        f"total counts     {info['total_counts']:,}",
        f"counts per pixel {info['counts_per_pixel']:.3f}",
        f"dense float32    {_size(info['dense_float32_bytes'])}",
        f"stored           {_size(info['stored_bytes'])} ({ratio:,.0f}x smaller)",
        "sources          " + "\n                 ".join(info["sources"]),
    ]
    acq = info.get("acquisition")
    if acq:
        lines += _format_acquisition(acq)
    return "\n".join(lines)


def _format_acquisition(acq: dict) -> list[str]:
    """The lines of :func:`format_info` for :func:`xsi_dask.io.metadata.acquisition`; per-source lists where values differ."""

    def val(v, fmt="{}", unit=""):
        if v is None:
            return "not recorded"
        if isinstance(v, list):  # differs between the source files: every value shown, never the first one
            shown = ", ".join("?" if x is None else fmt.format(x) for x in v[:8]) + (", ..." if len(v) > 8 else "")
            return f"differs by source: {shown}{unit}"
        return fmt.format(v) + unit

    elements = acq.get("elements")
    lines_ = ", ".join(acq.get("xray_lines") or [])
    res = acq.get("energy_resolution_MnKa")
    res_s = val(res, "{:g}", " eV at Mn Ka")
    if acq.get("energy_resolution_MnKa_default"):
        res_s += " (not recorded: exspy's default)"
    out = [
        f"signal           {val(acq.get('signal_type') or None)}",
        f"beam energy      {val(acq.get('beam_energy'), '{:g}', ' keV')}",
        "elements         " + (", ".join(elements) if elements else "not recorded")
        + (f" (lines {lines_})" if lines_ else ""),
        f"live time        {val(acq.get('live_time'), '{:.4g}', ' s')}",
        f"real time        {val(acq.get('real_time'), '{:.4g}', ' s')}",
        f"resolution       {res_s}",
        f"detector         {val(acq.get('detector'))}",
        f"microscope       {val(acq.get('microscope'))}",
    ]
    if acq.get("n_sources", 1) > 1 and (acq.get("live_time_per_source") or acq.get("real_time_per_source")):
        out.append("                 (times summed over the source files; they differ between files)")
    if acq.get("varying"):
        out.append(f"differs by file  {', '.join(acq['varying'])}")
    return out


@dataclass(frozen=True)
class RunResult:
    """What :func:`run` wrote, how long each stage took and how many passes over the data it made.

    ``nmf_components`` is the number of endmembers used and ``nmf_components_source`` where it came from
    (``"given"``, ``"n_significant"`` or ``"default"``; see :func:`nmf_components`).
    """

    out: Path
    report: Path
    results: Path
    store: Path
    config: Path
    figures: tuple[Path, ...]
    timings: dict[str, float] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)
    nmf_init: str = ""
    nmf_components: int = 0
    nmf_components_source: str = ""


def _is_store(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "zarr.json").is_file()


def _defaults(**objs: Any) -> list[Any]:
    """The parameter objects given, their defaults for None; a ParameterError for anything else."""
    kinds = {"layout": LayoutParams, "view": ViewParams, "svd": SVDParams, "nmf": NMFParams, "analyses": AnalysesParams,
             "cluster": ClusterParams}
    out = []
    for name, obj in objs.items():
        obj = kinds[name]() if obj is None else obj
        if not isinstance(obj, kinds[name]):
            raise ParameterError(f"{name} must be a {kinds[name].__name__}; got {type(obj).__name__}")
        out.append(obj)
    return out


def resolve_inputs(inputs: Sequence[str | Path] | str | Path | None, layout: LayoutParams) -> tuple[list[Path], bool]:
    """Absolute input paths (globs expanded, files checked) and whether they are one montage store."""
    from ..io.layout import expand_inputs

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    inputs = list(inputs or [])
    if len(inputs) == 1 and _is_store(inputs[0]):
        if layout.kind != "single":
            raise ParameterError(f"{inputs[0]} is a montage store; grid, split and manifest lay out files to ingest")
        return [Path(inputs[0]).resolve()], True
    if layout.manifest is not None:
        if inputs:
            raise ParameterError("the manifest lists the tile files: give no INPUT with a manifest")
        if not layout.manifest.is_file():
            raise InputFileNotFoundError(f"manifest not found: {layout.manifest}")
        return [], False
    if not inputs:
        raise ParameterError("no input: give tile files, glob patterns, one montage store, or a manifest")
    return [p.resolve() for p in expand_inputs(inputs)], False


def _reusable(target: Path, sources: list[Path], layout: LayoutParams):
    """The existing ``target`` store if it holds exactly this montage; StoreExistsError saying why not otherwise."""
    from ..io.layout import layout_record
    from ..io.store import MontageStore

    st = MontageStore(target)
    have = st.attrs.get("layout")
    want = layout_record(grid=layout.grid, split=layout.split, manifest=layout.manifest)
    why = []
    if have is None:
        why.append("it records no layout (written by an older xsi_dask)")
    elif have.get("kind") != want["kind"]:
        why.append(f"it was laid out by {have.get('kind')}, not {want['kind']}")
    elif have.get(want["kind"]) != want.get(want["kind"]) and want["kind"] != "single":
        if want["kind"] == "manifest":
            h, w = have.get("manifest") or {}, want["manifest"]
            what = "path" if h.get("path") != w["path"] else "content (SHA-256)"
            why.append(f"its manifest's {what} differs ({h.get('path')} when ingested, now {w['path']})")
        else:
            g0, g1 = have.get(want["kind"]), want[want["kind"]]
            why.append(f"its {want['kind']} is {g0[0]}x{g0[1]}, not {g1[0]}x{g1[1]}")
    if layout.kind != "manifest" and not why:
        recorded = [str(s["path"]) for s in st.attrs.get("sources", [])]
        wanted = [str(p) for p in sources]
        if recorded != wanted:
            why.append(f"its sources are {recorded}, not {wanted}")
    if not why:
        why += _changed_files(have)
    if why:
        raise StoreExistsError(
            f"{target} holds another montage: {'; '.join(why)}. Pass --overwrite (overwrite=True) to replace it, "
            "or another --out"
        )
    return st


def _changed_files(layout_attr: dict) -> list[str]:
    """Why the recorded source files are no longer those the store was made from (size, mtime, gone)."""
    from ..io.layout import source_fingerprints

    files = layout_attr.get("files")
    if files is None:
        return ["it records no sizes and modification times of its files (written by an older xsi_dask)"]
    for f in files:
        try:
            (now,) = source_fingerprints([f["path"]])
        except OSError:
            return [f"its source {f['path']} is gone"]
        if (now["size"], now["mtime_ns"]) != (f["size"], f["mtime_ns"]):
            return [f"its source {f['path']} changed since it was ingested (size or modification time)"]
    return []


@contextlib.contextmanager
def _client(cluster: ClusterParams):
    """The cluster's client for the block, with ``cluster.backend`` (when given) as ``xsi-dask.backend``."""
    import dask.config

    from ..cluster.local import dask_client
    from ..engine.backends import backend_name, backend_resources

    chosen = {"xsi-dask.backend": cluster.backend} if cluster.backend is not None else {}
    gpu = bool(backend_resources(backend_name(cluster.backend)))  # --backend, else xsi-dask.backend
    if cluster.slurm is not None:
        from ..cluster.slurm import slurm_cluster

        client = slurm_cluster(cluster.slurm)
    else:
        client = dask_client(
            cluster.scheduler, workers=cluster.workers, threads_per_worker=cluster.threads_per_worker,
            memory_limit=cluster.memory_limit, quiet=False,
            gpu_workers=gpu and cluster.scheduler is None,
        )
    with dask.config.set(chosen), client as c:
        yield c


PERFORMANCE_REPORT = "dask-performance-report.html"
"""The file name of Dask's performance report (``ClusterParams(performance_report=True)``, ``--performance-report``)."""


@contextlib.contextmanager
def _performance_report(cluster: ClusterParams, folder: Path) -> Iterator[contextlib.AbstractContextManager]:
    """Dask's performance report, written as ``folder/dask-performance-report.html`` when the block ends.

    Yields the context to enter around the work inside the client's block (a null context unless
    ``cluster.performance_report``): when that ends, the report is gathered from the scheduler into a hidden
    temporary file in ``folder``, which this block's end renames into place. Used outside the results' commit,
    the report appears only with the results it describes, and complete. If the work raises, no report is
    gathered (the cluster may be gone) and no file is left, temporary or not.
    """
    if not cluster.performance_report:
        yield contextlib.nullcontext()
        return
    target = folder / PERFORMANCE_REPORT
    tmp = folder / f".{PERFORMANCE_REPORT}.tmp-{os.getpid()}"
    try:
        yield _gather_performance_report(tmp)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise OutputWriteError(f"{target}: cannot be written ({exc.strerror or exc}); the results were written, "
                                   "the performance report was not") from exc
    finally:
        tmp.unlink(missing_ok=True)
    print(f"Dask performance report: {target}", flush=True)


@contextlib.contextmanager
def _gather_performance_report(tmp: Path) -> Iterator[None]:
    """``distributed.performance_report`` of the block, written to ``tmp``; nothing gathered if the block raises."""
    from distributed import performance_report

    # its "Calling Code" is the function with this block (3 frames up: its __exit__, this generator, contextlib's)
    report = performance_report(filename=str(tmp), stacklevel=3)
    report.__enter__()  # entered and left by hand: after an error the report is neither gathered nor written
    yield
    report.__exit__(None, None, None)


def _check_performance_report(cluster: ClusterParams, folder: Path) -> None:
    """Refuse, before any work, a ``dask-performance-report.html`` in ``folder`` that is not a plain file."""
    from ..io.store import describe_path

    target = folder / PERFORMANCE_REPORT
    if cluster.performance_report and (target.is_symlink() or target.exists()) and not target.is_file():
        raise NotOurOutputError(f"{target} is {describe_path(target)}, not a performance report; it is left as it is: "
                                "move it away or leave out --performance-report")


def _performance_attrs(cluster: ClusterParams) -> dict[str, Any]:
    """What the results record of the performance report: its path relative to the results store's folder."""
    return {"performance_report": PERFORMANCE_REPORT} if cluster.performance_report else {}


def _with_slurm_memory(cluster: ClusterParams, montage, ks: tuple[int | None, ...], solver: str) -> ClusterParams:
    """``cluster``, with the memory of a SLURM job sized from the montage's tiles when neither ``--memory`` nor
    ``jobqueue.slurm.memory`` gives it: each of the job's worker processes gets what the pass engine needs for one
    task on the largest tile at k components (the largest of ``ks``; None: NMF's ``xsi-dask.nmf-components-max``;
    :meth:`~xsi_dask.engine.plan.Plan.worker_memory`), at least
    ``xsi-dask.slurm-min-worker-memory``. Unchanged otherwise, and when the montage is not known yet (files
    still to ingest): then the job's memory must be given."""
    import dask.config

    from .. import config
    from ..cluster.slurm import job_shape
    from ..engine.plan import make_plan

    spec = cluster.slurm
    if spec is None or montage is None or spec.memory is not None or dask.config.get("jobqueue.slurm.memory", None):
        return cluster
    shape = job_shape(spec)
    if shape is None:  # no cores either: the cluster refuses it, naming both
        return cluster
    k = max(int(config.get("nmf-components-max")) if v is None else int(v) for v in ks)
    processes = shape[1]
    threads = shape[0] // processes
    # the tiles' shapes size the job; the CPU backend plans here (the login node has no GPU, the backend no say)
    need = make_plan(montage, backend="numba").worker_memory(k, threads=threads, solver=solver)["limit"]
    per_worker = max(need, config.get_bytes("slurm-min-worker-memory"))
    memory = f"{-(-processes * per_worker // 2**30)}GiB"
    print(f"SLURM job memory {memory}: {processes} worker(s) x {per_worker / 2**30:.1f} GiB for tiles of "
          f"{montage.sizes['y']} x {montage.sizes['x']} pixels x {montage.sizes['energy']} channels at k = {k} "
          "(--memory sets it)", flush=True)
    return dataclasses.replace(cluster, memory=memory)


def _view(store, view: ViewParams):
    """The montage view of ``store`` the analysis runs on; a ParameterError (bad range or bin) before any pass."""
    from .. import open_montage

    return view.apply(open_montage(store))


def _view_attrs(view: ViewParams) -> dict[str, Any]:
    """What the results record of the analysis beyond what the engine records (energy range, zero-peak cutoff,
    bin and the files' acquisition metadata): the analyst's ``--elements``, which replace the files' list."""
    return {"elements": list(view.elements)} if view.elements else {}


def _annotate(root: Path, group: str, attrs: dict[str, Any], *, consolidate: bool) -> None:
    """Set ``attrs`` on group ``group`` of the results store ``root`` being written (replacing those of the same name)."""
    import zarr

    from ..io.readers import to_json
    from ..io.results import _consolidate

    g = zarr.open_group(str(root), mode="r+", path=group, zarr_format=3)
    g.attrs.update(to_json(attrs))
    if consolidate:
        _consolidate(root)


def nmf_components(svd_ds, nmf: NMFParams) -> tuple[int, str]:
    """The number of NMF endmembers of a run and where it came from.

    Given (``nmf.components``): that, ``"given"``. Otherwise the SVD's
    ``n_significant`` (the components above the Poisson noise floor)
    clipped to ``xsi-dask.nmf-components-min`` .. ``xsi-dask.nmf-components-max``
    (a rank-1 map still gets two endmembers to compare; a noisy scree cannot
    ask for dozens), ``"n_significant"``. If the SVD has no ``n_significant``,
    ``DEFAULT_NMF_COMPONENTS`` with an :class:`~xsi_dask.errors.XSIWarning`,
    ``"default"``.

    Returns
    -------
    k : int
    source : str
        ``"given"``, ``"n_significant"`` or ``"default"``.
    """
    import warnings

    from .. import config
    from ..errors import XSIWarning

    if nmf.components is not None:
        return nmf.components, "given"
    n_sig = svd_ds.attrs.get("n_significant")
    if n_sig is None:
        warnings.warn(
            f"the SVD records no n_significant (number of components above the noise): NMF uses {DEFAULT_NMF_COMPONENTS} "
            "endmembers; give --nmf-components K (NMFParams(components=K)) to choose",
            XSIWarning, stacklevel=3,
        )
        return DEFAULT_NMF_COMPONENTS, "default"
    lo, hi = int(config.get("nmf-components-min")), int(config.get("nmf-components-max"))
    if not 1 <= lo <= hi:
        raise ParameterError(f"xsi-dask.nmf-components-min ({lo}) and -max ({hi}) must satisfy 1 <= min <= max")
    return min(max(int(n_sig), lo), hi), "n_significant"


def _describe_components(k: int, source: str, svd_ds) -> str:
    from .. import config

    if source == "given":
        return f"{k} (given)"
    if source == "default":
        return f"{k} (the default: the SVD records no n_significant)"
    n_sig = int(svd_ds.attrs["n_significant"])
    lo, hi = int(config.get("nmf-components-min")), int(config.get("nmf-components-max"))
    clip = "" if k == n_sig else f", {'raised to the floor' if k > n_sig else 'cut to the cap'}"
    return f"{k} (from the data: n_significant = {n_sig} of the SVD{clip}; floor {lo}, cap {hi})"


def _svd(montage, channels: int, svd: SVDParams, progress: bool):
    from .. import decompose

    return decompose(
        montage, min(svd.components, channels), solver=svd.solver, power_iters=svd.power_iters,
        oversampling=svd.oversampling, poisson=svd.poisson, center=svd.center, seed=svd.seed, progress=progress,
    )


def _init_from(svd_ds, nmf: NMFParams) -> tuple[Any, str]:
    """The NMF init: the SVD already computed where it is the one NMF would compute, else the named method."""
    if nmf.init != "poisson-nndsvda":
        return nmf.init, f"{nmf.init} (computed by nmf)"
    a = svd_ds.attrs
    why = []
    if not bool(a.get("poisson")):
        why.append("the SVD is not Poisson-scaled")
    if bool(a.get("center")):
        why.append("the SVD is centred")
    if int(a.get("n_components", 0)) < nmf.components:
        why.append(f"the SVD has {a.get('n_components')} components, fewer than the {nmf.components} endmembers")
    if why:
        return nmf.init, f"poisson-nndsvda computed by nmf ({', '.join(why)})"
    return svd_ds, f"NNDSVDa from the Poisson-scaled SVD above (computed once, its first {nmf.components} components)"


def known_spectra(nmf: NMFParams, montage):
    """The references of ``nmf.known_spectra`` on the view's channels, (component, energy); None without any.

    Raises
    ------
    InputFileNotFoundError, UnsupportedFormatError, ParameterError
        A spectrum file that is not there, not readable, or not on the view's calibration.
    StoreFormatError, ViewError
        A results store without the group, a component it does not have, or endmembers on other channels.
    """
    if not nmf.known_spectra:
        return None
    import numpy as np
    import xarray as xr

    from ..errors import StoreFormatError
    from ..io.readers import read_reference_spectrum
    from ..io.results import has_group, open_results

    refs = []
    for spec in nmf.known_spectra:
        parts = spec.rsplit(":", 2)  # NMFParams checked the form: a file, or RESULTS.zarr:GROUP:INDEX
        if len(parts) == 3 and parts[0].rstrip("/").endswith(".zarr"):
            path, group, index = parts[0], parts[1], int(parts[2])
            if not has_group(path, group):
                raise StoreFormatError(f"known spectrum {spec}: {path} has no {group} group")
            sp = open_results(path, group)["spectra"]
            if not 0 <= index < sp.sizes["component"]:
                raise StoreFormatError(f"known spectrum {spec}: the {group} group has endmembers 0-{sp.sizes['component'] - 1}")
            ref = sp.isel(component=index).drop_vars("component").load()
            if ref.sizes["energy"] != montage.sizes["energy"] or not np.array_equal(ref["energy"].values,
                                                                                      montage["energy"].values):
                from ..errors import ViewError

                raise ViewError(f"known spectrum {spec}: its endmember is on other channels ({ref.sizes['energy']}, "
                                f"{float(ref['energy'][0]):.3f}-{float(ref['energy'][-1]):.3f} keV) than the analysis view "
                                f"({montage.sizes['energy']}); use the same --energy-range and zero-peak setting")
        else:
            ref = read_reference_spectrum(spec, montage)
        refs.append(ref)
    return xr.concat(refs, "component")


def _nmf(montage, nmf: NMFParams, init: Any, results: Path, progress: bool, refs=None):
    """NMF written as group ``nmf`` of the staged ``results`` (its scratch folder gone); the dataset opened from there.
    ``refs``: the known spectra read already (default: read here)."""
    from .. import nmf as nmf_fn

    return nmf_fn(
        montage, nmf.components, loss=nmf.loss, max_iter=nmf.max_iter, tol=nmf.tol, init=init, seed=nmf.seed,
        sparsity=nmf.sparsity, out=results, checkpoint_every=nmf.checkpoint_every,
        resume=nmf.resume, progress=progress, fixed_spectra=known_spectra(nmf, montage) if refs is None else refs,
    )


_RUN_CONFIG_HEADER = "# xsi_dask run parameters"
_RUN_NAMES = ("run.yaml", "report.html", "figures")


def _is_run_folder(out: Path) -> bool:
    """Whether ``out`` holds the ``run.yaml`` of an xsi_dask run (so its report and figures are ours)."""
    try:
        with open(out / "run.yaml", encoding="utf-8") as f:
            return f.readline().startswith(_RUN_CONFIG_HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def _check_outputs(out: Path, target: Path | None, overwrite: bool, cluster: ClusterParams) -> None:
    """Refuse, before any work, an ``out`` the run may not write into (see :func:`run`)."""
    from ..io.results import check_results_target
    from ..io.store import _probe_writable, check_output, describe_path

    if (out.is_symlink() or out.exists()) and not out.is_dir():
        raise NotOurOutputError(f"{out} is {describe_path(out)}: the --out of run is a folder; choose another --out")
    if out.is_dir() and not _is_run_folder(out):
        names = (*_RUN_NAMES, PERFORMANCE_REPORT) if cluster.performance_report else _RUN_NAMES
        clash = [n for n in names if (out / n).is_symlink() or (out / n).exists()]
        if clash:
            raise NotOurOutputError(
                f"{out} is not the folder of an xsi_dask run (no run.yaml of ours), but holds {', '.join(clash)}, "
                "which a run writes; they are left as they are: choose another --out (or move them away yourself)"
            )
    _check_performance_report(cluster, out)
    _probe_writable(out / "run.yaml" if out.is_dir() else out)
    if target is not None and (target.is_symlink() or target.exists()):
        check_output(target, "montage", overwrite=True, probe=False)  # a montage store (or an empty folder) only
    results = out / "results.zarr"
    check_results_target(results, ("svd", "nmf"), overwrite=True)
    if (results.is_symlink() or results.exists()) and not overwrite:
        raise StoreExistsError(f"{results} exists; pass --overwrite (overwrite=True) to replace it")


def _make_folder(out: Path) -> list[Path]:
    """Create ``out`` and its missing parents; the folders created, deepest first."""
    created = []
    p = out
    while not (p.is_symlink() or p.exists()) and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(f"{out}: cannot be created ({exc.strerror or exc}); choose another --out") from exc
    return created


def _unmake_folder(created: list[Path], config: Path | None) -> None:
    """After a failed run: remove the folders it created if nothing but its run.yaml went into them."""
    if not created:
        return
    out = created[0]
    left = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if left - {"run.yaml", "figures"} or (out / "figures").is_dir() and any((out / "figures").iterdir()):
        return  # a complete montage store (say) is kept: the next run reuses it, run.yaml says how it was made
    if config is not None:
        config.unlink(missing_ok=True)
    for d in [out / "figures", *created]:
        try:
            d.rmdir()
        except OSError:
            pass


def run(
    inputs: Sequence[str | Path] | str | Path | None,
    out: str | Path,
    *,
    layout: LayoutParams | None = None,
    view: ViewParams | None = None,
    svd: SVDParams | None = None,
    nmf: NMFParams | None = None,
    analyses: AnalysesParams | None = None,
    cluster: ClusterParams | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Ingest (or reuse a store), Poisson SVD, NMF, ``results.zarr``, figures and ``report.html`` under ``out``.

    ``inputs`` are tile files or glob patterns laid out by ``layout``, or one
    montage store analysed as it is. The SVD and the NMF run on the view
    ``view`` makes of it (:class:`ViewParams`: energy range, the EDS zero peak
    excluded by default, spatial binning). Files are ingested into
    ``out/montage.zarr``; an existing one is reused only when it records the
    same absolute source paths and the same layout (grid, split, or the
    manifest's path and SHA-256), otherwise :class:`StoreExistsError` says why.
    The SVD is computed once: with ``nmf.init="poisson-nndsvda"`` NMF starts
    from it when it is Poisson-scaled, uncentred and has at least
    ``nmf.components`` components. Without ``nmf.components`` the number of
    endmembers comes from the data (:func:`nmf_components`: the SVD's
    ``n_significant``, at least 2 and at most 12 by default), printed, in
    :attr:`RunResult.nmf_components` and the ``nmf`` group's attribute
    ``n_components_source``. Every run writes its parameters to
    ``out/run.yaml`` (:func:`load_run_config` reads them back). The analyses
    of ``analyses`` (:class:`AnalysesParams`: rotation, MCR, ICA, segments,
    element maps and quantification, and by default the tile QC) follow the
    NMF, each its own group of the same results store. With
    ``cluster.performance_report`` (``--performance-report``) Dask's
    performance report of the ingest, SVD and NMF is written as
    ``out/dask-performance-report.html``, recorded in the results' attribute
    ``performance_report`` (the path relative to ``out``) and linked from
    ``report.html``.

    Raises
    ------
    ParameterError, LayoutError, InputFileNotFoundError
        Bad parameters or missing inputs, before any work; an energy range
        or a bin factor the store cannot take (too few channels, a bin that
        does not divide the tile size), as soon as the store is known (before
        any pass; after the ingest when files are ingested).
    ClusterUnavailableError
        ``cluster.scheduler`` does not answer within ``xsi-dask.connect-timeout``
        (before the ingest).
    StoreExistsError
        ``out/results.zarr`` exists (or ``out/montage.zarr`` holds another
        montage) and ``overwrite`` is false; raised before any computation.
    NotOurOutputError
        ``out`` is a file; or it is not the folder of an xsi_dask run (no
        ``run.yaml`` of ours) yet holds ``run.yaml``, ``report.html`` or
        ``figures`` (or, with ``cluster.performance_report``,
        ``dask-performance-report.html``); or its ``montage.zarr`` /
        ``results.zarr`` is not the package's store of that kind; or, with
        ``cluster.performance_report``, its ``dask-performance-report.html``
        is not a plain file. Raised before any work, ``overwrite`` or not:
        nothing that is not the package's output is replaced.
    OutputWriteError
        ``out`` cannot be written (checked before any work), or a write
        failed (a full disk): nothing half-written is left.

    Notes
    -----
    ``svd`` and ``nmf`` are written into a staged results store that replaces
    ``results.zarr`` in one rename once both are complete, so an interrupted
    or failed run leaves the previous results as they were. A run that fails
    leaves no folder it created empty (its ``run.yaml`` goes too, unless a
    complete montage store was ingested there, which the next run reuses).
    With ``nmf.resume`` the NMF continues from its checkpoint beside the
    store (the interrupted run's results were never committed). The
    performance report is gathered from the scheduler just before the cluster
    closes and renamed into place complete once the results are committed;
    a run whose analysis fails writes none.
    """
    from ._config import RunConfig, save_run_config

    layout, view, svd, nmf, analyses, cluster = _defaults(layout=layout, view=view, svd=svd, nmf=nmf, analyses=analyses,
                                                          cluster=cluster)
    sources, given_store = resolve_inputs(inputs, layout)
    out = Path(out).resolve()
    target = sources[0] if given_store else out / "montage.zarr"
    _check_outputs(out, None if given_store else target, overwrite, cluster)
    store = None
    if given_store:
        from ..io.store import MontageStore

        store = MontageStore(target)
    elif target.exists() and not overwrite:
        store = _reusable(target, sources, layout)
    # an energy range or bin the store cannot take: refused before anything is made (after the ingest otherwise)
    montage = None if store is None else _view(store, view)
    checked = None if montage is None else _check_before_work(analyses, montage, view, nmf, svd)
    cluster = _with_slurm_memory(cluster, montage, (svd.components, nmf.components), svd.solver)

    created = _make_folder(out)
    config = None
    try:
        config = save_run_config(
            out / "run.yaml",
            RunConfig(inputs=tuple(sources), out=out, layout=layout, view=view, svd=svd, nmf=nmf, analyses=analyses,
                      cluster=cluster),
        )
        return _run_in(out, sources, given_store, target, store, montage, config, layout, view, svd, nmf, analyses, cluster,
                       overwrite, progress, checked)
    except OSError as exc:
        _unmake_folder(created, config)
        from ..io.store import _is_output_fault, _output_error

        if isinstance(exc, XSIError) or not _is_output_fault(exc, out):
            raise
        raise _output_error(out, exc) from exc  # run.yaml, figures, report: a full disk is the package's error
    except BaseException:
        _unmake_folder(created, config)
        raise


def _check_before_work(analyses, montage, view, nmf, svd):
    """The analyses' and known spectra's refusals before any pass; what they found (the quantification's lines and
    k-factors, the references), so that the run uses them as checked."""
    from ._analyses import check_analyses

    quant = check_analyses(analyses, montage, view.elements, k=nmf.components, svd_components=svd.components)
    return quant, known_spectra(nmf, montage)  # the references: there, readable, on the view's channels


def _run_in(out, sources, given_store, target, store, montage, config, layout, view, svd, nmf, analyses, cluster,
            overwrite, progress, checked) -> RunResult:
    """:func:`run` once its outputs are checked and its folder made (``montage``: the view of a known ``store``)."""
    import dataclasses

    from ..cluster.shared import check_workers_see_store
    from ..engine import worker_addresses
    from ..io.ingest import ingest
    from ..io.results import open_results, write_results
    from ..io.store import atomic_output
    from ..plotting.build import make_report
    from ..plotting.formatting import format_seconds
    from ._analyses import run_analyses

    results = out / "results.zarr"
    timings: dict[str, float] = {}
    # svd and nmf go into a staged results store that replaces results.zarr in one rename once both are written
    # (a reader sees the old results or the new ones); it is removed only after the cluster is down. The cluster
    # comes first: an unreachable --scheduler is said within the connect timeout, not after the ingest. Dask's
    # performance report (--performance-report) is gathered while the cluster is up, put in place after the commit
    with (_performance_report(cluster, out) as gather, atomic_output(results, overwrite=overwrite, kind="results") as staged,
          _client(cluster), gather):
        t = time.perf_counter()
        if given_store:
            timings["open store"] = time.perf_counter() - t
        elif store is not None:
            print(f"reusing the montage store {target}")
            timings["open store (reused)"] = time.perf_counter() - t
        else:
            store = ingest(  # on threads of this process (not the cluster's workers)
                sources, target, grid=layout.grid, manifest=layout.manifest, split=layout.split,
                overwrite=overwrite, progress=progress,
            )
            timings["ingest"] = time.perf_counter() - t
        check_workers_see_store(store.path)  # a worker on a node without the shared file system: said now
        info = store.info()
        print(format_info(info))
        if montage is None:  # after an ingest, the bin is checked against the tile size here, before any pass
            montage = _view(store, view)
            checked = _check_before_work(analyses, montage, view, nmf, svd)
        quant, refs = checked
        print(f"analysis view    {view.describe()}: {montage.sizes['energy']} channels "
              f"{montage.attrs['energy_range'][0]:.3f}-{montage.attrs['energy_range'][1]:.3f} keV, "
              f"tiles of {montage.sizes['y']} x {montage.sizes['x']} pixels")
        recorded = {**_view_attrs(view), **_performance_attrs(cluster)}
        t = time.perf_counter()
        svd_ds = _svd(montage, montage.sizes["energy"], svd, progress)
        timings["SVD"] = time.perf_counter() - t
        svd_ds.attrs.update(recorded)
        t = time.perf_counter()
        write_results(staged, {"svd": svd_ds}, progress=progress)
        timings["write SVD (scores tile by tile)"] = time.perf_counter() - t
        k, k_source = nmf_components(svd_ds, nmf)
        k_text = _describe_components(k, k_source, svd_ds)
        print(f"NMF endmembers   {k_text}")
        nmf = dataclasses.replace(nmf, components=k)
        init, init_text = _init_from(svd_ds, nmf)
        t = time.perf_counter()
        _nmf(montage, nmf, init, staged, progress, refs)
        _annotate(staged, "nmf", {**recorded, "n_components_source": k_source}, consolidate=True)
        timings["NMF (written tile by tile)"] = time.perf_counter() - t
        done = run_analyses(staged, montage, analyses, k, elements=view.elements, progress=progress, quant=quant)
        for line in done.lines.values():
            print(line)
        timings.update({f"{name} (written)": v for name, v in done.timings.items()})
        n_workers = len(worker_addresses())  # scheduler_info() lists only a few workers in some releases
    nmf_r = open_results(results, "nmf")
    passes = {"svd": int(svd_ds.attrs["passes"]), "nmf": int(nmf_r.attrs["passes"]), **done.passes}

    names = [str(p) for p in sources] or [str(layout.manifest)]
    a = svd_ds.attrs
    params = {
        "inputs": " ".join(names),
        "store": str(store.path),
        "layout": layout.describe() if not given_store else "the store's own",
        "view": view.describe(),
        "NMF endmembers": k_text,
        "SVD": f"k={a['n_components']}, solver={a['solver']}, power iterations={a.get('power_iters', '-')}, "
               f"oversampling={a.get('oversampling', '-')}, Poisson scaling={bool(a['poisson'])}, "
               f"centred={bool(a['center'])}, seed={a['seed']}",
        "NMF": f"k={nmf.components}, loss={nmf.loss}, max_iter={nmf.max_iter}, tol={nmf.tol}, sparsity={nmf.sparsity}, "
               f"seed={nmf.seed}, iterations run={nmf_r.attrs['n_iter']}",
        "NMF init": init_text,
        "analyses": analyses.describe(),
        "passes: SVD": str(passes["svd"]),
        "passes: NMF": f"{passes['nmf']} ({nmf_r.attrs['n_iter']} iterations)",
        **{f"passes: {name}": str(n) for name, n in done.passes.items()},
        "cluster": cluster.scheduler or f"LocalCluster, {n_workers} workers",
        "parameters": str(config),
        "xsi_dask": __version__,
    }
    first = Path(names[0]).name
    t = time.perf_counter()
    report = make_report(
        results, out, title=f"xsi_dask run: {first}" + (f" and {len(names) - 1} more" if len(names) > 1 else ""),
        run_info={**params, **{f"time: {k}": format_seconds(v) for k, v in timings.items()}},
    )
    timings["figures and report"] = time.perf_counter() - t
    figs = sorted((out / "figures").glob("*.png"))
    return RunResult(
        out=out, report=Path(report), results=results, store=Path(store.path), config=config, figures=tuple(figs),
        timings=timings, passes=passes, nmf_init=init_text, nmf_components=k, nmf_components_source=k_source,
    )


def _analyse_store(store, out, group: str, params, view: ViewParams, cluster, overwrite: bool, progress: bool):
    """One analysis of a montage store written as group ``group`` of the results store ``out``."""
    import dataclasses

    from ..cluster.shared import check_workers_see_store
    from ..io.results import check_results_target, open_results, results_update, write_results
    from ..io.store import MontageStore

    out = check_results_target(out, [group], overwrite=overwrite)  # before any computation
    _check_performance_report(cluster, out.parent)
    st = MontageStore(store)
    montage = _view(st, view)  # a bad energy range or bin: refused before any pass
    cluster = _with_slurm_memory(cluster, montage, (params.components or DEFAULT_NMF_COMPONENTS,),
                                 getattr(params, "solver", "randomized"))
    recorded = {**_view_attrs(view), **_performance_attrs(cluster)}
    # the staged store (the kept groups of out plus this one) replaces out when complete, after the cluster is down;
    # Dask's performance report (--performance-report) is gathered while the cluster is up, put beside out after
    # the analyses computed from the group replaced would describe the old one: they go with it (never stale)
    from ..io.results import RESULT_GROUPS, has_group

    derived = [g for g in RESULT_GROUPS if g not in ("svd", "nmf") and has_group(out, g)] if has_group(out, group) else []
    if derived:
        print(f"replacing {group}: the groups computed from the results before it go too: {', '.join(derived)}")
    with (_performance_report(cluster, out.parent) as gather,
          results_update(out, [group, *derived], overwrite=overwrite) as staged, _client(cluster), gather):
        check_workers_see_store(st.path)
        if group == "nmf":
            source = "given" if params.components is not None else "default"
            params = params if params.components is not None else dataclasses.replace(params, components=DEFAULT_NMF_COMPONENTS)
            _nmf(montage, params, params.init, staged, progress)
            _annotate(staged, "nmf", {**recorded, "n_components_source": source}, consolidate=False)  # the commit consolidates
        else:
            ds = _svd(montage, montage.sizes["energy"], params, progress)
            ds.attrs.update(recorded)
            write_results(staged, {"svd": ds}, progress=progress)
    return open_results(out, group)


def decompose_store(
    store: str | Path,
    out: str | Path,
    *,
    svd: SVDParams | None = None,
    view: ViewParams | None = None,
    cluster: ClusterParams | None = None,
    overwrite: bool = False,
    progress: bool = True,
):
    """The SVD of a montage store, written as group ``svd`` of the results store ``out``; returned as opened from it.

    It runs on the view ``view`` makes of the store (:class:`ViewParams`; by default the EDS zero peak
    excluded). An existing group is refused (:class:`StoreExistsError`), and an energy range or bin the store
    cannot take (:class:`ParameterError`), before any computation. With ``cluster.performance_report``
    (``--performance-report``) Dask's performance report of the SVD is written beside ``out`` as
    ``dask-performance-report.html`` (replacing one there; none if the SVD fails) and recorded in the group's
    attribute ``performance_report`` (the path relative to ``out``'s folder), so ``xsi-dask report`` links it.
    """
    svd, view, cluster = _defaults(svd=svd, view=view, cluster=cluster)
    return _analyse_store(store, out, "svd", svd, view, cluster, overwrite, progress)


def nmf_store(
    store: str | Path,
    out: str | Path,
    *,
    nmf: NMFParams | None = None,
    view: ViewParams | None = None,
    cluster: ClusterParams | None = None,
    overwrite: bool = False,
    progress: bool = True,
):
    """The NMF of a montage store, written as group ``nmf`` of the results store ``out``; returned as opened from it.

    It runs on the view ``view`` makes of the store (:class:`ViewParams`; by default the EDS zero peak
    excluded), with ``nmf.components`` endmembers (None: ``DEFAULT_NMF_COMPONENTS``, 4; no SVD is computed
    here to take the number from). An existing group is refused (:class:`StoreExistsError`), and an energy
    range or bin the store cannot take (:class:`ParameterError`), before any computation. With
    ``cluster.performance_report`` (``--performance-report``) Dask's performance report of the NMF is written
    beside ``out`` as ``dask-performance-report.html`` (replacing one there, the SVD's of ``decompose_store``
    included; none if the NMF fails) and recorded in the group's attribute ``performance_report`` (the path
    relative to ``out``'s folder), so ``xsi-dask report`` links it.
    """
    nmf, view, cluster = _defaults(nmf=nmf, view=view, cluster=cluster)
    return _analyse_store(store, out, "nmf", nmf, view, cluster, overwrite, progress)
