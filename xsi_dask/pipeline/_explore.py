"""``xsi-dask explore`` as a function: the automated experiment's record, figures and report in one folder.

:func:`xsi_dask.active.explore.explore` runs the experiment and writes
``explore.zarr``; :func:`xsi_dask.plotting.active.write_explore_report` draws it.
They sit in different layers (the algorithms below the figures), so the
command's folder, with both, is put together here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import NotOurOutputError, XSIError

__all__ = ["EXPLORE_RECORD", "explore_run"]

EXPLORE_RECORD = "explore.zarr"


def _check_folder(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, a folder whose report, figures or record are not ours to replace."""
    from ..active.explore import check_target
    from ..io.store import output_kind
    from ..plotting.active import EXPLORE_FIGURES
    from ..plotting.build import check_report_folder

    check_report_folder(out)  # a folder; report.html ours or absent; figures a folder or absent
    record = out / EXPLORE_RECORD
    check_target(record, overwrite=overwrite)  # ours without --overwrite: StoreExistsError; not ours: NotOurOutputError
    report = out / "report.html"
    if report.exists() and output_kind(record) != "explore":
        raise NotOurOutputError(f"{report} is the report of another xsi_dask command (no {EXPLORE_RECORD} beside it); "
                                "it is left as it is: choose another --out")
    figures = out / "figures"
    if figures.is_dir():
        other = sorted(p.name for p in figures.iterdir() if p.name not in EXPLORE_FIGURES)
        if other:
            raise NotOurOutputError(f"{figures} holds files explore does not write ({', '.join(other[:5])}); "
                                    "they are left as they are: choose another --out")


def explore_run(inputs: Sequence[str | Path], out: str | Path, *, overwrite: bool = False, title: str | None = None,
                progress: Callable[[str], None] | None = None, **params: Any) -> Path:
    """Run :func:`xsi_dask.active.explore.explore` into ``out/explore.zarr``, then its figures and ``out/report.html``.

    Parameters
    ----------
    inputs : sequence of path
        As :func:`~xsi_dask.active.explore.explore`.
    out : path
        The folder (created if missing): ``explore.zarr``, ``figures/``
        (``visits.png``, ``final_maps.png``, ``discovery.png``) and ``report.html``.
    overwrite : bool
        Replace the record, figures and report of an earlier ``explore`` in ``out``.
    title : str, optional
        The report's title.
    progress : callable, optional
        Called with a line per run.
    **params
        The keyword arguments of :func:`~xsi_dask.active.explore.explore`
        (``structure``, ``features``, ``scalarizer``, ``acquisition``, ``budget``, ...).

    Returns
    -------
    Path
        ``out/report.html``.

    Raises
    ------
    NotOurOutputError
        ``out`` is a file; or it holds a ``report.html`` not written by an
        earlier ``explore``, a ``figures`` folder with other files, or an
        ``explore.zarr`` that is not a record of ours.
    StoreExistsError
        ``out/explore.zarr`` exists and ``overwrite`` is false.
    OutputWriteError
        The figures or report cannot be written (the record, complete, is kept).
    ParameterError, NoSpectrumImageError, ...
        See :func:`~xsi_dask.active.explore.explore`.
    """
    from ..active.explore import explore
    from ..plotting.active import write_explore_report
    from ..plotting.build import report_write_error

    out = Path(out)
    _check_folder(out, overwrite)
    record = explore(inputs, out=out / EXPLORE_RECORD, overwrite=overwrite, progress=progress, **params)
    try:
        return write_explore_report(record, out, title=title)
    except OSError as exc:
        if isinstance(exc, XSIError):
            raise
        raise report_write_error(out, exc, kept=f"the record {record} is complete") from exc
