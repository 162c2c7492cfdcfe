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

A scratch folder that is removed while its run uses it (by hand, by a cleaner
of the temporary folder) or whose disk fills up ends the run with
:class:`ScratchError` naming the folder, not with a bare ``OSError``.

:class:`Checkpoint` is the other lifetime: the last committed state of an
iterative run (NMF's H, loss history and per-unit W), in a folder
``.xsi-dask-checkpoint-nmf-<store uuid>-<tiles>`` beside the scratch folders
that outlives the process, so that a killed run can be resumed; the run
removes it when it completes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
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

__all__ = ["CHECKPOINT_PREFIX", "LOCK_NAME", "PREFIX", "Checkpoint", "Scratch", "ScratchError", "ScratchLostError", "clean",
           "scratch_base", "sweep_scratch"]

log = logging.getLogger(__name__)

# numpy parses a .npy header with ast.literal_eval, which is not thread-safe in CPython 3.11 up to 3.11.7 (and
# 3.12.0): two parses at once can fail with "SystemError: AST constructor recursion depth mismatch"
# (python/cpython#106905). The tasks of a threaded scheduler or of a many-threaded worker load W at once.
_HEADER_LOCK = threading.Lock()


def _read_npy(path: str | os.PathLike) -> np.ndarray:
    """``np.load(path, allow_pickle=False)`` of an array :meth:`Scratch.save` wrote, its header parsed under a lock.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a .npy file of a plain C-order array, or shorter than its header says.
    """
    from numpy.lib import format as npy

    with open(path, "rb") as f:
        version = npy.read_magic(f)
        with _HEADER_LOCK:
            if version == (1, 0):
                shape, fortran, dtype = npy.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npy.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        if fortran or dtype.hasobject:
            raise ValueError(f"not a C-order array of plain numbers (fortran_order {fortran}, dtype {dtype})")
        count = int(np.prod(shape, dtype=np.int64))
        data = np.fromfile(f, dtype=dtype, count=count)
    if data.size != count:
        raise ValueError(f"{path}: {data.size} of {count} values (the file is truncated)")
    return data.reshape(shape)

PREFIX = ".xsi-dask-nmf-"
"""Name prefix of a scratch folder; 12 lowercase hex digits follow."""

LOCK_NAME = "lock.json"
"""The lock file in a scratch folder: who owns it, for which store."""

_NAME_RE = re.compile(r"\.xsi-dask-nmf-[0-9a-f]{12}")
# psutil derives a process's start time from the boot time, which Linux reports
# to the second and which can read one second apart; a pid is not reused
# within a second of the process that held it starting.
_START_TOLERANCE_S = 1.0


class ScratchError(OSError, DecompositionError):
    """The scratch or checkpoint folder of a run cannot be written or read (a full disk, an I/O error).

    ``OSError`` comes first so that its ``__new__`` is used when a worker's
    error is unpickled on the client (tblib calls ``cls.__new__``).
    """


class ScratchLostError(ScratchError, FileNotFoundError):
    """An array of a scratch folder is missing: the folder was removed while its run used it."""


_FULL = (errno.ENOSPC, errno.EDQUOT)
_RESUME = "resume=True (xsi-dask nmf --resume) continues from the last checkpoint"


def _lost(path: Path, what: str) -> ScratchLostError:
    if not path.is_dir():
        return ScratchLostError(
            f"the NMF scratch folder {path} was removed while the run was using it (by hand, `xsi-dask clean` of "
            f"another host, or a cleaner of the temporary folder); run the NMF again ({_RESUME}), with "
            "xsi-dask.scratch set to a folder nothing else cleans"
        )
    return ScratchLostError(f"{what} is missing from the NMF scratch folder {path} (removed while the run was using it); "
                            f"run the NMF again ({_RESUME})")


def _write_failed(path: Path, what: str, exc: OSError) -> ScratchError:
    if isinstance(exc, FileNotFoundError) and not path.is_dir():
        return _lost(path, what)
    if exc.errno in _FULL:
        return ScratchError(
            f"no space left on the device of {path} while writing {what} ({exc.strerror or exc}): free space there, or "
            f"set xsi-dask.scratch to a folder with room (NMF needs 16 k bytes a pixel); {_RESUME}"
        )
    return ScratchError(f"cannot write {what} to {path} ({exc}); set xsi-dask.scratch to a writable folder")


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

        A full disk or a folder removed meanwhile raises :class:`ScratchError`
        (:class:`ScratchLostError`) naming the folder.

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
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            if isinstance(exc, OSError) and not isinstance(exc, ScratchError):
                raise _write_failed(self.path, f"the array {name}", exc) from exc
            raise

    def load(self, name: str) -> np.ndarray:
        """Read the array ``name``.

        Raises
        ------
        ScratchLostError
            No such array, or the folder is gone (removed while in use, or its
            run has ended); a ``FileNotFoundError``.
        ScratchError
            The file cannot be read (an I/O error, a damaged file).
        """
        try:
            return _read_npy(self._file(name))
        except FileNotFoundError as exc:
            raise _lost(self.path, f"the array {name}") from exc
        except (OSError, ValueError, EOFError) as exc:
            raise ScratchError(f"cannot read the array {name} of the NMF scratch folder {self.path} ({exc}); "
                               f"run the NMF again ({_RESUME})") from exc

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
        base = scratch_base(store, parent, on_cluster=on_cluster)
        path = base / f"{PREFIX}{uuid.uuid4().hex[:12]}"
        owner = os.getpid()
        try:
            base.mkdir(parents=True, exist_ok=True)
            path.mkdir(mode=0o700)
        except OSError as exc:
            raise DecompositionError(f"cannot create the NMF scratch folder {path} ({exc}); set xsi-dask.scratch") from exc
        try:
            os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
            try:
                _write_lock(path, {
                    "host": socket.gethostname(),
                    "pid": owner,
                    "create_time": psutil.Process(owner).create_time(),
                    "store": str(store),
                    "store_uuid": str(store_uuid),
                    "started": datetime.now(UTC).isoformat(timespec="seconds"),
                })
            except OSError as exc:
                raise _write_failed(path, LOCK_NAME, exc) from exc
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


def scratch_base(store_path: str | os.PathLike, parent: str | os.PathLike | None = None, *,
                 on_cluster: bool = False) -> Path:
    """The folder that holds a store's scratch and checkpoint folders.

    ``parent`` if given, else the dask config ``xsi-dask.scratch`` if set, else
    the store's parent folder if writable, else (only when not ``on_cluster``)
    the system temporary folder.

    Raises
    ------
    DecompositionError
        The store's folder is not writable, ``on_cluster`` and no
        ``xsi-dask.scratch`` is configured.
    """
    store = Path(store_path).resolve()
    if parent is None:
        parent = dask.config.get("xsi-dask.scratch", None)
    beside = store.parent
    if parent:
        return Path(parent).expanduser().resolve()
    if os.access(beside, os.W_OK):
        return beside
    if not on_cluster:
        return Path(tempfile.gettempdir()).resolve()
    # a temporary folder of this machine may not exist on the workers
    raise DecompositionError(
        f"NMF needs a scratch folder every worker can reach, and {beside} (beside the store) is not "
        "writable: set xsi-dask.scratch (dask.config.set({'xsi-dask.scratch': PATH}))"
    )


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


# ---- checkpoints: the last committed state of an iterative run, kept after the process ends ----

CHECKPOINT_PREFIX = ".xsi-dask-checkpoint-"
"""Name prefix of a checkpoint folder: ``<prefix><kind>-<12 hex of the store uuid>-<8 hex of the tiles>``."""

MANIFEST = "manifest.json"
_FORMAT = "xsi-dask-checkpoint"


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpoint:
    """The last committed state of an iterative run on a store, in a folder that outlives the process.

    The folder holds ``manifest.json`` and one complete ``state-<n>-<hex>``
    folder it names (arrays as ``.npy``; the per-unit arrays hard-linked from
    the scratch folder where the file system allows, else copied). A commit
    writes and fsyncs a new state folder, then replaces the manifest with one
    :func:`os.replace`, then removes the older state folders: a process killed
    at any moment leaves the previous complete checkpoint (or the new one),
    never a mix. One checkpoint per store (uuid), kind and tile selection;
    the run that owns it removes it when it completes.

    Parameters
    ----------
    path : str or Path
        The checkpoint folder (made absolute; created by the first commit).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(os.path.abspath(path))

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r})"

    @classmethod
    def of(cls, kind: str, store_path: str | os.PathLike, store_uuid: str, tiles: Iterable[int], *,
           parent: str | os.PathLike | None = None, on_cluster: bool = False) -> Checkpoint:
        """The checkpoint folder of a ``kind`` of run (``"nmf"``) on these tiles of a store, beside its scratch folders.

        Parameters
        ----------
        kind : str
            The algorithm (lowercase letters).
        store_path, store_uuid
            The montage store and its uuid (a store rewritten at the same path
            has another uuid, so another checkpoint).
        tiles : iterable of int
            The store tiles of the view, in view order.
        parent : str or Path, optional
            Where (default: :func:`scratch_base`).
        on_cluster : bool
            As :meth:`Scratch.create`.
        """
        base = scratch_base(store_path, parent, on_cluster=on_cluster)
        key = hashlib.sha256(json.dumps([int(t) for t in tiles]).encode()).hexdigest()[:8]
        return cls(base / f"{CHECKPOINT_PREFIX}{kind}-{str(store_uuid).replace('-', '')[:12]}-{key}")

    # ---- reading ----

    def manifest(self) -> dict[str, Any] | None:
        """The committed manifest, or None when there is no checkpoint.

        Raises
        ------
        ScratchError
            The folder exists but its manifest is unreadable or not a
            checkpoint's, or the state folder it names is gone.
        """
        try:
            with open(self.path / MANIFEST) as f:
                m = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ScratchError(f"the checkpoint {self.path} is unreadable ({exc}); remove the folder to start afresh") from exc
        if not isinstance(m, dict) or m.get("format") != _FORMAT or not isinstance(m.get("state"), str) \
                or "/" in m["state"] or not (self.path / m["state"]).is_dir():
            raise ScratchError(f"{self.path / MANIFEST} is not a complete checkpoint; remove {self.path} to start afresh")
        return m

    def load(self, manifest: dict[str, Any], name: str) -> np.ndarray:
        """The array ``name`` of the committed state ``manifest`` names."""
        path = self.path / manifest["state"] / f"{name}.npy"
        try:
            return _read_npy(path)
        except (OSError, ValueError, EOFError) as exc:
            raise ScratchError(f"cannot read {name} of the checkpoint {self.path} ({exc}); remove the folder to start "
                               "afresh") from exc

    def file(self, manifest: dict[str, Any], name: str) -> Path:
        """The path of the array ``name`` in the committed state (to link or copy from)."""
        return self.path / manifest["state"] / f"{name}.npy"

    def owner_alive(self, manifest: dict[str, Any]) -> bool:
        """Whether the manifest was written by another process that is still running on this host."""
        o = manifest.get("owner") or {}
        if o.get("host") != socket.gethostname() or o.get("pid") == os.getpid() or not isinstance(o.get("pid"), int):
            return False
        try:
            return not _owner_dead({"pid": o["pid"], "create_time": float(o.get("create_time", 0))})
        except (TypeError, ValueError):
            return False

    # ---- writing ----

    def commit(self, meta: dict[str, Any], arrays: dict[str, np.ndarray], files: dict[str, Path]) -> None:
        """Commit a new state atomically: ``arrays`` written, ``files`` hard-linked (or copied), then the manifest.

        Parameters
        ----------
        meta : dict
            JSON-serialisable description (parameters, iteration); stored in
            the manifest with the owner (host, pid) and the time.
        arrays : dict of str to ndarray
            Small arrays written as ``<name>.npy``.
        files : dict of str to Path
            ``.npy`` files of the run (the scratch folder's, written fresh by
            :meth:`Scratch.save`, never changed in place) stored as ``<name>.npy``.

        Raises
        ------
        ScratchError
            A full disk or another write error; the previous checkpoint is
            left as it was.
        """
        state = f"state-{int(meta.get('n_iter', 0)):06d}-{uuid.uuid4().hex[:8]}"
        folder = self.path / state
        tmp = self.path / f".{MANIFEST}.{uuid.uuid4().hex[:8]}"
        try:
            self.path.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.path, 0o700)
            folder.mkdir(mode=0o700)
            for name, a in arrays.items():
                with open(folder / f"{name}.npy", "wb") as f:
                    np.save(f, np.asarray(a), allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
            for name, src in files.items():
                dst = folder / f"{name}.npy"
                try:
                    os.link(src, dst)
                except FileNotFoundError:
                    raise
                except OSError:  # another file system, or no hard links: copy
                    shutil.copyfile(src, dst)
                _fsync_path(dst)
            _fsync_path(folder, directory=True)
            owner = os.getpid()
            manifest = {
                "format": _FORMAT, "version": 1, "state": state, **meta,
                "owner": {"host": socket.gethostname(), "pid": owner, "create_time": psutil.Process(owner).create_time()},
                "written": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            with open(tmp, "w") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / MANIFEST)
            _fsync_path(self.path, directory=True)
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.remove(tmp)
            if isinstance(exc, FileNotFoundError) and exc.filename and Path(exc.filename).parent.name.startswith(PREFIX):
                raise _lost(Path(exc.filename).parent, f"the array {Path(exc.filename).stem}") from exc
            raise _write_failed(self.path, f"the checkpoint of iteration {meta.get('n_iter')}", exc) from exc
        self._prune(keep=state)

    def _prune(self, keep: str | None) -> None:
        """Remove the state folders other than ``keep`` and stray temporary manifests (older or incomplete commits)."""
        with contextlib.suppress(OSError):
            for e in os.scandir(self.path):
                if e.name != keep and (e.name.startswith("state-") or e.name.startswith(f".{MANIFEST}.")):
                    if e.is_dir(follow_symlinks=False):
                        shutil.rmtree(e.path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            os.remove(e.path)

    def remove(self) -> None:
        """Remove the checkpoint (the manifest first, so a partial removal is no checkpoint)."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path / MANIFEST)
        shutil.rmtree(self.path, ignore_errors=True)
