"""Connect to a Dask cluster: a LocalCluster by default, or an existing scheduler.

The cluster's arguments are checked before anything starts (worker and thread
counts, the memory limit, the scheduler's address), a scheduler that does not
answer is given up on after ``xsi-dask.connect-timeout``, and the workers' log
lines at WARNING and above reach the user (a worker that died, was restarted
by its nanny, or is paused at its memory limit).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from typing import Any

from dask.system import CPU_COUNT
from dask.utils import format_bytes, parse_bytes, parse_timedelta

from .. import config
from .._dask import register_unstrand
from ..errors import ClusterUnavailableError, ParameterError, ResourceUnavailableError

__all__ = ["dask_client", "check_count", "check_memory_limit", "check_scheduler_address", "connect_timeout", "visible_gpus"]

_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")


def check_count(name: str, value: Any, *, optional: bool = True) -> int | None:
    """``value`` as a count >= 1 (worker or thread count), or ParameterError naming it.

    Parameters
    ----------
    name : str
        What the count is, for the message (``"workers"``).
    value : int or None
        The count; None is allowed when ``optional``.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, str) and value.strip().lstrip("+").isdigit():
                value = int(value)
            else:
                raise ValueError
        except ValueError:
            raise ParameterError(f"{name} must be a whole number >= 1; got {value!r}") from None
    if value < 1:
        raise ParameterError(f"{name} must be >= 1; got {value}")
    return int(value)


def check_memory_limit(value: Any, name: str = "memory limit") -> str | int | float | None:
    """A worker memory limit as distributed takes it, or ParameterError naming the value.

    Accepted: None, ``"auto"`` (distributed's share of the machine's memory),
    a size (``"4GiB"``, ``"500 MB"``, a number of bytes above 1) or a fraction
    of the machine's memory in (0, 1] (``0.5`` or ``"0.5"``).

    Returns
    -------
    str, int, float or None
        ``"auto"``, a byte count (int) or a fraction (float); None for None.
    """
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool) or isinstance(value, str) and not value.strip():
        raise ParameterError(f"{name} must be a size such as 4GiB, a fraction of the machine's memory, or 'auto'; got {value!r}")
    number = None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is not None:
        if not number > 0 or number != number or number == float("inf"):
            raise ParameterError(f"{name} must be above 0 (a size such as 4GiB, a fraction such as 0.5, or 'auto'); "
                                 f"got {value!r}")
        return number if number <= 1 else int(number)
    try:
        nbytes = parse_bytes(str(value))
    except (ValueError, TypeError):
        nbytes = None
    if nbytes is None or nbytes <= 0:
        raise ParameterError(f"{name} must be a size such as 4GiB, a fraction of the machine's memory such as 0.5, "
                             f"or 'auto'; got {value!r}")
    return int(nbytes)


def check_scheduler_address(address: Any) -> str:
    """A scheduler address such as ``tcp://host:8786`` (or ``host:8786``), or ParameterError naming it at once."""
    from distributed.comm.addressing import parse_host_port

    bad = f"the scheduler address must look like tcp://HOST:PORT (e.g. tcp://127.0.0.1:8786); got {address!r}"
    if not isinstance(address, str) or not address.strip() or any(c.isspace() for c in address.strip()):
        raise ParameterError(bad)
    address = address.strip()
    scheme, sep, loc = address.rpartition("://")
    if sep and scheme not in _SCHEMES:
        raise ParameterError(f"{bad} (unknown scheme {scheme!r}; known: {', '.join(_SCHEMES)})")
    if scheme in ("inproc", "ucx"):
        return address
    try:
        host, port = parse_host_port(loc)
    except (ValueError, TypeError) as exc:
        raise ParameterError(f"{bad} ({exc})") from None
    if not host or not 0 < int(port) < 65536:
        raise ParameterError(f"{bad} (no host, or port {port} outside 1-65535)")
    return address


def connect_timeout() -> float:
    """Seconds to try to reach a scheduler (``xsi-dask.connect-timeout``)."""
    return float(parse_timedelta(config.get("connect-timeout"), default="s"))


def _connect(scheduler: str):
    from distributed import Client

    address = check_scheduler_address(scheduler)
    timeout = connect_timeout()
    try:
        return Client(address, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - a timeout, a refusal, or something that is not a scheduler answering
        why = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise ClusterUnavailableError(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({why}); check that it runs and "
            "that this machine can reach it, or leave out --scheduler for a local cluster "
            "(xsi-dask.connect-timeout sets the wait)"
        ) from None


def visible_gpus() -> list[str]:
    """The CUDA devices this machine lends its workers, as ``CUDA_VISIBLE_DEVICES`` entries.

    ``CUDA_VISIBLE_DEVICES``'s own entries where it is set (an empty value or
    ``-1``: none), else one per GPU that ``nvidia-smi -L`` lists (none without
    the driver's tool). Nothing here imports CuPy or initialises CUDA.
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        devices = [d.strip() for d in env.split(",") if d.strip()]
        return [] if devices[:1] == ["-1"] else devices
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def _add_gpu_workers(cluster: Any, devices: list[str]) -> None:
    """One worker process per device on a LocalCluster, each seeing only its own (``CUDA_VISIBLE_DEVICES``) and
    offering the resource ``GPU=1``; its nanny restarts it with the same device."""
    template = cluster.new_spec
    for dev in devices:
        options = dict(template["options"])
        options["env"] = {**(options.get("env") or {}), "CUDA_VISIBLE_DEVICES": dev}
        options["resources"] = {**(options.get("resources") or {}), "GPU": 1}
        cluster.worker_spec[f"gpu-{dev}"] = {"cls": template["cls"], "options": options}
    cluster.scale(len(cluster.worker_spec))


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    quiet: bool = False,
    gpu_workers: bool = False,
) -> Iterator[Any]:
    """A ``distributed.Client`` for the duration of the block.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``, e.g. one started by
        dask-jobqueue on SLURM), reached within ``xsi-dask.connect-timeout``.
        Default: start a LocalCluster bound to 127.0.0.1 with ``workers``
        processes (default: one per core) of ``threads_per_worker`` threads
        (default 1: the tile kernels are single-threaded) and ``memory_limit``
        each (default "auto"; a size such as "4GiB" or a fraction of the
        machine's memory).
    quiet : bool
        Do not print the dashboard URL at start. Worker log lines at WARNING
        and above are printed either way.
    gpu_workers : bool
        The LocalCluster's workers are one process per visible GPU
        (:func:`visible_gpus`) instead of ``workers``: each sees its own device
        only (``CUDA_VISIBLE_DEVICES``) and offers the resource ``GPU=1``, with
        ``threads_per_worker`` threads (default ``xsi-dask.gpu-tasks`` + 1).

    Raises
    ------
    ParameterError
        A worker or thread count below 1, a memory limit that is not a size, a
        malformed scheduler address (before anything starts).
    ClusterUnavailableError
        The scheduler does not answer within the connect timeout, or the
        LocalCluster cannot start.
    ResourceUnavailableError
        ``gpu_workers`` on a machine where no GPU is visible.
    """
    cluster = None
    if scheduler:
        client = _connect(scheduler)
    else:
        from distributed import Client, LocalCluster

        n_workers = check_count("the number of workers", config.get("workers", workers)) or CPU_COUNT
        threads = check_count("threads per worker", config.get("threads-per-worker", threads_per_worker)) or 1
        limit = check_memory_limit(config.get("memory-limit", memory_limit))
        devices = visible_gpus() if gpu_workers else []
        if gpu_workers:
            if config.get("workers", workers) is not None:
                raise ParameterError(f"a LocalCluster of GPU workers has one worker per visible GPU; workers="
                                     f"{config.get('workers', workers)} cannot apply (choose the GPUs with "
                                     "CUDA_VISIBLE_DEVICES)")
            if not devices:
                where = os.environ.get("CUDA_VISIBLE_DEVICES")
                raise ResourceUnavailableError(
                    "the cupy backend runs its passes on GPU workers, and this machine shows no GPU ("
                    + (f"CUDA_VISIBLE_DEVICES={where!r}" if where is not None else "nvidia-smi lists none") + "); "
                    "run where a GPU is, connect to a cluster with GPU workers (--scheduler), or use --backend numba")
            from ..engine.backends import backend_resources

            n_workers = len(devices)
            if threads_per_worker is None:  # the tasks sharing a GPU (xsi-dask.gpu-tasks, checked there) and one more
                threads = round(1 / backend_resources("cupy")["GPU"]) + 1
        try:
            cluster = LocalCluster(
                n_workers=0 if devices else n_workers,
                threads_per_worker=threads,
                memory_limit=limit,
                host="127.0.0.1",
                dashboard_address=config.get("dashboard-address"),
                processes=True,
                silence_logs=logging.WARNING,  # a lost, restarted or paused worker is news the user must see
            )
            if devices:
                _add_gpu_workers(cluster, devices)
            client = Client(cluster)
            if devices:
                client.wait_for_workers(len(devices), timeout=connect_timeout() * 12)
        except Exception as exc:  # noqa: BLE001
            if cluster is not None:
                cluster.close()
            raise ClusterUnavailableError(
                f"could not start a local Dask cluster of {n_workers} workers x {threads} threads, memory limit "
                f"{limit if not isinstance(limit, int) else format_bytes(limit)} ({type(exc).__name__}: {exc})"
            ) from exc
    register_unstrand(client)  # stranded tasks go to a replacement worker the moment it joins
    try:
        if not quiet:
            n = len(client.nthreads())
            print(f"Dask dashboard: {client.dashboard_link}  ({n} workers)", flush=True)
        yield client
    finally:
        # shutting down: a worker slow to exit is killed by its nanny, which is no news to the user
        nanny_log = logging.getLogger("distributed.nanny")
        level = nanny_log.level
        nanny_log.setLevel(logging.ERROR)
        try:
            client.close()
            if cluster is not None:
                cluster.close()
        finally:
            nanny_log.setLevel(level)
