"""Read vendor spectrum images through RosettaSciIO.

xsi_dask has no file parsers of its own: every format is read by the
RosettaSciIO plug-in for it, and this module only picks the spectrum image out
of what the plug-in returns, converts its calibration to keV and keeps the
structural images and metadata that came with it.

Vendor files are untrusted input: the eagerly read formats (bcf, pts, emd) are
decoded in a child process (see ``_read_isolated``), so that a crash of a
compiled decoder on a corrupt file is a :class:`CorruptFileError` naming the
file and the signal, not the end of the caller's process or notebook kernel.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import datetime as _dt
import importlib
import json
import math
import mmap
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import errors as _errors
from ..errors import (
    CorruptFileError,
    InputFileNotFoundError,
    NoSpectrumImageError,
    ParameterError,
    UnsupportedFormatError,
    XSIError,
    XSIWarning,
)

__all__ = [
    "EnergyAxis",
    "PixelAxes",
    "SpectrumImage",
    "READERS",
    "Signal",
    "channel_energies",
    "read_reference_spectrum",
    "read_signals",
    "read_spectrum_image",
    "SPECTRUM_READERS",
    "to_json",
]

# extension -> (RosettaSciIO plug-in module, read lazily?, extra keyword arguments).
# Eager for formats whose lazy path re-reads the whole file per slice (bcf, pts,
# emd are single-chunk streams); lazy where the format is chunked or memory
# mapped, so ingest streams row blocks and stays below the dense size.
READERS: dict[str, tuple[str, bool, dict[str, Any]]] = {
    ".bcf": ("rsciio.bruker", False, {}),
    ".pts": ("rsciio.jeol", False, {}),
    ".emd": ("rsciio.emd", False, {}),
    ".hspy": ("rsciio.hspy", True, {}),
    ".zspy": ("rsciio.zspy", True, {}),
    ".rpl": ("rsciio.ripple", True, {}),
}

_ENERGY_UNIT_TO_KEV = {"kev": 1.0, "ev": 1e-3, "mev": 1e3}
_ENERGY_UNIT_NAMES = {"kev": "keV", "ev": "eV", "mev": "MeV"}


@dataclass(frozen=True)
class EnergyAxis:
    """Energy calibration of the channel axis, in keV.

    Channel ``i`` is centred at ``offset + i * scale`` keV.
    """

    size: int
    offset: float
    scale: float

    @property
    def values(self) -> np.ndarray:
        """Channel energies in keV, shape ``(size,)``."""
        return self.offset + self.scale * np.arange(self.size, dtype=np.float64)

    def mismatch(self, other: EnergyAxis) -> float:
        """Largest energy difference over the axis, in channels (inf if sizes differ)."""
        if self.size != other.size:
            return math.inf
        span = abs(self.offset - other.offset) + (self.size - 1) * abs(self.scale - other.scale)
        return span / abs(self.scale)

    def describe(self) -> str:
        return f"{self.size} channels, offset {self.offset:.6g} keV, {self.scale * 1e3:.6g} eV/channel"

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "offset": self.offset, "scale": self.scale, "units": "keV"}


@dataclass(frozen=True)
class PixelAxes:
    """Spatial calibration: pixel size and origin along y and x."""

    scale_y: float = 1.0
    scale_x: float = 1.0
    offset_y: float = 0.0
    offset_x: float = 0.0
    units: str = "px"

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale_y": self.scale_y,
            "scale_x": self.scale_x,
            "offset_y": self.offset_y,
            "offset_x": self.offset_x,
            "units": self.units,
        }


@dataclass
class SpectrumImage:
    """One spectrum image as read from a vendor file.

    Attributes
    ----------
    path : Path
        The file it came from.
    data : numpy.ndarray or dask.array.Array
        Counts, shape ``(y, x, channels)``; a dask array where the reader is lazy.
    energy : EnergyAxis
        Channel calibration in keV.
    pixels : PixelAxes
        Pixel size and origin.
    images : dict of str to numpy.ndarray
        Structural images (HAADF, SEM, ...) of shape ``(y, x)``, same grid as ``data``.
    other_images : dict of str to numpy.ndarray
        Images of other shapes that came in the file (e.g. a larger overview).
    metadata, original_metadata : dict
        HyperSpy-style metadata and the vendor's original metadata, JSON-safe.
    csr : tuple of numpy.ndarray, optional
        ``(indptr, indices, values)`` of ``data`` (pixels row-major x channels,
        as :func:`xsi_dask.io._csr.dense_to_csr` gives them) where the reader
        already has them: a file decoded in a child process comes back as CSR.
    """

    path: Path
    data: Any
    energy: EnergyAxis
    pixels: PixelAxes
    images: dict[str, np.ndarray] = field(default_factory=dict)
    other_images: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    original_metadata: dict[str, Any] = field(default_factory=dict)
    signal_type: str = ""
    csr: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]


def to_json(obj: Any, *, max_list: int = 4096) -> Any:
    """Convert nested metadata to JSON-safe Python objects.

    NumPy scalars become Python numbers, small arrays lists, large arrays a
    short description, bytes are decoded, dates ISO strings, anything else
    ``str``. Non-finite floats become ``None``.
    """
    if isinstance(obj, dict):
        return {str(k): to_json(v, max_list=max_list) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if len(obj) > max_list:
            return f"<sequence of {len(obj)} items>"
        return [to_json(v, max_list=max_list) for v in obj]
    if isinstance(obj, np.ndarray):
        if obj.size > max_list:
            return f"<array shape={list(obj.shape)} dtype={obj.dtype}>"
        return to_json(obj.tolist(), max_list=max_list)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, (bytes, bytearray)):
        return obj.decode("utf-8", errors="replace")
    if isinstance(obj, (_dt.date, _dt.datetime, _dt.time)):
        return obj.isoformat()
    if obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "as_dictionary"):  # HyperSpy DictionaryTreeBrowser
        return to_json(obj.as_dictionary(), max_list=max_list)
    return str(obj)


def _axis(ax: dict[str, Any], key: str, default: Any) -> Any:
    value = ax.get(key, default)
    return default if value is None else value


def _energy_axis(ax: dict[str, Any], path: Path) -> EnergyAxis:
    units = str(_axis(ax, "units", "")).strip()
    factor = _ENERGY_UNIT_TO_KEV.get(units.lower())  # lenient (ingest warns and takes keV); channel_energies is strict
    if factor is None:
        warnings.warn(
            f"{path}: energy axis units {units!r} are not eV or keV; taking the values as keV",
            category=XSIWarning,
            stacklevel=3,
        )
        factor = 1.0
    return EnergyAxis(
        size=int(ax["size"]),
        offset=float(_axis(ax, "offset", 0.0)) * factor,
        scale=float(_axis(ax, "scale", 1.0)) * factor,
    )


def _pixel_axes(axes: list[dict[str, Any]]) -> PixelAxes:
    ay, ax = axes[0], axes[1]
    units = str(_axis(ay, "units", "") or "px")
    if units in ("<undefined>", "pix", "pixel", "pixels"):
        units = "px"
    return PixelAxes(
        scale_y=float(_axis(ay, "scale", 1.0)),
        scale_x=float(_axis(ax, "scale", 1.0)),
        offset_y=float(_axis(ay, "offset", 0.0)),
        offset_x=float(_axis(ax, "offset", 0.0)),
        units=units,
    )


def _is_spectrum_image(sig: dict[str, Any]) -> bool:
    data = sig["data"]
    axes = sig.get("axes", [])
    if getattr(data, "ndim", 0) != 3 or len(axes) != 3:
        return False
    navigate = [ax.get("navigate") for ax in axes]
    # the channel axis is last and is the only signal axis
    return navigate[2] is False or navigate == [None, None, None]


def _title(sig: dict[str, Any], fallback: str) -> str:
    title = str(sig.get("metadata", {}).get("General", {}).get("title", "") or fallback)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in title).strip("_.")
    return safe or fallback


def _check_bcf_complete(path: Path) -> None:
    """Refuse a truncated Bruker file before its compiled decoder reads past the end.

    RosettaSciIO's bcf decoder (a C extension) crashes the whole process on a
    truncated file instead of raising. The SFS container header, parsed by
    RosettaSciIO's own ``SFS_reader``, declares its size in chunks; a file
    shorter than that is truncated.
    """
    try:
        from rsciio.bruker._api import SFS_reader
    except ImportError:  # pragma: no cover - internal API moved; the reader still runs
        return
    try:
        sfs = SFS_reader(str(path))
    except Exception as exc:  # noqa: BLE001
        raise CorruptFileError(f"{path}: not a readable Bruker SFS container ({type(exc).__name__}: {exc})") from exc
    declared = 0x118 + sfs.chunksize * sfs.sfs_n_of_chunks
    actual = path.stat().st_size
    if actual < declared:
        raise CorruptFileError(
            f"{path}: the file is truncated: its Bruker SFS header declares {declared:,} bytes "
            f"but the file has {actual:,}"
        )


def _check_pts_complete(path: Path) -> None:
    """Refuse a JEOL .pts shorter than the data its header declares.

    The file header (after the magic number 304 and an 8-byte name) holds six
    little-endian uint32: ``a, b, head_pos, head_len, data_pos, data_len``; the
    event stream is ``data_len`` bytes from ``data_pos``. RosettaSciIO reads
    the stream to the end of the file whatever its length, and a file cut by a
    few bytes still ends its last sweep on the last scan line, so the missing
    X-ray events would go unnoticed.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(36)
    if len(head) < 36:
        raise CorruptFileError(f"{path}: the file is truncated: {size} bytes, shorter than a JEOL .pts header")
    magic = int(np.frombuffer(head, "<u4", 1, 0)[0])
    if magic != 304:
        raise CorruptFileError(f"{path}: not a JEOL .pts file (magic number {magic}, expected 304)")
    data_pos, data_len = (int(v) for v in np.frombuffer(head, "<u4", 2, 28))
    declared = data_pos + data_len
    if data_len and size < declared:
        raise CorruptFileError(
            f"{path}: the file is truncated: its JEOL header declares {declared:,} bytes "
            f"(event data of {data_len:,} bytes from byte {data_pos:,}) but the file has {size:,}; "
            "copy it again from the instrument"
        )


def _check_rpl_raw(path: Path) -> None:
    """Refuse a Lispix .rpl whose .raw is shorter than the cube its header declares.

    RosettaSciIO memory-maps the .raw lazily, so a short one fails only when
    the data are read ("mmap length is greater than file size").
    """
    try:
        from rsciio.ripple._api import parse_ripple

        with open(path, encoding="latin-1", errors="replace") as f:
            info = parse_ripple(f)
        need = int(info.get("offset", 0)) + (
            int(info["width"]) * int(info["height"]) * int(info["depth"]) * int(info["data-length"])
        )
    except Exception:  # noqa: BLE001 - a header RosettaSciIO cannot parse is the reader's to report
        return
    raw = next((path.with_suffix(ext) for ext in (".raw", ".RAW") if path.with_suffix(ext).is_file()), None)
    if raw is not None and raw.stat().st_size < need:
        raise CorruptFileError(
            f"{raw}: the file is truncated: {path.name} declares {need:,} bytes of data but it has "
            f"{raw.stat().st_size:,}; copy the .raw again"
        )


def _check_jeol_frames(path: Path, signal: dict[str, Any]) -> None:
    """Refuse a JEOL .pts whose declared sweeps (frames) are not all in the file.

    RosettaSciIO reads a truncated .pts without error, returning only the
    frames present; it marks each missing frame with a start index of -1.
    """
    starts = np.asarray(signal.get("original_metadata", {}).get("jeol_pts_frame_start_index", []))
    missing = int((starts < 0).sum())
    if missing:
        raise CorruptFileError(
            f"{path}: the file is truncated: {missing} of the {starts.size} frames (sweeps) "
            "its header declares are missing"
        )


# extension -> check run before the RosettaSciIO reader
_PREFLIGHT = {".bcf": _check_bcf_complete, ".pts": _check_pts_complete, ".rpl": _check_rpl_raw}
# extension -> check of the spectrum-image signal RosettaSciIO returned
_POSTREAD = {".pts": _check_jeol_frames}


def _call_reader(path: Path, module_name: str, lazy: bool, kwargs: dict[str, Any]) -> list[dict]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an optional dependency of the plug-in is missing
        raise UnsupportedFormatError(
            f"{path}: the RosettaSciIO reader {module_name} cannot be imported ({exc}); "
            "install the package it names"
        ) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return module.file_reader(str(path), lazy=lazy, **kwargs)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure means a bad file
        raise CorruptFileError(
            f"{path}: RosettaSciIO ({module_name}) could not read this file; it may be "
            f"truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from exc


def read_spectrum_image(
    path: str | Path, *, lazy: bool | None = None, isolate: bool | None = None, **reader_kwargs: Any
) -> SpectrumImage:
    """Read the spectrum image of one vendor file with RosettaSciIO.

    Parameters
    ----------
    path : str or Path
        A Bruker ``.bcf``, JEOL ``.pts``, Velox/NCEM ``.emd``, HyperSpy
        ``.hspy``/``.zspy`` or Lispix ``.rpl`` (with its ``.raw``) file.
    lazy : bool, optional
        Ask the reader for a dask array. Default: per format (see ``READERS``).
    isolate : bool, optional
        Decode the file in a child process, so that a crash of a compiled
        decoder on a corrupt file (SIGSEGV, SIGBUS) becomes a
        :class:`CorruptFileError` instead of killing this process. The dense
        cube comes back through a memory-mapped file (in ``/dev/shm`` where it
        fits), not a pickle. Default: ``xsi-dask.isolate-readers`` (true) for
        eagerly read formats (bcf, pts, emd); lazily read ones are decoded
        where they are used and are not isolated. A child still decoding
        after ``xsi-dask.decode-timeout`` seconds (default 120 s + 2 s per MB
        of file) is stopped: :class:`CorruptFileError`.
    **reader_kwargs
        Passed to the RosettaSciIO ``file_reader`` (e.g. ``SI_dtype``,
        ``cutoff_at_kV``).

    Returns
    -------
    SpectrumImage
        Counts ``(y, x, channels)`` with the energy axis in keV. From files that
        hold several signals, the 3-D signal whose signal type starts with
        ``EDS`` is taken (else the first 3-D spectrum image); 2-D images on the
        same pixel grid are kept as structural images.

    Raises
    ------
    InputFileNotFoundError
        The file does not exist.
    UnsupportedFormatError
        No reader is registered for the extension.
    CorruptFileError
        RosettaSciIO failed to parse the file (truncated, corrupt), or its
        decoder crashed the child process (the message names the signal).
    NoSpectrumImageError
        The file has no 3-D spectrum image.
    ParameterError
        ``xsi-dask.decode-timeout`` is not a number of seconds, or
        ``reader_kwargs`` cannot be handed to the decoding process.
    """
    path, module_name, default_lazy, kwargs = _reader_of(path, reader_kwargs)
    lazy = default_lazy if lazy is None else bool(lazy)
    if _isolated(lazy, isolate):
        return _read_isolated(path, kwargs)
    return _read_in_process(path, module_name, lazy, kwargs)


def _reader_of(path: str | Path, reader_kwargs: dict[str, Any]) -> tuple[Path, str, bool, dict[str, Any]]:
    """The checked path, its RosettaSciIO plug-in, whether it is read lazily, and the reader's keyword arguments.

    Raises
    ------
    InputFileNotFoundError
        ``path`` is not a file.
    UnsupportedFormatError
        Its extension is not in ``READERS``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"input file not found: {path}")
    ext = path.suffix.lower()
    if ext not in READERS:
        known = ", ".join(sorted(READERS))
        raise UnsupportedFormatError(
            f"{path}: unsupported format {ext!r}; xsi_dask reads {known} through RosettaSciIO"
        )
    module_name, lazy, default_kwargs = READERS[ext]
    return path, module_name, lazy, {**default_kwargs, **reader_kwargs}


def _isolated(lazy: bool, isolate: bool | None) -> bool:
    """Whether to decode in the child process: ``isolate``, by default ``xsi-dask.isolate-readers`` for eager reads."""
    if isolate is None:
        import dask.config

        # the decode server forks a child per file: POSIX only (elsewhere files are read in-process)
        isolate = hasattr(os, "fork") and bool(dask.config.get("xsi-dask.isolate-readers", True))
    return bool(isolate) and not lazy


def _read_checked(path: Path, module_name: str, lazy: bool, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """Every signal of ``path`` as its plug-in returns it, after the checks every read of the package makes.

    The format's pre-read check (``_PREFLIGHT``), the plug-in, the metadata
    completed by the reader's mapping (:func:`_apply_mapping`, as HyperSpy's
    loader does) and the format's post-read check (``_POSTREAD``) of every
    3-D signal.

    Raises
    ------
    CorruptFileError
        A check or the plug-in refused the file.
    UnsupportedFormatError
        The plug-in cannot be imported.
    """
    ext = path.suffix.lower()
    if ext in _PREFLIGHT:
        _PREFLIGHT[ext](path)
    signals = [{**s, "metadata": _apply_mapping(s)} for s in _call_reader(path, module_name, lazy, kwargs)]
    if ext in _POSTREAD:
        for s in signals:
            if getattr(s.get("data"), "ndim", 0) == 3:
                _POSTREAD[ext](path, s)
    return signals


_MISSING = object()


def _apply_mapping(sig: dict[str, Any]) -> dict[str, Any]:
    """The signal's metadata completed from its original metadata by the reader's ``mapping``, as HyperSpy's
    loader does (``{original.path: (metadata.path, function or None)}``; a value the function maps to None,
    or a path that is absent, is skipped)."""
    metadata = copy.deepcopy(sig.get("metadata", {}) or {})
    original = sig.get("original_metadata", {}) or {}
    for source, (target, function) in (sig.get("mapping") or {}).items():
        value = original
        for key in str(source).split("."):
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
            if value is _MISSING:
                break
        if value is _MISSING:
            continue
        try:
            value = function(value) if function is not None else value
        except Exception:  # noqa: BLE001 - a vendor field the reader's own converter cannot parse: not mapped
            continue
        if value is None:
            continue
        node = metadata
        *parents, leaf = str(target).split(".")
        for key in parents:
            node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else {}
        node[leaf] = value
    return metadata


def _read_in_process(path: Path, module_name: str, lazy: bool, kwargs: dict[str, Any]) -> SpectrumImage:
    """Read ``path`` with its RosettaSciIO plug-in in this process (the checks of the path are done)."""
    signals = _read_checked(path, module_name, lazy, kwargs)

    candidates = [s for s in signals if _is_spectrum_image(s)]
    if not candidates:
        found = ", ".join(
            f"{_title(s, '?')} {tuple(getattr(s['data'], 'shape', ()))}" for s in signals
        )
        raise NoSpectrumImageError(
            f"{path}: no 3-D spectrum image (y, x, channels) in this file; it holds: {found}"
        )

    def _signal_type(s: dict[str, Any]) -> str:
        return str(s.get("metadata", {}).get("Signal", {}).get("signal_type", "") or "")

    eds = [s for s in candidates if _signal_type(s).upper().startswith("EDS")]
    si = (eds or candidates)[0]
    axes = si["axes"]
    data = si["data"]
    energy = _energy_axis(axes[2], path)
    if energy.size != data.shape[2]:
        raise CorruptFileError(
            f"{path}: energy axis says {energy.size} channels but the data have {data.shape[2]}"
        )

    images: dict[str, np.ndarray] = {}
    other: dict[str, np.ndarray] = {}
    for k, sig in enumerate(signals):
        arr = sig["data"]
        if sig is si or getattr(arr, "ndim", 0) != 2:
            continue
        name = _title(sig, f"image{k}")
        target = images if tuple(arr.shape) == tuple(data.shape[:2]) else other
        while name in target:
            name += "_"
        target[name] = np.asarray(arr)

    return SpectrumImage(
        path=path,
        data=data,
        energy=energy,
        pixels=_pixel_axes(axes),
        images=images,
        other_images=other,
        metadata=to_json(si["metadata"]),
        original_metadata=to_json(si.get("original_metadata", {})),
        signal_type=_signal_type(si),
    )


# ---- decoding untrusted files in a child process ----
#
# RosettaSciIO's compiled decoders (bcf's Cython unpacker, numba loops, HDF5)
# can crash the process on a corrupt file instead of raising. Eagerly read files
# are therefore decoded in a child process. A decode server (a fresh interpreter
# that imports only this module, not the package: _CHILD_BOOTSTRAP) keeps numpy
# and the RosettaSciIO plug-ins imported and forks a new child for every file,
# so each file is decoded in a clean address space (a corrupt file cannot harm
# the next one) without paying the imports again. The child writes the arrays
# to one raw file (in /dev/shm where it fits: memory, not disk; all-zero
# megabytes left as holes, which cost nothing) and a JSON description of the
# rest; nothing that comes back is unpickled. The parent maps the raw file
# copy-on-write and unlinks it at once: the cube is never copied through a
# pipe, and a crash leaves nothing behind.

_DECODE_PREFIX = "xsi-dask-decode-"
_ALIGN = 64
_HOLE = 1 << 20  # all-zero runs of this many bytes are not written (sparse file)
_CHILD_BOOTSTRAP = (
    "import sys, types\n"
    "pkg = types.ModuleType('xsi_dask'); pkg.__path__ = [sys.argv[1]]; sys.modules['xsi_dask'] = pkg\n"
    "from xsi_dask.io.readers import _server_main\n"
    "sys.exit(_server_main())\n"
)
_servers: list[subprocess.Popen] = []  # idle decode servers of this process
_servers_lock = threading.Lock()


def _transfer_dirs() -> list[str]:
    """Folders the child may put the decoded arrays in, best first."""
    dirs = []
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        dirs.append("/dev/shm")
    dirs.append(tempfile.gettempdir())
    return list(dict.fromkeys(dirs))


def _unlink(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name)


def _sweep_stale(dirs: list[str]) -> None:
    """Remove transfer files of parents that died while their child was decoding.

    Only files an hour old whose process is gone: a folder shared with another
    machine or PID namespace may hold live files of processes we cannot see.
    """
    now = time.time()
    for d in dirs:
        try:
            names = [n for n in os.listdir(d) if n.startswith(_DECODE_PREFIX)]
        except OSError:
            continue
        for name in names:
            try:
                os.kill(int(name[len(_DECODE_PREFIX):].split("-", 1)[0]), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    if now - os.stat(os.path.join(d, name)).st_mtime > 3600:
                        _unlink(os.path.join(d, name))
            except (ValueError, OSError):
                continue


def _die_with_parent() -> None:
    """Linux: be killed when the parent process dies (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _write_sparse(f: Any, arr: np.ndarray) -> None:
    """Write ``arr``'s bytes at the file's position, seeking over all-zero megabytes."""
    flat = arr.reshape(-1).view(np.uint8)
    for start in range(0, flat.size, _HOLE):
        chunk = flat[start : start + _HOLE]
        words = chunk[: chunk.size // 8 * 8].view(np.uint64)
        if words.any() or chunk[words.size * 8 :].any():
            f.write(memoryview(chunk))
        else:
            f.seek(chunk.size, os.SEEK_CUR)


def _data_arrays(data: np.ndarray, out: dict[str, Any], name: str = "data") -> list[tuple[str, np.ndarray]]:
    """The cube to hand back: its CSR arrays where they are under a quarter of its size, else itself.

    An XSI cube is mostly zeros (0.03 % non-zero in the JEOL map, yet an event
    in nearly every 4 KiB page), so its CSR form is what crosses between the
    processes, and the parent scatters it into a fresh zeroed array.
    """
    if data.ndim == 3 and data.size and data.dtype.kind in "iuf":
        from ._csr import dense_to_csr

        indptr, indices, values = dense_to_csr(data)
        if indptr.nbytes + indices.nbytes + values.nbytes < data.nbytes // 4:
            out[name] = {"sparse": True, "dtype": data.dtype.str, "shape": list(data.shape)}
            return [(f"{name}.indptr", indptr), (f"{name}.indices", indices), (f"{name}.values", values)]
    return [(name, data)]


def _dense_from_csr(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray],
                    name: str = "data") -> tuple[np.ndarray, tuple]:
    """Rebuild the child's cube ``name`` from its CSR arrays, after checking them; return it and the CSR arrays."""
    dtype, shape = np.dtype(meta["dtype"]), tuple(int(n) for n in meta["shape"])
    indptr, indices, values = (arrays.pop(f"{name}.{k}", None) for k in ("indptr", "indices", "values"))
    npix = shape[0] * shape[1] if len(shape) == 3 else -1
    ok = (
        dtype.kind in "iuf" and npix >= 0 and min(shape) >= 0
        and indptr is not None and indptr.dtype.kind == "i" and indptr.shape == (npix + 1,)
        and indices is not None and values is not None and values.dtype == dtype
        and indices.ndim == 1 and values.shape == indices.shape and indptr[0] == 0 and indptr[-1] == indices.size
        and bool(np.all(np.diff(indptr) >= 0)) and (indices.size == 0 or (indices.min() >= 0 and indices.max() < shape[2]))
    )
    if not ok:
        raise CorruptFileError(f"{path}: the decoding process handed back an inconsistent sparse cube {meta}")
    try:
        dense = np.zeros(shape, dtype)
    except MemoryError as exc:
        raise CorruptFileError(
            f"{path}: no memory for its {'x'.join(map(str, shape))} {dtype} spectrum image ({exc}); free memory "
            "or check the file"
        ) from exc
    rows = np.repeat(np.arange(npix, dtype=np.int64), np.diff(indptr))
    dense.reshape(npix, shape[2])[rows, indices] = values
    return dense, (indptr, indices, values)


def _decode_request(req: dict[str, Any]) -> None:
    """Decode one file (in a forked child) and write its arrays and description beside each other."""
    path = Path(req["path"])
    out: dict[str, Any] = {"ok": False, "warnings": []}
    before = set(sys.modules)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if req.get("signals"):  # every signal (read_signals)
                raw = _read_checked(path, req["module"], False, req["kwargs"])
            else:
                si = _read_in_process(path, req["module"], False, req["kwargs"])
        out["warnings"] = [[w.category.__name__, str(w.message)] for w in caught]
        if req.get("signals"):
            arrays, described = [], []
            for k, sig in enumerate(raw):
                data = np.asarray(sig["data"])
                if data.dtype.hasobject:
                    continue
                arrays += _data_arrays(np.ascontiguousarray(data), out, f"signal{k}")
                described.append({"name": f"signal{k}", "axes": to_json(list(sig.get("axes", [])), max_list=1 << 40),
                                  "metadata": to_json(sig.get("metadata", {}))})
            out["signals"] = described
        else:
            arrays = _data_arrays(np.ascontiguousarray(si.data), out)
            arrays += [(f"images/{k}", np.ascontiguousarray(v)) for k, v in si.images.items() if not v.dtype.hasobject]
            arrays += [(f"other/{k}", np.ascontiguousarray(v)) for k, v in si.other_images.items() if not v.dtype.hasobject]
        entries, offset = [], 0
        for name, arr in arrays:
            offset = -(-offset // _ALIGN) * _ALIGN
            entries.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset})
            offset += arr.nbytes
        folder = next((d for d in req["dirs"] if shutil.disk_usage(d).free > offset * 1.05 + (256 << 20)), req["dirs"][-1])
        binary = os.path.join(folder, req["base"] + ".bin")
        try:
            with open(binary, "wb") as f:
                for entry, (_, arr) in zip(entries, arrays):
                    f.seek(entry["offset"])
                    _write_sparse(f, arr)
                f.truncate(offset)
        except OSError as exc:
            raise XSIError(
                f"{path}: the decoded spectrum image ({offset:,} bytes) could not be handed back through "
                f"{folder} ({exc}); free space there or point TMPDIR elsewhere"
            ) from exc
        out.update(ok=True, binary=binary, arrays=entries, size=offset, imported=sorted(set(sys.modules) - before))
        if not req.get("signals"):
            out.update(energy=dataclasses.asdict(si.energy), pixels=dataclasses.asdict(si.pixels),
                       metadata=si.metadata, original_metadata=si.original_metadata, signal_type=si.signal_type)
    except MemoryError as exc:
        out.update(error="CorruptFileError", message=(
            f"{path}: RosettaSciIO ran out of memory decoding this file ({exc or 'MemoryError'}); a corrupt header "
            "can declare a cube far larger than the file: check the file, or free memory if it is intact"
        ))
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent
        out.update(error=type(exc).__name__, message=str(exc))
    with open(req["result"], "w", encoding="utf-8") as f:
        json.dump(out, f)


def _server_main() -> int:
    """Decode server: length-prefixed pickled requests on stdin, one fork per file, exit status on stdout.

    The server ends at the end of its stdin and, while a child decodes, as soon
    as its parent is gone (it polls: PR_SET_PDEATHSIG would fire when the
    parent's *thread* that started it ends, and ingest starts it from a pool
    thread). Each child dies with the server (PR_SET_PDEATHSIG; the server is
    single-threaded).
    """
    parent = os.getppid()
    with contextlib.suppress(Exception):  # compiled (from numba's cache) once here, not in every forked child
        from ._csr import dense_to_csr

        for dt in (np.uint8, np.uint16, np.uint32):
            dense_to_csr(np.zeros((1, 1, 8), dt))
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a decoder prints must not mix with the replies
    while True:
        head = requests.read(4)
        if len(head) < 4:
            return 0
        req = pickle.loads(requests.read(int.from_bytes(head, "little")))  # from the parent that started us
        with contextlib.suppress(Exception):  # imported before the fork, once; a failure is the child's to report
            importlib.import_module(req["module"])
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child (coverage does not follow forks)
            code = 70
            try:
                _die_with_parent()
                _decode_request(req)
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + (req["timeout"] or math.inf)
        timed_out = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            orphaned = os.getppid() != parent  # nobody will read the result
            timed_out = time.monotonic() > deadline  # a decoder looping on a corrupt file
            if orphaned or timed_out:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                for name in [req["result"]] + [os.path.join(d, req["base"] + ".bin") for d in req["dirs"]]:
                    _unlink(name)
                if orphaned:
                    return 0
                break
            time.sleep(0.005)
        returncode = os.waitstatus_to_exitcode(status)
        if returncode == 0:  # what the plug-in imported on first use (pint, sparse, ...): import it here, once
            with contextlib.suppress(Exception), open(req["result"], encoding="utf-8") as f:
                for name in json.load(f).get("imported", [])[:1000]:
                    if isinstance(name, str) and name not in sys.modules:
                        with contextlib.suppress(Exception):
                            importlib.import_module(name)
        reply = json.dumps({"returncode": returncode, "timed_out": timed_out}).encode()
        replies.write(len(reply).to_bytes(4, "little") + reply)
        replies.flush()


def _close_servers() -> None:
    with _servers_lock:
        idle, _servers[:] = list(_servers), []
    for proc in idle:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


atexit.register(_close_servers)


def _take_server() -> subprocess.Popen:
    with _servers_lock:
        while _servers:
            proc = _servers.pop()
            if proc.poll() is None and getattr(proc, "xsi_pid", None) == os.getpid():
                return proc
    cmd = [sys.executable, "-c", _CHILD_BOOTSTRAP, str(Path(__file__).resolve().parents[1])]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.xsi_pid = os.getpid()  # type: ignore[attr-defined]  # a forked copy of this process must not share it
    return proc


def _ask_server(proc: subprocess.Popen, request: bytes) -> dict[str, Any] | None:
    """Send one request; the server's reply (the child's exit status), or None if the server itself died."""
    try:
        proc.stdin.write(len(request).to_bytes(4, "little") + request)
        proc.stdin.flush()
        head = proc.stdout.read(4)
        if len(head) < 4:
            return None
        reply = json.loads(proc.stdout.read(int.from_bytes(head, "little")))
        return {"returncode": int(reply["returncode"]), "timed_out": bool(reply.get("timed_out"))}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _child_error(path: Path, module_name: str, returncode: int) -> XSIError:
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
            name, what = sig.name, signal.strsignal(sig) or sig.name
        except ValueError:
            name, what = f"signal {-returncode}", "unknown signal"
        if -returncode == signal.SIGKILL:
            return CorruptFileError(
                f"{path}: the process decoding this file with RosettaSciIO ({module_name}) was killed ({name}), "
                "most likely for lack of memory; free memory or read a smaller file"
            )
        return CorruptFileError(
            f"{path}: RosettaSciIO ({module_name}) crashed with {name} ({what}) while decoding this file: it is "
            "corrupt (not merely truncated); copy it again from the instrument. The crash was contained in a "
            "child process and nothing was written"
        )
    return XSIError(
        f"{path}: the process decoding this file failed (exit status {returncode}); set "
        "xsi-dask.isolate-readers to false to read it in this process and see the error"
    )


def _result_error(path: Path, out: dict[str, Any]) -> BaseException:
    name, message = str(out.get("error", "")), str(out.get("message", ""))
    cls = getattr(_errors, name, None)
    if isinstance(cls, type) and issubclass(cls, XSIError):
        return cls(message)
    return CorruptFileError(f"{path}: decoding failed ({name}: {message})")


def _mapped_arrays(path: Path, out: dict[str, Any]) -> dict[str, np.ndarray]:
    """Views of the child's raw file (mapped copy-on-write), checked against its size."""
    binary = out["binary"]
    size = os.path.getsize(binary)
    if size != out["size"]:
        raise CorruptFileError(f"{path}: the decoding process handed back {size:,} bytes, not {out['size']:,}")
    mm = None
    if size:
        with open(binary, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    arrays = {}
    for entry in out["arrays"]:
        dtype = np.dtype(entry["dtype"])
        shape = tuple(int(n) for n in entry["shape"])
        nbytes = dtype.itemsize * math.prod(shape)
        if dtype.kind not in "biufc" or min(shape, default=0) < 0 or entry["offset"] + nbytes > size:
            raise CorruptFileError(f"{path}: the decoding process handed back an invalid array {entry}")
        if nbytes == 0:
            arrays[entry["name"]] = np.zeros(shape, dtype)
        else:
            arrays[entry["name"]] = np.ndarray(shape, dtype, buffer=mm, offset=int(entry["offset"]))
    return arrays


def _decode_timeout(path: Path) -> float:
    """Seconds a child may decode ``path``: ``xsi-dask.decode-timeout``, else 120 s plus 2 s per MB of file."""
    import dask.config

    value = dask.config.get("xsi-dask.decode-timeout", None)
    if value is None:
        return 120.0 + 2.0 * path.stat().st_size / 1e6
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not seconds > 0:
        raise ParameterError(f"xsi-dask.decode-timeout {value!r}: give a number of seconds > 0 (or null for the default)")
    return seconds


def _read_isolated(path: Path, kwargs: dict[str, Any]) -> SpectrumImage:
    """:func:`read_spectrum_image` of an eagerly read format, decoded in a child process."""
    out, arrays = _decode_isolated(path, kwargs)
    data, csr = _dense_from_csr(path, out["data"], arrays) if "data" in out else (arrays.pop("data"), None)
    return SpectrumImage(
        path=path,
        data=data,
        energy=EnergyAxis(**out["energy"]),
        pixels=PixelAxes(**out["pixels"]),
        images={k.split("/", 1)[1]: np.array(v) for k, v in arrays.items() if k.startswith("images/")},
        other_images={k.split("/", 1)[1]: np.array(v) for k, v in arrays.items() if k.startswith("other/")},
        metadata=out["metadata"],
        original_metadata=out["original_metadata"],
        signal_type=out["signal_type"],
        csr=csr,
    )


def _decode_isolated(path: Path, kwargs: dict[str, Any], *, signals: bool = False
                     ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Decode ``path`` in a child process: its description and arrays (the spectrum image's, or every signal's)."""
    module_name = READERS[path.suffix.lower()][0]
    timeout = _decode_timeout(path)
    dirs = _transfer_dirs()
    _sweep_stale(dirs)
    base = f"{_DECODE_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    result = os.path.join(tempfile.gettempdir(), base + ".json")
    leftovers = [result] + [os.path.join(d, base + ".bin") for d in dirs]
    try:
        request = pickle.dumps(
            {"path": str(path), "module": module_name, "kwargs": kwargs, "dirs": dirs, "base": base, "result": result,
             "timeout": timeout, "signals": signals}
        )
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise ParameterError(
            f"{path}: the reader arguments {sorted(kwargs)} cannot be handed to the decoding process ({exc}); "
            "pass plain values, or read with isolate=False"
        ) from exc
    proc, done = None, False
    try:
        proc = _take_server()
        reply = _ask_server(proc, request)
        if reply is None:  # the server itself is gone: start a fresh one, once
            proc.kill()
            proc.wait()
            proc = _take_server()
            reply = _ask_server(proc, request)
            if reply is None:
                raise XSIError(f"{path}: the decoding process could not be started ({sys.executable})")
        done = True
        if reply["timed_out"]:
            raise CorruptFileError(
                f"{path}: RosettaSciIO ({module_name}) was still decoding this file after {timeout:g} s and was "
                "stopped; a corrupt file can send a decoder into an endless loop. If the file is intact and just "
                "large, raise xsi-dask.decode-timeout (seconds)"
            )
        if reply["returncode"] != 0:
            raise _child_error(path, module_name, reply["returncode"])
        try:
            with open(result, encoding="utf-8") as f:
                out = json.load(f)
        except (OSError, ValueError) as exc:
            raise XSIError(f"{path}: the process decoding this file gave no readable result ({exc})") from exc
        for category, message in out.get("warnings", []):
            if category == XSIWarning.__name__:
                warnings.warn(message, category=XSIWarning, stacklevel=4)
        if not out.get("ok"):
            raise _result_error(path, out)
        arrays = _mapped_arrays(path, out)
    finally:
        if proc is not None:
            if done and proc.poll() is None:
                with _servers_lock:
                    _servers.append(proc)
            else:  # interrupted mid-request: the server and (by PDEATHSIG) its child go
                proc.kill()
                proc.wait()
        for name in leftovers:
            _unlink(name)
    return out, arrays


# ---- every signal of a file (the active-learning inputs: a structural image and the spectrum image to measure) ----


@dataclass(frozen=True)
class Signal:
    """One signal of a file as RosettaSciIO returns it (any dimension).

    Attributes
    ----------
    path : Path
        The file.
    title : str
        The signal's title (``metadata.General.title``), as written; "" when it has none.
    data : numpy.ndarray or dask.array.Array
        The data, navigation axes first.
    axes : list of dict
        RosettaSciIO's axes (``name``, ``units``, ``scale``, ``offset``, ``size``, ``navigate``).
    signal_type : str
        ``metadata.Signal.signal_type`` ("EELS", "EDS_TEM", ...; "" for images).
    """

    path: Path
    title: str
    data: Any
    axes: list
    signal_type: str

    @property
    def shape(self) -> tuple[int, ...]:
        """The data's shape as Python ints: ``(H, W)`` for an image, ``(H, W, channels)`` for a spectrum image."""
        return tuple(int(n) for n in self.data.shape)

    @property
    def is_spectrum_image(self) -> bool:
        """Whether this is a 3-D ``(y, x, channels)`` spectrum image (the channel axis the only signal axis)."""
        return _is_spectrum_image({"data": self.data, "axes": self.axes})


def channel_energies(sig: Signal, units: tuple[str, ...] = ("eV", "keV")) -> tuple[np.ndarray, str]:
    """The channel energies of a spectrum image's last (signal) axis, in its own units, read strictly.

    Parameters
    ----------
    sig : Signal
        A signal whose last axis is the energy axis.
    units : tuple of str
        The units accepted (default eV and keV).

    Returns
    -------
    energy : ndarray of shape (channels,), float64
        Channel centres: RosettaSciIO's ``axis`` values where the axis is
        non-uniform, else ``offset + scale * arange(channels)``.
    units : str
        One of ``units``, spelled as there.

    Raises
    ------
    ParameterError
        The axis' units are not among ``units`` (the message names the file and the signal).
    CorruptFileError
        The axis records no scale (or a non-finite or zero one), a non-finite
        offset, a size other than the data's channel count, or non-uniform
        values that are not finite and strictly increasing, one per channel.
    """
    where = f"{sig.path}: the energy axis of {sig.title or sig.path.stem!r}"
    ax = sig.axes[-1] if sig.axes else {}
    raw = str(ax.get("units") or "").strip()
    name = _ENERGY_UNIT_NAMES.get(raw.lower())
    if name not in units:
        raise ParameterError(f"{where} is in {raw!r}, not {' or '.join(units)}: energies cannot be placed on it")
    n = sig.shape[-1]
    if ax.get("size") is not None and int(ax["size"]) != n:
        raise CorruptFileError(f"{where} says {int(ax['size'])} channels but the data have {n}")
    if ax.get("axis") is not None:  # a non-uniform axis: its values
        energy = np.asarray(ax["axis"], dtype=np.float64).reshape(-1)
        if energy.size != n or not np.isfinite(energy).all() or (n > 1 and not (np.diff(energy) > 0).all()):
            raise CorruptFileError(f"{where} has {energy.size} values for {n} channels, or values that are not finite "
                                   "and strictly increasing")
        return energy, name
    scale, offset = ax.get("scale"), ax.get("offset", 0.0)
    if scale is None or not math.isfinite(float(scale)) or float(scale) == 0:
        raise CorruptFileError(f"{where} records no usable scale ({scale!r}): the channels' energies are unknown")
    if offset is None or not math.isfinite(float(offset)):
        raise CorruptFileError(f"{where} records no usable offset ({offset!r}): the channels' energies are unknown")
    return float(offset) + float(scale) * np.arange(n, dtype=np.float64), name


def read_signals(path: str | Path, *, isolate: bool | None = None, **reader_kwargs: Any) -> list[Signal]:
    """Every signal of one file, read with its RosettaSciIO plug-in (images and spectrum images alike).

    :func:`read_spectrum_image` keeps one spectrum image per file and the
    images on its grid; ``xsi-dask explore`` needs to choose among all the
    signals of several files (a HAADF file beside an EELS file), by title.

    Parameters
    ----------
    path : str or Path
        A file of an extension in ``READERS``.
    isolate : bool, optional
        As :func:`read_spectrum_image` (default: a child process for bcf, pts, emd).
    **reader_kwargs
        Passed to RosettaSciIO's ``file_reader``.

    Returns
    -------
    list of Signal
        In the file's order; lazily read formats (hspy, zspy, rpl) give dask arrays.

    Raises
    ------
    InputFileNotFoundError, UnsupportedFormatError, CorruptFileError, ParameterError
        As :func:`read_spectrum_image`.

    Notes
    -----
    The file goes through the checks, the isolation (eagerly read formats are
    decoded in the child process of :func:`read_spectrum_image`, by default)
    and the metadata mapping of :func:`read_spectrum_image`; the format's
    post-read check applies to every 3-D signal.
    """
    path, module_name, lazy, kwargs = _reader_of(path, reader_kwargs)
    if _isolated(lazy, isolate):
        out, arrays = _decode_isolated(path, kwargs, signals=True)
        raw = []
        for d in out.get("signals", []):
            name = d["name"]
            data = _dense_from_csr(path, out[name], arrays, name)[0] if name in out else arrays.pop(name)
            raw.append({"data": data, "axes": d["axes"], "metadata": d["metadata"]})
    else:
        raw = _read_checked(path, module_name, lazy, kwargs)
    return [
        Signal(path=path, title=str(s.get("metadata", {}).get("General", {}).get("title", "") or ""), data=s["data"],
               axes=list(s.get("axes", [])), signal_type=str(s.get("metadata", {}).get("Signal", {}).get("signal_type", "") or ""))
        for s in raw
    ]


# ---- one reference spectrum (a known endmember for xsi_dask.nmf(fixed_spectra=...)) ----

# single-spectrum formats read beside READERS' files: EMSA/MSA text and Bruker's spx (small, read in-process)
SPECTRUM_READERS: dict[str, tuple[str, bool, dict[str, Any]]] = {
    ".msa": ("rsciio.msa", False, {}),
    ".emsa": ("rsciio.msa", False, {}),
    ".spx": ("rsciio.bruker", False, {}),
}


def read_reference_spectrum(path: str | Path, energy: Any, *, title: str | None = None, **reader_kwargs: Any):
    """A 1-D spectrum from a file, read with RosettaSciIO, on a montage view's channels (never interpolated).

    Parameters
    ----------
    path : str or Path
        An EMSA/MSA (``.msa``, ``.emsa``) or Bruker ``.spx`` spectrum, or a
        file of ``READERS`` (e.g. ``.hspy``) holding a 1-D spectrum.
    energy : xarray.DataArray or array-like of shape (channels,)
        The view's channel energies in keV: ``montage["energy"]``, or the
        montage view itself (its ``energy`` coordinate is taken).
    title : str, optional
        Which 1-D signal of the file (``metadata.General.title``); needed only
        when the file holds several.
    **reader_kwargs
        Passed to RosettaSciIO's ``file_reader``.

    Returns
    -------
    xarray.DataArray
        ``spectrum (energy,)`` float64, in the file's units (counts for an
        EDS spectrum), with the view's ``energy`` coordinate; ``attrs``:
        ``source`` (the path) and ``title``. Ready for
        ``xsi_dask.nmf(..., fixed_spectra=...)`` (several:
        ``xarray.concat([...], "component")``).

    Raises
    ------
    InputFileNotFoundError
        The file does not exist.
    UnsupportedFormatError
        No reader for the extension.
    CorruptFileError
        RosettaSciIO failed to read it, or its energy axis is unusable
        (:func:`channel_energies`).
    ParameterError
        No 1-D signal in the file (or several and no ``title``, or no signal
        of that title); the energy axis is not in eV or keV; the spectrum's
        channels do not include every channel of the view at the same energy
        (to 1e-3 of a channel): another calibration, a shifted offset, or
        fewer channels. The message gives both calibrations. A spectrum
        whose channels are a superset (e.g. the full axis of a view that
        selects an energy range) is cut to the view's channels.
    """
    import xarray as xr

    view_e = energy["energy"] if hasattr(energy, "coords") and "energy" in getattr(energy, "coords", {}) and \
        getattr(energy, "name", None) != "energy" else energy
    view_e = np.asarray(getattr(view_e, "values", view_e), dtype=np.float64).reshape(-1)
    p = Path(path)
    ext = p.suffix.lower()
    if ext in SPECTRUM_READERS and p.is_file():
        module_name, lazy, kwargs = SPECTRUM_READERS[ext]
        raw = _read_checked(p, module_name, lazy, {**kwargs, **reader_kwargs})
        signals = [Signal(path=p, title=str(s.get("metadata", {}).get("General", {}).get("title", "") or ""),
                          data=s["data"], axes=list(s.get("axes", [])),
                          signal_type=str(s.get("metadata", {}).get("Signal", {}).get("signal_type", "") or ""))
                   for s in raw]
    elif ext in SPECTRUM_READERS:
        raise InputFileNotFoundError(f"input file not found: {p}")
    else:
        try:
            signals = read_signals(p, **reader_kwargs)
        except UnsupportedFormatError:
            known = ", ".join(sorted({*READERS, *SPECTRUM_READERS}))
            raise UnsupportedFormatError(f"{p}: unsupported format {ext!r}; a reference spectrum is read from {known} "
                                         "through RosettaSciIO") from None
    ones = [s for s in signals if len(s.shape) == 1]
    if title is not None:
        ones = [s for s in ones if s.title == title]
    if len(ones) != 1:
        found = [(s.title, s.shape) for s in signals]
        want = f"a 1-D spectrum titled {title!r}" if title is not None else "exactly one 1-D spectrum"
        raise ParameterError(f"{p}: expected {want}; the file holds {found}"
                             + ("; pass title= to choose" if title is None and len(ones) > 1 else ""))
    sig = ones[0]
    e, units = channel_energies(sig)
    e = e * (1e-3 if units == "eV" else 1.0)
    n = e.size
    step = float(np.median(np.abs(np.diff(view_e)))) if view_e.size > 1 else (float(e[1] - e[0]) if n > 1 else 1.0)
    idx = np.clip(np.searchsorted(e, view_e), 0, n - 1)
    left = np.clip(idx - 1, 0, n - 1)
    idx = np.where(np.abs(e[left] - view_e) < np.abs(e[idx] - view_e), left, idx)
    bad = np.flatnonzero(~(np.abs(e[idx] - view_e) <= 1e-3 * step))

    def describe(x: np.ndarray) -> str:
        d = f" at {(x[1] - x[0]) * 1e3:.6g} eV/channel" if x.size > 1 else ""
        return f"{x.size} channels from {x[0]:.6g} keV{d}"

    if bad.size:
        i = int(bad[0])
        raise ParameterError(
            f"{p}: the spectrum's energy axis ({describe(e)}) does not hold the view's channels ({describe(view_e)}): "
            f"the view's channel {i} at {view_e[i]:.6g} keV has no channel within 1e-3 channel in the file "
            f"({bad.size} such channels). A reference on another calibration is not interpolated silently: "
            "resample it yourself, or acquire it with the montage's calibration")
    data = np.asarray(sig.data, dtype=np.float64)[idx]
    return xr.DataArray(data, dims=("energy",), coords={"energy": view_e}, name="spectrum",
                        attrs={"source": str(p), "title": sig.title, "units": "counts"})
