"""Typed, validated parameters of a pipeline run: checked when built, before any work."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LayoutError, ParameterError
from ..io.layout import parse_grid

__all__ = ["AnalysesParams", "ClusterParams", "LayoutParams", "NMFParams", "SVDParams", "ViewParams", "parse_elements",
           "parse_energy_range"]

SOLVERS = ("randomized", "gram")
LOSSES = ("kl", "frobenius")
NMF_INITS = ("poisson-nndsvda", "nndsvda", "random")


def _int(owner: str, name: str, value: Any, minimum: int | None = None, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"{owner}.{name} must be an integer; got {value!r}")
    if minimum is not None and value < minimum:
        raise ParameterError(f"{owner}.{name} must be >= {minimum}; got {value}")
    return int(value)


def _float(owner: str, name: str, value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParameterError(f"{owner}.{name} must be a finite number; got {value!r}")
    if value < minimum:
        raise ParameterError(f"{owner}.{name} must be >= {minimum:g}; got {value!r}")
    return float(value)


def _bool(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ParameterError(f"{owner}.{name} must be true or false; got {value!r}")
    return value


def _choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ParameterError(f"{owner}.{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass in __post_init__


class _Params:
    """Shared helpers: a plain dict for run.yaml, and construction from one that refuses unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None):
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ParameterError(f"{cls.__name__}: unknown parameter(s) {unknown}; known: {sorted(names)}")
        return cls(**data)


@dataclass(frozen=True)
class SVDParams(_Params):
    """The (Poisson-scaled) SVD of a run: :func:`xsi_dask.decompose`'s parameters."""

    components: int = 10
    solver: str = "randomized"
    power_iters: int | None = None
    oversampling: int | None = None
    poisson: bool = True
    center: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        o = "SVDParams"
        _int(o, "components", self.components, 1)
        _choice(o, "solver", self.solver, SOLVERS)
        _int(o, "power_iters", self.power_iters, 0, optional=True)
        _int(o, "oversampling", self.oversampling, 0, optional=True)
        _bool(o, "poisson", self.poisson)
        _bool(o, "center", self.center)
        _int(o, "seed", self.seed, 0)


@dataclass(frozen=True)
class NMFParams(_Params):
    """The NMF of a run: :func:`xsi_dask.nmf`'s parameters.

    ``components`` None (the default): :func:`~xsi_dask.pipeline.run` takes the
    number of endmembers from the data, the SVD's ``n_significant`` clipped to
    ``xsi-dask.nmf-components-min`` .. ``xsi-dask.nmf-components-max`` (2 .. 12);
    :func:`~xsi_dask.pipeline.nmf_store`, which computes no SVD, uses
    ``DEFAULT_NMF_COMPONENTS`` (4).

    ``checkpoint_every`` (None: ``xsi-dask.nmf-checkpoint-every``; 0: none) and ``resume`` (continue from the
    checkpoint of an interrupted run of the same NMF) decide how the run survives a kill, not its result.

    ``known_spectra`` fixes endmember spectra to references (NMF with known spectra; the rest stay free): each a
    spectrum file RosettaSciIO reads (``.msa``, ``.spx``, a 1-D ``.hspy``) on the view's own channels, or
    ``RESULTS.zarr:GROUP:INDEX``, endmember ``INDEX`` of another run's ``nmf`` or ``mcr`` group. Paths are made
    absolute when the object is built.
    """

    components: int | None = None
    loss: str = "kl"
    max_iter: int = 200
    tol: float = 1e-4
    init: str = "poisson-nndsvda"
    sparsity: float = 0.0
    seed: int = 0
    checkpoint_every: int | None = None
    resume: bool = False
    known_spectra: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        o = "NMFParams"
        if isinstance(self.known_spectra, (str, Path)):
            _set(self, "known_spectra", (self.known_spectra,))
        _set(self, "known_spectra", tuple(_known_spectrum(v) for v in (self.known_spectra or ())))
        _int(o, "components", self.components, 1, optional=True)
        _choice(o, "loss", self.loss, LOSSES)
        _int(o, "max_iter", self.max_iter, 1)
        _set(self, "tol", _float(o, "tol", self.tol))
        _choice(o, "init", self.init, NMF_INITS)
        _set(self, "sparsity", _float(o, "sparsity", self.sparsity))
        if self.sparsity > 0 and self.loss != "kl":
            raise ParameterError(f"NMFParams.sparsity is for the KL loss only; got sparsity {self.sparsity} with loss {self.loss!r}")
        _int(o, "seed", self.seed, 0)
        _int(o, "checkpoint_every", self.checkpoint_every, 0, optional=True)
        _bool(o, "resume", self.resume)


ROTATIONS = ("varimax",)
SEGMENT_FEATURES = ("svd", "nmf", "mcr")


@dataclass(frozen=True)
class AnalysesParams(_Params):
    """The analyses a run adds after its SVD and NMF (issue #13), each written as its own results group.

    ``rotate`` ("varimax" or None): the spatial-simplicity rotation of the top-k Poisson-scaled scores
    (group ``rotation``); ``mcr``: factored MCR-ALS started from that rotation (group ``mcr``, which records
    the rotation it started from; ``rotate`` also writes the rotation's own group);
    ``ica``: FastICA of the whitened scores (group ``ica``); ``segments`` K: k-means of the ``segment_on``
    group's maps into K classes (group ``segments``); ``quantify``: net X-ray line maps of the run's elements
    (group ``elements``) and Cliff-Lorimer compositions of every endmember spectrum (group
    ``quantification``), with the k-factors of ``k_factors`` (a YAML or CSV file; a simulated store may leave
    it out: the simulator's own k-factors are used); ``qc`` (default on): per-tile dose and model residual,
    tiles flagged above the robust z-score ``qc_threshold`` (group ``qc``). The rotation, MCR and ICA use as
    many components as the NMF has endmembers.
    """

    rotate: str | None = None
    mcr: bool = False
    ica: bool = False
    segments: int | None = None
    segment_on: str | None = None
    quantify: bool = False
    k_factors: Path | None = None
    qc: bool = True
    qc_threshold: float | None = None

    def __post_init__(self) -> None:
        o = "AnalysesParams"
        if self.rotate is not None:
            _choice(o, "rotate", self.rotate, ROTATIONS)
        _bool(o, "mcr", self.mcr)
        _bool(o, "ica", self.ica)
        _int(o, "segments", self.segments, 2, optional=True)
        if self.segment_on is not None:
            _choice(o, "segment_on", self.segment_on, SEGMENT_FEATURES)
            if self.segments is None:
                raise ParameterError(f"{o}: segment_on={self.segment_on!r} says what the k-means segments; ask for "
                                     "segments too (--segments K)")
        elif self.segments is not None:
            _set(self, "segment_on", "svd")
        _bool(o, "quantify", self.quantify)
        if self.k_factors is not None:
            if not isinstance(self.k_factors, (str, Path)) or not str(self.k_factors):
                raise ParameterError(f"{o}.k_factors must be a path; got {self.k_factors!r}")
            if not self.quantify:
                raise ParameterError(f"{o}: k_factors ({self.k_factors}) are for the quantification; ask for it too "
                                     "(--quantify)")
            _set(self, "k_factors", Path(self.k_factors).resolve())
        _bool(o, "qc", self.qc)
        if self.qc_threshold is not None:
            if not self.qc:
                raise ParameterError(f"{o}: qc_threshold={self.qc_threshold} is the tile QC's, which is off (--no-qc)")
            _set(self, "qc_threshold", _float(o, "qc_threshold", self.qc_threshold, 0.5))
        elif self.qc:
            _set(self, "qc_threshold", 3.5)

    def describe(self) -> str:
        """One line for the run's printout and report."""
        parts = []
        if self.rotate:
            parts.append(f"{self.rotate} rotation")
        if self.mcr:
            parts.append("MCR-ALS")
        if self.ica:
            parts.append("ICA")
        if self.segments:
            parts.append(f"k-means into {self.segments} segments of the {self.segment_on} maps")
        if self.quantify:
            parts.append("element maps and Cliff-Lorimer" + (f" (k-factors {self.k_factors})" if self.k_factors else ""))
        if self.qc:
            parts.append(f"tile QC (|z| > {self.qc_threshold:g})")
        return ", ".join(parts) or "none"


def _known_spectrum(value: Any) -> str:
    """One ``known_spectra`` entry, with its path made absolute: a spectrum file or ``RESULTS.zarr:GROUP:INDEX``."""
    if not isinstance(value, (str, Path)) or not str(value):
        raise ParameterError(f"NMFParams.known_spectra: each entry is a spectrum file or RESULTS.zarr:GROUP:INDEX; got {value!r}")
    text = str(value)
    parts = text.rsplit(":", 2)
    if ".zarr:" in text or (len(parts) == 3 and parts[0].rstrip("/").endswith(".zarr")):
        path, group, index = parts if len(parts) == 3 else (text, "", "")
        if not path.rstrip("/").endswith(".zarr") or group not in ("nmf", "mcr") or not index.isdigit():
            raise ParameterError(f"NMFParams.known_spectra: {text!r}: another run's endmember is RESULTS.zarr:GROUP:INDEX with "
                                 "GROUP nmf or mcr and INDEX a component number, e.g. run1/results.zarr:nmf:2")
        return f"{Path(path).resolve()}:{group}:{int(index)}"
    return str(Path(text).resolve())


def _adapt_range(value) -> tuple[int, int]:
    """``"MIN:MAX"`` or a pair of whole numbers, 1 <= MIN <= MAX, as a pair."""
    text = f"{value!r}"
    if isinstance(value, str):
        parts = value.split(":")
        try:
            pair = tuple(int(v) for v in parts) if len(parts) == 2 else None
        except ValueError:
            pair = None
    else:
        try:
            pair = tuple(value)
        except TypeError:
            pair = None
    if pair is None or len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair) \
            or not 1 <= pair[0] <= pair[1]:
        raise ParameterError(f"ClusterParams.adapt must be MIN:MAX worker jobs with 1 <= MIN <= MAX, e.g. 1:8; got {text}")
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True)
class ClusterParams(_Params):
    """Where the work runs: a LocalCluster of this size (None: the package defaults), an existing scheduler, or
    SLURM worker jobs (``cluster="slurm"``: ``jobs`` jobs of ``cores`` cores and ``memory`` each, ``walltime``,
    ``queue``, ``account``; None: the user's ``jobqueue.slurm.*`` config). ``adapt`` ("MIN:MAX" or a pair) lets
    dask-jobqueue grow and shrink the number of CPU worker jobs with the load instead of a fixed ``jobs``;
    ``gpu_jobs`` extra jobs of ``gpus_per_job`` GPUs each offer the worker resource ``GPU``;
    ``dashboard_address`` is where the SLURM scheduler's dashboard listens (default its host's loopback).
    ``performance_report`` writes Dask's performance report HTML beside the results (any cluster).
    ``backend`` is the kernel backend of the passes (None: ``xsi-dask.backend``); ``"cupy"`` runs them on workers
    offering ``GPU``: a LocalCluster then has one worker process per visible GPU (``CUDA_VISIBLE_DEVICES``
    respected), SLURM needs ``gpu_jobs``, a running scheduler needs such workers."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | None = None
    cluster: str = "local"
    jobs: int | None = None
    cores: int | None = None
    memory: str | None = None
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    adapt: tuple[int, int] | None = None
    gpu_jobs: int | None = None
    gpus_per_job: int | None = None
    dashboard_address: str | None = None
    performance_report: bool = False
    backend: str | None = None

    @property
    def slurm(self):
        """The :class:`~xsi_dask.cluster.slurm.SlurmSpec` of a SLURM cluster (None otherwise)."""
        if self.cluster != "slurm":
            return None
        from ..cluster.slurm import SlurmSpec

        return SlurmSpec(jobs=1 if self.jobs is None else self.jobs, cores=self.cores, memory=self.memory, walltime=self.walltime,
                         queue=self.queue, account=self.account, adapt=self.adapt,
                         gpu_jobs=0 if self.gpu_jobs is None else self.gpu_jobs,
                         gpus_per_job=1 if self.gpus_per_job is None else self.gpus_per_job,
                         dashboard_address=self.dashboard_address)

    def __post_init__(self) -> None:
        from ..cluster.local import check_memory_limit, check_scheduler_address

        o = "ClusterParams"
        if self.cluster not in ("local", "slurm"):
            raise ParameterError(f"{o}.cluster must be 'local' or 'slurm'; got {self.cluster!r}")
        _bool(o, "performance_report", self.performance_report)
        if self.adapt is not None:
            _set(self, "adapt", _adapt_range(self.adapt))
        slurm_fields = {k: getattr(self, k) for k in ("jobs", "cores", "memory", "walltime", "queue", "account", "adapt",
                                                      "gpu_jobs", "gpus_per_job", "dashboard_address")}
        given = sorted(k for k, v in slurm_fields.items() if v is not None)
        if self.cluster == "local" and given:
            raise ParameterError(f"{o}: {', '.join(given)} describe SLURM worker jobs; they need cluster='slurm' "
                                 "(--cluster slurm)")
        if self.cluster == "slurm":
            if self.scheduler is not None or (self.workers, self.threads_per_worker, self.memory_limit) != (None, None, None):
                raise ParameterError(f"{o}: scheduler, workers, threads_per_worker and memory_limit describe a local or "
                                     "running cluster; with cluster='slurm' give jobs, cores and memory")
            if self.adapt is not None and self.jobs is not None:
                raise ParameterError(f"{o}: jobs={self.jobs} and adapt={self.adapt[0]}:{self.adapt[1]} both set the number "
                                     "of worker jobs; give one (--jobs N for a fixed number, --adapt MIN:MAX to follow "
                                     "the load)")
            self.slurm  # noqa: B018 - checks jobs, cores, memory and walltime now, before anything starts
            if self.gpus_per_job is not None and not self.gpu_jobs:
                raise ParameterError(f"{o}: gpus_per_job={self.gpus_per_job} sizes GPU jobs, and gpu_jobs asks for none; "
                                     "give gpu_jobs (--gpu-jobs N)")
        if self.backend is not None:
            from ..engine.backends import available_backends

            if self.backend not in available_backends():
                raise ParameterError(f"{o}.backend must be one of {available_backends()}; got {self.backend!r}")
            if self.backend == "cupy" and self.cluster == "slurm" and not self.gpu_jobs:
                raise ParameterError(f"{o}: backend='cupy' runs the passes on GPU workers, and gpu_jobs asks for none; "
                                     "give gpu_jobs (--gpu-jobs N)")
            if self.backend == "cupy" and self.cluster == "local" and self.scheduler is None and self.workers is not None:
                raise ParameterError(f"{o}: with backend='cupy' a LocalCluster has one worker per visible GPU; workers="
                                     f"{self.workers} cannot apply (choose the GPUs with CUDA_VISIBLE_DEVICES)")
        if self.scheduler is not None:
            try:
                _set(self, "scheduler", check_scheduler_address(self.scheduler))
            except ParameterError as exc:
                raise ParameterError(f"{o}.scheduler: {exc}") from None
        _int(o, "workers", self.workers, 1, optional=True)
        _int(o, "threads_per_worker", self.threads_per_worker, 1, optional=True)
        if self.memory_limit is not None:
            try:
                check_memory_limit(self.memory_limit)
            except ParameterError:
                raise ParameterError(f"{o}.memory_limit must be a size such as 4GiB, a fraction of the machine's "
                                     f"memory such as 0.5, or 'auto'; got {self.memory_limit!r}") from None
            _set(self, "memory_limit", str(self.memory_limit))
        if self.scheduler is not None and (self.workers, self.threads_per_worker, self.memory_limit) != (None, None, None):
            raise ParameterError(
                f"{o}: workers, threads_per_worker and memory_limit size a LocalCluster; they cannot apply to "
                f"the running scheduler {self.scheduler}"
            )


@dataclass(frozen=True)
class LayoutParams(_Params):
    """How input files make a montage: a grid of files, one map split into tiles, or a manifest (at most one).

    ``grid`` and ``split`` are parsed into ``(rows, cols)`` (from ``"RxC"`` or a pair) and ``manifest``
    made an absolute path, when the object is built.
    """

    grid: tuple[int, int] | None = None
    split: tuple[int, int] | None = None
    manifest: Path | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("grid", "split", "manifest") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ParameterError(f"LayoutParams: give only one of grid, split and manifest; got {' and '.join(given)}")
        for name in ("grid", "split"):
            value = getattr(self, name)
            if value is not None:
                try:
                    _set(self, name, parse_grid(value, name))
                except LayoutError:
                    raise
                except (TypeError, ValueError) as exc:
                    raise ParameterError(f"LayoutParams.{name} must be 'ROWSxCOLS' or a pair; got {value!r}") from exc
        if self.manifest is not None:
            if not isinstance(self.manifest, (str, Path)) or not str(self.manifest):
                raise ParameterError(f"LayoutParams.manifest must be a path; got {self.manifest!r}")
            _set(self, "manifest", Path(self.manifest).resolve())

    @property
    def kind(self) -> str:
        """``"grid"``, ``"split"``, ``"manifest"`` or ``"single"`` (one file, one tile)."""
        return "grid" if self.grid else "split" if self.split else "manifest" if self.manifest else "single"

    def describe(self) -> str:
        if self.grid:
            return f"grid {self.grid[0]}x{self.grid[1]}"
        if self.split:
            return f"split {self.split[0]}x{self.split[1]}"
        if self.manifest:
            return f"manifest {self.manifest}"
        return "one file"


DEFAULT_NMF_COMPONENTS = 4  # NMF endmembers when neither given nor taken from an SVD's n_significant


@functools.lru_cache(maxsize=1)
def _element_symbols() -> dict[str, str]:
    """Chemical symbols H .. Cf (xraydb's table), by lower case."""
    import xraydb

    return {xraydb.atomic_symbol(z).lower(): xraydb.atomic_symbol(z) for z in range(1, 99)}


def parse_elements(value: Any, owner: str = "ViewParams") -> tuple[str, ...] | None:
    """Element symbols from ``"Fe,Cr,Mn"`` or a sequence of symbols, in the given order, each once.

    Symbols are matched case-insensitively (``"fe"`` is Fe) against xraydb's
    table H-Cf. None stays None (the element list of the files applies).

    Raises
    ------
    ParameterError
        An empty list, or a name that is not a chemical symbol (named).
    """
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(e, str) for e in items):
        raise ParameterError(f"{owner}.elements must be element symbols such as 'Fe,Cr,Mn' or a list of them; got {value!r}")
    table = _element_symbols()
    out: list[str] = []
    bad = []
    for item in (e.strip() for e in items):
        if not item:
            continue
        symbol = table.get(item.lower())
        if symbol is None:
            bad.append(item)
        elif symbol not in out:
            out.append(symbol)
    if bad:
        raise ParameterError(f"{owner}.elements: {', '.join(map(repr, bad))} "
                             f"{'is not a chemical symbol' if len(bad) == 1 else 'are not chemical symbols'} "
                             f"(H to Cf, e.g. 'Fe,Cr,Mn'); got {value!r}")
    if not out:
        raise ParameterError(f"{owner}.elements must name at least one element (e.g. 'Fe,Cr,Mn'); got {value!r}")
    return tuple(out)


def parse_energy_range(value: Any, owner: str = "ViewParams") -> tuple[float | None, float | None] | None:
    """``(low, high)`` in keV from ``"LO:HI"`` (either side may be empty) or a pair (either may be None).

    None, ``":"`` and ``(None, None)`` are None: the whole energy axis.

    Raises
    ------
    ParameterError
        Not two numbers, a value that is not finite, or low >= high (the values are named).
    """
    if value is None:
        return None
    bad = f"{owner}.energy_range must be 'LO:HI' in keV (either side may be empty, e.g. '0.2:10' or ':8') or a pair; got {value!r}"
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 2:
            raise ParameterError(bad)
        pair: list[Any] = [p.strip() or None for p in parts]
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        pair = list(value)
    else:
        raise ParameterError(bad)
    out: list[float | None] = []
    for v in pair:
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool):
            raise ParameterError(bad)
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ParameterError(bad) from None
        if not math.isfinite(f):
            raise ParameterError(f"{owner}.energy_range must be finite keV values; got {value!r}")
        out.append(f)
    lo, hi = out
    if lo is not None and hi is not None and not lo < hi:
        raise ParameterError(f"{owner}.energy_range: the low end ({lo:g} keV) must be below the high end ({hi:g} keV); got {value!r}")
    if lo is None and hi is None:
        return None
    return lo, hi


@dataclass(frozen=True)
class ViewParams(_Params):
    """What the analysis runs on: energy range, zero peak and spatial binning (and the sample's elements).

    Applied to the montage with :func:`xsi_dask.montage.prepare.analysis_view`
    before the SVD and the NMF: ``energy_range`` (keV; ``"LO:HI"`` or a pair,
    either end None) keeps the channels inside it; the EDS detector's zero
    peak is excluded unless ``keep_zero_peak``; ``bin`` sums ``bin`` x ``bin``
    pixel blocks within each tile (it must divide the tile size, checked when
    the store is known, before any pass). ``elements`` (``"Fe,Cr"`` or a list
    of symbols; None: the files' own list) label the X-ray lines of the
    figures and are recorded in the results' attributes.
    """

    energy_range: tuple[float | None, float | None] | None = None
    keep_zero_peak: bool = False
    bin: int = 1
    elements: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        o = "ViewParams"
        _set(self, "energy_range", parse_energy_range(self.energy_range, o))
        _bool(o, "keep_zero_peak", self.keep_zero_peak)
        _int(o, "bin", self.bin, 1)
        _set(self, "elements", parse_elements(self.elements, o))

    def apply(self, montage):
        """The montage view the analysis runs on (:func:`~xsi_dask.montage.prepare.analysis_view`).

        Raises
        ------
        ParameterError
            The energy range keeps fewer than 2 channels of the store's axis, or
            ``bin`` does not divide the tile size.
        """
        from ..montage.prepare import analysis_view

        return analysis_view(montage, energy_range=self.energy_range, keep_zero_peak=self.keep_zero_peak, bin=self.bin)

    def describe(self) -> str:
        """One line for the run's printout and report: energy range, zero peak, binning, elements."""
        lo, hi = self.energy_range or (None, None)
        parts = [f"energy {'' if lo is None else f'{lo:g}'}:{'' if hi is None else f'{hi:g}'} keV"
                 if self.energy_range else "whole energy axis",
                 "zero peak kept" if self.keep_zero_peak else "zero peak excluded (EDS)",
                 f"bin {self.bin}x{self.bin}" if self.bin > 1 else "not binned"]
        if self.elements:
            parts.append("elements " + ",".join(self.elements))
        return ", ".join(parts)
