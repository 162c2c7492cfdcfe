"""The package's few dask helpers below every layer: the active client, CPU count, compute.

Kept here (not in the engine) so that :mod:`xsi_dask.io` can write results
without importing the pass engine above it.
"""

from __future__ import annotations

from typing import Any

import dask
from dask.system import CPU_COUNT

__all__ = ["CPU_COUNT", "current_client", "compute"]


def current_client():
    """The active ``dask.distributed`` Client, or None (then passes run on the local dask scheduler)."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def compute(*objs: Any, scheduler: str | None = None) -> tuple:
    """``dask.compute`` on the active distributed client if there is one, else the local scheduler."""
    client = current_client() if scheduler is None else None
    if client is not None:
        futures = client.compute(list(objs))
        return tuple(client.gather(futures))
    return dask.compute(*objs, scheduler=scheduler)
