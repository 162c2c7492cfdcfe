"""The third verb of the engine: one task on a worker that offers a resource (a GPU)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._dask import current_client
from ..errors import ResourceUnavailableError

__all__ = ["run_on_resource", "worker_resources", "workers_offering", "require_workers", "local_gpu_count"]


def worker_resources() -> dict[str, dict[str, float]]:
    """Resources each worker of the active cluster offers ({address: {"GPU": 1, ...}}; {} without a client)."""
    client = current_client()
    if client is None:
        return {}

    def _resources(dask_scheduler=None):
        return {addr: dict(ws.resources) for addr, ws in dask_scheduler.workers.items()}

    return client.run_on_scheduler(_resources)


def _offering(offered: dict[str, dict[str, float]], want: dict[str, float]) -> list[str]:
    return sorted(a for a, r in offered.items() if all(r.get(k, 0.0) >= v for k, v in want.items()))


def workers_offering(want: dict[str, float]) -> list[str]:
    """Addresses (sorted) of the active cluster's workers that offer every amount of ``want`` ([] without a client)."""
    return _offering(worker_resources(), want)


def require_workers(want: dict[str, float], who: str) -> list[str]:
    """The workers of the active cluster offering ``want`` (sorted), or :class:`ResourceUnavailableError` naming
    ``who`` needs them, how many workers there are and what they offer (one call to the scheduler)."""
    offered = worker_resources()
    able = _offering(offered, want)
    if not able:
        have = {a: r for a, r in offered.items() if r} or "none"
        raise ResourceUnavailableError(
            f"{who} needs a worker offering {want}, and no worker of the cluster does (workers: {len(offered)}, "
            f"resources offered: {have}); add a worker started with --resources, e.g. 'GPU=1'")
    return able


def local_gpu_count() -> int:
    """CUDA devices this process can use (CuPy's count, which honours ``CUDA_VISIBLE_DEVICES``); 0 without CuPy or a driver."""
    try:
        import cupy
    except ImportError:
        return 0
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no driver, no device: CuPy raises its own CUDA runtime errors
        return 0


def run_on_resource(fn: Callable, *args: Any, resources: dict[str, float], **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` as one task on a worker offering ``resources`` and return its result.

    Parameters
    ----------
    fn : callable
        A picklable function (module level).
    resources : dict
        Abstract worker resources the task holds while it runs, e.g.
        ``{"GPU": 1}`` (workers declare them with ``--resources GPU=1`` or
        ``distributed.worker.resources``).

    Raises
    ------
    ResourceUnavailableError
        At once, when no dask.distributed client is active or no worker of its
        cluster offers every requested amount. Dask itself would keep such a
        task waiting forever.
    """
    client = current_client()
    want = {str(k): float(v) for k, v in resources.items()}
    if client is None:
        raise ResourceUnavailableError(
            f"this task needs a worker offering {want}, and no dask.distributed cluster is active; "
            "start one whose workers declare the resource (dask worker --resources 'GPU=1')"
        )
    require_workers(want, "this task")
    return client.submit(fn, *args, resources=want, pure=False, **kwargs).result()
