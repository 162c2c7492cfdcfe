"""Write decomposition results (xarray Datasets) as groups of one Zarr store, committed as one.

A results store (``results.zarr``) is a Zarr v3 group whose root attributes
carry ``xsi_dask = {format: "xsi-dask-results", version, uuid}`` and whose
groups (``svd``, ``nmf``) are xarray Datasets. Every update builds a complete
new store in a temporary sibling (the groups that are kept hard-linked in,
their metadata copied; the new groups written; the metadata consolidated) and
swaps it for the old one with one rename under the output's lock
(:func:`xsi_dask.io.store.atomic_output`), so a reader sees the old results
or the new ones, never a mix, and an interrupted update leaves the old store
as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import xarray as xr
import zarr

from .._dask import compute
from ..errors import InputFileNotFoundError, NotOurOutputError, StoreExistsError, StoreFormatError
from ..progress import Progress
from .readers import to_json
from .store import (
    _LEGACY_RESULT_ENTRY,
    RESULTS_FORMAT,
    _probe_writable,
    _remove,
    atomic_output,
    check_output,
    describe_path,
    output_kind,
)

__all__ = [
    "RESULTS_FORMAT", "RESULTS_VERSION", "RESULT_GROUPS", "check_results_target", "has_group", "open_result_groups", "open_results", "results_update",
    "write_group", "write_results",
]

RESULTS_VERSION = 1
#: the groups a results store may hold, in the order reports show them
RESULT_GROUPS = ("svd", "nmf", "rotation", "mcr", "ica", "segments", "elements", "quantification", "qc")


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
    # fixed-width unicode has no Zarr v3 specification (zarr warns that it may change): variable-length strings
    # (Variables, not DataArrays: a DataArray would bring back the others' coordinates as they were)
    text = {k: v for k, v in ds.variables.items() if v.dtype.kind == "U"}
    coords = {k: (v.dims, v.values.astype(object), v.attrs) for k, v in text.items() if k in ds.coords}
    ds = ds.assign_coords(coords)
    for k, v in text.items():
        if k not in ds.coords:
            ds[k] = (v.dims, v.values.astype(object), v.attrs)
    delayed = ds.to_zarr(
        str(root), group=name, mode="w", zarr_format=3, consolidated=False,
        encoding=_encoding(ds), compute=False,
    )
    compute(delayed)
    bar.update()


def _groups(path: Path) -> list[str]:
    """The groups of the results store ``path`` (none when it does not exist)."""
    if not path.is_dir():
        return []
    return sorted(e.name for e in path.iterdir() if (e / "zarr.json").is_file() and not _LEGACY_RESULT_ENTRY.fullmatch(e.name))


def check_results_target(out: str | Path, groups: Iterable[str], *, overwrite: bool = False) -> Path:
    """Check, before any computation, that ``groups`` may be written into the results store ``out``.

    ``out`` may be absent, an empty folder, or a results store; in a results
    store, a group that exists is replaced only with ``overwrite``. A plain
    file, a folder of other files, a montage store or any other path is
    refused (whatever ``overwrite`` says), and so is an unwritable place.

    Parameters
    ----------
    out : str or Path
        The results store.
    groups : iterable of str
        The groups to be written.
    overwrite : bool
        Whether existing groups may be replaced.

    Returns
    -------
    Path
        ``out``, absolute.

    Raises
    ------
    NotOurOutputError
        ``out`` is not a results store (nor absent, nor an empty folder).
    StoreExistsError
        A group exists and ``overwrite`` is false.
    OutputWriteError
        ``out``'s folder cannot be written.
    """
    out = Path(os.path.abspath(out))
    if (out.is_symlink() or out.exists()) and output_kind(out) != "results":
        check_output(out, "results", overwrite=True, probe=False)  # an empty folder passes, anything else is refused
    existing = [g for g in groups if g in _groups(out)]
    if existing and not overwrite:
        raise StoreExistsError(
            f"{out} already has group(s) {existing}; pass --overwrite (overwrite=True) to replace them"
        )
    _probe_writable(out)  # the staged store is written beside it
    return out


def _token(path: Path) -> tuple | None:
    """Identifies one committed version of a store: every commit puts a new folder in place."""
    try:
        st = os.stat(path)
        meta = os.stat(path / "zarr.json")
    except OSError:
        return None
    return st.st_dev, st.st_ino, meta.st_mtime_ns


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link a chunk (never rewritten in place); copy metadata, which consolidation and zarr rewrite."""
    if os.path.basename(src) != "zarr.json":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _carry_over(old: Path, new: Path, replaced: Iterable[str]) -> None:
    """Put every entry of the old store except its root metadata and the ``replaced`` groups into ``new``."""
    replaced = set(replaced)
    if not old.is_dir():
        return
    for entry in old.iterdir():
        if entry.name == "zarr.json" or entry.name in replaced or _LEGACY_RESULT_ENTRY.fullmatch(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, copy_function=_link_or_copy, symlinks=True)
        else:
            _link_or_copy(str(entry), str(new / entry.name))


@contextlib.contextmanager
def results_update(out: str | Path, groups: Iterable[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Stage an update of the results store ``out`` that writes ``groups``; commit it as one when the block ends.

    Yields the path of a complete new results store holding the groups of
    ``out`` that are kept (hard-linked; ``groups`` themselves are left out);
    write ``groups`` there (:func:`write_results`, or ``nmf(out=path)``). When
    the block ends, the groups another writer committed to ``out`` meanwhile
    are carried over too, the metadata are consolidated and the new store
    replaces ``out`` in one rename under the output's lock. If the block
    raises, ``out`` is left as it was and the staged store is removed.

    Parameters
    ----------
    out : str or Path
        The results store (created if absent).
    groups : iterable of str
        The groups the block writes.
    overwrite : bool
        Whether existing groups may be replaced.

    Raises
    ------
    NotOurOutputError, StoreExistsError, OutputWriteError
        See :func:`check_results_target`; also at the commit, if another
        writer committed one of ``groups`` meanwhile.
    """
    groups = list(groups)
    out = check_results_target(out, groups, overwrite=overwrite)
    base = _token(out)

    def merge(stage: Path) -> None:  # under the output's lock
        if _token(out) != base:  # another writer committed meanwhile: keep what it wrote
            if (out.is_symlink() or out.exists()) and output_kind(out) != "results":
                raise NotOurOutputError(f"{out} became {describe_path(out)} while the results were written; nothing was written")
            clash = [g for g in groups if g in _groups(out)]
            if clash and not overwrite:
                raise StoreExistsError(f"{out}: group(s) {clash} were written by another run meanwhile; pass --overwrite to replace them")
            for entry in stage.iterdir():
                if entry.name != "zarr.json" and entry.name not in groups:
                    _remove(entry)
            _carry_over(out, stage, groups)
        _consolidate(stage)

    with atomic_output(out, overwrite=True, kind="results", before_commit=merge) as stage:
        from .._version import __version__

        marker = {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "uuid": uuid.uuid4().hex, "package_version": __version__}
        zarr.open_group(str(stage), mode="w", zarr_format=3, attributes={"xsi_dask": marker})
        _carry_over(out, stage, groups)
        yield stage


def write_results(out: str | Path, groups: dict[str, xr.Dataset], *, overwrite: bool = False, progress: bool = False) -> Path:
    """Write each Dataset as group ``name`` of the results store ``out``, all groups committed as one.

    Lazy (dask) variables such as scores and abundance maps are computed and
    written one chunk (tile) at a time into a staged copy of the store
    (:func:`results_update`), which replaces ``out`` in one rename: a reader
    sees the old results or the new ones, and a failure or an interrupt
    leaves ``out`` as it was. The root's metadata are consolidated, so
    ``xarray.open_zarr(out, group=name)`` opens any group directly.

    Parameters
    ----------
    out : str or Path
        The results store (created if absent).
    groups : dict of str to xarray.Dataset
        The groups to write.
    overwrite : bool
        Replace groups that exist.
    progress : bool
        Show a progress display.

    Returns
    -------
    Path

    Raises
    ------
    StoreExistsError
        A group exists and ``overwrite`` is false.
    NotOurOutputError
        ``out`` exists and is not a results store (a file, a folder of other files, a montage store).
    OutputWriteError
        ``out`` cannot be written (unwritable or vanished folder, full disk).
    """
    out = Path(out)
    with results_update(out, groups, overwrite=overwrite) as stage:
        shown = out.name[1:].split(".tmp-")[0] if out.name.startswith(".") and ".tmp-" in out.name else out.name  # staged
        label = f"writing {shown} ({', '.join(groups)}, tile by tile)"
        with Progress(label, len(groups), unit="groups", enabled=progress) as bar:
            for name, ds in groups.items():
                _write_group(ds, stage, name, bar)
    return out


def write_group(stage: Path, name: str, ds: xr.Dataset, *, progress: bool = False) -> None:
    """Write ``ds`` as group ``name`` straight into a staged results store (from :func:`results_update` or
    :func:`~xsi_dask.io.store.atomic_output`) and consolidate its metadata; the stage's commit makes it visible.

    For a sequence of groups written into one stage (the analyses of a run): :func:`write_results` would stage
    the stage again for each group.
    """
    with Progress(f"writing {name} (tile by tile)", 1, unit="groups", enabled=progress) as bar:
        _write_group(ds, Path(stage), name, bar)
    _consolidate(Path(stage))


def open_result_groups(path: str | Path) -> dict[str, xr.Dataset]:
    """The groups of a results store (those of :data:`RESULT_GROUPS` it has), lazily, after checking it is one.

    Parameters
    ----------
    path : path
        A results store (the ``--out`` of decompose, nmf or run).

    Returns
    -------
    dict
        ``{"svd": Dataset, "nmf": Dataset, ...}``, the groups present (at least ``svd`` or ``nmf``).

    Raises
    ------
    InputFileNotFoundError
        Nothing at ``path``.
    StoreFormatError
        ``path`` is not an xsi_dask results store, or one with neither group.
    """
    p = Path(path)
    if not (p.is_symlink() or p.exists()):
        raise InputFileNotFoundError(f"{p}: no such results store (the --out of decompose, nmf or run)")
    if output_kind(p) != "results":
        raise StoreFormatError(f"{p} is {describe_path(p)}, not an xsi_dask results store "
                               "(written by xsi-dask decompose, nmf or run)")
    groups = {g: open_results(p, g) for g in RESULT_GROUPS if has_group(p, g)}
    if not {"svd", "nmf"} & set(groups):
        raise StoreFormatError(f"{p}: a results store with neither an svd nor an nmf group")
    return groups


def has_group(path: str | Path, group: str) -> bool:
    """Whether the results store ``path`` exists and has group ``group``.

    Raises
    ------
    NotOurOutputError
        ``path`` exists and is not a results store (nor an empty folder): results cannot go there.
    """
    p = Path(path)
    if (p.is_symlink() or p.exists()) and output_kind(p) != "results":
        check_output(p, "results", overwrite=True, probe=False)
    return (p / group / "zarr.json").is_file()


def open_results(path: str | Path, group: str) -> xr.Dataset:
    """Open one result group (``"svd"`` or ``"nmf"``) lazily."""
    return xr.open_zarr(str(path), group=group, consolidated=True)
