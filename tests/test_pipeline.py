"""The pipeline from Python equals `xsi-dask run`; run.yaml repeats a run; validation before work; store reuse."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xsi_dask
from xsi_dask import pipeline
from xsi_dask.cli.main import main
from xsi_dask.errors import LayoutError, ParameterError, StoreExistsError, XSIError, XSIWarning
from xsi_dask.pipeline import ClusterParams, LayoutParams, NMFParams, SVDParams, ViewParams

from .conftest import EDS

P45 = EDS / "P45_the_default_job.bcf"


def _assert_same_results(a: Path, b: Path) -> None:
    for group in ("svd", "nmf"):
        da, db = xr.open_zarr(a, group=group), xr.open_zarr(b, group=group)
        assert set(da.variables) == set(db.variables), group
        for name in da.variables:
            x, y = da[name].values, db[name].values
            if np.issubdtype(x.dtype, np.floating):
                np.testing.assert_allclose(x, y, rtol=1e-12, atol=0, err_msg=f"{group}/{name}")
            else:
                np.testing.assert_array_equal(x, y, err_msg=f"{group}/{name}")


# ---- parameters: validated when built ----

@pytest.mark.parametrize(
    "make",
    [
        lambda: NMFParams(components=0),
        lambda: NMFParams(max_iter=0),
        lambda: NMFParams(tol=-1e-3),
        lambda: NMFParams(tol=float("nan")),
        lambda: NMFParams(loss="l1"),
        lambda: NMFParams(init="svd"),
        lambda: NMFParams(sparsity=2.0, loss="frobenius"),
        lambda: NMFParams(components=2.5),
        lambda: SVDParams(components=0),
        lambda: SVDParams(solver="arpack"),
        lambda: SVDParams(power_iters=-1),
        lambda: SVDParams(poisson="yes"),
        lambda: SVDParams(seed=-1),
        lambda: ClusterParams(workers=0),
        lambda: ClusterParams(threads_per_worker=0),
        lambda: ClusterParams(memory_limit="lots"),
        lambda: ClusterParams(scheduler="tcp://127.0.0.1:8786", workers=2),
        lambda: LayoutParams(grid="2x2", split="2x2"),
        lambda: LayoutParams(grid=(1, 2, 3)),
        lambda: ViewParams(energy_range="5:1"),
        lambda: ViewParams(energy_range=(2.0, 2.0)),
        lambda: ViewParams(energy_range="a:3"),
        lambda: ViewParams(energy_range="1:2:3"),
        lambda: ViewParams(energy_range=(float("nan"), 3)),
        lambda: ViewParams(energy_range=(True, 3)),
        lambda: ViewParams(energy_range=4.0),
        lambda: ViewParams(bin=0),
        lambda: ViewParams(bin=2.0),
        lambda: ViewParams(keep_zero_peak="yes"),
        lambda: ViewParams(elements="Fe,Xx"),
        lambda: ViewParams(elements=" , "),
        lambda: ViewParams(elements=[26]),
    ],
)
def test_parameter_errors(make):
    with pytest.raises((ParameterError, LayoutError)) as info:  # a bad grid is the layout parser's LayoutError
        make()
    assert isinstance(info.value, XSIError) and isinstance(info.value, ValueError)


def test_parameters_normalised():
    assert LayoutParams(grid="2x3").grid == (2, 3) and LayoutParams(split=[3, 4]).split == (3, 4)
    assert LayoutParams(manifest="m.csv").manifest == Path("m.csv").resolve()
    assert LayoutParams().kind == "single" and LayoutParams(split="3x4").kind == "split"
    with pytest.raises(LayoutError):  # the one parser of "RxC"
        LayoutParams(split="3by4")
    assert NMFParams(tol=0).tol == 0.0 and isinstance(NMFParams(tol=0).tol, float)
    assert SVDParams.from_dict(SVDParams(components=3).to_dict()) == SVDParams(components=3)
    with pytest.raises(ParameterError, match="unknown"):
        NMFParams.from_dict({"components": 2, "iterations": 3})
    assert NMFParams().components is None  # from the data (run) or 4 (nmf_store)


def test_view_parameters_normalised_and_recorded(tmp_path):
    assert ViewParams() == ViewParams(energy_range=":", elements=None)
    assert ViewParams().energy_range is None and ViewParams().bin == 1 and not ViewParams().keep_zero_peak
    assert ViewParams(energy_range="0.2:").energy_range == (0.2, None)
    assert ViewParams(energy_range=" :8 ").energy_range == (None, 8.0)
    assert ViewParams(energy_range=[0.5, 10]).energy_range == (0.5, 10.0)
    assert ViewParams(elements="fe, CR,Fe,mn").elements == ("Fe", "Cr", "Mn")  # case-insensitive, each once, in order
    assert ViewParams(elements=["Ag", "Al"]).elements == ("Ag", "Al")
    v = ViewParams(energy_range="0.3:9.5", keep_zero_peak=True, bin=4, elements="Ag,Al")
    assert v.to_dict() == {"energy_range": [0.3, 9.5], "keep_zero_peak": True, "bin": 4, "elements": ["Ag", "Al"]}
    assert ViewParams.from_dict(v.to_dict()) == v
    cfg = pipeline.RunConfig(inputs=(tmp_path / "a.bcf",), out=tmp_path / "o", view=v, nmf=NMFParams())
    back = pipeline.load_run_config(pipeline.save_run_config(tmp_path / "run.yaml", cfg))
    assert back.view == v and back.nmf.components is None
    text = (tmp_path / "run.yaml").read_text()
    assert "view:" in text and "bin: 4" in text and "components: null" in text
    # a run.yaml of an earlier version (no view section) reads back with the default view
    (tmp_path / "old.yaml").write_text(text.split("view:")[0] + "svd: {}\n")
    assert pipeline.load_run_config(tmp_path / "old.yaml").view == ViewParams()


def test_nmf_components_from_the_data():
    """The SVD's n_significant within the floor and the cap (config keys); given wins; absent: 4 with a warning."""
    import dask

    def svd(**attrs):
        return xr.Dataset(attrs=attrs)

    assert pipeline.nmf_components(svd(n_significant=5), NMFParams()) == (5, "n_significant")
    assert pipeline.nmf_components(svd(n_significant=1), NMFParams()) == (2, "n_significant")  # the floor
    assert pipeline.nmf_components(svd(n_significant=40), NMFParams()) == (12, "n_significant")  # the cap
    assert pipeline.nmf_components(svd(n_significant=5), NMFParams(components=3)) == (3, "given")
    with dask.config.set({"xsi-dask.nmf-components-min": 1, "xsi-dask.nmf-components-max": 3}):
        assert pipeline.nmf_components(svd(n_significant=1), NMFParams()) == (1, "n_significant")
        assert pipeline.nmf_components(svd(n_significant=7), NMFParams()) == (3, "n_significant")
    with dask.config.set({"xsi-dask.nmf-components-min": 5, "xsi-dask.nmf-components-max": 3}):
        with pytest.raises(ParameterError, match="nmf-components-min"):
            pipeline.nmf_components(svd(n_significant=4), NMFParams())
    with pytest.warns(XSIWarning, match="no n_significant"):
        assert pipeline.nmf_components(svd(), NMFParams()) == (4, "default")


@pytest.mark.usefixtures("needs_data")
@pytest.mark.parametrize("flags", [["--nmf-components", "0"], ["--workers", "0"], ["--max-iter", "0"],
                                   ["--split", "3by4"], ["--tol", "-1"]])
def test_cli_refuses_bad_parameters_before_any_work(tmp_path, capsys, flags):
    out = tmp_path / "run"
    t = time.perf_counter()
    assert main(["run", str(P45), "--split", "3x4", "--out", str(out), *flags]) == 2
    assert time.perf_counter() - t < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xsi-dask run: error: "), err
    assert not out.exists()


def test_python_refuses_bad_parameters_before_any_work(tmp_path):
    with pytest.raises(ParameterError):
        pipeline.run([], tmp_path / "run", nmf=NMFParams(components=0))  # the object itself is refused
    with pytest.raises(ParameterError):
        pipeline.run([], tmp_path / "run")  # no input
    with pytest.raises(ParameterError):
        pipeline.run(["a.bcf"], tmp_path / "run", svd={"components": 3})  # not a parameter object
    assert not (tmp_path / "run").exists()


def test_config_flag_combinations(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "run.yaml"), "--split", "3x4", "--components", "3"]) == 2
    err = capsys.readouterr().err
    assert "--split" in err and "--components" in err and "only --out, --overwrite and --quiet" in err
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["run", str(tmp_path)]) == 2  # no --out, no --config
    assert "--out" in capsys.readouterr().err


# ---- the same run from Python, from the command line, and from run.yaml ----

def test_run_equals_cli_and_config_repeats_it(tmp_path, capsys):
    from xsi_dask.testing.simulate import simulate

    store = simulate(tmp_path / "m.zarr", tiles="2x2", tile_shape="32x32", channels=256, counts_per_pixel=20, seed=1,
                     progress=False)
    svd, nmf = SVDParams(components=5, seed=3), NMFParams(components=3, max_iter=15, seed=3)
    res = pipeline.run(store.path, tmp_path / "py", svd=svd, nmf=nmf, cluster=ClusterParams(workers=1), progress=False)
    assert res.results == (tmp_path / "py" / "results.zarr").resolve() and res.report.is_file()
    assert res.store == Path(store.path).resolve() and {p.stem for p in res.figures} >= {"scree", "nmf_rgb"}
    assert set(res.passes) == {"svd", "nmf", "qc"} and res.timings["SVD"] > 0 and res.passes["qc"] == 1  # the QC residual

    cli = ["run", str(store.path), "--out", str(tmp_path / "cli"), "--components", "5", "--nmf-components", "3",
           "--max-iter", "15", "--seed", "3", "--workers", "1", "--quiet"]
    assert main(cli) == 0
    _assert_same_results(res.results, tmp_path / "cli" / "results.zarr")

    cfg = pipeline.load_run_config(tmp_path / "py" / "run.yaml")
    assert cfg.svd == svd and cfg.nmf == nmf and cfg.cluster == ClusterParams(workers=1) and cfg.layout == LayoutParams()
    assert cfg.inputs == (Path(store.path).resolve(),) and cfg.xsi_dask_version == xsi_dask.__version__
    assert pipeline.load_run_config(tmp_path / "cli" / "run.yaml").nmf == nmf

    assert main(["run", "--config", str(tmp_path / "py" / "run.yaml"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    _assert_same_results(res.results, tmp_path / "again" / "results.zarr")
    assert pipeline.load_run_config(tmp_path / "again" / "run.yaml").out == (tmp_path / "again").resolve()

    # the SVD is computed once: NMF starts from it, so no range-finder passes: one pass for NNDSVDa's W, the
    # initial and final loss passes (the loss in between rides on the iterations) and one pass per iteration
    s, n = xr.open_zarr(res.results, group="svd"), xr.open_zarr(res.results, group="nmf")
    assert res.passes == {"svd": s.attrs["passes"], "nmf": n.attrs["passes"], "qc": 1}
    assert n.attrs["init"] == "poisson-nndsvda (from the given SVD)" and "computed once" in res.nmf_init
    assert n.attrs["n_iter"] == 15 and n.attrs["passes"] == 1 + 2 + n.attrs["n_iter"]
    report = res.report.read_text()
    assert "passes: SVD" in report and "passes: NMF" in report and "computed once" in report

    # results.zarr is refused at the start without --overwrite: nothing is computed
    t = time.perf_counter()
    assert main(cli) == 2
    assert time.perf_counter() - t < 5 and "--overwrite" in capsys.readouterr().err


def test_nmf_computes_its_own_init_when_the_svd_does_not_fit(tmp_path):
    from xsi_dask.testing.simulate import simulate

    store = simulate(tmp_path / "m.zarr", tiles="1x2", tile_shape="32x32", channels=256, counts_per_pixel=20, seed=1,
                     progress=False)
    res = pipeline.run(store.path, tmp_path / "r", svd=SVDParams(components=2), nmf=NMFParams(components=3, max_iter=5),
                       cluster=ClusterParams(workers=1), progress=False)
    assert "fewer than the 3 endmembers" in res.nmf_init
    n = xr.open_zarr(res.results, group="nmf")
    assert n.attrs["init"] == "poisson-nndsvda"
    # nmf ran its own randomized SVD (as many passes as the run's, default power iterations) before the same passes
    assert res.passes["nmf"] == res.passes["svd"] + 1 + 2 + n.attrs["n_iter"]
    assert "fewer than the 3 endmembers" in res.report.read_text()


# ---- reuse of out/montage.zarr ----

@pytest.mark.usefixtures("needs_data")
def test_store_reuse_compares_inputs_and_layout(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    st = xsi_dask.ingest(P45, out / "montage.zarr", split="3x4", progress=False)
    files = st.attrs["layout"].pop("files")
    assert st.attrs["layout"] == {"kind": "split", "grid": None, "split": [3, 4], "manifest": None}
    assert files == [{"path": str(P45.resolve()), "size": P45.stat().st_size, "mtime_ns": P45.stat().st_mtime_ns}]
    assert [s["path"] for s in st.attrs["sources"]] == [str(P45.resolve())]
    small = ["--components", "3", "--nmf-components", "2", "--max-iter", "5", "--workers", "1", "--quiet"]

    copy = tmp_path / "copy.bcf"
    shutil.copyfile(P45, copy)
    for args, why in [
        ([str(P45), "--split", "4x3"], "split is 3x4, not 4x3"),
        ([str(P45), "--grid", "1x1"], "laid out by split, not grid"),
        ([str(P45)], "laid out by split, not single"),
        ([str(copy), "--split", "3x4"], "its sources are"),
    ]:
        t = time.perf_counter()
        assert main(["run", *args, "--out", str(out), *small]) == 2
        err = capsys.readouterr().err
        assert why in err and "--overwrite" in err and "another --out" in err, err
        assert time.perf_counter() - t < 5
        assert sorted(p.name for p in out.iterdir()) == ["montage.zarr"]

    # the same file by a relative path and the same split: reused, not ingested again
    monkeypatch.chdir(EDS)
    assert main(["run", P45.name, "--split", "3x4", "--out", str(out), *small]) == 0
    assert f"reusing the montage store {out / 'montage.zarr'}" in capsys.readouterr().out
    assert xsi_dask.MontageStore(out / "montage.zarr").attrs["ingest_seconds"] == st.attrs["ingest_seconds"]
    assert pipeline.load_run_config(out / "run.yaml").inputs == (P45.resolve(),)


@pytest.mark.usefixtures("needs_data")
def test_manifest_layout_is_recorded_with_its_hash(tmp_path):
    from xsi_dask.io.layout import file_sha256

    man = tmp_path / "tiles.csv"
    man.write_text(f"path,row,col\n{P45},0,0\n")
    st = xsi_dask.ingest(None, tmp_path / "run" / "montage.zarr", manifest=man, progress=False)
    assert {k: v for k, v in st.attrs["layout"].items() if k != "files"} == {
        "kind": "manifest", "grid": None, "split": None, "manifest": {"path": str(man.resolve()), "sha256": file_sha256(man)}}
    man.write_text(f"# stage_units: um\npath,row,col\n{P45},0,0\n")  # same tiles, another file content
    with pytest.raises(StoreExistsError, match="content"):
        pipeline.run([], tmp_path / "run", layout=LayoutParams(manifest=man), progress=False)


def test_clean_command_calls_the_scratch_cleaner(tmp_path, capsys, monkeypatch):
    import sys
    import types

    calls = []
    fake = types.ModuleType("xsi_dask.engine.scratch")
    fake.clean = lambda store: calls.append(store) or [Path(store).parent / ".scratch-dead-1"]
    monkeypatch.setitem(sys.modules, "xsi_dask.engine.scratch", fake)
    assert main(["clean", str(tmp_path / "m.zarr")]) == 0
    assert calls == [str(tmp_path / "m.zarr")]
    assert f"removed {tmp_path / '.scratch-dead-1'}" in capsys.readouterr().out
    fake.clean = lambda store: []
    assert main(["clean", str(tmp_path / "m.zarr")]) == 0
    assert "no scratch folders" in capsys.readouterr().out


@pytest.mark.usefixtures("needs_data")
def test_a_source_changed_in_place_is_not_reused(tmp_path, capsys):
    """Same path, same layout, but the file was rewritten (another size or modification time): refused."""
    src = tmp_path / "map.bcf"
    shutil.copyfile(P45, src)
    out = tmp_path / "run"
    xsi_dask.ingest(src, out / "montage.zarr", split="3x4", progress=False)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    args = ["run", str(src), "--split", "3x4", "--out", str(out), "--components", "3", "--nmf-components", "2",
            "--max-iter", "5", "--workers", "1", "--quiet"]
    assert main(args) == 2
    assert f"its source {src} changed since it was ingested" in capsys.readouterr().err
    src.unlink()
    shutil.copyfile(P45, src)
    with open(src, "ab") as f:
        f.write(b"\0")
    assert main(args) == 2
    assert "changed since it was ingested" in capsys.readouterr().err


# ---- the analysis view: energy range, zero peak, bin, elements ----

@pytest.fixture(scope="module")
def zp_store(tmp_path_factory):
    """A small simulated EDS montage whose counts are 15 % zero peak (as the Bruker 50x50 map's 17 %)."""
    from xsi_dask.testing.simulate import simulate

    return simulate(tmp_path_factory.mktemp("zp") / "m.zarr", tiles="1x2", tile_shape="32x32", channels=256,
                    counts_per_pixel=40, zero_peak=0.15, seed=4, progress=False)


class _Handed(Exception):
    """Raised by the stand-in for decompose/nmf once it has been handed its view."""


@pytest.mark.parametrize("how", ["run", "decompose", "nmf"])
def test_the_pipeline_hands_the_analysis_view_to_the_algorithms(zp_store, tmp_path, monkeypatch, how):
    """What decompose/nmf receive is analysis_view(open_montage(store), ...) of the flags: the same dask graph."""
    import contextlib

    from xsi_dask.montage.prepare import analysis_view
    from xsi_dask.pipeline import _run

    handed = []

    def stand_in(montage, *a, **k):
        handed.append(montage)
        raise _Handed

    monkeypatch.setattr(xsi_dask, "decompose", stand_in)
    monkeypatch.setattr(xsi_dask, "nmf", stand_in)
    monkeypatch.setattr(_run, "_client", lambda cluster: contextlib.nullcontext())
    flags = ["--energy-range", "0.1:2.0", "--bin", "2", "--elements", "Fe,Cr", "--quiet"]
    with pytest.raises(_Handed):
        main([how, str(zp_store.path), "--out", str(tmp_path / "o"), *flags])
    (view,) = handed
    want = analysis_view(xsi_dask.open_montage(zp_store), energy_range=(0.1, 2.0), bin=2)
    assert view.data.name == want.data.name and view.sizes == want.sizes == {"tile": 2, "y": 16, "x": 16, "energy": 182}
    assert view.attrs["bin"] == 2 and view.attrs["energy_range"] == want.attrs["energy_range"]
    assert view.attrs["energy_range"][0] >= view.attrs["zero_peak_cutoff"] > 0.18  # the zero peak is out by default
    handed.clear()
    with pytest.raises(_Handed):
        main([how, str(zp_store.path), "--out", str(tmp_path / "o2"), "--keep-zero-peak", "--quiet"])
    assert handed[0].data.name == xsi_dask.open_montage(zp_store).data.name  # nothing to crop: the stored view


# The tests below need the engine to honour energy ranges and binning (issue #10 item 1-2; on this branch alone
# decompose refuses such views with ViewError).

def test_run_with_view_flags_and_components_from_the_data(zp_store, tmp_path, capsys):
    from xsi_dask.montage.prepare import zero_peak_cutoff

    out = tmp_path / "run"
    args = ["run", str(zp_store.path), "--out", str(out), "--energy-range", ":2.2", "--bin", "2", "--elements", "Fe,Cr,Mn",
            "--components", "6", "--solver", "gram", "--max-iter", "5", "--workers", "1", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    s, n = xr.open_zarr(out / "results.zarr", group="svd"), xr.open_zarr(out / "results.zarr", group="nmf")
    cutoff = zero_peak_cutoff(xsi_dask.open_montage(zp_store))
    for ds in (s, n):
        assert ds.attrs["bin"] == 2 and ds.attrs["elements"] == ["Fe", "Cr", "Mn"]
        lo, hi = ds.attrs["energy_range"]
        assert cutoff <= lo < cutoff + 0.01 and 2.19 <= hi <= 2.2  # the zero peak excluded by default
        assert float(ds["energy"].min()) == pytest.approx(lo) and float(ds["energy"].max()) == pytest.approx(hi)
    k_sig = int(s.attrs["n_significant"])
    k = min(max(k_sig, 2), 12)
    assert n.attrs["n_components_source"] == "n_significant" and n.sizes["component"] == k
    assert f"NMF endmembers   {k} (from the data: n_significant = {k_sig}" in text
    assert n["abundances"].sizes["y"] == 16  # binned 2x2
    cfg = pipeline.load_run_config(out / "run.yaml")
    assert cfg.view == ViewParams(energy_range=(None, 2.2), bin=2, elements="Fe,Cr,Mn") and cfg.nmf.components is None
    # the same view by decompose into its own results store: the same SVD
    assert main(["decompose", str(zp_store.path), "--out", str(tmp_path / "d.zarr"), "--energy-range", ":2.2", "--bin", "2",
                 "--components", "6", "--solver", "gram", "--workers", "1", "--quiet"]) == 0
    d = xr.open_zarr(tmp_path / "d.zarr", group="svd")
    np.testing.assert_allclose(d["explained_variance_ratio"].values, s["explained_variance_ratio"].values, rtol=1e-10)


def test_the_zero_peak_is_excluded_by_default_and_kept_on_request(zp_store, tmp_path):
    """By default no channel below the cutoff reaches the SVD; --keep-zero-peak analyses the whole axis, where the
    zero peak (15 % of the counts) dominates the mean spectrum of the first loading."""
    assert main(["decompose", str(zp_store.path), "--out", str(tmp_path / "a.zarr"), "--components", "3",
                 "--workers", "1", "--quiet"]) == 0
    assert main(["decompose", str(zp_store.path), "--out", str(tmp_path / "b.zarr"), "--components", "3",
                 "--keep-zero-peak", "--workers", "1", "--quiet"]) == 0
    a, b = xr.open_zarr(tmp_path / "a.zarr", group="svd"), xr.open_zarr(tmp_path / "b.zarr", group="svd")
    assert a.sizes["energy"] == 256 - 19 and float(a["energy"].min()) == pytest.approx(0.19)
    assert b.sizes["energy"] == 256 and float(b["energy"].min()) == 0.0
    assert a.attrs["zero_peak_cutoff"] == pytest.approx(0.1856, abs=1e-3) and b.attrs["zero_peak_cutoff"] is None
