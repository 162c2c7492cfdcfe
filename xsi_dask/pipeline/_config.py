"""``run.yaml``: every parameter of a run, written by :func:`run` and read back to repeat it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .._version import __version__
from ..errors import InputFileNotFoundError, ParameterError
from ._params import AnalysesParams, ClusterParams, LayoutParams, NMFParams, SVDParams, ViewParams

__all__ = ["RunConfig", "load_run_config", "save_run_config"]

_SECTIONS = {"layout": LayoutParams, "view": ViewParams, "svd": SVDParams, "nmf": NMFParams, "analyses": AnalysesParams,
             "cluster": ClusterParams}


@dataclass(frozen=True)
class RunConfig:
    """The parameters of one run: absolute input paths, the output folder, and the six parameter objects.

    A run.yaml written before ``view`` existed has no ``view`` section: it reads back as ``ViewParams()``
    (today's defaults: the zero peak excluded for EDS); one without ``analyses`` reads back as
    ``AnalysesParams()`` (the tile QC only).
    """

    inputs: tuple[Path, ...]
    out: Path
    layout: LayoutParams = field(default_factory=LayoutParams)
    view: ViewParams = field(default_factory=ViewParams)
    svd: SVDParams = field(default_factory=SVDParams)
    nmf: NMFParams = field(default_factory=NMFParams)
    analyses: AnalysesParams = field(default_factory=AnalysesParams)
    cluster: ClusterParams = field(default_factory=ClusterParams)
    xsi_dask_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return {
            "xsi_dask_version": self.xsi_dask_version,
            "inputs": [str(p) for p in self.inputs],
            "out": str(self.out),
            **{name: getattr(self, name).to_dict() for name in _SECTIONS},
        }

    def run(self, out: str | Path | None = None, *, overwrite: bool = False, progress: bool = True):
        """Repeat the run, into ``out`` (default: the recorded folder)."""
        from ._run import run

        return run(
            list(self.inputs), self.out if out is None else out, layout=self.layout, view=self.view, svd=self.svd, nmf=self.nmf,
            analyses=self.analyses, cluster=self.cluster, overwrite=overwrite, progress=progress,
        )


def save_run_config(path: str | Path, config: RunConfig) -> Path:
    """Write ``config`` as YAML (``yaml.safe_dump``) to ``path``."""
    path = Path(path)
    path.write_text(
        "# xsi_dask run parameters: repeat with  xsi-dask run --config THIS_FILE [--out DIR] [--overwrite]\n"
        + yaml.safe_dump(config.to_dict(), sort_keys=False)
    )
    return path


def load_run_config(path: str | Path) -> RunConfig:
    """Read a ``run.yaml`` back into a :class:`RunConfig` (the parameter objects validate it).

    Raises
    ------
    InputFileNotFoundError
        No such file.
    ParameterError
        Not a mapping, unknown keys, or invalid values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"run configuration not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParameterError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: expected a mapping of run parameters")
    known = {"xsi_dask_version", "inputs", "out", *_SECTIONS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ParameterError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    inputs = data.get("inputs") or []
    if not isinstance(inputs, list) or not all(isinstance(p, str) for p in inputs):
        raise ParameterError(f"{path}: inputs must be a list of paths")
    if not isinstance(data.get("out"), str):
        raise ParameterError(f"{path}: out must be a path")
    sections = {}
    for name, cls in _SECTIONS.items():
        value = data.get(name) or {}
        if not isinstance(value, dict):
            raise ParameterError(f"{path}: {name} must be a mapping")
        sections[name] = cls.from_dict(value)
    return RunConfig(
        inputs=tuple(Path(p) for p in inputs), out=Path(data["out"]),
        xsi_dask_version=str(data.get("xsi_dask_version", "unknown")), **sections,
    )
