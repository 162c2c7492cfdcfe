"""Read vendor spectrum images through RosettaSciIO.

xsi_dask has no file parsers of its own: every format is read by the
RosettaSciIO plug-in for it, and this module only picks the spectrum image out
of what the plug-in returns, converts its calibration to keV and keeps the
structural images and metadata that came with it.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    CorruptFileError,
    InputFileNotFoundError,
    NoSpectrumImageError,
    UnsupportedFormatError,
    XSIWarning,
)

__all__ = [
    "EnergyAxis",
    "PixelAxes",
    "SpectrumImage",
    "READERS",
    "read_spectrum_image",
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
    factor = _ENERGY_UNIT_TO_KEV.get(units.lower())
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
_PREFLIGHT = {".bcf": _check_bcf_complete}
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
    path: str | Path, *, lazy: bool | None = None, **reader_kwargs: Any
) -> SpectrumImage:
    """Read the spectrum image of one vendor file with RosettaSciIO.

    Parameters
    ----------
    path : str or Path
        A Bruker ``.bcf``, JEOL ``.pts``, Velox/NCEM ``.emd``, HyperSpy
        ``.hspy``/``.zspy`` or Lispix ``.rpl`` (with its ``.raw``) file.
    lazy : bool, optional
        Ask the reader for a dask array. Default: per format (see ``READERS``).
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
        RosettaSciIO failed to parse the file (truncated, corrupt).
    NoSpectrumImageError
        The file has no 3-D spectrum image.
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
    module_name, default_lazy, default_kwargs = READERS[ext]
    kwargs = {**default_kwargs, **reader_kwargs}
    if ext in _PREFLIGHT:
        _PREFLIGHT[ext](path)
    signals = _call_reader(path, module_name, default_lazy if lazy is None else lazy, kwargs)

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
    if ext in _POSTREAD:
        _POSTREAD[ext](path, si)
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
        metadata=to_json(si.get("metadata", {})),
        original_metadata=to_json(si.get("original_metadata", {})),
        signal_type=_signal_type(si),
    )
