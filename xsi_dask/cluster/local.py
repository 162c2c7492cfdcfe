"""Connect to a Dask cluster: a LocalCluster by default, or an existing scheduler."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from dask.system import CPU_COUNT

from .. import config

__all__ = ["dask_client"]


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    quiet: bool = False,
) -> Iterator[Any]:
    """A ``distributed.Client`` for the duration of the block.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``, e.g. one started by
        dask-jobqueue on SLURM). Default: start a LocalCluster bound to
        127.0.0.1 with ``workers`` processes (default: one per core) of
        ``threads_per_worker`` threads (default 1: the tile kernels are
        single-threaded) and ``memory_limit`` each (default "auto").

    The dashboard URL is printed at start unless ``quiet``.
    """
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(
            n_workers=int(config.get("workers", workers) or CPU_COUNT),
            threads_per_worker=int(config.get("threads-per-worker", threads_per_worker)),
            memory_limit=config.get("memory-limit", memory_limit),
            host="127.0.0.1",
            dashboard_address=config.get("dashboard-address"),
            processes=True,
            silence_logs=40,
        )
        client = Client(cluster)
    try:
        if not quiet:
            n = len(client.scheduler_info().get("workers", {}))
            print(f"Dask dashboard: {client.dashboard_link}  ({n} workers)", flush=True)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
