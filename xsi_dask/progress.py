"""One progress display per algorithm run: passes or iterations as one bar, with the current loss.

On a terminal it is a tqdm bar on stderr. In a log file (stderr not a TTY) it
prints a plain line at most every ``min_interval`` seconds and at the end, so
a SLURM or ``make`` log stays readable::

    NMF (KL, k=4): 40/200 iterations, loss 1.2345e+06, 12.3 s
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["Progress"]


def _fmt(v: Any) -> str:
    return f"{v:.5g}" if isinstance(v, float) else str(v)


class Progress:
    """A progress display for one algorithm run.

    Parameters
    ----------
    label : str
        What runs, in the user's words ("Poisson SVD (randomized, k=10)").
    total : int
        Steps expected (passes or iterations); ``update`` may stop early.
    unit : str
        Plural noun of a step ("passes", "iterations").
    enabled : bool
        False: nothing is shown (``progress=False`` of the algorithms).
    min_interval : float
        Seconds between plain lines when stderr is not a terminal.
    """

    def __init__(self, label: str, total: int, *, unit: str = "passes", enabled: bool = True, min_interval: float = 10.0):
        self.label, self.total, self.unit, self.enabled = label, int(total), unit, enabled
        self.n = 0
        self.info: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        self._last = -1e9
        self._bar = None
        self.min_interval = float(min_interval)
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=label, unit=unit.rstrip("s") or unit, leave=True, file=sys.stderr)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, **info: Any) -> None:
        """Advance by ``n`` steps; ``info`` (e.g. ``loss=...``) is shown beside the count."""
        self.n += n
        self.info.update(info)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if info:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.info.items()}, refresh=False)
            return
        now = time.perf_counter()
        if now - self._last >= self.min_interval or self.n >= self.total:
            self._print(now)

    def _print(self, now: float) -> None:
        self._last = now
        extra = "".join(f", {k} {_fmt(v)}" for k, v in self.info.items())
        print(f"{self.label}: {self.n}/{self.total} {self.unit}{extra}, {now - self._t0:.1f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        """End the display (a last line in a log file, unless it was just printed)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._last < 0 or self.n < self.total:
            self._print(time.perf_counter())
        self.enabled = False
