"""Interrupts: SIGINT and SIGTERM as exceptions, and stopping the writer threads before temporary outputs go.

The command line turns both signals into :class:`Interrupted` (a
``KeyboardInterrupt``, so every ``finally`` and context manager on the way
runs: the cluster is shut down, scratch and temporary outputs are removed).
A temporary output may only be removed once nothing writes into it any more:
dask's threaded scheduler leaves the tasks it had started running in its
(cached) thread pool when the thread waiting for them is interrupted, and
zarr keeps writing from its IO thread; :func:`quiesce` stops and joins both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

__all__ = ["Interrupted", "exit_code", "quiesce", "signals_as_exceptions"]

log = logging.getLogger(__name__)

_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which.

    Parameters
    ----------
    signum : int
        The signal number.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        """``"SIGINT"`` or ``"SIGTERM"``."""
        return _NAMES.get(self.signum, f"signal {self.signum}")


def exit_code(exc: BaseException) -> int:
    """The shell's exit status for an interrupt: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def _quiet_logs() -> None:
    """After an interrupt, the shutdown's own noise (cancelled futures, closed comms) is not the user's news."""
    import logging

    for name in ("asyncio", "distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _in_finalizer(frame) -> bool:
    """Whether ``frame`` runs inside a ``__del__``, where Python ignores (only prints) the exceptions raised."""
    depth = 0
    while frame is not None and depth < 64:
        if frame.f_code.co_name == "__del__":
            return True
        frame, depth = frame.f_back, depth + 1
    return False


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Raise :class:`Interrupted` in the main thread on the first SIGINT or SIGTERM of the block.

    A second signal while the first is being handled (the cleanup under way)
    is ignored with a note on stderr, so that it cannot interrupt the removal
    of temporary outputs; a third ends the process at once (``os._exit``).
    A signal that arrives while a ``__del__`` runs (where Python would swallow
    the exception) is delivered again 50 ms later instead of being lost.
    The previous handlers are restored when the block ends. Outside the main
    thread (where Python cannot install handlers) the block does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen: list[int] = []

    def handler(signum, frame):
        if _in_finalizer(frame):
            # Python ignores an exception raised in a __del__ (a garbage-collected future, say): raised here the
            # interrupt would be lost and the command would run to its end. The same signal comes again shortly.
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        seen.append(signum)
        if len(seen) == 1:
            _quiet_logs()
            raise Interrupted(signum)
        if len(seen) == 2:
            print(f"xsi-dask: {_NAMES.get(signum, signum)} again: still cleaning up; once more to quit at once "
                  "(temporary files may be left)", file=sys.stderr, flush=True)
            return
        os._exit(128 + seen[0])

    old = {s: signal.signal(s, handler) for s in _NAMES}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _stop_dask_pools(deadline: float) -> None:
    """Cancel the queued tasks of this thread's dask thread pools and join their threads."""
    try:
        from dask import threaded
    except ImportError:  # pragma: no cover
        return
    me = threading.current_thread()
    with threaded.pools_lock:
        pools = list(threaded.pools.pop(me, {}).values())
        if me is threading.main_thread() and threaded.default_pool is not None:
            pools.append(threaded.default_pool)
            threaded.default_pool = None
    for pool in pools:
        pool.shutdown(wait=False, cancel_futures=True)
        for t in list(getattr(pool, "_threads", ())):
            if t is not me:
                t.join(max(0.0, deadline - time.monotonic()))
                if t.is_alive():
                    log.warning("xsi_dask: a dask thread is still running after the interrupt: %s", t.name)


async def _drain() -> None:
    me = asyncio.current_task()
    while True:
        others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if not others:
            return
        await asyncio.wait(others, timeout=0.5)


def _drain_zarr(deadline: float) -> None:
    """Wait until zarr's IO loop has no write (or read) under way."""
    sync = sys.modules.get("zarr.core.sync")
    if sync is None:
        return
    loop = sync.loop[0]
    if loop is None or loop.is_closed() or not loop.is_running() or threading.current_thread() is sync.iothread[0]:
        return
    fut = asyncio.run_coroutine_threadsafe(_drain(), loop)
    try:
        fut.result(max(0.0, deadline - time.monotonic()))
    except Exception:  # noqa: BLE001 - a timeout: go on, the caller removes what it can
        fut.cancel()
        log.warning("xsi_dask: zarr's IO loop did not become idle after the interrupt")


def quiesce(timeout: float = 60.0) -> None:
    """Stop the writers of this thread's work before its temporary outputs are removed.

    Cancels the tasks still queued in the dask thread pools this thread used
    (the threaded scheduler leaves them queued and running when the thread
    waiting for them is interrupted), joins the threads of those pools, then
    waits until zarr's IO loop has nothing under way. The pools are dropped
    from dask's cache, so the next computation starts fresh ones.

    Parameters
    ----------
    timeout : float
        Seconds to wait in all; after that the caller goes on (a warning is logged).
    """
    deadline = time.monotonic() + timeout
    _stop_dask_pools(deadline)
    _drain_zarr(deadline)
