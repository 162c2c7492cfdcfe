"""The package's few dask helpers below every layer: the active client, CPU count, compute with a watchdog.

Kept here (not in the engine) so that :mod:`xsi_dask.io` can write results
without importing the pass engine above it.

On a distributed client :func:`compute` does not simply wait for the result.
It polls the scheduler every second or so, and

* re-schedules *stranded* tasks: a task pinned to a worker with loose
  restrictions (``allow_other_workers``) that went to ``no-worker`` while no
  worker was running stays there for good once a replacement worker joins
  (distributed re-evaluates such tasks only for the restricted workers), so
  the probe recommends them for processing again as soon as any worker runs;
* tells the user, at WARNING on the ``xsi_dask`` logger, when a worker leaves
  or joins the cluster;
* ends the pass with :class:`~xsi_dask.errors.ClusterStalledError` when no task
  has finished for ``xsi-dask.stall-timeout`` while nothing runs anywhere
  (every worker gone or paused, or the tasks stuck), and with
  :class:`~xsi_dask.errors.WorkerLostError` when distributed gives up on a
  task whose workers kept dying (``distributed.scheduler.allowed-failures``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dask
from dask.system import CPU_COUNT
from dask.utils import parse_timedelta

from .errors import ClusterStalledError, WorkerLostError

__all__ = ["CPU_COUNT", "current_client", "compute", "cluster_state", "register_unstrand", "stall_timeout"]

log = logging.getLogger("xsi_dask")


def current_client():
    """The active ``dask.distributed`` Client, or None (then passes run on the local dask scheduler)."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def stall_timeout() -> float:
    """Seconds without a finished task, while no worker runs anything, before a pass gives up (``xsi-dask.stall-timeout``)."""
    return float(parse_timedelta(dask.config.get("xsi-dask.stall-timeout", "300s"), default="s"))


def _probe_function():
    """The scheduler-side probe, built here so that cloudpickle sends it by value.

    A nested function is pickled with its code, so a scheduler started
    without xsi_dask installed (``dask scheduler`` on a login node) runs it too.
    """

    def unstrand(s) -> int:
        """Recommend for processing every ``no-worker`` task with loose restrictions while a worker runs; their count.

        Loose restrictions to workers that are gone: distributed never re-evaluates these when a worker joins
        (bulk_schedule_unrunnable_after_adding_worker checks only the restricted workers), so ask again.
        """
        if not s.running:
            return 0
        recs = {ts.key: "processing" for ts in list(s.unrunnable) if ts.loose_restrictions}
        if recs:
            s.transitions(recs, stimulus_id=f"xsi-dask-unstrand-{time.time()}")
        return len(recs)

    def probe(dask_scheduler=None, unstrand_tasks=True):
        s = dask_scheduler
        finished = 0
        for tp in list(s.task_prefixes.values()):
            counts = tp.state_counts  # cumulative: tasks that ever entered each state
            finished += counts.get("memory", 0) + counts.get("erred", 0)
        stranded = unstrand(s) if unstrand_tasks else 0
        return {
            "finished": finished,
            "workers": sorted(s.workers),
            "running": len(s.running),
            "paused": sum(1 for ws in s.workers.values() if getattr(ws.status, "name", str(ws.status)) == "paused"),
            "busy": sum(1 for ws in s.running if ws.processing),
            "no_worker": len(s.unrunnable),
            "stranded": stranded,
        }

    return probe, unstrand


_PROBE, _unstrand = _probe_function()
_seen: dict[int, set[str]] = {}  # id(client) -> worker addresses at the last look


def unstrand_plugin():
    """A scheduler plugin that gives stranded tasks to a worker as soon as one joins (see :func:`register_unstrand`)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Unstrand(SchedulerPlugin):
        name = "xsi-dask-unstrand"

        def add_worker(self, scheduler=None, worker=None):
            n = _unstrand(scheduler)
            if n:
                log.warning("xsi-dask: %d tasks pinned to workers that are gone were given to the workers now running", n)

    return Unstrand()


def _has_unstrand(dask_scheduler=None) -> bool:
    return "xsi-dask-unstrand" in dask_scheduler.plugins


def register_unstrand(client) -> bool:
    """Install :func:`unstrand_plugin` on the client's scheduler; False where the scheduler cannot load it.

    The pass watchdog does the same every poll, so a scheduler without xsi_dask
    (the plugin is pickled by reference) only waits up to a poll longer.
    """
    try:
        if client.run_on_scheduler(_has_unstrand):  # a scheduler shared by several runs keeps the one it has
            return True
        client.register_plugin(unstrand_plugin())
        return True
    except Exception:  # noqa: BLE001 - e.g. a remote scheduler without xsi_dask installed
        log.debug("xsi-dask: the scheduler could not load the unstrand plugin", exc_info=True)
        return False


def cluster_state(client, *, unstrand: bool = True) -> dict | None:
    """One look at the scheduler (and stranded tasks re-scheduled); None if the scheduler does not answer.

    Returns
    -------
    dict or None
        ``finished`` (tasks that ever finished, a counter), ``workers``
        (addresses), ``running`` and ``paused`` worker counts, ``busy`` (running
        workers with tasks), ``no_worker`` (tasks waiting for a worker) and
        ``stranded`` (tasks this look re-scheduled).
    """
    try:
        return client.run_on_scheduler(_PROBE, unstrand_tasks=unstrand)
    except Exception:  # noqa: BLE001 - a scheduler that does not answer is what the watchdog watches for
        return None


def _stalled_message(state: dict | None, seconds: float) -> str:
    if state is None:
        what = "the scheduler does not answer"
    elif not state["workers"]:
        what = "the cluster has no workers (all died and none came back)"
    elif state["paused"] and not state["running"]:
        what = (f"all {state['paused']} workers are paused at their memory limit (distributed pauses a worker at "
                "80 % of it)")
    elif state["no_worker"]:
        what = f"{state['no_worker']} tasks wait for a worker that can run them"
    else:
        what = f"{state['running']} of {len(state['workers'])} workers run, but none has work"
    return (f"no task finished for {seconds:.0f} s and {what}. The pass was stopped; check the workers' log lines "
            "above, give the workers more memory (--memory-limit) or restart the cluster. xsi-dask.stall-timeout "
            "sets how long to wait")


def _watch(client, futures: list) -> None:
    """Wait for ``futures``, re-scheduling stranded tasks, reporting worker changes, and raising on a stall."""
    from distributed import wait

    limit = stall_timeout()
    poll = min(1.0, max(0.1, limit / 10))
    last_finished, since = None, time.monotonic()
    known = _seen.get(id(client))  # the workers at the last look, by an earlier pass: a pass shorter than one poll costs no look
    while True:
        try:
            wait(futures, timeout=poll)
            return
        except TimeoutError:
            pass
        state = cluster_state(client)
        now = time.monotonic()
        if state is not None:
            workers = set(state["workers"])
            if known is not None:
                for addr in sorted(known - workers):
                    log.warning("xsi-dask: worker %s left the cluster (died, killed or restarted); its tasks run again "
                                "elsewhere", addr)
                for addr in sorted(workers - known):
                    log.warning("xsi-dask: worker %s joined the cluster", addr)
            known = _seen[id(client)] = workers
            if state["stranded"]:
                log.warning("xsi-dask: %d tasks of workers that are gone were given to the running workers",
                            state["stranded"])
        if state is not None:
            progress = last_finished is not None and state["finished"] != last_finished
            if progress or state["busy"]:  # a task finished, or a running worker has work: not stalled
                since = now
            last_finished = state["finished"]
        if now - since > limit:
            raise ClusterStalledError(_stalled_message(state, now - since))


def compute(*objs: Any, scheduler: str | None = None) -> tuple:
    """``dask.compute`` on the active distributed client (watched, see the module) if there is one, else locally.

    Raises
    ------
    ClusterStalledError
        No task finished for ``xsi-dask.stall-timeout`` while nothing ran on the cluster.
    WorkerLostError
        A task's workers died while running it ``distributed.scheduler.allowed-failures`` + 1 times.
    """
    client = current_client() if scheduler is None else None
    if client is None:
        return dask.compute(*objs, scheduler=scheduler)
    from distributed import KilledWorker

    futures = client.compute(list(objs))
    try:
        _watch(client, futures)
        return tuple(client.gather(futures))
    except KilledWorker as exc:
        raise WorkerLostError(
            f"the workers running a task died {dask.config.get('distributed.scheduler.allowed-failures', 3) + 1} time(s) "
            f"({exc}); a worker crash or a memory kill by the nanny: give the workers more memory (--memory-limit) "
            "or fewer threads, and see the workers' log lines above"
        ) from exc
    finally:
        if not all(f.status == "finished" for f in futures):
            try:
                client.cancel(futures)
            except Exception:  # noqa: BLE001 - the scheduler may be gone; the error on the way out says more
                pass
