"""Write decomposition results (xarray Datasets) as groups of one Zarr store, atomically."""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from pathlib import Path

import xarray as xr
import zarr

from .._dask import compute
from ..errors import StoreExistsError
from ..progress import Progress
from .readers import to_json
from .store import atomic_output

__all__ = ["write_results", "open_results", "has_group"]


def _consolidate(out: Path) -> None:
    with warnings.catch_warnings():  # "consolidated metadata is not in the v3 spec yet": known, wanted
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(out), zarr_format=3)


def _encoding(ds: xr.Dataset) -> dict:
    enc = {}
    for name, var in ds.data_vars.items():
        if var.chunks:  # one Zarr chunk per dask chunk: maps are written tile by tile
            enc[name] = {"chunks": tuple(c[0] for c in var.chunks)}
    return enc


def _write_group(ds: xr.Dataset, root: Path, name: str, bar: Progress) -> None:
    ds = ds.copy()
    ds.attrs = to_json(ds.attrs)
    delayed = ds.to_zarr(
        str(root), group=name, mode="w", zarr_format=3, consolidated=False,
        encoding=_encoding(ds), compute=False,
    )
    compute(delayed)
    bar.update()


def write_results(out: str | Path, groups: dict[str, xr.Dataset], *, overwrite: bool = False, progress: bool = False) -> Path:
    """Write each Dataset as group ``name`` of the Zarr store ``out``.

    Lazy (dask) variables such as scores and abundance maps are computed and
    written one chunk (tile) at a time. A new store is written to a temporary
    path and renamed; into an existing store, each group is written under a
    temporary name and renamed over the old group when complete, so a failure
    leaves the store as it was. The root's consolidated metadata is rewritten,
    so ``xarray.open_zarr(out, group=name)`` opens any group directly.

    Raises
    ------
    StoreExistsError
        A group exists and ``overwrite`` is false.
    """
    out = Path(out)
    with Progress(f"writing {out.name} ({', '.join(groups)}, tile by tile)", len(groups), unit="groups", enabled=progress) as bar:
        return _write(out, groups, overwrite, bar)


def _write(out: Path, groups: dict[str, xr.Dataset], overwrite: bool, bar: Progress) -> Path:
    if not out.exists():
        with atomic_output(out) as tmp:
            zarr.open_group(str(tmp), mode="w", zarr_format=3)
            for name, ds in groups.items():
                _write_group(ds, tmp, name, bar)
        _consolidate(out)
        return out
    existing = [n for n in groups if (out / n).exists()]
    if existing and not overwrite:
        raise StoreExistsError(f"{out} already has group(s) {existing}; pass --overwrite (overwrite=True) to replace them")
    for name, ds in groups.items():
        tmp_name = f"tmp-{name}-{uuid.uuid4().hex[:8]}"
        try:
            _write_group(ds, out, tmp_name, bar)
            if (out / name).exists():
                trash = out / f"old-{name}-{uuid.uuid4().hex[:8]}"
                os.replace(out / name, trash)
                os.replace(out / tmp_name, out / name)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(out / tmp_name, out / name)
        finally:
            shutil.rmtree(out / tmp_name, ignore_errors=True)
    _consolidate(out)
    return out


def has_group(path: str | Path, group: str) -> bool:
    """Whether the results store ``path`` exists and has group ``group``."""
    return (Path(path) / group / "zarr.json").is_file()


def open_results(path: str | Path, group: str) -> xr.Dataset:
    """Open one result group (``"svd"`` or ``"nmf"``) lazily."""
    return xr.open_zarr(str(path), group=group, consolidated=True)
