"""Dask workers as SLURM jobs, through dask-jobqueue's ``SLURMCluster`` (no hand-written sbatch plumbing).

Settings come from the user's dask-jobqueue config (``jobqueue.slurm.*``,
e.g. ``~/.config/dask/jobqueue.yaml``), overridden by what is given here. The
package adds its own defaults where the config says nothing: one thread per
worker process (``processes = cores``: the tile kernels are single-threaded),
TLS between client, scheduler and workers with temporary certificates (any
user of a cluster can reach a plain-TCP scheduler on its nodes and run code as
its owner), and the dashboard on the scheduler host's loopback address.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.config
from dask.utils import parse_bytes, parse_timedelta

from ..errors import ClusterUnavailableError, ParameterError

__all__ = ["SlurmSpec", "job_shape", "slurm_cluster_kwargs", "gpu_job_kwargs", "job_script", "slurm_cluster"]

_WALLTIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")


@dataclass(frozen=True)
class SlurmSpec:
    """What the SLURM worker jobs look like; None: the user's ``jobqueue.slurm.*`` config.

    Parameters
    ----------
    jobs : int
        Worker jobs submitted at start (>= 1).
    cores : int, optional
        Cores per job; as many single-threaded worker processes per job.
    memory : str, optional
        Memory per job (``"16GiB"``), shared by its worker processes.
    walltime : str, optional
        ``HH:MM:SS``, ``MM:SS``, ``D-HH:MM:SS`` (SLURM's forms).
    queue : str, optional
        The partition (``-p``).
    account : str, optional
        The account charged (``-A``).
    tls : bool
        TLS with temporary certificates between client, scheduler and workers
        (default True).
    shared_dir : str, optional
        A folder every node sees, for the workers' copy of the temporary
        certificates (default ``jobqueue.slurm.shared-temp-directory``, else the
        current folder).
    adapt : (int, int), optional
        (MIN, MAX) worker jobs: dask-jobqueue's adaptive scaling submits and
        cancels CPU worker jobs with the load, instead of ``jobs`` fixed ones.
    gpu_jobs : int
        Extra jobs for the tasks that need a GPU (default 0): each asks SLURM
        for ``gpus_per_job`` GPUs (``#SBATCH --gres=gpu:G``, see
        ``xsi-dask.slurm-gpu-gres``) and runs one worker offering the resource
        ``GPU=G``; a task submitted with ``resources={"GPU": 1}`` runs there
        and nowhere else. They are never scaled down by ``adapt``.
    gpus_per_job : int
        GPUs of each GPU job (default 1).
    dashboard_address : str, optional
        Where the scheduler's dashboard listens (default
        ``jobqueue.slurm.scheduler-options.dashboard_address``, else
        ``127.0.0.1:8787``: the scheduler host's loopback, reached through an
        SSH tunnel).
    log_directory : str, optional
        Folder of the jobs' output files (default
        ``jobqueue.slurm.log-directory``, else ``./slurm-logs``).

    Raises
    ------
    ParameterError
        A count below 1, a malformed memory size or walltime (when built).
    """

    jobs: int = 1
    cores: int | None = None
    memory: str | None = None
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    tls: bool = True
    shared_dir: str | None = None
    adapt: tuple[int, int] | None = None
    gpu_jobs: int = 0
    gpus_per_job: int = 1
    dashboard_address: str | None = None
    log_directory: str | None = None

    def __post_init__(self) -> None:
        for name in ("jobs", "cores", "gpu_jobs", "gpus_per_job"):
            v = getattr(self, name)
            if v is None and name == "cores":
                continue
            if name == "gpu_jobs" and v == 0 and not isinstance(v, bool):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ParameterError(f"SLURM {name} must be a whole number >= 1; got {v!r}")
        if self.memory is not None:
            try:
                if parse_bytes(str(self.memory)) <= 0:
                    raise ValueError
            except (ValueError, TypeError):
                raise ParameterError(f"SLURM memory must be a size such as 16GiB; got {self.memory!r}") from None
        if self.walltime is not None and not _WALLTIME.match(str(self.walltime)):
            raise ParameterError(f"SLURM walltime must be HH:MM:SS, MM:SS or D-HH:MM:SS; got {self.walltime!r}")
        if self.adapt is not None:
            lo, hi = self.adapt
            if any(isinstance(v, bool) or not isinstance(v, int) for v in (lo, hi)) or not 1 <= lo <= hi:
                raise ParameterError(f"SLURM adapt must be (MIN, MAX) worker jobs with 1 <= MIN <= MAX; got {self.adapt!r}")
        if self.dashboard_address is not None and not re.match(r"^[^\s:]*:\d+$", str(self.dashboard_address)):
            raise ParameterError(f"the dashboard address must be HOST:PORT or :PORT; got {self.dashboard_address!r}")


def job_shape(spec: SlurmSpec) -> tuple[int, int] | None:
    """(cores, worker processes) of one CPU job: ``spec.cores`` else ``jobqueue.slurm.cores``, split into
    ``jobqueue.slurm.processes`` processes, by default one single-threaded process per core; None when neither
    gives the cores.

    Raises
    ------
    ParameterError
        ``jobqueue.slurm.processes`` does not divide the cores (worker processes of whole threads).
    """
    cfg = dask.config.get("jobqueue.slurm", {}) or {}
    cores = spec.cores if spec.cores is not None else cfg.get("cores")
    if cores is None:
        return None
    cores = int(cores)
    processes = cfg.get("processes")
    if processes is not None and (not isinstance(processes, int) or not 1 <= processes <= cores or cores % processes):
        raise ParameterError(f"jobqueue.slurm.processes = {processes!r} cannot split a job of {cores} cores into worker "
                             "processes of whole threads: set it to a divisor of the cores, or to null for one "
                             "single-threaded worker process per core")
    return cores, int(processes or cores)


def slurm_cluster_kwargs(spec: SlurmSpec) -> dict[str, Any]:
    """The ``SLURMCluster`` arguments of ``spec``: the given values, then ``jobqueue.slurm.*``, then the package's.

    Raises
    ------
    ParameterError
        Neither ``spec`` nor the config gives the cores or the memory of a job
        (dask-jobqueue needs both).
    """
    cfg = dask.config.get("jobqueue.slurm", {}) or {}
    memory = spec.memory if spec.memory is not None else cfg.get("memory")
    shape = job_shape(spec)
    if shape is None or memory is None:
        raise ParameterError("a SLURM job needs its cores and memory: give --cores and --memory, or set jobqueue.slurm.cores "
                             "and jobqueue.slurm.memory in ~/.config/dask/jobqueue.yaml (deploy/slurm/jobqueue.yaml); "
                             "on a montage store already ingested, the memory comes from its tile size when not given")
    cores, processes = shape
    kwargs: dict[str, Any] = {"cores": cores, "memory": str(memory), "processes": processes}
    for key, value in (("walltime", spec.walltime), ("queue", spec.queue), ("account", spec.account)):
        if value is not None:
            kwargs[key] = value
    options = dict(cfg.get("scheduler-options") or {})
    if spec.dashboard_address is not None:
        options["dashboard_address"] = spec.dashboard_address
    options.setdefault("dashboard_address", "127.0.0.1:8787")  # reached through an SSH tunnel (docs/deploy.md)
    kwargs["scheduler_options"] = options
    logs = spec.log_directory or cfg.get("log-directory") or "slurm-logs"
    kwargs["log_directory"] = str(Path(logs).expanduser().resolve())
    if spec.tls:
        kwargs["security"] = True  # dask-jobqueue makes temporary certificates (distributed.Security.temporary)
        shared = spec.shared_dir or cfg.get("shared-temp-directory")
        folder = Path(os.path.expandvars(str(shared))).expanduser().resolve() if shared else Path.cwd()
        if not folder.is_dir():
            raise ParameterError(f"the folder for the workers' TLS certificates does not exist: {folder} "
                                 "(jobqueue.slurm.shared-temp-directory; it must be a folder every node sees)")
        kwargs["shared_temp_directory"] = str(folder)
    return kwargs


def _jobqueue():
    """``(SLURMCluster, SLURMJob)``, imported without letting dask-jobqueue 0.9.0 take over Ctrl-C.

    Its ``runner`` module, imported with the package, sets a SIGINT handler that
    calls ``sys.exit()`` (dask/dask-jobqueue#696, fixed in #697 after 0.9.0): a
    Ctrl-C during a run would then exit with status 0 and skip the interrupt
    handling (exit 130, temporary outputs removed). The handler in place before
    the import is put back.

    Raises
    ------
    ClusterUnavailableError
        dask-jobqueue is not installed.
    """
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        from dask_jobqueue import SLURMCluster
        from dask_jobqueue.slurm import SLURMJob
    except ImportError as exc:
        raise ClusterUnavailableError("SLURM clusters need dask-jobqueue: pip install 'xsi_dask[slurm]'") from exc
    finally:
        if main and previous is not None and signal.getsignal(signal.SIGINT) is not previous:
            signal.signal(signal.SIGINT, previous)
    return SLURMCluster, SLURMJob


def gpu_job_kwargs(job_kwargs: dict[str, Any], spec: SlurmSpec) -> dict[str, Any]:
    """The ``SLURMJob`` arguments of one GPU job: those of the CPU jobs (``job_kwargs``, as the cluster keeps
    them: same scheduler, security, interface, memory), with one worker process, the GPU request and the resource.

    The directive is ``#SBATCH --gres=`` followed by ``xsi-dask.slurm-gpu-gres`` (default ``gpu:{gpus}``, the
    ``{gpus}`` replaced by ``spec.gpus_per_job``); an empty value leaves it out (a cluster without GRES, such as
    the local test SLURM: there the resource is declared, not detected). The user's
    ``jobqueue.slurm.job-extra-directives`` and ``worker-extra-args`` are kept.
    """
    cfg = dask.config.get("jobqueue.slurm", {}) or {}
    gres = str(dask.config.get("xsi-dask.slurm-gpu-gres", "gpu:{gpus}") or "").format(gpus=spec.gpus_per_job)
    directives = list(job_kwargs.get("job_extra_directives") or cfg.get("job-extra-directives") or [])
    args = list(job_kwargs.get("worker_extra_args") or cfg.get("worker-extra-args") or [])
    return {**job_kwargs, "processes": 1, "job_name": GPU_JOB_NAME,
            "job_extra_directives": directives + ([f"--gres={gres}"] if gres else []),
            "worker_extra_args": args + ["--resources", f"GPU={spec.gpus_per_job}"]}


def _job_kwargs(cluster) -> dict[str, Any]:
    """The arguments the cluster gives its worker jobs (dask-jobqueue keeps them as ``_job_kwargs``)."""
    kwargs = getattr(cluster, "_job_kwargs", None)
    if not isinstance(kwargs, dict):
        raise ClusterUnavailableError("this dask-jobqueue does not keep its job arguments where xsi_dask reads them "
                                      "(JobQueueCluster._job_kwargs); GPU jobs need dask-jobqueue 0.9")
    return kwargs


def job_script(spec: SlurmSpec) -> str:
    """The batch script of one worker job, as it would be submitted (nothing is submitted); with
    ``spec.gpu_jobs``, that of one GPU job after it.

    With TLS the script names the workers' certificate files; for the printout
    they are written to a temporary folder (unless ``spec.shared_dir`` or the
    config names one), removed before this returns.
    """
    import tempfile

    SLURMCluster, SLURMJob = _jobqueue()  # noqa: N806 - the classes

    with tempfile.TemporaryDirectory(prefix="xsi-dask-jobscript-") as tmp:
        kwargs = slurm_cluster_kwargs(spec)
        logs = Path(kwargs["log_directory"])
        made = [p for p in (logs, *logs.parents) if not p.exists()]  # dask-jobqueue makes it: a printout must not
        if spec.tls and not (spec.shared_dir or (dask.config.get("jobqueue.slurm", {}) or {}).get("shared-temp-directory")):
            kwargs["shared_temp_directory"] = tmp
        with SLURMCluster(**kwargs) as cluster:
            script = cluster.job_script()
            if spec.gpu_jobs:
                gpu = SLURMJob(cluster.scheduler.address, name="dummy-name", **gpu_job_kwargs(_job_kwargs(cluster), spec))
                script += f"\n# ---- each of the {spec.gpu_jobs} GPU job(s) ----\n" + gpu.job_script()
            for key in ("ca_file", "cert", "key"):  # the certificate files dask-jobqueue keeps open: gone with tmp
                handle = getattr(cluster, f"_job_{key}", None)
                if handle is not None:
                    handle.close()
        for folder in made:  # innermost first; only folders this call made, and only while empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        return script


GPU_JOB_NAME = "dask-worker-gpu"


def _keeping_gpu_workers():
    """dask's ``Adaptive``, except that it never retires a GPU job's worker (adaptive scaling is for the CPU jobs)."""
    from distributed.deploy.adaptive import Adaptive

    class KeepGPUWorkers(Adaptive):
        async def workers_to_close(self, target: int) -> list[str]:
            names = await super().workers_to_close(target)
            return [n for n in names if "-gpu-" not in str(n)]

    return KeepGPUWorkers


def _link_port(link: str | None) -> str | None:
    """The port of a dashboard link such as ``http://127.0.0.1:8787/status`` (None if it names none)."""
    from urllib.parse import urlsplit

    try:
        port = urlsplit(str(link)).port
    except ValueError:
        return None
    return str(port) if port else None


async def _start(job) -> None:
    await job  # ProcessInterface: submits the job (sbatch) and marks it running


@contextlib.contextmanager
def slurm_cluster(spec: SlurmSpec, *, start_timeout: float | str | None = None) -> Iterator[Any]:
    """A ``SLURMCluster`` with ``spec.jobs`` worker jobs submitted, and a client on it, for the block.

    With ``spec.adapt`` = (MIN, MAX) dask-jobqueue's adaptive scaling submits
    and cancels CPU worker jobs between MIN and MAX with the load instead.
    ``spec.gpu_jobs`` GPU jobs (:func:`gpu_job_kwargs`) join the same
    scheduler; adaptive scaling leaves them alone.

    Waits until the first worker has joined (``xsi-dask.slurm-start-timeout``,
    default 10 minutes: the jobs may queue). Every worker job is cancelled when
    the block ends, on error and on Ctrl-C too (closing the cluster cancels
    its jobs).

    Raises
    ------
    ClusterUnavailableError
        dask-jobqueue is missing, the scheduler cannot start, ``sbatch`` fails,
        or no worker joins within the start timeout (the message names the
        jobs and where their logs are).
    """
    SLURMCluster, SLURMJob = _jobqueue()  # noqa: N806 - the classes
    from distributed import Client

    kwargs = slurm_cluster_kwargs(spec)
    timeout = parse_timedelta(start_timeout if start_timeout is not None else
                              dask.config.get("xsi-dask.slurm-start-timeout", "10 minutes"), default="s")
    try:
        cluster = SLURMCluster(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the scheduler could not start (port, certificates)
        raise ClusterUnavailableError(f"could not start the Dask scheduler for SLURM ({type(exc).__name__}: {exc})") from exc
    client = None
    gpu_jobs: list[Any] = []
    try:
        try:
            if spec.adapt is not None:
                cluster.adapt(minimum_jobs=spec.adapt[0], maximum_jobs=spec.adapt[1], Adaptive=_keeping_gpu_workers())
            else:
                cluster.scale(jobs=spec.jobs)
            if spec.gpu_jobs:
                gkw = gpu_job_kwargs(_job_kwargs(cluster), spec)
                for i in range(spec.gpu_jobs):
                    job = SLURMJob(cluster.scheduler.address, name=f"{cluster.name}-gpu-{i}", **gkw)
                    gpu_jobs.append(job)  # cancelled below even when its submission failed half way
                    cluster.sync(_start, job)
            client = Client(cluster, security=cluster.security)
            client.wait_for_workers(1, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - sbatch refused, or the jobs never started
            jobs = ", ".join(str(getattr(j, "job_id", None) or "?")
                             for j in [*cluster.workers.values(), *gpu_jobs]) or "none submitted"
            raise ClusterUnavailableError(
                f"no SLURM worker joined within {timeout:g} s (jobs: {jobs}; {type(exc).__name__}: {exc}); check squeue "
                f"and the jobs' output files in {kwargs['log_directory']}, the partition (--queue) and account "
                "(--account), or raise xsi-dask.slurm-start-timeout") from exc
        host = cluster.scheduler_address.split("://")[-1].rsplit(":", 1)[0]
        # the port the dashboard took (another one when the configured port was busy)
        port = _link_port(client.dashboard_link) or str(kwargs["scheduler_options"]["dashboard_address"]).rsplit(":", 1)[-1]
        jobs = f"{spec.adapt[0]}-{spec.adapt[1]} adaptive" if spec.adapt else str(spec.jobs)
        gpus = f" + {spec.gpu_jobs} GPU job(s)" if spec.gpu_jobs else ""
        print(f"Dask dashboard: {client.dashboard_link}  ({len(client.nthreads())} workers so far, {jobs} SLURM job(s)"
              f"{gpus}; from your machine: ssh -L {port}:127.0.0.1:{port} {host}, then http://localhost:{port})",
              flush=True)
        yield client
    finally:
        if client is not None:
            client.close()
        for job in gpu_jobs:
            with contextlib.suppress(Exception):  # noqa: BLE001 - cancel every job even when one scancel fails
                cluster.sync(job.close)
        cluster.close()  # cancels every CPU worker job (and stops adaptive scaling)
