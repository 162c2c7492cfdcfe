"""Checks that the workers of a cluster see the files a run reads (the store on a shared file system)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ClusterUnavailableError

__all__ = ["check_workers_see_store"]


def check_workers_see_store(store: str | Path, client=None) -> None:
    """Raise unless every worker of the client reads the montage store at the same absolute path.

    A SLURM (or any multi-node) run needs the store, and NMF's scratch folder
    beside it, on a file system every node sees; a worker that cannot see it
    would fail its first task far into the run.

    Parameters
    ----------
    store : str or Path
        The montage store (a ``.zarr`` folder) the run reads.
    client : distributed.Client, optional
        Default: the current client; without one (the threaded scheduler) nothing is checked.

    Raises
    ------
    ClusterUnavailableError
        Some worker cannot read ``store/zarr.json``; the message names the
        worker, its host and the error.
    """
    if client is None:
        from .._dask import current_client

        client = current_client()
    if client is None:
        return
    path = str(Path(store).resolve())

    def sees(path: str) -> str | None:  # nested: sent by value, so the worker imports nothing of xsi_dask for it
        import os
        import socket

        try:
            with open(os.path.join(path, "zarr.json"), "rb") as f:
                f.read(1)
        except OSError as exc:
            return f"{socket.gethostname()}: {type(exc).__name__}: {exc.strerror or exc}"
        return None

    # on_error="return": a worker that cannot answer (restarting, dying at its memory limit) is not judged here;
    # the pass engine's own checks and watch say what is wrong with it
    seen = client.run(sees, path, on_error="return")
    missing = {w: why for w, why in seen.items() if isinstance(why, str)}
    if missing:
        lines = "; ".join(f"worker {w} on {why}" for w, why in sorted(missing.items()))
        raise ClusterUnavailableError(
            f"{len(missing)} of {len(seen)} workers cannot read the montage store {path} ({lines}); the store, and "
            "NMF's scratch folder beside it (xsi-dask.scratch), must be on a file system every node sees "
            "(docs/deploy.md)")
