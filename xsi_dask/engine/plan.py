"""The frozen plan of a montage analysis, derived from the view the user hands in, and its verbs.

A :class:`Plan` says what the passes read: the absolute store path and the
store's id, the tiles of the view, the channel selection and pixel binning
(fields of the plan; today only "all channels" and "no binning" exist, and a
view asking for anything else is refused), the work units, whether tiles stay
cached on the workers, which worker each unit is pinned to, and the kernel
backend. Every algorithm uses its three verbs:

- :meth:`Plan.reduce` - a reduction pass: one task per unit, a fixed-shape
  tree sum of the small results (fan-in 8 in unit order, so the floating-point
  sums do not depend on where tasks ran), one entry in the pass log;
- :meth:`Plan.map` - a map pass: a lazy dask array with one chunk per tile
  (scores, abundances, reconstructions);
- :func:`xsi_dask.engine.run_on_resource` - one task on a worker offering a
  resource such as ``GPU``.

A task function receives a :class:`Block` (the CSR arrays of its unit, its
pixel weights, the backend's kernels) and the pass's arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import Delayed

from .. import config
from .._dask import compute, current_client
from ..errors import InsufficientMemoryError, ResourceUnavailableError, ViewError
from ..io.store import MontageStore, tile_cache
from ..montage.view import open_montage
from ._viewtile import channel_runs, view_pixel_totals, view_tile_csr
from .backends import backend_name, backend_options, backend_resources, get_backend
from .resources import local_gpu_count, require_workers, workers_offering

__all__ = ["Unit", "PassRecord", "Source", "Block", "Plan", "make_plan", "split_units", "tree_sum", "worker_addresses",
           "worker_memory_limits"]

FANIN = 8  # partial sums added per task of the reduction tree


class Unit(NamedTuple):
    """A work unit: pixels ``start:stop`` (row-major) of store tile ``tile``."""

    tile: int
    start: int
    stop: int


@dataclass(frozen=True)
class PassRecord:
    """One pass over the montage: its label, wall seconds, the non-zeros it read and its task count."""

    label: str
    seconds: float
    nnz: int
    units: int


@dataclass(frozen=True)
class Source:
    """What a task needs to read its unit: small and picklable (sent with every task)."""

    store: str
    store_uuid: str
    cache: bool
    backend: str
    runs: tuple[tuple[int, int], ...] | None = None  # kept store channels as (start, stop) runs; None: all
    bin: int = 1  # pixels binned b x b within each tile
    options: tuple[tuple[str, Any], ...] = ()  # the backend's settings (cupy: the compute dtype)


def tile_pixel_weights(store: MontageStore, t: int, poisson: bool, cache: bool = True,
                       runs: tuple[tuple[int, int], ...] | None = None, b: int = 1) -> np.ndarray:
    """1/g per (binned) pixel of tile ``t`` over the view's channels (0 where g = 0), or ones; cached per process."""

    def load():
        if not poisson:
            return np.ones(store.pixels_per_tile // (b * b))
        g = view_pixel_totals(store, t, runs, b, cache)
        s = np.zeros_like(g)
        np.divide(1.0, g, out=s, where=g > 0)
        return s

    if not cache:
        return load()
    return tile_cache.get((str(store.path), store.uuid, t, "pixel-weights", poisson, runs, b), load)


class Block:
    """The data of one unit as a task sees it.

    Attributes
    ----------
    unit : Unit
        Rows ``start:stop`` are (binned) pixels of the view's tile.
    csr : (indptr, indices, data)
        ``indptr`` (rows + 1,) the unit's slice of the tile's row pointers
        (``indptr[0]`` need not be 0); ``indices``, ``data`` (nnz,) the tile's
        channel indices and counts in compact dtypes. Read from the store (or
        the worker's tile cache) on first access; with a channel selection or
        binning, the tile as the view sees it (channels renumbered 0.. over
        the kept ones, b x b pixel blocks summed).
    tile_shape : (int, int)
        Pixels (y, x) of a tile of the view (the stored shape over the bin).
    kernels
        The plan's kernel backend (:mod:`xsi_dask.engine.backends`).
    """

    __slots__ = ("source", "unit", "store", "_csr", "kernels", "tile_shape")

    def __init__(self, source: Source, unit: Unit):
        self.source, self.unit = source, unit
        self.store = MontageStore.cached(source.store)
        self._csr = None  # read on first use: a task that only touches its scratch files reads no counts
        self.kernels = get_backend(source.backend, source.options)
        h, w = self.store.tile_shape
        self.tile_shape = (h // source.bin, w // source.bin)

    @property
    def csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, indices, data), the first arguments of every kernel (a row block's indptr is a view)."""
        if self._csr is None:
            src = self.source
            csr = view_tile_csr(self.store, self.unit.tile, src.runs, src.bin, src.cache)
            self._csr = (csr.indptr[self.unit.start : self.unit.stop + 1], csr.indices, csr.data)
        return self._csr

    @property
    def pixels_per_tile(self) -> int:
        return self.tile_shape[0] * self.tile_shape[1]

    @property
    def indptr(self) -> np.ndarray:
        return self.csr[0]

    @property
    def rows(self) -> int:
        return self.unit.stop - self.unit.start

    def pixel_weights(self, poisson: bool) -> np.ndarray:
        """1/g of the unit's pixels (0 where g = 0) with ``poisson``, else ones; float64 (rows,)."""
        src = self.source
        weights = tile_pixel_weights(self.store, self.unit.tile, poisson, src.cache, src.runs, src.bin)
        return weights[self.unit.start : self.unit.stop]

    def counts_per_pixel(self) -> np.ndarray:
        """g, the counts of the unit's (binned) pixels over the view's channels, float64 (rows,)."""
        src = self.source
        return view_pixel_totals(self.store, self.unit.tile, src.runs, src.bin, src.cache)[self.unit.start : self.unit.stop]


# ---- graph pieces ----

def _add(*parts):
    total = parts[0]
    if total is None:
        return None
    if isinstance(total, tuple):
        return tuple(_add(*items) for items in zip(*parts))
    if isinstance(total, dict):
        return {k: _add(*(p[k] for p in parts)) for k in total}
    total = total.copy() if hasattr(total, "copy") else total
    for p in parts[1:]:
        total = total + p
    return total


def tree_sum(parts: Sequence[Delayed], fanin: int = FANIN) -> Delayed:
    """Sum delayed partial results (arrays, numbers, tuples or dicts of them) in a fixed-shape tree."""
    level = list(parts)
    if not level:
        raise ValueError("nothing to sum")
    while len(level) > 1:
        level = [
            dask.delayed(_add, pure=True)(*level[i : i + fanin]) if len(level[i : i + fanin]) > 1 else level[i]
            for i in range(0, len(level), fanin)
        ]
    return level[0]


def worker_addresses() -> list[str]:
    """The active client's worker addresses, sorted ([] without a client); ``nthreads`` lists every
    worker, ``scheduler_info()`` only the first few in some distributed releases."""
    client = current_client()
    return sorted(client.nthreads()) if client is not None else []


def worker_memory_limits() -> dict[str, tuple[int | None, int]]:
    """``{address: (memory limit in bytes or None, threads)}`` of the active client's workers ({} without one)."""
    client = current_client()
    if client is None:
        return {}

    def limits(dask_scheduler=None):  # nested: sent by value, so a scheduler without xsi_dask runs it
        return {a: (ws.memory_limit or None, ws.nthreads) for a, ws in dask_scheduler.workers.items()}

    return client.run_on_scheduler(limits)


def _mib(nbytes: float) -> str:
    return f"{math.ceil(nbytes / 2**20)} MiB"


def split_units(tiles: Sequence[int], pixels: int, workers: int) -> list[Unit]:
    """Work units of a pass: whole tiles, or equal row blocks when there are fewer tiles than workers."""
    n = len(tiles)
    parts = workers // math.gcd(n, workers) if 0 < n < workers else 1  # n * parts is a multiple of workers
    return [Unit(int(t), i * pixels // parts, (i + 1) * pixels // parts) for t in tiles for i in range(parts)]


def _unit_task(fn: Callable, source: Source, unit: Unit, *args):
    return fn(Block(source, unit), *args)


def _tile_task(fn: Callable, source: Source, units: tuple[Unit, ...], *args):
    return fn([Block(source, u) for u in units], *args)


def _share(args: tuple, literal: tuple) -> list:
    """Array arguments enter the graph once and are shared by the tasks, not copied per task."""
    plain = (Delayed, int, float, bool, str, type(None), Source, Unit) + literal
    return [a if isinstance(a, plain) else dask.delayed(a, traverse=False) for a in args]


@dataclass(frozen=True, eq=False)
class Plan:
    """The work of one analysis over a montage view; build it with :func:`make_plan`.

    Attributes
    ----------
    store : str
        Absolute path of the montage store.
    store_uuid : str
        The store's id (a store rewritten at the same path has another).
    tiles : tuple of int
        Store tile numbers of the view, in view order.
    tile_shape : (int, int)
        Pixels (y, x) of a tile of the view (the stored tile over ``bin``).
    n_channels : int
        Channels of the view (the store's, or the selected ones).
    channels : tuple of int or None
        Store channel indices of the view, increasing (None: all): an energy
        range or a channel mask. The passes compute exactly as on data
        holding only these channels (pixel totals and Poisson weights over them).
    bin : int
        Pixel binning factor (1: none): the counts of each ``bin x bin`` block
        of a tile are summed into one pixel, as ``coarsen(y=bin, x=bin).sum()``.
    units : tuple of Unit
        Tasks of a pass: whole tiles, or row blocks when tiles < workers.
    cache : bool
        Tiles stay in the workers' tile cache between passes.
    workers : tuple of str
        Worker addresses when the plan was made (empty: no cluster). Unit ``i``
        belongs to slot ``i % len(workers)``; each pass pins a slot's units to
        the slot's worker if it is alive at the start of the pass, else to a
        worker no slot holds (its replacement), else round-robin to the living
        (:meth:`pass_workers`). Pins are loose (``allow_other_workers``), and
        the pass's watchdog re-schedules tasks whose workers died mid-pass.
    backend : str
        Kernel backend name (``xsi-dask.backend`` when the plan was made).
    resources : tuple of (str, float)
        Worker resources each task holds (``(("GPU", 0.5),)`` for the cupy
        backend, :func:`~xsi_dask.engine.backends.backend_resources`; empty for
        the CPU backends). With resources, ``workers`` are the workers that
        offer them, and the tasks run on no other.
    backend_options : tuple of (str, value)
        The backend's settings from the config when the plan was made
        (cupy: ``(("dtype", "float64"),)``), which every task computes with.
    log : list of PassRecord
        Every pass run on this plan, in order.
    """

    store: str
    store_uuid: str
    tiles: tuple[int, ...]
    tile_shape: tuple[int, int]
    n_channels: int
    units: tuple[Unit, ...]
    cache: bool
    workers: tuple[str, ...]
    backend: str
    channels: tuple[int, ...] | None = None
    bin: int = 1
    resources: tuple[tuple[str, float], ...] = ()
    backend_options: tuple[tuple[str, Any], ...] = ()
    log: list[PassRecord] = field(default_factory=list, repr=False)
    _slots: dict[int, str] = field(default_factory=dict, repr=False, compare=False)

    # ---- what the plan covers ----

    @property
    def source(self) -> Source:
        runs = None if self.channels is None else channel_runs(self.channels)
        return Source(self.store, self.store_uuid, self.cache, self.backend, runs, self.bin, self.backend_options)

    @property
    def backend_label(self) -> str:
        """The backend and its settings, as results record them: "numba", "cupy (dtype float64)"."""
        opts = ", ".join(f"{k} {v}" for k, v in self.backend_options)
        return f"{self.backend} ({opts})" if opts else self.backend

    @property
    def energy(self) -> np.ndarray:
        """Energies (keV) of the view's channels, (n_channels,)."""
        e = self.open_store().energy
        return e if self.channels is None else e[np.asarray(self.channels)]

    def with_channels(self, subset: Sequence[int] | np.ndarray) -> Plan:
        """This plan restricted to ``subset`` (indices into the plan's channels, increasing); it shares the pass log.

        Used where channels that hold no counts in the view can be left out
        exactly (the gram solver: their rows and columns of D~^T D~ are zero).
        """
        sub = np.asarray(subset, dtype=np.int64)
        base = np.arange(self.open_store().channels) if self.channels is None else np.asarray(self.channels)
        chosen = base[sub]
        all_store = chosen.size == self.open_store().channels
        return dataclasses.replace(self, channels=None if all_store else tuple(int(c) for c in chosen),
                                   n_channels=int(chosen.size))

    def open_store(self) -> MontageStore:
        return MontageStore.cached(self.store)

    @property
    def pixels_per_tile(self) -> int:
        return self.tile_shape[0] * self.tile_shape[1]

    @property
    def n_pixels(self) -> int:
        return len(self.tiles) * self.pixels_per_tile

    @property
    def nnz(self) -> int:
        st = self.open_store()
        return sum(int(st.tiles[t]["nnz"]) for t in self.tiles)

    def sum_spectrum(self) -> np.ndarray:
        """Counts per channel of the view over the plan's tiles, float64 (n_channels,)."""
        st = self.open_store()
        h = np.sum([st.sum_spectrum(t) for t in self.tiles], axis=0).astype(np.float64)
        return h if self.channels is None else h[np.asarray(self.channels)]

    def units_of(self, tile: int) -> tuple[Unit, ...]:
        return tuple(u for u in self.units if u.tile == tile)

    @property
    def passes(self) -> int:
        """Passes over the counts run on this plan so far (steps that read no counts are logged, not counted)."""
        return sum(1 for r in self.log if r.nnz)

    # ---- memory ----

    def task_memory(self, k: int, *, solver: str = "randomized", oversampling: int | None = None) -> dict[str, int]:
        """Peak bytes one task of this plan needs on a worker, by part, for ``k`` components (SVD or NMF).

        Parameters
        ----------
        k : int
            Components (SVD) or endmembers (NMF).
        solver : str
            ``"randomized"`` (the default, also NMF's init) or ``"gram"`` (a
            dense channels x channels matrix per task and in the sums).
        oversampling : int, optional
            The randomized solver's oversampling (default ``xsi-dask.oversampling``).

        Returns
        -------
        dict
            ``tile`` (the largest tile's CSR arrays, as read, plus one decoded
            Zarr chunk while reading; with a channel selection or binning, the
            copy as the view sees it and the temporaries that make it), ``weights`` (the pixel weights: the count
            map read, g and 1/g, 8 B/pixel each), ``work`` (the largest of: the
            channels x l dense matrices of an SVD pass, X in, Y out and the
            statistics, or the whole channels x channels block with ``gram``
            and SciPy's sparse product on the way; NMF's pixels x k float64
            factors of a tile, W loaded, W updated and one temporary, with H
            and its numerator; the scores of a tile likewise), ``sum`` (a task
            of the reduction tree: its 8 partial results and their sum) and
            ``total`` = max(tile + weights + work, sum).
        """
        st = self.open_store()
        M, P = self.n_channels, self.pixels_per_tile
        k = max(1, min(int(k), M))
        nnz = max(int(st.tiles[t]["nnz"]) for t in self.tiles)
        tile = max(st.tile_nbytes(t) for t in self.tiles) + min(nnz, int(config.get("csr-chunk"))) * 8
        if self.channels is not None or self.bin > 1:
            # the stored tile and the cropped/binned copy together, and the transform's temporaries: a lookup
            # of each index and its mask (crop), the pixel of each value, its binned row and the widened
            # counts with SciPy's COO -> CSR copies (bin)
            # (measured with tracemalloc on the JEOL tile: 30 B per value to crop, 89 to crop and bin)
            tile = 2 * tile + (96 if self.bin > 1 else 32) * nnz + 16 * st.pixels_per_tile
        weights = 3 * 8 * P
        p = int(config.get("oversampling", oversampling))
        l = min(M, k + p)
        result = 8 * M * l + 2 * 8 * M  # what a unit of an SVD pass returns
        svd = 8 * M * l * 2 + result
        if solver == "gram":
            result = 8 * M * M + 2 * 8 * M
            svd = result + 2 * 8 * M * M + 48 * nnz  # SciPy's D^T (S D): float64/int copies of D and a sparse result
        nmf = 8 * P * k * 3 + 8 * M * k * 3
        work = max(svd, nmf)
        total_sum = (FANIN + 1) * max(result, 8 * M * k * 2)
        return {"tile": tile, "weights": weights, "work": work, "sum": total_sum,
                "total": max(tile + weights + work, total_sum)}

    def worker_memory(self, k: int, *, threads: int = 1, solver: str = "randomized",
                      oversampling: int | None = None) -> dict[str, int]:
        """Bytes a worker of ``threads`` threads needs for this plan, and the memory limit that gives them.

        Returns
        -------
        dict
            ``task`` (:meth:`task_memory`'s total), ``cache`` (the worker's
            share of tiles kept between passes, when the plan caches tiles),
            ``baseline`` (the worker process itself, ``xsi-dask.worker-baseline-memory``),
            ``need`` = baseline + cache + threads x task, and ``limit``: ``need``
            over the fraction of the limit at which distributed pauses a worker
            (``distributed.worker.memory.pause``, else ``.terminate``).
        """
        task = self.task_memory(k, solver=solver, oversampling=oversampling)["total"]
        cache = 0
        if self.cache:
            st = self.open_store()
            share = -(-len(self.tiles) // max(1, len(self.workers)))
            cache = sum(sorted((st.tile_nbytes(t) + 8 * self.pixels_per_tile for t in self.tiles), reverse=True)[:share])
        baseline = config.get_bytes("worker-baseline-memory")
        need = baseline + cache + max(1, int(threads)) * task
        fraction = 1.0
        for key in ("pause", "terminate"):
            value = dask.config.get(f"distributed.worker.memory.{key}", False)
            if value:
                fraction = float(value)
                break
        return {"task": task, "cache": cache, "baseline": baseline, "need": need, "limit": math.ceil(need / fraction),
                "fraction": fraction}

    def check_memory(self, k: Any, *, solver: str = "randomized", oversampling: int | None = None) -> None:
        """Refuse, before the first pass, workers whose memory limit is below what this plan needs.

        Does nothing without a distributed client, for workers without a
        memory limit, or for a ``k`` the algorithm will refuse itself.

        Raises
        ------
        InsufficientMemoryError
            A worker's memory limit is below :meth:`worker_memory`'s ``limit``;
            the message gives the number needed and what it is made of.
        """
        try:
            k = int(k)
        except (TypeError, ValueError):
            return
        if k < 1:
            return
        for addr, (limit, threads) in sorted(worker_memory_limits().items()):
            if not limit or (self.resources and addr not in self.workers):
                continue
            need = self.worker_memory(k, threads=threads, solver=solver, oversampling=oversampling)
            if limit < need["limit"]:
                raise InsufficientMemoryError(
                    f"the worker {addr} has a memory limit of {_mib(limit)}, below the {_mib(need['limit'])} this "
                    f"analysis needs: {threads} thread(s) x {_mib(need['task'])} for one task (the largest tile of "
                    f"{self.tile_shape[0]} x {self.tile_shape[1]} pixels x {self.n_channels} channels and its "
                    f"factors at k = {k}), {_mib(need['cache'])} of cached tiles, {_mib(need['baseline'])} for the "
                    f"worker process (xsi-dask.worker-baseline-memory), and distributed pauses a worker at "
                    f"{need['fraction']:.0%} of its limit. Give each worker at least {_mib(need['limit'])} "
                    f"(--memory-limit {math.ceil(need['limit'] / 2**20)}MiB), or use smaller tiles (--split)"
                )

    # ---- verbs ----

    def pass_workers(self) -> tuple[str, ...]:
        """The worker of each slot for the pass about to start, from the workers alive now.

        A slot keeps its worker while that worker lives (its tiles stay in
        that worker's cache); the slot of a worker that is gone goes to a live
        worker no slot holds (the nanny's replacement, or a worker that joined),
        else round-robin to the living. Empty without a cluster or while no
        worker is alive (the pass's tasks are then not pinned at all, so any
        worker that joins takes them).
        """
        if not self.workers:
            return ()
        live = workers_offering(dict(self.resources)) if self.resources else worker_addresses()
        if not live:
            return ()
        current = [self._slots.get(j, w) for j, w in enumerate(self.workers)]
        free = [a for a in live if a not in current]
        chosen = []
        for j, addr in enumerate(current):
            if addr not in live:
                addr = free.pop(0) if free else live[j % len(live)]
            chosen.append(addr)
        self._slots.update(enumerate(chosen))
        return tuple(chosen)

    def _pinned(self, workers: tuple[str, ...], i: int):
        where: dict[str, Any] = {"resources": dict(self.resources)} if self.resources else {}
        if workers:
            where.update(workers=[workers[i % len(workers)]], allow_other_workers=True)
        return dask.annotate(**where) if where else contextlib.nullcontext()

    def unit_tasks(self, fn: Callable, *args: Any, pure: bool = True, literal: tuple = ()) -> list[Delayed]:
        """One delayed ``fn(Block, *args)`` per unit, pinned (loosely) to the workers of :meth:`pass_workers`."""
        shared = _share(args, literal)
        workers = self.pass_workers()
        tasks = []
        for i, u in enumerate(self.units):
            with self._pinned(workers, i):
                tasks.append(dask.delayed(_unit_task, pure=pure)(fn, self.source, u, *shared))
        return tasks

    def reduce(self, fn: Callable, *args: Any, label: str, pure: bool = True, literal: tuple = (),
               reads_counts: bool = True) -> Any:
        """A reduction pass: ``sum over units of fn(Block, *args)``, computed now and logged.

        ``fn`` returns an array, a number, None, or a tuple/dict of those; the
        sum is a fixed-shape tree (fan-in 8 in unit order). ``pure=False`` for
        tasks with side effects (NMF's scratch files), so they are never merged.
        ``reads_counts=False`` for a step over the units that reads no counts
        (logged with nnz 0, not counted in :attr:`passes`).
        """
        t0 = time.perf_counter()
        (out,) = compute(tree_sum(self.unit_tasks(fn, *args, pure=pure, literal=literal)))
        self.log.append(PassRecord(label, time.perf_counter() - t0, self.nnz if reads_counts else 0, len(self.units)))
        return out

    def map(self, fn: Callable, *args: Any, tail: tuple[int, ...], dtype: Any = np.float64, name: str = "map",
            pure: bool = True, literal: tuple = ()) -> da.Array:
        """A map pass: a lazy dask array (tile, y, x, *tail) with one chunk per tile.

        ``fn(blocks, *args)`` gets the blocks of one tile's units (one, or the
        row blocks) and returns that tile as an array of shape (1, y, x, *tail).
        Nothing runs until the array is computed or written; the computation is
        not in the pass log.
        """
        shared = _share(args, literal)
        h, w = self.tile_shape
        workers = self.pass_workers()
        blocks = []
        for i, t in enumerate(self.tiles):
            with self._pinned(workers, i):
                task = dask.delayed(_tile_task, pure=pure)(fn, self.source, self.units_of(t), *shared)
            blocks.append(da.from_delayed(task, shape=(1, h, w, *tail), dtype=dtype, name=f"{name}-{task.key}"))
        return da.concatenate(blocks, axis=0)


# ---- the plan from the view ----

def _view_params(v: xr.DataArray, st: MontageStore) -> tuple[list[int], tuple[int, ...] | None, int]:
    """The tiles, store channels and bin factor a view's coordinates say it holds, or a :class:`ViewError`."""
    want = ("tile", "y", "x", "energy")
    if v.dims != want:
        if "tile" not in v.dims and "tile" in v.coords:
            raise ViewError(f"the montage view cannot be honoured: a single tile was selected with a scalar (dims {v.dims}); "
                            "keep the tile dimension: isel(tile=[t]) instead of isel(tile=t)")
        raise ViewError(f"the montage view cannot be honoured: its dims are {v.dims}, not {want} "
                        "(transposed, stacked or reduced views are not supported)")
    tiles = [int(t) for t in np.atleast_1d(v["tile"].values)]
    if len(set(tiles)) != len(tiles):
        raise ViewError(f"the view repeats tiles {sorted({t for t in tiles if tiles.count(t) > 1})}; select each tile once")
    if not tiles:
        raise ViewError("the view selects no tiles")
    energy = np.asarray(v["energy"].values, dtype=np.float64)
    axis = st.energy
    idx = np.searchsorted(axis, energy)
    ok = energy.size > 0 and bool(np.all(idx < axis.size)) and np.array_equal(axis[np.minimum(idx, axis.size - 1)], energy)
    if not ok or (idx.size > 1 and np.any(np.diff(idx) <= 0)):
        raise ViewError("the montage view cannot be honoured: its energy axis is not an increasing selection of the "
                        "store's channels (binned, reordered, repeated or computed energies); select channels with "
                        "sel(energy=slice(lo, hi)) or isel(energy=mask)")
    channels = None if idx.size == axis.size else tuple(int(i) for i in idx)
    h, w = st.tile_shape
    vy, vx = v.sizes["y"], v.sizes["x"]
    b = h // vy if vy else 0
    if not (vy and vx and b >= 1 and b * vy == h and b * vx == w and h // b == vy and w // b == vx):
        raise ViewError(
            f"the montage view cannot be honoured: its tiles are {vy} x {vx} pixels along ('y', 'x'), not the store's "
            f"{h} x {w} nor those binned by one factor (a pixel slice, coarsen with boundary='trim'/'pad', or different "
            "factors along y and x): bin with coarsen(y=b, x=b).sum(), b dividing both sides of the tile")
    return tiles, channels, b


def _tile_forms(a: xr.DataArray, tiles: list[int], n: int) -> list[xr.DataArray]:
    """The tile selections (isel/sel forms) of ``tiles`` on ``a``, whose tiles are the store's ``n``."""
    idx = np.asarray(tiles, dtype=np.int64)
    forms = [a.isel(tile=idx), a.isel(tile=list(tiles))]
    if len(tiles) > 1:
        steps = set(np.diff(idx).tolist())
        if len(steps) == 1 and 0 not in steps:
            step = steps.pop()
            stop = tiles[-1] + (1 if step > 0 else -1)
            forms.append(a.isel(tile=slice(tiles[0], stop if stop >= 0 else None, step)))
    else:
        forms.append(a.isel(tile=slice(tiles[0], tiles[0] + 1)))
    if list(idx) == sorted(set(tiles)):
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        forms += [a.isel(tile=mask), a.isel(tile=xr.DataArray(mask, dims="tile"))]
    return forms


def _energy_forms(a: xr.DataArray, channels: tuple[int, ...], n: int) -> list[xr.DataArray]:
    """The channel selections (an index array, a mask or a slice from sel) of ``channels`` on ``a``."""
    idx = np.asarray(channels, dtype=np.int64)
    forms = [a.isel(energy=idx)]
    if idx.size and idx[-1] - idx[0] + 1 == idx.size:
        forms.append(a.isel(energy=slice(int(idx[0]), int(idx[-1]) + 1)))
    return forms


def _replay(name: str, layers: frozenset, st: MontageStore, tiles: list[int], channels: tuple[int, ...] | None,
            b: int) -> bool:
    """Whether the dask array ``name`` (graph layers ``layers``) is the store's montage with exactly one tile
    selection, one channel selection and one ``coarsen(y=b, x=b).sum()``, applied in any order.

    Dask names are hashes of the operation and its inputs, so a view equals
    such a replay exactly when the names agree; each step of the view's graph
    is found by trying the selections its coordinates say it made.
    """
    n = st.n_tiles
    chosen = tuple(range(st.channels)) if channels is None else channels
    todo = {"tile": lambda a: _tile_forms(a, tiles, n), "energy": lambda a: _energy_forms(a, chosen, st.channels)}
    todo["bin"] = lambda a: [a.coarsen(y=b, x=b).sum()]
    # a selection of every tile or channel may or may not be in the graph; the others must be
    required = {k for k, needed in (("tile", tiles != list(range(n))), ("energy", channels is not None), ("bin", b > 1))
                if needed}
    current = open_montage(st)
    while current.data.name != name:
        for kind, forms in list(todo.items()):
            # a selection of everything can leave the array as it is: not a step
            hit = next((f for f in forms(current) if f.data.name in layers and f.data.name != current.data.name), None)
            if hit is not None:
                current = hit
                del todo[kind]
                break
        else:
            return False
    return not (required & set(todo))


@functools.lru_cache(maxsize=64)
def _honoured(store: str, uuid: str, name: str, tiles: tuple[int, ...], channels: tuple[int, ...] | None, b: int,
              layers: frozenset) -> bool:
    """:func:`_replay`, cached by the view's name (``uuid``: a store rewritten at the same path is another)."""
    return _replay(name, layers, MontageStore.cached(store), list(tiles), channels, b)


def _operation(v: xr.DataArray) -> str:
    """A short description of the last operation in the view's graph ("mul", "where", ...)."""
    name = v.data.name.rsplit("-", 1)[0]
    return name or "an operation"


def make_plan(montage: xr.DataArray, *, backend: str | None = None) -> Plan:
    """The plan of the work on a montage view, or a :class:`ViewError` if the view cannot be honoured.

    Parameters
    ----------
    montage : xarray.DataArray
        Counts (tile, y, x, energy) from :func:`xsi_dask.open_montage`, as is
        or with, in any order, the tiles selected by one ``isel``/``sel`` on
        ``tile``, the channels by one ``sel(energy=slice(lo, hi))`` or
        ``isel(energy=mask or indices)``, and the pixels binned by
        ``coarsen(y=b, x=b).sum()`` (see
        :func:`xsi_dask.montage.prepare.analysis_view`). The plan computes
        exactly what these operations describe, from the stored counts.
    backend : str, optional
        Kernel backend (default ``xsi-dask.backend``).

    Returns
    -------
    Plan
        Units split for the active client's workers (whole tiles; row blocks
        when there are fewer tiles than workers), tile caching when each
        worker's share fits ``xsi-dask.tile-cache``.

    Raises
    ------
    ViewError
        The view was modified in a way the engine does not honour:
        arithmetic, ``where``, a dtype change, rechunking, a pixel slice,
        ``coarsen`` other than a sum over equal factors dividing the tile, a
        reordered or computed energy axis, a scalar or chained selection,
        repeated tiles, or it is not a montage view at all. The engine reads the stored
        counts, so honouring such a view silently would give a wrong result.
    StoreFormatError
        The store behind the view is gone or not a montage store.
    ResourceUnavailableError
        The backend needs a worker resource (cupy: ``GPU``) and no worker of
        the active cluster offers it, or, without a cluster, this process sees
        no CUDA device. Dask would keep such tasks waiting forever.
    BackendError
        An unknown backend, or the cupy backend without a cluster and without CuPy here.
    """
    if not isinstance(montage, xr.DataArray):
        raise ViewError(f"expected the xarray.DataArray from xsi_dask.open_montage; got {type(montage).__name__}")
    path = montage.attrs.get("store")
    uid = montage.attrs.get("store_uuid")
    if path is None or uid is None:
        raise ViewError("this DataArray is not a montage view (no 'store' attribute); open it with xsi_dask.open_montage")
    st = MontageStore.cached(path)
    if st.uuid != uid:
        raise ViewError(f"the store {st.path} was rewritten since this view was opened; open it again with open_montage")
    if not isinstance(montage.data, da.Array):
        raise ViewError("the view holds computed data, not the lazy montage: the engine reads the store itself; "
                        "pass the DataArray from open_montage (optionally isel(tile=...))")
    tiles, channels, b = _view_params(montage, st)
    pristine = open_montage(st)
    if montage.dtype.kind != "u":  # the counts, or their sums over pixel blocks (unsigned)
        raise ViewError(f"the view's dtype is {montage.dtype}, not the stored counts' {pristine.dtype} "
                        "(astype): the engine computes in float64 from the stored integer counts; drop the astype")
    layers = frozenset(montage.data.dask.layers)
    if not _honoured(str(st.path), st.uuid, montage.data.name, tuple(tiles), channels, b, layers):
        raise ViewError(
            f"the montage view was modified after open_montage ({_operation(montage)!r} in its dask graph): the engine "
            "computes on the stored counts and honours only one tile selection (isel(tile=[...]) or sel(tile=...)), one channel "
            "selection (sel(energy=slice(lo, hi)) or isel(energy=mask)) and coarsen(y=b, x=b).sum(), in any order; "
            "not arithmetic, where(), fillna, astype, rechunking, pixel slices or chained selections of one dimension"
        )
    name = backend_name(backend)
    resources = backend_resources(name)
    workers = _workers_for(name, resources)
    n_workers = max(1, len(workers))
    return Plan(
        store=str(st.path),
        store_uuid=st.uuid,
        tiles=tuple(tiles),
        tile_shape=(st.tile_shape[0] // b, st.tile_shape[1] // b),
        n_channels=st.channels if channels is None else len(channels),
        units=tuple(split_units(tiles, st.pixels_per_tile // (b * b), n_workers)),
        cache=st.cache_fits(tiles, n_workers),
        workers=tuple(workers),
        backend=name,
        channels=channels,
        bin=b,
        resources=tuple(sorted(resources.items())),
        backend_options=backend_options(name),
    )


def _workers_for(backend: str, resources: dict[str, float]) -> list[str]:
    """The workers a plan on ``backend`` may use: every worker, or those offering its resources (checked here)."""
    if not resources:
        return worker_addresses()
    if current_client() is None:
        # the threaded scheduler in this process: it must see a GPU itself
        get_backend(backend)  # BackendError without CuPy
        if local_gpu_count() < 1:
            raise ResourceUnavailableError(
                f"the {backend} backend runs its passes on a GPU: no dask cluster is active and this process sees no "
                "CUDA device (CUDA_VISIBLE_DEVICES, the driver); start a cluster with a GPU worker "
                "(xsi-dask run --backend cupy starts one per visible GPU) or choose xsi-dask.backend: numba")
        return []
    return require_workers(resources, f"the {backend} backend (its passes run on GPU workers: xsi-dask run --backend "
                                      "cupy starts them, --gpu-jobs on SLURM; or choose xsi-dask.backend: numba)")

