"""Typed, validated parameters of a pipeline run: checked when built, before any work."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LayoutError, ParameterError
from ..io.layout import parse_grid

__all__ = ["ClusterParams", "LayoutParams", "NMFParams", "SVDParams"]

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

    ``checkpoint_every`` (None: ``xsi-dask.nmf-checkpoint-every``; 0: none) and ``resume`` (continue from the
    checkpoint of an interrupted run of the same NMF) decide how the run survives a kill, not its result.
    """

    components: int = 4
    loss: str = "kl"
    max_iter: int = 200
    tol: float = 1e-4
    init: str = "poisson-nndsvda"
    sparsity: float = 0.0
    seed: int = 0
    checkpoint_every: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        o = "NMFParams"
        _int(o, "components", self.components, 1)
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


@dataclass(frozen=True)
class ClusterParams(_Params):
    """Where the work runs: an existing scheduler, or a LocalCluster of this size (None: the package defaults)."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | None = None

    def __post_init__(self) -> None:
        from ..cluster.local import check_memory_limit, check_scheduler_address

        o = "ClusterParams"
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
