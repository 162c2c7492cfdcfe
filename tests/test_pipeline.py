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
from xsi_dask.errors import LayoutError, ParameterError, StoreExistsError, XSIError
from xsi_dask.pipeline import ClusterParams, LayoutParams, NMFParams, SVDParams

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
    assert set(res.passes) == {"svd", "nmf"} and res.timings["SVD"] > 0

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
    assert res.passes == {"svd": s.attrs["passes"], "nmf": n.attrs["passes"]}
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
