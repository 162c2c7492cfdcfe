"""The montage store: one Zarr v3 group, one CSR matrix per tile.

Layout (format version 1)::

    STORE.zarr/                       attrs: xsi_dask {format, version, uuid}, montage description
      tiles/<t>/                      attrs: binsparse descriptor, row, col, source, nnz, total_counts
        pointers_to_1  (pixels+1,)    uint32 | uint64    CSR row pointers (pixels row-major)
        indices_1      (nnz,)         uint16 | uint32    channel indices
        values         (nnz,)         smallest unsigned dtype that holds the counts
        sum_spectrum   (channels,)    uint64             summed counts per channel
        count_map      (y, x)         uint32 | uint64    counts per pixel
        images/<name>  (y, x)                            structural images (HAADF, SEM, ...)
      sources/<k>/                    attrs: path, metadata, original_metadata
        images/<name>                                    images of other shapes from the file

The CSR matrix of a tile follows the binsparse v0.1 convention
(https://graphblas.org/binsparse-specification/), so other tools can read it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import zarr

from .. import config
from ..errors import StoreExistsError, StoreFormatError

__all__ = ["FORMAT", "FORMAT_VERSION", "MontageStore", "TileCSR", "smallest_uint", "atomic_output", "write_tile"]

FORMAT = "xsi-dask-montage"
FORMAT_VERSION = 1


def smallest_uint(max_value: int) -> np.dtype:
    """Smallest unsigned integer dtype that holds ``max_value``."""
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise OverflowError(max_value)


@contextlib.contextmanager
def atomic_output(
    out: str | Path,
    *,
    overwrite: bool = False,
    kind: str = "montage",
    before_commit: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to ``out`` on success.

    ``out`` is checked before the body runs (:func:`check_output`): an
    existing path is refused unless ``overwrite``, and even then replaced only
    when it is the package's own output of this ``kind`` (or an empty folder);
    its folder must be writable. The body writes the new output at the
    yielded path. Then, under an exclusive lock on ``out`` (``.NAME.lock``
    beside it), the check is made again (nothing may have appeared meanwhile),
    ``before_commit(tmp)`` runs and the new output replaces the old one: the
    old is renamed aside, the new renamed into place and the old removed; if
    the second rename fails the old one is renamed back.

    If the body raises (an interrupt included), the writer threads are
    stopped and joined (:func:`xsi_dask._interrupt.quiesce`) before the
    temporary output and any folder this call created are removed; ``out`` is
    left as it was. A write fault (disk full, a vanished or unwritable folder)
    becomes :class:`~xsi_dask.errors.OutputWriteError` naming ``out``.

    Parameters
    ----------
    out : str or Path
        The output to write.
    overwrite : bool
        Replace an existing output of the same kind.
    kind : {"montage", "results"}
        What the output is (a montage store, a results store).
    before_commit : callable, optional
        Called with the temporary path under the lock, just before the swap.

    Raises
    ------
    StoreExistsError
        ``out`` exists (or appeared meanwhile) and ``overwrite`` is false.
    NotOurOutputError
        ``out`` is not the package's output of this kind.
    OutputWriteError
        ``out`` cannot be written.
    """
    from .._interrupt import quiesce
    from ..errors import OutputWriteError, XSIError

    out = Path(os.path.abspath(out))
    check_output(out, kind, overwrite=overwrite)
    try:
        created = _make_parents(out.parent)
        # an open descriptor keeps the folder's inode allocated, so a folder recreated in its place has another number
        parent_fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise _output_error(out, exc) from exc
    st = os.fstat(parent_fd)
    parent_id = (st.st_dev, st.st_ino)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    committed = False
    try:
        try:
            yield tmp
            with _output_lock(out):
                check_output(out, kind, overwrite=overwrite, probe=False)
                if _file_id(out.parent) != parent_id or not tmp.is_dir():
                    raise OutputWriteError(
                        f"{out}: its folder {out.parent} vanished (or was replaced) while the output was written; "
                        "nothing was written: run again"
                    )
                if before_commit is not None:
                    before_commit(tmp)
                _swap(tmp, out)
            committed = True
        except OSError as exc:
            if isinstance(exc, XSIError) or not _is_output_fault(exc, out):
                raise
            raise _output_error(out, exc) from exc
    finally:
        try:
            if not committed:
                quiesce()  # nothing writes into tmp any more: only now can it be removed for good
                _remove(tmp)
                if _file_id(out.parent) not in (parent_id, None):  # a writer recreated the vanished folder
                    created = [out.parent, *created]
                _remove_empty_dirs(created)
        finally:
            os.close(parent_fd)


def _remove(path: Path) -> None:
    """Remove a file, a symbolic link (not its target) or a folder tree; a missing path is no error."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
            return
    except FileNotFoundError:
        return
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():  # a file a straggler wrote meanwhile: once more
        shutil.rmtree(path, ignore_errors=True)


def _chunks(n: int) -> tuple[int]:
    return (max(1, min(n, int(config.get("csr-chunk")))),)


TILE_KEYS = ("row", "col", "source", "stage_x", "stage_y", "window", "nnz", "total_counts", "max_count", "values_dtype")


def write_montage_attrs(root: zarr.Group, *, tiles: list[dict[str, Any]], **fields: Any) -> None:
    """Write the root attributes of a montage store (the format, the tiles' summaries, totals).

    ``tiles`` are the per-tile results of :func:`write_tile` merged with the
    tile's attributes; ``fields`` the montage description (grid, tile_shape,
    energy, pixels, stage_units, sources, ...). Used by ingest and the simulator.
    """
    from .._version import __version__
    from .readers import to_json

    root.update_attributes(to_json({
        "xsi_dask": {"format": FORMAT, "version": FORMAT_VERSION, "uuid": uuid.uuid4().hex, "package_version": __version__},
        **fields,
        "tiles": [{k: t[k] for k in TILE_KEYS + tuple(k for k in t if k == "dose")} for t in tiles],
        "nnz": sum(t["nnz"] for t in tiles),
        "total_counts": sum(t["total_counts"] for t in tiles),
        "max_count": max(t["max_count"] for t in tiles),
    }))


def write_tile(
    group: zarr.Group,
    name: str,
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    shape: tuple[int, int],
    channels: int,
    images: dict[str, np.ndarray] | None = None,
    attrs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one tile's CSR arrays, summaries and images under ``group/name``.

    ``values`` must already be non-negative integer counts. Returns the tile's
    summary attributes (nnz, total counts, dtypes).
    """
    nnz = int(indices.size)
    vmax = int(values.max()) if nnz else 0
    vdt = smallest_uint(vmax)
    idt = np.dtype(np.uint16) if channels <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)
    pdt = np.dtype(np.uint32) if nnz <= np.iinfo(np.uint32).max else np.dtype(np.uint64)
    vals = values.astype(vdt, copy=False)

    sum_spectrum = np.bincount(indices, weights=vals, minlength=channels).astype(np.uint64)
    csum = np.zeros(nnz + 1, np.uint64)
    np.cumsum(vals, dtype=np.uint64, out=csum[1:])
    per_pixel = csum[indptr[1:]] - csum[indptr[:-1]]
    total = int(csum[-1])
    cdt = np.uint32 if total <= np.iinfo(np.uint32).max else np.uint64
    count_map = per_pixel.astype(cdt).reshape(shape)

    summary = {
        "nnz": nnz,
        "total_counts": total,
        "max_count": vmax,
        "values_dtype": vdt.name,
        "shape": list(shape),
    }
    binsparse = {
        "version": "0.1",
        "format": "CSR",
        "shape": [int(shape[0] * shape[1]), int(channels)],
        "number_of_stored_values": nnz,
        "data_types": {"pointers_to_1": pdt.name, "indices_1": idt.name, "values": vdt.name},
    }
    # attributes given at creation: zarr rewrites the group metadata on every attrs[key] = ...
    g = group.create_group(name, attributes={"binsparse": binsparse, **summary, **(attrs or {})})
    g.create_array("pointers_to_1", data=indptr.astype(pdt), chunks=_chunks(indptr.size))
    g.create_array("indices_1", data=indices.astype(idt), chunks=_chunks(nnz))
    g.create_array("values", data=vals, chunks=_chunks(nnz))
    g.create_array("sum_spectrum", data=sum_spectrum)
    g.create_array("count_map", data=count_map)
    if images:
        ig = g.create_group("images")
        for key, img in images.items():
            ig.create_array(key, data=np.ascontiguousarray(img))
    return summary


class TileCSR:
    """CSR arrays of one tile as stored (compact dtypes), pixels row-major.

    Attributes
    ----------
    indptr : ndarray, shape (pixels + 1,)
    indices : ndarray, shape (nnz,)
        Channel index of each stored value.
    data : ndarray, shape (nnz,)
        Counts.
    shape : (pixels, channels)
    """

    __slots__ = ("indptr", "indices", "data", "shape")

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, shape: tuple[int, int]):
        self.indptr, self.indices, self.data, self.shape = indptr, indices, data, shape

    @property
    def nnz(self) -> int:
        return int(self.data.size)

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes + self.data.nbytes

    def to_scipy(self, dtype: Any = None) -> sp.csr_array:
        """As a SciPy ``csr_array`` (index arrays widened to int32/int64)."""
        data = self.data if dtype is None else self.data.astype(dtype)
        idx_dt = np.int32 if max(self.shape) < 2**31 and self.nnz < 2**31 else np.int64
        return sp.csr_array(
            (data, self.indices.astype(idx_dt), self.indptr.astype(idx_dt)), shape=self.shape
        )


class _TileCache:
    """Per-process LRU of tile CSR arrays, bounded in bytes (``xsi-dask.tile-cache``)."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple, TileCSR] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple, load) -> TileCSR:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        value = load()
        budget = config.get_bytes("tile-cache")
        with self._lock:
            nbytes = value.nbytes
            if nbytes <= budget and key not in self._items:
                self._items[key] = value
                self._bytes += nbytes
                while self._bytes > budget and self._items:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


tile_cache = _TileCache()
# store handles opened per process, most recent last; bounded so a long notebook session or a worker that
# saw many stores does not keep every one open
_open_stores: OrderedDict[str, tuple[int, MontageStore]] = OrderedDict()
_open_lock = threading.Lock()
_MAX_OPEN_STORES = 16


class MontageStore:
    """Read access to a montage store.

    Parameters
    ----------
    path : str or Path
        The ``.zarr`` folder written by :func:`xsi_dask.ingest`.

    Raises
    ------
    StoreFormatError
        ``path`` is not an xsi_dask montage store or has a newer format.
    """

    def __init__(self, path: str | Path):
        # absolute: the path is sent to workers that may run in another directory
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise StoreFormatError(f"{self.path}: no such store (expected a .zarr folder)")
        try:
            self.root = zarr.open_group(str(self.path), mode="r")
        except Exception as exc:  # noqa: BLE001
            raise StoreFormatError(f"{self.path}: not a Zarr group ({exc})") from exc
        attrs = dict(self.root.attrs)
        fmt = attrs.get("xsi_dask", {})
        if fmt.get("format") != FORMAT:
            raise StoreFormatError(f"{self.path}: not an xsi_dask montage store")
        if int(fmt.get("version", 0)) > FORMAT_VERSION:
            raise StoreFormatError(
                f"{self.path}: store format version {fmt.get('version')} is newer than this "
                f"xsi_dask understands ({FORMAT_VERSION}); upgrade xsi_dask"
            )
        self.attrs = attrs
        self.uuid: str = fmt["uuid"]
        self.tiles: list[dict[str, Any]] = attrs["tiles"]
        self.tile_shape: tuple[int, int] = tuple(attrs["tile_shape"])  # type: ignore[assignment]
        self.channels: int = int(attrs["energy"]["size"])

    def __repr__(self) -> str:
        return f"MontageStore({str(self.path)!r}, tiles={self.n_tiles}, tile_shape={self.tile_shape}, channels={self.channels})"

    def __reduce__(self):
        return (MontageStore, (str(self.path),))

    @classmethod
    def cached(cls, path: str | Path) -> MontageStore:
        """The store at ``path``, opened once per process (reopened if it was rewritten).

        Tile tasks call this on every pass; opening the Zarr group costs
        milliseconds, comparable to a small tile's kernel.
        """
        p = Path(path).resolve()
        key = str(p)
        try:
            mtime = (p / "zarr.json").stat().st_mtime_ns
        except OSError as exc:
            raise StoreFormatError(f"{p}: no montage store there ({exc.strerror})") from exc
        with _open_lock:
            hit = _open_stores.get(key)
            if hit is not None and hit[0] == mtime:
                _open_stores.move_to_end(key)
                return hit[1]
        store = cls(p)
        with _open_lock:
            _open_stores[key] = (mtime, store)
            _open_stores.move_to_end(key)
            while len(_open_stores) > _MAX_OPEN_STORES:
                _open_stores.popitem(last=False)
        return store

    @property
    def n_tiles(self) -> int:
        return len(self.tiles)

    @property
    def pixels_per_tile(self) -> int:
        return self.tile_shape[0] * self.tile_shape[1]

    @property
    def energy(self) -> np.ndarray:
        """Channel energies in keV, shape ``(channels,)``."""
        e = self.attrs["energy"]
        return e["offset"] + e["scale"] * np.arange(self.channels, dtype=np.float64)

    def _tile(self, t: int) -> zarr.Group:
        if not 0 <= t < self.n_tiles:
            raise IndexError(f"tile {t} out of range: the store has {self.n_tiles} tiles")
        return self.root[f"tiles/{t}"]  # type: ignore[return-value]

    def tile_nbytes(self, t: int) -> int:
        """Bytes of tile ``t``'s CSR arrays in memory (as :meth:`tile_csr` returns them)."""
        info = self.tiles[t]
        nnz = int(info["nnz"])
        idx = 2 if self.channels <= np.iinfo(np.uint16).max + 1 else 4
        ptr = 4 if nnz <= np.iinfo(np.uint32).max else 8
        return nnz * (idx + np.dtype(info["values_dtype"]).itemsize) + (self.pixels_per_tile + 1) * ptr

    def cache_fits(self, tiles: list[int], workers: int = 1) -> bool:
        """Whether each worker's share of ``tiles`` fits the tile cache (``xsi-dask.tile-cache``).

        A pass visits the tiles in the same order every time; when a worker's
        share is larger than an LRU cache, every visit evicts the tile the next
        pass wants first, so the cache never hits and only holds memory. The
        passes therefore cache tiles only when this is true.
        """
        if not tiles:
            return True
        share = -(-len(tiles) // max(1, workers))
        # each tile's CSR arrays and its pixel weights (float64 per pixel) share the cache
        biggest = sorted((self.tile_nbytes(t) + 8 * self.pixels_per_tile for t in tiles), reverse=True)[:share]
        return sum(biggest) <= config.get_bytes("tile-cache")

    def tile_csr(self, t: int, *, cache: bool = True) -> TileCSR:
        """CSR arrays of tile ``t`` (pixels x channels), cached per process unless ``cache=False``."""

        def load() -> TileCSR:
            g = self._tile(t)
            return TileCSR(
                g["pointers_to_1"][:], g["indices_1"][:], g["values"][:],
                (self.pixels_per_tile, self.channels),
            )

        if not cache:
            return load()
        return tile_cache.get((str(self.path), self.uuid, t), load)

    def sum_spectrum(self, t: int | None = None) -> np.ndarray:
        """Summed counts per channel of tile ``t`` (or the montage), uint64 ``(channels,)``."""
        if t is None:
            return np.sum([self.sum_spectrum(i) for i in range(self.n_tiles)], axis=0, dtype=np.uint64)
        return self._tile(t)["sum_spectrum"][:]

    def count_map(self, t: int) -> np.ndarray:
        """Counts per pixel of tile ``t``, shape ``(y, x)``."""
        return self._tile(t)["count_map"][:]

    def image_names(self, t: int = 0) -> list[str]:
        g = self._tile(t)
        return sorted(g["images"].array_keys()) if "images" in g else []

    def image(self, t: int, name: str) -> np.ndarray:
        """Structural image ``name`` of tile ``t``, shape ``(y, x)``."""
        return self._tile(t)[f"images/{name}"][:]

    def info(self) -> dict[str, Any]:
        """Summary numbers of the montage (see ``xsi-dask info``)."""
        nnz = sum(int(t["nnz"]) for t in self.tiles)
        total = sum(int(t["total_counts"]) for t in self.tiles)
        voxels = self.n_tiles * self.pixels_per_tile * self.channels
        stored = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return {
            "store": str(self.path),
            "tiles": self.n_tiles,
            "grid": self.attrs["grid"],
            "tile_shape": list(self.tile_shape),
            "channels": self.channels,
            "shape": [self.n_tiles, *self.tile_shape, self.channels],
            "nnz": nnz,
            "fraction_nonzero": nnz / voxels if voxels else 0.0,
            "total_counts": total,
            "counts_per_pixel": total / (self.n_tiles * self.pixels_per_tile),
            "energy": self.attrs["energy"],
            "pixels": self.attrs["pixels"],
            "dense_float32_bytes": voxels * 4,
            "stored_bytes": stored,
            "sources": [s["path"] for s in self.attrs["sources"]],
        }


# ---- outputs: what a path is, whether it may be replaced, the write lock (atomic_output's helpers) ----

RESULTS_FORMAT = "xsi-dask-results"
"""``xsi_dask.format`` in the root attributes of a results store (``results.zarr``)."""

_KIND_FORMATS = {"montage": FORMAT, "results": RESULTS_FORMAT}
_KIND_NAMES = {"montage": "montage store", "results": "results store"}
_LEGACY_RESULT_ENTRY = re.compile(r"(tmp|old)-\w+-[0-9a-f]{8}")


def _zarr_attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of the Zarr v3 group at ``path``; None when it is not one."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    attrs = meta.get("attributes") or {}
    return attrs if isinstance(attrs, dict) else {}


def _legacy_results(path: Path, attrs: dict[str, Any]) -> bool:
    """A results store written before results stores carried a marker: groups of xsi_dask results only."""
    if "xsi_dask" in attrs:
        return False
    groups = 0
    for entry in path.iterdir():
        if entry.name == "zarr.json" or (entry.is_dir() and _LEGACY_RESULT_ENTRY.fullmatch(entry.name)):
            continue
        a = _zarr_attrs(entry) if entry.is_dir() and not entry.is_symlink() else None
        if a is None or "xsi_dask_version" not in a or "store_uuid" not in a:
            return False
        groups += 1
    return groups > 0


def output_kind(path: str | Path) -> str | None:
    """``"montage"`` or ``"results"`` when ``path`` is that kind of xsi_dask output, else None.

    A montage store carries ``xsi_dask.format = "xsi-dask-montage"`` in its
    root attributes, a results store ``"xsi-dask-results"``; a results store
    written before the marker existed is recognised by its groups, each with
    the attributes every xsi_dask result records.
    """
    p = Path(path)
    if p.is_symlink() or not p.is_dir():
        return None
    attrs = _zarr_attrs(p)
    if attrs is None:
        return None
    fmt = attrs.get("xsi_dask")
    fmt = fmt.get("format") if isinstance(fmt, dict) else None
    for kind, name in _KIND_FORMATS.items():
        if fmt == name:
            return kind
    try:
        return "results" if _legacy_results(p, attrs) else None
    except OSError:
        return None


def describe_path(path: str | Path) -> str:
    """What is at ``path``, in words (for refusals): a file, a folder of other files, a store of some kind."""
    p = Path(path)
    try:
        if p.is_symlink():
            return f"a symbolic link to {os.readlink(p)}"
        if not p.exists():
            return "nothing"
        if not p.is_dir():
            return f"a file of {p.stat().st_size:,} bytes" if p.is_file() else "a special file"
        kind = output_kind(p)
        if kind is not None:
            return f"an xsi_dask {_KIND_NAMES[kind]}"
        names = sorted(e.name for e in p.iterdir())
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if not names:
        return "an empty folder"
    if _zarr_attrs(p) is not None:
        return "a Zarr store not written by xsi_dask" if "zarr.json" in names else "a Zarr group"
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")
    return f"a folder of other files ({shown})"


def check_output(out: str | Path, kind: str, *, overwrite: bool = False, probe: bool = True) -> Path:
    """Check that ``out`` may be written as an output of ``kind``; before any computation.

    An existing ``out`` is refused unless ``overwrite``; with ``overwrite`` it
    is accepted only when it is the package's own output of the same kind, or
    an empty folder (it holds nothing to lose; the final rename fails if
    anything appears in it meanwhile). A symbolic link, a plain file, a folder
    of other files and another kind of store are refused whatever
    ``overwrite`` says. With ``probe``, a folder is created and removed where
    ``out`` will be written, so an unwritable place is refused now, not after
    the computation.

    Parameters
    ----------
    out : str or Path
        The output path.
    kind : {"montage", "results"}
        The kind of output to be written.
    overwrite : bool
        Whether an existing output of the same kind may be replaced.
    probe : bool
        Also check that the folder is writable.

    Returns
    -------
    Path
        ``out``, absolute.

    Raises
    ------
    StoreExistsError
        ``out`` is the package's output and ``overwrite`` is false.
    NotOurOutputError
        ``out`` is something else.
    OutputWriteError
        ``out``'s folder cannot be written.
    """
    from ..errors import NotOurOutputError

    out = Path(os.path.abspath(out))
    if kind not in _KIND_FORMATS:
        raise ValueError(f"unknown output kind {kind!r}")
    if out.is_symlink() or out.exists():
        what = describe_path(out)
        ours = output_kind(out) == kind or what == "an empty folder"
        if not ours:
            raise NotOurOutputError(
                f"{out} is {what}, not an xsi_dask {_KIND_NAMES[kind]}: xsi_dask replaces only its own outputs, "
                "so it is left as it is; choose another --out (or move it away yourself)"
            )
        if not overwrite:
            raise StoreExistsError(f"{out} exists ({what}); pass --overwrite (overwrite=True) to replace it")
    if probe:
        _probe_writable(out)
    return out


def _probe_writable(out: Path) -> None:
    """Create and remove a folder beside ``out`` (in its nearest existing ancestor); OutputWriteError if that fails."""
    from ..errors import OutputWriteError

    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputWriteError(f"{out}: cannot be written: {folder} is {describe_path(folder)}, not a folder; choose another --out")
    try:
        probe = tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=folder)
        os.rmdir(probe)
    except OSError as exc:
        raise OutputWriteError(
            f"{out}: cannot be written: creating a folder in {folder} failed ({exc.strerror or exc}); choose another --out"
        ) from exc


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the folders created, deepest first."""
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty_dirs(folders: list[Path]) -> None:
    for d in folders:  # deepest first; a folder that is not empty (someone else's files) stays
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def _output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.NAME.lock`` beside ``out``; the lock file is removed afterwards.

    The file is removed while it is locked, so a waiter may get the lock of a
    removed file: it then checks that the path still names the file it
    locked, and tries again otherwise.
    """
    lock = out.with_name(f".{out.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            if _file_id(lock) == (mine.st_dev, mine.st_ino):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _swap(tmp: Path, out: Path) -> None:
    """Put ``tmp`` in the place of ``out``: the old aside, the new in, the old removed; the old restored on failure."""
    if not (out.is_symlink() or out.exists()):
        os.replace(tmp, out)
        return
    trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out, trash)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(trash, out)  # the old output back in its place, never left hidden
        raise
    try:
        _remove(trash)
    except BaseException:  # an interrupt during the removal: finish it, then go on interrupting
        _remove(trash)
        raise


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _is_output_fault(exc: OSError, out: Path) -> bool:
    """Whether an OSError raised while writing ``out`` is about the output (not an input file)."""
    if exc.errno in _WRITE_ERRNOS:
        return True
    for name in (exc.filename, getattr(exc, "filename2", None)):
        if name is not None:
            p = Path(os.path.abspath(os.fsdecode(name)))
            if p in (out, out.parent):
                return True
            if out.parent in p.parents:
                first = p.relative_to(out.parent).parts[0]
                if first == out.name or first.startswith(f".{out.name}."):
                    return True
    return False


def _output_error(out: Path, exc: OSError) -> Exception:
    from ..errors import OutputWriteError

    why = {
        errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only", errno.EFBIG: "a file grew too large",
        errno.ENOENT: "a folder vanished while it was written",
    }.get(exc.errno, exc.strerror or str(exc))
    where = f" ({exc.filename})" if exc.filename else ""
    return OutputWriteError(
        f"{out}: cannot be written: {why}{where}; nothing was written and {out} is as it was. "
        "Free space or choose another --out"
    )
