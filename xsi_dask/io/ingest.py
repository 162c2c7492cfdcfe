"""Ingest vendor spectrum images into a montage store, tile by tile in parallel."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import zarr
from dask.system import CPU_COUNT

from .. import config
from ..errors import (
    CalibrationMismatchError,
    CorruptFileError,
    CountsError,
    LayoutError,
    ParameterError,
    TileShapeMismatchError,
    XSIWarning,
)
from ._csr import dense_to_csr
from .layout import (
    Layout,
    TileSpec,
    expand_inputs,
    grid_layout,
    layout_record,
    manifest_layout,
    source_fingerprints,
    split_layout,
)
from .readers import EnergyAxis, SpectrumImage, read_spectrum_image
from .store import MontageStore, atomic_output, check_output, write_montage_attrs, write_tile

__all__ = ["ingest"]


def _check_counts(values: np.ndarray, spec: TileSpec) -> np.ndarray:
    kind = values.dtype.kind
    where = f"tile {spec.index} (row {spec.row}, col {spec.col}) from {spec.source}"
    if kind == "b":
        return values.astype(np.uint8)
    if kind == "c":
        raise CountsError(f"{where}: complex data ({values.dtype}) are not counts")
    if kind in "if" and values.size:
        vmin = values.min()
        if vmin < 0:
            raise CountsError(f"{where}: negative value {vmin}; an X-ray spectrum image holds counts >= 0")
    if kind == "f" and values.size:
        frac = values != np.round(values)
        if frac.any():
            raise CountsError(
                f"{where}: non-integer value {values[np.argmax(frac)]}; xsi_dask keeps counts as "
                "counts (integers), so calibrated or normalised intensities cannot be ingested"
            )
        return values.astype(np.uint64)
    return values


def _tile_csr(si: SpectrumImage, y0: int, y1: int, x0: int, x1: int):
    """CSR arrays of ``si[y0:y1, x0:x1]``; lazily read maps are densified one row block at a time."""
    data = si.data
    if si.csr is not None:  # decoded in a child process: the map's CSR came with it
        return _csr_window(si.csr, si.shape[1], y0, y1, x0, x1)
    if isinstance(data, np.ndarray):
        return dense_to_csr(data, y0, y1, x0, x1)
    row_bytes = (x1 - x0) * si.shape[2] * np.dtype(data.dtype).itemsize
    step = max(1, config.get_bytes("ingest-block") // max(row_bytes, 1))
    parts = []
    for ys in range(y0, y1, step):
        block = np.ascontiguousarray(_compute_block(si, data[ys : min(ys + step, y1), x0:x1], ys))
        parts.append(dense_to_csr(block))
    offsets = np.cumsum([0] + [p[0][-1] for p in parts[:-1]])
    indptr = np.concatenate([parts[0][0][:1]] + [p[0][1:] + o for p, o in zip(parts, offsets)])
    return indptr, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def _csr_window(csr: tuple[np.ndarray, np.ndarray, np.ndarray], width: int, y0: int, y1: int, x0: int, x1: int):
    """The CSR arrays of pixels ``[y0:y1, x0:x1]`` of a map of ``width`` pixels a row, from the whole map's."""
    indptr, indices, values = csr
    pix = (np.arange(y0, y1, dtype=np.int64)[:, None] * width + np.arange(x0, x1, dtype=np.int64)[None, :]).ravel()
    starts = indptr[pix]
    counts = indptr[pix + 1] - starts
    out_ptr = np.zeros(pix.size + 1, np.int64)
    np.cumsum(counts, out=out_ptr[1:])
    take = np.repeat(starts - out_ptr[:-1], counts) + np.arange(out_ptr[-1], dtype=np.int64)
    return out_ptr, indices[take], values[take]


def _compute_block(si: SpectrumImage, block: Any, y: int) -> np.ndarray:
    """Read one row block of a lazily read map; a decoding failure is the file's fault."""
    try:
        return block.compute(scheduler="sync")
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py, zarr, np.memmap: any failure to decode stored data
        raise CorruptFileError(
            f"{si.path}: the data from row {y} on cannot be read; the file is truncated or corrupt "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _ingest_threads(threads: Any) -> int:
    """Tiles converted at once: ``threads``, else ``xsi-dask.ingest-threads``, else one per core."""
    value = config.get("ingest-threads", threads)
    what = "--threads" if threads is not None else "xsi-dask.ingest-threads"
    if value is None:
        return int(CPU_COUNT)
    try:
        n = int(value)
        ok = not isinstance(value, bool) and (n == value or (isinstance(value, str) and value.strip().isdigit()))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or n < 1:
        raise ParameterError(f"{what} {value!r}: the number of tiles converted at once must be a whole number >= 1")
    return n


class _Failed:
    """An exception carried out of a task, so that every task ends before it is raised."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def _guarded(fn):
    def run(*args):
        if any(isinstance(a, _Failed) for a in args):
            return next(a for a in args if isinstance(a, _Failed))
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - re-raised by ingest once all tasks ended
            return _Failed(exc)

    run.__name__ = fn.__name__
    return run


def _raise_first(results: list[Any]) -> None:
    for r in results:
        if isinstance(r, _Failed):
            raise r.exc


def _read(path: Path, reader_kwargs: dict[str, Any]) -> SpectrumImage:
    return read_spectrum_image(path, **reader_kwargs)


def _ingest_tile(si: SpectrumImage, spec: TileSpec, tiles: zarr.Group) -> dict[str, Any]:
    y0, y1, x0, x1 = spec.window(si.shape[:2])
    indptr, indices, values = _tile_csr(si, y0, y1, x0, x1)
    values = _check_counts(values, spec)
    images = {k: v[y0:y1, x0:x1] for k, v in si.images.items()}
    stage_y, stage_x = spec.stage_y, spec.stage_x
    if spec.y0 is not None and math.isnan(stage_y):  # a split map: tile origin inside the map
        stage_y = si.pixels.offset_y + y0 * si.pixels.scale_y
        stage_x = si.pixels.offset_x + x0 * si.pixels.scale_x
    attrs = {
        "row": spec.row,
        "col": spec.col,
        "source": str(spec.source),
        "stage_x": None if math.isnan(stage_x) else stage_x,
        "stage_y": None if math.isnan(stage_y) else stage_y,
        "window": [y0, y1, x0, x1],
    }
    summary = write_tile(tiles, str(spec.index), indptr, indices, values, (y1 - y0, x1 - x0), si.shape[2], images, attrs)
    return {**attrs, **summary, "energy": si.energy, "pixels": si.pixels, "image_names": sorted(images)}


def _write_source(si: SpectrumImage, k: int, sources: zarr.Group) -> dict[str, Any]:
    g = sources.create_group(str(k), attributes={"path": str(si.path), "original_metadata": si.original_metadata})
    if si.other_images:
        ig = g.create_group("images")
        for name, img in si.other_images.items():
            ig.create_array(name, data=np.ascontiguousarray(img))
    return {
        "path": str(si.path),
        "shape": list(si.shape),
        "signal_type": si.signal_type,
        "metadata": si.metadata,
        "dtype": str(si.data.dtype),
    }


def _validate(layout: Layout, results: list[dict[str, Any]], tolerance: float) -> None:
    ref = results[0]
    ref_e: EnergyAxis = ref["energy"]
    for spec, res in zip(layout.tiles, results):
        where = f"tile {spec.index} (row {spec.row}, col {spec.col}, {spec.source})"
        if res["shape"] != ref["shape"]:
            raise TileShapeMismatchError(
                f"{where} is {res['shape'][0]}x{res['shape'][1]} px but tile 0 ({layout.tiles[0].source}) "
                f"is {ref['shape'][0]}x{ref['shape'][1]} px; every tile of a montage must have the same size"
            )
        e: EnergyAxis = res["energy"]
        if e.mismatch(ref_e) > tolerance:
            raise CalibrationMismatchError(
                f"{where} has energy calibration [{e.describe()}] but tile 0 ({layout.tiles[0].source}) "
                f"has [{ref_e.describe()}]; they differ by {e.mismatch(ref_e):.3g} channels, more "
                f"than the tolerance of {tolerance} channels (xsi-dask.energy-tolerance)"
            )
        p, q = res["pixels"], ref["pixels"]
        if p.units != q.units or not math.isclose(p.scale_x, q.scale_x, rel_tol=0.01):
            warnings.warn(
                f"{where} has pixel size {p.scale_x:.4g} {p.units} but tile 0 has "
                f"{q.scale_x:.4g} {q.units}; tile 0's is used for the montage",
                category=XSIWarning,
                stacklevel=3,
            )


def _write_store(
    out: str | Path,
    layout: Layout,
    srcs: dict[Path, Any],
    record: dict[str, Any],
    files: Sequence[Path],
    *,
    overwrite: bool,
    tolerance: float,
    threads: int,
    progress: bool,
    started: float,
) -> None:
    """Convert and write every tile of ``layout`` into a new store ``out``, in parallel; rename it into place.

    ``srcs`` maps each source of the layout to a ``dask.delayed`` SpectrumImage
    (read in the task, or one already in memory); ``record`` is the store's
    ``layout`` attribute (:func:`layout_record`), to which the fingerprints of
    ``files`` are added once they are read. Errors of the tasks are raised
    once all have ended.
    """
    with atomic_output(out, overwrite=overwrite) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        tiles_g = root.create_group("tiles")
        sources_g = root.create_group("sources")
        tasks = [dask.delayed(_guarded(_ingest_tile))(srcs[spec.source], spec, tiles_g) for spec in layout.tiles]
        meta_tasks = [dask.delayed(_guarded(_write_source))(srcs[p], k, sources_g) for k, p in enumerate(layout.sources)]
        if progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar(minimum=1.0):
                results, sources = dask.compute(tasks, meta_tasks, scheduler="threads", num_workers=threads)
        else:
            results, sources = dask.compute(tasks, meta_tasks, scheduler="threads", num_workers=threads)
        _raise_first(results + sources)
        _validate(layout, results, tolerance)

        ref = results[0]
        write_montage_attrs(
            root,
            tiles=results,
            grid=[layout.rows, layout.cols],
            split=list(layout.split) if layout.split else None,
            layout={**record, "files": source_fingerprints(files)},
            tile_shape=ref["shape"],
            energy=ref["energy"].to_dict(),
            pixels=ref["pixels"].to_dict(),
            stage_units=layout.stage_units or ref["pixels"].units,
            image_names=ref["image_names"],
            sources=sources,
            ingest_seconds=time.perf_counter() - started,
        )


def ingest(
    inputs: Sequence[str | Path] | str | Path | None,
    out: str | Path,
    *,
    grid: str | Sequence[int] | None = None,
    manifest: str | Path | None = None,
    split: str | Sequence[int] | None = None,
    overwrite: bool = False,
    energy_tolerance: float | None = None,
    threads: int | None = None,
    progress: bool = True,
    reader_kwargs: dict[str, Any] | None = None,
) -> MontageStore:
    """Ingest spectrum images into a sparse montage store.

    Every tile is converted to CSR (pixels x channels) straight from the dense
    array RosettaSciIO returns (lazily read maps one row block at a time), in
    parallel over tiles with dask threads, and written to a temporary store that
    is renamed to ``out`` only when complete.

    Parameters
    ----------
    inputs : path, glob, or sequence of them
        Tile files (``.bcf``, ``.pts``, ``.emd``, ``.hspy``, ``.zspy``, ``.rpl``).
        Ignored with ``manifest``.
    out : path
        The store to write (a ``.zarr`` folder).
    grid : "ROWSxCOLS", optional
        Lay the files out row-major on this grid. Needed for several files.
        The store records the layout (root attribute ``layout``, see
        :func:`xsi_dask.io.layout.layout_record`) and the absolute paths of its
        sources (``sources``), so that a pipeline can tell whether it may reuse it.
    manifest : path, optional
        CSV ``path,row,col[,stage_x,stage_y]`` (see :func:`xsi_dask.io.layout.manifest_layout`).
    split : "ROWSxCOLS", optional
        Cut one map into this many equal tiles.
    overwrite : bool
        Replace an existing store (only once the new one is complete).
    energy_tolerance : float, optional
        Largest allowed difference between two tiles' channel energies, in
        channels (default ``xsi-dask.energy-tolerance`` = 0.1).
    threads : int, optional
        Tiles converted at once (default: one per core). Peak memory is about
        this many dense source maps.
    progress : bool
        Show a progress bar.
    reader_kwargs : dict, optional
        Passed to the RosettaSciIO reader.

    Returns
    -------
    MontageStore

    Raises
    ------
    InputFileNotFoundError, UnsupportedFormatError, CorruptFileError, NoSpectrumImageError
        A tile file is missing or unreadable (the message names it).
    LayoutError
        Bad grid, manifest or split.
    CalibrationMismatchError, TileShapeMismatchError
        Tiles disagree on the energy calibration or the pixel grid.
    CountsError
        Negative or non-integer data.
    StoreExistsError
        ``out`` exists and ``overwrite`` is false.
    ParameterError
        ``threads`` (or ``xsi-dask.ingest-threads``) is not a whole number >= 1.
    """
    started = time.perf_counter()
    n_threads = _ingest_threads(threads)  # before any reading
    tolerance = float(config.get("energy-tolerance", energy_tolerance))
    reader_kwargs = dict(reader_kwargs or {})
    if sum(x is not None for x in (grid, manifest, split)) > 1:
        raise LayoutError("give only one of grid, manifest and split")
    check_output(out, "montage", overwrite=overwrite)  # before any reading: never replaces what is not ours
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]

    record = layout_record(grid=grid, split=split, manifest=manifest)
    preread: SpectrumImage | None = None
    if manifest is not None:
        layout = manifest_layout(manifest)
        # sources recorded as absolute paths: a store says where its data came from wherever it is opened
        layout = dataclasses.replace(
            layout, tiles=tuple(dataclasses.replace(t, source=t.source.resolve()) for t in layout.tiles)
        )
    elif split is not None:
        paths = [p.resolve() for p in expand_inputs(inputs or [])]
        if len(paths) != 1:
            raise LayoutError(f"split cuts one map into tiles, but {len(paths)} files were given")
        preread = _read(paths[0], reader_kwargs)
        layout = split_layout(paths[0], split, preread.shape[:2])
    else:
        layout = grid_layout([p.resolve() for p in expand_inputs(inputs or [])], grid)

    srcs = {}
    for path in layout.sources:
        # traverse=False: dask would otherwise walk the whole metadata tree of the source
        srcs[path] = (
            dask.delayed(preread, traverse=False)
            if preread is not None
            else dask.delayed(_guarded(_read), pure=False)(path, reader_kwargs)
        )
    _write_store(out, layout, srcs, record, layout.sources, overwrite=overwrite, tolerance=tolerance, threads=n_threads,
                 progress=progress, started=started)
    return MontageStore(out)
