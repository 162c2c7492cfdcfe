"""NMF checkpoints and SIGTERM: what lets an interrupted NMF continue to exactly the uninterrupted result.

The checkpoint folder itself (atomic commits, manifest, owner) is
:class:`xsi_dask.engine.scratch.Checkpoint`; this module holds the NMF side:
opening and checking a checkpoint against the run's identity, and turning
SIGTERM (how SLURM announces the end of the walltime) into a checkpoint at the
end of the current iteration.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import signal
import threading

import dask.config
import numpy as np

from ..engine import Plan
from ..engine.scratch import Checkpoint, ScratchError
from ..errors import DecompositionError

__all__ = ["SigtermStop", "Terminated", "checkpoint_every_of", "check_resumable", "digest", "link_or_copy",
           "open_checkpoint"]


class Terminated(BaseException):
    """SIGTERM under the default disposition: unwinds the run (its scratch folder goes) before the process ends."""


class SigtermStop:
    """While a run iterates, SIGTERM (SLURM's end of walltime) only sets a flag; the loop checkpoints, then :meth:`act`.

    Installed only in the main thread (the only one Python delivers signals to)
    and only when SIGTERM is not ignored; the previous handler is restored on
    exit.
    """

    def __init__(self, enabled: bool):
        self.enabled, self.installed, self.requested, self.prev = enabled, False, False, None

    def __enter__(self) -> SigtermStop:
        if self.enabled and threading.current_thread() is threading.main_thread():
            prev = signal.getsignal(signal.SIGTERM)
            if prev is not None and prev != signal.SIG_IGN:
                self.prev = prev
                signal.signal(signal.SIGTERM, self._handle)
                self.installed = True
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self.prev)
            self.installed = False

    def act(self) -> None:
        """What SIGTERM would have done, now that the state is committed: the previous handler, or the end of the process."""
        self.requested = False
        if callable(self.prev):  # the program's own handler: it raises, exits, or lets the run go on
            self.prev(signal.SIGTERM, inspect.currentframe())
        else:
            raise Terminated()


def checkpoint_every_of(value: int | None) -> int:
    v = dask.config.get("xsi-dask.nmf-checkpoint-every", 10) if value is None else value
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 0:
        raise DecompositionError(f"checkpoint_every must be an integer >= 0 (0: no checkpoints); got {v!r}")
    return int(v)


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a, dtype=np.float64))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


_WHY = {"backend": "the kernel backend (xsi-dask.backend)"}


def check_resumable(ckpt: Checkpoint, found: dict, identity: dict, max_iter: int) -> None:
    """Refuse a checkpoint written by a run with other parameters, naming each difference."""
    if found.get("kind") != "nmf" or found.get("version") != 1 or not isinstance(found.get("identity"), dict):
        raise DecompositionError(f"{ckpt.path} is not an NMF checkpoint this xsi_dask can resume; remove it to start afresh")
    have = found["identity"]
    diff = [f"{_WHY.get(key, key)}: {have.get(key)!r} in the checkpoint, {want!r} now" for key, want in identity.items()
            if have.get(key) != want and key != "units"]  # other units (workers): W is re-split per tile
    if diff:
        raise DecompositionError(
            f"cannot resume from the checkpoint {ckpt.path}: it was written by an NMF with other parameters ("
            + "; ".join(diff) + "). Resume with the same parameters, or run without resume (the checkpoint is then "
            "replaced)"
        )
    if int(found["n_iter"]) > max_iter:
        raise DecompositionError(f"cannot resume from the checkpoint {ckpt.path}: it is at iteration {found['n_iter']}, "
                                 f"beyond max_iter={max_iter}; raise max_iter")


def link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except FileNotFoundError:
        raise
    except OSError:
        shutil.copyfile(src, dst)


def open_checkpoint(plan: Plan, identity: dict, *, resume: bool, max_iter: int,
                    on_cluster: bool) -> tuple[Checkpoint, dict | None, bool]:
    """The run's checkpoint folder, the state to resume from (or None) and whether an older checkpoint is superseded.

    Raises
    ------
    DecompositionError
        A live process on this host writes the same checkpoint, or ``resume``
        meets a checkpoint of other parameters (each difference named).
    ScratchError
        ``resume`` meets a damaged checkpoint.
    """
    ckpt = Checkpoint.of("nmf", plan.store, plan.store_uuid, plan.tiles, on_cluster=on_cluster)
    try:
        found = ckpt.manifest()
        superseded = found is not None
    except ScratchError:
        if resume:
            raise
        found, superseded = None, True  # a damaged checkpoint is replaced by this run's
    if found is not None and ckpt.owner_alive(found):
        raise DecompositionError(
            f"another NMF on these tiles (process {found['owner']['pid']} on this host) is writing the checkpoint "
            f"{ckpt.path}; wait for it to end, or pass checkpoint_every=0 (--checkpoint-every 0)"
        )
    if resume and found is not None:
        check_resumable(ckpt, found, identity, max_iter)
        return ckpt, found, superseded
    return ckpt, None, superseded  # a fresh run replaces an older checkpoint with its own first one
