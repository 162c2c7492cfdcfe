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

Integrity: every array :func:`write_tile` writes is compressed with zstd
frame checksums (a flipped or truncated chunk fails to decode), and the tile's
attribute ``checksums`` records a CRC-32 of each array's bytes
(``{"pointers_to_1": "crc32:1a2b3c4d", ...}``; a missing chunk, which Zarr
reads as zeros, or an edited array metadata changes it). Stores written before
these existed lack both and are still read, with the structural checks only.
:meth:`MontageStore.tile_csr` checks the recorded attributes, the checksums and
the CSR invariants before a tile is used or cached, and
:func:`verify_store` (``xsi-dask verify``) checks the whole store.
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
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import zarr
from zarr.codecs import ZstdCodec

from .. import config
from ..errors import CorruptStoreError, StoreExistsError, StoreFormatError
from .metadata import acquisition

__all__ = [
    "CHECKED_ZSTD",
    "FORMAT",
    "FORMAT_VERSION",
    "MontageStore",
    "TileCSR",
    "array_checksum",
    "atomic_output",
    "check_csr",
    "smallest_uint",
    "verify_store",
    "write_tile",
]

FORMAT = "xsi-dask-montage"
FORMAT_VERSION = 1  # checksums came without a version bump: a store without them is read with the structural checks

#: zstd at Zarr's default level with the frame checksum on: a damaged chunk fails to decode instead of decoding to other numbers
CHECKED_ZSTD = ZstdCodec(level=0, checksum=True)
_REPAIR = "the store is damaged: `xsi-dask verify {path}` lists every fault; ingest (or simulate) it again from its sources"


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
    kind : {"montage", "results", "explore"}
        What the output is (a montage store, a results store, an
        active-learning record of ``xsi-dask explore``).
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


def array_checksum(a: np.ndarray) -> str:
    """CRC-32 of an array's bytes (C order, little-endian), as recorded in a tile's ``checksums`` attribute.

    Parameters
    ----------
    a : numpy.ndarray

    Returns
    -------
    str
        ``"crc32:"`` and eight hex digits. zlib's CRC-32 runs at about 1.5 GB/s
        on one core without copying the array (see :meth:`MontageStore.tile_csr`).
    """
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return f"crc32:{zlib.crc32(a) & 0xFFFFFFFF:08x}"


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


def csr_dtypes(nnz: int, channels: int) -> tuple[np.dtype, np.dtype]:
    """The stored dtypes of a tile's channel indices and row pointers (the smallest that hold them)."""
    idt = np.dtype(np.uint16) if channels <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)
    pdt = np.dtype(np.uint32) if nnz <= np.iinfo(np.uint32).max else np.dtype(np.uint64)
    return idt, pdt


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

    Every array is compressed with zstd frame checksums (:data:`CHECKED_ZSTD`)
    and the CRC-32 of its bytes is recorded in the tile's ``checksums``
    attribute, which :meth:`MontageStore.tile_csr` and :func:`verify_store`
    check on reading.

    Parameters
    ----------
    group : zarr.Group
        The store's ``tiles`` group.
    name : str
        The tile's number.
    indptr, indices, values : numpy.ndarray
        CSR arrays (pixels row-major x channels); ``values`` must already be
        positive integer counts.
    shape : (int, int)
        The tile's (y, x) pixels.
    channels : int
    images : dict of str to numpy.ndarray, optional
        Structural images on the tile's pixel grid.
    attrs : dict, optional
        Further tile attributes (row, col, source, ...).

    Returns
    -------
    dict
        The tile's summary attributes (nnz, total counts, largest count, values dtype, shape).
    """
    nnz = int(indices.size)
    vmax = int(values.max()) if nnz else 0
    vdt = smallest_uint(vmax)
    idt, pdt = csr_dtypes(nnz, channels)
    vals = values.astype(vdt, copy=False)

    sum_spectrum = np.bincount(indices, weights=vals, minlength=channels).astype(np.uint64)
    csum = np.zeros(nnz + 1, np.uint64)
    np.cumsum(vals, dtype=np.uint64, out=csum[1:])
    per_pixel = csum[indptr[1:]] - csum[indptr[:-1]]
    total = int(csum[-1])
    cdt = np.uint32 if total <= np.iinfo(np.uint32).max else np.uint64
    count_map = per_pixel.astype(cdt).reshape(shape)

    arrays = {
        "pointers_to_1": (indptr.astype(pdt, copy=False), _chunks(indptr.size)),
        "indices_1": (indices.astype(idt, copy=False), _chunks(nnz)),
        "values": (vals, _chunks(nnz)),
        "sum_spectrum": (sum_spectrum, None),
        "count_map": (count_map, None),
    }
    images = {f"images/{key}": (np.ascontiguousarray(img), None) for key, img in (images or {}).items()}
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
    checksums = {key: array_checksum(data) for key, (data, _) in (arrays | images).items()}
    # attributes given at creation: zarr rewrites the group metadata on every attrs[key] = ...
    g = group.create_group(name, attributes={"binsparse": binsparse, **summary, **(attrs or {}), "checksums": checksums})
    if images:
        g.create_group("images")
    for key, (data, chunks) in (arrays | images).items():
        g.create_array(key, data=data, chunks=chunks if chunks is not None else "auto", compressors=CHECKED_ZSTD)
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


_UINTS = ("uint8", "uint16", "uint32", "uint64")
_CSR = ("pointers_to_1", "indices_1", "values")


def _why(exc: BaseException) -> str:
    """An exception as a short clause for an error message."""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def check_csr(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, shape: tuple[int, int]) -> list[str]:
    """What breaks the CSR invariants the kernels rely on (empty if none), vectorised.

    Checked: row pointers of length pixels + 1, from 0, non-decreasing, ending
    at the number of stored values; as many channel indices as counts, each
    below the channel count; every count positive; unsigned integer dtypes.
    Channel order within a pixel is not checked (it would cost as much as
    reading the tile); the checksums cover it.

    Parameters
    ----------
    indptr, indices, data : numpy.ndarray
        The CSR arrays as stored.
    shape : (pixels, channels)

    Returns
    -------
    list of str
        One sentence per violation, naming the first offending pixel or value.
    """
    pixels, channels = shape
    problems = []
    for name, a in (("pointers_to_1", indptr), ("indices_1", indices), ("values", data)):
        if a.ndim != 1 or a.dtype.kind != "u":
            problems.append(f"{name} is {a.ndim}-d {a.dtype}, expected a 1-d unsigned integer array")
    if problems:
        return problems
    nnz = data.size
    if indices.size != nnz:
        problems.append(f"{indices.size} channel indices for {nnz} counts")
    if indptr.size != pixels + 1:
        return [*problems, f"{indptr.size} row pointers, expected pixels + 1 = {pixels + 1}"]
    if indptr[0] != 0:
        problems.append(f"the row pointers start at {int(indptr[0])}, not 0")
    if indptr[-1] != nnz:
        problems.append(f"the row pointers end at {int(indptr[-1])}, not at the {nnz} stored values")
    down = indptr[1:] < indptr[:-1]
    if down.any():
        p = _first(down)
        problems.append(f"the row pointers decrease at pixel {p} ({int(indptr[p])} -> {int(indptr[p + 1])})")
    # max and min first: reductions without a mask's memory; the mask only to name the first offender
    if indices.size and int(indices.max()) >= channels:
        i = _first(indices >= channels)
        pixel = int(np.searchsorted(indptr, i, side="right")) - 1
        problems.append(f"channel index {int(indices[i])} at stored value {i} (pixel {pixel}) is not below the {channels} channels")
    if nnz and int(data.min()) == 0:
        i = _first(data == 0)
        pixel = int(np.searchsorted(indptr, i, side="right")) - 1
        problems.append(f"stored count 0 at stored value {i} (pixel {pixel}); every stored count must be positive")
    return problems


def _freeze(value: Any) -> None:
    """Make the arrays of a cached value read-only: every task shares them, and the GPU backend mirrors
    read-only host arrays on the device (a cached array changed in place would silently differ there)."""
    arrays = (value.indptr, value.indices, value.data) if isinstance(value, TileCSR) else (value,)
    for a in arrays:
        if isinstance(a, np.ndarray):
            a.flags.writeable = False


class _TileCache:
    """Per-process LRU of tile CSR arrays, bounded in bytes (``xsi-dask.tile-cache``); cached arrays are read-only."""

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
                _freeze(value)
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


_MAX_SIDE = 1 << 24  # pixels along a tile side, channels: far above any detector, below an allocation that kills the process


def _is_int(v: Any, lo: int = 0, hi: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _root_problems(attrs: dict[str, Any]) -> list[str]:
    """What is missing or malformed in a store's root attributes (those the readers rely on)."""
    problems: list[str] = []

    def expect(ok: bool, field: str, value: Any, what: str) -> None:
        if not ok:
            problems.append(f"{field} is {str(value)[:60]!s}, expected {what}")

    fmt = attrs.get("xsi_dask")
    expect(isinstance(fmt, dict) and isinstance(fmt.get("uuid"), str) and bool(fmt["uuid"]), "xsi_dask.uuid",
           fmt.get("uuid") if isinstance(fmt, dict) else fmt, "a non-empty string")
    ts = attrs.get("tile_shape")
    expect(isinstance(ts, list) and len(ts) == 2 and all(_is_int(v, 1, _MAX_SIDE) for v in ts), "tile_shape", ts,
           "two positive integers")
    e = attrs.get("energy")
    if not isinstance(e, dict):
        expect(False, "energy", e, "a calibration {size, offset, scale}")
    else:
        expect(_is_int(e.get("size"), 1, _MAX_SIDE), "energy.size", e.get("size"), "a positive number of channels")
        for k in ("offset", "scale"):
            expect(_is_num(e.get(k)), f"energy.{k}", e.get(k), "a finite number")
    px = attrs.get("pixels")
    if not isinstance(px, dict):
        expect(False, "pixels", px, "a pixel calibration {scale_y, scale_x, units}")
    else:
        for k in ("scale_y", "scale_x"):
            expect(_is_num(px.get(k)), f"pixels.{k}", px.get(k), "a finite number")
        expect("units" in px, "pixels.units", "missing", "the pixel units")
    expect("stage_units" in attrs, "stage_units", "missing", "the stage units")
    expect(_is_int(attrs.get("max_count")), "max_count", attrs.get("max_count"), "a non-negative integer")
    tiles = attrs.get("tiles")
    if not isinstance(tiles, list) or not tiles:
        expect(False, "tiles", tiles, "a list of tile summaries")
        return problems
    for t, info in enumerate(tiles):
        if not isinstance(info, dict):
            expect(False, f"tiles[{t}]", info, "a tile summary")
            continue
        for k in ("nnz", "total_counts", "max_count", "row", "col"):
            expect(_is_int(info.get(k)), f"tiles[{t}].{k}", info.get(k), "a non-negative integer")
        expect(info.get("values_dtype") in _UINTS, f"tiles[{t}].values_dtype", info.get("values_dtype"), "an unsigned integer dtype")
        expect(isinstance(info.get("source"), str), f"tiles[{t}].source", info.get("source"), "a file name")
        for k in ("stage_y", "stage_x"):
            v = info.get(k, "missing")
            expect(v is None or _is_num(v), f"tiles[{t}].{k}", v, "a number or null")
    if not problems:  # the montage's totals are the tiles' sums: a tile dropped from the list changes them
        for key, total in (("nnz", sum(i["nnz"] for i in tiles)), ("total_counts", sum(i["total_counts"] for i in tiles)),
                           ("max_count", max(i["max_count"] for i in tiles))):
            expect(attrs.get(key) == total, key, attrs.get(key), f"{total}, the {len(tiles)} tiles' {'maximum' if key == 'max_count' else 'sum'}")
    return problems


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
    CorruptStoreError
        Its root metadata lack or garble what the readers need; reading a
        damaged tile raises it too, naming the tile.
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
        if not isinstance(fmt, dict) or fmt.get("format") != FORMAT:
            raise StoreFormatError(f"{self.path}: not an xsi_dask montage store")
        if not _is_int(fmt.get("version", 0)):
            raise CorruptStoreError(f"{self.path}: the root metadata (zarr.json) give format version {fmt.get('version')!r}; "
                                    + _REPAIR.format(path=self.path))
        if int(fmt.get("version", 0)) > FORMAT_VERSION:
            raise StoreFormatError(
                f"{self.path}: store format version {fmt.get('version')} is newer than this "
                f"xsi_dask understands ({FORMAT_VERSION}); upgrade xsi_dask"
            )
        problems = _root_problems(attrs)
        if problems:
            raise CorruptStoreError(
                f"{self.path}: the root metadata (zarr.json) is damaged: {'; '.join(problems[:5])}; "
                + _REPAIR.format(path=self.path)
            )
        self.attrs = attrs
        self._meta: dict[int, tuple[zarr.Group, dict[str, Any], list[str]]] = {}
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

    def _where(self, t: int) -> str:
        return f"tile {t} ({Path(str(self.tiles[t].get('source', '?'))).name})"

    def _corrupt(self, t: int, what: str) -> CorruptStoreError:
        """The package's error for a damaged tile: store, tile (and its source) and what is wrong."""
        return CorruptStoreError(f"{self.path}: {self._where(t)}: {what}; " + _REPAIR.format(path=self.path))

    def _tile(self, t: int) -> zarr.Group:
        if not 0 <= t < self.n_tiles:
            raise IndexError(f"tile {t} out of range: the store has {self.n_tiles} tiles")
        try:
            g = self.root[f"tiles/{t}"]
        except Exception as exc:  # noqa: BLE001 - KeyError when removed, JSON/metadata errors when garbled
            raise self._corrupt(t, f"its group tiles/{t} is missing or unreadable ({_why(exc)})") from exc
        if not isinstance(g, zarr.Group):
            raise self._corrupt(t, f"tiles/{t} is not a group")
        return g

    def _tile_meta(self, t: int) -> tuple[zarr.Group, dict[str, Any], list[str]]:
        """Tile ``t``'s group, its attributes and what in them disagrees with the format or the root's summary.

        Kept per store handle (a rewritten store is a new handle, see :meth:`cached`): every pass reads
        the count map and the tile, and opening the group costs a metadata read each time.
        """
        hit = self._meta.get(t)
        if hit is None:
            hit = self._meta[t] = self._read_tile_meta(t)
        return hit

    def _read_tile_meta(self, t: int) -> tuple[zarr.Group, dict[str, Any], list[str]]:
        g = self._tile(t)
        a = dict(g.attrs)
        problems: list[str] = []
        bs = a.get("binsparse")
        dts = bs.get("data_types") if isinstance(bs, dict) else None
        if not isinstance(dts, dict) or any(dts.get(k) not in _UINTS for k in _CSR):
            problems.append(f"its binsparse descriptor is missing or garbled ({str(bs)[:80]})")
        else:
            if bs.get("format") != "CSR" or bs.get("shape") != [self.pixels_per_tile, self.channels]:
                problems.append(f"its binsparse descriptor ({bs.get('format')} {bs.get('shape')}) is not CSR "
                                f"[{self.pixels_per_tile}, {self.channels}] (pixels, channels)")
            # compared as values, not in a set: an edited attribute may be an unhashable list
            nnz = (bs.get("number_of_stored_values"), a.get("nnz"), self.tiles[t]["nnz"])
            if not all(_is_int(v) and v == nnz[2] for v in nnz):
                problems.append(f"its recorded numbers of stored values disagree (binsparse {nnz[0]}, tile {nnz[1]}, root {nnz[2]})")
            vdt = (dts["values"], a.get("values_dtype"), self.tiles[t]["values_dtype"])
            if not all(v == vdt[2] for v in vdt):
                problems.append(f"its recorded count dtypes disagree (binsparse {vdt[0]}, tile {vdt[1]}, root {vdt[2]})")
        if a.get("shape", list(self.tile_shape)) != list(self.tile_shape):
            problems.append(f"its shape {a.get('shape')} is not the montage's tile shape {list(self.tile_shape)}")
        sums = a.get("checksums", {})
        if not isinstance(sums, dict) or not all(isinstance(v, str) and v.startswith("crc32:") for v in sums.values()):
            problems.append(f"its checksums attribute is garbled ({str(sums)[:80]})")
        return g, a, problems

    def _read(self, t: int, g: zarr.Group, name: str, shape: tuple[int, ...], dtype: str | None,
              checksums: dict[str, str]) -> np.ndarray:
        """Array ``name`` of tile group ``g``, decoded, of the expected shape and dtype, checksum verified."""
        try:
            arr = g[name]
        except Exception as exc:  # noqa: BLE001 - KeyError when removed, metadata errors when garbled
            raise self._corrupt(t, f"array {name} is missing or its metadata unreadable ({_why(exc)})") from exc
        if not isinstance(arr, zarr.Array):
            raise self._corrupt(t, f"{name} is not an array")
        if tuple(arr.shape) != tuple(shape):
            raise self._corrupt(t, f"array {name} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
        if dtype is not None and str(arr.dtype) != dtype:
            raise self._corrupt(t, f"array {name} is {arr.dtype}, but the tile records {dtype}")
        if np.dtype(arr.dtype).kind != "u":
            raise self._corrupt(t, f"array {name} is {arr.dtype}, expected unsigned integer counts")
        try:
            data = arr[...]
        except Exception as exc:  # noqa: BLE001 - zarr/numcodecs raise RuntimeError, ValueError, ... on a bad chunk
            raise self._corrupt(t, f"a chunk of array {name} does not decode ({_why(exc)})") from exc
        want = checksums.get(name)
        if want is not None:
            got = array_checksum(data)
            if got != want:
                raise self._corrupt(t, f"array {name} reads with checksum {got}, but {want} was written "
                                       f"({self._missing_chunks(t, name, arr) or 'changed data or edited metadata'})")
        return data

    def _missing_chunks(self, t: int, name: str, arr: zarr.Array) -> str:
        """Which chunk files of an array are absent (Zarr reads them as fill values), as a clause; '' if none."""
        try:
            keys = [arr.metadata.encode_chunk_key(idx) for idx in np.ndindex(*arr.cdata_shape)]
        except Exception:  # noqa: BLE001 - only an explanation: a garbled chunk grid says nothing here
            return ""
        folder = self.path / "tiles" / str(t) / name
        missing = [k for k in keys[:100_000] if not (folder / k).is_file()]
        if not missing:
            return ""
        return f"chunk{'s' if len(missing) > 1 else ''} {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} missing"

    def _load_csr(self, t: int) -> TileCSR:
        g, a, problems = self._tile_meta(t)
        if problems:
            raise self._corrupt(t, problems[0])
        dts, nnz = a["binsparse"]["data_types"], int(a["nnz"])
        sums = a.get("checksums", {})
        shapes = {"pointers_to_1": (self.pixels_per_tile + 1,), "indices_1": (nnz,), "values": (nnz,)}
        arrays = [self._read(t, g, k, shapes[k], dts[k], sums) for k in _CSR]
        csr = TileCSR(*arrays, (self.pixels_per_tile, self.channels))
        problems = check_csr(*arrays, csr.shape)
        if problems:
            missing = [f"{k}: {m}" for k in _CSR if (m := self._missing_chunks(t, k, g[k]))]
            raise self._corrupt(t, "its CSR arrays are inconsistent: " + "; ".join(problems + missing))
        return csr

    def tile_nbytes(self, t: int) -> int:
        """Bytes of tile ``t``'s CSR arrays in memory (as :meth:`tile_csr` returns them)."""
        info = self.tiles[t]
        nnz = int(info["nnz"])
        idt, pdt = csr_dtypes(nnz, self.channels)
        return nnz * (idt.itemsize + np.dtype(info["values_dtype"]).itemsize) + (self.pixels_per_tile + 1) * pdt.itemsize

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
        """CSR arrays of tile ``t`` (pixels x channels), checked, then cached per process unless ``cache=False``.

        Before the arrays are used or cached: the tile's recorded attributes
        agree with the root's summary and the binsparse descriptor, every
        array has the recorded shape and dtype and decodes (zstd checksums),
        its CRC-32 matches the recorded one (stores written before checksums
        skip this), and :func:`check_csr` holds. On a 1024 x 1024 tile at 50
        counts per pixel (21 M stored values, 68 MB) the CRC-32 costs 0.035 s
        and the structure 0.002 s against 0.20 s to read the tile: about 6 %
        of reading it and running one SVD kernel pass over it (2-core VM).

        Raises
        ------
        CorruptStoreError
            The tile's group, an array or a chunk is missing, a chunk does not
            decode, a checksum differs, or the arrays break the CSR invariants
            (the message names the store, the tile and the fault).
        """

        def load() -> TileCSR:
            return self._load_csr(t)

        if not cache:
            return load()
        return tile_cache.get((str(self.path), self.uuid, t), load)

    def _summary(self, t: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
        g, a, problems = self._tile_meta(t)
        if problems:
            raise self._corrupt(t, problems[0])
        data = self._read(t, g, name, shape, None, a.get("checksums", {}))
        total = int(data.sum(dtype=np.uint64))
        if total != a.get("total_counts"):
            raise self._corrupt(t, f"array {name} sums to {total} counts, but the tile records {a.get('total_counts')}")
        return data

    def sum_spectrum(self, t: int | None = None) -> np.ndarray:
        """Summed counts per channel of tile ``t`` (or the montage), uint64 ``(channels,)``.

        Raises
        ------
        CorruptStoreError
            The array is missing, does not decode, or disagrees with its
            checksum or the tile's total counts.
        """
        if t is None:
            return np.sum([self.sum_spectrum(i) for i in range(self.n_tiles)], axis=0, dtype=np.uint64)
        return self._summary(t, "sum_spectrum", (self.channels,))

    def count_map(self, t: int) -> np.ndarray:
        """Counts per pixel of tile ``t``, shape ``(y, x)``.

        Raises
        ------
        CorruptStoreError
            The array is missing, does not decode, or disagrees with its
            checksum or the tile's total counts.
        """
        return self._summary(t, "count_map", self.tile_shape)

    def _tile_faults(self, t: int) -> list[str]:
        """Every fault of tile ``t`` that :func:`verify_store` reports (empty if sound)."""
        try:
            g, a, problems = self._tile_meta(t)
        except CorruptStoreError as exc:
            return [_fault_text(exc)]
        where = self._where(t)
        faults = [f"{where}: {p}" for p in problems]
        if any(p.startswith("its binsparse") for p in problems):
            return faults
        sums = a.get("checksums") if isinstance(a.get("checksums"), dict) else {}
        dts = a["binsparse"]["data_types"]
        nnz = int(a["nnz"]) if _is_int(a.get("nnz")) else int(self.tiles[t]["nnz"])
        expect = {
            "pointers_to_1": ((self.pixels_per_tile + 1,), dts["pointers_to_1"]),
            "indices_1": ((nnz,), dts["indices_1"]),
            "values": ((nnz,), dts["values"]),
            "sum_spectrum": ((self.channels,), None),
            "count_map": (self.tile_shape, None),
        }
        data: dict[str, np.ndarray] = {}
        for name, (shape, dtype) in expect.items():
            try:
                data[name] = self._read(t, g, name, shape, dtype, sums)
            except CorruptStoreError as exc:
                faults.append(_fault_text(exc))
        if not all(k in data for k in _CSR):
            return faults
        indptr, indices, values = (data[k] for k in _CSR)
        problems = check_csr(indptr, indices, values, (self.pixels_per_tile, self.channels))
        faults += [f"{where}: its CSR arrays are inconsistent: {p}" for p in problems]
        if problems:
            return faults
        total = int(values.sum(dtype=np.uint64))
        vmax = int(values.max()) if values.size else 0
        recorded = {"total_counts": total, "max_count": vmax}
        for key, value in recorded.items():
            for level, info in (("tile", a), ("root", self.tiles[t])):
                if info.get(key) != value:
                    faults.append(f"{where}: the {level} records {key} = {info.get(key)}, the counts give {value}")
        if "sum_spectrum" in data:
            spectrum = np.bincount(indices, weights=values, minlength=self.channels).astype(np.uint64)
            bad = np.flatnonzero(spectrum != data["sum_spectrum"])
            if bad.size:
                c = int(bad[0])
                faults.append(f"{where}: sum_spectrum differs from the counts in {bad.size} channels "
                              f"(channel {c}: {int(data['sum_spectrum'][c])} stored, {int(spectrum[c])} counted)")
        if "count_map" in data:
            csum = np.zeros(values.size + 1, np.uint64)
            np.cumsum(values, dtype=np.uint64, out=csum[1:])
            per_pixel = csum[indptr[1:]] - csum[indptr[:-1]]
            stored = data["count_map"].reshape(-1)
            bad = np.flatnonzero(per_pixel != stored)
            if bad.size:
                p = int(bad[0])
                faults.append(f"{where}: count_map differs from the counts at {bad.size} pixels "
                              f"(pixel {p}: {int(stored[p])} stored, {int(per_pixel[p])} counted)")
        return faults

    def image_names(self, t: int = 0) -> list[str]:
        g = self._tile(t)
        try:
            return sorted(g["images"].array_keys()) if "images" in g else []
        except Exception as exc:  # noqa: BLE001
            raise self._corrupt(t, f"its images group is unreadable ({_why(exc)})") from exc

    def image(self, t: int, name: str) -> np.ndarray:
        """Structural image ``name`` of tile ``t``, shape ``(y, x)``."""
        g, a, _ = self._tile_meta(t)
        try:
            data = g[f"images/{name}"][...]
        except Exception as exc:  # noqa: BLE001
            raise self._corrupt(t, f"image {name} is missing or does not decode ({_why(exc)})") from exc
        sums = a.get("checksums")
        want = sums.get(f"images/{name}") if isinstance(sums, dict) else None
        if want is not None and array_checksum(data) != want:
            raise self._corrupt(t, f"image {name} does not match its checksum {want}")
        return data

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
            "acquisition": acquisition(self.attrs),
        }


# ---- outputs: what a path is, whether it may be replaced, the write lock (atomic_output's helpers) ----

RESULTS_FORMAT = "xsi-dask-results"
"""``xsi_dask.format`` in the root attributes of a results store (``results.zarr``)."""

EXPLORE_FORMAT = "xsi-dask-explore"
"""``xsi_dask.format`` in the root attributes of an active-learning record (``explore.zarr``, ``xsi-dask explore``)."""

_KIND_FORMATS = {"montage": FORMAT, "results": RESULTS_FORMAT, "explore": EXPLORE_FORMAT}
_KIND_NAMES = {"montage": "montage store", "results": "results store", "explore": "explore record"}
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
    """``"montage"``, ``"results"`` or ``"explore"`` when ``path`` is that kind of xsi_dask output, else None.

    A montage store carries ``xsi_dask.format = "xsi-dask-montage"`` in its
    root attributes, a results store ``"xsi-dask-results"``, the record of
    ``xsi-dask explore`` ``"xsi-dask-explore"``; a results store
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
    kind : {"montage", "results", "explore"}
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


def _fault_text(exc: CorruptStoreError) -> str:
    """A CorruptStoreError's message without the store path and the repair advice (verify lists them once)."""
    text = str(exc)
    text = text.split(": ", 1)[1] if ": " in text else text
    return text.split("; the store is damaged", 1)[0]


def _array_dirs(path: Path) -> list[str]:
    """Relative paths of the folders under ``path`` whose ``zarr.json`` describes an array."""
    found = []
    for meta in sorted(path.rglob("zarr.json")):
        try:
            kind = json.loads(meta.read_text(errors="replace")).get("node_type")
        except (OSError, ValueError, AttributeError):
            continue  # unreadable metadata is reported where the node is opened
        if kind == "array":  # not a substring test: a group's attributes may contain the word "array"
            found.append(meta.parent.relative_to(path).as_posix())
    return found


def verify_store(path: str | Path) -> list[str]:
    """Check a whole montage store; one sentence per fault, empty if it is sound.

    Every array's chunks must decode (zstd checksums where written), every
    recorded CRC-32 match, every tile's attributes agree with the root's
    summary and its CSR arrays hold the invariants of :func:`check_csr`, and
    the counts agree with the stored summaries: per tile the counts per
    channel (a bincount of the channel indices weighted by the counts) with
    ``sum_spectrum``, the counts per pixel with ``count_map``, and the number
    of stored values, total and largest count with the tile's and the root's
    attributes. Also reads every other array of the store (source images,
    simulator truth) once.

    Parameters
    ----------
    path : str or Path
        A montage store.

    Returns
    -------
    list of str
        The faults found (``xsi-dask verify`` prints them).

    Raises
    ------
    StoreFormatError
        ``path`` is not an xsi_dask montage store at all.
    """
    try:
        store = MontageStore(path)
    except CorruptStoreError as exc:
        return [_fault_text(exc)]
    faults: list[str] = []
    for t in range(store.n_tiles):  # the root's own totals were checked on opening it
        faults += store._tile_faults(t)
    checked = {f"tiles/{t}/{name}" for t in range(store.n_tiles) for name in (*_CSR, "sum_spectrum", "count_map")}
    for rel in _array_dirs(store.path):
        if rel in checked:
            continue
        try:
            data = zarr.open_array(str(store.path / rel), mode="r")[...]
        except Exception as exc:  # noqa: BLE001
            faults.append(f"array {rel} does not decode ({_why(exc)})")
            continue
        parts = rel.split("/")
        if len(parts) == 4 and parts[0] == "tiles" and parts[2] == "images" and parts[1].isdigit():
            try:  # the images' checksums are recorded in their tile's attributes
                sums = dict(store.root[f"tiles/{parts[1]}"].attrs).get("checksums")
            except Exception:  # noqa: BLE001 - an unreadable tile group is reported with its tile
                sums = None
            want = sums.get(f"images/{parts[3]}") if isinstance(sums, dict) else None
            if want is not None and array_checksum(data) != want:
                faults.append(f"array {rel} reads with checksum {array_checksum(data)}, but {want} was written")
    extra = []
    try:
        extra = sorted(set(store.root["tiles"].group_keys()) - {str(t) for t in range(store.n_tiles)})
    except Exception as exc:  # noqa: BLE001
        faults.append(f"the tiles group is unreadable ({_why(exc)})")
    if extra:
        faults.append(f"tile groups {', '.join(extra)} are not in the root's list of {store.n_tiles} tiles")
    return faults
