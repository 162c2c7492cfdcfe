"""Benchmark helpers: run a snippet in a fresh process, collect its JSON result and peak RSS."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()

# Peak RSS from VmHWM (the high-water mark of this process's own memory map).
# Not getrusage's ru_maxrss: Linux keeps that across execve, so a child would
# report its parent's peak when the parent was the larger.
_PRELUDE = """
import json, sys, time
def _peak_rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
def report(**kw):
    kw["peak_rss"] = _peak_rss()
    print("@@RESULT@@" + json.dumps(kw))
"""


def run_isolated(code: str, timeout: float = 3600) -> dict:
    """Run ``code`` in a new Python process; it must call ``report(**numbers)``."""
    src = _PRELUDE + textwrap.dedent(code)
    proc = subprocess.run(
        [sys.executable, "-c", src], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    raise RuntimeError(f"benchmark process failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


class WorkerRSS:
    """Peak RSS per worker process of a cluster, sampled in a thread."""

    def __init__(self, client, period: float = 0.5):
        import psutil

        self._psutil = psutil
        self.pids = list(client.run(os.getpid).values())
        self.peak = {p: 0 for p in self.pids}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, args=(period,), daemon=True)
        self._t.start()

    def _loop(self, period):
        while not self._stop.is_set():
            for p in self.pids:
                try:
                    self.peak[p] = max(self.peak[p], self._psutil.Process(p).memory_info().rss)
                except self._psutil.Error:
                    pass
            time.sleep(period)

    def reset(self):
        self.peak = {p: 0 for p in self.pids}

    def stop(self):
        self._stop.set()
        self._t.join()


def machine() -> str:
    import psutil

    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    mem = psutil.virtual_memory().total / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"
