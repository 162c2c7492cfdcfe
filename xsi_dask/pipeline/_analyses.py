"""The analyses after the SVD and NMF (issue #13): rotation, MCR, ICA, segments, element maps and quantification, QC.

:func:`run_analyses` runs those an :class:`AnalysesParams` asks for on a results
store being written (``run``'s staged store, or a staged update of an existing
store for the ``xsi-dask rotate|mcr|ica|segment|quantify|qc`` commands), each
written as its own group. The rotation, MCR and ICA read the stored scores, not
the counts; k-means, the element maps, the MCR residual and QC's residual read
the counts once each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ParameterError
from ._params import AnalysesParams, ClusterParams, NMFParams

__all__ = ["AnalysesDone", "Quantification", "analyse_results", "analyses_groups", "check_analyses", "run_analyses"]


@dataclass
class AnalysesDone:
    """What :func:`run_analyses` wrote: the groups, seconds and passes over the counts of each step, summary lines."""

    groups: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)
    lines: dict[str, str] = field(default_factory=dict)


def analyses_groups(params: AnalysesParams) -> list[str]:
    """The results groups ``params`` writes, in order."""
    out = []
    if params.rotate:
        out.append("rotation")
    if params.mcr:
        out.append("mcr")
    if params.ica:
        out.append("ica")
    if params.segments:
        out.append("segments")
    if params.quantify:
        out += ["elements", "quantification"]
    if params.qc:
        out.append("qc")
    return out


def _elements(montage, elements):
    """The elements to map: those given, else the files' (None: :func:`element_lines` reads them), else for a
    simulated store those of its preset's phases from O up (C and N Ka lie at the zero peak's edge)."""
    if elements:
        return list(elements)
    if montage.attrs.get("elements"):
        return None
    from ..montage.view import montage_store

    sim = montage_store(montage).attrs.get("simulation") or {}
    found = set(sim.get("elements") or ())
    if not found and sim.get("preset"):  # a store simulated before the simulator recorded its elements
        from ..testing.presets import PRESETS

        found = {el for ph in PRESETS[sim["preset"]].phases for el in ph.composition}
    if not found:
        return None
    import xraydb

    return sorted((el for el in found if xraydb.atomic_number(el) >= 8), key=xraydb.atomic_number)


def _kfactors(params: AnalysesParams, montage, table):
    """The k-factors of the quantification: the user's file, else the simulator's for a simulated store."""
    from ..montage.view import montage_store
    from ..quantify import read_kfactors

    if params.k_factors is not None:
        return read_kfactors(params.k_factors), f"file {params.k_factors}"
    st = montage_store(montage)
    sim = st.attrs.get("simulation")
    if not sim:
        raise ParameterError("the quantification needs k-factors: give --k-factors FILE (a YAML or CSV of line,k-factor); "
                             f"only a simulated store ({st.path} is not one) has its own")
    from ..testing.kfactors import simulator_kfactors

    return simulator_kfactors(table, store=st), "the simulator's physics"


class Quantification(NamedTuple):
    """What the quantification will use, found by :func:`check_analyses`: the lines and windows, the k-factors and
    where they come from."""

    table: Any
    kfactors: Any
    source: str


def check_analyses(params: AnalysesParams, montage, elements, available=("svd", "nmf"), *, k: int | None = None,
                   svd_components: int | None = None) -> Quantification | None:
    """Refuse, before any pass, what the analyses cannot do: segments of a group that will not be there, a
    quantification without elements or k-factors (or k-factors without one of its lines), a rotation, MCR or
    ICA of more components than the SVD keeps. ``available``: the groups there before the analyses run.

    Returns the quantification's lines and k-factors (None without a quantification, or without ``montage``),
    for :func:`run_analyses`."""
    there = set(available) | set(analyses_groups(params))
    if params.mcr and "svd" not in there:
        raise ParameterError("MCR starts from the SVD's stored scores: the results hold no svd group")
    if k is not None and svd_components is not None and (params.rotate or params.mcr or params.ica):
        if not 2 <= k <= svd_components:
            raise ParameterError(f"the rotation, MCR and ICA take as many components as the NMF's {k} endmembers: "
                                 f"at least 2 and at most the SVD's {svd_components} (--components)")
    if params.segments and params.segment_on not in there:
        raise ParameterError(f"the segments are of the {params.segment_on} group's maps, which the results do not hold"
                             + (" (ask for --mcr too)" if params.segment_on == "mcr" else ""))
    if params.quantify and not ({"nmf", "mcr"} & there):
        raise ParameterError("the quantification is of endmember spectra: the results hold no nmf or mcr group")
    if not params.quantify or montage is None:
        return None
    from ..quantify import element_lines
    from ..quantify._cliff_lorimer import kfactor_array

    table = element_lines(_elements(montage, elements), montage)
    kf, source = _kfactors(params, montage, table)
    kfactor_array(kf, list(table.lines), list(table.elements))  # every line has its k-factor
    return Quantification(table, kf, source)


def run_analyses(results: Path, montage, params: AnalysesParams, k: int, *, elements=None, progress: bool = True,
                 available=("svd", "nmf"), quant: Quantification | None = None) -> AnalysesDone:
    """Run the analyses ``params`` asks for on the results store ``results``; each group written by ``write``.

    Parameters
    ----------
    results : Path
        The results store being written (holding ``svd`` and, for most, ``nmf``).
    montage : xarray.DataArray
        The analysis view the results were computed on (for the passes over the counts).
    params : AnalysesParams
    k : int
        Components of the rotation, MCR and ICA (the NMF's endmembers).
    elements : sequence of str, optional
        Elements of the element maps (default: the files').
    available : sequence of str
        The groups ``results`` holds before the analyses (the QC's residual is of the MCR's model where
        there is one, else the NMF's, else the QC is of the dose alone).
    quant : Quantification, optional
        The lines and k-factors :func:`check_analyses` found (default: found here).

    Returns
    -------
    AnalysesDone
    """
    from ..decomposition import ica, mcr, rotate, segment
    from ..io.results import open_results, write_group

    done = AnalysesDone()

    def step(name: str, fn, *args, **kw):
        t = time.perf_counter()
        ds = fn(*args, **kw)
        write_group(results, name, ds, progress=progress)  # into the stage the caller commits
        done.groups.append(name)
        done.timings[name] = time.perf_counter() - t
        done.passes[name] = int(ds.attrs.get("passes", 0))
        return ds

    there = set(available)
    n_svd = int(open_results(results, "svd").sizes["component"]) if "svd" in there else 0
    if (params.rotate or params.mcr or params.ica) and k > n_svd:  # endmembers from the data beyond the SVD's k
        done.lines["components"] = (f"the rotation, MCR and ICA take the SVD's {n_svd} components, fewer than the "
                                    f"{k} endmembers (--components sets the SVD's)")
        k = n_svd
    start = None
    if params.rotate:
        ds = step("rotation", rotate, results, k, progress=progress)
        start = ds["rotation"].values  # MCR's start: not computed twice
        done.lines["rotation"] = (f"{params.rotate} rotation of {k} components: {ds.attrs.get('n_iter')} iterations, "
                                  f"{ds.attrs.get('map_passes', '?')} passes over the scores, none over the counts")
    if params.mcr:
        ds = step("mcr", mcr, results, k, rotation=start, progress=progress)
        done.lines["mcr"] = (f"MCR-ALS of {k} components: {ds.attrs.get('n_iter')} iterations (no pass over the counts), "
                             f"{ds.attrs.get('passes', '?')} pass(es) for the residual")
    if params.ica:
        ds = step("ica", ica, results, k)
        done.lines["ica"] = f"ICA of {k} components on a sample of {ds.attrs.get('sample_size', '?')} pixels"
    if params.segments:
        # the SVD's top k scores (the NMF's endmembers): the further stored components are noise
        ds = step("segments", segment, results, params.segments, group=params.segment_on,
                  n_components=k if params.segment_on == "svd" else None)
        done.lines["segments"] = f"k-means of the {params.segment_on} maps into {params.segments} segments"
    if params.quantify:
        from ..quantify import element_maps

        quant = quant or check_analyses(params, montage, elements, available)
        step("elements", element_maps, montage, table=quant.table)
        step("quantification", _quantification, results, quant.kfactors, quant.table, quant.source)
        done.lines["quantification"] = f"Cliff-Lorimer with k-factors from {quant.source}"
    if params.qc:
        from ..qc import tile_qc

        models = there | set(done.groups)
        group = "mcr" if "mcr" in models else "nmf" if "nmf" in models else None
        ds = step("qc", tile_qc, montage, results=None if group is None else results, group=group or "nmf",
                  threshold=params.qc_threshold)
        flagged = [int(t) for t in ds["tile"].values[ds["flagged"].values]]
        done.lines["qc"] = f"tile QC: {len(flagged)} tile(s) flagged" + (f": {flagged}" if flagged else "")
    return done


def _quantification(results: Path, kfactors, table, source: str):
    """Cliff-Lorimer of the endmembers (the MCR's, else the NMF's) and, per pixel, of the stored element maps."""
    from ..io.results import open_results
    from ..quantify import quantify, quantify_results

    q = quantify_results(results, kfactors, table=table, k_factor_source=source)
    maps = quantify(open_results(results, "elements")["intensity"], kfactors)
    for kind in ("atomic_percent", "weight_percent"):
        m = maps[kind].transpose("tile", "y", "x", "element").sel(element=q["element"].values)
        q[f"map_{kind}"] = m.drop_vars([c for c in m.coords if c not in m.dims and c not in q.coords and
                                       c not in ("row", "col", "source", "stage_y", "stage_x")])
    q["map_atomic_percent"].attrs["description"] = "Cliff-Lorimer per pixel of the element maps (NaN: no net counts)"
    return q


def _default_k(groups: dict[str, Any]) -> int:
    """The components of a rotation, MCR or ICA on a results store: the NMF's endmembers, else from the SVD."""
    if "nmf" in groups:
        return int(groups["nmf"].sizes["component"])
    from ._run import nmf_components

    return nmf_components(groups["svd"], NMFParams())[0]


def analyse_results(results: str | Path, params: AnalysesParams, *, components: int | None = None,
                    elements=None, cluster: ClusterParams | None = None, overwrite: bool = False,
                    progress: bool = True) -> AnalysesDone:
    """The ``xsi-dask rotate|mcr|ica|segment|quantify|qc`` commands: analyses added to an existing results store.

    The new groups are written into a staged copy of the store that replaces it
    in one rename when all are complete (:func:`xsi_dask.io.results.results_update`).

    Raises
    ------
    StoreExistsError
        A group to write is there already and ``overwrite`` is false (before any work).
    StoreFormatError
        ``results`` is not a results store, or lacks the ``svd`` group these analyses start from.
    """
    from ..engine.maps import results_view
    from ..errors import StoreFormatError
    from ..io.results import _consolidate, check_results_target, open_result_groups, results_update
    from ._run import _client, _defaults

    (cluster,) = _defaults(cluster=cluster)
    groups = open_result_groups(results)
    on_scores = bool(params.rotate or params.mcr or params.ica or (params.segments and params.segment_on == "svd"))
    if "svd" not in groups and on_scores:
        raise StoreFormatError(f"{results}: no svd group: the rotation, MCR, ICA and segments of the scores start from "
                               "the SVD's stored scores (xsi-dask decompose, or run)")
    if params.segments and params.segment_on not in groups:
        raise StoreFormatError(f"{results}: no {params.segment_on} group to segment")
    k = (_default_k(groups) if components is None else int(components)) if on_scores else 0
    names = analyses_groups(params)
    out = check_results_target(results, names, overwrite=overwrite)
    # the view of the group analysed: the model's for the QC and the quantification, the SVD's for the scores
    model = next((g for g in ("mcr", "nmf") if g in groups), None)
    base = groups[model] if (params.qc or params.quantify) and model and not on_scores else groups.get("svd", groups.get(model))
    montage = results_view(base)
    if elements is None and base.attrs.get("elements"):
        elements = list(base.attrs["elements"])
    quant = check_analyses(params, montage, elements, available=tuple(groups), k=k if on_scores else None,
                           svd_components=groups["svd"].sizes["component"] if on_scores else None)
    with results_update(out, names, overwrite=overwrite) as staged, _client(cluster):
        _consolidate(staged)  # the kept groups readable as the analyses open them (the commit consolidates again)
        return run_analyses(staged, montage, params, k, elements=elements, progress=progress, available=tuple(groups),
                            quant=quant)

