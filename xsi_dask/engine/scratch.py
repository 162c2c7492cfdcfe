"""Scratch folders of iterative runs (NMF's W per tile), removed on exit and swept after a crash.

An iterative decomposition keeps per-unit arrays (the W rows of a tile for
NMF: 8 k bytes a pixel) in a folder every worker can reach, not in worker
memory. :meth:`Scratch.create` makes that folder, ``.xsi-dask-nmf-<12 hex>``,
and removes it when its ``with`` block ends, normally or by an exception
(``KeyboardInterrupt`` included); nothing depends on garbage collection.

A run that cannot reach its ``finally`` (``SIGKILL``, the out-of-memory
killer, a power cut) leaves its folder behind. Each folder therefore holds a
``lock.json`` naming the process that owns it (host, pid and the process's
start time) and the store it belongs to; :func:`sweep_scratch` (and
:func:`clean`, behind ``xsi-dask clean STORE``) removes the folders of a
store whose owner is provably dead on this host, and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask.config
import numpy as np
import psutil

from ..errors import DecompositionError, XSIWarning

__all__ = ["LOCK_NAME", "PREFIX", "Scratch", "clean", "sweep_scratch"]

log = logging.getLogger(__name__)

PREFIX = ".xsi-dask-nmf-"
"""Name prefix of a scratch folder; 12 lowercase hex digits follow."""

LOCK_NAME = "lock.json"
"""The lock file in a scratch folder: who owns it, for which store."""

_NAME_RE = re.compile(r"\.xsi-dask-nmf-[0-9a-f]{12}")
# psutil derives a process's start time from the boot time, which Linux reports
# to the second and which can read one second apart; a pid is not reused
# within a second of the process that held it starting.
_START_TOLERANCE_S = 1.0


class Scratch:
    """A folder of per-unit float64 arrays that every worker can reach.

    Arrays are ``<name>.npy`` files, written atomically (a temporary name,
    then :func:`os.replace`), so a task that dies or is run again never leaves
    a half-written array under the final name. A :class:`Scratch` pickles as
    its path only, so dask tasks can carry it; constructing one creates
    nothing: use :meth:`create` for a folder that is made and removed.

    Parameters
    ----------
    path : str or Path
        The folder (made absolute).

    Attributes
    ----------
    path : Path
        The absolute path of the folder.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(os.path.abspath(path))

    def __reduce__(self):
        return (type(self), (str(self.path),))

    def __dask_tokenize__(self):
        return ("xsi_dask.Scratch", str(self.path))

    def __repr__(self) -> str:
        return f"Scratch({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scratch) and other.path == self.path

    def __hash__(self) -> int:
        return hash(("xsi_dask.Scratch", str(self.path)))

    def _file(self, name: str) -> Path:
        if not name or "/" in name or os.sep in name or name.startswith("."):
            raise ValueError(f"invalid scratch array name {name!r}")
        return self.path / f"{name}.npy"

    def save(self, name: str, array: np.ndarray) -> None:
        """Write ``array`` as ``name`` atomically, replacing an earlier array of that name.

        Parameters
        ----------
        name : str
            The array's name: no path separator, not starting with ``.``.
        array : numpy.ndarray
            The array (stored as it is; callers pass float64).
        """
        final = self._file(name)
        tmp = self.path / f".{name}.{uuid.uuid4().hex[:8]}.npy"
        try:
            np.save(tmp, np.asarray(array), allow_pickle=False)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    def load(self, name: str) -> np.ndarray:
        """Read the array ``name``.

        Raises
        ------
        FileNotFoundError
            No such array, or the folder is gone (its run has ended).
        """
        return np.load(self._file(name), allow_pickle=False)

    def remove(self, name: str) -> None:
        """Delete the array ``name``; no error if it does not exist."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._file(name))

    @classmethod
    @contextlib.contextmanager
    def create(cls, store_path: str | os.PathLike, store_uuid: str, *, parent: str | os.PathLike | None = None,
               on_cluster: bool = False) -> Iterator[Scratch]:
        """Make a private scratch folder for one run and remove it when the ``with`` block ends.

        The folder is ``<parent>/.xsi-dask-nmf-<12 hex>``, mode ``0o700``,
        holding a ``lock.json`` that names this process and the store, so
        that :func:`sweep_scratch` can remove it if this process is killed
        before the block ends. It is removed on any exit of the block, an
        exception or ``KeyboardInterrupt`` included (by the process that made
        it only, not by a forked child).

        Parameters
        ----------
        store_path : str or Path
            The montage store the run reads (recorded in the lock; its parent
            folder is the default place).
        store_uuid : str
            The store's uuid (:attr:`MontageStore.uuid`), recorded in the lock.
        parent : str or Path, optional
            Where to make the folder (created if missing). Default: the dask
            config ``xsi-dask.scratch`` if set, else the store's parent
            folder if writable, else (only when not ``on_cluster``) the
            system temporary folder.
        on_cluster : bool
            Whether workers on other machines will read and write the folder:
            then this machine's temporary folder is no fallback.

        Yields
        ------
        Scratch
            The folder.

        Raises
        ------
        DecompositionError
            The store's folder is not writable, ``on_cluster`` and no
            ``xsi-dask.scratch`` is configured; or the folder cannot be made.
        """
        store = Path(store_path).resolve()
        if parent is None:
            parent = dask.config.get("xsi-dask.scratch", None)
        beside = store.parent
        if parent:
            base = Path(parent).expanduser().resolve()
        elif os.access(beside, os.W_OK):
            base = beside
        elif not on_cluster:
            base = Path(tempfile.gettempdir()).resolve()
        else:  # a temporary folder of this machine may not exist on the workers
            raise DecompositionError(
                f"NMF needs a scratch folder every worker can reach, and {beside} (beside the store) is not "
                "writable: set xsi-dask.scratch (dask.config.set({'xsi-dask.scratch': PATH}))"
            )
        path = base / f"{PREFIX}{uuid.uuid4().hex[:12]}"
        owner = os.getpid()
        try:
            base.mkdir(parents=True, exist_ok=True)
            path.mkdir(mode=0o700)
        except OSError as exc:
            raise DecompositionError(f"cannot create the NMF scratch folder {path} ({exc}); set xsi-dask.scratch") from exc
        try:
            os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
            _write_lock(path, {
                "host": socket.gethostname(),
                "pid": owner,
                "create_time": psutil.Process(owner).create_time(),
                "store": str(store),
                "store_uuid": str(store_uuid),
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
            })
            yield cls(path)
        finally:
            if os.getpid() == owner:
                errors = _remove_folder(path)
                if errors:
                    msg = (f"could not remove the scratch folder {path} ({errors[0]}); `xsi-dask clean {store}` "
                           "removes it once this process has ended")
                    if sys.exc_info()[0] is None:
                        warnings.warn(msg, XSIWarning, stacklevel=3)
                    else:  # a warning turned error must not hide the exception under way
                        log.warning(msg)


def _write_lock(path: Path, lock: dict[str, Any]) -> None:
    tmp = path / f".{LOCK_NAME}.{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        json.dump(lock, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / LOCK_NAME)


def _remove_folder(path: Path) -> list[str]:
    """Remove ``path`` with its lock last, so that a folder only partly removed stays sweepable; errors returned."""
    errors: list[str] = []

    def rmtree(p):
        def onexc(func, q, exc):
            if not isinstance(exc, FileNotFoundError):
                errors.append(f"{q}: {exc}")

        if sys.version_info >= (3, 12):
            shutil.rmtree(p, onexc=onexc)
        else:
            shutil.rmtree(p, onerror=lambda func, q, exc_info: onexc(func, q, exc_info[1]))

    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [f"{path}: {exc}"]
    for e in entries:
        if e.name == LOCK_NAME:
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                rmtree(e.path)
            else:
                os.remove(e.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            errors.append(f"{e.path}: {exc}")
    if errors:
        return errors
    rmtree(path)  # the lock, and files a straggling task wrote meanwhile
    return errors


def _read_lock(folder: Path) -> dict[str, Any] | None:
    try:
        with open(folder / LOCK_NAME) as f:
            lock = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(lock, dict):
        return None
    ok = (isinstance(lock.get("host"), str) and isinstance(lock.get("pid"), int) and not isinstance(lock.get("pid"), bool)
          and isinstance(lock.get("create_time"), (int, float)) and isinstance(lock.get("store"), str)
          and isinstance(lock.get("store_uuid"), str))
    return lock if ok else None


def _owner_dead(lock: dict[str, Any]) -> bool:
    """Whether the process named by ``lock`` (on this host) has ended; unsure counts as alive."""
    pid = lock["pid"]
    if pid <= 0:
        return False
    if not psutil.pid_exists(pid):
        return True
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - float(lock["create_time"])) > _START_TOLERANCE_S:
            return True  # the pid now belongs to another process
        return proc.status() == psutil.STATUS_ZOMBIE  # ended, not yet reaped by its parent
    except psutil.NoSuchProcess:
        return True
    except (psutil.AccessDenied, OSError):
        return False


def _candidate_parents(store: Path, parents: Iterable[str | os.PathLike] | None) -> list[Path]:
    if parents is None:
        configured = dask.config.get("xsi-dask.scratch", None)
        parents = [store.parent, *([configured] if configured else []), tempfile.gettempdir()]
    out: list[Path] = []
    for p in parents:
        q = Path(p).expanduser().resolve()
        if q not in out:
            out.append(q)
    return out


def sweep_scratch(store_path: str | os.PathLike, store_uuid: str | None = None, *,
                  parents: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """Remove the scratch folders that dead runs on a store left behind.

    A folder in one of ``parents`` is removed only if all of these hold:
    its name is ``.xsi-dask-nmf-`` and 12 lowercase hex digits (and it is not
    a symbolic link); it holds a ``lock.json`` that parses; the lock names
    this store (its ``store_uuid`` equals ``store_uuid`` when given, else its
    store path equals ``store_path`` resolved); and the lock names this host
    and a process that has ended (no process with that pid, a zombie, or a
    process with that pid that started at another time: the pid was reused).
    Folders of other hosts, of live runs, of other stores and folders without
    a readable lock are never touched (they are logged at INFO level).

    Parameters
    ----------
    store_path : str or Path
        The montage store whose runs' folders to remove.
    store_uuid : str, optional
        The store's uuid (:attr:`MontageStore.uuid`); matches the store even
        if it was moved since the run. Without it, the lock's store path must
        match.
    parents : iterable of str or Path, optional
        The folders to search. Default: the store's parent folder, the dask
        config ``xsi-dask.scratch`` if set, and the system temporary folder.

    Returns
    -------
    list of Path
        The folders removed.
    """
    store = Path(store_path).resolve()
    host = socket.gethostname()
    removed: list[Path] = []
    for parent in _candidate_parents(store, parents):
        try:
            entries = sorted(os.scandir(parent), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if not _NAME_RE.fullmatch(e.name):
                continue
            folder = Path(e.path)
            try:
                if e.is_symlink() or not e.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue
            lock = _read_lock(folder)
            if lock is None:
                log.info("scratch folder %s kept: no readable %s", folder, LOCK_NAME)
                continue
            if store_uuid is not None:
                ours = lock["store_uuid"] == store_uuid
            else:
                try:
                    ours = Path(lock["store"]).resolve() == store
                except (OSError, RuntimeError, ValueError):
                    ours = False
            if not ours:
                continue
            if lock["host"] != host:
                log.info("scratch folder %s kept: its run was on host %s", folder, lock["host"])
                continue
            if not _owner_dead(lock):
                log.info("scratch folder %s kept: process %d is running", folder, lock["pid"])
                continue
            errors = _remove_folder(folder)
            if errors:
                log.warning("could not remove the scratch folder %s: %s", folder, "; ".join(errors))
            else:
                removed.append(folder)
    return removed


def clean(store_path: str | os.PathLike) -> list[Path]:
    """Remove the scratch folders that killed runs on a montage store left behind (``xsi-dask clean STORE``).

    A run that iterates (NMF) keeps per-tile arrays in a folder
    ``.xsi-dask-nmf-<12 hex>`` beside the store (or under ``xsi-dask.scratch``,
    or the system temporary folder) and removes it when it ends; a run that
    was killed (``kill -9``, out of memory, a lost node) cannot, and its folder
    can hold gigabytes. This removes the folders of the store whose run was on
    this machine and whose process has ended. Folders of runs still going, of
    runs on other machines (run ``clean`` there) and of other stores are kept.
    Safe to run at any time.

    Parameters
    ----------
    store_path : str or Path
        The montage store (``.zarr`` folder).

    Returns
    -------
    list of Path
        The folders removed (empty if there were none).

    Raises
    ------
    StoreFormatError
        ``store_path`` is not an xsi_dask montage store.

    See Also
    --------
    sweep_scratch : the same for a store's uuid and chosen folders.
    """
    from ..io.store import MontageStore

    store = MontageStore(store_path)
    return sweep_scratch(store.path, store.uuid)
