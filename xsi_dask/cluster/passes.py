"""One pass over the tiles: a task per unit (a tile, or a row block of one), a tree reduction of the small results.

The reduction tree has a fixed shape (fan-in 8 in unit order), so the floating
point sums are the same on the synchronous scheduler, dask threads and a
distributed cluster: results do not depend on where tasks ran. They depend on
the number of workers only when there are fewer tiles than workers, because
the tiles are then split into row blocks (more partial sums).
On a cluster the units are pinned round-robin to the workers (other workers may
still take them), so a worker sees the same tiles on every pass and its tile
cache holds its own share.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import dask
from dask.delayed import Delayed

__all__ = ["tree_sum", "compute", "current_client", "worker_count", "map_tiles"]


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


def tree_sum(parts: Sequence[Delayed], fanin: int = 8, name: str = "sum") -> Delayed:
    """Sum delayed partial results (arrays, tuples or dicts of arrays) in a tree."""
    level = list(parts)
    if not level:
        raise ValueError("nothing to sum")
    while len(level) > 1:
        level = [
            dask.delayed(_add, pure=True)(*level[i : i + fanin])
            if len(level[i : i + fanin]) > 1
            else level[i]
            for i in range(0, len(level), fanin)
        ]
    return level[0]


def current_client():
    """The active dask.distributed Client, or None."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def worker_count() -> int:
    """Worker processes the passes run on: the active client's workers, else 1 (this process)."""
    return max(1, len(_worker_addresses()))


@contextlib.contextmanager
def _local_progress(show: bool, label: str):
    if show:
        from dask.diagnostics import ProgressBar

        print(label, flush=True)
        with ProgressBar(minimum=2.0):
            yield
    else:
        yield


def compute(*objs: Any, progress: bool = False, label: str = "", scheduler: str | None = None):
    """``dask.compute`` with a progress bar on the local or the distributed scheduler."""
    client = current_client() if scheduler is None else None
    if client is not None:
        futures = client.compute(list(objs))
        if progress:
            from distributed import progress as dprogress

            print(label, flush=True)
            dprogress(futures, notebook=False)
            print(flush=True)
        return tuple(client.gather(futures))
    with _local_progress(progress, label):
        return dask.compute(*objs, scheduler=scheduler)


def map_tiles(fn: Callable, units: Sequence[Any], *args: Any, pure: bool = True, literal: tuple = ()) -> list[Delayed]:
    """One delayed ``fn(unit, *args)`` per unit (a tile or a (tile, a, b) row block), pinned round-robin to workers.

    Array arguments enter the graph once and are shared, not copied per task;
    instances of the ``literal`` types are passed as they are.
    """
    shared = [a if isinstance(a, (Delayed, int, float, bool, str, type(None)) + literal) else dask.delayed(a, traverse=False)
              for a in args]
    workers = _worker_addresses()
    tasks = []
    for i, u in enumerate(units):
        pin = dask.annotate(workers=[workers[i % len(workers)]], allow_other_workers=True) if workers else contextlib.nullcontext()
        with pin:
            tasks.append(dask.delayed(fn, pure=pure)(u, *shared))
    return tasks


def _worker_addresses() -> list[str]:
    """The active client's worker addresses, sorted ([] without a client); ``nthreads`` lists every worker,
    ``scheduler_info()`` only the first 5 in some distributed releases."""
    client = current_client()
    return sorted(client.nthreads()) if client is not None else []
